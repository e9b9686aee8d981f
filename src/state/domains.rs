//! The `domains` table: custom hosts routed to an app, besides `APP.DOMAIN`.
//! A host belongs to at most one app (UNIQUE).

use rusqlite::{params, Connection, OptionalExtension};

use super::{app_id, now, write_tx, StateError};
use crate::names::{AppName, Hostname};

/// Add a host. A host another app has is refused, naming nothing about
/// that app (deployers must not learn what other apps exist).
pub fn add(conn: &mut Connection, app: &AppName, host: &Hostname) -> Result<(), StateError> {
    let tx = write_tx(conn)?;
    let id = app_id(&tx, app)?;
    let owner: Option<i64> = tx
        .query_row(
            "SELECT app_id FROM domains WHERE host = ?1",
            [host.as_str()],
            |r| r.get(0),
        )
        .optional()?;
    match owner {
        Some(o) if o == id => return Err(StateError::Exists(format!("domain {host} on {app}"))),
        Some(_) => {
            return Err(StateError::Exists(format!(
                "domain {host} (on another app)"
            )))
        }
        None => {}
    }
    tx.execute(
        "INSERT INTO domains (app_id, host, created_at) VALUES (?1, ?2, ?3)",
        params![id, host.as_str(), now()],
    )?;
    tx.commit()?;
    Ok(())
}

pub fn remove(conn: &mut Connection, app: &AppName, host: &Hostname) -> Result<(), StateError> {
    let tx = write_tx(conn)?;
    let id = app_id(&tx, app)?;
    let n = tx.execute(
        "DELETE FROM domains WHERE app_id = ?1 AND host = ?2",
        params![id, host.as_str()],
    )?;
    if n == 0 {
        return Err(StateError::NotFound(format!("domain {host} on {app}")));
    }
    // Its certificate (and private key) go with it: the host may soon be
    // someone else's, and nothing here serves it any more.
    tx.execute("DELETE FROM certificates WHERE host = ?1", [host.as_str()])?;
    tx.commit()?;
    Ok(())
}

pub fn list(conn: &Connection, app: &AppName) -> Result<Vec<Hostname>, StateError> {
    let id = app_id(conn, app)?;
    let mut stmt = conn.prepare("SELECT host FROM domains WHERE app_id = ?1 ORDER BY host")?;
    let hosts = stmt
        .query_map([id], |r| r.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(hosts
        .iter()
        .filter_map(|h| Hostname::parse(h).ok())
        .collect())
}

/// Every custom host with its app, for the routes snapshot.
pub fn all(conn: &Connection) -> Result<Vec<(AppName, Hostname)>, StateError> {
    let mut stmt = conn.prepare(
        "SELECT apps.name, domains.host FROM domains JOIN apps ON apps.id = domains.app_id",
    )?;
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows
        .into_iter()
        .filter_map(|(a, h)| Some((AppName::parse(&a).ok()?, Hostname::parse(&h).ok()?)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{apps, test_db};

    #[test]
    fn a_host_belongs_to_one_app() {
        let (_dir, db) = test_db();
        let (a, b) = (AppName::parse("a").unwrap(), AppName::parse("b").unwrap());
        let h = Hostname::parse("www.example.com").unwrap();
        db.call_blocking(|c| {
            apps::create(c, &a)?;
            apps::create(c, &b)?;
            add(c, &a, &h)?;
            assert!(add(c, &b, &h)
                .unwrap_err()
                .to_string()
                .contains("another app"));
            assert!(add(c, &a, &h).is_err());
            assert_eq!(list(c, &a)?, vec![h.clone()]);
            assert_eq!(all(c)?.len(), 1);
            c.execute(
                "INSERT INTO certificates (app_id, host, updated_at) VALUES ((SELECT id FROM apps WHERE name = 'a'), ?1, 0)",
                [h.as_str()],
            )?;
            remove(c, &a, &h)?;
            let left: i64 =
                c.query_row("SELECT count(*) FROM certificates", [], |r| r.get(0))?;
            assert_eq!(left, 0, "the certificate goes with the domain");
            assert!(remove(c, &a, &h).is_err());
            add(c, &b, &h)?;
            // Deleting the app frees its hosts.
            apps::delete(c, &b)?;
            assert!(all(c)?.is_empty());
            Ok(())
        })
        .unwrap();
    }
}
