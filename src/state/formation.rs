//! The `formation` table: how many instances of each process type an app
//! wants. It outlives releases: a new release keeps the app's scale.

use std::collections::BTreeMap;

use rusqlite::{params, Connection};

use super::{app_id, write_tx, StateError};
use crate::names::{AppName, ProcessType};

/// The stored scale, by process type. Types never scaled are absent.
pub fn get(conn: &Connection, app: &AppName) -> Result<BTreeMap<ProcessType, u32>, StateError> {
    let id = app_id(conn, app)?;
    let mut stmt = conn.prepare("SELECT process, quantity FROM formation WHERE app_id = ?1")?;
    let rows = stmt
        .query_map([id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u32>(1)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows
        .into_iter()
        .filter_map(|(p, n)| ProcessType::parse(&p).ok().map(|p| (p, n)))
        .collect())
}

pub fn set(
    conn: &mut Connection,
    app: &AppName,
    changes: &BTreeMap<ProcessType, u32>,
) -> Result<(), StateError> {
    let tx = write_tx(conn)?;
    let id = app_id(&tx, app)?;
    for (p, n) in changes {
        tx.execute(
            "INSERT INTO formation (app_id, process, quantity) VALUES (?1, ?2, ?3)
             ON CONFLICT (app_id, process) DO UPDATE SET quantity = excluded.quantity",
            params![id, p.as_str(), n],
        )?;
    }
    tx.commit()?;
    Ok(())
}

/// The instances to run for a release's processes: the stored scale where
/// there is one, else Heroku's default (one `web`, no others).
pub fn desired(
    stored: &BTreeMap<ProcessType, u32>,
    processes: &BTreeMap<ProcessType, String>,
) -> BTreeMap<ProcessType, u32> {
    processes
        .keys()
        .filter(|p| p.as_str() != "release")
        .map(|p| {
            let n = stored
                .get(p)
                .copied()
                .unwrap_or(if p.is_web() { 1 } else { 0 });
            (p.clone(), n)
        })
        .collect()
}
