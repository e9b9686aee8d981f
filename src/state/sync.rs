//! The `app_sources` and `syncs` tables (migration 11).
//!
//! - `app_sources`: where an app's code comes from (`apps:create --from`,
//!   `git:sync APP URL`): the URL with its userinfo masked, the userinfo
//!   apart in `credentials` (never shown), the ref, and the schedule
//!   (`--every`) with what the last check saw.
//! - `syncs`: one row per sync, with the state it is in and the states it
//!   went through (`queued,fetching,analysing,...`), the commit, the
//!   release it made and why it failed.
//!
//! Rows go with their app (ON DELETE CASCADE). Migration 14 adds
//! `app_sources.submodules` (`--submodules`: fetch the commit's https
//! submodules too), a source setting that scheduled syncs read with the
//! rest of the row.

use rusqlite::{params, Connection, OptionalExtension};

use super::{app_id, now, write_tx, StateError};
use crate::names::AppName;

/// Where an app syncs from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Source {
    /// Masked: `https://***@host/path` when it has credentials.
    pub url: String,
    #[serde(skip)]
    pub credentials: Option<String>,
    /// `refs/heads/B` or `refs/tags/T`.
    #[serde(rename = "ref")]
    pub reference: String,
    /// Seconds between checks; None: no schedule.
    pub every_secs: Option<i64>,
    pub last_checked_at: Option<i64>,
    /// The remote commit the last sync or check saw.
    pub last_seen_sha: Option<String>,
    /// Fetch the commit's submodules too (`--submodules`).
    pub submodules: bool,
}

/// One sync.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SyncRun {
    pub id: i64,
    #[serde(skip)]
    pub app_id: i64,
    pub url: String,
    #[serde(rename = "ref")]
    pub reference: String,
    /// `manual`, `create` or `schedule`.
    pub trigger: String,
    pub state: String,
    /// Every state it went through, in order.
    pub states: Vec<String>,
    pub sha: Option<String>,
    pub release: Option<u32>,
    pub error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

pub const MIGRATION: &str = "CREATE TABLE app_sources (
        app_id INTEGER PRIMARY KEY REFERENCES apps(id) ON DELETE CASCADE,
        url TEXT NOT NULL,
        credentials TEXT,
        ref TEXT NOT NULL,
        every_secs INTEGER,
        last_checked_at INTEGER,
        last_seen_sha TEXT,
        updated_at INTEGER NOT NULL
    );
    CREATE TABLE syncs (
        id INTEGER PRIMARY KEY,
        app_id INTEGER NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
        url TEXT NOT NULL,
        ref TEXT NOT NULL,
        trigger TEXT NOT NULL,
        state TEXT NOT NULL,
        states TEXT NOT NULL,
        sha TEXT,
        release INTEGER,
        error TEXT,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE INDEX syncs_app ON syncs(app_id, id);";

/// Migration 14: whether syncs fetch submodules (`--submodules`).
pub const MIGRATION_SUBMODULES: &str =
    "ALTER TABLE app_sources ADD COLUMN submodules INTEGER NOT NULL DEFAULT 0;";

fn row_to_source(r: &rusqlite::Row<'_>) -> rusqlite::Result<Source> {
    Ok(Source {
        url: r.get(0)?,
        credentials: r.get(1)?,
        reference: r.get(2)?,
        every_secs: r.get(3)?,
        last_checked_at: r.get(4)?,
        last_seen_sha: r.get(5)?,
        submodules: r.get(6)?,
    })
}

const SOURCE_COLS: &str =
    "url, credentials, ref, every_secs, last_checked_at, last_seen_sha, submodules";

pub fn source(conn: &Connection, app: &AppName) -> Result<Option<Source>, StateError> {
    let id = app_id(conn, app)?;
    Ok(conn
        .query_row(
            &format!("SELECT {SOURCE_COLS} FROM app_sources WHERE app_id = ?1"),
            [id],
            row_to_source,
        )
        .optional()?)
}

/// Set where the app syncs from; the schedule and what it saw are kept
/// when the URL and ref stay the same.
pub fn set_source(
    conn: &mut Connection,
    app: &AppName,
    url: &str,
    credentials: Option<&str>,
    reference: &str,
    seen: Option<&str>,
    submodules: bool,
) -> Result<(), StateError> {
    let tx = write_tx(conn)?;
    let id = app_id(&tx, app)?;
    tx.execute(
        "INSERT INTO app_sources (app_id, url, credentials, ref, last_seen_sha, updated_at, submodules)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (app_id) DO UPDATE SET url = ?2, credentials = ?3, ref = ?4,
             last_seen_sha = COALESCE(?5, last_seen_sha), updated_at = ?6, submodules = ?7",
        params![id, url, credentials, reference, seen, now(), submodules],
    )?;
    tx.commit()?;
    Ok(())
}

/// Turn the schedule on (`Some(secs)`) or off.
pub fn set_every(
    conn: &mut Connection,
    app: &AppName,
    every: Option<i64>,
) -> Result<(), StateError> {
    let tx = write_tx(conn)?;
    let id = app_id(&tx, app)?;
    let n = tx.execute(
        "UPDATE app_sources SET every_secs = ?2, last_checked_at = ?3, updated_at = ?3
         WHERE app_id = ?1",
        params![id, every, now()],
    )?;
    if n == 0 {
        return Err(StateError::NotFound(format!("a source URL for {app}")));
    }
    tx.commit()?;
    Ok(())
}

/// Record a check of the remote (scheduled), and what it saw.
pub fn checked(conn: &mut Connection, app: &AppName, seen: Option<&str>) -> Result<(), StateError> {
    let tx = write_tx(conn)?;
    let id = app_id(&tx, app)?;
    tx.execute(
        "UPDATE app_sources SET last_checked_at = ?2,
             last_seen_sha = COALESCE(?3, last_seen_sha) WHERE app_id = ?1",
        params![id, now(), seen],
    )?;
    tx.commit()?;
    Ok(())
}

/// Apps with a schedule: (app, source).
pub fn scheduled(conn: &Connection) -> Result<Vec<(AppName, Source)>, StateError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT a.name, {} FROM app_sources s JOIN apps a ON a.id = s.app_id
         WHERE s.every_secs IS NOT NULL ORDER BY a.name",
        SOURCE_COLS
            .split(", ")
            .map(|c| format!("s.{c}"))
            .collect::<Vec<_>>()
            .join(", ")
    ))?;
    let rows = stmt.query_map([], |r| {
        let name: String = r.get(0)?;
        let source = Source {
            url: r.get(1)?,
            credentials: r.get(2)?,
            reference: r.get(3)?,
            every_secs: r.get(4)?,
            last_checked_at: r.get(5)?,
            last_seen_sha: r.get(6)?,
            submodules: r.get(7)?,
        };
        Ok((name, source))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (name, source) = row?;
        // Names in the table were validated when the app was created.
        if let Ok(app) = AppName::parse(&name) {
            out.push((app, source));
        }
    }
    Ok(out)
}

fn row_to_run(r: &rusqlite::Row<'_>) -> rusqlite::Result<SyncRun> {
    let states: String = r.get(6)?;
    Ok(SyncRun {
        id: r.get(0)?,
        app_id: r.get(1)?,
        url: r.get(2)?,
        reference: r.get(3)?,
        trigger: r.get(4)?,
        state: r.get(5)?,
        states: states
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        sha: r.get(7)?,
        release: r.get(8)?,
        error: r.get(9)?,
        created_at: r.get(10)?,
        updated_at: r.get(11)?,
    })
}

const RUN_COLS: &str =
    "id, app_id, url, ref, trigger, state, states, sha, release, error, created_at, updated_at";

/// A new sync, `queued`.
pub fn create_run(
    conn: &mut Connection,
    app: &AppName,
    url: &str,
    reference: &str,
    trigger: &str,
) -> Result<SyncRun, StateError> {
    let tx = write_tx(conn)?;
    let id = app_id(&tx, app)?;
    let t = now();
    tx.execute(
        "INSERT INTO syncs (app_id, url, ref, trigger, state, states, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, 'queued', 'queued', ?5, ?5)",
        params![id, url, reference, trigger, t],
    )?;
    let run_id = tx.last_insert_rowid();
    let run = tx.query_row(
        &format!("SELECT {RUN_COLS} FROM syncs WHERE id = ?1"),
        [run_id],
        row_to_run,
    )?;
    tx.commit()?;
    Ok(run)
}

/// Move a sync to `state` (appended to its path unless it is there last).
pub fn set_state(conn: &mut Connection, id: i64, state: &str) -> Result<(), StateError> {
    let tx = write_tx(conn)?;
    tx.execute(
        "UPDATE syncs SET state = ?2,
             states = CASE WHEN states = ?2 OR states LIKE '%,' || ?2 THEN states
                           ELSE states || ',' || ?2 END,
             updated_at = ?3
         WHERE id = ?1",
        params![id, state, now()],
    )?;
    tx.commit()?;
    Ok(())
}

pub fn set_sha(conn: &mut Connection, id: i64, sha: &str) -> Result<(), StateError> {
    conn.execute(
        "UPDATE syncs SET sha = ?2, updated_at = ?3 WHERE id = ?1",
        params![id, sha, now()],
    )?;
    Ok(())
}

pub fn set_release(conn: &mut Connection, id: i64, release: u32) -> Result<(), StateError> {
    conn.execute(
        "UPDATE syncs SET release = ?2, updated_at = ?3 WHERE id = ?1",
        params![id, release, now()],
    )?;
    Ok(())
}

/// End a sync as failed, with the reason.
pub fn fail_run(conn: &mut Connection, id: i64, error: &str) -> Result<(), StateError> {
    set_state(conn, id, "failed")?;
    conn.execute(
        "UPDATE syncs SET error = ?2 WHERE id = ?1",
        params![id, error],
    )?;
    Ok(())
}

pub fn run(conn: &Connection, app: &AppName, id: i64) -> Result<Option<SyncRun>, StateError> {
    let app_id = app_id(conn, app)?;
    Ok(conn
        .query_row(
            &format!("SELECT {RUN_COLS} FROM syncs WHERE id = ?1 AND app_id = ?2"),
            params![id, app_id],
            row_to_run,
        )
        .optional()?)
}

pub fn last_run(conn: &Connection, app: &AppName) -> Result<Option<SyncRun>, StateError> {
    let app_id = app_id(conn, app)?;
    Ok(conn
        .query_row(
            &format!("SELECT {RUN_COLS} FROM syncs WHERE app_id = ?1 ORDER BY id DESC LIMIT 1"),
            [app_id],
            row_to_run,
        )
        .optional()?)
}

/// The sync that made each release, by release number.
pub fn runs_by_release(
    conn: &Connection,
    app: &AppName,
) -> Result<std::collections::HashMap<u32, SyncRun>, StateError> {
    let app_id = app_id(conn, app)?;
    let mut stmt = conn.prepare(&format!(
        "SELECT {RUN_COLS} FROM syncs WHERE app_id = ?1 AND release IS NOT NULL"
    ))?;
    let rows = stmt.query_map([app_id], row_to_run)?;
    let mut out = std::collections::HashMap::new();
    for r in rows {
        let r = r?;
        if let Some(v) = r.release {
            out.insert(v, r);
        }
    }
    Ok(out)
}

/// Syncs that a stopped daemon left unfinished end as failed.
pub fn fail_unfinished(conn: &mut Connection) -> Result<usize, StateError> {
    let tx = write_tx(conn)?;
    let n = tx.execute(
        "UPDATE syncs SET state = 'failed', states = states || ',failed',
             error = 'the daemon stopped before this sync finished', updated_at = ?1
         WHERE state NOT IN ('live', 'failed')",
        [now()],
    )?;
    tx.commit()?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_and_runs_round_trip() {
        let (_dir, db) = crate::state::test_db();
        let app = AppName::parse("shop").unwrap();
        db.call_blocking(|c| {
            crate::state::apps::create(c, &app)?;
            assert_eq!(source(c, &app)?, None);
            set_source(
                c,
                &app,
                "https://***@h/r",
                Some("u:p"),
                "refs/heads/main",
                None,
                true,
            )?;
            set_every(c, &app, Some(600))?;
            let s = source(c, &app)?.unwrap();
            assert_eq!(
                (s.every_secs, s.credentials.as_deref(), s.submodules),
                (Some(600), Some("u:p"), true)
            );
            assert!(scheduled(c)?[0].1.submodules, "the schedule keeps it");
            assert_eq!(scheduled(c)?.len(), 1);
            let r = create_run(c, &app, &s.url, &s.reference, "manual")?;
            for st in ["fetching", "fetching", "analysing", "building"] {
                set_state(c, r.id, st)?;
            }
            fail_run(c, r.id, "build failed")?;
            let r = last_run(c, &app)?.unwrap();
            assert_eq!(
                r.states,
                ["queued", "fetching", "analysing", "building", "failed"]
            );
            assert_eq!(r.error.as_deref(), Some("build failed"));
            set_every(c, &app, None)?;
            assert!(scheduled(c)?.is_empty());
            Ok(())
        })
        .unwrap();
    }
}
