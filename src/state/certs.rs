//! TLS certificates, the ACME account, and renewal/backoff state.
//!
//! One row per host name in `certificates`: `APP.DOMAIN` and each custom
//! domain get a certificate of their own, so one failing domain never
//! holds back the others. A row can exist without a certificate: it then
//! only carries the failure count and the time of the next attempt, so the
//! backoff survives a restart.
//!
//! ```text
//! acme renewer ──► store_issued (chain + key + dates, one transaction)
//!              ──► record_failure (attempts + 1, next_attempt_at, last_error)
//! certs:renew  ──► request_renewal (force_renew, next_attempt_at = now)
//! reconcile    ──► https_apps (which apps redirect HTTP to HTTPS)
//! ```
//!
//! Certificates and keys are only ever written inside one transaction with
//! their dates and serial, so a reader never sees a key from one order with
//! the chain of another.

use std::collections::HashSet;

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use super::{now, write_tx, StateError};
use crate::names::AppName;

/// A `certificates` row. `key_pem` is never serialized.
#[derive(Debug, Clone, Serialize)]
pub struct CertRecord {
    pub host: String,
    pub app: Option<AppName>,
    #[serde(skip)]
    pub chain_pem: Option<String>,
    #[serde(skip)]
    pub key_pem: Option<String>,
    /// Hex, as `openssl x509 -serial` prints it (without the prefix).
    pub serial: Option<String>,
    pub issuer: Option<String>,
    pub not_before: Option<i64>,
    pub not_after: Option<i64>,
    /// The challenge type that validated the last issuance.
    pub challenge: Option<String>,
    /// When the renewer will renew this certificate (a third of its lifetime
    /// left, or earlier when the CA's renewal info says so).
    pub renew_at: Option<i64>,
    pub ari_checked_at: Option<i64>,
    /// `certs:renew` asked for a renewal regardless of `renew_at`.
    pub force_renew: bool,
    /// Failed attempts since the last success.
    pub attempts: u32,
    /// Not before this time (backoff after a failure).
    pub next_attempt_at: Option<i64>,
    pub last_error: Option<String>,
    pub last_attempt_at: Option<i64>,
    pub updated_at: i64,
}

impl CertRecord {
    /// Has a certificate that is valid at `now`.
    pub fn is_valid_at(&self, now: i64) -> bool {
        self.chain_pem.is_some()
            && self.key_pem.is_some()
            && self.not_before.is_some_and(|t| t <= now)
            && self.not_after.is_some_and(|t| t > now)
    }
}

/// A freshly issued certificate, ready to store.
#[derive(Debug, Clone)]
pub struct Issued {
    pub host: String,
    pub chain_pem: String,
    pub key_pem: String,
    pub serial: String,
    pub issuer: String,
    pub not_before: i64,
    pub not_after: i64,
    pub renew_at: i64,
    pub challenge: String,
}

const COLUMNS: &str = "c.host, a.name, c.chain_pem, c.key_pem, c.serial, c.issuer, c.not_before, \
     c.not_after, c.challenge, c.renew_at, c.ari_checked_at, c.force_renew, c.attempts, \
     c.next_attempt_at, c.last_error, c.last_attempt_at, c.updated_at";

fn row_to_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<CertRecord> {
    let app: Option<String> = r.get(1)?;
    Ok(CertRecord {
        host: r.get(0)?,
        // A bad name in the file is hand-editing; show the row without it.
        app: app.and_then(|a| AppName::parse(&a).ok()),
        chain_pem: r.get(2)?,
        key_pem: r.get(3)?,
        serial: r.get(4)?,
        issuer: r.get(5)?,
        not_before: r.get(6)?,
        not_after: r.get(7)?,
        challenge: r.get(8)?,
        renew_at: r.get(9)?,
        ari_checked_at: r.get(10)?,
        force_renew: r.get::<_, i64>(11)? != 0,
        attempts: u32::try_from(r.get::<_, i64>(12)?).unwrap_or(u32::MAX),
        next_attempt_at: r.get(13)?,
        last_error: r.get(14)?,
        last_attempt_at: r.get(15)?,
        updated_at: r.get(16)?,
    })
}

/// Every certificate row, or one app's, ordered by host.
pub fn list(conn: &Connection, app: Option<&AppName>) -> Result<Vec<CertRecord>, StateError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM certificates c LEFT JOIN apps a ON a.id = c.app_id
         WHERE ?1 IS NULL OR a.name = ?1 ORDER BY c.host"
    );
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt
        .query_map([app.map(AppName::as_str)], row_to_record)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

pub fn get(conn: &Connection, host: &str) -> Result<Option<CertRecord>, StateError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM certificates c LEFT JOIN apps a ON a.id = c.app_id
         WHERE c.host = ?1"
    );
    Ok(conn.query_row(&sql, [host], row_to_record).optional()?)
}

fn app_id(conn: &Connection, app: &AppName) -> Result<i64, StateError> {
    conn.query_row("SELECT id FROM apps WHERE name = ?1", [app.as_str()], |r| {
        r.get(0)
    })
    .optional()?
    .ok_or_else(|| StateError::NotFound(format!("app {app}")))
}

/// Store a new certificate for `issued.host` and clear its failure state,
/// in one transaction. The previous certificate is replaced.
pub fn store_issued(
    conn: &mut Connection,
    app: Option<&AppName>,
    issued: &Issued,
) -> Result<(), StateError> {
    let tx = write_tx(conn)?;
    // `None`: the control host, which belongs to no app.
    let app_id = app.map(|a| app_id(&tx, a)).transpose()?;
    tx.execute(
        "INSERT INTO certificates (host, app_id, chain_pem, key_pem, serial, issuer, not_before,
             not_after, challenge, renew_at, ari_checked_at, force_renew, attempts,
             next_attempt_at, last_error, last_attempt_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, NULL, 0, 0, NULL, NULL, ?11, ?11)
         ON CONFLICT (host) DO UPDATE SET
             app_id = excluded.app_id, chain_pem = excluded.chain_pem,
             key_pem = excluded.key_pem, serial = excluded.serial, issuer = excluded.issuer,
             not_before = excluded.not_before, not_after = excluded.not_after,
             challenge = excluded.challenge, renew_at = excluded.renew_at,
             ari_checked_at = NULL, force_renew = 0, attempts = 0, next_attempt_at = NULL,
             last_error = NULL, last_attempt_at = excluded.last_attempt_at,
             updated_at = excluded.updated_at",
        params![
            issued.host,
            app_id,
            issued.chain_pem,
            issued.key_pem,
            issued.serial,
            issued.issuer,
            issued.not_before,
            issued.not_after,
            issued.challenge,
            issued.renew_at,
            now(),
        ],
    )?;
    tx.commit()?;
    Ok(())
}

/// Record a failed attempt for `host`: one more attempt, the error, and
/// when to try next (computed by the caller from the returned count).
/// Returns the attempt count after this failure. Any certificate stays.
pub fn record_failure(
    conn: &mut Connection,
    app: Option<&AppName>,
    host: &str,
    error: &str,
    next_attempt_at: impl Fn(u32) -> i64,
) -> Result<u32, StateError> {
    let tx = write_tx(conn)?;
    let app_id = app.map(|a| app_id(&tx, a)).transpose()?;
    let attempts: i64 = tx
        .query_row(
            "SELECT attempts FROM certificates WHERE host = ?1",
            [host],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(0);
    let attempts = u32::try_from(attempts)
        .unwrap_or(u32::MAX)
        .saturating_add(1);
    let t = now();
    tx.execute(
        "INSERT INTO certificates (host, app_id, attempts, next_attempt_at, last_error,
             last_attempt_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)
         ON CONFLICT (host) DO UPDATE SET
             app_id = excluded.app_id, attempts = excluded.attempts,
             next_attempt_at = excluded.next_attempt_at, last_error = excluded.last_error,
             last_attempt_at = excluded.last_attempt_at, updated_at = excluded.updated_at",
        params![host, app_id, attempts, next_attempt_at(attempts), error, t],
    )?;
    tx.commit()?;
    Ok(attempts)
}

/// `certs:renew`: renew every certificate of `app` at the next scan, past
/// any backoff. Rows are created for hosts that have none yet, so a host
/// waiting out a backoff is retried too. Returns the rows marked.
pub fn request_renewal(
    conn: &mut Connection,
    app: &AppName,
    hosts: &[String],
) -> Result<usize, StateError> {
    let tx = write_tx(conn)?;
    let app_id = app_id(&tx, app)?;
    let t = now();
    let mut n = 0;
    for host in hosts {
        n += tx.execute(
            "INSERT INTO certificates (host, app_id, force_renew, next_attempt_at, updated_at)
             VALUES (?1, ?2, 1, ?3, ?3)
             ON CONFLICT (host) DO UPDATE SET
                 force_renew = 1, next_attempt_at = excluded.next_attempt_at,
                 updated_at = excluded.updated_at",
            params![host, app_id, t],
        )?;
    }
    tx.commit()?;
    Ok(n)
}

/// Record what the CA's renewal info said: renew at `renew_at`.
pub fn set_renewal_window(
    conn: &mut Connection,
    host: &str,
    renew_at: i64,
    checked_at: i64,
) -> Result<(), StateError> {
    conn.execute(
        "UPDATE certificates SET renew_at = ?2, ari_checked_at = ?3 WHERE host = ?1",
        params![host, renew_at, checked_at],
    )?;
    Ok(())
}

/// Apps whose plain HTTP requests redirect to HTTPS: the app's switch is
/// on (`apps.redirect_https`, the default) and every host it is served at
/// (`APP.DOMAIN` and each custom domain) has a certificate valid at `now`.
/// A host without one (a local name, or an order still failing) keeps the
/// whole app on plain HTTP: a redirect to a handshake that fails would be
/// worse than no redirect.
pub fn https_apps(
    conn: &Connection,
    domain: &str,
    now: i64,
) -> Result<HashSet<AppName>, StateError> {
    let mut stmt = conn.prepare(
        "SELECT a.name FROM apps a
         WHERE a.redirect_https = 1
           AND EXISTS (SELECT 1 FROM certificates c
                       WHERE c.host = a.name || '.' || ?1 AND c.chain_pem IS NOT NULL
                         AND c.not_before <= ?2 AND c.not_after > ?2)
           AND NOT EXISTS (SELECT 1 FROM domains d
                           WHERE d.app_id = a.id AND NOT EXISTS (
                               SELECT 1 FROM certificates c
                               WHERE c.host = d.host AND c.chain_pem IS NOT NULL
                                 AND c.not_before <= ?2 AND c.not_after > ?2))",
    )?;
    let names = stmt
        .query_map(params![domain, now], |r| r.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(names
        .into_iter()
        .filter_map(|n| AppName::parse(&n).ok())
        .collect())
}

/// Hosts that have a valid certificate now: a host on this list redirects
/// plain HTTP to HTTPS (when its app's switch is on), whatever the app's
/// other hosts have, as Caddy does per host.
pub fn valid_cert_hosts(conn: &Connection, now: i64) -> Result<HashSet<String>, StateError> {
    let mut stmt = conn.prepare(
        "SELECT host FROM certificates
         WHERE chain_pem IS NOT NULL AND not_before <= ?1 AND not_after > ?1",
    )?;
    let hosts = stmt
        .query_map([now], |r| r.get::<_, String>(0))?
        .collect::<Result<HashSet<_>, _>>()?;
    Ok(hosts)
}

/// The per-app switch `apps.redirect_https`.
pub fn redirect_enabled(conn: &Connection, app: &AppName) -> Result<bool, StateError> {
    conn.query_row(
        "SELECT redirect_https FROM apps WHERE name = ?1",
        [app.as_str()],
        |r| r.get::<_, i64>(0),
    )
    .optional()?
    .map(|v| v != 0)
    .ok_or_else(|| StateError::NotFound(format!("app {app}")))
}

pub fn set_redirect(conn: &mut Connection, app: &AppName, on: bool) -> Result<(), StateError> {
    let n = conn.execute(
        "UPDATE apps SET redirect_https = ?2 WHERE name = ?1",
        params![app.as_str(), on as i64],
    )?;
    if n == 0 {
        return Err(StateError::NotFound(format!("app {app}")));
    }
    Ok(())
}

/// The stored ACME account credentials (JSON) for a directory URL. An
/// account belongs to one CA, so changing `--acme-directory` makes a new one.
pub fn account(conn: &Connection, directory: &str) -> Result<Option<String>, StateError> {
    Ok(conn
        .query_row(
            "SELECT credentials FROM acme_accounts WHERE directory = ?1",
            [directory],
            |r| r.get(0),
        )
        .optional()?)
}

pub fn save_account(
    conn: &mut Connection,
    directory: &str,
    credentials: &str,
) -> Result<(), StateError> {
    conn.execute(
        "INSERT INTO acme_accounts (directory, credentials, created_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (directory) DO UPDATE SET credentials = excluded.credentials",
        params![directory, credentials, now()],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{apps, test_db};

    fn issued(host: &str, serial: &str) -> Issued {
        let t = now();
        Issued {
            host: host.into(),
            chain_pem: "chain".into(),
            key_pem: "key".into(),
            serial: serial.into(),
            issuer: "Pebble".into(),
            not_before: t - 10,
            not_after: t + 90 * 86400,
            renew_at: t + 60 * 86400,
            challenge: "http-01".into(),
        }
    }

    #[test]
    fn failures_count_and_success_clears_them() {
        let (_dir, db) = test_db();
        let app = AppName::parse("web").unwrap();
        db.call_blocking(|c| {
            apps::create(c, &app)?;
            let n = record_failure(c, Some(&app), "web.example.com", "CA down", |n| {
                100 + n as i64
            })?;
            assert_eq!(n, 1);
            let n = record_failure(c, Some(&app), "web.example.com", "CA down", |n| {
                100 + n as i64
            })?;
            assert_eq!(n, 2);
            let r = get(c, "web.example.com")?.unwrap();
            assert_eq!(r.next_attempt_at, Some(102));
            assert_eq!(r.last_error.as_deref(), Some("CA down"));
            assert!(!r.is_valid_at(now()));

            store_issued(c, Some(&app), &issued("web.example.com", "01"))?;
            let r = get(c, "web.example.com")?.unwrap();
            assert_eq!((r.attempts, r.last_error.as_deref()), (0, None));
            assert!(r.is_valid_at(now()));

            // A failure later keeps the certificate.
            record_failure(c, Some(&app), "web.example.com", "again", |_| 0)?;
            let r = get(c, "web.example.com")?.unwrap();
            assert!(r.is_valid_at(now()) && r.attempts == 1);

            request_renewal(c, &app, &["web.example.com".into()])?;
            assert!(get(c, "web.example.com")?.unwrap().force_renew);
            assert_eq!(list(c, Some(&app))?.len(), 1);
            Ok(())
        })
        .unwrap();
    }

    #[test]
    fn redirect_needs_a_valid_cert_for_every_host() {
        let (_dir, db) = test_db();
        let app = AppName::parse("web").unwrap();
        db.call_blocking(|c| {
            apps::create(c, &app)?;
            assert!(https_apps(c, "example.com", now())?.is_empty());
            store_issued(c, Some(&app), &issued("web.example.com", "01"))?;
            assert!(https_apps(c, "example.com", now())?.contains(&app));
            c.execute(
                "INSERT INTO domains (app_id, host, created_at)
                 SELECT id, 'www.shop.org', 0 FROM apps WHERE name = 'web'",
                [],
            )?;
            assert!(https_apps(c, "example.com", now())?.is_empty());
            store_issued(c, Some(&app), &issued("www.shop.org", "02"))?;
            assert!(https_apps(c, "example.com", now())?.contains(&app));
            set_redirect(c, &app, false)?;
            assert!(!redirect_enabled(c, &app)?);
            assert!(https_apps(c, "example.com", now())?.is_empty());
            Ok(())
        })
        .unwrap();
    }
}
