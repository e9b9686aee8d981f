//! State: the one SQLite file, and plain functions over a connection.
//!
//! - `mod.rs` opens the database (WAL, foreign keys, busy timeout) and runs
//!   the numbered migrations;
//! - one file per table family (`apps.rs`, `keys.rs`, ...).
//!
//! Writes run in `BEGIN IMMEDIATE` transactions so that two writers never
//! deadlock on a lock upgrade. Async code reaches the connection only through
//! [`Db::call`], which runs on tokio's blocking pool, so SQLite never stalls
//! an async worker.

pub mod app_users;
pub mod apps;
pub mod audit;
pub mod certs;
pub mod config_vars;
pub mod domains;
pub mod formation;
pub mod keys;
pub mod previews;
pub mod releases;
pub mod storage;
pub mod sync;
pub mod tokens;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, Transaction, TransactionBehavior};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot open the database {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("database migration {version} failed: {source}")]
    Migrate {
        version: usize,
        #[source]
        source: rusqlite::Error,
    },
    #[error("the database is from a newer Cygni (schema {found}, this build knows {known})")]
    TooNew { found: usize, known: usize },
    #[error("database error: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("{0} already exists")]
    Exists(String),
    #[error("{0} not found")]
    NotFound(String),
    /// A pool ran out (app user ids): the message is the whole line, and
    /// nothing was written.
    #[error("{0}")]
    Full(String),
    #[error("database task failed: {0}")]
    Task(String),
}

/// What a user is told when SQLite stayed locked past the busy timeout.
pub const BUSY_MESSAGE: &str = "the database is busy; nothing was changed; try again";

impl StateError {
    /// Another writer held the database past the busy timeout: the
    /// transaction was rolled back, so nothing changed and a retry may work.
    pub fn is_busy(&self) -> bool {
        match self {
            StateError::Sql(e) | StateError::Open { source: e, .. } => sql_busy(e),
            _ => false,
        }
    }
}

fn sql_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// Is a busy database anywhere in `e`'s chain of causes?
pub fn busy_in_chain(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err
            .downcast_ref::<StateError>()
            .is_some_and(StateError::is_busy)
            || err.downcast_ref::<rusqlite::Error>().is_some_and(sql_busy)
        {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Numbered migrations: index + 1 is the schema version (`PRAGMA user_version`).
/// Never edit one that has shipped; append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: apps, SSH keys and deployer grants.
    "CREATE TABLE apps (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        created_at INTEGER NOT NULL,
        deploy_branch TEXT
    );
    CREATE TABLE keys (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        fingerprint TEXT NOT NULL UNIQUE,
        public_key TEXT NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('admin', 'deployer')),
        created_at INTEGER NOT NULL
    );
    CREATE TABLE grants (
        key_id INTEGER NOT NULL REFERENCES keys(id) ON DELETE CASCADE,
        app_id INTEGER NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
        PRIMARY KEY (key_id, app_id)
    );",
    // 2: releases, config vars and the process formation.
    "CREATE TABLE releases (
        id INTEGER PRIMARY KEY,
        app_id INTEGER NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
        version INTEGER NOT NULL,
        sha TEXT,
        description TEXT NOT NULL,
        builder TEXT,
        artifact TEXT,
        env TEXT NOT NULL,
        processes TEXT NOT NULL,
        status TEXT NOT NULL,
        failed_stage TEXT,
        error TEXT,
        created_at INTEGER NOT NULL,
        finished_at INTEGER,
        UNIQUE (app_id, version)
    );
    CREATE TABLE config_vars (
        app_id INTEGER NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        value BLOB NOT NULL,
        PRIMARY KEY (app_id, name)
    );
    CREATE TABLE formation (
        app_id INTEGER NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
        process TEXT NOT NULL,
        quantity INTEGER NOT NULL CHECK (quantity >= 0),
        PRIMARY KEY (app_id, process)
    );",
    // 3: custom domains, and per-app switches.
    "CREATE TABLE domains (
        id INTEGER PRIMARY KEY,
        app_id INTEGER NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
        host TEXT NOT NULL UNIQUE,
        created_at INTEGER NOT NULL
    );
    ALTER TABLE apps ADD COLUMN redirect_https INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE apps ADD COLUMN stopped INTEGER NOT NULL DEFAULT 0;",
    // 4: TLS certificates (one per host), the ACME account, renewal and
    // backoff state (see state/certs.rs).
    "CREATE TABLE acme_accounts (
        directory TEXT PRIMARY KEY,
        credentials TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE certificates (
        host TEXT PRIMARY KEY,
        app_id INTEGER REFERENCES apps(id) ON DELETE CASCADE,
        chain_pem TEXT,
        key_pem TEXT,
        serial TEXT,
        issuer TEXT,
        not_before INTEGER,
        not_after INTEGER,
        challenge TEXT,
        renew_at INTEGER,
        ari_checked_at INTEGER,
        force_renew INTEGER NOT NULL DEFAULT 0,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at INTEGER,
        last_error TEXT,
        last_attempt_at INTEGER,
        updated_at INTEGER NOT NULL
    );",
    // 5: a release carries its health check and resource limits, so
    // restarts, scale-ups and config releases check what the deploy did.
    "ALTER TABLE releases ADD COLUMN health TEXT;
    ALTER TABLE releases ADD COLUMN limits TEXT;",
    // 6: the viewer role. SQLite cannot change a CHECK in place: the table
    // is rebuilt (migrations run with foreign keys off, then checked).
    "CREATE TABLE keys_new (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        fingerprint TEXT NOT NULL UNIQUE,
        public_key TEXT NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('admin', 'deployer', 'viewer')),
        created_at INTEGER NOT NULL
    );
    INSERT INTO keys_new (id, name, fingerprint, public_key, role, created_at)
        SELECT id, name, fingerprint, public_key, role, created_at FROM keys;
    DROP TABLE keys;
    ALTER TABLE keys_new RENAME TO keys;",
    // 7: API tokens (stored as SHA-256 hashes only) with per-app grants,
    // and the audit log (who changed what, from where, and the result).
    "CREATE TABLE tokens (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        lookup TEXT NOT NULL UNIQUE,
        secret_hash BLOB NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('admin', 'deployer', 'viewer')),
        created_by TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER,
        last_used_at INTEGER
    );
    CREATE TABLE token_grants (
        token_id INTEGER NOT NULL REFERENCES tokens(id) ON DELETE CASCADE,
        app_id INTEGER NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
        PRIMARY KEY (token_id, app_id)
    );
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        at INTEGER NOT NULL,
        actor TEXT NOT NULL,
        actor_kind TEXT NOT NULL,
        role TEXT NOT NULL,
        source TEXT NOT NULL,
        address TEXT,
        action TEXT NOT NULL,
        app TEXT,
        detail TEXT NOT NULL DEFAULT '',
        result TEXT NOT NULL,
        message TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX audit_at ON audit(at);
    CREATE INDEX audit_app ON audit(app, at);",
    // 8: the registry: the manifest digest of a release's published image.
    "ALTER TABLE releases ADD COLUMN image_digest TEXT;",
    // 9: an app's persistent storage mounts (see state/storage.rs).
    "CREATE TABLE storage_mounts (
        id INTEGER PRIMARY KEY,
        app_id INTEGER NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        path TEXT NOT NULL,
        host_path TEXT,
        created_at INTEGER NOT NULL,
        UNIQUE (app_id, name),
        UNIQUE (app_id, path)
    );",
    // 10: the per-app access log (`logs:set APP access-log on`), off by default.
    "ALTER TABLE apps ADD COLUMN access_log INTEGER NOT NULL DEFAULT 0;",
    // 11: the ref update a push's release waits for (settled at start-up
    // when the daemon died between going live and git moving the branch).
    "ALTER TABLE releases ADD COLUMN pending_ref TEXT;
     ALTER TABLE releases ADD COLUMN pending_old TEXT;",
    // 12: where apps sync from and each sync's states (see state/sync.rs).
    sync::MIGRATION,
    // 13: preview environments (see state/previews.rs). A preview is an
    // app row of its own; these tables only link it to its parent.
    "CREATE TABLE preview_settings (
        app_id INTEGER PRIMARY KEY REFERENCES apps(id) ON DELETE CASCADE,
        pattern TEXT NOT NULL,
        idle_secs INTEGER NOT NULL CHECK (idle_secs > 0),
        enabled_at INTEGER NOT NULL
    );
    CREATE TABLE previews (
        app_id INTEGER PRIMARY KEY REFERENCES apps(id) ON DELETE CASCADE,
        parent_id INTEGER NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        branch TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        last_push_at INTEGER NOT NULL,
        last_request_at INTEGER,
        UNIQUE (parent_id, name)
    );
    CREATE INDEX previews_parent ON previews(parent_id);",
    // 14: syncs that fetch submodules (see state/sync.rs).
    sync::MIGRATION_SUBMODULES,
    // 15: the uid/gid each app runs as (see state/app_users.rs).
    app_users::MIGRATION,
];

/// A handle to the database, cheap to clone.
#[derive(Clone)]
pub struct Db {
    conn: Arc<Mutex<Connection>>,
}

impl Db {
    /// Open (creating if needed) and migrate the database at `path`.
    pub fn open(path: &Path) -> Result<Db, StateError> {
        let open_err = |source| StateError::Open {
            path: path.to_owned(),
            source,
        };
        let mut conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", true)
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        migrate(&mut conn)?;
        restrict(path).map_err(|e| StateError::Open {
            path: path.to_owned(),
            source: rusqlite::Error::ToSqlConversionFailure(Box::new(e)),
        })?;
        Ok(Db {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Run `f` on the connection from async code, on the blocking pool.
    pub async fn call<F, R>(&self, f: F) -> Result<R, StateError>
    where
        F: FnOnce(&mut Connection) -> Result<R, StateError> + Send + 'static,
        R: Send + 'static,
    {
        let db = self.clone();
        tokio::task::spawn_blocking(move || db.call_blocking(f))
            .await
            .map_err(|e| StateError::Task(e.to_string()))?
    }

    /// Run `f` on the connection from a blocking context.
    pub fn call_blocking<F, R>(&self, f: F) -> Result<R, StateError>
    where
        F: FnOnce(&mut Connection) -> Result<R, StateError>,
    {
        // A panic while holding the lock poisons it; the connection itself is
        // still consistent (SQLite rolled back the open transaction), so go on.
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut conn)
    }
}

/// The database holds every app's config vars and the TLS private keys:
/// only the daemon's user may read it (apps run as another user). SQLite
/// gives the -wal and -shm files the database's mode when it creates them;
/// ones left from before are fixed here too.
fn restrict(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        match std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// Start a write transaction that takes the write lock up front.
pub fn write_tx(conn: &mut Connection) -> Result<Transaction<'_>, StateError> {
    Ok(conn.transaction_with_behavior(TransactionBehavior::Immediate)?)
}

fn migrate(conn: &mut Connection) -> Result<(), StateError> {
    let current: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let current = usize::try_from(current).unwrap_or(usize::MAX);
    if current > MIGRATIONS.len() {
        return Err(StateError::TooNew {
            found: current,
            known: MIGRATIONS.len(),
        });
    }
    if current == MIGRATIONS.len() {
        return Ok(());
    }
    // Table rebuilds (migration 6) must not cascade deletes: foreign keys
    // are off while migrating (a no-op inside a transaction, so here), and
    // every reference is checked before each migration commits.
    conn.pragma_update(None, "foreign_keys", false)?;
    let result = (|| {
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
            let version = i + 1;
            let tx = write_tx(conn)?;
            tx.execute_batch(sql)
                .and_then(|()| {
                    let dangling: i64 =
                        tx.query_row("SELECT COUNT(*) FROM pragma_foreign_key_check", [], |r| {
                            r.get(0)
                        })?;
                    if dangling > 0 {
                        return Err(rusqlite::Error::SqliteFailure(
                            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CONSTRAINT),
                            Some(format!("{dangling} dangling references")),
                        ));
                    }
                    tx.pragma_update(None, "user_version", version as i64)
                })
                .map_err(|source| StateError::Migrate { version, source })?;
            tx.commit()
                .map_err(|source| StateError::Migrate { version, source })?;
        }
        Ok(())
    })();
    conn.pragma_update(None, "foreign_keys", true)?;
    result
}

/// The row id of an app, or NotFound.
pub(crate) fn app_id(conn: &Connection, app: &crate::names::AppName) -> Result<i64, StateError> {
    use rusqlite::OptionalExtension;
    conn.query_row("SELECT id FROM apps WHERE name = ?1", [app.as_str()], |r| {
        r.get(0)
    })
    .optional()?
    .ok_or_else(|| StateError::NotFound(format!("app {app}")))
}

/// Seconds since the epoch, for `created_at` columns.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
pub(crate) fn test_db() -> (tempfile::TempDir, Db) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(&dir.path().join("cygni.db")).expect("open db");
    (dir, db)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_idempotent_and_versioned() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        drop(Db::open(&path).unwrap());
        let db = Db::open(&path).unwrap();
        let v: i64 = db
            .call_blocking(|c| Ok(c.pragma_query_value(None, "user_version", |r| r.get(0))?))
            .unwrap();
        assert_eq!(v as usize, MIGRATIONS.len());
        let mode: String = db
            .call_blocking(|c| Ok(c.pragma_query_value(None, "journal_mode", |r| r.get(0))?))
            .unwrap();
        assert_eq!(mode, "wal");
        use std::os::unix::fs::PermissionsExt;
        let perm = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(perm & 0o777, 0o600, "the database is private");
    }

    /// Migration 6 rebuilds `keys`: keys and their grants survive it.
    #[test]
    fn the_keys_rebuild_keeps_keys_and_grants() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "foreign_keys", true).unwrap();
        for sql in &MIGRATIONS[..5] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 5).unwrap();
        conn.execute_batch(
            "INSERT INTO apps (id, name, created_at) VALUES (1, 'shop', 0);
             INSERT INTO keys (id, name, fingerprint, public_key, role, created_at)
                 VALUES (7, 'dev', 'SHA256:x', 'ssh-ed25519 AAAA', 'deployer', 0);
             INSERT INTO grants (key_id, app_id) VALUES (7, 1);",
        )
        .unwrap();
        drop(conn);
        let db = Db::open(&path).unwrap();
        let (grants, role): (i64, String) = db
            .call_blocking(|c| {
                c.execute(
                    "INSERT INTO keys (name, fingerprint, public_key, role, created_at)
                     VALUES ('v', 'SHA256:y', 'ssh-ed25519 BBBB', 'viewer', 0)",
                    [],
                )?;
                Ok((
                    c.query_row("SELECT COUNT(*) FROM grants WHERE key_id = 7", [], |r| {
                        r.get(0)
                    })?,
                    c.query_row("SELECT role FROM keys WHERE id = 7", [], |r| r.get(0))?,
                ))
            })
            .unwrap();
        assert_eq!((grants, role.as_str()), (1, "deployer"));
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 999).unwrap();
        drop(conn);
        assert!(matches!(Db::open(&path), Err(StateError::TooNew { .. })));
    }
}
