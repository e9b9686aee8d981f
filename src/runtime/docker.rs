//! The docker runtime: each instance is a container of the release's image,
//! run by the Docker engine (through bollard, on its unix socket).
//!
//! ```text
//! start(spec) ──► inspect cygni-APP-vN-PROC-I ── running? ──► that instance (idempotent)
//!                   │ missing (or exited: removed first)
//!                   ▼
//!                 create (labels, env + PORT + DYNO, 127.0.0.1:ephemeral → 5000/tcp,
//!                         restart unless-stopped, init, limits) ──► start ──► inspect
//!                   └──► log follower: container stdout/stderr ──► LogStore ("web.1")
//! stop(id)    ──► docker stop -t GRACE (SIGTERM, SIGKILL after GRACE) ──► remove
//! list(app)   ──► containers labelled cygni.data-dir=DATA and cygni.process ──► inspect each
//! run_once    ──► a labelled one-off container, output streamed, exit code, removed
//! ```
//!
//! What a container gets: the release's config vars, `DYNO=web.1`, and for
//! `web` `PORT=5000`, published on an ephemeral loopback port the engine
//! picks (learned by inspecting; that is the endpoint). The Procfile line
//! runs as `/bin/sh -c LINE` (the image's ENTRYPOINT, if any, is kept, as on
//! Heroku and Dokku); an empty command means "the image's own CMD" (a
//! Dockerfile app without a Procfile). Limits come from the release's
//! config vars: `CYGNI_MEMORY` (`512m`, `1g`, or bytes) and `CYGNI_CPUS`
//! (`0.5`, `2`). Persistent storage (`InstanceSpec::mounts`) is
//! bind-mounted at its path, named by `CYGNI_STORAGE_<NAME>`, and its
//! directory given to the image's numeric `USER` first.
//!
//! Restart policy `unless-stopped`: the engine restarts a crashed
//! container with its own backoff, brings it back after a reboot or an
//! engine restart, and a stop of ours sticks. (`on-failure` would leave an
//! app that exited 0 down, and is not restarted with the engine.) `init`
//! runs the engine's tiny init as PID 1, so SIGTERM reaches an app that
//! does not handle signals as PID 1 (busybox httpd, `sh -c`).
//!
//! What `list` reports: `Running` while the container runs, `Starting`
//! while created or waiting to be restarted, `CrashLoop` from the 5th
//! restart until it stays up 30s, `Stopped` once exited. `restarts` is the
//! engine's RestartCount, `started_at` its StartedAt.
//!
//! Adoption: containers outlive the daemon. A restarted daemon finds them
//! by their labels (`cygni.app`, `cygni.release`, `cygni.process`,
//! `cygni.index`), follows their logs from then on, and restarts nothing:
//! there is no shutdown for this runtime. `cygni.data-dir` names the
//! daemon that owns a container, so two daemons on one engine (the tests)
//! never adopt or stop each other's containers.
//!
//! Published ports go through the engine's userland proxy, which accepts a
//! connection even when nothing listens in the container (then closes it):
//! the deploy's TCP health check must see data or silence, not a bare
//! accept (see `deploy::health`).

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use bollard::errors::Error as EngineError;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum, HostConfig,
    PortBinding, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, ListContainersOptionsBuilder,
    ListImagesOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    RemoveImageOptionsBuilder, ResizeContainerTTYOptionsBuilder, StopContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;
use tokio::task::JoinHandle;

use super::{
    Attach, Instance, InstanceId, InstanceSpec, InstanceState, OneOffSpec, OutputSink, PtySize,
    Runtime, RuntimeError,
};
use crate::build::Artifact;
use crate::logs::LogStore;
use crate::names::{AppName, ProcessType};

/// The port `web` listens on inside its container (`$PORT`).
pub const CONTAINER_PORT: u16 = 5000;

/// Container labels: how a restarted daemon recognises its instances.
pub const LABEL_APP: &str = "cygni.app";
pub const LABEL_RELEASE: &str = "cygni.release";
pub const LABEL_PROCESS: &str = "cygni.process";
pub const LABEL_INDEX: &str = "cygni.index";
/// The data dir of the daemon that owns the container.
pub const LABEL_OWNER: &str = "cygni.data-dir";
/// Set on one-off containers (which carry no `cygni.process`).
pub const LABEL_ONE_OFF: &str = "cygni.one-off";

/// The log source of the runtime's own messages.
const LOG_SOURCE: &str = "cygni";

/// How many restarts in a row make an instance `CrashLoop`.
const CRASH_LOOP_AFTER: i64 = 5;
/// A container up this long is no longer crash looping.
const HEALTHY_AFTER: Duration = Duration::from_secs(30);
/// How long a one-off's output may take to drain after it exited.
const ONE_OFF_DRAIN: Duration = Duration::from_secs(5);
/// How long the engine may take to answer when probing for `--runtime auto`.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("cannot reach the Docker engine ({socket}): {source}")]
    Connect {
        socket: String,
        #[source]
        source: EngineError,
    },
    #[error("the Docker engine did not answer within {}s ({socket})", .after.as_secs())]
    ConnectTimeout { socket: String, after: Duration },
    #[error("docker could not {action} {what}: {source}")]
    Engine {
        action: &'static str,
        what: String,
        #[source]
        source: EngineError,
    },
    #[error("container {name} belongs to another cygni (data dir {owner}): remove it, or deploy from that daemon")]
    Foreign { name: String, owner: String },
    #[error("container {name} has no published port for {CONTAINER_PORT}/tcp")]
    NoPort { name: String },
}

impl From<DockerError> for RuntimeError {
    fn from(e: DockerError) -> RuntimeError {
        RuntimeError::Backend {
            runtime: "docker",
            message: e.to_string(),
            source: Some(Box::new(e)),
        }
    }
}

/// What the daemon decides for this runtime.
#[derive(Debug, Clone)]
pub struct DockerConfig {
    /// Written into every container's `cygni.data-dir` label; only
    /// containers with this value are listed, adopted or stopped.
    pub owner: String,
}

/// Runs instances as containers. See the module docs.
pub struct DockerRuntime {
    docker: Docker,
    config: DockerConfig,
    logs: Arc<LogStore>,
    /// Log followers by container id (not name: a recreated container of
    /// the same name gets its own follower while the old one drains).
    followers: Mutex<HashMap<String, JoinHandle<()>>>,
    /// Serializes `start`, so two starts of one id cannot both create.
    starting: tokio::sync::Mutex<()>,
    /// `Docker 20.10.24, API 1.41`, for the start-up banner.
    version: String,
    /// Container exits the engine reports, as instance events.
    events: tokio::sync::broadcast::Sender<super::InstanceEvent>,
    /// Stops the event watcher when the runtime goes.
    _watch: tokio_util::sync::DropGuard,
}

impl DockerRuntime {
    /// Create (not start) a labelled one-off container for `spec`; it is
    /// removed when the returned guard drops, however the run ends. With a
    /// pty, the container gets a tty and an open stdin.
    async fn create_one_off(
        &self,
        spec: &OneOffSpec,
        pty: Option<&PtySize>,
    ) -> Result<(String, String, String, RemoveOnDrop), RuntimeError> {
        let image = image_of(&spec.artifact)?;
        let what = format!("one-off command of {} v{}", spec.app, spec.release);
        let Some(program) = spec.argv.first().cloned() else {
            return Err(RuntimeError::Spawn {
                id: what,
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty command"),
            });
        };
        let name = format!(
            "cygni-{}-v{}-run-{:08x}",
            spec.app,
            spec.release,
            rand::random::<u32>()
        );
        let labels = HashMap::from([
            (LABEL_APP.to_owned(), spec.app.to_string()),
            (LABEL_RELEASE.to_owned(), spec.release.to_string()),
            (LABEL_ONE_OFF.to_owned(), "true".to_owned()),
            (LABEL_OWNER.to_owned(), self.config.owner.clone()),
        ]);
        let (binds, storage_env) = self.storage(image, &spec.mounts).await?;
        let extra: Vec<(&str, String)> = storage_env
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        let mut env = Self::env(&spec.env, &extra);
        if let Some(p) = pty {
            env.push(format!("TERM={}", p.term));
        }
        let body = ContainerCreateBody {
            image: Some(image.to_owned()),
            cmd: Some(spec.argv.clone()),
            env: Some(env),
            labels: Some(labels),
            // stdin is open for attached runs; the engine closes it when the
            // attached client closes its side.
            open_stdin: Some(true),
            stdin_once: Some(true),
            attach_stdin: Some(true),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(pty.is_some()),
            host_config: Some(HostConfig {
                init: Some(true),
                mounts: (!binds.is_empty()).then_some(binds),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::default().name(&name).build();
        self.docker
            .create_container(Some(options), body)
            .await
            .map_err(Self::engine("create container", &name))?;
        let remove = RemoveOnDrop {
            docker: self.docker.clone(),
            name: name.clone(),
        };
        Ok((name, program, what, remove))
    }

    /// Wait for a one-off to exit, stopping it at `timeout` (Err).
    async fn wait_one_off(
        &self,
        name: &str,
        timeout: Duration,
    ) -> Result<Result<i32, RuntimeError>, tokio::time::error::Elapsed> {
        let wait = async {
            let mut waits = std::pin::pin!(self.docker.wait_container(name, None));
            match waits.next().await {
                Some(Ok(r)) => Ok(r.status_code),
                Some(Err(EngineError::DockerContainerWaitError { code, .. })) => Ok(code),
                Some(Err(e)) => Err(Self::engine("wait for container", name)(e)),
                None => Ok(-1),
            }
        };
        let finished = tokio::time::timeout(timeout, wait).await;
        if finished.is_err() {
            let options = StopContainerOptionsBuilder::default().t(10).build();
            let _ = self.docker.stop_container(name, Some(options)).await;
        }
        finished.map(|r| {
            r.map(|code| i32::try_from(code).unwrap_or(-1))
                .map_err(RuntimeError::from)
        })
    }

    /// Connects to the local engine (`DOCKER_HOST` or the default socket),
    /// negotiates the API version (an older engine refuses bollard's
    /// default), and checks that it answers, all within a few seconds.
    pub async fn connect(
        config: DockerConfig,
        logs: Arc<LogStore>,
    ) -> Result<DockerRuntime, DockerError> {
        let docker = connect().await?;
        let version = match docker.version().await {
            Ok(v) => format!(
                "Docker {}, API {}",
                v.version.unwrap_or_default(),
                v.api_version.unwrap_or_default()
            ),
            Err(_) => "Docker".to_owned(),
        };
        let events = tokio::sync::broadcast::channel(256).0;
        let stop = tokio_util::sync::CancellationToken::new();
        tokio::spawn(watch_exits(
            docker.clone(),
            config.owner.clone(),
            events.clone(),
            stop.clone(),
        ));
        Ok(DockerRuntime {
            docker,
            config,
            logs,
            followers: Mutex::new(HashMap::new()),
            starting: tokio::sync::Mutex::new(()),
            version,
            events,
            _watch: stop.drop_guard(),
        })
    }

    /// The engine's version, for humans.
    pub fn version(&self) -> &str {
        &self.version
    }

    fn engine(
        action: &'static str,
        what: impl Into<String>,
    ) -> impl FnOnce(EngineError) -> DockerError {
        let what = what.into();
        move |source| DockerError::Engine {
            action,
            what,
            source,
        }
    }

    /// Inspects a container; `None` when there is no such container.
    async fn inspect(&self, name: &str) -> Result<Option<ContainerInspectResponse>, DockerError> {
        match self.docker.inspect_container(name, None).await {
            Ok(c) => Ok(Some(c)),
            Err(e) if status(&e) == Some(404) => Ok(None),
            Err(e) => Err(Self::engine("inspect", name)(e)),
        }
    }

    fn check_owner(&self, name: &str, c: &ContainerInspectResponse) -> Result<(), DockerError> {
        let owner = labels(c).get(LABEL_OWNER).cloned().unwrap_or_default();
        if owner != self.config.owner {
            return Err(DockerError::Foreign {
                name: name.to_owned(),
                owner,
            });
        }
        Ok(())
    }

    async fn remove(&self, name: &str) -> Result<(), DockerError> {
        let options = RemoveContainerOptionsBuilder::default().force(true).build();
        match self.docker.remove_container(name, Some(options)).await {
            Ok(()) => Ok(()),
            // Gone already, or its removal is under way.
            Err(e) if matches!(status(&e), Some(404 | 409)) => Ok(()),
            Err(e) => Err(Self::engine("remove container", name)(e)),
        }
    }

    /// Follows a container's logs into the log store, unless already done.
    /// `since` (unix seconds) skips what an earlier daemon already stored.
    fn follow(&self, container_id: &str, app: &AppName, source: String, since: i64) {
        let mut followers = lock(&self.followers);
        followers.retain(|_, task| !task.is_finished());
        if followers.contains_key(container_id) {
            return;
        }
        let task = tokio::spawn(follow_logs(
            self.docker.clone(),
            container_id.to_owned(),
            app.clone(),
            source,
            self.logs.clone(),
            since,
        ));
        followers.insert(container_id.to_owned(), task);
    }

    /// The engine's bind mounts for an app's storage, each directory made
    /// ready first and given to the user `image` runs as (when the image
    /// names it by number, as Cygni's slug images do: `10001:10001`), and
    /// the `CYGNI_STORAGE_<NAME>` variables pointing at the mount paths.
    async fn storage(
        &self,
        image: &str,
        mounts: &[super::Mount],
    ) -> Result<(Vec<bollard::models::Mount>, Vec<(String, String)>), RuntimeError> {
        if mounts.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let user = self
            .docker
            .inspect_image(image)
            .await
            .map_err(Self::engine("inspect image", image))?
            .config
            .and_then(|c| c.user)
            .unwrap_or_default();
        let owner = numeric_user(&user);
        if owner.is_none() && !matches!(user.as_str(), "" | "root" | "0" | "0:0") {
            tracing::warn!(%image, %user, "image runs as a named user: its storage keeps its owner");
        }
        let mut binds = Vec::new();
        let mut env = Vec::new();
        for m in mounts {
            let (m2, owner) = (m.clone(), owner);
            tokio::task::spawn_blocking(move || super::prepare_mount(&m2, owner))
                .await
                .map_err(|e| RuntimeError::Io(std::io::Error::other(e.to_string())))??;
            binds.push(bollard::models::Mount {
                target: Some(m.target.as_str().to_owned()),
                source: Some(m.host_dir().to_string_lossy().into_owned()),
                typ: Some(bollard::models::MountType::BIND),
                read_only: Some(false),
                ..Default::default()
            });
            env.push((m.name.env_var(), m.target.as_str().to_owned()));
        }
        Ok((binds, env))
    }

    fn env(spec_env: &BTreeMap<String, String>, extra: &[(&str, String)]) -> Vec<String> {
        let mut env = spec_env.clone();
        // The runtime's own variables win over the release's.
        for (k, v) in extra {
            env.insert((*k).to_owned(), v.clone());
        }
        env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
    }
}

/// Connects and negotiates, bounded by [`PROBE_TIMEOUT`].
/// Turn the engine's `die` events for this daemon's instances into
/// [`super::InstanceEvent::Exited`], so a crashed container leaves the
/// routes at once. Reconnects with a pause if the stream ends; stops when
/// the runtime is dropped.
async fn watch_exits(
    docker: Docker,
    owner: String,
    events: tokio::sync::broadcast::Sender<super::InstanceEvent>,
    stop: tokio_util::sync::CancellationToken,
) {
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = watch_exits_forever(docker, owner, events) => {}
    }
}

async fn watch_exits_forever(
    docker: Docker,
    owner: String,
    events: tokio::sync::broadcast::Sender<super::InstanceEvent>,
) {
    use futures_util::StreamExt;
    loop {
        let filters = HashMap::from([
            ("type".to_owned(), vec!["container".to_owned()]),
            ("event".to_owned(), vec!["die".to_owned()]),
            ("label".to_owned(), vec![format!("{LABEL_OWNER}={owner}")]),
        ]);
        let options = bollard::query_parameters::EventsOptions {
            filters: Some(filters),
            ..Default::default()
        };
        let mut stream = docker.events(Some(options));
        while let Some(event) = stream.next().await {
            let Ok(event) = event else { break };
            let Some(attrs) = event.actor.and_then(|a| a.attributes) else {
                continue;
            };
            if let Some((app, release, process, index)) = instance_labels(&attrs) {
                let id = InstanceId::new(&app, release, &process, index);
                // No subscriber yet is fine: reconcile compares
                // incarnations anyway.
                let _ = events.send(super::InstanceEvent::Exited(id));
            }
        }
        // The engine went away or restarted: try again shortly.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

async fn connect() -> Result<Docker, DockerError> {
    let socket =
        std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into());
    let docker = Docker::connect_with_local_defaults().map_err(|source| DockerError::Connect {
        socket: socket.clone(),
        source,
    })?;
    let negotiate = async {
        let docker = docker.negotiate_version().await?;
        docker.ping().await?;
        Ok::<_, EngineError>(docker)
    };
    match tokio::time::timeout(PROBE_TIMEOUT, negotiate).await {
        Ok(Ok(docker)) => Ok(docker),
        Ok(Err(source)) => Err(DockerError::Connect { socket, source }),
        Err(_) => Err(DockerError::ConnectTimeout {
            socket,
            after: PROBE_TIMEOUT,
        }),
    }
}

/// `10001:10001` → (10001, 10001), `10001` → (10001, 10001); None for a
/// named user (resolving it needs the image's /etc/passwd) or root.
fn numeric_user(user: &str) -> Option<(u32, u32)> {
    let (uid, gid) = match user.split_once(':') {
        Some((u, g)) => (u.parse().ok()?, g.parse().ok()?),
        None => {
            let uid = user.parse().ok()?;
            (uid, uid)
        }
    };
    (uid != 0).then_some((uid, gid))
}

/// `cygni-shop-v3-web-1`.
pub fn container_name(id: &InstanceId) -> String {
    format!("cygni-{id}")
}

fn image_of(artifact: &Artifact) -> Result<&str, RuntimeError> {
    match artifact {
        Artifact::Image { reference } => Ok(reference),
        Artifact::Slug { dir } => Err(RuntimeError::Unsupported {
            runtime: "docker",
            what: format!(
                "slug {} (this release was built for the local runtime: push again to build an image)",
                dir.display()
            ),
        }),
    }
}

/// The HTTP status of an engine error, if it was one.
fn status(e: &EngineError) -> Option<u16> {
    match e {
        EngineError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

fn labels(c: &ContainerInspectResponse) -> HashMap<String, String> {
    c.config
        .as_ref()
        .and_then(|config| config.labels.clone())
        .unwrap_or_default()
}

/// What an engine state means for Cygni.
fn state_of(
    status: Option<ContainerStateStatusEnum>,
    restarts: i64,
    up_for: Duration,
) -> InstanceState {
    let looping = restarts >= CRASH_LOOP_AFTER;
    match status {
        Some(ContainerStateStatusEnum::RUNNING) if looping && up_for < HEALTHY_AFTER => {
            InstanceState::CrashLoop
        }
        Some(ContainerStateStatusEnum::RUNNING) => InstanceState::Running,
        Some(ContainerStateStatusEnum::RESTARTING) if looping => InstanceState::CrashLoop,
        Some(ContainerStateStatusEnum::RESTARTING | ContainerStateStatusEnum::CREATED) => {
            InstanceState::Starting
        }
        _ => InstanceState::Stopped,
    }
}

fn parse_time(text: Option<&str>) -> Option<SystemTime> {
    let t = chrono::DateTime::parse_from_rfc3339(text?).ok()?;
    // The engine says 0001-01-01 for "never".
    let secs = u64::try_from(t.timestamp()).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::new(secs, t.timestamp_subsec_nanos()))
}

/// The instance a container is, from its labels; None for a container that
/// is not a well-formed Cygni instance.
/// App, release, process type and index from a container's labels; None
/// for a container that is not a well-formed Cygni instance.
fn instance_labels(labels: &HashMap<String, String>) -> Option<(AppName, u32, ProcessType, u32)> {
    Some((
        AppName::parse(labels.get(LABEL_APP)?).ok()?,
        labels.get(LABEL_RELEASE)?.parse().ok()?,
        ProcessType::parse(labels.get(LABEL_PROCESS)?).ok()?,
        labels.get(LABEL_INDEX)?.parse().ok()?,
    ))
}

fn instance_of(c: &ContainerInspectResponse) -> Option<Instance> {
    let (app, release, process, index) = instance_labels(&labels(c))?;
    let state = c.state.as_ref();
    let started_at =
        parse_time(state.and_then(|s| s.started_at.as_deref())).unwrap_or(SystemTime::UNIX_EPOCH);
    let restarts = c.restart_count.unwrap_or(0);
    let up_for = SystemTime::now()
        .duration_since(started_at)
        .unwrap_or_default();
    let state = state_of(state.and_then(|s| s.status), restarts, up_for);
    let endpoint = if process.is_web() {
        published_port(c).map(|port| SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
    } else {
        None
    };
    Some(Instance {
        id: InstanceId::new(&app, release, &process, index),
        app,
        release,
        process,
        index,
        endpoint,
        state,
        started_at,
        restarts: u32::try_from(restarts).unwrap_or(u32::MAX),
    })
}

/// The loopback port the engine published `CONTAINER_PORT` on (absent
/// while the container is not running).
fn published_port(c: &ContainerInspectResponse) -> Option<u16> {
    let ports = c.network_settings.as_ref()?.ports.as_ref()?;
    let bindings = ports.get(&format!("{CONTAINER_PORT}/tcp"))?.as_ref()?;
    bindings
        .iter()
        .filter(|b| b.host_ip.as_deref().is_none_or(|ip| ip == "127.0.0.1"))
        .find_map(|b| b.host_port.as_deref()?.parse().ok())
}

#[async_trait::async_trait]
impl Runtime for DockerRuntime {
    fn name(&self) -> &'static str {
        "docker"
    }

    fn artifact_kind(&self) -> super::ArtifactKind {
        super::ArtifactKind::Image
    }

    fn events(&self) -> Option<tokio::sync::broadcast::Receiver<super::InstanceEvent>> {
        Some(self.events.subscribe())
    }

    async fn start(&self, spec: InstanceSpec) -> Result<Instance, RuntimeError> {
        let id = spec.id();
        let name = container_name(&id);
        let source = format!("{}.{}", spec.process, spec.index);
        let _one_at_a_time = self.starting.lock().await;

        if let Some(existing) = self.inspect(&name).await? {
            self.check_owner(&name, &existing)?;
            let instance = instance_of(&existing);
            match instance {
                Some(instance) if instance.state != InstanceState::Stopped => {
                    if let Some(cid) = existing.id.as_deref() {
                        self.follow(cid, &spec.app, source, chrono::Utc::now().timestamp());
                    }
                    return Ok(instance);
                }
                // Exited (stopped by hand, or the engine gave up): start afresh.
                _ => self.remove(&name).await?,
            }
        }

        let image = image_of(&spec.artifact)?;
        let (binds, storage_env) = self.storage(image, &spec.mounts).await?;
        let mut extra: Vec<(&str, String)> = storage_env
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        extra.push(("DYNO", source.clone()));
        let web = spec.process.is_web();
        if web {
            extra.push(("PORT", CONTAINER_PORT.to_string()));
        }
        // Typed and validated when they were set (crate::limits).
        let memory = spec
            .limits
            .memory_bytes
            .map(|b| i64::try_from(b).unwrap_or(i64::MAX));
        let nano_cpus = spec.limits.nano_cpus();
        let labels = HashMap::from([
            (LABEL_APP.to_owned(), spec.app.to_string()),
            (LABEL_RELEASE.to_owned(), spec.release.to_string()),
            (LABEL_PROCESS.to_owned(), spec.process.to_string()),
            (LABEL_INDEX.to_owned(), spec.index.to_string()),
            (LABEL_OWNER.to_owned(), self.config.owner.clone()),
        ]);
        let port_key = format!("{CONTAINER_PORT}/tcp");
        let body = ContainerCreateBody {
            image: Some(image.to_owned()),
            // Empty: the image's own CMD (a Dockerfile app with no Procfile).
            cmd: (!spec.command.is_empty())
                .then(|| vec!["/bin/sh".into(), "-c".into(), spec.command.clone()]),
            env: Some(Self::env(&spec.env, &extra)),
            labels: Some(labels),
            exposed_ports: web.then(|| vec![port_key.clone()]),
            host_config: Some(HostConfig {
                // An empty HostPort: the engine picks a free one.
                port_bindings: web.then(|| {
                    HashMap::from([(
                        port_key.clone(),
                        Some(vec![PortBinding {
                            host_ip: Some("127.0.0.1".into()),
                            host_port: Some(String::new()),
                        }]),
                    )])
                }),
                restart_policy: Some(RestartPolicy {
                    name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                    maximum_retry_count: None,
                }),
                init: Some(true),
                memory,
                nano_cpus,
                mounts: (!binds.is_empty()).then_some(binds),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::default().name(&name).build();
        let created = self
            .docker
            .create_container(Some(options), body)
            .await
            .map_err(Self::engine("create container", &name))?;
        if let Err(e) = self.docker.start_container(&name, None).await {
            let _ = self.remove(&name).await;
            return Err(Self::engine("start container", &name)(e).into());
        }
        self.follow(&created.id, &spec.app, source.clone(), 0);
        let inspected = self
            .inspect(&name)
            .await?
            .ok_or_else(|| DockerError::NoPort { name: name.clone() })?;
        let instance =
            instance_of(&inspected).ok_or_else(|| DockerError::NoPort { name: name.clone() })?;
        if web && instance.endpoint.is_none() && instance.state == InstanceState::Running {
            return Err(DockerError::NoPort { name }.into());
        }
        let short = &created.id[..created.id.len().min(12)];
        let started = match instance.endpoint {
            Some(endpoint) => format!(
                "{source} started from v{} (container {short}, PORT={CONTAINER_PORT} on {endpoint})",
                spec.release
            ),
            None => format!("{source} started from v{} (container {short})", spec.release),
        };
        self.logs.append(&spec.app, LOG_SOURCE, started.as_bytes());
        Ok(instance)
    }

    async fn stop(&self, id: &InstanceId, grace: Duration) -> Result<(), RuntimeError> {
        let name = container_name(id);
        let Some(existing) = self.inspect(&name).await? else {
            return Ok(());
        };
        self.check_owner(&name, &existing)?;
        let secs = i32::try_from(grace.as_secs()).unwrap_or(i32::MAX);
        let options = StopContainerOptionsBuilder::default().t(secs).build();
        match self.docker.stop_container(&name, Some(options)).await {
            Ok(()) => {}
            Err(e) if matches!(status(&e), Some(404 | 304)) => {}
            Err(e) => return Err(Self::engine("stop container", &name)(e).into()),
        }
        self.remove(&name).await?;
        if let Some(instance) = instance_of(&existing) {
            let text = format!("{}.{} stopped", instance.process, instance.index);
            self.logs.append(&instance.app, LOG_SOURCE, text.as_bytes());
        }
        Ok(())
    }

    async fn list(&self, app: Option<&AppName>) -> Result<Vec<Instance>, RuntimeError> {
        let mut label_filters = vec![
            format!("{LABEL_OWNER}={}", self.config.owner),
            LABEL_PROCESS.to_owned(),
        ];
        if let Some(app) = app {
            label_filters.push(format!("{LABEL_APP}={app}"));
        }
        let filters = HashMap::from([("label".to_owned(), label_filters)]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let summaries = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(Self::engine("list containers", "of this daemon"))?;
        let inspections = futures_util::future::join_all(
            summaries
                .iter()
                .filter_map(|s| s.id.as_deref())
                .map(|cid| self.inspect(cid)),
        )
        .await;
        let now = chrono::Utc::now().timestamp();
        let mut instances = Vec::new();
        for inspected in inspections {
            // Gone between list and inspect: it no longer runs.
            let Some(c) = inspected? else { continue };
            let Some(instance) = instance_of(&c) else {
                continue;
            };
            // Adoption: a running container nobody follows yet.
            if let (Some(cid), true) = (c.id.as_deref(), instance.state != InstanceState::Stopped) {
                let source = format!("{}.{}", instance.process, instance.index);
                self.follow(cid, &instance.app, source, now);
            }
            instances.push(instance);
        }
        instances.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(instances)
    }

    async fn run_once(&self, spec: OneOffSpec, output: OutputSink) -> Result<i32, RuntimeError> {
        let (name, program, what, _remove) = self.create_one_off(&spec, None).await?;
        self.docker
            .start_container(&name, None)
            .await
            .map_err(Self::engine("start container", &name))?;

        // Following from the start: nothing printed before we attach is lost.
        let logs = self.docker.logs(
            &name,
            Some(
                LogsOptionsBuilder::default()
                    .follow(true)
                    .stdout(true)
                    .stderr(true)
                    .build(),
            ),
        );
        let pump = tokio::spawn(async move {
            let mut logs = std::pin::pin!(logs);
            let mut listening = true;
            while let Some(Ok(chunk)) = logs.next().await {
                let mut line = chunk.into_bytes().to_vec();
                if !line.ends_with(b"\n") {
                    line.push(b'\n');
                }
                if listening && output.send(line).await.is_err() {
                    listening = false;
                }
            }
        });

        let finished = self.wait_one_off(&name, spec.timeout).await;
        settle_one_off(pump, finished, &program, &what, spec.timeout).await
    }

    async fn run_attached(&self, spec: OneOffSpec, io: Attach) -> Result<i32, RuntimeError> {
        use tokio::io::AsyncWriteExt;

        let (name, program, what, _remove) = self.create_one_off(&spec, io.pty.as_ref()).await?;
        // Attach before starting, so nothing the command prints is lost.
        let options = AttachContainerOptionsBuilder::default()
            .stdin(true)
            .stdout(true)
            .stderr(true)
            .stream(true)
            .build();
        let attached = self
            .docker
            .attach_container(&name, Some(options))
            .await
            .map_err(Self::engine("attach to container", &name))?;
        self.docker
            .start_container(&name, None)
            .await
            .map_err(Self::engine("start container", &name))?;
        if let Some(pty) = &io.pty {
            let size = ResizeContainerTTYOptionsBuilder::default()
                .h(i32::from(pty.rows))
                .w(i32::from(pty.cols))
                .build();
            // A failed resize leaves the engine's default size: not fatal.
            let _ = self.docker.resize_container_tty(&name, size).await;
        }

        let Attach {
            mut stdin,
            output,
            mut resize,
            pty,
        } = io;
        // Follow the client's terminal size while the command runs.
        let resizer = pty.map(|_| {
            let (docker, name) = (self.docker.clone(), name.clone());
            tokio::spawn(async move {
                while resize.changed().await.is_ok() {
                    let (cols, rows) = *resize.borrow_and_update();
                    let size = ResizeContainerTTYOptionsBuilder::default()
                        .h(i32::from(rows))
                        .w(i32::from(cols))
                        .build();
                    let _ = docker.resize_container_tty(&name, size).await;
                }
            })
        });
        let mut input = attached.input;
        // Client → container, until the client's EOF; closing our side
        // closes the container's stdin (stdin_once).
        let feed = tokio::spawn(async move {
            while let Some(chunk) = stdin.recv().await {
                if input.write_all(&chunk).await.is_err() {
                    break;
                }
            }
            let _ = input.shutdown().await;
        });
        // Container → client, raw (a tty's output is a byte stream).
        let mut out = attached.output;
        let pump = tokio::spawn(async move {
            let mut listening = true;
            while let Some(Ok(chunk)) = out.next().await {
                if listening && output.send(chunk.into_bytes().to_vec()).await.is_err() {
                    listening = false;
                }
            }
        });

        let finished = self.wait_one_off(&name, spec.timeout).await;
        feed.abort();
        if let Some(r) = resizer {
            r.abort();
        }
        settle_one_off(pump, finished, &program, &what, spec.timeout).await
    }

    /// Removes the app's `cygni/APP:vN` tags that no kept release uses. An
    /// image a container still uses is refused by the engine, and kept.
    async fn retain_artifacts(&self, app: &AppName, keep: &[Artifact]) -> Result<(), RuntimeError> {
        let keep: Vec<&str> = keep
            .iter()
            .filter_map(|a| match a {
                Artifact::Image { reference } => Some(reference.as_str()),
                Artifact::Slug { .. } => None,
            })
            .collect();
        let repository = format!("cygni/{app}");
        let filters = HashMap::from([("reference".to_owned(), vec![repository.clone()])]);
        let images = self
            .docker
            .list_images(Some(
                ListImagesOptionsBuilder::default()
                    .filters(&filters)
                    .build(),
            ))
            .await
            .map_err(Self::engine("list images", &repository))?;
        let prefix = format!("{repository}:");
        for tag in images.iter().flat_map(|i| i.repo_tags.iter()) {
            if !tag.starts_with(&prefix) || keep.contains(&tag.as_str()) {
                continue;
            }
            let options = RemoveImageOptionsBuilder::default().build();
            match self.docker.remove_image(tag, Some(options), None).await {
                Ok(_) => tracing::info!(%app, image = %tag, "removed an old release's image"),
                Err(e) => {
                    tracing::warn!(%app, image = %tag, error = %e, "cannot remove an old image")
                }
            }
        }
        Ok(())
    }
}
/// The end of a one-off: let its output drain (bounded), then turn the
/// wait's outcome into the exit code or a timeout naming the command.
async fn settle_one_off(
    mut pump: JoinHandle<()>,
    finished: Result<Result<i32, RuntimeError>, tokio::time::error::Elapsed>,
    program: &str,
    what: &str,
    timeout: Duration,
) -> Result<i32, RuntimeError> {
    if tokio::time::timeout(ONE_OFF_DRAIN, &mut pump)
        .await
        .is_err()
    {
        pump.abort();
    }
    match finished {
        Ok(code) => code,
        Err(_) => Err(RuntimeError::Timeout {
            what: format!("`{program}` ({what})"),
            secs: timeout.as_secs_f64().ceil() as u64,
        }),
    }
}

/// Force-removes a one-off container when dropped (in a task: drop cannot
/// wait).
struct RemoveOnDrop {
    docker: Docker,
    name: String,
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let (docker, name) = (self.docker.clone(), std::mem::take(&mut self.name));
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let options = RemoveContainerOptionsBuilder::default().force(true).build();
                if let Err(e) = docker.remove_container(&name, Some(options)).await {
                    if status(&e) != Some(404) {
                        tracing::warn!(container = %name, error = %e, "cannot remove a one-off container");
                    }
                }
            });
        }
    }
}

/// Copies one container's output into the app's log, line by line, for as
/// long as the container exists: its log stream ends whenever it stops, so
/// after a crash (the engine restarts it) the follower picks up again from
/// the last line it stored. Each round waits at least a second.
async fn follow_logs(
    docker: Docker,
    container: String,
    app: AppName,
    source: String,
    logs: Arc<LogStore>,
    since: i64,
) {
    let mut since = since;
    // The engine's timestamp of the last stored line: lines at or before it
    // are repeats of an earlier round (`since` has whole seconds only).
    let mut last: Option<chrono::DateTime<chrono::FixedOffset>> = None;
    loop {
        let options = LogsOptionsBuilder::default()
            .follow(true)
            .stdout(true)
            .stderr(true)
            .timestamps(true)
            .since(i32::try_from(since).unwrap_or(0))
            .build();
        let mut stream = std::pin::pin!(docker.logs(&container, Some(options)));
        while let Some(Ok(chunk)) = stream.next().await {
            let bytes = chunk.into_bytes();
            for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                let (stamp, text) = split_timestamp(line);
                if let (Some(stamp), Some(last)) = (stamp, last) {
                    if stamp <= last {
                        continue;
                    }
                }
                if stamp.is_some() {
                    last = stamp;
                }
                logs.append(&app, &source, text);
            }
        }
        match docker.inspect_container(&container, None).await {
            Err(e) if status(&e) == Some(404) => return,
            _ => tokio::time::sleep(Duration::from_secs(1)).await,
        }
        if let Some(last) = last {
            since = last.timestamp();
        }
    }
}

/// `2024-05-01T10:00:00.123456789Z hello` → (the time, `hello`).
fn split_timestamp(line: &[u8]) -> (Option<chrono::DateTime<chrono::FixedOffset>>, &[u8]) {
    let Some(space) = line.iter().position(|b| *b == b' ') else {
        return (None, line);
    };
    let stamp = std::str::from_utf8(&line[..space])
        .ok()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok());
    match stamp {
        Some(stamp) => (Some(stamp), &line[space + 1..]),
        None => (None, line),
    }
}

/// A poisoned lock only means a thread panicked while holding it; the
/// table is plain data and stays usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_states() {
        use ContainerStateStatusEnum as S;
        let short = Duration::from_secs(1);
        assert_eq!(state_of(Some(S::RUNNING), 0, short), InstanceState::Running);
        assert_eq!(
            state_of(Some(S::RUNNING), 5, short),
            InstanceState::CrashLoop
        );
        assert_eq!(
            state_of(Some(S::RUNNING), 5, HEALTHY_AFTER),
            InstanceState::Running
        );
        assert_eq!(
            state_of(Some(S::RESTARTING), 1, short),
            InstanceState::Starting
        );
        assert_eq!(
            state_of(Some(S::RESTARTING), 7, short),
            InstanceState::CrashLoop
        );
        assert_eq!(
            state_of(Some(S::CREATED), 0, short),
            InstanceState::Starting
        );
        assert_eq!(state_of(Some(S::EXITED), 0, short), InstanceState::Stopped);
        assert_eq!(state_of(None, 0, short), InstanceState::Stopped);
    }

    #[test]
    fn log_timestamps() {
        let (stamp, text) = split_timestamp(b"2024-05-01T10:00:00.123456789Z hello there");
        assert_eq!(text, b"hello there");
        assert_eq!(stamp.unwrap().timestamp(), 1_714_557_600);
        let (stamp, text) = split_timestamp(b"no stamp here");
        assert!(stamp.is_none());
        assert_eq!(text, b"no stamp here");
    }

    #[test]
    fn image_users() {
        assert_eq!(numeric_user("10001:10001"), Some((10001, 10001)));
        assert_eq!(numeric_user("1000"), Some((1000, 1000)));
        assert_eq!(numeric_user("app"), None);
        assert_eq!(numeric_user(""), None);
        assert_eq!(numeric_user("0:0"), None);
    }

    #[test]
    fn names_and_artifacts() {
        let app = AppName::parse("shop").unwrap();
        let id = InstanceId::new(&app, 3, &ProcessType::web(), 1);
        assert_eq!(container_name(&id), "cygni-shop-v3-web-1");
        assert!(image_of(&Artifact::Slug { dir: "/x".into() }).is_err());
        assert_eq!(
            image_of(&Artifact::Image {
                reference: "cygni/shop:v3".into()
            })
            .unwrap(),
            "cygni/shop:v3"
        );
    }
}
