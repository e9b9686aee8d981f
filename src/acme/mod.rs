//! ACME: certificates for every app host and custom domain, ordered and
//! renewed in the background, served by the proxy's TLS resolver.
//!
//! ```text
//!            start-up · every SCAN_INTERVAL · routes changed · notify() · certs:renew
//!                                        │
//!                                        ▼
//! SQLite (apps, domains, certificates) ─► scan ─► install valid certs ─► CertStore (proxy/tls.rs)
//!                                        │
//!                                        ├─ hosts due (none yet / a third of life left /
//!                                        │  ARI window / forced) and not backing off
//!                                        ▼
//!                            order (order.rs): HTTP-01, then TLS-ALPN-01
//!                                        │
//!                  ok ──► store_issued (one transaction) ──► CertStore::insert ──► on_change
//!                 err ──► record_failure: attempts + 1, next try 1 min · 2^n (≤ 24 h)
//! ```
//!
//! Which hosts get certificates: `APP.DOMAIN` for every app, every
//! custom domain and the control host `cygni.DOMAIN`, unless the name is local (see [`is_local_host`]). Nothing
//! is ever ordered for a name a client asks for: the TLS resolver only
//! reads the store.
//!
//! Failures never touch the certificate being served; the backoff lives in
//! SQLite, so a restart does not reset it into a tight loop against a CA.

mod account;
mod order;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use instant_acme::{Account, CertificateIdentifier};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tokio::sync::{Mutex, Notify};
use tokio_util::sync::CancellationToken;

use crate::names::AppName;
use crate::proxy::tls::{self, TlsError};
use crate::proxy::{CertStore, Challenges, RouteTable};
use crate::state::{self, certs::CertRecord, Db, StateError};

/// The renewer scans at least this often.
pub const SCAN_INTERVAL: Duration = Duration::from_secs(300);
/// How often the renewer looks whether the routes changed (an app or a
/// domain added); a pointer comparison, no I/O.
const ROUTES_POLL: Duration = Duration::from_secs(2);
/// First retry after a failure; doubles per failure up to [`BACKOFF_MAX`].
pub const BACKOFF_MIN: i64 = 60;
pub const BACKOFF_MAX: i64 = 24 * 3600;
/// Ask the CA's renewal info (ARI) about a certificate at most this often.
const ARI_PERIOD: i64 = 6 * 3600;

#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("cannot read the ACME CA root {path}: {source}")]
    CaRoot {
        path: PathBuf,
        #[source]
        source: instant_acme::Error,
    },
    #[error("cannot set up the ACME HTTP client: {source}")]
    Client {
        #[source]
        source: instant_acme::Error,
    },
    #[error("ACME account: {source}")]
    Account {
        #[source]
        source: instant_acme::Error,
    },
    #[error("the stored ACME account is unreadable: {source}")]
    StoredAccount {
        #[source]
        source: serde_json::Error,
    },
    #[error("{host}: the CA failed or is unreachable: {source}")]
    Ca {
        host: String,
        #[source]
        source: instant_acme::Error,
    },
    #[error("{host}: {challenge} validation failed: {detail}")]
    Validation {
        host: String,
        challenge: &'static str,
        detail: String,
    },
    #[error("{host}: the CA sent an unusable certificate: {detail}")]
    BadCertificate { host: String, detail: String },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    State(#[from] StateError),
}

/// What the renewer needs from the configuration.
#[derive(Debug, Clone)]
pub struct AcmeConfig {
    /// The ACME directory URL (`--acme-directory`).
    pub directory: String,
    /// Account contact (`--acme-email`).
    pub email: Option<String>,
    /// A PEM root to trust instead of the system's, for a private CA
    /// (`--acme-ca`).
    pub ca: Option<PathBuf>,
    /// Apps are at `APP.DOMAIN` (`--domain`).
    pub domain: String,
}

/// The renewer's handle; cheap to clone.
#[derive(Clone)]
pub struct Acme {
    inner: Arc<Inner>,
}

struct Inner {
    db: Db,
    store: Arc<CertStore>,
    challenges: Arc<Challenges>,
    config: AcmeConfig,
    wake: Notify,
    account: Mutex<Option<Account>>,
    /// (host, serial) of what the store serves, to skip re-parsing PEM when
    /// nothing changed.
    installed: std::sync::Mutex<Vec<(String, String)>>,
    /// Where failed orders are counted (set once at start-up).
    metrics: std::sync::OnceLock<Arc<crate::metrics::Metrics>>,
}

/// Whether `host` is a name no public CA would validate, so none is
/// ordered: IP addresses, single labels (`localhost`, intranet names) and
/// names under the special-use or private suffixes `localhost`, `local`,
/// `test`, `example`, `invalid`, `internal`, `lan`, `localdomain`,
/// `home.arpa`.
pub fn is_local_host(host: &str) -> bool {
    const LOCAL: [&str; 9] = [
        "localhost",
        "local",
        "test",
        "example",
        "invalid",
        "internal",
        "lan",
        "localdomain",
        "home.arpa",
    ];
    let host = host.trim_end_matches('.');
    if host.parse::<std::net::IpAddr>().is_ok() || host.starts_with('[') || !host.contains('.') {
        return true;
    }
    LOCAL
        .iter()
        .any(|s| host == *s || (host.ends_with(s) && host[..host.len() - s.len()].ends_with('.')))
}

/// A name we would put in an order: lowercase LDH labels, dots between.
fn is_orderable(host: &str) -> bool {
    !is_local_host(host)
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// Seconds to wait after the `attempts`-th failure in a row.
pub fn backoff(attempts: u32) -> i64 {
    let exp = attempts.saturating_sub(1).min(20);
    (BACKOFF_MIN << exp).min(BACKOFF_MAX)
}

/// Renew once a third of the lifetime is left.
fn default_renew_at(not_before: i64, not_after: i64) -> i64 {
    not_after - (not_after - not_before) / 3
}

impl Acme {
    pub fn new(
        db: Db,
        store: Arc<CertStore>,
        challenges: Arc<Challenges>,
        config: AcmeConfig,
    ) -> Acme {
        Acme {
            inner: Arc::new(Inner {
                db,
                store,
                challenges,
                config,
                wake: Notify::new(),
                account: Mutex::new(None),
                installed: std::sync::Mutex::new(Vec::new()),
                metrics: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Count failed orders in `metrics` from now on.
    pub fn set_metrics(&self, metrics: Arc<crate::metrics::Metrics>) {
        let _ = self.inner.metrics.set(metrics);
    }

    /// Scan now (a domain was added, say) instead of at the next tick.
    /// Cheap and non-blocking; calls while a scan runs fold into one more.
    pub fn notify(&self) {
        self.inner.wake.notify_one();
    }

    /// The hosts of `app` that get certificates.
    pub async fn hosts_of(&self, app: &AppName) -> Result<Vec<String>, AcmeError> {
        Ok(self
            .wanted()
            .await?
            .into_iter()
            .filter(|(_, a)| a.as_ref() == Some(app))
            .map(|(h, _)| h)
            .collect())
    }

    /// `certs:renew`: renew every certificate of `app` now, past any
    /// backoff. Returns the hosts concerned (empty: the app has none that
    /// can get a certificate).
    pub async fn request_renewal(&self, app: &AppName) -> Result<Vec<String>, AcmeError> {
        let hosts = self.hosts_of(app).await?;
        if !hosts.is_empty() {
            let (a, h) = (app.clone(), hosts.clone());
            self.inner
                .db
                .call(move |c| state::certs::request_renewal(c, &a, &h))
                .await?;
            self.notify();
        }
        Ok(hosts)
    }

    /// Every (host, app) that should have a certificate; the control host
    /// (`cygni.DOMAIN`: the API, git over HTTPS) belongs to no app.
    async fn wanted(&self) -> Result<Vec<(String, Option<AppName>)>, AcmeError> {
        let (apps, domains) = self
            .inner
            .db
            .call(|c| Ok((state::apps::list(c)?, state::domains::all(c)?)))
            .await?;
        let domain = &self.inner.config.domain;
        let mut wanted: Vec<(String, Option<AppName>)> = apps
            .into_iter()
            .map(|a| (format!("{}.{domain}", a.name), Some(a.name)))
            .chain(
                domains
                    .into_iter()
                    .map(|(app, host)| (host.to_string(), Some(app))),
            )
            .chain(std::iter::once((format!("cygni.{domain}"), None)))
            .filter(|(h, _)| is_orderable(h))
            .collect();
        wanted.sort();
        wanted.dedup_by(|a, b| a.0 == b.0);
        Ok(wanted)
    }

    /// Serve the stored certificates that are valid now. Call once before
    /// the HTTPS listener starts, so a restart serves from the first
    /// handshake; the scans keep it current afterwards.
    pub async fn install_stored(&self) -> Result<(), AcmeError> {
        let wanted = self.wanted().await?;
        let records = self.inner.db.call(|c| state::certs::list(c, None)).await?;
        self.install(&wanted, &records);
        Ok(())
    }

    fn install(&self, wanted: &[(String, Option<AppName>)], records: &[CertRecord]) {
        let now = state::now();
        let by_host: HashMap<&str, &CertRecord> =
            records.iter().map(|r| (r.host.as_str(), r)).collect();
        let serving: Vec<(&str, &CertRecord)> = wanted
            .iter()
            .filter_map(|(h, _)| by_host.get(h.as_str()).map(|r| (h.as_str(), *r)))
            .filter(|(_, r)| r.is_valid_at(now))
            .collect();
        let fingerprint: Vec<(String, String)> = serving
            .iter()
            .map(|(h, r)| (h.to_string(), r.serial.clone().unwrap_or_default()))
            .collect();
        let mut installed = self
            .inner
            .installed
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if *installed == fingerprint {
            return;
        }
        let mut map = HashMap::new();
        for (host, r) in serving {
            let (Some(chain), Some(key)) = (&r.chain_pem, &r.key_pem) else {
                continue;
            };
            match tls::certified_key(host, chain, key) {
                Ok(ck) => {
                    map.insert(host.to_owned(), ck);
                }
                Err(e) => tracing::error!(error = %e, "stored certificate not served"),
            }
        }
        tracing::debug!(certificates = map.len(), "serving certificates");
        self.inner.store.replace(map);
        *installed = fingerprint;
    }

    async fn account(&self) -> Result<Account, AcmeError> {
        let mut slot = self.inner.account.lock().await;
        if let Some(a) = &*slot {
            return Ok(a.clone());
        }
        let a = account::load_or_create(&self.inner.db, &self.inner.config).await?;
        *slot = Some(a.clone());
        Ok(a)
    }

    /// Run the renewer until `shutdown`. `on_change` runs after a new
    /// certificate is stored (the daemon republishes routes, which turns
    /// the HTTPS redirect on).
    pub async fn run(
        self,
        routes: Arc<RouteTable>,
        on_change: impl Fn() + Send + Sync + 'static,
        shutdown: CancellationToken,
    ) {
        let routes_ptr = || Arc::as_ptr(&*routes.load()) as usize;
        loop {
            let seen = routes_ptr();
            let next = match self.scan(&on_change, &shutdown).await {
                Ok(next) => next,
                Err(e) => {
                    tracing::warn!(error = %e, "certificate scan failed");
                    None
                }
            };
            let now = state::now();
            let wait = next
                .map_or(SCAN_INTERVAL.as_secs() as i64, |t| t - now)
                .clamp(1, SCAN_INTERVAL.as_secs() as i64);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(wait as u64);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = self.inner.wake.notified() => break,
                    () = tokio::time::sleep_until(deadline) => break,
                    () = tokio::time::sleep(ROUTES_POLL) => {
                        if routes_ptr() != seen {
                            break;
                        }
                    }
                }
            }
        }
    }

    /// One pass; returns when the next piece of work is due.
    async fn scan(
        &self,
        on_change: &(impl Fn() + Send + Sync),
        shutdown: &CancellationToken,
    ) -> Result<Option<i64>, AcmeError> {
        let wanted = self.wanted().await?;
        let records = self.inner.db.call(|c| state::certs::list(c, None)).await?;
        self.install(&wanted, &records);
        let by_host: HashMap<&str, &CertRecord> =
            records.iter().map(|r| (r.host.as_str(), r)).collect();

        let now = state::now();
        let mut next: Option<i64> = None;
        let mut changed = false;
        for (host, app) in &wanted {
            if shutdown.is_cancelled() {
                break;
            }
            let rec = by_host.get(host.as_str()).copied();
            if let Some(r) = rec.filter(|r| r.is_valid_at(now) && !r.force_renew) {
                self.check_renewal_info(r, now).await;
            }
            // Re-read: the ARI check may have moved renew_at.
            let h = host.clone();
            let rec = self
                .inner
                .db
                .call(move |c| state::certs::get(c, &h))
                .await?;
            let due_at = match &rec {
                None => now,
                Some(r) => {
                    let wanted_at = if !r.is_valid_at(now) || r.force_renew {
                        now
                    } else {
                        r.renew_at.unwrap_or(now)
                    };
                    wanted_at.max(r.next_attempt_at.unwrap_or(i64::MIN))
                }
            };
            if due_at > now {
                next = Some(next.map_or(due_at, |n| n.min(due_at)));
                continue;
            }
            match self.issue(host).await {
                Ok(issued) => {
                    let ck = tls::certified_key(host, &issued.chain_pem, &issued.key_pem)?;
                    let (a, i) = (app.clone(), issued.clone());
                    self.inner
                        .db
                        .call(move |c| state::certs::store_issued(c, a.as_ref(), &i))
                        .await?;
                    // Hot swap: the next handshake for this host gets it.
                    self.inner.store.insert(host, ck);
                    self.note_installed(host, &issued.serial);
                    tracing::info!(%host, serial = %issued.serial, challenge = %issued.challenge,
                        "certificate issued");
                    changed = true;
                    next = Some(next.map_or(issued.renew_at, |n| n.min(issued.renew_at)));
                }
                Err(e) => {
                    if let Some(m) = self.inner.metrics.get() {
                        m.acme_failure(host);
                    }
                    let text = e.to_string();
                    let (a, h) = (app.clone(), host.clone());
                    let attempts = self
                        .inner
                        .db
                        .call(move |c| {
                            state::certs::record_failure(c, a.as_ref(), &h, &text, |n| {
                                state::now() + backoff(n)
                            })
                        })
                        .await?;
                    let retry = now + backoff(attempts);
                    tracing::warn!(%host, attempts, retry_in_s = backoff(attempts), error = %e,
                        "certificate order failed; the current certificate (if any) keeps serving");
                    next = Some(next.map_or(retry, |n| n.min(retry)));
                    // A CA that cannot be reached will fail the others too.
                    if matches!(e, AcmeError::Ca { .. } | AcmeError::Account { .. }) {
                        *self.inner.account.lock().await = None;
                    }
                }
            }
        }
        if changed {
            on_change();
        }
        Ok(next)
    }

    fn note_installed(&self, host: &str, serial: &str) {
        let mut installed = self
            .inner
            .installed
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        installed.retain(|(h, _)| h != host);
        installed.push((host.to_owned(), serial.to_owned()));
        installed.sort();
    }

    /// Order a certificate for `host`: HTTP-01 first; when that validation
    /// fails (port 80 filtered, say), a new order through TLS-ALPN-01.
    async fn issue(&self, host: &str) -> Result<state::certs::Issued, AcmeError> {
        let account = self.account().await?;
        let mut last = None;
        for kind in order::CHALLENGES {
            let name = order::challenge_name(&kind);
            match order::order(
                &account,
                host,
                kind,
                &self.inner.challenges,
                &self.inner.store,
            )
            .await
            {
                Ok((chain_pem, key_pem)) => return describe(host, chain_pem, key_pem, name),
                Err(e @ AcmeError::Validation { .. }) => {
                    tracing::info!(%host, challenge = name, error = %e, "validation failed");
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| AcmeError::Validation {
            host: host.to_owned(),
            challenge: "any",
            detail: "no challenge type to try".to_owned(),
        }))
    }

    /// ARI (RFC 9773): when the CA offers renewal info, renew at a random
    /// point of its suggested window if that is earlier than our own rule.
    /// Whatever happens, the check is recorded, so an unreachable CA is
    /// asked again only after [`ARI_PERIOD`].
    async fn check_renewal_info(&self, r: &CertRecord, now: i64) {
        if r.ari_checked_at.is_some_and(|t| now - t < ARI_PERIOD) {
            return;
        }
        let ours = r.renew_at.unwrap_or(now);
        let renew_at = match self.suggested_renewal(r).await {
            Some(pick) if pick < ours => {
                tracing::info!(host = %r.host, renew_at = pick,
                    "the CA's renewal info moves the renewal earlier");
                pick
            }
            _ => ours,
        };
        let host = r.host.clone();
        let _ = self
            .inner
            .db
            .call(move |c| state::certs::set_renewal_window(c, &host, renew_at, now))
            .await;
    }

    /// A random time in the CA's suggested renewal window, if it has one.
    async fn suggested_renewal(&self, r: &CertRecord) -> Option<i64> {
        let chain = r.chain_pem.as_ref()?;
        let leaf = CertificateDer::pem_slice_iter(chain.as_bytes())
            .next()?
            .ok()?;
        let id = CertificateIdentifier::try_from(&leaf).ok()?;
        let account = self.account().await.ok()?;
        match account.renewal_info(&id).await {
            Ok((info, _retry_after)) => {
                let start = info.suggested_window.start.unix_timestamp();
                let end = info.suggested_window.end.unix_timestamp().max(start);
                Some(start + (rand::random::<f64>() * (end - start) as f64) as i64)
            }
            Err(instant_acme::Error::Unsupported(_)) => None,
            Err(e) => {
                tracing::debug!(host = %r.host, error = %e, "renewal info unavailable");
                None
            }
        }
    }
}

/// Read what the stored record shows about a new chain: serial, issuer,
/// validity; and when to renew it.
fn describe(
    host: &str,
    chain_pem: String,
    key_pem: String,
    challenge: &str,
) -> Result<state::certs::Issued, AcmeError> {
    let bad = |detail: String| AcmeError::BadCertificate {
        host: host.to_owned(),
        detail,
    };
    let leaf = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .next()
        .ok_or_else(|| bad("empty chain".to_owned()))?
        .map_err(|e| bad(e.to_string()))?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(|e| bad(e.to_string()))?;
    let not_before = cert.validity().not_before.timestamp();
    let not_after = cert.validity().not_after.timestamp();
    if not_after <= not_before {
        return Err(bad("its validity period is empty".to_owned()));
    }
    let issuer = cert
        .issuer()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map_or_else(|| cert.issuer().to_string(), str::to_owned);
    Ok(state::certs::Issued {
        host: host.to_owned(),
        serial: cert.raw_serial_as_string().replace(':', ""),
        issuer,
        not_before,
        not_after,
        renew_at: default_renew_at(not_before, not_after),
        challenge: challenge.to_owned(),
        chain_pem,
        key_pem,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_names_get_no_certificates() {
        for h in [
            "localhost",
            "web.localhost",
            "printer.local",
            "web.cygni.test",
            "a.example",
            "intranet",
            "127.0.0.1",
            "[::1]",
            "::1",
            "nas.home.arpa",
            "x.internal",
        ] {
            assert!(is_local_host(h), "{h}");
            assert!(!is_orderable(h), "{h}");
        }
        for h in ["web.example.com", "shop.org", "a.testing.io", "mylocal.dev"] {
            assert!(!is_local_host(h), "{h}");
            assert!(is_orderable(h), "{h}");
        }
        assert!(!is_orderable("we_b.example.com"));
        assert!(!is_orderable("-a.example.com"));
        assert!(!is_orderable("Web.example.com"));
    }

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(1), 60);
        assert_eq!(backoff(2), 120);
        assert_eq!(backoff(3), 240);
        assert_eq!(backoff(12), BACKOFF_MAX);
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
    }

    #[test]
    fn renew_with_a_third_left() {
        assert_eq!(default_renew_at(0, 90), 60);
    }
}
