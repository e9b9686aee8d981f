//! The `keys` and `grants` tables: who may push and administer.
//!
//! A key is an `admin` (everything) or a `deployer` (push to and manage
//! only the apps granted to it). Keys are found by their SHA-256
//! fingerprint, the form OpenSSH prints (`SHA256:...`).

use rusqlite::{params, Connection, OptionalExtension};

use super::{now, write_tx, StateError};
use crate::names::{AppName, KeyName};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    /// Pushes to and manages its granted apps (`developer` is the same).
    Deployer,
    /// Reads its granted apps; config values masked; changes nothing.
    Viewer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Deployer => "deployer",
            Role::Viewer => "viewer",
        }
    }

    /// For the command line: `admin`, `developer` (`deployer`) or
    /// `viewer`, else a one-line error.
    pub fn from_arg(s: &str) -> Result<Role, String> {
        Role::parse(s).ok_or_else(|| {
            format!("{s:?} is not a role: use admin, developer (or deployer) or viewer")
        })
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "deployer" | "developer" => Some(Role::Deployer),
            "viewer" => Some(Role::Viewer),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Key {
    #[serde(skip)]
    pub id: i64,
    pub name: String,
    pub fingerprint: String,
    #[serde(skip)]
    pub public_key: String,
    pub role: Role,
    pub created_at: i64,
    /// Apps granted to a deployer (empty for admins, who need none).
    pub apps: Vec<AppName>,
}

/// A key to insert: its public key text is already validated by the caller.
pub struct NewKey<'a> {
    pub name: &'a KeyName,
    pub fingerprint: &'a str,
    pub public_key: &'a str,
    pub role: Role,
}

fn row_to_key(r: &rusqlite::Row<'_>) -> rusqlite::Result<Key> {
    let role: String = r.get(4)?;
    Ok(Key {
        id: r.get(0)?,
        name: r.get(1)?,
        fingerprint: r.get(2)?,
        public_key: r.get(3)?,
        // A role this version does not know is an error, never a guess.
        role: Role::parse(&role).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                4,
                rusqlite::types::Type::Text,
                format!("unknown key role {role:?}").into(),
            )
        })?,
        created_at: r.get(5)?,
        apps: Vec::new(),
    })
}

const COLUMNS: &str = "id, name, fingerprint, public_key, role, created_at";

fn with_grants(conn: &Connection, mut key: Key) -> Result<Key, StateError> {
    let mut stmt = conn.prepare(
        "SELECT apps.name FROM grants JOIN apps ON apps.id = grants.app_id
         WHERE grants.key_id = ?1 ORDER BY apps.name",
    )?;
    let names = stmt
        .query_map([key.id], |r| r.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    key.apps = names
        .iter()
        .filter_map(|n| AppName::parse(n).ok())
        .collect();
    Ok(key)
}

pub fn add(conn: &mut Connection, new: NewKey<'_>) -> Result<Key, StateError> {
    let tx = write_tx(conn)?;
    let clash: Option<String> = tx
        .query_row(
            "SELECT name FROM keys WHERE name = ?1 OR fingerprint = ?2",
            params![new.name.as_str(), new.fingerprint],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(existing) = clash {
        return Err(StateError::Exists(format!(
            "key {existing:?} (same name or same key)"
        )));
    }
    let created_at = now();
    tx.execute(
        "INSERT INTO keys (name, fingerprint, public_key, role, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            new.name.as_str(),
            new.fingerprint,
            new.public_key,
            new.role.as_str(),
            created_at
        ],
    )?;
    let id = tx.last_insert_rowid();
    tx.commit()?;
    Ok(Key {
        id,
        name: new.name.to_string(),
        fingerprint: new.fingerprint.to_owned(),
        public_key: new.public_key.to_owned(),
        role: new.role,
        created_at,
        apps: Vec::new(),
    })
}

pub fn by_fingerprint(conn: &Connection, fingerprint: &str) -> Result<Option<Key>, StateError> {
    let key = conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM keys WHERE fingerprint = ?1"),
            [fingerprint],
            row_to_key,
        )
        .optional()?;
    key.map(|k| with_grants(conn, k)).transpose()
}

pub fn list(conn: &Connection) -> Result<Vec<Key>, StateError> {
    let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM keys ORDER BY name"))?;
    let keys = stmt
        .query_map([], row_to_key)?
        .collect::<Result<Vec<_>, _>>()?;
    keys.into_iter().map(|k| with_grants(conn, k)).collect()
}

pub fn count_admins(conn: &Connection) -> Result<i64, StateError> {
    Ok(
        conn.query_row("SELECT count(*) FROM keys WHERE role = 'admin'", [], |r| {
            r.get(0)
        })?,
    )
}

/// Remove a key by name or fingerprint. Refuses to remove the last admin,
/// which would lock everyone out of the server.
pub fn remove(conn: &mut Connection, name_or_fingerprint: &str) -> Result<Key, StateError> {
    let tx = write_tx(conn)?;
    let key = tx
        .query_row(
            &format!("SELECT {COLUMNS} FROM keys WHERE name = ?1 OR fingerprint = ?1"),
            [name_or_fingerprint],
            row_to_key,
        )
        .optional()?
        .ok_or_else(|| StateError::NotFound(format!("key {name_or_fingerprint:?}")))?;
    if key.role == Role::Admin && count_admins(&tx)? <= 1 {
        return Err(StateError::Exists(
            "no other admin key: add another admin before removing the last one".into(),
        ));
    }
    tx.execute("DELETE FROM keys WHERE id = ?1", [key.id])?;
    tx.commit()?;
    Ok(key)
}

/// Let a deployer key push to and manage one app. Idempotent.
pub fn grant(conn: &mut Connection, key_name: &str, app: &AppName) -> Result<(), StateError> {
    let tx = write_tx(conn)?;
    let key_id: i64 = tx
        .query_row("SELECT id FROM keys WHERE name = ?1", [key_name], |r| {
            r.get(0)
        })
        .optional()?
        .ok_or_else(|| StateError::NotFound(format!("key {key_name:?}")))?;
    let app_id: i64 = tx
        .query_row("SELECT id FROM apps WHERE name = ?1", [app.as_str()], |r| {
            r.get(0)
        })
        .optional()?
        .ok_or_else(|| StateError::NotFound(format!("app {app}")))?;
    tx.execute(
        "INSERT OR IGNORE INTO grants (key_id, app_id) VALUES (?1, ?2)",
        params![key_id, app_id],
    )?;
    tx.commit()?;
    Ok(())
}

/// Take a grant back. Idempotent.
pub fn revoke(conn: &mut Connection, key_name: &str, app: &AppName) -> Result<(), StateError> {
    let tx = write_tx(conn)?;
    tx.execute(
        "DELETE FROM grants WHERE key_id = (SELECT id FROM keys WHERE name = ?1)
         AND app_id = (SELECT id FROM apps WHERE name = ?2)",
        params![key_name, app.as_str()],
    )?;
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{apps, test_db};

    #[test]
    fn keys_grants_and_last_admin() {
        let (_dir, db) = test_db();
        db.call_blocking(|c| {
            let admin = KeyName::parse("root").unwrap();
            let dep = KeyName::parse("ci").unwrap();
            add(
                c,
                NewKey {
                    name: &admin,
                    fingerprint: "SHA256:a",
                    public_key: "ssh-ed25519 AAAA",
                    role: Role::Admin,
                },
            )?;
            add(
                c,
                NewKey {
                    name: &dep,
                    fingerprint: "SHA256:b",
                    public_key: "ssh-ed25519 BBBB",
                    role: Role::Deployer,
                },
            )?;
            // Same fingerprint under another name is refused.
            let again = KeyName::parse("other").unwrap();
            assert!(add(
                c,
                NewKey {
                    name: &again,
                    fingerprint: "SHA256:b",
                    public_key: "x",
                    role: Role::Admin
                }
            )
            .is_err());

            let app = AppName::parse("shop").unwrap();
            apps::create(c, &app)?;
            grant(c, "ci", &app)?;
            grant(c, "ci", &app)?;
            let k = by_fingerprint(c, "SHA256:b")?.unwrap();
            assert_eq!(k.apps, vec![app.clone()]);
            revoke(c, "ci", &app)?;
            assert!(by_fingerprint(c, "SHA256:b")?.unwrap().apps.is_empty());

            assert!(remove(c, "root").is_err(), "last admin must stay");
            remove(c, "SHA256:b")?;
            assert_eq!(list(c)?.len(), 1);
            Ok(())
        })
        .unwrap();
    }
}
