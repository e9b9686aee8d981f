//! The release pipeline: the only writer of releases.
//!
//! ```text
//! push (pre-receive) ──► queued ──► building ──► releasing ──► starting ──► checking ──► live
//!                            └──────────┴────────────┴────────────┴────────────┴──► failed
//!                                            (the previous release keeps serving)
//!
//! building:  export the rev (no symlinks followed; Procfile and cygni.toml
//!            read from git objects) → detect builder → build in place
//! releasing: record vN (sha, artifact, env snapshot, processes); run `release:`
//! starting:  start the formation's instances
//! checking:  every new `web` instance passes the release's health check
//! live:      mark live, switch routes atomically; the push returns here,
//!            and the old instances drain and stop in the background
//!            (still under the app's lock, so the next deploy waits)
//! ```
//!
//! Stage functions take data and return data; only this module sequences
//! them and writes release status. Starting, checking, switching and
//! stopping are not sequenced here: every change of what runs is a plan
//! ([`plan`]) run by the one executor ([`converge`]). One deploy per app at
//! a time: a second push waits its turn and says so. [`reconcile`] brings
//! what runs back to what SQLite says should run, through the same
//! converger.

pub mod converge;
pub mod health;
pub mod manifest;
pub mod ops;
pub mod plan;
pub mod previews;
pub mod reconcile;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::build::{self, Artifact, BuildLimits, BuildRequest, Target};
use crate::git::{self, Repos};
use crate::hook::{Push, PushHandler, PushOutput, RefUpdate};
use crate::logs::{BuildLogWriter, LogStore};
use crate::metrics::DeployResult;
use crate::names::{AppName, ProcessType};
use crate::procfile::Procfile;
use crate::proxy::RouteTable;
use crate::runtime::{ArtifactKind, OneOffSpec, Runtime};
use crate::state::{self, formation, releases, releases::Release, releases::Status, Db};
use converge::{ConvergeError, Converger, Tail};
use manifest::Manifest;
use plan::{Desired, Intent};

/// Where a deploy failed. Shown to the pusher and kept on the release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Export,
    Build,
    /// Storing the built image in Cygni's registry (when it is on).
    Publish,
    Release,
    Start,
    Check,
    Switch,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Export => "export",
            Stage::Build => "build",
            Stage::Publish => "publish",
            Stage::Release => "release",
            Stage::Start => "start",
            Stage::Check => "health check",
            Stage::Switch => "switch",
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{} failed: {message}", stage.as_str())]
pub struct DeployError {
    pub stage: Stage,
    /// One line the pusher can act on; internal detail goes to the log.
    pub message: String,
    /// For an internal error, what the server log says: an operator's
    /// setup fault (a data dir the build user cannot traverse, a full
    /// disk) is fixed by an admin, who is shown it ([`DeployError::for_admin`]).
    pub operator_detail: Option<String>,
}

impl DeployError {
    /// The error as an admin sees it: an internal error names its cause,
    /// on one line. Others keep the generic line (the detail may name
    /// paths and other apps).
    #[must_use]
    pub fn for_admin(mut self) -> DeployError {
        if let Some(detail) = self.operator_detail.take() {
            let line: String = detail
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .chars()
                .filter(|c| !c.is_control())
                .take(400)
                .collect();
            self.message = format!("internal error: {line}");
        }
        self
    }

    /// [`DeployError::for_admin`] when `admin`, else as it is.
    #[must_use]
    pub fn shown_to(self, admin: bool) -> DeployError {
        if admin {
            self.for_admin()
        } else {
            self
        }
    }
}

fn fail(stage: Stage, message: impl Into<String>) -> DeployError {
    DeployError {
        stage,
        message: message.into(),
        operator_detail: None,
    }
}

/// Internal errors are logged in full and shown as a short line.
/// A busy database is not internal: the user learns that nothing changed
/// and may try again.
fn internal(stage: Stage, e: impl std::error::Error + 'static) -> DeployError {
    if state::busy_in_chain(&e) {
        tracing::warn!(stage = stage.as_str(), error = %e, "database busy");
        return fail(stage, state::BUSY_MESSAGE);
    }
    tracing::error!(stage = stage.as_str(), error = %e, "deploy error");
    DeployError {
        operator_detail: Some(crate::errors::chain(&e)),
        ..fail(stage, "internal error; see the server log")
    }
}

/// What a deploy's end line and metrics need from its steps.
#[derive(Default)]
struct DeploySeen {
    /// The release number, once one was recorded.
    version: Option<u32>,
    /// Time spent exporting and building, when the build ran.
    build: Option<Duration>,
}

/// Where deploys keep their files.
#[derive(Debug, Clone)]
pub struct Paths {
    /// `DATA/slugs/APP/vN`: built apps, run in place.
    pub slugs: PathBuf,
    /// `DATA/cache/APP`: buildpack caches, kept between builds.
    pub cache: PathBuf,
    pub buildpacks: PathBuf,
    /// `DATA/storage/APP/NAME`: apps' persistent storage (`storage:mount`),
    /// which outlives every release and goes only with `apps:destroy`.
    pub storage: PathBuf,
}

/// How long the `release:` command may run.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// Slugs (or images) of this many recent good releases are kept for
/// rollback, by default.
pub const KEEP_RELEASES: usize = 5;
/// Build logs of this many recent releases are kept.
pub const BUILD_LOGS_KEPT: usize = 20;

/// Everything a deploy touches, shared by the hook, commands and reconcile.
pub struct Platform {
    pub db: Db,
    pub repos: Repos,
    pub runtime: Arc<dyn Runtime>,
    pub routes: Arc<RouteTable>,
    pub logs: Arc<LogStore>,
    pub paths: Paths,
    pub domain: String,
    /// The HTTP listener's port, for the URLs shown to users.
    pub http_port: u16,
    pub boot_timeout: Duration,
    /// Build knobs (timeouts, the run image for image builds).
    pub build_limits: BuildLimits,
    /// How many recent good releases keep their slug or image (config key
    /// `keep_releases`); the live one is always kept.
    pub keep_releases: usize,
    /// The one executor of changes of what runs, and the admitted set.
    pub converger: Arc<Converger>,
    /// Bytes the data dir keeps free: pushes and builds below it are
    /// refused before they write anything.
    pub min_free: u64,
    /// Cygni's image registry: when set, every image build is published
    /// to it and the release records the manifest digest.
    pub registry: Option<Arc<crate::registry::Registry>>,
    /// Host directories under which admins may mount storage with
    /// `--host-path` (config key `storage_host_paths`; empty: none).
    pub storage_host_paths: Vec<PathBuf>,
    /// Where deploys are counted (the daemon's; a private one otherwise).
    pub metrics: Arc<crate::metrics::Metrics>,
    locks: std::sync::Mutex<HashMap<AppName, Arc<tokio::sync::Mutex<()>>>>,
}

/// An app's deploy lock, shared by whoever still works under it: a push
/// keeps it until git has moved the branch, and the old instances' drain
/// keeps it until they are stopped. The lock frees when both are done.
pub type AppGuard = Arc<tokio::sync::OwnedMutexGuard<()>>;

/// Progress of one deploy: to the pusher and to the release's build log.
pub struct Progress {
    out: Option<PushOutput>,
    log: Option<BuildLogWriter>,
}

impl Progress {
    pub fn new(out: Option<PushOutput>) -> Progress {
        Progress { out, log: None }
    }

    pub async fn raw(&mut self, text: &str) {
        if let Some(log) = &mut self.log {
            use std::io::Write;
            let _ = log.write_all(text.as_bytes());
        }
        if let Some(out) = &self.out {
            let _ = out.send(text.to_owned()).await;
        }
    }

    /// A Heroku-style step: `-----> Building with buildpack Python`.
    pub async fn step(&mut self, text: impl AsRef<str>) {
        self.raw(&format!("-----> {}\n", text.as_ref())).await;
    }

    /// An indented detail line under a step.
    pub async fn info(&mut self, text: impl AsRef<str>) {
        self.raw(&format!("       {}\n", text.as_ref())).await;
    }
}

impl Platform {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        db: Db,
        repos: Repos,
        runtime: Arc<dyn Runtime>,
        routes: Arc<RouteTable>,
        logs: Arc<LogStore>,
        paths: Paths,
        domain: String,
        boot_timeout: Duration,
        // Each app's builds and processes run as its own uid/gid
        // (state::app_users): the daemon is root. Else as the daemon's user.
        app_users: bool,
    ) -> Platform {
        let converger = Arc::new(
            Converger::new(
                db.clone(),
                runtime.clone(),
                routes.clone(),
                logs.clone(),
                domain.clone(),
                boot_timeout,
            )
            .with_storage_root(paths.storage.clone())
            .with_app_users(app_users),
        );
        let metrics = crate::metrics::Metrics::new(paths.slugs.clone(), false);
        Platform {
            db,
            repos,
            runtime,
            routes,
            logs,
            paths,
            domain,
            http_port: 80,
            boot_timeout,
            build_limits: BuildLimits::default(),
            keep_releases: KEEP_RELEASES,
            min_free: 512 << 20,
            registry: None,
            storage_host_paths: Vec::new(),
            metrics,
            converger,
            locks: Default::default(),
        }
    }

    /// Rebuild the routes from the admitted set and swap them in.
    pub async fn publish_routes(&self) -> Result<(), ConvergeError> {
        self.converger.publish_routes().await
    }

    /// Run a change's tail (drain and stop what it replaced) in the
    /// background, holding the app's lock until it is done.
    fn finish_in_background(&self, tail: Tail, guard: AppGuard) {
        if tail.is_empty() {
            return;
        }
        let converger = self.converger.clone();
        tokio::spawn(async move {
            converger.finish(tail).await;
            drop(guard);
        });
    }

    /// The per-app lock that serializes deploys, config releases, rollbacks
    /// and reconcile for one app.
    pub fn app_lock(&self, app: &AppName) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(app.clone()).or_default().clone()
    }

    async fn lock_app(&self, app: &AppName, progress: &mut Progress) -> AppGuard {
        let lock = self.app_lock(app);
        let guard = match lock.clone().try_lock_owned() {
            Ok(guard) => guard,
            Err(_) => {
                progress
                    .step(format!(
                        "Another deploy of {app} is running; waiting for it to finish"
                    ))
                    .await;
                lock.lock_owned().await
            }
        };
        Arc::new(guard)
    }

    fn slug_dir(&self, app: &AppName, version: u32) -> PathBuf {
        self.paths
            .slugs
            .join(app.as_str())
            .join(format!("v{version}"))
    }

    /// Refuse to start work that writes to the data dir when it has less
    /// than [`Platform::min_free`] free: a full disk mid-build damages more
    /// than a refused push.
    fn check_free_space(&self, stage: Stage) -> Result<(), DeployError> {
        let Some(free) = free_bytes(&self.paths.slugs) else {
            return Ok(());
        };
        if free < self.min_free {
            tracing::warn!(
                free,
                reserve = self.min_free,
                "refusing work: disk nearly full"
            );
            return Err(fail(
                stage,
                format!(
                    "the server has only {} MiB free for apps (it keeps {} MiB free); nothing was changed: free some disk space and push again",
                    free >> 20,
                    self.min_free >> 20
                ),
            ));
        }
        Ok(())
    }

    /// Is `branch` the one whose pushes deploy?
    fn is_deploy_branch(setting: Option<&str>, branch: &str) -> bool {
        match setting {
            Some(b) => b == branch,
            None => branch == "main" || branch == "master",
        }
    }

    /// Build and release a pushed commit. Runs inside the pre-receive hook:
    /// an error rejects the push.
    ///
    /// Returns the app's deploy lock with the release: the caller keeps it
    /// until git has moved the branch, so that a push waiting its turn sees
    /// where the branch really is.
    ///
    /// Every deploy ends in exactly one log line (`deploy live` with the
    /// release and its duration, or `deploy failed` with the stage and the
    /// reason) and one count in the metrics.
    pub async fn deploy(
        &self,
        app: &AppName,
        update: &RefUpdate,
        object_dirs: Vec<PathBuf>,
        progress: &mut Progress,
    ) -> Result<(Release, AppGuard), DeployError> {
        self.deploy_from(app, app, update, object_dirs, progress)
            .await
    }

    /// [`Platform::deploy`] of a commit in `source`'s repository: a
    /// preview (its own app) deploys from its parent's.
    pub async fn deploy_from(
        &self,
        app: &AppName,
        source: &AppName,
        update: &RefUpdate,
        object_dirs: Vec<PathBuf>,
        progress: &mut Progress,
    ) -> Result<(Release, AppGuard), DeployError> {
        let started = Instant::now();
        let mut seen = DeploySeen::default();
        let result = self
            .deploy_steps(app, source, update, object_dirs, progress, &mut seen)
            .await;
        let duration = started.elapsed();
        let secs = (duration.as_secs_f64() * 1000.0).round() / 1000.0;
        match &result {
            Ok((release, _)) => {
                tracing::info!(%app, release = release.version, duration_s = secs, "deploy live");
                self.metrics
                    .deploy(app.as_str(), DeployResult::Live, duration, seen.build);
            }
            Err(e) => {
                tracing::warn!(
                    %app,
                    release = seen.version,
                    stage = e.stage.as_str(),
                    reason = %e.message,
                    duration_s = secs,
                    "deploy failed"
                );
                self.metrics
                    .deploy(app.as_str(), DeployResult::Failed, duration, seen.build);
            }
        }
        result
    }

    async fn deploy_steps(
        &self,
        app: &AppName,
        source: &AppName,
        update: &RefUpdate,
        object_dirs: Vec<PathBuf>,
        progress: &mut Progress,
        seen: &mut DeploySeen,
    ) -> Result<(Release, AppGuard), DeployError> {
        let guard = self.lock_app(app, progress).await;
        let (sha, branch) = (update.new.as_str(), update.branch().unwrap_or("main"));
        // A push that waited for another deploy may find its branch moved:
        // git would then refuse the ref update after we went live. Refuse
        // first, as git itself would for a concurrent push.
        let current = self.branch_head(source, &update.name).await;
        tracing::debug!(%app, ?current, old = %update.old, "deploy lock taken");
        let expected = (!update.old.bytes().all(|b| b == b'0')).then(|| update.old.clone());
        if current != expected {
            return Err(fail(
                Stage::Export,
                format!("{branch} moved while this push waited (another push landed first): fetch, merge and push again"),
            ));
        }
        self.check_free_space(Stage::Export)?;
        let short = &sha[..sha.len().min(7)];
        let (a, s, d) = (app.clone(), sha.to_owned(), format!("Deploy {short}"));
        let mut release = self
            .db
            .call(move |c| {
                releases::create(
                    c,
                    releases::NewRelease {
                        app: &a,
                        sha: Some(&s),
                        description: &d,
                        status: Status::Building,
                    },
                )
            })
            .await
            .map_err(|e| internal(Stage::Export, e))?;
        // What git must do once this release is live; start-up settles it
        // if the daemon dies before git does (see reconcile). A preview's
        // branch lives in its parent's repository; the settle finds it
        // there.
        {
            let (id, refname, old) = (release.id, update.name.clone(), expected.clone());
            self.db
                .call(move |c| releases::set_pending_ref(c, id, &refname, old.as_deref()))
                .await
                .map_err(|e| internal(Stage::Export, e))?;
        }
        progress.log = self.logs.build_log(app, release.version).ok();
        progress
            .step(format!(
                "Deploying {app} v{} ({branch} {short})",
                release.version
            ))
            .await;

        seen.version = Some(release.version);
        let started = Instant::now();
        let result = self
            .build_release(&mut release, source, object_dirs, progress)
            .await;
        seen.build = Some(started.elapsed());
        let result = match result {
            Ok(()) => self.start_and_switch(&release, true, progress).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(tail) => {
                // Live now; the old instances drain and stop in the
                // background, under the lock.
                self.finish_in_background(tail, guard.clone());
                progress
                    .step(format!(
                        "Released v{} in {:.1}s",
                        release.version,
                        started.elapsed().as_secs_f64()
                    ))
                    .await;
                progress
                    .info(format!("{} deployed", self.app_url(app)))
                    .await;
                self.prune_slugs(app).await;
                release.status = Status::Live;
                Ok((release, guard))
            }
            Err(e) => {
                let (id, stage, msg) = (release.id, e.stage.as_str(), e.message.clone());
                let _ = self
                    .db
                    .call(move |c| releases::fail(c, id, stage, &msg))
                    .await;
                // A failed release is never rolled back to: free its slug.
                let _ = tokio::fs::remove_dir_all(self.slug_dir(app, release.version)).await;
                progress
                    .raw(&format!(
                        " !     v{} failed at {}; the running release is unchanged\n",
                        release.version,
                        e.stage.as_str()
                    ))
                    .await;
                Err(e)
            }
        }
    }

    /// Where a ref points in the repository proper (not the quarantine).
    pub(super) async fn branch_head(&self, app: &AppName, refname: &str) -> Option<String> {
        let path = self.repos.path(app);
        let refname = refname.to_owned();
        tokio::task::spawn_blocking(move || {
            let repo = git2::Repository::open_bare(path).ok()?;
            let oid = repo.refname_to_id(&refname).ok()?;
            Some(oid.to_string())
        })
        .await
        .ok()
        .flatten()
    }

    /// Where users reach an app: `http://APP.DOMAIN`, with the HTTP port
    /// when it is not 80.
    pub fn app_url(&self, app: &AppName) -> String {
        match self.http_port {
            80 => format!("http://{app}.{}", self.domain),
            port => format!("http://{app}.{}:{port}", self.domain),
        }
    }

    /// Stages up to the recorded snapshot: export, detect, build.
    async fn build_release(
        &self,
        release: &mut Release,
        source: &AppName,
        object_dirs: Vec<PathBuf>,
        progress: &mut Progress,
    ) -> Result<(), DeployError> {
        let app = release.app.clone();
        let sha = release.sha.clone().unwrap_or_default();
        let slug = self.slug_dir(&app, release.version);

        // Who builds it and runs it: the app's own uid/gid (a root daemon).
        let run_as = self
            .converger
            .app_user(&app)
            .await
            .map_err(|e| app_user_failure(Stage::Export, e))?;

        // Export, and read Procfile and cygni.toml from the objects.
        let app_dir = self.paths.slugs.join(app.as_str());
        tokio::fs::create_dir_all(&app_dir)
            .await
            .map_err(|e| internal(Stage::Export, e))?;
        // With a user per app, `slugs/` and `slugs/APP` (root's) are only
        // traversed, and each slug is its app's, 0700 (build::ownership):
        // no app lists or enters another's. Nor can an app rename a slug
        // while the daemon hands it over, as it could in a dir of its own.
        let mode = if run_as.is_some() { 0o711 } else { 0o755 };
        set_mode(&self.paths.slugs, mode);
        set_mode(&app_dir, mode);
        let _ = tokio::fs::remove_dir_all(&slug).await;
        let repo_path = self.repos.path(source);
        let (slug2, sha2) = (slug.clone(), sha.clone());
        let (procfile, manifest) = tokio::task::spawn_blocking(move || {
            let repo = git::open_pushed(&repo_path, &object_dirs)
                .map_err(|e| internal(Stage::Export, e))?;
            git::export(&repo, &sha2, &slug2).map_err(|e| internal(Stage::Export, e))?;
            let procfile =
                git::read_file(&repo, &sha2, "Procfile").map_err(|e| internal(Stage::Export, e))?;
            let manifest = git::read_file(&repo, &sha2, "cygni.toml")
                .map_err(|e| internal(Stage::Export, e))?;
            Ok::<_, DeployError>((procfile, manifest))
        })
        .await
        .map_err(|e| internal(Stage::Export, e))??;

        let manifest = match manifest {
            Some(bytes) => Manifest::parse(&bytes).map_err(|e| fail(Stage::Build, e))?,
            None => Manifest::default(),
        };
        let procfile = match procfile {
            Some(bytes) => {
                let text = String::from_utf8(bytes)
                    .map_err(|_| fail(Stage::Build, "Procfile is not UTF-8"))?;
                Some(Procfile::parse(&text).map_err(|e| fail(Stage::Build, e.to_string()))?)
            }
            None => None,
        };

        let a = app.clone();
        let env = self
            .db
            .call(move |c| state::config_vars::get_all(c, &a))
            .await
            .map_err(|e| internal(Stage::Build, e))?;
        let pinned = manifest
            .build
            .builder
            .clone()
            .or_else(|| env.get("CYGNI_BUILDER").cloned());

        self.check_free_space(Stage::Build)?;
        // Build, streaming the builder's output as it comes.
        let cache = self.paths.cache.join(app.as_str());
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(256);
        // Every runtime but local runs images.
        let target = match self.runtime.artifact_kind() {
            ArtifactKind::Slug => Target::Slug,
            ArtifactKind::Image => Target::Image,
        };
        // Image builds see config vars only when cygni.toml lists them; a
        // host build (local) gets them all in ENV_DIR, as on Heroku.
        let build_env = match target {
            Target::Slug => env.clone(),
            Target::Image => {
                let asked: std::collections::BTreeMap<String, String> = manifest
                    .build
                    .config_vars
                    .iter()
                    .filter_map(|k| env.get(k).map(|v| (k.clone(), v.clone())))
                    .collect();
                if !asked.is_empty() {
                    let names: Vec<&str> = asked.keys().map(String::as_str).collect();
                    progress
                        .step(format!(
                            "Passing config vars {} to the image build (cygni.toml build.config_vars)",
                            names.join(", ")
                        ))
                        .await;
                }
                asked
            }
        };
        let request = BuildRequest {
            app: &app,
            release: release.version,
            source_dir: &slug,
            cache_dir: &cache,
            env: &build_env,
            buildpacks_dir: &self.paths.buildpacks,
            pinned: pinned.as_deref(),
            target,
            run_as,
            output: tx,
        };
        let built = {
            let fut = build::build_with(request, &self.build_limits);
            tokio::pin!(fut);
            loop {
                tokio::select! {
                    r = &mut fut => break r,
                    Some(line) = rx.recv() => progress.raw(&String::from_utf8_lossy(&line)).await,
                }
            }
        };
        while let Ok(line) = rx.try_recv() {
            progress.raw(&String::from_utf8_lossy(&line)).await;
        }
        let built = built.map_err(|e| {
            if e.is_app_fault() {
                fail(Stage::Build, e.to_string())
            } else {
                internal(Stage::Build, e)
            }
        })?;

        // The Procfile wins over the builder's defaults.
        let mut processes = built.default_processes.clone();
        if let Some(p) = &procfile {
            for (t, cmd) in p.processes() {
                processes.insert(t.clone(), cmd.clone());
            }
        }
        if !processes.keys().any(|p| p.as_str() != "release") {
            return Err(fail(
                Stage::Build,
                "no process types: add a Procfile with a `web: COMMAND` line",
            ));
        }
        progress
            .step(format!(
                "Process types: {}",
                processes
                    .keys()
                    .map(ProcessType::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
            .await;

        if !processes.contains_key(&ProcessType::web()) {
            progress
                .info(format!(
                    "no web process type: nothing is served over HTTP ({} answers 503); add `web: COMMAND` to the Procfile to serve, and ps:scale to run the others",
                    self.app_url(&app)
                ))
                .await;
        }

        // Limits were validated when they were set; one stored before
        // that (or by hand) fails here, before anything starts.
        release.limits = crate::limits::Limits::from_vars(&env)
            .map_err(|e| fail(Stage::Build, e.to_string()))?;
        release.image_digest = self
            .publish(&app, release.version, &built.artifact, progress)
            .await?;
        release.builder = Some(built.builder.clone());
        // A cluster's nodes pull the image from Cygni's registry, by
        // digest; a runtime on this host runs the engine's own tag.
        let pulled = match (
            &self.registry,
            self.runtime.cluster(),
            &release.image_digest,
        ) {
            (Some(registry), Some(_), Some(d)) => {
                crate::registry::Digest::parse(d).map(|d| Artifact::Image {
                    reference: registry.reference(&app, &d),
                })
            }
            _ => None,
        };
        release.artifact = Some(pulled.unwrap_or_else(|| built.artifact.clone()));
        release.env = env;
        release.processes = processes;
        release.check = Some(manifest.health_check(self.boot_timeout));
        let snapshot = release.clone();
        self.db
            .call(move |c| releases::set_snapshot(c, &snapshot))
            .await
            .map_err(|e| internal(Stage::Build, e))?;
        Ok(())
    }

    /// Publishes an image build to the registry (when it is on); returns
    /// the manifest digest. A failure fails the deploy: a cluster could not
    /// pull what it would be told to run.
    async fn publish(
        &self,
        app: &AppName,
        version: u32,
        artifact: &Artifact,
        progress: &mut Progress,
    ) -> Result<Option<String>, DeployError> {
        let (Some(registry), Artifact::Image { reference }) = (&self.registry, artifact) else {
            return Ok(None);
        };
        progress
            .step(format!(
                "Publishing {reference} to the registry as {app}:v{version}"
            ))
            .await;
        self.check_free_space(Stage::Publish)?;
        let started = Instant::now();
        match registry.publish(app, version, reference).await {
            Ok(digest) => {
                progress
                    .info(format!(
                        "{} ({:.1}s)",
                        registry.reference(app, &digest),
                        started.elapsed().as_secs_f64()
                    ))
                    .await;
                Ok(Some(digest.to_string()))
            }
            Err(e) => {
                tracing::error!(%app, version, error = %e, "publishing an image");
                // The cause is the server's (paths, the engine): logged.
                Err(fail(
                    Stage::Publish,
                    "cannot store the image in Cygni's registry (the server log says why)",
                ))
            }
        }
    }

    /// Stages from `release:` to live, shared by deploys, config changes and
    /// rollbacks: the release phase, then the converger starts the
    /// formation, checks it, marks the release live and switches the routes.
    /// Returns the tail (drain and stop the old instances) for the caller to
    /// run. On error, whatever this call started is stopped.
    pub async fn start_and_switch(
        &self,
        release: &Release,
        run_release_phase: bool,
        progress: &mut Progress,
    ) -> Result<Tail, DeployError> {
        let app = &release.app;
        let artifact = release
            .artifact
            .clone()
            .ok_or_else(|| fail(Stage::Release, "this release has nothing to run"))?;
        self.set_status(release.id, Status::Releasing).await;
        let mounts = self
            .converger
            .current_mounts(app)
            .await
            .map_err(|e| internal(Stage::Release, e))?;
        let run_as = self
            .converger
            .app_user(app)
            .await
            .map_err(|e| app_user_failure(Stage::Release, e))?;

        if let (true, Some(cmd)) = (run_release_phase, release_command(release)) {
            progress
                .step(format!("Running release command: {cmd}"))
                .await;
            let (tx, mut rx) = mpsc::channel::<Vec<u8>>(256);
            let spec = OneOffSpec {
                app: app.clone(),
                release: release.version,
                argv: vec!["/bin/sh".into(), "-c".into(), cmd.to_owned()],
                env: release.env.clone(),
                artifact: artifact.clone(),
                timeout: RELEASE_TIMEOUT,
                mounts: mounts.clone(),
                run_as,
            };
            let code = {
                let fut = self.runtime.run_once(spec, tx);
                tokio::pin!(fut);
                loop {
                    tokio::select! {
                        r = &mut fut => break r,
                        Some(line) = rx.recv() => {
                            let text = String::from_utf8_lossy(&line);
                            progress.info(text.trim_end()).await;
                        }
                    }
                }
            };
            while let Ok(line) = rx.try_recv() {
                progress
                    .info(String::from_utf8_lossy(&line).trim_end())
                    .await;
            }
            match code {
                Ok(0) => {}
                Ok(code) => {
                    return Err(fail(
                        Stage::Release,
                        format!("the release command exited with status {code}"),
                    ))
                }
                Err(e) => return Err(fail(Stage::Release, e.to_string())),
            }
        }

        self.set_status(release.id, Status::Starting).await;
        let a = app.clone();
        let stored = self
            .db
            .call(move |c| formation::get(c, &a))
            .await
            .map_err(|e| internal(Stage::Start, e))?;
        let Some(target) = self
            .converger
            .desired_release(release, &stored, &mounts, run_as)
        else {
            return Err(fail(Stage::Release, "this release has nothing to run"));
        };
        let summary: Vec<String> = target
            .processes
            .iter()
            .map(|(p, (_, n))| format!("{p}={n}"))
            .collect();
        progress
            .step(format!("Starting {}", summary.join(" ")))
            .await;
        let desired = Desired {
            release: Some(target),
            stopped: false,
        };
        // The switch: the release becomes live (and the app runs again if
        // it was stopped: a release is a request to run it), just before
        // the routes follow.
        let (id, a, db) = (release.id, app.clone(), self.db.clone());
        let commit: converge::Commit<'_> = Box::pin(async move {
            db.call(move |c| {
                releases::make_live(c, id)?;
                state::apps::set_stopped(c, &a, false)
            })
            .await
            .map_err(ConvergeError::from)
        });
        self.converger
            .converge(app, &Intent::Converge, &desired, Some(commit), progress)
            .await
            .map_err(converge_failure)
    }

    async fn set_status(&self, id: i64, status: Status) {
        if let Err(e) = self
            .db
            .call(move |c| releases::set_status(c, id, status))
            .await
        {
            tracing::warn!(error = %e, "cannot record release status");
        }
    }

    /// Keep the slugs (and the runtime's images) of the last few good
    /// releases (rollback targets) and the live one; remove the rest.
    async fn prune_slugs(&self, app: &AppName) {
        let a = app.clone();
        let Ok(recent) = self.db.call(move |c| releases::list(c, &a, 100)).await else {
            return;
        };
        // Build logs go with age: the newest BUILD_LOGS_KEPT releases keep
        // theirs (a deploy prunes each time, so older ones are gone already).
        for r in recent.iter().skip(BUILD_LOGS_KEPT) {
            if let Err(e) = self.logs.remove_build_log(app, r.version) {
                tracing::warn!(%app, version = r.version, error = %e, "pruning a build log");
            }
        }
        let kept: Vec<Artifact> = recent
            .iter()
            .filter(|r| r.status != Status::Failed)
            .take(self.keep_releases)
            .chain(recent.iter().filter(|r| r.status == Status::Live))
            .filter_map(|r| r.artifact.clone())
            .collect();
        if let Err(e) = self.runtime.retain_artifacts(app, &kept).await {
            tracing::warn!(%app, error = %e, "pruning old release artifacts failed");
        }
        // The registry keeps the images of the same releases (a config
        // release or rollback shares its build's image, and tag).
        let images: Vec<crate::registry::Digest> = recent
            .iter()
            .filter(|r| r.status != Status::Failed)
            .take(self.keep_releases)
            .chain(recent.iter().filter(|r| r.status == Status::Live))
            .filter_map(|r| crate::registry::Digest::parse(r.image_digest.as_deref()?))
            .collect();
        self.retain_registry(app, images).await;
        let keep: Vec<PathBuf> = kept
            .iter()
            .filter_map(|a| match a {
                Artifact::Slug { dir } => Some(dir.clone()),
                Artifact::Image { .. } => None,
            })
            .collect();
        let dir = self.paths.slugs.join(app.as_str());
        let Ok(mut entries) = tokio::fs::read_dir(&dir).await else {
            return;
        };
        while let Ok(Some(e)) = entries.next_entry().await {
            let path = e.path();
            if !keep.contains(&path) {
                let _ = tokio::fs::remove_dir_all(&path).await;
            }
        }
    }
}

impl Platform {
    /// Remove everything that belongs to an app: instances, routes,
    /// releases, config, formation, repo, slugs, cache, logs and its
    /// storage directories (an admin's host directories are not Cygni's
    /// and stay).
    pub async fn destroy_app(&self, app: &AppName) -> Result<(), DeployError> {
        // Its previews go first: they are apps of their own.
        self.destroy_previews_of(app).await?;
        let mut quiet = Progress::new(None);
        let _guard = self.lock_app(app, &mut quiet).await;
        // Nothing should run: out of the routes, drained, stopped.
        let tail = self
            .converger
            .converge(
                app,
                &Intent::Converge,
                &Desired::default(),
                None,
                &mut quiet,
            )
            .await
            .map_err(|e| internal(Stage::Switch, e))?;
        self.converger.finish(tail).await;
        self.converger.forget_app(app);
        self.metrics.forget_app(app.as_str());
        // What the backend keeps for the app beyond instances (kube: its
        // namespace, with its Secrets, Services and storage claims: the
        // claims' local-path volumes go with them).
        if let Err(e) = self.runtime.remove_app(app).await {
            tracing::warn!(%app, error = %e, "removing a destroyed app from the runtime");
        }
        // Nothing of a destroyed app is kept (its images, on docker).
        if let Err(e) = self.runtime.retain_artifacts(app, &[]).await {
            tracing::warn!(%app, error = %e, "removing a destroyed app's artifacts");
        }
        self.retain_registry(app, Vec::new()).await;
        let a = app.clone();
        self.db
            .call(move |c| state::apps::delete(c, &a))
            .await
            .map_err(|e| internal(Stage::Switch, e))?;
        // Routes first, so the host answers 404 even if a removal below fails.
        if let Err(e) = self.publish_routes().await {
            tracing::warn!(error = %e, "route update after destroy");
        }
        self.repos
            .remove(app)
            .map_err(|e| internal(Stage::Switch, e))?;
        for dir in [
            self.paths.slugs.join(app.as_str()),
            self.paths.cache.join(app.as_str()),
            self.paths.storage.join(app.as_str()),
        ] {
            match tokio::fs::remove_dir_all(&dir).await {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(internal(Stage::Switch, e))
                }
                _ => {}
            }
        }
        if let Err(e) = self.logs.remove_app(app) {
            tracing::warn!(error = %e, "removing logs of a destroyed app");
        }
        Ok(())
    }
}

impl Platform {
    /// Drops the app's registry tags but those of the images in `keep`,
    /// and the blobs no tag reaches any more. A failure costs disk, never
    /// a release: logged.
    async fn retain_registry(&self, app: &AppName, keep: Vec<crate::registry::Digest>) {
        let Some(registry) = &self.registry else {
            return;
        };
        match registry.retain(app, keep).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(%app, blobs = n, "removed unused registry blobs"),
            Err(e) => tracing::warn!(%app, error = %e, "pruning the registry failed"),
        }
    }
}

/// A converger failure as the pusher sees it: checks and starts are the
/// app's to fix; anything else is internal.
fn converge_failure(e: ConvergeError) -> DeployError {
    match e {
        ConvergeError::Check { .. } => fail(Stage::Check, e.to_string()),
        ConvergeError::Runtime { .. } => fail(Stage::Start, e.to_string()),
        ConvergeError::State(_) => internal(Stage::Switch, e),
    }
}

/// No app user id left (a user fixes that by destroying an app): the line
/// as it is; anything else is internal.
fn app_user_failure(stage: Stage, e: ConvergeError) -> DeployError {
    match e {
        ConvergeError::State(state::StateError::Full(line)) => fail(stage, line),
        e => internal(stage, e),
    }
}

/// Bytes available to unprivileged writers on the filesystem of `path`.
fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a NUL-terminated path and `st` is a valid out-pointer
    // for one statvfs; it is read only when the call succeeded.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled `st`.
    let st = unsafe { st.assume_init() };
    // The field types differ between targets (u32 on some 32-bit ones).
    #[allow(clippy::useless_conversion)]
    let (avail, size) = (u64::from(st.f_bavail), u64::from(st.f_frsize));
    Some(avail.saturating_mul(size))
}

fn release_command(release: &Release) -> Option<&str> {
    release
        .processes
        .iter()
        .find(|(p, _)| p.as_str() == "release")
        .map(|(_, c)| c.as_str())
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
}

#[async_trait::async_trait]
impl PushHandler for Platform {
    async fn pre_receive(&self, push: Push, out: PushOutput) -> Result<(), String> {
        let actor = push.session.actor.clone();
        let app = push.session.app.clone();
        let detail = push
            .updates
            .iter()
            .map(|u| format!("{} {}", u.name, &u.new[..u.new.len().min(12)]))
            .collect::<Vec<_>>()
            .join(" ");
        let result = self.receive(push, out).await;
        let (outcome, message) = match &result {
            Ok(()) => ("ok", String::new()),
            Err(m) => ("failed", m.clone()),
        };
        let entry = actor.audit_entry("push", Some(&app), detail, outcome, message);
        if let Err(e) = self.db.call(move |c| state::audit::append(c, &entry)).await {
            tracing::error!(error = %e, "cannot write the audit log");
        }
        result
    }
}

impl Platform {
    /// The push itself: deploy the deploy branch, store the others.
    async fn receive(&self, push: Push, out: PushOutput) -> Result<(), String> {
        let app = push.session.app.clone();
        let a = app.clone();
        let record = self
            .db
            .call(move |c| state::apps::get(c, &a))
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "app lookup in hook");
                "internal error; see the server log".to_owned()
            })?
            .ok_or_else(|| format!("app not found: {app}"))?;
        let mut object_dirs: Vec<PathBuf> = push.quarantine.object_directory.into_iter().collect();
        object_dirs.extend(push.quarantine.alternate_object_directories);

        let mut progress = Progress::new(Some(out));
        // Previews: a push into one is refused, bad preview branch names
        // refuse the whole push before anything deploys.
        let previews = self.preview_settings(&app, &push.updates).await?;
        let mut deployed = false;
        for update in &push.updates {
            let Some(branch) = update.branch() else {
                continue;
            };
            let short = &update.new[..update.new.len().min(7)];
            if let Some(handled) = self
                .preview_update(
                    &app,
                    previews.as_ref(),
                    &record,
                    update,
                    &object_dirs,
                    &mut progress,
                )
                .await?
            {
                if let Some(guard) = handled {
                    push.holder.keep_until_push_ends(Box::new(guard));
                }
                continue;
            }
            if update.is_delete() {
                return Err(format!("deleting branch {branch} is not allowed"));
            }
            progress
                .step(format!("Received {app} ({branch} {short})"))
                .await;
            if !Self::is_deploy_branch(record.deploy_branch.as_deref(), branch) || deployed {
                let target = record.deploy_branch.as_deref().unwrap_or("main");
                progress
                    .info(format!(
                        "branch {branch} stored, not deployed (pushes to {target} deploy)"
                    ))
                    .await;
                continue;
            }
            let admin = push.session.actor.is_admin();
            let (_, guard) = self
                .deploy(&app, update, object_dirs.clone(), &mut progress)
                .await
                .map_err(|e| e.shown_to(admin).to_string())?;
            push.holder.keep_until_push_ends(Box::new(guard));
            deployed = true;
        }
        Ok(())
    }
}
