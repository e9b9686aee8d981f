//! Changes to a running app that need no build: config releases,
//! rollbacks, scaling, restarts, stop/start and one-off commands.
//!
//! ```text
//! config:set / config:unset ──► store vars ──► new release (live artifact, new env) ─┐
//! rollback [vN]             ──► restore vN's vars ──► new release (vN's artifact) ────┤
//!                                                         start_and_switch (zero downtime)
//! ps:scale   ──► store formation ──► converge (start, check, admit / retire, drain, stop)
//! ps:restart ──► converge with Intent::Restart (surge one web, replace each in turn)
//! ps:stop / ps:start ──► apps.stopped ──► converge
//! ```
//!
//! Every operation takes the app's deploy lock, so it never interleaves
//! with a deploy or with another operation on the same app, and every one
//! changes what runs only through the converger, with the live release's
//! own health check.

use std::collections::BTreeMap;
use std::time::Duration;

use super::plan::Intent;
use super::{converge_failure, fail, internal, AppGuard, DeployError, Platform, Progress, Stage};
use crate::names::{AppName, ProcessType};
use crate::runtime::{Attach, InstanceState, OneOffSpec};
use crate::state::{self, formation, releases, releases::Release, releases::Status};

/// What a config change or rollback did.
pub enum Outcome {
    /// A new release went live.
    Released(u32),
    /// Stored only (`--no-restart`, or nothing deployed yet).
    Stored,
}

impl Platform {
    async fn live_release(&self, app: &AppName) -> Result<Option<Release>, DeployError> {
        let a = app.clone();
        self.db
            .call(move |c| releases::live(c, &a))
            .await
            .map_err(|e| internal(Stage::Release, e))
    }

    /// A new release from `base`'s build with `env`, started with zero
    /// downtime and `base`'s own health check. Returns once it serves; the
    /// old instances drain and stop in the background, under `guard`.
    async fn release_from(
        &self,
        base: &Release,
        env: BTreeMap<String, String>,
        description: String,
        run_release_phase: bool,
        guard: &AppGuard,
        progress: &mut Progress,
    ) -> Result<u32, DeployError> {
        let (a, sha, d) = (base.app.clone(), base.sha.clone(), description.clone());
        let mut release = self
            .db
            .call(move |c| {
                releases::create(
                    c,
                    releases::NewRelease {
                        app: &a,
                        sha: sha.as_deref(),
                        description: &d,
                        status: Status::Releasing,
                    },
                )
            })
            .await
            .map_err(|e| internal(Stage::Release, e))?;
        release.builder = base.builder.clone();
        release.artifact = base.artifact.clone();
        release.image_digest = base.image_digest.clone();
        release.processes = base.processes.clone();
        release.check = base.check.clone();
        release.limits = crate::limits::Limits::from_vars(&env)
            .map_err(|e| fail(Stage::Release, e.to_string()))?;
        release.env = env;
        // A build from before the registry was on is published now: every
        // image release then has a digest a cluster can pull.
        if let (None, Some(artifact)) = (&release.image_digest, &release.artifact) {
            match self
                .publish(&release.app, release.version, artifact, progress)
                .await
            {
                Ok(digest) => release.image_digest = digest,
                Err(e) => {
                    let (id, stage, msg) = (release.id, e.stage.as_str(), e.message.clone());
                    let _ = self
                        .db
                        .call(move |c| releases::fail(c, id, stage, &msg))
                        .await;
                    return Err(e);
                }
            }
        }
        let snapshot = release.clone();
        self.db
            .call(move |c| releases::set_snapshot(c, &snapshot))
            .await
            .map_err(|e| internal(Stage::Release, e))?;
        progress
            .step(format!("{description}: releasing v{}", release.version))
            .await;
        match self
            .start_and_switch(&release, run_release_phase, progress)
            .await
        {
            Ok(tail) => {
                self.finish_in_background(tail, guard.clone());
                Ok(release.version)
            }
            Err(e) => {
                let (id, stage, msg) = (release.id, e.stage.as_str(), e.message.clone());
                let _ = self
                    .db
                    .call(move |c| releases::fail(c, id, stage, &msg))
                    .await;
                Err(e)
            }
        }
    }

    /// Store config changes and, unless `restart` is false or nothing is
    /// deployed yet, release them (no rebuild, zero downtime). When the
    /// release fails, the stored vars go back to what they were, so the
    /// config and the live release never disagree.
    pub async fn change_config(
        &self,
        app: &AppName,
        set: BTreeMap<String, String>,
        unset: Vec<String>,
        restart: bool,
        progress: &mut Progress,
    ) -> Result<Outcome, DeployError> {
        let guard = self.lock_app(app, progress).await;
        let a = app.clone();
        let before = self
            .db
            .call(move |c| state::config_vars::get_all(c, &a))
            .await
            .map_err(|e| internal(Stage::Release, e))?;
        let a = app.clone();
        let (s, u) = (set.clone(), unset.clone());
        self.db
            .call(move |c| state::config_vars::update(c, &a, &s, &u))
            .await
            .map_err(|e| internal(Stage::Release, e))?;
        let live = self.live_release(app).await?;
        let running = restart && !self.is_stopped(app).await;
        let Some(live) = live.filter(|_| running) else {
            return Ok(Outcome::Stored);
        };
        let a = app.clone();
        let env = self
            .db
            .call(move |c| state::config_vars::get_all(c, &a))
            .await
            .map_err(|e| internal(Stage::Release, e))?;
        let mut names: Vec<&str> = set.keys().map(String::as_str).collect();
        let verb = if names.is_empty() { "Unset" } else { "Set" };
        names.extend(unset.iter().map(String::as_str));
        let description = format!("{verb} {}", names.join(", "));
        match self
            .release_from(&live, env, description, true, &guard, progress)
            .await
        {
            Ok(v) => Ok(Outcome::Released(v)),
            Err(e) => {
                self.restore_config(app, &before).await;
                Err(e)
            }
        }
    }

    async fn restore_config(&self, app: &AppName, vars: &BTreeMap<String, String>) {
        let a = app.clone();
        let vars = vars.clone();
        let r = self
            .db
            .call(move |c| {
                let now = state::config_vars::get_all(c, &a)?;
                let gone: Vec<String> = now
                    .keys()
                    .filter(|k| !vars.contains_key(*k))
                    .cloned()
                    .collect();
                state::config_vars::update(c, &a, &vars, &gone)
            })
            .await;
        if let Err(e) = r {
            tracing::error!(%app, error = %e, "could not restore config after a failed release");
        }
    }

    /// Roll back to `version` (default: the release before the live one):
    /// a new release with that release's build and config, no build.
    pub async fn rollback(
        &self,
        app: &AppName,
        version: Option<u32>,
        progress: &mut Progress,
    ) -> Result<u32, DeployError> {
        self.rollback_as(app, version, |v| format!("Rollback to v{v}"), progress)
            .await
    }

    /// [`Platform::rollback`], with the new release described by
    /// `describe(target version)`.
    pub(super) async fn rollback_as(
        &self,
        app: &AppName,
        version: Option<u32>,
        describe: impl FnOnce(u32) -> String,
        progress: &mut Progress,
    ) -> Result<u32, DeployError> {
        let guard = self.lock_app(app, progress).await;
        let a = app.clone();
        let history = self
            .db
            .call(move |c| releases::list(c, &a, 1000))
            .await
            .map_err(|e| internal(Stage::Release, e))?;
        let live = history.iter().find(|r| r.status == Status::Live);
        let target = match version {
            Some(v) => history
                .iter()
                .find(|r| r.version == v)
                .ok_or_else(|| fail(Stage::Release, format!("{app} has no release v{v}")))?,
            None => {
                let live_v = live.map(|r| r.version).unwrap_or(u32::MAX);
                history
                    .iter()
                    .find(|r| r.version < live_v && r.status == Status::Superseded)
                    .ok_or_else(|| fail(Stage::Release, "no earlier release to roll back to"))?
            }
        };
        if target.status == Status::Failed || target.artifact.is_none() {
            return Err(fail(
                Stage::Release,
                format!("v{} failed and cannot be rolled back to", target.version),
            ));
        }
        if let Some(crate::build::Artifact::Slug { dir }) = &target.artifact {
            if !dir.is_dir() {
                return Err(fail(
                    Stage::Release,
                    format!(
                        "v{}'s build is no longer kept (the last five are); redeploy its commit instead",
                        target.version
                    ),
                ));
            }
        }
        let description = describe(target.version);
        let version = self
            .release_from(
                target,
                target.env.clone(),
                description,
                false,
                &guard,
                progress,
            )
            .await?;
        // The config vars follow the release: the next config:set builds on
        // what now runs.
        let a = app.clone();
        let env = target.env.clone();
        let _ = self
            .db
            .call(move |c| {
                let now = state::config_vars::get_all(c, &a)?;
                let gone: Vec<String> = now
                    .keys()
                    .filter(|k| !env.contains_key(*k))
                    .cloned()
                    .collect();
                state::config_vars::update(c, &a, &env, &gone)
            })
            .await;
        Ok(version)
    }

    /// Store new instance counts and bring the running set to them. New web
    /// instances pass their health check before the proxy sends them work.
    pub async fn scale(
        &self,
        app: &AppName,
        changes: BTreeMap<ProcessType, u32>,
        progress: &mut Progress,
    ) -> Result<(), DeployError> {
        let _guard = self.lock_app(app, progress).await;
        let live = self.live_release(app).await?;
        if let Some(live) = &live {
            if let Some(p) = changes.keys().find(|p| !live.processes.contains_key(*p)) {
                let known: Vec<&str> = live.processes.keys().map(ProcessType::as_str).collect();
                return Err(fail(
                    Stage::Start,
                    format!(
                        "{app} has no process type {p} (it has: {})",
                        known.join(", ")
                    ),
                ));
            }
        }
        let a = app.clone();
        let c2 = changes.clone();
        self.db
            .call(move |c| formation::set(c, &a, &c2))
            .await
            .map_err(|e| internal(Stage::Start, e))?;
        if live.is_some() && !self.is_stopped(app).await {
            self.converge(app, progress).await?;
        }
        Ok(())
    }

    async fn is_stopped(&self, app: &AppName) -> bool {
        let a = app.clone();
        self.db
            .call(move |c| state::apps::is_stopped(c, &a))
            .await
            .unwrap_or(false)
    }

    /// Bring the app to what SQLite says (formation, stopped), through
    /// the converger: new web instances pass the live release's check
    /// before they are routed; extra ones are retired, drained, stopped.
    async fn converge(&self, app: &AppName, progress: &mut Progress) -> Result<(), DeployError> {
        self.converge_with(app, &Intent::Converge, progress).await
    }

    async fn converge_with(
        &self,
        app: &AppName,
        intent: &Intent,
        progress: &mut Progress,
    ) -> Result<(), DeployError> {
        let desired = self
            .converger
            .desired(app)
            .await
            .map_err(|e| internal(Stage::Start, e))?;
        let tail = self
            .converger
            .converge(app, intent, &desired, None, progress)
            .await
            .map_err(converge_failure)?;
        self.converger.finish(tail).await;
        Ok(())
    }

    /// Restart an app's instances (of one type, or all) without downtime:
    /// for `web`, one extra instance starts and passes its health check
    /// first, then each instance is replaced in turn, then the extra goes.
    /// Returns how many instances were restarted.
    pub async fn restart(
        &self,
        app: &AppName,
        only: Option<&ProcessType>,
        progress: &mut Progress,
    ) -> Result<usize, DeployError> {
        let _guard = self.lock_app(app, progress).await;
        let Some(live) = self.live_release(app).await? else {
            return Err(fail(Stage::Start, format!("{app} has nothing deployed")));
        };
        let count = self
            .runtime
            .list(Some(app))
            .await
            .map_err(|e| internal(Stage::Start, e))?
            .iter()
            .filter(|i| {
                i.release == live.version
                    && i.state != InstanceState::Stopped
                    && only.is_none_or(|p| &i.process == p)
            })
            .count();
        let intent = Intent::Restart {
            only: only.cloned(),
        };
        self.converge_with(app, &intent, progress).await?;
        Ok(count)
    }

    /// `ps:stop` (true) and `ps:start` (false): the switch survives
    /// restarts and deploys; a stopped app answers 503.
    pub async fn set_stopped(
        &self,
        app: &AppName,
        stopped: bool,
        progress: &mut Progress,
    ) -> Result<(), DeployError> {
        let _guard = self.lock_app(app, progress).await;
        let a = app.clone();
        self.db
            .call(move |c| state::apps::set_stopped(c, &a, stopped))
            .await
            .map_err(|e| internal(Stage::Start, e))?;
        self.converge(app, progress).await
    }

    /// Run a one-off command in the live release's build and env,
    /// attached to the client (stdin, raw output, a pty if asked).
    pub async fn run_one_off(
        &self,
        app: &AppName,
        argv: Vec<String>,
        io: Attach,
        timeout: Duration,
    ) -> Result<i32, DeployError> {
        let Some(live) = self.live_release(app).await? else {
            return Err(fail(
                Stage::Start,
                format!("{app} has nothing deployed to run in"),
            ));
        };
        let Some(artifact) = live.artifact.clone() else {
            return Err(fail(Stage::Start, "the live release has nothing to run"));
        };
        let program = argv.first().cloned().unwrap_or_default();
        let mounts = self
            .converger
            .current_mounts(app)
            .await
            .map_err(|e| internal(Stage::Start, e))?;
        let run_as = self
            .converger
            .app_user(app)
            .await
            .map_err(|e| super::app_user_failure(Stage::Start, e))?;
        let spec = OneOffSpec {
            app: app.clone(),
            release: live.version,
            argv,
            env: live.env.clone(),
            artifact,
            timeout,
            mounts,
            run_as,
        };
        // A backend without attached one-offs (local and docker have them)
        // still runs the command, with output and exit status but no stdin,
        // unless a pty was asked for.
        let attached = if io.pty.is_none() {
            let output = io.output.clone();
            match self.runtime.run_attached(spec.clone(), io).await {
                Err(crate::runtime::RuntimeError::Unsupported { .. }) => {
                    self.runtime.run_once(spec, output).await
                }
                other => other,
            }
        } else {
            self.runtime.run_attached(spec, io).await
        };
        attached.map_err(|e| match e {
            crate::runtime::RuntimeError::Spawn { source, .. }
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                fail(
                    Stage::Start,
                    format!("{program}: command not found in {app}'s release"),
                )
            }
            other => fail(Stage::Start, other.to_string()),
        })
    }
}
