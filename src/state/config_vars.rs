//! The `config_vars` table: an app's environment, stored byte for byte.

use std::collections::BTreeMap;

use rusqlite::{params, Connection};

use super::{app_id, write_tx, StateError};
use crate::names::AppName;

pub fn get_all(conn: &Connection, app: &AppName) -> Result<BTreeMap<String, String>, StateError> {
    let id = app_id(conn, app)?;
    let mut stmt = conn.prepare("SELECT name, value FROM config_vars WHERE app_id = ?1")?;
    let rows = stmt
        .query_map([id], |r| {
            let value: Vec<u8> = r.get(1)?;
            Ok((r.get::<_, String>(0)?, value))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows
        .into_iter()
        // Values are validated as UTF-8 before they are stored.
        .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
        .collect())
}

/// Set and unset in one transaction: either every change lands or none.
pub fn update(
    conn: &mut Connection,
    app: &AppName,
    set: &BTreeMap<String, String>,
    unset: &[String],
) -> Result<(), StateError> {
    let tx = write_tx(conn)?;
    let id = app_id(&tx, app)?;
    for (k, v) in set {
        tx.execute(
            "INSERT INTO config_vars (app_id, name, value) VALUES (?1, ?2, ?3)
             ON CONFLICT (app_id, name) DO UPDATE SET value = excluded.value",
            params![id, k, v.as_bytes()],
        )?;
    }
    for k in unset {
        tx.execute(
            "DELETE FROM config_vars WHERE app_id = ?1 AND name = ?2",
            params![id, k],
        )?;
    }
    tx.commit()?;
    Ok(())
}
