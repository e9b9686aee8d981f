//! Runtimes: run instances of a release and report their endpoints.
//!
//! One trait, [`Runtime`], with a backend per way of running things:
//! `local` (supervised processes) and `docker` (containers through the
//! Docker engine). Kube implements the same trait.
//!
//! The contract every backend keeps:
//! - `start` is idempotent per [`InstanceId`]: starting an id that already
//!   runs returns the running instance.
//! - `stop` of an instance that is already gone is not an error.
//! - what `list` reports is what actually runs, so that `reconcile` can
//!   compare it with the desired state in SQLite.
//! - the proxy never asks the runtime anything on its hot path: the deploy
//!   pipeline copies endpoints into the routes snapshot.

pub mod docker;
pub mod local;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use crate::build::Artifact;
use crate::names::{AppName, ProcessType};

/// The stable name of one instance: `APP-vREL-PROCESS-INDEX`, e.g. `shop-v3-web-1`.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct InstanceId(pub String);

impl InstanceId {
    pub fn new(app: &AppName, release: u32, process: &ProcessType, index: u32) -> InstanceId {
        InstanceId(format!("{app}-v{release}-{process}-{index}"))
    }
}

impl std::fmt::Display for InstanceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Everything a runtime needs to run one instance.
#[derive(Debug, Clone)]
pub struct InstanceSpec {
    pub app: AppName,
    pub release: u32,
    pub process: ProcessType,
    /// 1-based, as in `web.1`.
    pub index: u32,
    /// The Procfile command line. It is the app owner's own command, so it
    /// runs through `/bin/sh -c` as on Heroku; Cygni never splices anything
    /// into it. `$PORT` and the env are passed as environment variables.
    /// Empty means "the image's own CMD" (a Dockerfile app without a
    /// Procfile); only image builds produce that.
    pub command: String,
    /// The release's config vars (PORT is added by the runtime for `web`).
    pub env: BTreeMap<String, String>,
    pub artifact: Artifact,
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
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{runtime} runtime cannot run {what}")]
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
    /// Boxed: bollard's errors are large, and this enum is returned often.
    #[error(transparent)]
    Docker(Box<docker::DockerError>),
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
    /// `local`, `docker` or `kube`.
    fn name(&self) -> &'static str;

    /// Start one instance (idempotent per id) and return it. For `web`, the
    /// returned instance carries the endpoint the proxy should use.
    async fn start(&self, spec: InstanceSpec) -> Result<Instance, RuntimeError>;

    /// Stop one instance: SIGTERM (or the backend's equivalent), then a
    /// forced kill after `grace`. A gone instance is fine.
    async fn stop(&self, id: &InstanceId, grace: Duration) -> Result<(), RuntimeError>;

    /// What runs now, for one app or for all.
    async fn list(&self, app: Option<&AppName>) -> Result<Vec<Instance>, RuntimeError>;

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
    async fn retain_artifacts(
        &self,
        _app: &AppName,
        _keep: &[Artifact],
    ) -> Result<(), RuntimeError> {
        Ok(())
    }
}
