//! Runtimes: run a release's processes and report what runs.
//!
//! One trait, [`Runtime`], with a backend per way of running things:
//! `local` (supervised processes, `local.rs`), `docker` (containers through
//! the Docker engine, `docker.rs`), `kube` (Deployments on k3s, `kube/`) and `fake` (in memory, for the
//! converger's tests). [`connect`] picks one; a new backend is one new file
//! plus one arm there.
//!
//! ```text
//!   ProcessSpec (a release's process type: command, env, artifact, check, limits)
//!        │ .instance(i)                       │ (Readiness::Backend)
//!        ▼                                    ▼
//!   InstanceSpec ──► start / stop / list      apply(process, replicas): the backend
//!   (local, docker: Cygni checks each one)    rolls it out and reports readiness
//! ```
//!
//! The contract every backend keeps:
//! - `start` is idempotent per [`InstanceId`]: starting an id that already
//!   runs returns the running instance.
//! - `stop` of an instance that is already gone is not an error.
//! - what `list` reports is what actually runs, so that the converger can
//!   compare it with the desired state in SQLite; after a daemon restart
//!   `list` finds what still runs (labels, for docker) so it is adopted.
//! - [`Instance::restarts`] only grows while an instance id lives: the
//!   converger admits an incarnation, and a changed count means the
//!   process it checked is gone.
//! - the proxy never asks the runtime anything on its hot path: the
//!   converger copies the endpoints of admitted instances into the routes.
//! - errors are backend-neutral ([`RuntimeError`]); a backend says which
//!   artifact it needs ([`Runtime::artifact_kind`]) instead of callers
//!   comparing its name.

pub mod docker;
pub mod fake;
pub mod kube;
pub mod local;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::build::Artifact;
use crate::limits::Limits;
use crate::names::{AppName, MountPath, ProcessType, StorageName};

/// The stable name of one instance: `APP-vREL-PROCESS-INDEX`, e.g. `shop-v3-web-1`.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct InstanceId(pub String);

impl InstanceId {
    /// `APP-vREL-PROCESS-INDEX`, through [`crate::names::dns_label`]: a
    /// valid DNS-1123 label of at most 63 characters, so the same id names
    /// a process, a container or a Kubernetes object.
    pub fn new(app: &AppName, release: u32, process: &ProcessType, index: u32) -> InstanceId {
        InstanceId(crate::names::dns_label(&format!(
            "{app}-v{release}-{process}-{index}"
        )))
    }
}

impl std::fmt::Display for InstanceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// How a new `web` instance proves it is up before it is admitted to the
/// routes. Stored with the release, so restarts, scale-ups and config
/// releases check what the deploy checked.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HealthCheck {
    /// An HTTP path that must answer 2xx or 3xx; `None`: TCP on `$PORT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// How long a new instance has to pass it, in seconds.
    pub timeout_secs: u64,
}

impl HealthCheck {
    pub fn tcp(timeout: Duration) -> HealthCheck {
        HealthCheck {
            path: None,
            timeout_secs: timeout.as_secs().max(1),
        }
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs.max(1))
    }

    /// For progress lines: "accepting connections on $PORT".
    pub fn describe(&self) -> String {
        match &self.path {
            None => "accepting connections on $PORT".to_owned(),
            Some(path) => format!("answering GET {path}"),
        }
    }
}

/// One process type of one release: everything a backend needs to run
/// any number of its instances. The one place instance specs come from.
#[derive(Debug, Clone)]
pub struct ProcessSpec {
    pub app: AppName,
    pub release: u32,
    pub process: ProcessType,
    /// The Procfile command line. It is the app owner's own command, so it
    /// runs through `/bin/sh -c` as on Heroku; Cygni never splices anything
    /// into it. `$PORT` and the env are passed as environment variables.
    /// Empty means "the image's own CMD" (a Dockerfile app without a
    /// Procfile); only image builds produce that.
    pub command: String,
    /// The release's config vars (PORT is added by the runtime for `web`).
    pub env: Arc<BTreeMap<String, String>>,
    pub artifact: Artifact,
    pub check: HealthCheck,
    pub limits: Limits,
    /// The app's persistent storage (`storage:mount`), as it stood when
    /// this spec was made: a mount applies from the next start.
    pub mounts: Vec<Mount>,
    /// The uid and gid (the same number) the app's processes run as: its
    /// own ([`crate::state::app_users`]), when the daemon is root; None
    /// when it is not (they run as the daemon's user). Only `local` uses
    /// it: `docker` and `kube` run as the image's `USER`.
    pub run_as: Option<(u32, u32)>,
}

/// Persistent storage an instance sees. Every backend gives the app
/// `CYGNI_STORAGE_<NAME>` ([`StorageName::env_var`]): `local` points it
/// at [`Mount::host_dir`] (a process cannot be given another path), and
/// `docker` bind-mounts that directory at `target` and points the
/// variable there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// The storage's name. The kube backend names the app's
    /// PersistentVolumeClaim after it (`storage-NAME` in the app's
    /// namespace, k3s's local-path class by default) for
    /// [`MountSource::Managed`].
    pub name: StorageName,
    /// Where it appears inside a container.
    pub target: MountPath,
    pub source: MountSource,
}

/// Where a mount's files live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountSource {
    /// Cygni's own directory, `DATA/storage/APP/NAME`, created (and given
    /// to the app's user) by the runtime when an instance starts. kube:
    /// a PersistentVolumeClaim, not this directory.
    Managed { dir: PathBuf },
    /// A host directory an admin mounted (`--host-path`, under a
    /// `storage_host_paths` entry). Used as it is: its ownership is the
    /// admin's business. kube: refused at deploy (a pod may run on any
    /// node).
    Host { path: PathBuf },
}

impl Mount {
    /// The directory on this host that holds the files.
    pub fn host_dir(&self) -> &Path {
        match &self.source {
            MountSource::Managed { dir } => dir,
            MountSource::Host { path } => path,
        }
    }
}

/// Makes a mount's directory ready before an instance that uses it
/// starts: Cygni's own is created if missing (0700; its parents
/// traversable, 0711, so an app's user reaches it but lists nothing) and
/// given to `owner`, the uid:gid the app runs as, when that is known and
/// differs (with what is inside: storage from before per-app users was
/// `cygni-app`'s; see [`crate::build::hand_over`]); an admin's host
/// directory must exist and is left as it is.
pub fn prepare_mount(mount: &Mount, owner: Option<(u32, u32)>) -> Result<(), RuntimeError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = match &mount.source {
        MountSource::Host { path } if path.is_dir() => return Ok(()),
        MountSource::Host { path } => {
            return Err(RuntimeError::Spawn {
                id: format!("storage {}", mount.name),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("host directory {} is gone", path.display()),
                ),
            })
        }
        MountSource::Managed { dir } => dir,
    };
    if !dir.is_dir() {
        if let Some(app_dir) = dir.parent() {
            std::fs::create_dir_all(app_dir)?;
            for d in [Some(app_dir), app_dir.parent()].into_iter().flatten() {
                std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o711))?;
            }
        }
        std::fs::create_dir(dir).or_else(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => Ok(()),
            _ => Err(e),
        })?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    if let Some((uid, gid)) = owner {
        let meta = std::fs::metadata(dir)?;
        if (meta.uid(), meta.gid()) != (uid, gid) {
            match crate::build::hand_over(dir, uid, gid) {
                // A daemon that is not root cannot give it away; the app
                // still starts, and may find it read-only.
                Err(crate::build::BuildError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::PermissionDenied =>
                {
                    tracing::warn!(
                        storage = %mount.name,
                        uid,
                        "cannot give the storage directory to the app's user (cygni is not root)"
                    );
                }
                Err(e) => {
                    return Err(RuntimeError::Spawn {
                        id: format!("storage {}", mount.name),
                        source: std::io::Error::other(e.to_string()),
                    })
                }
                Ok(()) => {}
            }
        }
    }
    Ok(())
}

impl ProcessSpec {
    /// Instance `index` (1-based, as in `web.1`) of this process type.
    pub fn instance(&self, index: u32) -> InstanceSpec {
        InstanceSpec {
            app: self.app.clone(),
            release: self.release,
            process: self.process.clone(),
            index,
            command: self.command.clone(),
            env: (*self.env).clone(),
            artifact: self.artifact.clone(),
            limits: self.limits,
            mounts: self.mounts.clone(),
            run_as: self.run_as,
        }
    }
}

/// Everything a runtime needs to run one instance. Made by
/// [`ProcessSpec::instance`].
#[derive(Debug, Clone)]
pub struct InstanceSpec {
    pub app: AppName,
    pub release: u32,
    pub process: ProcessType,
    /// 1-based, as in `web.1`.
    pub index: u32,
    /// See [`ProcessSpec::command`].
    pub command: String,
    pub env: BTreeMap<String, String>,
    pub artifact: Artifact,
    pub limits: Limits,
    /// See [`ProcessSpec::mounts`].
    pub mounts: Vec<Mount>,
    /// See [`ProcessSpec::run_as`].
    pub run_as: Option<(u32, u32)>,
}

impl InstanceSpec {
    pub fn id(&self) -> InstanceId {
        InstanceId::new(&self.app, self.release, &self.process, self.index)
    }
}

/// What an instance is doing right now.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceState {
    /// Started, not yet known to be up (or restarting after a crash).
    Starting,
    Running,
    /// Crashed too often in a row; still retried, with the longest backoff.
    CrashLoop,
    Stopped,
}

impl InstanceState {
    /// The name `ps` and the API show.
    pub fn as_str(&self) -> &'static str {
        match self {
            InstanceState::Starting => "starting",
            InstanceState::Running => "running",
            InstanceState::CrashLoop => "crashed",
            InstanceState::Stopped => "stopped",
        }
    }
}

/// A running (or recently running) instance, as the runtime sees it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Instance {
    pub id: InstanceId,
    pub app: AppName,
    pub release: u32,
    pub process: ProcessType,
    pub index: u32,
    /// Where `web` listens (`127.0.0.1:PORT` for local); None for other types.
    pub endpoint: Option<SocketAddr>,
    pub state: InstanceState,
    pub started_at: SystemTime,
    pub restarts: u32,
}

/// A one-off command in a release's environment (`release:` phase, `run`).
#[derive(Debug, Clone)]
pub struct OneOffSpec {
    pub app: AppName,
    pub release: u32,
    /// argv; for a Procfile `release:` line this is `["/bin/sh", "-c", LINE]`.
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub artifact: Artifact,
    pub timeout: Duration,
    /// The app's storage, as for its instances (a `release:` command may
    /// migrate an SQLite file there).
    pub mounts: Vec<Mount>,
    /// See [`ProcessSpec::run_as`].
    pub run_as: Option<(u32, u32)>,
}

/// What a backend builds on: the build stage makes this kind of artifact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArtifactKind {
    /// A slug directory, run in place (`local`).
    Slug,
    /// An image reference (`docker`, `kube`).
    Image,
}

/// Who decides that an instance is ready for traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// Cygni health-checks each instance it starts (`local`, `docker`):
    /// the converger plans start, check and admit per instance.
    Cygni,
    /// The backend applies a whole process type and reports which of its
    /// instances are ready (`kube`: a Deployment and its readiness probe):
    /// the converger plans [`Runtime::apply`] and admits what `list`
    /// reports `Running`.
    Backend,
}

/// Something the backend noticed without being asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstanceEvent {
    /// The instance's process exited on its own (a crash): whatever was
    /// admitted of it leaves the routes now, not at the next reconcile.
    Exited(InstanceId),
    /// [`Readiness::Backend`]: the set of the app's instances that may
    /// serve changed (kube: its web Service's ready endpoints). The routes
    /// take what `list` reports `Running` now.
    ReadyChanged(AppName),
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("the {runtime} runtime cannot run {what}")]
    Unsupported { runtime: &'static str, what: String },
    #[error("could not start {id}: {source}")]
    Spawn {
        id: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no free port for {id}: {source}")]
    Port {
        id: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} timed out after {secs}s")]
    Timeout { what: String, secs: u64 },
    #[error("runtime i/o: {0}")]
    Io(#[from] std::io::Error),
    /// A backend's own failure (the engine refused, the API server said
    /// no). `message` is one line a user can act on.
    #[error("{message}")]
    Backend {
        runtime: &'static str,
        message: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

/// Output of a one-off command goes here, line by line as it comes.
pub type OutputSink = tokio::sync::mpsc::Sender<Vec<u8>>;

/// A one-off attached to a client (`run`): its stdin, where its output
/// goes (raw bytes, as they come), and whether it gets a pseudo-terminal.
pub struct Attach {
    pub stdin: tokio::sync::mpsc::Receiver<bytes::Bytes>,
    pub output: OutputSink,
    pub pty: Option<PtySize>,
    /// New terminal sizes (cols, rows) while it runs, for a pty.
    pub resize: tokio::sync::watch::Receiver<(u16, u16)>,
}

#[derive(Debug, Clone)]
pub struct PtySize {
    pub cols: u16,
    pub rows: u16,
    /// `TERM` for the command.
    pub term: String,
}

/// A way of running instances. See the module docs for the contract.
#[async_trait::async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// `local`, `docker`, `kube` or `fake`.
    fn name(&self) -> &'static str;

    /// The artifact the build stage must produce for this backend.
    fn artifact_kind(&self) -> ArtifactKind;

    /// Who checks readiness; see [`Readiness`].
    fn readiness(&self) -> Readiness {
        Readiness::Cygni
    }

    /// Start one instance (idempotent per id) and return it. For `web`, the
    /// returned instance carries the endpoint the proxy should use.
    async fn start(&self, spec: InstanceSpec) -> Result<Instance, RuntimeError>;

    /// Stop one instance: SIGTERM (or the backend's equivalent), then a
    /// forced kill after `grace`. A gone instance is fine.
    async fn stop(&self, id: &InstanceId, grace: Duration) -> Result<(), RuntimeError>;

    /// What runs now, for one app or for all.
    async fn list(&self, app: Option<&AppName>) -> Result<Vec<Instance>, RuntimeError>;

    /// [`Readiness::Backend`] only: run `replicas` instances of `spec`
    /// (0 removes them), replacing those of other releases of the same
    /// process type, and return once the backend reports them ready or
    /// the rollout failed (restoring what ran before).
    async fn apply(&self, spec: &ProcessSpec, replicas: u32) -> Result<(), RuntimeError> {
        let _ = (spec, replicas);
        Err(RuntimeError::Unsupported {
            runtime: self.name(),
            what: "whole process types".into(),
        })
    }

    /// [`Readiness::Backend`] only: replace the running instances of
    /// `spec`'s process type by fresh ones without downtime (kube: a
    /// rollout restart), and return once the backend reports them ready.
    async fn restart(&self, spec: &ProcessSpec, replicas: u32) -> Result<(), RuntimeError> {
        let _ = (spec, replicas);
        Err(RuntimeError::Unsupported {
            runtime: self.name(),
            what: "rolling restarts of whole process types".into(),
        })
    }

    /// Exits the backend notices on its own, as they happen; `None` when
    /// it only reports them through `list`.
    fn events(&self) -> Option<tokio::sync::broadcast::Receiver<InstanceEvent>> {
        None
    }

    /// Run a one-off command to completion, streaming its combined output to
    /// `output`; returns its exit code (128+signal when killed).
    async fn run_once(&self, spec: OneOffSpec, output: OutputSink) -> Result<i32, RuntimeError>;

    /// Run a one-off attached to a client: stdin forwarded until it ends,
    /// output passed on raw, a pty when asked. Returns the exit code.
    async fn run_attached(&self, spec: OneOffSpec, io: Attach) -> Result<i32, RuntimeError> {
        let _ = (spec, io);
        Err(RuntimeError::Unsupported {
            runtime: self.name(),
            what: "attached one-off commands".into(),
        })
    }

    /// Lets the backend drop what it keeps for an app's releases (images)
    /// except the artifacts in `keep` (recent releases and the live one).
    /// Called after a deploy, where old slugs are pruned. Backends that
    /// keep nothing of their own do nothing.
    /// The cluster this backend runs on, for `cluster:*` commands; `None`
    /// for backends that run on this host only.
    fn cluster(&self) -> Option<&dyn Cluster> {
        None
    }

    /// An app is destroyed: remove whatever the backend keeps for it
    /// beyond its instances (kube: its namespace). Nothing, by default.
    async fn remove_app(&self, _app: &AppName) -> Result<(), RuntimeError> {
        Ok(())
    }

    async fn retain_artifacts(
        &self,
        _app: &AppName,
        _keep: &[Artifact],
    ) -> Result<(), RuntimeError> {
        Ok(())
    }
}

/// One node of a cluster, as `cluster:nodes` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NodeInfo {
    pub name: String,
    /// `control-plane`, or `agent`.
    pub role: String,
    pub ready: bool,
    /// The kubelet's version (`v1.33.1+k3s1`).
    pub version: String,
    /// The address the other nodes reach it on.
    pub address: Option<String>,
}

/// What an agent needs to join the cluster.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct JoinInfo {
    /// `https://SERVER:6443`.
    pub server: String,
    pub token: String,
}

/// A backend that runs on a cluster of nodes (kube).
#[async_trait::async_trait]
pub trait Cluster: Send + Sync {
    async fn nodes(&self) -> Result<Vec<NodeInfo>, RuntimeError>;
    async fn join_info(&self) -> Result<JoinInfo, RuntimeError>;
}

/// Which backend `--runtime` asked for.
pub use crate::config::RuntimeChoice;

/// What [`connect`] needs to build any backend.
pub struct ConnectOptions {
    pub data_dir: std::path::PathBuf,
    pub logs: Arc<crate::logs::LogStore>,
    pub run_as: Option<local::RunAs>,
    /// `--kubeconfig`; else `KUBECONFIG`, else k3s's (see [`kube::kubeconfig_path`]).
    pub kubeconfig: Option<std::path::PathBuf>,
    /// The class and size of the PersistentVolumeClaims kube makes for
    /// storage (`kube_storage_class`, `kube_storage_size`).
    pub kube_storage: kube::manifest::ClaimClass,
}

/// The backend [`connect`] picked.
pub struct Connected {
    pub runtime: Arc<dyn Runtime>,
    /// The local runtime, when that is the one: its instances stop with
    /// the daemon.
    pub local: Option<Arc<local::LocalRuntime>>,
    /// For the start-up banner: `docker (Docker 28.2.2, API 1.50)`.
    pub description: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("--runtime docker: {0}; start the Docker engine, or use --runtime local")]
    Docker(#[source] docker::DockerError),
    /// Its text is the whole line (with the server it tried): no source,
    /// or the chain would repeat it.
    #[error("--runtime kube: {0}")]
    Kube(kube::KubeError),
}

/// How long `--runtime kube` gives the API server to answer at start-up.
const KUBE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `--runtime auto` gives it: a cluster that is slower than this
/// to answer is not picked.
const KUBE_AUTO_TIMEOUT: Duration = Duration::from_secs(2);

/// Pick and connect the backend. `auto` probes kube (a kubeconfig whose
/// cluster answers within 2s), then docker (the engine must answer within
/// a few seconds), then local.
pub async fn connect(
    choice: RuntimeChoice,
    options: ConnectOptions,
) -> Result<Connected, ConnectError> {
    let kube = match choice {
        RuntimeChoice::Kube => Some(
            kube::connect_for_start(
                options.kubeconfig.as_deref(),
                KUBE_TIMEOUT,
                options.logs.clone(),
                options.kube_storage.clone(),
            )
            .await
            .map_err(ConnectError::Kube)?,
        ),
        RuntimeChoice::Auto if kube::kubeconfig_path(options.kubeconfig.as_deref()).is_file() => {
            match kube::connect_for_start(
                options.kubeconfig.as_deref(),
                KUBE_AUTO_TIMEOUT,
                options.logs.clone(),
                options.kube_storage.clone(),
            )
            .await
            {
                Ok(k) => Some(k),
                Err(e) => {
                    tracing::info!(error = %e, "no Kubernetes cluster; trying Docker");
                    None
                }
            }
        }
        _ => None,
    };
    if let Some(kube) = kube {
        return Ok(Connected {
            description: format!("kube ({})", kube.description()),
            runtime: Arc::new(kube),
            local: None,
        });
    }
    let docker_config = docker::DockerConfig {
        owner: options.data_dir.display().to_string(),
    };
    let docker = match choice {
        RuntimeChoice::Docker => Some(
            docker::DockerRuntime::connect(docker_config, options.logs.clone())
                .await
                .map_err(ConnectError::Docker)?,
        ),
        RuntimeChoice::Auto => {
            match docker::DockerRuntime::connect(docker_config, options.logs.clone()).await {
                Ok(docker) => Some(docker),
                Err(e) => {
                    tracing::info!(error = %e, "no Docker engine; using the local runtime");
                    None
                }
            }
        }
        // Kube returned above.
        RuntimeChoice::Local | RuntimeChoice::Kube => None,
    };
    Ok(match docker {
        Some(docker) => Connected {
            description: format!("docker ({})", docker.version()),
            runtime: Arc::new(docker),
            local: None,
        },
        None => {
            let cgroups = match local::cgroup::Cgroups::open(&options.data_dir) {
                Ok(c) => {
                    tracing::info!(cgroups = %c.base().display(), "each local process runs in a cgroup of its own");
                    Some(Arc::new(c))
                }
                Err(why) => {
                    tracing::warn!(%why, "local processes run without cgroups: stop reaches only their process group");
                    None
                }
            };
            let local = Arc::new(local::LocalRuntime::new(
                local::LocalConfig {
                    run_as: options.run_as,
                    records: Some(local::records::Records::new(
                        options.data_dir.join("run").join("local"),
                    )),
                    cgroups,
                    ..local::LocalConfig::default()
                },
                options.logs,
            ));
            // Crash-only: what a killed daemon left running goes first, so
            // reconcile starts each instance once, never beside an orphan.
            let reaped = local.reap_orphans();
            if reaped > 0 {
                tracing::warn!(reaped, "killed processes a previous daemon left running");
            }
            Connected {
                description: "local".to_owned(),
                runtime: local.clone(),
                local: Some(local),
            }
        }
    })
}
