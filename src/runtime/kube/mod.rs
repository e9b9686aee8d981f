//! The kube runtime: apps on Kubernetes (k3s), through kube-rs.
//!
//! ```text
//! apply(spec, n) ──► refuse a host-path mount (before any request)
//!                    ─► SSA namespace cygni-APP ─► SSA Secret env-vREL (config vars)
//!                    ─► per storage mount: GET + SSA PersistentVolumeClaim storage-NAME
//!                       (never deleted but with the namespace)
//!                    ─► GET Deployment PROCESS (what ran before)
//!                    ─► SSA Deployment PROCESS (n pods, envFrom the Secret, probe, limits)
//!                    ─► SSA Service web (web only)
//!                    ─► poll: rollout::status + hopeless pods, under a deadline
//!                         └─ failed ──► SSA the previous Deployment back (or delete a
//!                                       first one) ─► error: reason + the pod's last lines
//! list(app)      ──► pods labelled cygni.app/cygni.process ─► instances; a web pod's
//!                    endpoint is its ready endpoint in the Service's EndpointSlices
//! watcher        ──► EndpointSlices ─► EndpointStore ─► InstanceEvent (Exited, ReadyChanged)
//! restart        ──► the claims, SSA Deployment PROCESS (a no-op unless the storage
//!                    changed), then the restart stamp alone (field manager cygni-restart)
//! stop(pod)      ──► delete the pod's Deployment (a process type the release dropped)
//! remove_app     ──► delete the namespace (its claims, and their volumes, with it)
//! run_once       ──► the claims, a one-off pod (restartPolicy Never) with the
//!                    storage mounted, its log, its exit code
//! ```
//!
//! Readiness is the cluster's ([`Readiness::Backend`]): the Deployment's
//! readiness probe comes from the release's health check, and the routes
//! take the web Service's ready endpoints, so a rolling update moves
//! traffic pod by pod and an endpoint that is not ready is never routed.
//!
//! Everything is applied server-side with field manager `cygni` and force,
//! holding only the fields Cygni owns (`manifest.rs`). Objects carry the
//! labels `cygni.app`, `cygni.release` and `cygni.process`: a restarted
//! daemon finds what runs by them and restarts nothing. Pods outlive the
//! daemon (k3s runs in its own unit).

pub mod endpoints;
pub mod manifest;
pub mod rollout;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use futures_util::{AsyncBufReadExt, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    Container, EnvFromSource, Namespace, PersistentVolumeClaim, Pod, PodSpec, Secret,
    SecretEnvSource, Service,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;

use self::endpoints::EndpointStore;
use self::manifest::{LABEL_APP, LABEL_PROCESS, LABEL_RELEASE};
use self::rollout::Rollout;
use super::{
    ArtifactKind, Attach, Cluster, Instance, InstanceEvent, InstanceId, InstanceSpec,
    InstanceState, JoinInfo, Mount, NodeInfo, OneOffSpec, OutputSink, ProcessSpec, Readiness,
    Runtime, RuntimeError,
};
use crate::logs::LogStore;
use crate::names::{AppName, ProcessType};

const NAME: &str = "kube";
const FIELD_MANAGER: &str = "cygni";
/// The field manager of the restart annotation alone.
const RESTART_MANAGER: &str = "cygni-restart";
/// Where k3s writes its kubeconfig.
pub const K3S_KUBECONFIG: &str = "/etc/rancher/k3s/k3s.yaml";
/// How many of a failed pod's last lines a rejected push shows.
const LOG_LINES: i64 = 20;

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("cannot read the kubeconfig {path}: {reason}")]
    Kubeconfig { path: PathBuf, reason: String },
    #[error("cannot reach the cluster at {server} (kubeconfig {path}): {reason}")]
    Unreachable {
        server: String,
        path: PathBuf,
        reason: String,
    },
}

/// How the runtime waits and what it does on its own.
#[derive(Debug, Clone)]
pub struct KubeOptions {
    /// Between two looks at a rollout or a one-off pod.
    pub poll: Duration,
    /// Follow each pod's log into the log store (off in the mock tests,
    /// whose scripted API server answers only what a scenario expects).
    pub follow_logs: bool,
    /// The class and size of new storage claims.
    pub storage: manifest::ClaimClass,
}

impl Default for KubeOptions {
    fn default() -> KubeOptions {
        KubeOptions {
            poll: Duration::from_secs(1),
            follow_logs: true,
            storage: manifest::ClaimClass::default(),
        }
    }
}

pub struct KubeRuntime {
    client: Client,
    /// `https://127.0.0.1:6443 (v1.33.1+k3s1)`, for the banner.
    description: String,
    options: KubeOptions,
    endpoints: Arc<Mutex<EndpointStore>>,
    events: tokio::sync::broadcast::Sender<InstanceEvent>,
    logs: Arc<LogStore>,
    /// Pods whose log is being followed.
    followed: Arc<Mutex<HashSet<String>>>,
}

/// The kubeconfig to use: `--kubeconfig`, else `KUBECONFIG`, else k3s's.
pub fn kubeconfig_path(flag: Option<&Path>) -> PathBuf {
    if let Some(p) = flag {
        return p.to_owned();
    }
    match std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty()) {
        // KUBECONFIG may list several files; the first one is the one used.
        Some(v) => std::env::split_paths(&v)
            .next()
            .unwrap_or_else(|| PathBuf::from(K3S_KUBECONFIG)),
        None => PathBuf::from(K3S_KUBECONFIG),
    }
}

/// One EndpointSlice event into the store; what left the ready set leaves
/// the routes at once, and apps whose set changed are re-admitted.
fn publish(
    store: &Mutex<EndpointStore>,
    events: &tokio::sync::broadcast::Sender<InstanceEvent>,
    event: watcher::Event<EndpointSlice>,
) {
    let changes = lock(store).apply(event);
    for (_, pod) in changes.gone {
        let _ = events.send(InstanceEvent::Exited(InstanceId(pod)));
    }
    for app in changes.apps {
        let _ = events.send(InstanceEvent::ReadyChanged(app));
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn backend(message: String, source: Option<kube::Error>) -> RuntimeError {
    RuntimeError::Backend {
        runtime: NAME,
        message,
        source: source.map(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>),
    }
}

/// One line for an API failure: the API server's own message when it
/// sent one.
fn api(what: &str, e: kube::Error) -> RuntimeError {
    let reason = match &e {
        kube::Error::Api(s) if !s.message.is_empty() => s.message.clone(),
        other => other.to_string(),
    };
    backend(format!("{what}: {reason}"), Some(e))
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").trim().to_owned()
}

impl KubeRuntime {
    /// Read the kubeconfig, connect, and make sure the API server answers
    /// within `timeout`; then start watching EndpointSlices.
    pub async fn connect(
        path: &Path,
        timeout: Duration,
        logs: Arc<LogStore>,
        storage: manifest::ClaimClass,
    ) -> Result<KubeRuntime, KubeError> {
        let bad = |reason: String| KubeError::Kubeconfig {
            path: path.to_owned(),
            reason,
        };
        let kubeconfig =
            kube::config::Kubeconfig::read_from(path).map_err(|e| bad(e.to_string()))?;
        let mut config = kube::Config::from_custom_kubeconfig(
            kubeconfig,
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .map_err(|e| bad(e.to_string()))?;
        // Our own deadline below says it better than hyper's: leave that
        // one a little longer.
        config.connect_timeout = Some(timeout + Duration::from_secs(1));
        let server = config.cluster_url.to_string();
        let server = server.trim_end_matches('/').to_owned();
        let unreachable = |reason: String| KubeError::Unreachable {
            server: server.clone(),
            path: path.to_owned(),
            reason,
        };
        let client = Client::try_from(config).map_err(|e| unreachable(e.to_string()))?;
        let version = match tokio::time::timeout(timeout, client.apiserver_version()).await {
            Err(_) => {
                return Err(unreachable(format!(
                    "no answer within {}s",
                    timeout.as_secs()
                )))
            }
            Ok(Err(e)) => return Err(unreachable(error_chain(&e))),
            Ok(Ok(v)) => v,
        };
        let options = KubeOptions {
            storage,
            ..KubeOptions::default()
        };
        let runtime = KubeRuntime::with_client(client, logs, options)
            .described(format!("{server} ({})", version.git_version));
        runtime.watch_endpoints();
        Ok(runtime)
    }

    /// A runtime over any client (the mock API server in the tests).
    pub fn with_client(client: Client, logs: Arc<LogStore>, options: KubeOptions) -> KubeRuntime {
        KubeRuntime {
            client,
            description: "kube".to_owned(),
            options,
            endpoints: Arc::default(),
            events: tokio::sync::broadcast::channel(256).0,
            logs,
            followed: Arc::default(),
        }
    }

    fn described(mut self, description: String) -> KubeRuntime {
        self.description = description;
        self
    }

    /// For the start-up banner.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// Take one EndpointSlice event (the watcher's, or a test's) and tell
    /// the converger what changed.
    pub fn endpoint_event(&self, event: watcher::Event<EndpointSlice>) {
        publish(&self.endpoints, &self.events, event);
    }

    /// Watch the EndpointSlices of every Cygni Service, for as long as the
    /// daemon runs (the watcher retries with backoff on its own).
    fn watch_endpoints(&self) {
        use tracing::Instrument;
        let api: Api<EndpointSlice> = Api::all(self.client.clone());
        let store = self.endpoints.clone();
        let events = self.events.clone();
        let config = watcher::Config::default().labels(LABEL_APP);
        let task = async move {
            let mut stream = watcher(api, config).default_backoff().boxed();
            while let Some(event) = stream.next().await {
                match event {
                    Ok(event) => publish(&store, &events, event),
                    Err(e) => tracing::warn!(error = %e, "watching EndpointSlices"),
                }
            }
        };
        tokio::spawn(task.instrument(tracing::info_span!("kube-endpoints")));
    }

    fn pods(&self, app: &AppName) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &manifest::namespace_name(app))
    }

    fn deployments(&self, app: &AppName) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), &manifest::namespace_name(app))
    }

    fn patch_params() -> PatchParams {
        PatchParams::apply(FIELD_MANAGER).force()
    }

    async fn apply_namespace_and_secret(
        &self,
        app: &AppName,
        secret: &Secret,
    ) -> Result<(), RuntimeError> {
        let pp = Self::patch_params();
        let ns = manifest::namespace(app);
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        namespaces
            .patch(&manifest::namespace_name(app), &pp, &Patch::Apply(&ns))
            .await
            .map_err(|e| api(&format!("creating the namespace of {app}"), e))?;
        let secrets: Api<Secret> =
            Api::namespaced(self.client.clone(), &manifest::namespace_name(app));
        let name = secret.metadata.name.clone().unwrap_or_default();
        secrets
            .patch(&name, &pp, &Patch::Apply(secret))
            .await
            .map_err(|e| api(&format!("storing the config vars of {app}"), e))?;
        Ok(())
    }

    /// A claim per storage mount, before anything that mounts it. Applied
    /// again on every deploy (idempotent: the same object), with the class
    /// and size an existing claim already has; never deleted here.
    async fn apply_claims(&self, app: &AppName, mounts: &[Mount]) -> Result<(), RuntimeError> {
        let claims: Api<PersistentVolumeClaim> =
            Api::namespaced(self.client.clone(), &manifest::namespace_name(app));
        for mount in mounts {
            let name = manifest::claim_name(&mount.name);
            let existing = claims
                .get_opt(&name)
                .await
                .map_err(|e| api(&format!("reading the storage {} of {app}", mount.name), e))?;
            let class = existing
                .as_ref()
                .and_then(manifest::ClaimClass::of)
                .unwrap_or_else(|| self.options.storage.clone());
            let claim = manifest::claim(app, &mount.name, &class);
            claims
                .patch(&name, &Self::patch_params(), &Patch::Apply(&claim))
                .await
                .map_err(|e| api(&format!("claiming the storage {} of {app}", mount.name), e))?;
        }
        Ok(())
    }

    /// Wait for the rollout of `name` to finish, fail, or run out of time.
    async fn wait_rollout(&self, spec: &ProcessSpec, name: &str) -> Result<(), String> {
        let deadline =
            Instant::now() + Duration::from_secs(manifest::progress_deadline_secs(spec) + 30);
        let deployments = self.deployments(&spec.app);
        let selector = format!(
            "{},{LABEL_RELEASE}={}",
            manifest::process_selector(&spec.app, &spec.process),
            spec.release
        );
        loop {
            let d = deployments
                .get(name)
                .await
                .map_err(|e| format!("reading its status: {}", error_chain(&e)))?;
            let waiting = match rollout::status(&d) {
                Rollout::Done => return Ok(()),
                Rollout::Failed(reason) => {
                    let pods = self.release_pods(&spec.app, &selector).await;
                    let detail = rollout::not_ready_reason(&pods)
                        .map(|(pod, why)| format!("; {pod}: {why}"))
                        .unwrap_or_default();
                    let logs = self.last_lines(&spec.app, &pods).await;
                    return Err(format!("{reason}{detail}{logs}"));
                }
                Rollout::Waiting(w) => w,
            };
            let pods = self.release_pods(&spec.app, &selector).await;
            if let Some((pod, why)) = rollout::hopeless(&pods) {
                let logs = self.last_lines(&spec.app, &pods).await;
                return Err(format!("{pod}: {why}{logs}"));
            }
            if Instant::now() >= deadline {
                let detail = rollout::not_ready_reason(&pods)
                    .map(|(pod, why)| format!("; {pod}: {why}"))
                    .unwrap_or_default();
                let logs = self.last_lines(&spec.app, &pods).await;
                return Err(format!("not done in time ({waiting}){detail}{logs}"));
            }
            tokio::time::sleep(self.options.poll).await;
        }
    }

    async fn release_pods(&self, app: &AppName, selector: &str) -> Vec<Pod> {
        match self
            .pods(app)
            .list(&ListParams::default().labels(selector))
            .await
        {
            Ok(list) => list.items,
            Err(e) => {
                tracing::warn!(%app, error = %e, "listing a rollout's pods");
                Vec::new()
            }
        }
    }

    /// The last lines of the first pod that printed any (of its previous
    /// container when it crashed and waits to be restarted).
    async fn last_lines(&self, app: &AppName, pods: &[Pod]) -> String {
        for pod in pods {
            let Some(name) = pod.metadata.name.as_deref() else {
                continue;
            };
            let restarted = pod
                .status
                .iter()
                .flat_map(|s| s.container_statuses.iter().flatten())
                .any(|c| c.restart_count > 0);
            let lp = LogParams {
                tail_lines: Some(LOG_LINES),
                previous: restarted,
                ..LogParams::default()
            };
            let Ok(text) = self.pods(app).logs(name, &lp).await else {
                continue;
            };
            if text.trim().is_empty() {
                continue;
            }
            let mut out = format!("\nlast lines of {name}:");
            for line in text.lines() {
                out.push_str("\n  ");
                out.push_str(line);
            }
            return out;
        }
        String::new()
    }

    /// Put back what ran before a failed rollout: the Deployment as Cygni
    /// last applied it, or none at all after a failed first rollout.
    async fn restore(&self, app: &AppName, name: &str, previous: Option<Deployment>) {
        let deployments = self.deployments(app);
        let result = match previous.as_ref().and_then(manifest::applied_of) {
            Some(before) => {
                let before = manifest::with_applied_annotation(before);
                deployments
                    .patch(name, &Self::patch_params(), &Patch::Apply(&before))
                    .await
                    .map(|_| ())
            }
            None if previous.is_none() => deployments
                .delete(name, &DeleteParams::background())
                .await
                .map(|_| ()),
            // Not one of ours: nothing of Cygni's to put back.
            None => Ok(()),
        };
        if let Err(e) = result {
            tracing::error!(%app, deployment = name, error = %e, "restoring after a failed rollout");
        }
    }

    /// Pods as instances: indexes per process type in creation order.
    fn instances(&self, pods: Vec<Pod>) -> Vec<Instance> {
        let mut by_type: BTreeMap<(AppName, ProcessType), Vec<(Pod, u32)>> = BTreeMap::new();
        for pod in pods {
            if pod.metadata.deletion_timestamp.is_some() {
                // Terminating: it is leaving and no longer counts.
                continue;
            }
            let labels = pod.metadata.labels.clone().unwrap_or_default();
            let (Some(app), Some(process), Some(release)) = (
                labels.get(LABEL_APP).and_then(|a| AppName::parse(a).ok()),
                labels
                    .get(LABEL_PROCESS)
                    .and_then(|p| ProcessType::parse(p).ok()),
                labels
                    .get(LABEL_RELEASE)
                    .and_then(|r| r.parse::<u32>().ok()),
            ) else {
                continue;
            };
            by_type
                .entry((app, process))
                .or_default()
                .push((pod, release));
        }
        let store = lock(&self.endpoints);
        let mut out = Vec::new();
        for ((app, process), mut pods) in by_type {
            pods.sort_by(|(a, _), (b, _)| {
                (&a.metadata.creation_timestamp, &a.metadata.name)
                    .cmp(&(&b.metadata.creation_timestamp, &b.metadata.name))
            });
            let ready = store.ready(&app);
            for (i, (pod, release)) in pods.into_iter().enumerate() {
                let name = pod.metadata.name.clone().unwrap_or_default();
                let status = pod.status.clone().unwrap_or_default();
                let containers = status.container_statuses.clone().unwrap_or_default();
                let restarts = containers
                    .iter()
                    .map(|c| u32::try_from(c.restart_count).unwrap_or(0))
                    .sum();
                let crash_loop = containers.iter().any(|c| {
                    c.state
                        .as_ref()
                        .and_then(|s| s.waiting.as_ref())
                        .and_then(|w| w.reason.as_deref())
                        == Some("CrashLoopBackOff")
                });
                let pod_ready = status
                    .conditions
                    .iter()
                    .flatten()
                    .any(|c| c.type_ == "Ready" && c.status == "True");
                let endpoint: Option<SocketAddr> = if process.is_web() {
                    ready.get(&name).copied()
                } else {
                    None
                };
                let state = match status.phase.as_deref() {
                    Some("Succeeded") | Some("Failed") => InstanceState::Stopped,
                    _ if crash_loop => InstanceState::CrashLoop,
                    // web: ready when its Service says so; others: when the
                    // pod is.
                    _ if process.is_web() && endpoint.is_some() => InstanceState::Running,
                    _ if !process.is_web() && pod_ready => InstanceState::Running,
                    _ => InstanceState::Starting,
                };
                let started_at = status
                    .start_time
                    .as_ref()
                    .map(|t| SystemTime::from(t.0))
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                out.push(Instance {
                    id: InstanceId(name),
                    app: app.clone(),
                    release,
                    process: process.clone(),
                    index: u32::try_from(i + 1).unwrap_or(u32::MAX),
                    endpoint,
                    state,
                    started_at,
                    restarts,
                });
            }
        }
        out
    }

    /// Follow the log of every running pod not yet followed into the log
    /// store, as `PROCESS.INDEX`.
    fn follow_logs(&self, instances: &[Instance]) {
        if !self.options.follow_logs {
            return;
        }
        for inst in instances {
            if matches!(inst.state, InstanceState::Stopped) {
                continue;
            }
            if !lock(&self.followed).insert(inst.id.0.clone()) {
                continue;
            }
            let pods = self.pods(&inst.app);
            let logs = self.logs.clone();
            let followed = self.followed.clone();
            let app = inst.app.clone();
            let pod = inst.id.0.clone();
            let source = format!("{}.{}", inst.process, inst.index);
            // A pod that started a while ago (adopted): only what comes
            // now, not its whole history again.
            let young = inst
                .started_at
                .elapsed()
                .map(|d| d < Duration::from_secs(120))
                .unwrap_or(true);
            tokio::spawn(async move {
                let lp = LogParams {
                    follow: true,
                    since_seconds: (!young).then_some(1),
                    ..LogParams::default()
                };
                if let Ok(stream) = pods.log_stream(&pod, &lp).await {
                    let mut lines = stream.lines();
                    while let Some(Ok(line)) = lines.next().await {
                        logs.append(&app, &source, line.as_bytes());
                    }
                }
                lock(&followed).remove(&pod);
            });
        }
    }
}

/// An error with its causes, on one line (a refused connection says so
/// only in its source).
fn error_chain(e: &dyn std::error::Error) -> String {
    first_line(&crate::errors::chain(e))
}

#[async_trait::async_trait]
impl Runtime for KubeRuntime {
    fn name(&self) -> &'static str {
        NAME
    }

    fn artifact_kind(&self) -> ArtifactKind {
        ArtifactKind::Image
    }

    fn readiness(&self) -> Readiness {
        Readiness::Backend
    }

    fn cluster(&self) -> Option<&dyn Cluster> {
        Some(self)
    }

    async fn start(&self, spec: InstanceSpec) -> Result<Instance, RuntimeError> {
        let _ = spec;
        Err(RuntimeError::Unsupported {
            runtime: NAME,
            what: "single instances (it rolls out whole process types)".into(),
        })
    }

    /// Only planned for process types the release no longer has (and for
    /// a destroyed app): the pod's whole Deployment goes, so that nothing
    /// recreates it.
    async fn stop(&self, id: &InstanceId, _grace: Duration) -> Result<(), RuntimeError> {
        let all: Api<Pod> = Api::all(self.client.clone());
        let lp = ListParams::default()
            .labels(&format!("{LABEL_APP},{LABEL_PROCESS}"))
            .fields(&format!("metadata.name={id}"));
        let pods = all
            .list(&lp)
            .await
            .map_err(|e| api(&format!("finding {id}"), e))?;
        for pod in pods.items {
            let labels = pod.metadata.labels.unwrap_or_default();
            let (Some(app), Some(process)) = (
                labels.get(LABEL_APP).and_then(|a| AppName::parse(a).ok()),
                labels
                    .get(LABEL_PROCESS)
                    .and_then(|p| ProcessType::parse(p).ok()),
            ) else {
                continue;
            };
            let name = manifest::deployment_name(&process);
            match self
                .deployments(&app)
                .delete(&name, &DeleteParams::background())
                .await
            {
                Ok(_) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(api(&format!("removing {process} of {app}"), e)),
            }
        }
        Ok(())
    }

    async fn list(&self, app: Option<&AppName>) -> Result<Vec<Instance>, RuntimeError> {
        let lp = ListParams::default().labels(&format!("{LABEL_APP},{LABEL_PROCESS}"));
        let pods = match app {
            Some(a) => self.pods(a).list(&lp).await,
            None => Api::<Pod>::all(self.client.clone()).list(&lp).await,
        };
        let pods = match pods {
            Ok(p) => p.items,
            // The namespace of an app never deployed here.
            Err(e) if is_not_found(&e) => Vec::new(),
            Err(e) => return Err(api("listing pods", e)),
        };
        let instances = self.instances(pods);
        self.follow_logs(&instances);
        Ok(instances)
    }

    async fn apply(&self, spec: &ProcessSpec, replicas: u32) -> Result<(), RuntimeError> {
        let Some(image) = manifest::image(spec) else {
            return Err(RuntimeError::Unsupported {
                runtime: NAME,
                what: "slug directories (it runs images)".into(),
            });
        };
        let app = &spec.app;
        refuse_host_paths(app, &spec.mounts)?;
        self.apply_namespace_and_secret(app, &manifest::secret(spec))
            .await?;
        self.apply_claims(app, &spec.mounts).await?;
        let name = manifest::deployment_name(&spec.process);
        let deployments = self.deployments(app);
        let previous = deployments
            .get_opt(&name)
            .await
            .map_err(|e| api(&format!("reading {}", spec.process), e))?;
        let want = manifest::with_applied_annotation(manifest::deployment(spec, image, replicas));
        deployments
            .patch(&name, &Self::patch_params(), &Patch::Apply(&want))
            .await
            .map_err(|e| api(&format!("applying {}", spec.process), e))?;
        if spec.process.is_web() {
            let services: Api<Service> =
                Api::namespaced(self.client.clone(), &manifest::namespace_name(app));
            services
                .patch(
                    manifest::WEB_SERVICE,
                    &Self::patch_params(),
                    &Patch::Apply(&manifest::service(app)),
                )
                .await
                .map_err(|e| api("applying the web Service", e))?;
        }
        match self.wait_rollout(spec, &name).await {
            Ok(()) => Ok(()),
            Err(reason) => {
                self.restore(app, &name, previous).await;
                Err(backend(
                    format!(
                        "the rollout of {} v{} failed, what ran before is back: {reason}",
                        spec.process, spec.release
                    ),
                    None,
                ))
            }
        }
    }

    /// `kubectl rollout restart`: a new template annotation, under a field
    /// manager of its own so that Cygni's applies (which do not send it)
    /// neither remove it nor roll the pods again.
    ///
    /// The claims and the Deployment are applied from the spec first:
    /// `storage:mount` (or `unmount`) says it applies from the next
    /// restart, and only the spec carries it. With nothing changed that
    /// apply is a no-op for the API server, and the stamp alone rolls.
    async fn restart(&self, spec: &ProcessSpec, replicas: u32) -> Result<(), RuntimeError> {
        refuse_host_paths(&spec.app, &spec.mounts)?;
        let name = manifest::deployment_name(&spec.process);
        self.apply_claims(&spec.app, &spec.mounts).await?;
        if let Some(image) = manifest::image(spec) {
            let want =
                manifest::with_applied_annotation(manifest::deployment(spec, image, replicas));
            self.deployments(&spec.app)
                .patch(&name, &Self::patch_params(), &Patch::Apply(&want))
                .await
                .map_err(|e| api(&format!("applying {}", spec.process), e))?;
        }
        let stamp = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let patch = manifest::restart_patch(&spec.process, &spec.app, &stamp);
        self.deployments(&spec.app)
            .patch(
                &name,
                &PatchParams::apply(RESTART_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await
            .map_err(|e| api(&format!("restarting {}", spec.process), e))?;
        self.wait_rollout(spec, &name).await.map_err(|reason| {
            backend(
                format!("the restart of {} did not finish: {reason}", spec.process),
                None,
            )
        })
    }

    fn events(&self) -> Option<tokio::sync::broadcast::Receiver<InstanceEvent>> {
        Some(self.events.subscribe())
    }

    async fn run_once(&self, spec: OneOffSpec, output: OutputSink) -> Result<i32, RuntimeError> {
        let Some(image) = manifest::image_of(&spec.artifact) else {
            return Err(RuntimeError::Unsupported {
                runtime: NAME,
                what: "slug directories (it runs images)".into(),
            });
        };
        let app = &spec.app;
        refuse_host_paths(app, &spec.mounts)?;
        let secret = manifest::secret_of(app, spec.release, &spec.env);
        self.apply_namespace_and_secret(app, &secret).await?;
        self.apply_claims(app, &spec.mounts).await?;
        let name = crate::names::dns_label(&format!(
            "run-v{}-{:08x}",
            spec.release,
            rand::random::<u32>()
        ));
        let pod = one_off_pod(app, spec.release, &name, image, &spec.argv, &spec.mounts);
        let pods = self.pods(app);
        pods.create(&PostParams::default(), &pod)
            .await
            .map_err(|e| api("starting the one-off pod", e))?;
        let result = self.follow_one_off(&pods, &name, &spec, &output).await;
        if let Err(e) = pods.delete(&name, &DeleteParams::background()).await {
            if !is_not_found(&e) {
                tracing::warn!(%app, pod = %name, error = %e, "removing a one-off pod");
            }
        }
        result
    }

    /// A one-off pod with stdin (and a tty when asked), attached through
    /// the API server's websocket. What the command prints before the
    /// attach lands is not lost: the pod waits for its stdin to open
    /// (`stdinOnce`), as `kubectl run -it` does.
    async fn run_attached(&self, spec: OneOffSpec, io: Attach) -> Result<i32, RuntimeError> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let Some(image) = manifest::image_of(&spec.artifact) else {
            return Err(RuntimeError::Unsupported {
                runtime: NAME,
                what: "slug directories (it runs images)".into(),
            });
        };
        let app = &spec.app;
        refuse_host_paths(app, &spec.mounts)?;
        let secret = manifest::secret_of(app, spec.release, &spec.env);
        self.apply_namespace_and_secret(app, &secret).await?;
        self.apply_claims(app, &spec.mounts).await?;
        let name = crate::names::dns_label(&format!(
            "run-v{}-{:08x}",
            spec.release,
            rand::random::<u32>()
        ));
        let tty = io.pty.is_some();
        let mut pod = one_off_pod(app, spec.release, &name, image, &spec.argv, &spec.mounts);
        if let Some(c) = pod.spec.as_mut().and_then(|s| s.containers.first_mut()) {
            c.stdin = Some(true);
            c.stdin_once = Some(true);
            c.tty = Some(tty);
            if let Some(p) = &io.pty {
                // Beside the storage variables, not instead of them.
                c.env
                    .get_or_insert_with(Vec::new)
                    .push(k8s_openapi::api::core::v1::EnvVar {
                        name: "TERM".into(),
                        value: Some(p.term.clone()),
                        ..Default::default()
                    });
            }
        }
        let pods = self.pods(app);
        pods.create(&PostParams::default(), &pod)
            .await
            .map_err(|e| api("starting the one-off pod", e))?;
        let result = async {
            self.wait_started(&pods, &name, &spec).await?;
            let ap = kube::api::AttachParams::default()
                .container("run")
                .stdin(true)
                .stdout(true)
                .stderr(!tty)
                .tty(tty);
            let mut attached = pods
                .attach(&name, &ap)
                .await
                .map_err(|e| api("attaching to the one-off pod", e))?;
            let Attach {
                stdin: mut input,
                output,
                pty,
                mut resize,
            } = io;
            if let (Some(mut sizes), Some(p)) = (attached.terminal_size(), pty) {
                use futures_util::SinkExt;
                let _ = sizes
                    .send(kube::api::TerminalSize {
                        width: p.cols,
                        height: p.rows,
                    })
                    .await;
                tokio::spawn(async move {
                    while resize.changed().await.is_ok() {
                        let (cols, rows) = *resize.borrow_and_update();
                        if sizes
                            .send(kube::api::TerminalSize {
                                width: cols,
                                height: rows,
                            })
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                });
            }
            if let Some(mut w) = attached.stdin() {
                tokio::spawn(async move {
                    while let Some(chunk) = input.recv().await {
                        if w.write_all(&chunk).await.is_err() {
                            return;
                        }
                    }
                    let _ = w.shutdown().await;
                });
            }
            let mut readers = Vec::new();
            readers.extend(attached.stdout());
            readers.extend(attached.stderr());
            let pumps = readers.into_iter().map(|mut r| {
                let output = output.clone();
                async move {
                    let mut buf = vec![0u8; 8192];
                    while let Ok(n) = r.read(&mut buf).await {
                        if n == 0 || output.send(buf[..n].to_vec()).await.is_err() {
                            break;
                        }
                    }
                }
            });
            let left = spec.timeout;
            if tokio::time::timeout(left, futures_util::future::join_all(pumps))
                .await
                .is_err()
            {
                return Err(RuntimeError::Timeout {
                    what: format!("the one-off command of {app}"),
                    secs: spec.timeout.as_secs(),
                });
            }
            let _ = attached.join().await;
            self.exit_code(&pods, &name, &spec).await
        }
        .await;
        if let Err(e) = pods.delete(&name, &DeleteParams::background()).await {
            if !is_not_found(&e) {
                tracing::warn!(%app, pod = %name, error = %e, "removing a one-off pod");
            }
        }
        result
    }

    async fn remove_app(&self, app: &AppName) -> Result<(), RuntimeError> {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        match namespaces
            .delete(&manifest::namespace_name(app), &DeleteParams::background())
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(api(&format!("deleting the namespace of {app}"), e)),
        }
    }
}

impl KubeRuntime {
    /// Wait for a one-off pod to start, stream its log, and return its exit
    /// code (within the spec's timeout).
    async fn follow_one_off(
        &self,
        pods: &Api<Pod>,
        name: &str,
        spec: &OneOffSpec,
        output: &OutputSink,
    ) -> Result<i32, RuntimeError> {
        let deadline = Instant::now() + spec.timeout;
        self.wait_started(pods, name, spec).await?;
        let lp = LogParams {
            follow: true,
            ..LogParams::default()
        };
        let stream = pods
            .log_stream(name, &lp)
            .await
            .map_err(|e| api("reading the one-off pod's output", e))?;
        let copy = async {
            let mut lines = stream.lines();
            while let Some(Ok(line)) = lines.next().await {
                let mut bytes = line.into_bytes();
                bytes.push(b'\n');
                if output.send(bytes).await.is_err() {
                    break;
                }
            }
        };
        if tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), copy)
            .await
            .is_err()
        {
            return Err(timed_out(spec));
        }
        self.exit_code(pods, name, spec).await
    }

    /// Until the one-off pod runs (or already ended), within its timeout.
    async fn wait_started(
        &self,
        pods: &Api<Pod>,
        name: &str,
        spec: &OneOffSpec,
    ) -> Result<(), RuntimeError> {
        let deadline = Instant::now() + spec.timeout;
        loop {
            let pod = pods
                .get(name)
                .await
                .map_err(|e| api("reading the one-off pod", e))?;
            if let Some((_, why)) = rollout::hopeless(std::slice::from_ref(&pod)) {
                return Err(backend(
                    format!("the one-off pod cannot start: {why}"),
                    None,
                ));
            }
            let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
            if matches!(phase.as_deref(), Some("Running" | "Succeeded" | "Failed")) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(timed_out(spec));
            }
            tokio::time::sleep(self.options.poll).await;
        }
    }

    /// The one-off container's exit code, once the API server reports it.
    async fn exit_code(
        &self,
        pods: &Api<Pod>,
        name: &str,
        spec: &OneOffSpec,
    ) -> Result<i32, RuntimeError> {
        let deadline = Instant::now() + Duration::from_secs(30).min(spec.timeout);
        loop {
            let pod = pods
                .get(name)
                .await
                .map_err(|e| api("reading the one-off pod", e))?;
            let code = pod
                .status
                .iter()
                .flat_map(|s| s.container_statuses.iter().flatten())
                .find_map(|c| c.state.as_ref()?.terminated.as_ref().map(|t| t.exit_code));
            if let Some(code) = code {
                return Ok(code);
            }
            if Instant::now() >= deadline {
                return Err(timed_out(spec));
            }
            tokio::time::sleep(self.options.poll).await;
        }
    }
}

fn timed_out(spec: &OneOffSpec) -> RuntimeError {
    RuntimeError::Timeout {
        what: format!("the one-off command of {}", spec.app),
        secs: spec.timeout.as_secs(),
    }
}

/// Host directories are not mapped on kube: one line, before any request,
/// so a refused deploy has changed nothing in the cluster.
fn refuse_host_paths(app: &AppName, mounts: &[Mount]) -> Result<(), RuntimeError> {
    match manifest::unmappable(mounts) {
        Some(m) => Err(backend(manifest::unmappable_message(app, m), None)),
        None => Ok(()),
    }
}

/// A pod that runs `argv` once in the release's image and environment,
/// with the app's storage (a `release:` command may migrate a file there).
fn one_off_pod(
    app: &AppName,
    release: u32,
    name: &str,
    image: &str,
    argv: &[String],
    mounts: &[Mount],
) -> Pod {
    let (volumes, volume_mounts) = manifest::volumes(mounts);
    let env = manifest::storage_env(mounts);
    Pod {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(manifest::namespace_name(app)),
            labels: Some(BTreeMap::from([
                (LABEL_APP.to_owned(), app.to_string()),
                (LABEL_RELEASE.to_owned(), release.to_string()),
                ("cygni.one-off".to_owned(), "true".to_owned()),
            ])),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            restart_policy: Some("Never".to_owned()),
            enable_service_links: Some(false),
            automount_service_account_token: Some(false),
            containers: vec![Container {
                name: "run".to_owned(),
                image: Some(image.to_owned()),
                args: Some(argv.to_vec()),
                env: (!env.is_empty()).then_some(env),
                env_from: Some(vec![EnvFromSource {
                    secret_ref: Some(SecretEnvSource {
                        name: manifest::secret_name(release),
                        optional: None,
                    }),
                    ..EnvFromSource::default()
                }]),
                volume_mounts: (!volume_mounts.is_empty()).then_some(volume_mounts),
                ..Container::default()
            }],
            volumes: (!volumes.is_empty()).then_some(volumes),
            ..PodSpec::default()
        }),
        ..Pod::default()
    }
}

/// How `--runtime kube` and `auto` reach the cluster.
pub async fn connect_for_start(
    kubeconfig: Option<&Path>,
    timeout: Duration,
    logs: Arc<LogStore>,
    storage: manifest::ClaimClass,
) -> Result<KubeRuntime, KubeError> {
    let path = kubeconfig_path(kubeconfig);
    KubeRuntime::connect(&path, timeout, logs, storage).await
}

/// Where the k3s server keeps the token agents join with (root only).
pub const K3S_NODE_TOKEN: &str = "/var/lib/rancher/k3s/server/node-token";
/// The port of the k3s API server (and supervisor) agents join through.
const K3S_PORT: u16 = 6443;

/// A node as `cluster:nodes` shows it. Pure.
pub fn node_info(node: &k8s_openapi::api::core::v1::Node) -> NodeInfo {
    let labels = node.metadata.labels.clone().unwrap_or_default();
    let control = labels.contains_key("node-role.kubernetes.io/control-plane")
        || labels.contains_key("node-role.kubernetes.io/master");
    let status = node.status.clone().unwrap_or_default();
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let address = status
        .addresses
        .iter()
        .flatten()
        .find(|a| a.type_ == "InternalIP")
        .map(|a| a.address.clone());
    NodeInfo {
        name: node.metadata.name.clone().unwrap_or_default(),
        role: if control { "control-plane" } else { "agent" }.to_owned(),
        ready,
        version: status
            .node_info
            .map(|i| i.kubelet_version)
            .unwrap_or_default(),
        address,
    }
}

#[async_trait::async_trait]
impl Cluster for KubeRuntime {
    async fn nodes(&self) -> Result<Vec<NodeInfo>, RuntimeError> {
        let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(self.client.clone());
        let list = nodes
            .list(&ListParams::default())
            .await
            .map_err(|e| api("listing the nodes", e))?;
        let mut out: Vec<NodeInfo> = list.items.iter().map(node_info).collect();
        out.sort_by(|a, b| (&a.role, &a.name).cmp(&(&b.role, &b.name)));
        Ok(out)
    }

    async fn join_info(&self) -> Result<JoinInfo, RuntimeError> {
        let token = match tokio::fs::read_to_string(K3S_NODE_TOKEN).await {
            Ok(t) if !t.trim().is_empty() => t.trim().to_owned(),
            Ok(_) | Err(_) => {
                return Err(backend(
                    format!(
                        "no join token at {K3S_NODE_TOKEN}: is this the k3s server node (installed with install.sh --k3s)?"
                    ),
                    None,
                ))
            }
        };
        let nodes = self.nodes().await?;
        let Some(address) = nodes
            .iter()
            .filter(|n| n.role == "control-plane")
            .find_map(|n| n.address.clone())
        else {
            return Err(backend(
                "the cluster reports no control-plane node with an address".into(),
                None,
            ));
        };
        let host = if address.contains(':') {
            format!("[{address}]")
        } else {
            address
        };
        Ok(JoinInfo {
            server: format!("https://{host}:{K3S_PORT}"),
            token,
        })
    }
}
