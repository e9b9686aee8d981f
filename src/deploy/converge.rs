//! The converger: the one executor of every change of what runs.
//!
//! ```text
//! push · config release · rollback · scale · restart · stop/start · timer · start-up
//!                  │ (under the app's lock)
//!                  ▼
//!  desired (SQLite or the candidate release) ─┐
//!  runtime.list(app)                          ├─► plan::plan ─► Converger::run ─► runtime
//!  admitted set (this module)                 ─┘                        │
//!                                                                       ▼
//!                                       routes snapshot ◄── publish_routes (admitted only)
//! ```
//!
//! It owns the admitted set: the instances that passed their release's
//! health check, and the only source of the proxy's endpoints. An instance
//! enters it after a check, leaves it before it is stopped, and leaves it
//! at once when the runtime reports that its process exited. The set lives
//! in memory: a restarted daemon rebuilds it by checking what it adopts.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::future::join_all;

use super::health;
use super::plan::{self, Admission, Desired, DesiredRelease, Intent, Plan, Step};
use super::Progress;
use crate::logs::LogStore;
use crate::names::AppName;
use crate::proxy::{AppRoute, RouteTable, Routes};
use crate::runtime::{
    HealthCheck, Instance, InstanceEvent, InstanceId, InstanceState, Mount, MountSource,
    ProcessSpec, Runtime, RuntimeError,
};
use crate::state::{self, formation, releases, releases::Release, Db};

/// The longest a drain waits for requests (and WebSockets, long polls)
/// already on their way to retired instances before they are stopped. A
/// drain ends as soon as nothing is in flight.
pub const DRAIN: Duration = Duration::from_secs(30);
/// SIGTERM → SIGKILL grace for instances being stopped.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ConvergeError {
    #[error(transparent)]
    State(#[from] state::StateError),
    #[error("{what}: {source}")]
    Runtime {
        what: String,
        #[source]
        source: RuntimeError,
    },
    /// A new instance did not pass its check; its last output was shown.
    #[error("{instance} {reason}")]
    Check { instance: String, reason: String },
}

impl ConvergeError {
    /// The deploy stage this failure belongs to, for the pusher.
    pub fn stage(&self) -> super::Stage {
        match self {
            ConvergeError::State(_) => super::Stage::Switch,
            ConvergeError::Runtime { .. } => super::Stage::Start,
            ConvergeError::Check { .. } => super::Stage::Check,
        }
    }
}

/// The part of a plan left after the desired release serves: retiring,
/// draining and stopping what it replaced.
#[must_use = "the tail stops the old instances; run it"]
pub struct Tail {
    app: AppName,
    steps: Vec<Step>,
    /// Endpoints the head retired: the tail's drain waits for them.
    retired: Vec<std::net::SocketAddr>,
}

impl Tail {
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }
}

/// `DATA/storage/APP/NAME`: where Cygni keeps an app's named storage.
pub fn storage_dir(
    root: &std::path::Path,
    app: &AppName,
    name: &crate::names::StorageName,
) -> std::path::PathBuf {
    root.join(app.as_str()).join(name.as_str())
}

pub struct Converger {
    db: Db,
    runtime: Arc<dyn Runtime>,
    routes: Arc<RouteTable>,
    logs: Arc<LogStore>,
    domain: String,
    /// The daemon's default boot timeout, for releases recorded before
    /// checks were stored.
    boot_timeout: Duration,
    admitted: Mutex<HashMap<AppName, BTreeMap<InstanceId, Admission>>>,
    /// `DATA/storage`: Cygni's own storage directories, `APP/NAME` below.
    storage_root: std::path::PathBuf,
    /// Each app runs as its own uid/gid (the daemon is root); else as the
    /// daemon's user.
    app_users: bool,
}

impl Converger {
    pub fn new(
        db: Db,
        runtime: Arc<dyn Runtime>,
        routes: Arc<RouteTable>,
        logs: Arc<LogStore>,
        domain: String,
        boot_timeout: Duration,
    ) -> Converger {
        Converger {
            db,
            runtime,
            routes,
            logs,
            domain,
            boot_timeout,
            admitted: Mutex::default(),
            storage_root: std::path::PathBuf::from("storage"),
            app_users: false,
        }
    }

    /// Run each app as its own uid/gid ([`state::app_users`]): for a root
    /// daemon.
    pub fn with_app_users(mut self, on: bool) -> Converger {
        self.app_users = on;
        self
    }

    /// The uid and gid `app`'s builds and processes run as: its own, given
    /// now if it predates them; None when apps run as the daemon's user.
    pub async fn app_user(&self, app: &AppName) -> Result<Option<(u32, u32)>, ConvergeError> {
        if !self.app_users {
            return Ok(None);
        }
        let a = app.clone();
        let uid = self
            .db
            .call(move |c| state::app_users::ensure(c, &a))
            .await?;
        Ok(Some((uid, uid)))
    }

    /// Where Cygni's own storage directories live (`DATA/storage`).
    pub fn with_storage_root(mut self, root: std::path::PathBuf) -> Converger {
        self.storage_root = root;
        self
    }

    /// The runtime's view of an app's stored mounts.
    pub fn mounts(&self, app: &AppName, stored: Vec<state::storage::StoredMount>) -> Vec<Mount> {
        stored
            .into_iter()
            .map(|m| {
                let source = match m.host_path {
                    Some(path) => MountSource::Host { path },
                    None => MountSource::Managed {
                        dir: storage_dir(&self.storage_root, app, &m.name),
                    },
                };
                Mount {
                    name: m.name,
                    target: m.path,
                    source,
                }
            })
            .collect()
    }

    /// An app's mounts as SQLite has them now.
    pub async fn current_mounts(&self, app: &AppName) -> Result<Vec<Mount>, ConvergeError> {
        let a = app.clone();
        let stored = self.db.call(move |c| state::storage::list(c, &a)).await?;
        Ok(self.mounts(app, stored))
    }

    fn admitted(&self) -> MutexGuard<'_, HashMap<AppName, BTreeMap<InstanceId, Admission>>> {
        self.admitted.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The instances of `app` in the routes now.
    pub fn admitted_for(&self, app: &AppName) -> Vec<Admission> {
        self.admitted()
            .get(app)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// A release's check, or the TCP check for releases that predate them.
    pub fn check_of(&self, release: &Release) -> HealthCheck {
        release
            .check
            .clone()
            .unwrap_or_else(|| HealthCheck::tcp(self.boot_timeout))
    }

    /// What should run for `release`, with `formation` (the stored scale).
    pub fn desired_release(
        &self,
        release: &Release,
        stored: &BTreeMap<crate::names::ProcessType, u32>,
        mounts: &[Mount],
        run_as: Option<(u32, u32)>,
    ) -> Option<DesiredRelease> {
        let artifact = release.artifact.clone()?;
        let env = Arc::new(release.env.clone());
        let check = self.check_of(release);
        let processes = formation::desired(stored, &release.processes)
            .into_iter()
            .map(|(process, count)| {
                let spec = ProcessSpec {
                    app: release.app.clone(),
                    release: release.version,
                    command: release.processes[&process].clone(),
                    process: process.clone(),
                    env: env.clone(),
                    artifact: artifact.clone(),
                    check: check.clone(),
                    limits: release.limits,
                    mounts: mounts.to_vec(),
                    run_as,
                };
                (process, (spec, count))
            })
            .collect();
        Some(DesiredRelease {
            version: release.version,
            processes,
        })
    }

    /// What SQLite says should run for `app`: its live release, formation
    /// and stopped switch.
    pub async fn desired(&self, app: &AppName) -> Result<Desired, ConvergeError> {
        let (a, app_users) = (app.clone(), self.app_users);
        let (record, live, stored, storage, uid) = self
            .db
            .call(move |c| {
                let record = state::apps::get(c, &a)?;
                let (storage, uid) = match record {
                    Some(_) => (
                        state::storage::list(c, &a)?,
                        app_users
                            .then(|| state::app_users::ensure(c, &a))
                            .transpose()?,
                    ),
                    None => (Vec::new(), None),
                };
                Ok((
                    record,
                    releases::live(c, &a)?,
                    formation::get(c, &a)?,
                    storage,
                    uid,
                ))
            })
            .await?;
        let Some(record) = record else {
            return Ok(Desired::default());
        };
        let mounts = self.mounts(app, storage);
        let run_as = uid.map(|u| (u, u));
        Ok(Desired {
            release: live.and_then(|r| self.desired_release(&r, &stored, &mounts, run_as)),
            stopped: record.stopped,
        })
    }

    /// Plan `app` from `desired` and run it up to where the desired release
    /// serves. `commit`, when given, runs just before the routes switch to
    /// it (a deploy marks its release live there); if it fails, what this
    /// plan started is stopped and nothing switches. Returns the tail, which
    /// the caller runs with [`Converger::finish`], now or in the background,
    /// still under the app's lock.
    pub async fn converge(
        &self,
        app: &AppName,
        intent: &Intent,
        desired: &Desired,
        commit: Option<Commit<'_>>,
        progress: &mut Progress,
    ) -> Result<Tail, ConvergeError> {
        let observed = self.list(app).await?;
        let admitted = self.admitted_for(app);
        let plan = plan::plan(
            self.runtime.readiness(),
            intent,
            desired,
            &observed,
            &admitted,
        );
        if !plan.is_empty() {
            tracing::debug!(%app, steps = plan.steps.len(), "converging");
        }
        self.run(app, desired, plan, observed, commit, progress)
            .await
    }

    async fn list(&self, app: &AppName) -> Result<Vec<Instance>, ConvergeError> {
        self.runtime
            .list(Some(app))
            .await
            .map_err(|source| ConvergeError::Runtime {
                what: "listing instances".into(),
                source,
            })
    }

    async fn run(
        &self,
        app: &AppName,
        desired: &Desired,
        plan: Plan,
        observed: Vec<Instance>,
        commit: Option<Commit<'_>>,
        progress: &mut Progress,
    ) -> Result<Tail, ConvergeError> {
        let live_at = plan.live_at();
        // A deploy's switch is the last step that admits.
        let commit_at = plan
            .steps
            .iter()
            .rposition(|s| match s {
                Step::Route { admit, .. } => !admit.is_empty(),
                Step::AdmitReady { .. } => true,
                _ => false,
            })
            .unwrap_or(live_at);
        let mut steps = plan.steps;
        let tail = steps.split_off(live_at);
        let mut run = Run {
            known: observed.into_iter().map(|i| (i.id.clone(), i)).collect(),
            started: Vec::new(),
            passed: Vec::new(),
            retired: Vec::new(),
        };
        let mut commit = commit;
        let mut result = Ok(());
        let mut steps = steps.into_iter().enumerate().peekable();
        while let Some((i, step)) = steps.next() {
            if i == commit_at {
                if let Some(c) = commit.take() {
                    if let Err(e) = c.await {
                        result = Err(e);
                        break;
                    }
                }
            }
            let step = match step {
                Step::Check { id, fresh } => {
                    // Consecutive checks run at once.
                    let mut batch = vec![(id, fresh)];
                    while let Some((_, Step::Check { .. })) = steps.peek() {
                        if let Some((_, Step::Check { id, fresh })) = steps.next() {
                            batch.push((id, fresh));
                        }
                    }
                    if let Err(e) = self
                        .check_batch(app, desired, batch, &mut run, progress)
                        .await
                    {
                        result = Err(e);
                        break;
                    }
                    continue;
                }
                other => other,
            };
            if let Err(e) = self.step(app, step, &mut run, progress).await {
                result = Err(e);
                break;
            }
        }
        if result.is_ok() {
            if let Some(c) = commit.take() {
                result = c.await;
            }
        }
        match result {
            Ok(()) => Ok(Tail {
                app: app.clone(),
                steps: tail,
                retired: run.retired,
            }),
            Err(e) => {
                // What this plan started and did not admit goes again.
                let admitted = self.admitted_for(app);
                let stray: Vec<InstanceId> = run
                    .started
                    .into_iter()
                    .filter(|id| !admitted.iter().any(|a| &a.id == id))
                    .collect();
                self.stop_all(&stray).await;
                Err(e)
            }
        }
    }

    /// Run what is left of a plan: retire, drain, stop. Failures are
    /// logged; the next reconcile picks up anything left.
    pub async fn finish(&self, tail: Tail) {
        let mut run = Run {
            retired: tail.retired,
            ..Run::default()
        };
        let mut quiet = Progress::new(None);
        for step in tail.steps {
            if let Err(e) = self.step(&tail.app, step, &mut run, &mut quiet).await {
                tracing::warn!(app = %tail.app, error = %e, "finishing a change");
            }
        }
    }

    async fn step(
        &self,
        app: &AppName,
        step: Step,
        run: &mut Run,
        progress: &mut Progress,
    ) -> Result<(), ConvergeError> {
        match step {
            Step::Evict(ids) => {
                self.evict(app, &ids);
                self.publish_logged().await;
            }
            Step::Start(spec) => {
                let id = spec.id();
                let name = format!("{}.{}", spec.process, spec.index);
                let instance = self
                    .runtime
                    .start(spec)
                    .await
                    .map_err(|source| ConvergeError::Runtime { what: name, source })?;
                run.started.push(id.clone());
                run.known.insert(id, instance);
            }
            Step::Check { id, fresh } => {
                let _ = (id, fresh);
                unreachable!("checks run in batches");
            }
            Step::Route { admit, retire } => {
                let admit: Vec<Admission> = admit
                    .iter()
                    .filter(|id| run.passed.contains(id))
                    .filter_map(|id| run.known.get(id))
                    .filter_map(admission)
                    .collect();
                let gone = self.route(app, admit, &retire);
                run.retired.extend(gone);
                self.publish_logged().await;
            }
            Step::AdmitReady { release } => {
                let now = self.list(app).await?;
                let ready: BTreeMap<InstanceId, Admission> = now
                    .iter()
                    .filter(|i| i.release == release && i.state == InstanceState::Running)
                    .filter_map(admission)
                    .map(|a| (a.id.clone(), a))
                    .collect();
                self.admitted().insert(app.clone(), ready);
                self.publish_logged().await;
            }
            Step::Apply { spec, replicas } => {
                progress
                    .step(format!("Rolling out {}={replicas}", spec.process))
                    .await;
                let what = format!("{}={replicas}", spec.process);
                self.runtime
                    .apply(&spec, replicas)
                    .await
                    .map_err(|source| ConvergeError::Runtime { what, source })?;
            }
            Step::Restart { spec, replicas } => {
                progress
                    .step(format!(
                        "Restarting {} ({replicas} at a time, one by one)",
                        spec.process
                    ))
                    .await;
                let what = format!("restarting {}", spec.process);
                self.runtime
                    .restart(&spec, replicas)
                    .await
                    .map_err(|source| ConvergeError::Runtime { what, source })?;
            }
            Step::Drain => {
                let endpoints = std::mem::take(&mut run.retired);
                self.drain(&endpoints, DRAIN).await;
            }
            Step::Stop(ids) => {
                // Never stop what is routed: out of the set first.
                self.evict(app, &ids);
                self.stop_all(&ids).await;
            }
        }
        Ok(())
    }

    async fn check_batch(
        &self,
        app: &AppName,
        desired: &Desired,
        batch: Vec<(InstanceId, bool)>,
        run: &mut Run,
        progress: &mut Progress,
    ) -> Result<(), ConvergeError> {
        let checks: Vec<Option<(Instance, HealthCheck)>> = batch
            .iter()
            .map(|(id, _)| {
                let inst = run.known.get(id)?.clone();
                let (spec, _) = desired.release.as_ref()?.processes.get(&inst.process)?;
                Some((inst, spec.check.clone()))
            })
            .collect();
        if batch.iter().any(|(_, fresh)| *fresh) {
            if let Some(Some((_, check))) = checks.first() {
                progress
                    .step(format!(
                        "Waiting for web to be {} (up to {}s)",
                        check.describe(),
                        check.timeout_secs
                    ))
                    .await;
            }
        }
        let results = join_all(checks.iter().map(|c| async move {
            match c {
                Some((inst, check)) => self.wait_healthy(inst, check).await,
                None => Err("is not running".to_owned()),
            }
        }))
        .await;
        for (((id, fresh), r), c) in batch.into_iter().zip(results).zip(checks) {
            let name = c
                .as_ref()
                .map(|(i, _)| format!("{}.{}", i.process, i.index))
                .unwrap_or_else(|| id.to_string());
            match r {
                Ok(restarts) => {
                    if let Some(inst) = run.known.get_mut(&id) {
                        inst.restarts = restarts;
                    }
                    run.passed.push(id);
                }
                Err(reason) if fresh => {
                    self.show_recent_output(app, &name, progress).await;
                    return Err(ConvergeError::Check {
                        instance: name,
                        reason,
                    });
                }
                Err(reason) => {
                    tracing::warn!(%app, instance = %name, %reason, "not routed: failed its check");
                }
            }
        }
        Ok(())
    }

    /// Wait until `inst` passes `check`, failing early when it exits.
    /// Returns the incarnation (restart count) that passed.
    async fn wait_healthy(&self, inst: &Instance, check: &HealthCheck) -> Result<u32, String> {
        let timeout = check.timeout();
        let deadline = Instant::now() + timeout;
        let Some(addr) = inst.endpoint else {
            return Err("has no endpoint".into());
        };
        loop {
            let probe = health::probe(addr, check).await;
            // Whatever the probe said, it counts for the process that runs
            // now only if that is still the one we started or found.
            let now = self
                .runtime
                .list(Some(&inst.app))
                .await
                .unwrap_or_default()
                .into_iter()
                .find(|i| i.id == inst.id);
            match &now {
                None => return Err("exited during boot".into()),
                Some(i) if i.restarts != inst.restarts || i.state == InstanceState::CrashLoop => {
                    return Err("exited during boot (it crashed and was restarted)".into())
                }
                Some(i) if i.state == InstanceState::Stopped => {
                    return Err("exited during boot".into())
                }
                _ => {}
            }
            let last = match probe {
                Ok(()) => return Ok(inst.restarts),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                return Err(format!(
                    "did not pass its health check within {}s: {last}",
                    timeout.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The last few lines an instance printed, to explain a failed check.
    async fn show_recent_output(&self, app: &AppName, instance: &str, progress: &mut Progress) {
        let lines = self.logs.tail(app, 10, Some(instance)).unwrap_or_default();
        if lines.is_empty() {
            return;
        }
        progress.step(format!("Last output of {instance}:")).await;
        for l in lines {
            progress.info(&l.text).await;
        }
    }

    async fn stop_all(&self, ids: &[InstanceId]) {
        let stops = ids.iter().map(|id| self.runtime.stop(id, STOP_GRACE));
        for (id, r) in ids.iter().zip(join_all(stops).await) {
            if let Err(e) = r {
                tracing::warn!(instance = %id, error = %e, "stop failed");
            }
        }
    }

    fn evict(&self, app: &AppName, ids: &[InstanceId]) {
        if let Some(set) = self.admitted().get_mut(app) {
            for id in ids {
                set.remove(id);
            }
        }
    }

    /// Admit and retire in one change of the set; returns the endpoints
    /// retired, for the drain that follows.
    fn route(
        &self,
        app: &AppName,
        admit: Vec<Admission>,
        retire: &[InstanceId],
    ) -> Vec<std::net::SocketAddr> {
        let mut all = self.admitted();
        let set = all.entry(app.clone()).or_default();
        let gone = retire
            .iter()
            .filter_map(|id| set.remove(id))
            .map(|a| a.endpoint)
            .collect();
        for a in admit {
            set.insert(a.id.clone(), a);
        }
        gone
    }

    /// Forget everything admitted of an app (it is being destroyed).
    pub fn forget_app(&self, app: &AppName) {
        self.admitted().remove(app);
    }

    /// Instances whose process exited leave the routes now. Runs until
    /// `shutdown`; does nothing for backends without events.
    pub async fn watch_exits(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        let Some(mut events) = self.runtime.events() else {
            return;
        };
        loop {
            let event = tokio::select! {
                _ = shutdown.cancelled() => return,
                e = events.recv() => e,
            };
            match event {
                Ok(InstanceEvent::Exited(id)) => {
                    let app = {
                        let mut all = self.admitted();
                        all.iter_mut()
                            .find_map(|(app, set)| set.remove(&id).map(|_| app.clone()))
                    };
                    if let Some(app) = app {
                        tracing::info!(%app, instance = %id, "exited: out of the routes until it passes its check again");
                        self.publish_logged().await;
                    }
                }
                Ok(InstanceEvent::ReadyChanged(app)) => {
                    // The backend decides readiness (kube: the web Service's
                    // endpoints): the routes take what is ready now, of
                    // whichever release, so a rolling update moves traffic
                    // pod by pod. What left was evicted by its own event.
                    match self.runtime.list(Some(&app)).await {
                        Ok(now) => {
                            let ready: BTreeMap<InstanceId, Admission> = now
                                .iter()
                                .filter(|i| i.state == InstanceState::Running)
                                .filter_map(admission)
                                .map(|a| (a.id.clone(), a))
                                .collect();
                            self.admitted().insert(app, ready);
                            self.publish_logged().await;
                        }
                        Err(e) => {
                            tracing::warn!(%app, error = %e, "listing ready instances");
                        }
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    // Missed some: the next reconcile compares incarnations.
                    continue;
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    async fn publish_logged(&self) {
        if let Err(e) = self.publish_routes().await {
            tracing::error!(error = %e, "route update failed");
        }
    }

    /// Rebuild the routes snapshot and swap it in.
    ///
    /// Every app gets `APP.DOMAIN` and its custom domains; its endpoints are
    /// its admitted instances, and nothing else. An app with none answers
    /// 503. Plain HTTP redirects to HTTPS per host: a host with a valid
    /// certificate redirects (unless the app turned redirects off),
    /// whatever the app's other hosts have.
    pub async fn publish_routes(&self) -> Result<(), ConvergeError> {
        let (apps, domains, certified) = self
            .db
            .call(move |c| {
                Ok((
                    state::apps::list(c)?,
                    state::domains::all(c)?,
                    state::certs::valid_cert_hosts(c, state::now())?,
                ))
            })
            .await?;
        let mut builder = Routes::builder();
        {
            let admitted = self.admitted();
            for app in &apps {
                let endpoints = admitted
                    .get(&app.name)
                    .map(|set| set.values().map(|a| a.endpoint).collect())
                    .unwrap_or_default();
                let mut hosts = vec![format!("{}.{}", app.name, self.domain)];
                hosts.extend(
                    domains
                        .iter()
                        .filter(|(a, _)| *a == app.name)
                        .map(|(_, h)| h.to_string()),
                );
                let mut route =
                    AppRoute::new(app.name.clone(), endpoints).access_log(app.access_log);
                for host in hosts {
                    let redirect = app.redirect_https && certified.contains(&host);
                    route = route.host(host, redirect);
                }
                builder = builder.route(route);
            }
        }
        self.routes.replace(builder.build());
        Ok(())
    }

    /// Wait until nothing is in flight to `ids` (requests, WebSockets,
    /// other upgraded connections), or `max` passes: a drain lasts as
    /// long as the work it protects, never longer than the maximum.
    async fn drain(&self, endpoints: &[std::net::SocketAddr], max: Duration) {
        // A request routed an instant before the swap is counted within
        // nanoseconds of its lookup; give it those before the first look.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let deadline = Instant::now() + max;
        let mut waited = false;
        loop {
            let busy: usize = endpoints.iter().map(|a| self.routes.in_flight(*a)).sum();
            if busy == 0 {
                return;
            }
            if Instant::now() >= deadline {
                tracing::info!(
                    in_flight = busy,
                    "drain ended at its maximum; stopping anyway"
                );
                return;
            }
            if !waited {
                tracing::debug!(in_flight = busy, "draining");
                waited = true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A deploy's switch into SQLite, run just before its routes switch.
pub type Commit<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), ConvergeError>> + Send + 'a>>;

/// What a run has learnt so far.
#[derive(Default)]
struct Run {
    /// Every instance the plan has seen or started, as last reported.
    known: HashMap<InstanceId, Instance>,
    /// Started by this run (stopped again if the run fails).
    started: Vec<InstanceId>,
    /// Passed their check in this run.
    passed: Vec<InstanceId>,
    /// Endpoints retired since the last drain.
    retired: Vec<std::net::SocketAddr>,
}

fn admission(i: &Instance) -> Option<Admission> {
    Some(Admission {
        id: i.id.clone(),
        release: i.release,
        endpoint: i.endpoint?,
        restarts: i.restarts,
    })
}
