//! The `apps` table: which apps exist.

use rusqlite::{params, Connection, OptionalExtension};

use super::{now, write_tx, StateError};
use crate::names::AppName;

#[derive(Debug, Clone, serde::Serialize)]
pub struct App {
    #[serde(skip)]
    pub id: i64,
    pub name: AppName,
    pub created_at: i64,
    /// None: `main`, or `master` when only that exists.
    pub deploy_branch: Option<String>,
    /// Redirect plain HTTP to HTTPS once the app has a certificate.
    pub redirect_https: bool,
    /// `ps:stop`: nothing runs until `ps:start`.
    pub stopped: bool,
    /// The proxy writes a `router` line per request into the app's log.
    pub access_log: bool,
}

fn row_to_app(r: &rusqlite::Row<'_>) -> rusqlite::Result<App> {
    let name: String = r.get(1)?;
    // Names are validated before insert; a bad row means someone edited the
    // file by hand, which we surface as a conversion error, not a panic.
    let name = AppName::parse(&name).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(1, rusqlite::types::Type::Text, Box::new(e))
    })?;
    Ok(App {
        id: r.get(0)?,
        name,
        created_at: r.get(2)?,
        deploy_branch: r.get(3)?,
        redirect_https: r.get(4)?,
        stopped: r.get(5)?,
        access_log: r.get(6)?,
    })
}

const COLUMNS: &str = "id, name, created_at, deploy_branch, redirect_https, stopped, access_log";

pub fn create(conn: &mut Connection, name: &AppName) -> Result<App, StateError> {
    let tx = write_tx(conn)?;
    let exists: bool = tx
        .query_row(
            "SELECT 1 FROM apps WHERE name = ?1",
            [name.as_str()],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
    if exists {
        return Err(StateError::Exists(format!("app {name}")));
    }
    let created_at = now();
    tx.execute(
        "INSERT INTO apps (name, created_at) VALUES (?1, ?2)",
        params![name.as_str(), created_at],
    )?;
    let id = tx.last_insert_rowid();
    // Its own uid/gid from birth (state/app_users.rs); none free: no app.
    super::app_users::assign(&tx, id)?;
    tx.commit()?;
    Ok(App {
        id,
        name: name.clone(),
        created_at,
        deploy_branch: None,
        redirect_https: true,
        stopped: false,
        access_log: false,
    })
}

pub fn set_access_log(conn: &mut Connection, name: &AppName, on: bool) -> Result<(), StateError> {
    let tx = write_tx(conn)?;
    let n = tx.execute(
        "UPDATE apps SET access_log = ?2 WHERE name = ?1",
        params![name.as_str(), on],
    )?;
    if n == 0 {
        return Err(StateError::NotFound(format!("app {name}")));
    }
    tx.commit()?;
    Ok(())
}

pub fn is_stopped(conn: &Connection, name: &AppName) -> Result<bool, StateError> {
    Ok(get(conn, name)?.is_some_and(|a| a.stopped))
}

pub fn set_stopped(conn: &mut Connection, name: &AppName, stopped: bool) -> Result<(), StateError> {
    let tx = write_tx(conn)?;
    let n = tx.execute(
        "UPDATE apps SET stopped = ?2 WHERE name = ?1",
        params![name.as_str(), stopped],
    )?;
    if n == 0 {
        return Err(StateError::NotFound(format!("app {name}")));
    }
    tx.commit()?;
    Ok(())
}

pub fn get(conn: &Connection, name: &AppName) -> Result<Option<App>, StateError> {
    Ok(conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM apps WHERE name = ?1"),
            [name.as_str()],
            row_to_app,
        )
        .optional()?)
}

pub fn list(conn: &Connection) -> Result<Vec<App>, StateError> {
    let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM apps ORDER BY name"))?;
    let apps = stmt
        .query_map([], row_to_app)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(apps)
}

/// Delete an app and everything that references it (grants and its
/// `app_users` id cascade).
pub fn delete(conn: &mut Connection, name: &AppName) -> Result<(), StateError> {
    let tx = write_tx(conn)?;
    let n = tx.execute("DELETE FROM apps WHERE name = ?1", [name.as_str()])?;
    if n == 0 {
        return Err(StateError::NotFound(format!("app {name}")));
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::test_db;

    #[test]
    fn create_get_list_delete() {
        let (_dir, db) = test_db();
        let a = AppName::parse("shop").unwrap();
        let b = AppName::parse("blog").unwrap();
        db.call_blocking(|c| {
            create(c, &a)?;
            create(c, &b)?;
            assert!(matches!(create(c, &a), Err(StateError::Exists(_))));
            let names: Vec<_> = list(c)?.into_iter().map(|x| x.name).collect();
            assert_eq!(names, vec![b.clone(), a.clone()]);
            delete(c, &a)?;
            assert!(get(c, &a)?.is_none());
            assert!(matches!(delete(c, &a), Err(StateError::NotFound(_))));
            Ok(())
        })
        .unwrap();
    }
}
