//! What the daemon counts, and how it is read: the Prometheus families
//! (written with `prometheus-client`), the health answers, and the
//! listener that serves both (`--metrics-listen`).
//!
//! ```text
//! proxy (per request) ──► AppHandles in the route entry ──► atomics ─┐
//! deploy (per deploy) ──► deploys / deploy + build durations ────────┤
//! ssh (per login)     ──► sessions / refused logins ─────────────────┤ Registry
//! acme (per failure)  ──► ACME failures ─────────────────────────────┤
//! scrape ──► Sources::refresh (instances, restarts, cert expiry) ────┤
//!        ──► host sample (sysinfo: CPU, memory, disk of the data dir)┘
//!        ──► render(): Prometheus text 0.0.4
//! every 15 s ──► history: the last hour of host samples (dashboard chart)
//! ```
//!
//! The module depends on nothing of the daemon's (only `names`): the
//! parts that own a figure record it, and what is read at scrape time is
//! brought by the daemon through [`Sources`]. [`Metrics::render`] and
//! [`Health`] answer independently of any listener, so the control host
//! can mount them too; [`http::serve`] is the loopback listener.
//!
//! Recording is cheap where it is frequent: the proxy resolves its label
//! sets once per app (see [`proxy`]) and then only adds to atomics.

pub mod health;
pub mod histogram;
pub mod history;
pub mod host;
pub mod http;
pub mod proxy;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

pub use health::Health;
pub use histogram::AtomicHistogram;
pub use proxy::{AppHandles, Protocol, ProxyMetrics, UpstreamError};

/// The `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// How a deploy ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeployResult {
    Live,
    Failed,
}

impl EncodeLabelValue for DeployResult {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        let text = match self {
            DeployResult::Live => "live",
            DeployResult::Failed => "failed",
        };
        std::fmt::Write::write_str(encoder, text)
    }
}

/// Why an SSH login was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// A key no one added.
    UnknownKey,
    /// A user name other than `cygni`.
    User,
    /// The lookup failed (database).
    Error,
}

impl EncodeLabelValue for Refusal {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        let text = match self {
            Refusal::UnknownKey => "unknown_key",
            Refusal::User => "user",
            Refusal::Error => "error",
        };
        std::fmt::Write::write_str(encoder, text)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct AppLabel {
    app: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DeployLabels {
    app: String,
    result: DeployResult,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct InstanceLabels {
    app: String,
    state: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct HostLabel {
    host: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabel {
    reason: Refusal,
}

type DurationFamily = Family<AppLabel, AtomicHistogram, fn() -> AtomicHistogram>;

fn deploy_histogram() -> AtomicHistogram {
    AtomicHistogram::new(histogram::DEPLOY_BUCKETS)
}

/// One instance as a scrape sees it (from the runtime).
#[derive(Debug, Clone)]
pub struct InstanceFigure {
    pub app: String,
    pub id: String,
    /// `starting`, `running`, `crash_loop`, `stopped`.
    pub state: &'static str,
    /// Restarts of this instance id so far (only grows while it lives).
    pub restarts: u32,
}

/// What is read from its owner at scrape time rather than recorded as it
/// happens. The daemon implements it over the runtime and SQLite.
#[async_trait::async_trait]
pub trait Sources: Send + Sync + 'static {
    async fn instances(&self) -> Vec<InstanceFigure>;
    /// Every stored certificate: host and expiry (Unix seconds).
    async fn certificates(&self) -> Vec<(String, i64)>;
}

/// Every family, and the registry that renders them. One per daemon,
/// shared behind an `Arc`.
pub struct Metrics {
    registry: Registry,
    /// `false` (config `metrics = false`): the proxy records nothing per
    /// request. Everything else still counts.
    proxy_enabled: bool,
    pub proxy: ProxyMetrics,
    deploys: Family<DeployLabels, Counter>,
    deploy_duration: DurationFamily,
    build_duration: DurationFamily,
    instances: Family<InstanceLabels, Gauge>,
    restarts: Family<AppLabel, Counter>,
    cert_expiry: Family<HostLabel, Gauge>,
    acme_failures: Family<HostLabel, Counter>,
    ssh_sessions: Gauge,
    ssh_logins: Counter,
    ssh_refused: Family<ReasonLabel, Counter>,
    host: host::HostGauges,
    sampler: Mutex<host::Sampler>,
    sources: OnceLock<Arc<dyn Sources>>,
    /// Restarts seen at the last scrape, per instance id: the runtime
    /// reports a count per instance, the family is a counter per app.
    seen_restarts: Mutex<HashMap<String, u32>>,
    /// One scrape at a time: a refresh clears and refills gauges.
    scrape: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("proxy_enabled", &self.proxy_enabled)
            .finish_non_exhaustive()
    }
}

impl Metrics {
    /// The families, registered. `data_dir` is whose disk the host figures
    /// report; `proxy_enabled` is the config's `metrics` switch.
    pub fn new(data_dir: PathBuf, proxy_enabled: bool) -> Arc<Metrics> {
        let mut registry = Registry::default();
        let proxy = ProxyMetrics::register(&mut registry);
        let m = Metrics {
            proxy_enabled,
            proxy,
            deploys: Family::default(),
            deploy_duration: Family::new_with_constructor(deploy_histogram),
            build_duration: Family::new_with_constructor(deploy_histogram),
            instances: Family::default(),
            restarts: Family::default(),
            cert_expiry: Family::default(),
            acme_failures: Family::default(),
            ssh_sessions: Gauge::default(),
            ssh_logins: Counter::default(),
            ssh_refused: Family::default(),
            host: host::HostGauges::register(&mut registry),
            sampler: Mutex::new(host::Sampler::new(data_dir)),
            sources: OnceLock::new(),
            seen_restarts: Mutex::default(),
            scrape: tokio::sync::Mutex::new(()),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "cygni_deploys",
            "Deploys (pushes that built a release) by app and result",
            m.deploys.clone(),
        );
        r.register(
            "cygni_deploy_duration_seconds",
            "Time from a push's deploy start to live or failed, by app",
            m.deploy_duration.clone(),
        );
        r.register(
            "cygni_build_duration_seconds",
            "Time spent in the build stage, by app",
            m.build_duration.clone(),
        );
        r.register(
            "cygni_instances",
            "App instances by state, as the runtime reports them",
            m.instances.clone(),
        );
        r.register(
            "cygni_instance_restarts",
            "Restarts of crashed instances seen, by app",
            m.restarts.clone(),
        );
        r.register(
            "cygni_certificate_expiry_seconds",
            "Seconds until a stored certificate expires (negative: expired), by host",
            m.cert_expiry.clone(),
        );
        r.register(
            "cygni_acme_failures",
            "Failed certificate orders, by host",
            m.acme_failures.clone(),
        );
        r.register(
            "cygni_ssh_sessions",
            "Authenticated SSH connections open now",
            m.ssh_sessions.clone(),
        );
        r.register(
            "cygni_ssh_logins",
            "Successful SSH logins",
            m.ssh_logins.clone(),
        );
        r.register(
            "cygni_ssh_refused_logins",
            "Refused SSH logins, by reason",
            m.ssh_refused.clone(),
        );
        Arc::new(Metrics { registry, ..m })
    }

    /// Whether the proxy records per request.
    pub fn proxy_enabled(&self) -> bool {
        self.proxy_enabled
    }

    /// What scrapes read from the daemon's parts. Set once, at start-up.
    pub fn set_sources(&self, sources: Arc<dyn Sources>) {
        let _ = self.sources.set(sources);
    }

    /// A deploy ended. `build` is the build stage's time, when it ran.
    pub fn deploy(
        &self,
        app: &str,
        result: DeployResult,
        total: Duration,
        build: Option<Duration>,
    ) {
        let app = app.to_owned();
        if let Some(build) = build {
            self.build_duration
                .get_or_create(&AppLabel { app: app.clone() })
                .observe(build);
        }
        self.deploy_duration
            .get_or_create(&AppLabel { app: app.clone() })
            .observe(total);
        self.deploys
            .get_or_create(&DeployLabels { app, result })
            .inc();
    }

    pub fn acme_failure(&self, host: &str) {
        self.acme_failures
            .get_or_create(&HostLabel {
                host: host.to_owned(),
            })
            .inc();
    }

    /// An SSH connection authenticated; the gauge drops with the guard.
    pub fn ssh_session(self: &Arc<Self>) -> SessionGuard {
        self.ssh_logins.inc();
        self.ssh_sessions.inc();
        SessionGuard(Arc::clone(self))
    }

    pub fn ssh_refused(&self, reason: Refusal) {
        self.ssh_refused
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Remove a destroyed app's series.
    pub fn forget_app(&self, app: &str) {
        self.proxy.forget_app(app);
        let label = AppLabel {
            app: app.to_owned(),
        };
        self.deploy_duration.remove(&label);
        self.build_duration.remove(&label);
        self.restarts.remove(&label);
        for result in [DeployResult::Live, DeployResult::Failed] {
            self.deploys.remove(&DeployLabels {
                app: app.to_owned(),
                result,
            });
        }
    }

    /// Read what is read at scrape time, then encode every family in the
    /// Prometheus text format ([`CONTENT_TYPE`]).
    pub async fn render(self: &Arc<Self>) -> String {
        let _one = self.scrape.lock().await;
        if let Some(sources) = self.sources.get() {
            let (instances, certs) = tokio::join!(sources.instances(), sources.certificates());
            self.set_instances(&instances);
            self.set_certificates(&certs, unix_now());
        }
        // sysinfo reads /proc: off the async workers.
        let me = Arc::clone(self);
        let _ = tokio::task::spawn_blocking(move || {
            let sample = me
                .sampler
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .sample();
            me.host.set(&sample);
        })
        .await;
        self.encode()
    }

    /// The families as they are now, without reading anything first.
    pub fn encode(&self) -> String {
        let mut text = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry);
        text
    }

    fn set_instances(&self, list: &[InstanceFigure]) {
        self.instances.clear();
        let mut seen = self.seen_restarts.lock().unwrap_or_else(|p| p.into_inner());
        let mut now = HashMap::with_capacity(list.len());
        for i in list {
            self.instances
                .get_or_create(&InstanceLabels {
                    app: i.app.clone(),
                    state: i.state.to_owned(),
                })
                .inc();
            let before = seen.get(&i.id).copied().unwrap_or(0);
            let counter = self
                .restarts
                .get_or_create(&AppLabel { app: i.app.clone() });
            // A new id starts at 0: its restarts all count.
            counter.inc_by(u64::from(i.restarts.saturating_sub(before)));
            now.insert(i.id.clone(), i.restarts);
        }
        *seen = now;
    }

    fn set_certificates(&self, certs: &[(String, i64)], now: i64) {
        self.cert_expiry.clear();
        for (host, not_after) in certs {
            self.cert_expiry
                .get_or_create(&HostLabel { host: host.clone() })
                .set(not_after - now);
        }
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Counts one open SSH session until dropped.
#[derive(Debug)]
pub struct SessionGuard(Arc<Metrics>);

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.0.ssh_sessions.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_count_deltas_per_instance() {
        let m = Metrics::new(std::env::temp_dir(), true);
        let fig = |id: &str, restarts| InstanceFigure {
            app: "shop".into(),
            id: id.into(),
            state: "running",
            restarts,
        };
        m.set_instances(&[fig("shop-v1-web-1", 2)]);
        m.set_instances(&[fig("shop-v1-web-1", 3), fig("shop-v2-web-1", 1)]);
        let text = m.encode();
        assert!(
            text.contains("cygni_instance_restarts_total{app=\"shop\"} 4"),
            "{text}"
        );
        assert!(
            text.contains("cygni_instances{app=\"shop\",state=\"running\"} 2"),
            "{text}"
        );
        m.set_certificates(&[("shop.example.com".into(), 1_000)], 400);
        assert!(m
            .encode()
            .contains("cygni_certificate_expiry_seconds{host=\"shop.example.com\"} 600"));
    }
}
