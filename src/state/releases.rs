//! The `releases` table: every deploy, config change and rollback is a
//! numbered release (v1, v2, ...) with a snapshot of what it runs.
//!
//! Status moves `building → releasing → starting → checking → live`, or to
//! `failed` with the stage it failed in. Exactly one release per app is
//! `live` at a time; the one before it becomes `superseded`.

use std::collections::BTreeMap;

use rusqlite::{params, Connection, OptionalExtension};

use super::{app_id, now, write_tx, StateError};
use crate::build::Artifact;
use crate::limits::Limits;
use crate::names::{AppName, ProcessType};
use crate::runtime::HealthCheck;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Building,
    Releasing,
    Starting,
    Checking,
    Live,
    Superseded,
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Building => "building",
            Status::Releasing => "releasing",
            Status::Starting => "starting",
            Status::Checking => "checking",
            Status::Live => "live",
            Status::Superseded => "superseded",
            Status::Failed => "failed",
        }
    }

    /// The one string mapping back; a status this version does not know
    /// is an error, never silently `failed`.
    pub fn parse(s: &str) -> Result<Status, UnknownStatus> {
        Ok(match s {
            "building" => Status::Building,
            "releasing" => Status::Releasing,
            "starting" => Status::Starting,
            "checking" => Status::Checking,
            "live" => Status::Live,
            "superseded" => Status::Superseded,
            "failed" => Status::Failed,
            other => return Err(UnknownStatus(other.to_owned())),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown release status {0:?}")]
pub struct UnknownStatus(pub String);

#[derive(Debug, Clone, serde::Serialize)]
pub struct Release {
    #[serde(skip)]
    pub id: i64,
    pub app: AppName,
    pub version: u32,
    pub sha: Option<String>,
    pub description: String,
    pub builder: Option<String>,
    #[serde(skip)]
    pub artifact: Option<Artifact>,
    /// Config vars as they were for this release. Never printed by listings.
    #[serde(skip)]
    pub env: BTreeMap<String, String>,
    /// Process type → command line.
    pub processes: BTreeMap<ProcessType, String>,
    /// What admits a new `web` instance; `None` for releases recorded
    /// before checks were stored (they get the TCP check).
    #[serde(skip)]
    pub check: Option<HealthCheck>,
    /// Typed from `CYGNI_MEMORY` / `CYGNI_CPUS` when they were set.
    #[serde(skip)]
    pub limits: Limits,
    /// The manifest digest of the release's image in Cygni's registry
    /// (`sha256:…`), when the registry is on and the image was published.
    pub image_digest: Option<String>,
    pub status: Status,
    pub failed_stage: Option<String>,
    pub error: Option<String>,
    pub created_at: i64,
    pub finished_at: Option<i64>,
}

/// What a new release starts from.
pub struct NewRelease<'a> {
    pub app: &'a AppName,
    pub sha: Option<&'a str>,
    pub description: &'a str,
    pub status: Status,
}

const COLUMNS: &str = "releases.id, apps.name, version, sha, description, builder, artifact, env, \
                       processes, status, failed_stage, error, releases.created_at, finished_at, \
                       health, limits, image_digest";

fn row_to_release(r: &rusqlite::Row<'_>) -> rusqlite::Result<Release> {
    let conv = |i, e: Box<dyn std::error::Error + Send + Sync>| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, e)
    };
    let name: String = r.get(1)?;
    let artifact: Option<String> = r.get(6)?;
    let env: String = r.get(7)?;
    let processes: String = r.get(8)?;
    let status: String = r.get(9)?;
    Ok(Release {
        id: r.get(0)?,
        app: AppName::parse(&name).map_err(|e| conv(1, Box::new(e)))?,
        version: r.get(2)?,
        sha: r.get(3)?,
        description: r.get(4)?,
        builder: r.get(5)?,
        artifact: artifact
            .map(|a| serde_json::from_str(&a))
            .transpose()
            .map_err(|e| conv(6, Box::new(e)))?,
        env: serde_json::from_str(&env).map_err(|e| conv(7, Box::new(e)))?,
        processes: serde_json::from_str(&processes).map_err(|e| conv(8, Box::new(e)))?,
        status: Status::parse(&status).map_err(|e| conv(9, Box::new(e)))?,
        check: r
            .get::<_, Option<String>>(14)?
            .map(|h| serde_json::from_str(&h))
            .transpose()
            .map_err(|e| conv(14, Box::new(e)))?,
        limits: r
            .get::<_, Option<String>>(15)?
            .map(|l| serde_json::from_str(&l))
            .transpose()
            .map_err(|e| conv(15, Box::new(e)))?
            .unwrap_or_default(),
        image_digest: r.get(16)?,
        failed_stage: r.get(10)?,
        error: r.get(11)?,
        created_at: r.get(12)?,
        finished_at: r.get(13)?,
    })
}

/// Allocate the next version number and record the release.
pub fn create(conn: &mut Connection, new: NewRelease<'_>) -> Result<Release, StateError> {
    let tx = write_tx(conn)?;
    let app_id = app_id(&tx, new.app)?;
    let version: u32 = tx.query_row(
        "SELECT COALESCE(MAX(version), 0) + 1 FROM releases WHERE app_id = ?1",
        [app_id],
        |r| r.get(0),
    )?;
    let created_at = now();
    tx.execute(
        "INSERT INTO releases (app_id, version, sha, description, env, processes, status, created_at)
         VALUES (?1, ?2, ?3, ?4, '{}', '{}', ?5, ?6)",
        params![
            app_id,
            version,
            new.sha,
            new.description,
            new.status.as_str(),
            created_at
        ],
    )?;
    let id = tx.last_insert_rowid();
    tx.commit()?;
    Ok(Release {
        id,
        app: new.app.clone(),
        version,
        sha: new.sha.map(str::to_owned),
        description: new.description.to_owned(),
        builder: None,
        artifact: None,
        env: BTreeMap::new(),
        processes: BTreeMap::new(),
        check: None,
        limits: Limits::default(),
        image_digest: None,
        status: new.status,
        failed_stage: None,
        error: None,
        created_at,
        finished_at: None,
    })
}

/// Record what the release runs: builder, artifact, env and processes.
pub fn set_snapshot(conn: &mut Connection, release: &Release) -> Result<(), StateError> {
    let artifact = release
        .artifact
        .as_ref()
        .map(serde_json::to_string)
        .transpose()
        .map_err(|e| StateError::Task(e.to_string()))?;
    let env = serde_json::to_string(&release.env).map_err(|e| StateError::Task(e.to_string()))?;
    let processes =
        serde_json::to_string(&release.processes).map_err(|e| StateError::Task(e.to_string()))?;
    let health = release
        .check
        .as_ref()
        .map(serde_json::to_string)
        .transpose()
        .map_err(|e| StateError::Task(e.to_string()))?;
    let limits =
        serde_json::to_string(&release.limits).map_err(|e| StateError::Task(e.to_string()))?;
    let tx = write_tx(conn)?;
    tx.execute(
        "UPDATE releases SET builder = ?2, artifact = ?3, env = ?4, processes = ?5,
         health = ?6, limits = ?7, image_digest = ?8 WHERE id = ?1",
        params![
            release.id,
            release.builder,
            artifact,
            env,
            processes,
            health,
            limits,
            release.image_digest
        ],
    )?;
    tx.commit()?;
    Ok(())
}

pub fn set_status(conn: &mut Connection, id: i64, status: Status) -> Result<(), StateError> {
    let tx = write_tx(conn)?;
    tx.execute(
        "UPDATE releases SET status = ?2 WHERE id = ?1",
        params![id, status.as_str()],
    )?;
    tx.commit()?;
    Ok(())
}

pub fn fail(conn: &mut Connection, id: i64, stage: &str, error: &str) -> Result<(), StateError> {
    let tx = write_tx(conn)?;
    tx.execute(
        "UPDATE releases SET status = 'failed', failed_stage = ?2, error = ?3, finished_at = ?4
         WHERE id = ?1",
        params![id, stage, error, now()],
    )?;
    tx.commit()?;
    Ok(())
}

/// Make `id` the app's live release; the previous live one is superseded.
pub fn make_live(conn: &mut Connection, id: i64) -> Result<(), StateError> {
    let tx = write_tx(conn)?;
    tx.execute(
        "UPDATE releases SET status = 'superseded'
         WHERE status = 'live' AND app_id = (SELECT app_id FROM releases WHERE id = ?1) AND id != ?1",
        [id],
    )?;
    tx.execute(
        "UPDATE releases SET status = 'live', finished_at = ?2 WHERE id = ?1",
        params![id, now()],
    )?;
    tx.commit()?;
    Ok(())
}

pub fn live(conn: &Connection, app: &AppName) -> Result<Option<Release>, StateError> {
    Ok(conn
        .query_row(
            &format!(
                "SELECT {COLUMNS} FROM releases JOIN apps ON apps.id = releases.app_id
                 WHERE apps.name = ?1 AND status = 'live'"
            ),
            [app.as_str()],
            row_to_release,
        )
        .optional()?)
}

pub fn get(conn: &Connection, app: &AppName, version: u32) -> Result<Option<Release>, StateError> {
    Ok(conn
        .query_row(
            &format!(
                "SELECT {COLUMNS} FROM releases JOIN apps ON apps.id = releases.app_id
                 WHERE apps.name = ?1 AND version = ?2"
            ),
            params![app.as_str(), version],
            row_to_release,
        )
        .optional()?)
}

/// Newest first.
pub fn list(conn: &Connection, app: &AppName, limit: u32) -> Result<Vec<Release>, StateError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {COLUMNS} FROM releases JOIN apps ON apps.id = releases.app_id
         WHERE apps.name = ?1 ORDER BY version DESC LIMIT ?2"
    ))?;
    let rows = stmt
        .query_map(params![app.as_str(), limit], row_to_release)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// Every app's live release, for reconcile.
pub fn all_live(conn: &Connection) -> Result<Vec<Release>, StateError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {COLUMNS} FROM releases JOIN apps ON apps.id = releases.app_id
         WHERE status = 'live' ORDER BY apps.name"
    ))?;
    let rows = stmt
        .query_map([], row_to_release)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// A push's release waits for git to move `refname` from `old` (None: a
/// new branch) to its sha. git does that only after the pre-receive hook
/// returns, so a daemon killed in between leaves a live release the
/// branch never reached; start-up settles those ([`live_pending_refs`]).
pub fn set_pending_ref(
    conn: &mut Connection,
    id: i64,
    refname: &str,
    old: Option<&str>,
) -> Result<(), StateError> {
    conn.execute(
        "UPDATE releases SET pending_ref = ?2, pending_old = ?3 WHERE id = ?1",
        params![id, refname, old],
    )?;
    Ok(())
}

/// The ref update a live release was waiting for.
#[derive(Debug, Clone)]
pub struct PendingRef {
    pub release: Release,
    pub refname: String,
    pub old: Option<String>,
}

/// Live releases whose push's ref update was never confirmed.
pub fn live_pending_refs(conn: &Connection) -> Result<Vec<PendingRef>, StateError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {COLUMNS}, pending_ref, pending_old FROM releases
         JOIN apps ON apps.id = releases.app_id
         WHERE status = 'live' AND pending_ref IS NOT NULL ORDER BY apps.name"
    ))?;
    let rows = stmt
        .query_map([], |r| {
            Ok(PendingRef {
                release: row_to_release(r)?,
                refname: r.get(17)?,
                old: r.get(18)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// The ref update is settled (the branch agrees, or start-up dealt with it).
pub fn clear_pending_ref(conn: &mut Connection, id: i64) -> Result<(), StateError> {
    conn.execute(
        "UPDATE releases SET pending_ref = NULL, pending_old = NULL WHERE id = ?1",
        [id],
    )?;
    Ok(())
}

/// Releases left mid-pipeline by a daemon that died are failed at start-up:
/// nothing is driving them any more. Returns them (app, version), so their
/// half-built directories can go too.
pub fn fail_unfinished(conn: &mut Connection) -> Result<Vec<(AppName, u32)>, StateError> {
    let tx = write_tx(conn)?;
    let unfinished: Vec<(String, u32)> = {
        let mut stmt = tx.prepare(
            "SELECT apps.name, version FROM releases JOIN apps ON apps.id = releases.app_id
             WHERE status IN ('building', 'releasing', 'starting', 'checking')",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    tx.execute(
        "UPDATE releases SET status = 'failed', failed_stage = status,
         error = 'interrupted: the daemon stopped during the deploy', finished_at = ?1
         WHERE status IN ('building', 'releasing', 'starting', 'checking')",
        [now()],
    )?;
    tx.commit()?;
    Ok(unfinished
        .into_iter()
        .filter_map(|(name, v)| Some((AppName::parse(&name).ok()?, v)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{apps, test_db};

    #[test]
    fn versions_snapshots_and_live() {
        let (_dir, db) = test_db();
        let app = AppName::parse("shop").unwrap();
        db.call_blocking(|c| {
            apps::create(c, &app)?;
            let mut r1 = create(
                c,
                NewRelease {
                    app: &app,
                    sha: Some("abc"),
                    description: "deploy abc",
                    status: Status::Building,
                },
            )?;
            assert_eq!(r1.version, 1);
            r1.env.insert("K".into(), "v".into());
            r1.processes
                .insert(ProcessType::web(), "python app.py".into());
            r1.artifact = Some(Artifact::Slug { dir: "/x".into() });
            r1.image_digest = Some("sha256:abc".into());
            set_snapshot(c, &r1)?;
            make_live(c, r1.id)?;
            let r2 = create(
                c,
                NewRelease {
                    app: &app,
                    sha: Some("def"),
                    description: "deploy def",
                    status: Status::Building,
                },
            )?;
            assert_eq!(r2.version, 2);
            fail(c, r2.id, "build", "boom")?;
            let live_now = live(c, &app)?.unwrap();
            assert_eq!(live_now.version, 1);
            assert_eq!(live_now.env["K"], "v");
            assert_eq!(live_now.artifact, r1.artifact);
            assert_eq!(live_now.image_digest.as_deref(), Some("sha256:abc"));
            let r3 = create(
                c,
                NewRelease {
                    app: &app,
                    sha: None,
                    description: "config",
                    status: Status::Starting,
                },
            )?;
            make_live(c, r3.id)?;
            let all = list(c, &app, 10)?;
            let statuses: Vec<_> = all.iter().map(|r| r.status).collect();
            assert_eq!(
                statuses,
                vec![Status::Live, Status::Failed, Status::Superseded]
            );
            assert_eq!(all[1].failed_stage.as_deref(), Some("build"));
            Ok(())
        })
        .unwrap();
    }

    #[test]
    fn statuses_round_trip_and_unknown_ones_are_errors() {
        for st in [
            Status::Building,
            Status::Releasing,
            Status::Starting,
            Status::Checking,
            Status::Live,
            Status::Superseded,
            Status::Failed,
        ] {
            assert_eq!(Status::parse(st.as_str()), Ok(st));
        }
        assert_eq!(
            Status::parse("exploded").unwrap_err().to_string(),
            "unknown release status \"exploded\""
        );
    }
}
