//! The `storage_mounts` table: an app's persistent storage, by name, and
//! where it appears in the app's containers. A name is mounted at one path
//! and a path holds one name. `host_path` is NULL for Cygni's own
//! directory (`DATA/storage/APP/NAME`, which follows the data dir if it
//! moves) and set for an admin's host directory. Rows go with their app
//! (ON DELETE CASCADE); the files are the service's to remove.

use std::path::PathBuf;

use rusqlite::{params, Connection};

use super::{app_id, now, write_tx, StateError};
use crate::names::{AppName, MountPath, StorageName};

/// One mount, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMount {
    pub name: StorageName,
    pub path: MountPath,
    /// None: Cygni's own directory for `name`.
    pub host_path: Option<PathBuf>,
    pub created_at: i64,
}

/// Add a mount. The same name, or the same path, already mounted on the
/// app is refused with what holds it.
pub fn add(
    conn: &mut Connection,
    app: &AppName,
    name: &StorageName,
    path: &MountPath,
    host_path: Option<&std::path::Path>,
) -> Result<(), StateError> {
    let tx = write_tx(conn)?;
    let id = app_id(&tx, app)?;
    for existing in list_tx(&tx, id)? {
        if existing.name == *name {
            return Err(StateError::Exists(format!(
                "storage {name} (mounted at {} on {app})",
                existing.path
            )));
        }
        if existing.path == *path {
            return Err(StateError::Exists(format!(
                "a mount at {path} (storage {} on {app})",
                existing.name
            )));
        }
    }
    let host = host_path.map(|p| p.to_string_lossy().into_owned());
    tx.execute(
        "INSERT INTO storage_mounts (app_id, name, path, host_path, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![id, name.as_str(), path.as_str(), host, now()],
    )?;
    tx.commit()?;
    Ok(())
}

/// Remove the mount of `name` at `path`; the files stay.
pub fn remove(
    conn: &mut Connection,
    app: &AppName,
    name: &StorageName,
    path: &MountPath,
) -> Result<StoredMount, StateError> {
    let tx = write_tx(conn)?;
    let id = app_id(&tx, app)?;
    let found = list_tx(&tx, id)?
        .into_iter()
        .find(|m| m.name == *name && m.path == *path)
        .ok_or_else(|| StateError::NotFound(format!("storage {name}:{path} on {app}")))?;
    tx.execute(
        "DELETE FROM storage_mounts WHERE app_id = ?1 AND name = ?2 AND path = ?3",
        params![id, name.as_str(), path.as_str()],
    )?;
    tx.commit()?;
    Ok(found)
}

/// The app's mounts, by name.
pub fn list(conn: &Connection, app: &AppName) -> Result<Vec<StoredMount>, StateError> {
    let id = app_id(conn, app)?;
    list_tx(conn, id)
}

fn list_tx(conn: &Connection, app_id: i64) -> Result<Vec<StoredMount>, StateError> {
    let mut stmt = conn.prepare(
        "SELECT name, path, host_path, created_at FROM storage_mounts
         WHERE app_id = ?1 ORDER BY name",
    )?;
    let rows = stmt
        .query_map([app_id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    // Rows were validated on the way in; one edited by hand into
    // something invalid is skipped rather than mounted.
    Ok(rows
        .into_iter()
        .filter_map(|(name, path, host, created_at)| {
            Some(StoredMount {
                name: StorageName::parse(&name).ok()?,
                path: MountPath::parse(&path).ok()?,
                host_path: host.map(PathBuf::from),
                created_at,
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{apps, test_db};

    #[test]
    fn one_name_per_path_and_one_path_per_name() {
        let (_dir, db) = test_db();
        let app = AppName::parse("shop").unwrap();
        let data = StorageName::parse("data").unwrap();
        let other = StorageName::parse("other").unwrap();
        let at_data = MountPath::parse("/data").unwrap();
        let at_srv = MountPath::parse("/srv").unwrap();
        db.call_blocking(|c| {
            apps::create(c, &app)?;
            add(c, &app, &data, &at_data, None)?;
            let e = add(c, &app, &data, &at_srv, None).unwrap_err();
            assert!(e.to_string().contains("storage data"), "{e}");
            let e = add(c, &app, &other, &at_data, None).unwrap_err();
            assert!(e.to_string().contains("a mount at /data"), "{e}");
            assert_eq!(list(c, &app)?.len(), 1);
            assert!(remove(c, &app, &data, &at_srv).is_err());
            let gone = remove(c, &app, &data, &at_data)?;
            assert_eq!(gone.host_path, None);
            assert!(list(c, &app)?.is_empty());
            add(
                c,
                &app,
                &other,
                &at_srv,
                Some(std::path::Path::new("/srv/x")),
            )?;
            apps::delete(c, &app)?;
            let left: i64 = c.query_row("SELECT count(*) FROM storage_mounts", [], |r| r.get(0))?;
            assert_eq!(left, 0, "mounts go with their app");
            Ok(())
        })
        .unwrap();
    }
}
