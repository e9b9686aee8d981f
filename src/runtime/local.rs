//! The local runtime: each instance is a supervised process on this host.
//!
//! ```text
//! start(spec) ──► spawn /bin/sh -c COMMAND in the slug dir, own process group
//!                   │  stdout+stderr ──► pump ──► LogStore ("web.1")
//!                   ▼
//!              supervisor task (one per instance, owns the process group)
//!                   │ exit ──► kill group, reap ──► back off 1s, 2s, 4s … 60s ──► respawn
//!                   │          (5 crashes in a row: CrashLoop, still retried;
//!                   │           30s up resets the count)
//!                   └ stop ──► SIGTERM -pgid … grace … SIGKILL -pgid, reap
//! ```
//!
//! What an instance gets: an environment built from nothing (PATH, HOME =
//! the slug dir, LANG, the release's config vars, `DYNO=web.1`, and `PORT`
//! for `web`), the slug dir as cwd, and, when the daemon is root, the
//! app's own uid/gid ([`InstanceSpec::run_as`], from `state::app_users`)
//! with no supplementary groups; a spec that names none runs as
//! [`LocalConfig::run_as`]. The slug is handed to the app's uid first
//! (0700, [`crate::build::hand_over`]: a no-op when it is the app's
//! already), so no other app's uid can read it. `web` gets
//! a free loopback port chosen at start, kept across restarts, and reported
//! as the endpoint `127.0.0.1:PORT`.
//!
//! What `list` reports: `Running` while a process is up; `Starting` while
//! waiting to restart it after a crash; `CrashLoop` from the 5th crash in a
//! row until a process stays up 30s (whether up or waiting); `Stopped`
//! while being stopped. `started_at` is when the current process started,
//! `restarts` counts every restart since `start`.
//!
//! The Procfile command is the app owner's own line: it runs through
//! `/bin/sh -c` as on Heroku and nothing is spliced into it. When the slug
//! has `.profile.d/*.sh` (the buildpack convention), a fixed wrapper script
//! sources them and then runs the command, passed as a separate argument.
//!
//! Daemon restarts: local instances do not outlive the daemon. On a clean
//! exit [`LocalRuntime::shutdown`] stops them gracefully; if the daemon dies
//! they get SIGKILL from the kernel (`PR_SET_PDEATHSIG` on each group
//! leader), and under systemd the service's cgroup is cleaned up too. The
//! reconcile loop starts them again from SQLite when the daemon is back.
//! Adopting still-running processes is not worth it here: their pipes
//! pointed at the old daemon, so their logs would be lost.
//!
//! Each process also runs in a cgroup (v2) of its own where the host has a
//! writable hierarchy ([`cgroup`]): stop then kills everything it started,
//! including what left its group (`setsid`, a double fork), and the next
//! start after a `kill -9` of the daemon sweeps what it left. Without one,
//! such an escapee outlives stop, as it would without cgroups anywhere;
//! the start says so in the log.

pub mod cgroup;
mod process;
pub mod records;
mod user;

pub use process::Exit;
pub use user::RunAs;

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use self::process::{Launch, Lines, ProcessGroup, Spawner};
use super::{
    Attach, Instance, InstanceId, InstanceSpec, InstanceState, OneOffSpec, OutputSink, Runtime,
    RuntimeError,
};
use crate::build::Artifact;
use crate::logs::LogStore;
use crate::names::{AppName, ProcessType};

/// Lines longer than this reach the log (or a one-off's output) in pieces.
const MAX_LINE: usize = 16 * 1024;

/// After an instance's process has exited and its group was killed, how
/// long its output may take to drain into the log. Only a process that left
/// the group can hold the pipe open longer.
const INSTANCE_DRAIN: Duration = Duration::from_secs(1);

/// The same for a one-off, whose reader may be waiting on a slow client.
const ONE_OFF_DRAIN: Duration = Duration::from_secs(5);

/// The log source of the runtime's own messages.
const LOG_SOURCE: &str = "cygni";

/// Sources every `.profile.d/*.sh` of the slug, then runs `$1` (the
/// Procfile command, passed as an argument, never spliced in) with a fresh
/// shell, as Heroku does.
const PROFILE_WRAPPER: &str = r#"for f in .profile.d/*.sh; do if [ -r "$f" ]; then . "./$f"; fi; done; unset f; exec /bin/sh -c "$1""#;

/// When a crashed instance is started again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    /// The delay after the first crash; each crash in a row doubles it.
    pub first: Duration,
    pub max: Duration,
    /// A process that stays up this long is healthy again: the next crash
    /// waits `first` again.
    pub reset_after: Duration,
    /// This many crashes in a row make the instance [`InstanceState::CrashLoop`].
    pub crash_loop_after: u32,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff {
            first: Duration::from_secs(1),
            max: Duration::from_secs(60),
            reset_after: Duration::from_secs(30),
            crash_loop_after: 5,
        }
    }
}

impl Backoff {
    /// The delay before restarting after the `crashes`-th crash in a row.
    /// Never below 10ms, so a zero in the config cannot become a fork loop.
    pub fn delay(&self, crashes: u32) -> Duration {
        let doublings = crashes.saturating_sub(1).min(31);
        self.first
            .saturating_mul(1 << doublings)
            .min(self.max)
            .max(Duration::from_millis(10))
    }
}

#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// The account a process runs as when its spec names no uid/gid of
    /// its own; None runs it as the daemon's user. The daemon passes
    /// [`RunAs::resolve_default`], and its specs always name the app's
    /// own id when it is root, so this is only a floor: never root.
    pub run_as: Option<RunAs>,
    /// How long [`LocalRuntime::shutdown`] and a timed-out one-off wait
    /// between SIGTERM and SIGKILL.
    pub stop_grace: Duration,
    pub backoff: Backoff,
    /// `PATH` for apps, unless the release sets its own.
    pub path: String,
    /// Where each instance's process group is recorded, so a daemon that
    /// was killed finds what it left behind ([`LocalRuntime::reap_orphans`]).
    /// None records nothing.
    pub records: Option<records::Records>,
    /// A cgroup per process, when the host allows it.
    pub cgroups: Option<Arc<cgroup::Cgroups>>,
}

impl Default for LocalConfig {
    fn default() -> LocalConfig {
        LocalConfig {
            run_as: None,
            stop_grace: Duration::from_secs(10),
            backoff: Backoff::default(),
            path: "/usr/local/bin:/usr/bin:/bin".to_owned(),
            records: None,
            cgroups: None,
        }
    }
}

/// Runs instances as supervised processes on this host. See the module docs.
pub struct LocalRuntime {
    config: LocalConfig,
    logs: Arc<LogStore>,
    instances: Mutex<HashMap<InstanceId, Arc<Entry>>>,
    /// Serializes `start`, so two starts of one id cannot both spawn.
    starting: tokio::sync::Mutex<()>,
    /// Started on first use, and ended when nothing runs (see `process`).
    spawner: Mutex<Weak<Spawner>>,
    /// Crashes, as they happen: the converger takes the instance out of
    /// the routes at once.
    events: tokio::sync::broadcast::Sender<super::InstanceEvent>,
}

/// The runtime's handle on one supervised instance.
struct Entry {
    shared: Arc<Shared>,
    /// Some(grace) asks the supervisor to stop. Dropping the sender (the
    /// runtime is dropped) stops it with the default grace.
    stop: watch::Sender<Option<Duration>>,
    /// Becomes true when the supervisor has stopped and reaped everything.
    done: watch::Receiver<bool>,
}

/// What the supervisor reports and `list` reads.
struct Shared {
    id: InstanceId,
    app: AppName,
    release: u32,
    process: ProcessType,
    index: u32,
    endpoint: Option<SocketAddr>,
    status: Mutex<Status>,
}

#[derive(Debug, Clone)]
struct Status {
    state: InstanceState,
    /// When the current (or last) process started.
    started_at: SystemTime,
    restarts: u32,
    pid: Option<u32>,
}

impl LocalRuntime {
    pub fn new(config: LocalConfig, logs: Arc<LogStore>) -> LocalRuntime {
        LocalRuntime {
            config,
            logs,
            instances: Mutex::new(HashMap::new()),
            starting: tokio::sync::Mutex::new(()),
            spawner: Mutex::new(Weak::new()),
            events: tokio::sync::broadcast::channel(256).0,
        }
    }

    /// Stops every instance (SIGTERM, then SIGKILL after the configured
    /// grace), all at once; returns when all are gone. For daemon exit.
    pub async fn shutdown(&self) {
        let entries: Vec<Arc<Entry>> = lock(&self.instances).values().cloned().collect();
        for entry in &entries {
            entry.stop.send_replace(Some(self.config.stop_grace));
        }
        for entry in &entries {
            entry.wait_done().await;
            self.forget(entry);
        }
    }

    /// The pid of the instance's current process (its process group id),
    /// for `ps` and diagnostics; None between restarts or when unknown.
    /// What a one-off runs: its argv as given (no shell added), in the
    /// slug, with the release's env. Also names it for errors.
    async fn one_off_launch(&self, spec: &OneOffSpec) -> Result<(Launch, String), RuntimeError> {
        let slug = slug_dir(&spec.artifact)?;
        let what = format!("one-off command of {} v{}", spec.app, spec.release);
        hand_over_slug(slug, spec.run_as, &what).await?;
        let run_as = self.run_as(spec.run_as);
        let Some((program, args)) = spec.argv.split_first() else {
            return Err(RuntimeError::Spawn {
                id: what,
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty command"),
            });
        };
        let launch = Launch {
            program: program.into(),
            args: args.iter().map(OsString::from).collect(),
            cwd: slug.to_owned(),
            env: self
                .base_env(slug, &spec.env, &spec.mounts, run_as.as_ref())?
                .into_iter()
                .collect(),
            run_as,
            cgroups: self.config.cgroups.clone(),
            name: format!("{}.run.v{}", spec.app, spec.release),
        };
        Ok((launch, what))
    }

    /// Kill what a daemon killed with `kill -9` left running (its
    /// instances' process groups, as recorded), before anything starts.
    /// Returns how many processes were killed.
    pub fn reap_orphans(&self) -> usize {
        let grouped = self
            .config
            .records
            .as_ref()
            .map_or(0, records::Records::reap);
        // What left its group is still in its cgroup.
        grouped + self.config.cgroups.as_ref().map_or(0, |c| c.sweep())
    }

    pub fn pid(&self, id: &InstanceId) -> Option<u32> {
        let entry = self.entry(id)?;
        let pid = lock(&entry.shared.status).pid;
        pid
    }

    fn spawner(&self) -> std::io::Result<Arc<Spawner>> {
        let mut slot = lock(&self.spawner);
        if let Some(spawner) = slot.upgrade() {
            return Ok(spawner);
        }
        let spawner = Arc::new(Spawner::new()?);
        *slot = Arc::downgrade(&spawner);
        Ok(spawner)
    }

    fn entry(&self, id: &InstanceId) -> Option<Arc<Entry>> {
        lock(&self.instances).get(id).cloned()
    }

    /// Removes `entry` from the table unless a newer one took its place.
    fn forget(&self, entry: &Arc<Entry>) {
        let mut instances = lock(&self.instances);
        if instances
            .get(&entry.shared.id)
            .is_some_and(|current| Arc::ptr_eq(current, entry))
        {
            instances.remove(&entry.shared.id);
        }
    }

    /// The environment every process of a release starts from. Storage
    /// cannot be mounted into a plain process: each mount's directory is
    /// made ready (given to the app's user) and named by
    /// `CYGNI_STORAGE_<NAME>` instead.
    fn base_env(
        &self,
        slug: &Path,
        release_env: &BTreeMap<String, String>,
        mounts: &[super::Mount],
        run_as: Option<&RunAs>,
    ) -> Result<BTreeMap<OsString, OsString>, RuntimeError> {
        let mut env: BTreeMap<OsString, OsString> = BTreeMap::new();
        env.insert("PATH".into(), self.config.path.clone().into());
        env.insert("HOME".into(), slug.as_os_str().to_owned());
        env.insert("LANG".into(), "C.UTF-8".into());
        // The release's config vars may override the base (PATH, LANG).
        env.extend(release_env.iter().map(|(k, v)| (k.into(), v.into())));
        let owner = run_as.map(|r| (r.uid, r.gid));
        for mount in mounts {
            super::prepare_mount(mount, owner)?;
            env.insert(
                mount.name.env_var().into(),
                mount.host_dir().as_os_str().to_owned(),
            );
        }
        Ok(env)
    }

    /// Who a process runs as: the app's own uid/gid when its spec names
    /// one, else the configured account.
    fn run_as(&self, own: Option<(u32, u32)>) -> Option<RunAs> {
        match own {
            Some((uid, gid)) => Some(RunAs {
                uid,
                gid,
                home: None,
            }),
            None => self.config.run_as.clone(),
        }
    }
}

/// Gives the slug to the app's own uid/gid (0700) before it runs: a slug
/// built before per-app users, or by a daemon that was not root, is
/// someone else's. Nothing to do when it is the app's already.
async fn hand_over_slug(
    slug: &Path,
    own: Option<(u32, u32)>,
    what: &str,
) -> Result<(), RuntimeError> {
    let Some((uid, gid)) = own else {
        return Ok(());
    };
    let dir = slug.to_owned();
    tokio::task::spawn_blocking(move || crate::build::hand_over(&dir, uid, gid))
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))
        .and_then(|r| r.map_err(|e| std::io::Error::other(e.to_string())))
        .map_err(|source| RuntimeError::Spawn {
            id: what.to_owned(),
            source,
        })
}

fn slug_dir(artifact: &Artifact) -> Result<&Path, RuntimeError> {
    match artifact {
        Artifact::Slug { dir } => Ok(dir),
        Artifact::Image { reference } => Err(RuntimeError::Unsupported {
            runtime: "local",
            what: format!("container image {reference} (it needs the docker or kube runtime)"),
        }),
    }
}

/// A loopback port for a new `web` instance.
///
/// Ports come from below the kernel's ephemeral range (where outgoing
/// connections take their local ports), so a client socket cannot grab
/// the port between this check and the app's own bind: asking the kernel
/// for port 0 handed out exactly the ports clients use, and a busy host
/// lost that race. Ports of instances this runtime runs are skipped.
fn free_port(taken: &std::collections::HashSet<u16>) -> std::io::Result<SocketAddr> {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000u16, ephemeral_low.saturating_sub(1));
    if high > low + 1000 {
        let span = u32::from(high - low);
        let start = rand::random::<u32>() % span;
        for i in 0..span.min(2000) {
            let port = low + u16::try_from((start + i * 7919) % span).unwrap_or(0);
            if taken.contains(&port) {
                continue;
            }
            if let Ok(l) = TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
                return l.local_addr();
            }
        }
    }
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    listener.local_addr()
}

#[async_trait::async_trait]
impl Runtime for LocalRuntime {
    fn name(&self) -> &'static str {
        "local"
    }

    fn artifact_kind(&self) -> super::ArtifactKind {
        super::ArtifactKind::Slug
    }

    fn events(&self) -> Option<tokio::sync::broadcast::Receiver<super::InstanceEvent>> {
        Some(self.events.subscribe())
    }

    async fn start(&self, spec: InstanceSpec) -> Result<Instance, RuntimeError> {
        let id = spec.id();
        let _one_at_a_time = self.starting.lock().await;
        if let Some(entry) = self.entry(&id) {
            if !entry.stopping() {
                return Ok(entry.shared.instance());
            }
            // Being stopped: let that finish, then start afresh.
            entry.wait_done().await;
            self.forget(&entry);
        }

        let slug = slug_dir(&spec.artifact)?;
        let endpoint = if spec.process.is_web() {
            let taken: std::collections::HashSet<u16> = lock(&self.instances)
                .values()
                .filter_map(|e| e.shared.endpoint.map(|a| a.port()))
                .collect();
            Some(free_port(&taken).map_err(|source| RuntimeError::Port {
                id: id.to_string(),
                source,
            })?)
        } else {
            None
        };
        let source = format!("{}.{}", spec.process, spec.index);

        hand_over_slug(slug, spec.run_as, &id.to_string()).await?;
        let run_as = self.run_as(spec.run_as);
        let mut env = self.base_env(slug, &spec.env, &spec.mounts, run_as.as_ref())?;
        // The runtime's own variables win over the release's.
        env.insert("DYNO".into(), source.clone().into());
        if let Some(endpoint) = endpoint {
            env.insert("PORT".into(), endpoint.port().to_string().into());
        }
        let args: Vec<OsString> = if slug.join(".profile.d").is_dir() {
            vec![
                "-c".into(),
                PROFILE_WRAPPER.into(),
                "cygni-profile".into(),
                spec.command.clone().into(),
            ]
        } else {
            vec!["-c".into(), spec.command.clone().into()]
        };
        let launch = Launch {
            program: "/bin/sh".into(),
            args,
            cwd: slug.to_owned(),
            env: env.into_iter().collect(),
            run_as,
            cgroups: self.config.cgroups.clone(),
            name: id.to_string(),
        };

        let spawn_error = |source| RuntimeError::Spawn {
            id: id.to_string(),
            source,
        };
        let spawner = self.spawner().map_err(spawn_error)?;
        let (group, output) = process::spawn(&spawner, &launch)
            .await
            .map_err(spawn_error)?;
        if let Some(r) = &self.config.records {
            r.write(&id, group.pid());
        }

        let shared = Arc::new(Shared {
            id: id.clone(),
            app: spec.app.clone(),
            release: spec.release,
            process: spec.process.clone(),
            index: spec.index,
            endpoint,
            status: Mutex::new(Status {
                state: InstanceState::Running,
                started_at: SystemTime::now(),
                restarts: 0,
                pid: Some(group.pid()),
            }),
        });
        let started = match endpoint {
            Some(endpoint) => format!(
                "{source} started from v{} (pid {}, PORT={})",
                spec.release,
                group.pid(),
                endpoint.port()
            ),
            None => format!(
                "{source} started from v{} (pid {})",
                spec.release,
                group.pid()
            ),
        };
        self.logs.append(&spec.app, LOG_SOURCE, started.as_bytes());

        let (stop, stop_rx) = watch::channel(None);
        let (done_tx, done) = watch::channel(false);
        let supervisor = Supervisor {
            shared: shared.clone(),
            launch,
            source,
            logs: self.logs.clone(),
            spawner,
            backoff: self.config.backoff.clone(),
            default_grace: self.config.stop_grace,
            stop: stop_rx,
            done: done_tx,
            events: self.events.clone(),
            records: self.config.records.clone(),
        };
        let pump = supervisor.pump(output);
        let span = tracing::info_span!("instance", %id);
        tokio::spawn(tracing::Instrument::instrument(
            supervisor.run(group, pump),
            span,
        ));

        let instance = shared.instance();
        lock(&self.instances).insert(id, Arc::new(Entry { shared, stop, done }));
        Ok(instance)
    }

    async fn stop(&self, id: &InstanceId, grace: Duration) -> Result<(), RuntimeError> {
        let Some(entry) = self.entry(id) else {
            return Ok(());
        };
        // A stop already under way keeps its grace; this call waits for it.
        entry.stop.send_if_modified(|stop| {
            if stop.is_some() {
                return false;
            }
            *stop = Some(grace);
            true
        });
        entry.wait_done().await;
        self.forget(&entry);
        Ok(())
    }

    async fn list(&self, app: Option<&AppName>) -> Result<Vec<Instance>, RuntimeError> {
        let entries: Vec<Arc<Entry>> = lock(&self.instances).values().cloned().collect();
        let mut instances: Vec<Instance> = entries
            .iter()
            .filter(|entry| app.is_none_or(|app| entry.shared.app == *app) && !entry.finished())
            .map(|entry| entry.shared.instance())
            .collect();
        instances.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(instances)
    }

    async fn run_attached(&self, spec: OneOffSpec, io: Attach) -> Result<i32, RuntimeError> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let (mut launch, what) = self.one_off_launch(&spec).await?;
        let spawn_error = |source| RuntimeError::Spawn {
            id: what.clone(),
            source,
        };
        let terminal = match &io.pty {
            Some(p) => {
                launch.env.push(("TERM".into(), p.term.clone().into()));
                process::Terminal::Pty {
                    cols: p.cols,
                    rows: p.rows,
                }
            }
            None => process::Terminal::Pipes,
        };
        let program = launch.program.to_string_lossy().into_owned();
        let spawner = self.spawner().map_err(spawn_error)?;
        let (mut group, attached) = process::spawn_attached(&spawner, &launch, terminal)
            .await
            .map_err(spawn_error)?;
        let process::Attached {
            mut output,
            mut input,
            pty,
        } = attached;

        let Attach {
            mut stdin,
            output: sink,
            mut resize,
            ..
        } = io;
        // Follow the client's terminal size while the command runs.
        let resizer = pty.map(|master| {
            tokio::spawn(async move {
                while resize.changed().await.is_ok() {
                    let (cols, rows) = *resize.borrow_and_update();
                    if let Err(e) = process::resize_pty(&master, cols, rows) {
                        tracing::debug!(error = %e, "pty resize failed");
                    }
                }
            })
        });
        // Client → command, until the client's EOF (then the command's
        // stdin closes) or the command stops reading.
        let feed = tokio::spawn(async move {
            while let Some(chunk) = stdin.recv().await {
                if input.write_all(&chunk).await.is_err() {
                    break;
                }
            }
            let _ = input.shutdown().await;
        });
        // Command → client, raw: a pty's output is a byte stream, not lines.
        let pump = tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            let mut listening = true;
            loop {
                match output.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if listening && sink.send(buf[..n].to_vec()).await.is_err() {
                            listening = false;
                        }
                    }
                }
            }
        });

        let finished = tokio::time::timeout(spec.timeout, group.exited()).await;
        let exit = match finished {
            Ok(()) => group.reap().await,
            Err(_) => group.terminate(self.config.stop_grace).await,
        };
        feed.abort();
        if let Some(r) = resizer {
            r.abort();
        }
        drain(pump, ONE_OFF_DRAIN).await;
        match finished {
            Ok(()) => Ok(exit.code()),
            Err(_) => Err(RuntimeError::Timeout {
                what: format!("`{}` ({what})", program),
                secs: spec.timeout.as_secs_f64().ceil() as u64,
            }),
        }
    }

    async fn run_once(&self, spec: OneOffSpec, output: OutputSink) -> Result<i32, RuntimeError> {
        let (launch, what) = self.one_off_launch(&spec).await?;
        let spawn_error = |source| RuntimeError::Spawn {
            id: what.clone(),
            source,
        };
        let program = launch.program.to_string_lossy().into_owned();
        let spawner = self.spawner().map_err(spawn_error)?;
        let (mut group, out) = process::spawn(&spawner, &launch)
            .await
            .map_err(spawn_error)?;

        // Each line reaches the sink with its `\n`, so the sink can write
        // the bytes out as they are.
        let pump = tokio::spawn(async move {
            let mut lines = Lines::new(out, MAX_LINE);
            let mut listening = true;
            while let Some(line) = lines.next_line().await {
                // A gone listener must not block the command: keep reading
                // (so it never stalls on a full pipe) and drop the output.
                if listening && output.send(line.to_vec()).await.is_err() {
                    listening = false;
                }
            }
        });

        // Dropping this future (the caller gave up) drops `group`, which
        // kills the command: nothing outlives the request that started it.
        let finished = tokio::time::timeout(spec.timeout, group.exited()).await;
        let exit = match finished {
            Ok(()) => group.reap().await,
            Err(_) => group.terminate(self.config.stop_grace).await,
        };
        drain(pump, ONE_OFF_DRAIN).await;
        match finished {
            Ok(()) => Ok(exit.code()),
            Err(_) => Err(RuntimeError::Timeout {
                what: format!("`{}` ({what})", program),
                secs: spec.timeout.as_secs_f64().ceil() as u64,
            }),
        }
    }
}

impl Entry {
    fn stopping(&self) -> bool {
        self.stop.borrow().is_some() || self.finished()
    }

    /// The supervisor is gone (done, or its task was dropped).
    fn finished(&self) -> bool {
        *self.done.borrow() || self.done.has_changed().is_err()
    }

    async fn wait_done(&self) {
        // Err: the supervisor task was dropped, which is done too.
        let _ = self.done.clone().wait_for(|done| *done).await;
    }
}

impl Shared {
    fn instance(&self) -> Instance {
        let status = lock(&self.status).clone();
        Instance {
            id: self.id.clone(),
            app: self.app.clone(),
            release: self.release,
            process: self.process.clone(),
            index: self.index,
            endpoint: self.endpoint,
            state: status.state,
            started_at: status.started_at,
            restarts: status.restarts,
        }
    }

    fn update(&self, f: impl FnOnce(&mut Status)) {
        f(&mut lock(&self.status));
    }
}

/// The task that owns one instance's process group: restarts it when it
/// exits, stops it when asked.
struct Supervisor {
    shared: Arc<Shared>,
    launch: Launch,
    /// `web.1`: the log source of the instance's output.
    source: String,
    logs: Arc<LogStore>,
    spawner: Arc<Spawner>,
    backoff: Backoff,
    default_grace: Duration,
    stop: watch::Receiver<Option<Duration>>,
    done: watch::Sender<bool>,
    events: tokio::sync::broadcast::Sender<super::InstanceEvent>,
    records: Option<records::Records>,
}

impl Supervisor {
    async fn run(mut self, mut group: ProcessGroup, mut pump: JoinHandle<()>) {
        // Crashes in a row; reset once a process stays up `reset_after`.
        let mut crashes = 0u32;
        loop {
            let healthy_at = Instant::now() + self.backoff.reset_after;
            let mut healthy = false;
            let stop = loop {
                tokio::select! {
                    () = group.exited() => break None,
                    grace = stop_requested(&mut self.stop, self.default_grace) => break Some(grace),
                    () = tokio::time::sleep_until(healthy_at), if !healthy => {
                        healthy = true;
                        crashes = 0;
                        self.shared.update(|s| s.state = InstanceState::Running);
                    }
                }
            };
            if let Some(grace) = stop {
                self.shared.update(|s| s.state = InstanceState::Stopped);
                let exit = group.terminate(grace).await;
                drain(pump, INSTANCE_DRAIN).await;
                tracing::debug!(%exit, "instance stopped");
                self.log(&format!("{} stopped", self.source));
                break;
            }

            // Exited on its own: out of the routes now, not at the next
            // reconcile. (No receiver is fine.)
            let _ = self
                .events
                .send(super::InstanceEvent::Exited(self.shared.id.clone()));
            let exit = group.reap().await;
            drain(pump, INSTANCE_DRAIN).await;
            let mut why = exit.to_string();
            // Back off and respawn; a failed spawn counts as one more crash.
            let respawned = loop {
                crashes = crashes.saturating_add(1);
                let delay = self.backoff.delay(crashes);
                let looping = crashes >= self.backoff.crash_loop_after;
                let source = &self.source;
                let delay_text = human(delay);
                if looping {
                    self.log(&format!(
                        "{source} is crash looping: {why}, restarting in {delay_text}"
                    ));
                } else {
                    self.log(&format!("{source} {why}, restarting in {delay_text}"));
                }
                self.shared.update(|s| {
                    s.pid = None;
                    s.state = if looping {
                        InstanceState::CrashLoop
                    } else {
                        InstanceState::Starting
                    };
                });
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    _ = stop_requested(&mut self.stop, self.default_grace) => break None,
                }
                match process::spawn(&self.spawner, &self.launch).await {
                    Ok((new_group, output)) => {
                        let pid = new_group.pid();
                        if let Some(r) = &self.records {
                            r.write(&self.shared.id, pid);
                        }
                        self.shared.update(|s| {
                            s.pid = Some(pid);
                            s.restarts = s.restarts.saturating_add(1);
                            s.started_at = SystemTime::now();
                            s.state = if looping {
                                InstanceState::CrashLoop
                            } else {
                                InstanceState::Running
                            };
                        });
                        break Some((new_group, self.pump(output)));
                    }
                    Err(error) => why = format!("could not start: {error}"),
                }
            };
            match respawned {
                Some((new_group, new_pump)) => (group, pump) = (new_group, new_pump),
                None => {
                    self.shared.update(|s| s.state = InstanceState::Stopped);
                    self.log(&format!("{} stopped", self.source));
                    break;
                }
            }
        }
        self.shared.update(|s| {
            s.state = InstanceState::Stopped;
            s.pid = None;
        });
        if let Some(r) = &self.records {
            r.remove(&self.shared.id);
        }
        self.done.send_replace(true);
    }

    /// Copies the process's output, line by line, into the app's log.
    fn pump(&self, output: tokio::net::unix::pipe::Receiver) -> JoinHandle<()> {
        let logs = self.logs.clone();
        let app = self.shared.app.clone();
        let source = self.source.clone();
        tokio::spawn(async move {
            let mut lines = Lines::new(output, MAX_LINE);
            while let Some(line) = lines.next_line().await {
                logs.append(&app, &source, line);
            }
        })
    }

    fn log(&self, text: &str) {
        self.logs
            .append(&self.shared.app, LOG_SOURCE, text.as_bytes());
    }
}

/// Resolves with the grace period once a stop is asked for; with the
/// default grace if the runtime itself was dropped. Cancel-safe.
async fn stop_requested(
    stop: &mut watch::Receiver<Option<Duration>>,
    default: Duration,
) -> Duration {
    loop {
        if let Some(grace) = *stop.borrow_and_update() {
            return grace;
        }
        if stop.changed().await.is_err() {
            return default;
        }
    }
}

/// Waits for an output pump to reach the end of its pipe, but not forever:
/// a process that left the group may hold the pipe open.
async fn drain(mut pump: JoinHandle<()>, limit: Duration) {
    if tokio::time::timeout(limit, &mut pump).await.is_err() {
        pump.abort();
    }
}

/// `32s`, `1.5s`, `250ms`: delays as people read them.
fn human(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// A poisoned lock only means a thread panicked while holding it; the
/// table and status are plain data and stay usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let b = Backoff::default();
        let delays: Vec<u64> = (1..=8).map(|n| b.delay(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(60));
        let zero = Backoff {
            first: Duration::ZERO,
            ..Backoff::default()
        };
        assert_eq!(zero.delay(1), Duration::from_millis(10));
    }

    #[test]
    fn delays_read_like_people_write_them() {
        assert_eq!(human(Duration::from_secs(32)), "32s");
        assert_eq!(human(Duration::from_millis(1500)), "1.5s");
        assert_eq!(human(Duration::from_millis(250)), "250ms");
    }

    #[test]
    fn images_are_refused() {
        let err = slug_dir(&Artifact::Image {
            reference: "cygni/shop:v3".into(),
        })
        .unwrap_err();
        assert!(matches!(
            err,
            RuntimeError::Unsupported {
                runtime: "local",
                ..
            }
        ));
    }
}
