//! Syncs: deploying an app from a repository URL (`apps:create --from`,
//! `git:sync`, `POST /apps/{app}/sync`) and the `--every` schedule.
//!
//! ```text
//! prepare: authorize · URL policy (scheme, resolve, address classes) · record "queued"
//! run:     fetching  git fetch URL +REF:refs/cygni/sync/N   (bounded, pinned)
//!          analysing the commit and its tree (git2)
//!          building / deploying / healthy   local push → the release pipeline
//!          live      the push went through and vN is live   (or failed, with the reason)
//! ```
//!
//! Refusals happen in `prepare`, before anything is written. After that
//! the sync has a record, and a failure leaves the app's branch, its live
//! release and the rest of the database as they were.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use super::{Access, Actor, Service, ServiceError};
use crate::local_push::{LocalPush, PushEnv};
use crate::names::AppName;
use crate::state::{self, sync::SyncRun};
use crate::sync::fetch::Fetcher;
use crate::sync::submodules;
use crate::sync::url::{Policy, SourceUrl, Target};
use crate::sync::{self as syncing, SyncState};

/// What syncs need beyond the service: the admin's policy, how fetches
/// run, and the daemon's own pushes.
pub struct Syncer {
    pub policy: Policy,
    pub fetcher: Fetcher,
    /// The shortest `--every` (config `sync_min_interval_secs`).
    pub min_every: Duration,
    pub push: Arc<PushEnv>,
}

/// A sync that passed its checks and has a record, ready to run.
pub struct PreparedSync {
    pub app: AppName,
    url: SourceUrl,
    target: Target,
    reference: String,
    /// Fetch the commit's submodules too (`--submodules`).
    submodules: bool,
    /// `submodules` differs from the source's stored setting.
    submodules_changed: bool,
    /// Store the URL, ref and submodule setting as the app's source once
    /// live (a new URL given to `git:sync`); an app's first sync stored
    /// it already.
    remember: bool,
    pub run: SyncRun,
}

/// Who runs scheduled syncs (the audit log names it).
pub fn scheduler_actor() -> Actor {
    Actor {
        name: "scheduler".into(),
        principal: crate::actor::Principal::Key {
            fingerprint: "cygni:scheduler".into(),
        },
        role: state::keys::Role::Admin,
        source: crate::actor::Source::Scheduler,
        address: None,
    }
}

/// One line out, to the client (if any) and to the sync's log.
struct Out {
    tx: Option<UnboundedSender<String>>,
    lines: Vec<String>,
    /// The release the push made (live or failed), for its build log.
    made: Option<u32>,
}

impl Out {
    fn say(&mut self, line: impl Into<String>) {
        let line = line.into();
        if let Some(tx) = &self.tx {
            let _ = tx.send(format!("{line}\n"));
        }
        self.lines.push(line);
    }
}

impl Service {
    /// Hand the service what syncs need (at start-up; once).
    pub fn enable_sync(&self, syncer: Syncer) {
        let _ = self.sync.set(Arc::new(syncer));
    }

    fn syncer(&self) -> Result<Arc<Syncer>, ServiceError> {
        self.sync.get().cloned().ok_or_else(|| {
            ServiceError::Invalid("syncing from a URL is not enabled on this server".into())
        })
    }

    /// Check a URL against the policy: one line for a refusal.
    async fn check_url(&self, url: &str) -> Result<(SourceUrl, Target), ServiceError> {
        let syncer = self.syncer()?;
        let url =
            SourceUrl::parse(url).map_err(|e| ServiceError::Invalid(format!("refused: {e}")))?;
        let target = syncer
            .policy
            .check(&url)
            .await
            .map_err(|e| ServiceError::Invalid(format!("refused: {e}")))?;
        Ok((url, target))
    }

    /// `apps:create APP --from URL [--branch B]`: check the URL, create
    /// the app with it as its source, and queue its first sync. A refused
    /// URL creates nothing.
    pub async fn create_app_from(
        &self,
        actor: &Actor,
        app: &AppName,
        url: &str,
        branch: Option<&str>,
        submodules: bool,
    ) -> Result<PreparedSync, ServiceError> {
        let masked = crate::sync::url::mask_text(url);
        let reference =
            syncing::parse_ref(branch.unwrap_or("main")).map_err(ServiceError::Invalid)?;
        let mut detail = format!("from {masked} {}", syncing::short_ref(&reference));
        if submodules {
            detail.push_str(" --submodules");
        }
        let (url, target) = self
            .audited(actor, "apps:create --from", Some(app), detail, async {
                self.require_admin(actor, "create apps")?;
                self.check_url(url).await
            })
            .await?;
        self.create_app(actor, app).await?;
        let (a, m, secret, r) = (
            app.clone(),
            url.masked(),
            url.secret().map(str::to_owned),
            reference.clone(),
        );
        self.db
            .call(move |c| {
                state::sync::set_source(c, &a, &m, secret.as_deref(), &r, None, submodules)
            })
            .await?;
        self.record_run(app, url, target, reference, submodules, "create", false)
            .await
    }

    /// `git:sync APP [URL] [--ref REF] [--submodules|--no-submodules]`:
    /// check, then queue a sync from `url` (default: the app's source) at
    /// `reference` (default: the source's ref, or main), fetching
    /// submodules when `submodules` says so (default: the source's
    /// setting, or not).
    pub async fn prepare_sync(
        &self,
        actor: &Actor,
        app: &AppName,
        url: Option<&str>,
        reference: Option<&str>,
        submodules: Option<bool>,
    ) -> Result<PreparedSync, ServiceError> {
        let mut detail = url.map(crate::sync::url::mask_text).unwrap_or_default();
        match submodules {
            Some(true) => detail.push_str(" --submodules"),
            Some(false) => detail.push_str(" --no-submodules"),
            None => {}
        }
        let detail = detail.trim_start().to_owned();
        self.audited(actor, "git:sync", Some(app), detail, async {
            self.app(actor, app, Access::Manage).await?;
            // A path on this server can name another app's repository: only
            // admins choose one (a stored one, an admin chose).
            let is_file = url.is_some_and(|u| u.trim_start().starts_with("file:"));
            if is_file && !actor.is_admin() {
                return Err(ServiceError::Forbidden(
                    "only admins can sync from file:// URLs".into(),
                ));
            }
            self.prepare_unchecked(app, url, reference, submodules, "manual")
                .await
        })
        .await
    }

    async fn prepare_unchecked(
        &self,
        app: &AppName,
        url: Option<&str>,
        reference: Option<&str>,
        submodules: Option<bool>,
        trigger: &str,
    ) -> Result<PreparedSync, ServiceError> {
        let a = app.clone();
        let stored = self.db.call(move |c| state::sync::source(c, &a)).await?;
        let stored_submodules = stored.as_ref().is_some_and(|s| s.submodules);
        let submodules = submodules.unwrap_or(stored_submodules);
        let submodules_changed = stored.is_some() && submodules != stored_submodules;
        let reference = match reference {
            Some(r) => syncing::parse_ref(r).map_err(ServiceError::Invalid)?,
            None => stored
                .as_ref()
                .map(|s| s.reference.clone())
                .unwrap_or_else(|| "refs/heads/main".into()),
        };
        let (url, target, remember) = match (url, &stored) {
            (Some(u), _) => {
                let (url, target) = self.check_url(u).await?;
                let same = stored.as_ref().is_some_and(|s| s.url == url.masked());
                (
                    url,
                    target,
                    !same
                        || stored.as_ref().map(|s| &s.reference) != Some(&reference)
                        || stored_submodules != submodules,
                )
            }
            (None, Some(s)) => {
                let url = SourceUrl::from_stored(&s.url, s.credentials.as_deref())
                    .map_err(|e| ServiceError::Invalid(format!("refused: {e}")))?;
                let target = self
                    .syncer()?
                    .policy
                    .check(&url)
                    .await
                    .map_err(|e| ServiceError::Invalid(format!("refused: {e}")))?;
                (
                    url,
                    target,
                    s.reference != reference || s.submodules != submodules,
                )
            }
            (None, None) => {
                return Err(ServiceError::Invalid(format!(
                    "{app} has no source URL: give one (git:sync {app} https://HOST/REPO.git)"
                )))
            }
        };
        let mut prep = self
            .record_run(app, url, target, reference, submodules, trigger, remember)
            .await?;
        prep.submodules_changed = submodules_changed;
        Ok(prep)
    }

    #[allow(clippy::too_many_arguments)]
    async fn record_run(
        &self,
        app: &AppName,
        url: SourceUrl,
        target: Target,
        reference: String,
        submodules: bool,
        trigger: &str,
        remember: bool,
    ) -> Result<PreparedSync, ServiceError> {
        let (a, m, r, t) = (
            app.clone(),
            url.masked(),
            reference.clone(),
            trigger.to_owned(),
        );
        let run = self
            .db
            .call(move |c| state::sync::create_run(c, &a, &m, &r, &t))
            .await?;
        Ok(PreparedSync {
            app: app.clone(),
            url,
            target,
            reference,
            submodules,
            submodules_changed: false,
            remember,
            run,
        })
    }

    /// Run a prepared sync to its end; progress goes to `tx` as it
    /// happens. The record says how it ended; so does the result.
    pub async fn run_sync(
        &self,
        actor: &Actor,
        prep: PreparedSync,
        tx: Option<UnboundedSender<String>>,
    ) -> Result<SyncRun, ServiceError> {
        let app = prep.app.clone();
        let detail = format!(
            "sync #{} from {} {}",
            prep.run.id,
            prep.url.masked(),
            syncing::short_ref(&prep.reference)
        );
        let id = prep.run.id;
        self.audited(actor, "git:sync:run", Some(&app), detail, async {
            let mut out = Out {
                tx,
                lines: Vec::new(),
                made: None,
            };
            let result = self.sync_steps(actor, &prep, &mut out).await;
            let a = app.clone();
            if let Err(reason) = &result {
                let r = reason.clone();
                let _ = self
                    .db
                    .call(move |c| state::sync::fail_run(c, id, &r))
                    .await;
                out.say(format!(" !     sync #{id} failed: {reason}"));
                out.say(format!("       sync state: {}", SyncState::Failed.as_str()));
                out.say(format!("       {app} keeps serving its live release"));
            }
            if let Some(v) = out.made {
                self.prepend_build_log(&app, v, &out.lines);
            }
            self.drop_sync_ref(&app, id).await;
            let run = self
                .db
                .call(move |c| state::sync::run(c, &a, id))
                .await?
                .ok_or_else(|| ServiceError::Internal("the sync record is gone".into()))?;
            match result {
                Ok(_) => Ok(run),
                Err(reason) => Err(ServiceError::Invalid(format!(
                    "sync #{id} failed: {reason}"
                ))),
            }
        })
        .await
    }

    async fn set_state(&self, id: i64, state: SyncState, out: &mut Out) {
        let s = state.as_str();
        if let Err(e) = self
            .db
            .call(move |c| state::sync::set_state(c, id, s))
            .await
        {
            tracing::warn!(error = %e, "cannot record a sync state");
        }
        out.say(format!("       sync state: {s}"));
    }

    /// The steps; Ok(release) when live, Err(reason) otherwise.
    async fn sync_steps(
        &self,
        actor: &Actor,
        prep: &PreparedSync,
        out: &mut Out,
    ) -> Result<Option<u32>, String> {
        let syncer = self.syncer().map_err(|e| e.to_string())?;
        let (app, id) = (&prep.app, prep.run.id);
        let short = syncing::short_ref(&prep.reference);
        out.say(format!(
            "-----> Sync #{id} of {app} from {} ({short})",
            prep.url.masked()
        ));
        out.say(format!("       sync state: {}", SyncState::Queued.as_str()));

        // fetching
        self.set_state(id, SyncState::Fetching, out).await;
        out.say(format!("-----> Fetching {} {short}", prep.url.masked()));
        let repo = self.platform.repos.path(app);
        let dest = format!("refs/cygni/sync/{id}");
        let mut fetched = Vec::new();
        let result = syncer
            .fetcher
            .fetch(
                &prep.url,
                prep.target.pinned,
                &repo,
                &prep.reference,
                &dest,
                |l| fetched.push(l),
            )
            .await;
        for l in fetched {
            out.say(format!("       {l}"));
        }
        if let Err(e) = result {
            return Err(format!(
                "cannot fetch {short} from {}: {e}",
                prep.url.masked()
            ));
        }
        if prep.submodules {
            self.fetch_submodules(&syncer, prep, &repo, &dest, out)
                .await?;
        }

        // analysing
        self.set_state(id, SyncState::Analysing, out).await;
        let a = analyse(&repo, &dest).await?;
        let sha = a.sha.clone();
        let s = sha.clone();
        let _ = self.db.call(move |c| state::sync::set_sha(c, id, &s)).await;
        out.say(format!(
            "-----> Analysing {} \"{}\"",
            &sha[..sha.len().min(7)],
            a.summary
        ));
        out.say(format!(
            "       files: {}",
            if a.notable.is_empty() {
                "(none of Procfile, Dockerfile, package.json, requirements.txt, go.mod)".into()
            } else {
                a.notable.join(", ")
            }
        ));

        let a2 = app.clone();
        let record = self
            .db
            .call(move |c| state::apps::get(c, &a2))
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("app not found: {app}"))?;
        let branch = record.deploy_branch.unwrap_or_else(|| "main".to_owned());
        let a3 = app.clone();
        let live = self
            .db
            .call(move |c| state::releases::live(c, &a3))
            .await
            .map_err(|e| e.to_string())?;
        let head = branch_head(&repo, &branch).await;
        let release = if head.as_deref() == Some(sha.as_str())
            && live.as_ref().and_then(|r| r.sha.as_deref()) == Some(sha.as_str())
        {
            // Nothing moved: a push would be a no-op, and the app already
            // serves this commit. (A push of the same commit runs no hook, so
            // a changed --submodules is built with the next commit.)
            let v = live.map(|r| r.version);
            out.say(format!(
                "-----> {branch} is already at {}; nothing to deploy",
                &sha[..7.min(sha.len())]
            ));
            if prep.submodules_changed {
                out.say(format!(
                    "       --{}submodules is kept: it applies from the next commit {short} gets",
                    if prep.submodules { "" } else { "no-" }
                ));
            }
            v
        } else {
            // building → deploying → healthy, read from the pipeline's lines.
            self.set_state(id, SyncState::Building, out).await;
            let mut made: Option<u32> = None;
            let mut reached = SyncState::Building;
            let mut lines = Vec::new();
            let mut last_refusal = None;
            let tx = out.tx.clone();
            let pushed = syncer
                .push
                .push(
                    actor,
                    LocalPush {
                        app,
                        repo: &repo,
                        from: &repo,
                        src: &sha,
                        branch: &branch,
                        force: true,
                    },
                    |line| {
                        if let Some(tx) = &tx {
                            let _ = tx.send(format!("{line}\n"));
                        }
                        if let Some(reason) = line.strip_prefix(" !     ") {
                            last_refusal = Some(reason.trim().to_owned());
                        }
                        let marked = syncing::state_of_line(&line);
                        lines.push(line);
                        if let Some((state, version)) = marked {
                            if made.is_none() {
                                made = version;
                            }
                            if state > reached {
                                reached = state;
                                lines.push(format!("       sync state: {}", state.as_str()));
                                if let Some(tx) = &tx {
                                    let _ =
                                        tx.send(format!("       sync state: {}\n", state.as_str()));
                                }
                            }
                        }
                    },
                )
                .await;
            // The states the pipeline passed, recorded in order.
            for s in [SyncState::Deploying, SyncState::Healthy] {
                if reached >= s {
                    let st = s.as_str();
                    let _ = self
                        .db
                        .call(move |c| state::sync::set_state(c, id, st))
                        .await;
                }
            }
            // Keep the pipeline's lines in the sync's log without sending
            // them twice.
            out.lines.extend(lines);
            out.made = made;
            if let Some(v) = made {
                let _ = self
                    .db
                    .call(move |c| state::sync::set_release(c, id, v))
                    .await;
            }
            let ok = pushed?;
            if !ok {
                return Err(
                    last_refusal.unwrap_or_else(|| "the deploy failed: see the output".into())
                );
            }
            made
        };

        // live: the branch moved and the release is the live one.
        let a4 = app.clone();
        let live = self
            .db
            .call(move |c| state::releases::live(c, &a4))
            .await
            .map_err(|e| e.to_string())?;
        let version = match (release, live) {
            (Some(v), Some(l)) if l.version == v => v,
            _ => return Err("the release did not become live".into()),
        };
        if prep.remember {
            let (a5, m, secret, r, seen, subs) = (
                app.clone(),
                prep.url.masked(),
                prep.url.secret().map(str::to_owned),
                prep.reference.clone(),
                a.remote_target.clone(),
                prep.submodules,
            );
            self.db
                .call(move |c| {
                    state::sync::set_source(c, &a5, &m, secret.as_deref(), &r, Some(&seen), subs)
                })
                .await
                .map_err(|e| e.to_string())?;
        } else {
            let (a5, seen) = (app.clone(), a.remote_target.clone());
            let _ = self
                .db
                .call(move |c| state::sync::checked(c, &a5, Some(&seen)))
                .await;
        }
        let _ = self
            .db
            .call(move |c| state::sync::set_release(c, id, version))
            .await;
        self.set_state(id, SyncState::Live, out).await;
        out.say(format!(
            "-----> Sync #{id} live: {app} v{version} ({}) at {}",
            &sha[..7.min(sha.len())],
            self.platform.app_url(app)
        ));
        Ok(Some(version))
    }

    /// `--submodules`: fetch the commits the fetched commit's submodules
    /// record (https only, the same address rule, bounded; see
    /// `sync::submodules`). A failure names the submodule and leaves no
    /// submodule refs behind.
    async fn fetch_submodules(
        &self,
        syncer: &Syncer,
        prep: &PreparedSync,
        repo: &Path,
        dest: &str,
        out: &mut Out,
    ) -> Result<(), String> {
        let (r, d) = (repo.to_owned(), dest.to_owned());
        let sha = tokio::task::spawn_blocking(move || {
            let repo = git2::Repository::open_bare(&r).ok()?;
            let commit = repo.find_reference(&d).ok()?.peel_to_commit().ok()?;
            Some(commit.id().to_string())
        })
        .await
        .ok()
        .flatten()
        .ok_or_else(|| "the fetch brought no commit".to_owned())?;
        let mut lines = Vec::new();
        let result = submodules::fetch_all(
            &syncer.fetcher,
            &syncer.policy,
            repo,
            &prep.url,
            &sha,
            |l| lines.push(l),
        )
        .await;
        for l in lines {
            if l.starts_with("-----> ") {
                out.say(l);
            } else {
                out.say(format!("       {l}"));
            }
        }
        let ready = result?;
        out.say(format!("       submodules: {ready} ready"));
        Ok(())
    }

    /// Put the sync's own lines (fetch, analyse, states) at the top of the
    /// release's build log, so `logs --build` tells the whole story.
    fn prepend_build_log(&self, app: &AppName, version: u32, lines: &[String]) {
        let Ok(writer) = self.platform.logs.build_log(app, version) else {
            return;
        };
        let path = writer.path().to_owned();
        drop(writer);
        let existing = std::fs::read(&path).unwrap_or_default();
        let text = String::from_utf8_lossy(&existing);
        let mut head = String::new();
        for l in lines {
            // The pipeline's lines are already in the log.
            if !text.contains(l.as_str()) {
                head.push_str(l);
                head.push('\n');
            }
        }
        let tmp = path.with_extension("log.tmp");
        let mut all = head.into_bytes();
        all.extend_from_slice(&existing);
        if std::fs::write(&tmp, &all).is_ok() {
            let _ = std::fs::rename(&tmp, &path);
        }
    }

    async fn drop_sync_ref(&self, app: &AppName, id: i64) {
        let repo = self.platform.repos.path(app);
        let _ = tokio::task::spawn_blocking(move || {
            let r = git2::Repository::open_bare(repo).ok()?;
            let mut reference = r.find_reference(&format!("refs/cygni/sync/{id}")).ok()?;
            reference.delete().ok()
        })
        .await;
    }

    /// `git:sync APP --every 10m|off`. Returns the interval set.
    pub async fn set_sync_every(
        &self,
        actor: &Actor,
        app: &AppName,
        every: &str,
    ) -> Result<Option<Duration>, ServiceError> {
        self.audited(actor, "git:sync:every", Some(app), every.to_owned(), async {
            self.app(actor, app, Access::Manage).await?;
            let syncer = self.syncer()?;
            let every = syncing::parse_every(every, syncer.min_every).map_err(ServiceError::Invalid)?;
            let (a, secs) = (app.clone(), every.map(|d| d.as_secs() as i64));
            self.db
                .call(move |c| state::sync::set_every(c, &a, secs))
                .await
                .map_err(|e| match e {
                    state::StateError::NotFound(_) => ServiceError::Invalid(format!(
                        "{app} has no source URL: sync it from one first (git:sync {app} https://HOST/REPO.git)"
                    )),
                    other => other.into(),
                })?;
            Ok(every)
        })
        .await
    }

    /// One sync's record.
    pub async fn sync_run(
        &self,
        actor: &Actor,
        app: &AppName,
        id: i64,
    ) -> Result<SyncRun, ServiceError> {
        self.app(actor, app, Access::Read).await?;
        let a = app.clone();
        self.db
            .call(move |c| state::sync::run(c, &a, id))
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("no sync {id} of {app}")))
    }

    /// The syncs that made releases, by release number (for `releases`).
    pub async fn syncs_by_release(
        &self,
        actor: &Actor,
        app: &AppName,
    ) -> Result<std::collections::HashMap<u32, SyncRun>, ServiceError> {
        self.app(actor, app, Access::Read).await?;
        let a = app.clone();
        Ok(self
            .db
            .call(move |c| state::sync::runs_by_release(c, &a))
            .await?)
    }

    /// The app's source and its last sync, for `apps:info`.
    pub async fn sync_info(
        &self,
        actor: &Actor,
        app: &AppName,
    ) -> Result<(Option<state::sync::Source>, Option<SyncRun>), ServiceError> {
        self.app(actor, app, Access::Read).await?;
        let a = app.clone();
        Ok(self
            .db
            .call(move |c| Ok((state::sync::source(c, &a)?, state::sync::last_run(c, &a)?)))
            .await?)
    }

    /// Scheduled syncs: every second, check the apps that are due; a
    /// remote ref that moved since the last look is synced.
    pub async fn run_sync_schedule(self: Arc<Self>, shutdown: CancellationToken) {
        if self.sync.get().is_none() {
            return;
        }
        match self.db.call(state::sync::fail_unfinished).await {
            Ok(n) if n > 0 => {
                tracing::info!(n, "syncs left unfinished by the last run marked failed")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot close unfinished syncs"),
        }
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let due = match self.db.call(|c| state::sync::scheduled(c)).await {
                Ok(list) => list,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the sync schedule");
                    continue;
                }
            };
            let now = state::now();
            for (app, source) in due {
                let Some(every) = source.every_secs else {
                    continue;
                };
                if !syncing::due(source.last_checked_at, every, now) {
                    continue;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = self.scheduled_check(&app, &source) => {}
                }
            }
        }
    }

    async fn scheduled_check(&self, app: &AppName, source: &state::sync::Source) {
        let Ok(syncer) = self.syncer() else { return };
        let a = app.clone();
        let _ = self
            .db
            .call(move |c| state::sync::checked(c, &a, None))
            .await;
        let Ok(url) = SourceUrl::from_stored(&source.url, source.credentials.as_deref()) else {
            return;
        };
        let seen = match syncer.policy.check(&url).await {
            Ok(t) => {
                syncer
                    .fetcher
                    .remote_sha(&url, t.pinned, &source.reference)
                    .await
            }
            Err(e) => {
                tracing::warn!(%app, error = %e, "scheduled sync refused");
                return;
            }
        };
        let sha = match seen {
            Ok(Some(sha)) => sha,
            Ok(None) => {
                tracing::warn!(%app, r#ref = %source.reference, "scheduled sync: the remote has no such ref");
                return;
            }
            Err(e) => {
                tracing::warn!(%app, error = %e, "scheduled sync: cannot reach the remote");
                return;
            }
        };
        if source.last_seen_sha.as_deref() == Some(sha.as_str()) {
            return;
        }
        tracing::info!(%app, %sha, "scheduled sync: the remote moved");
        let (a, s) = (app.clone(), sha.clone());
        let _ = self
            .db
            .call(move |c| state::sync::checked(c, &a, Some(&s)))
            .await;
        let actor = scheduler_actor();
        match self
            .prepare_unchecked(app, None, None, None, "schedule")
            .await
        {
            Ok(prep) => {
                if let Err(e) = self.run_sync(&actor, prep, None).await {
                    tracing::warn!(%app, error = %e, "scheduled sync failed");
                }
            }
            Err(e) => tracing::warn!(%app, error = %e, "scheduled sync refused"),
        }
    }
}

/// What analysing a fetched commit found.
struct Analysis {
    sha: String,
    /// What the remote ref points at (a tag object for annotated tags),
    /// for comparing with `ls-remote` later.
    remote_target: String,
    summary: String,
    notable: Vec<String>,
}

async fn analyse(repo: &Path, dest: &str) -> Result<Analysis, String> {
    let (repo, dest) = (repo.to_owned(), dest.to_owned());
    tokio::task::spawn_blocking(move || {
        let r = git2::Repository::open_bare(&repo)
            .map_err(|_| "cannot open the app's repository".to_owned())?;
        let reference = r
            .find_reference(&dest)
            .map_err(|_| "the fetch brought no ref".to_owned())?;
        let remote_target = reference
            .target()
            .map(|o| o.to_string())
            .unwrap_or_default();
        let commit = reference
            .peel_to_commit()
            .map_err(|_| "the ref does not point at a commit".to_owned())?;
        let tree = commit
            .tree()
            .map_err(|_| "the commit has no tree".to_owned())?;
        let notable = [
            "Procfile",
            "Dockerfile",
            "cygni.toml",
            "package.json",
            "requirements.txt",
            "go.mod",
            "nixpacks.toml",
        ]
        .iter()
        .filter(|n| tree.get_name(n).is_some())
        .map(|n| n.to_string())
        .collect();
        let summary: String = commit
            .summary()
            .ok()
            .flatten()
            .unwrap_or("")
            .chars()
            .filter(|c| !c.is_control())
            .take(72)
            .collect();
        Ok(Analysis {
            sha: commit.id().to_string(),
            remote_target,
            summary,
            notable,
        })
    })
    .await
    .map_err(|e| e.to_string())?
}

async fn branch_head(repo: &Path, branch: &str) -> Option<String> {
    let (repo, name) = (repo.to_owned(), format!("refs/heads/{branch}"));
    tokio::task::spawn_blocking(move || {
        let r = git2::Repository::open_bare(repo).ok()?;
        r.refname_to_id(&name).ok().map(|o| o.to_string())
    })
    .await
    .ok()
    .flatten()
}
