//! Reconcile: make what runs match what SQLite says should run.
//!
//! ```text
//! every app in SQLite, and every app something still runs for
//!   └─ (app's lock free?) Converger::converge(Intent::Converge, desired from SQLite)
//!        start what is missing · check and admit what runs unrouted ·
//!        evict what died · retire, drain and stop what is extra
//! ```
//!
//! Idempotent: it does not know why it was called (start-up, a crash, a
//! scale change, the timer) and does not need to; when nothing differs the
//! plan is empty. An app whose lock is held (a deploy or release in
//! progress) is skipped this round: that change owns the app's instances
//! until it finishes. Apps are reconciled concurrently, so one app's slow
//! health check does not hold up the others.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use tokio_util::sync::CancellationToken;

use super::converge::ConvergeError;
use super::plan::Intent;
use super::{Platform, Progress};
use crate::names::AppName;
use crate::state;

/// How often reconcile runs on its own, by default.
pub const INTERVAL: Duration = Duration::from_secs(10);

impl Platform {
    /// One pass over every app. Errors for one app are logged and do not
    /// stop the others.
    pub async fn reconcile(&self) -> Result<(), ConvergeError> {
        let apps = self.db.call(|c| state::apps::list(c)).await?;
        let running = self
            .runtime
            .list(None)
            .await
            .map_err(|source| ConvergeError::Runtime {
                what: "listing instances".into(),
                source,
            })?;
        let mut names: BTreeSet<AppName> = apps.into_iter().map(|a| a.name).collect();
        // Apps that are gone but still have something running.
        names.extend(running.into_iter().map(|i| i.app));
        join_all(names.iter().map(|app| self.reconcile_app(app))).await;
        self.publish_routes().await
    }

    /// Converge one app, unless a change holds its lock.
    pub async fn reconcile_app(&self, app: &AppName) {
        let lock = self.app_lock(app);
        let Ok(_guard) = lock.try_lock() else {
            return;
        };
        let mut quiet = Progress::new(None);
        let result = async {
            let desired = self.converger.desired(app).await?;
            let tail = self
                .converger
                .converge(app, &Intent::Converge, &desired, None, &mut quiet)
                .await?;
            self.converger.finish(tail).await;
            Ok::<_, ConvergeError>(())
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(%app, error = %e, "reconcile failed");
        }
    }
}

/// How start-up settled a live release whose push never confirmed its ref
/// update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// git had moved the branch: nothing to do.
    Agrees,
    /// The commit was in the repository, only the ref update was lost: the
    /// branch now points at it.
    BranchMoved,
    /// The push never landed (its objects went with git's quarantine): the
    /// release the branch points at is live again, as a new release.
    RolledBack { to: u32, release: u32 },
    /// The push never landed and no earlier release can take over (the
    /// app's first push): the release stays live; the next push records it.
    LeftLive,
}

impl Platform {
    /// The daemon can die after a push's release went live but before git,
    /// which moves the branch only once the pre-receive hook has answered,
    /// did so. Then the live release and the branch disagree. At start-up,
    /// before anything is reconciled, each such release is settled one way:
    /// the branch follows when the commit is there; otherwise the release
    /// the branch points at goes live again, so that the branch, the live
    /// release and what serves agree.
    pub async fn settle_lost_ref_updates(&self) -> Vec<(AppName, Settled)> {
        let pending = match self
            .db
            .call(|c| state::releases::live_pending_refs(c))
            .await
        {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the releases waiting for their push");
                return Vec::new();
            }
        };
        let mut settled = Vec::new();
        for p in pending {
            let app = p.release.app.clone();
            match self.settle_one(&p).await {
                Ok(how) => {
                    let id = p.release.id;
                    if let Err(e) = self
                        .db
                        .call(move |c| state::releases::clear_pending_ref(c, id))
                        .await
                    {
                        tracing::warn!(%app, error = %e, "cannot clear a settled ref update");
                    }
                    settled.push((app, how));
                }
                Err(e) => {
                    tracing::error!(%app, release = p.release.version, error = %e, "cannot settle a lost ref update; the next start tries again");
                }
            }
        }
        settled
    }

    async fn settle_one(&self, p: &state::releases::PendingRef) -> Result<Settled, String> {
        let release = &p.release;
        let (app, version) = (&release.app, release.version);
        let Some(sha) = release.sha.clone() else {
            return Ok(Settled::Agrees);
        };
        // A preview deploys a branch of its parent's repository.
        let a = app.clone();
        let repo = self
            .db
            .call(move |c| state::previews::by_app(c, &a))
            .await
            .map_err(|e| e.to_string())?
            .map_or_else(|| app.clone(), |preview| preview.parent);
        let head = self.branch_head(&repo, &p.refname).await;
        if head.as_deref() == Some(sha.as_str()) {
            return Ok(Settled::Agrees);
        }
        let branch = p.refname.strip_prefix("refs/heads/").unwrap_or(&p.refname);
        // The branch still where the push found it, and the commit in the
        // repository proper: only the ref update is missing.
        if head == p.old && self.move_branch_to(&repo, &p.refname, &sha).await? {
            tracing::warn!(%app, release = version, %branch, %sha, "v{version} went live but git never moved {branch}; {branch} now points at its commit");
            return Ok(Settled::BranchMoved);
        }
        let a = app.clone();
        let history = self
            .db
            .call(move |c| state::releases::list(c, &a, 1000))
            .await
            .map_err(|e| e.to_string())?;
        let before = history.iter().find(|r| {
            r.version < version
                && r.status == state::releases::Status::Superseded
                && r.sha.is_some()
                && r.sha == head
        });
        let Some(before) = before else {
            tracing::warn!(%app, release = version, %branch, "v{version} is live but its push never reached {branch}, and no earlier release matches {branch}; v{version} stays live, and the next push to {branch} records it");
            return Ok(Settled::LeftLive);
        };
        let to = before.version;
        let mut quiet = Progress::new(None);
        let made = self
            .rollback_as(
                app,
                Some(to),
                |v| format!("Rollback to v{v}: the push of v{version} never reached {branch}"),
                &mut quiet,
            )
            .await
            .map_err(|e| e.to_string())?;
        tracing::warn!(%app, release = version, %branch, "v{version} went live but its push never reached {branch}; v{made} runs v{to}'s build again, which {branch} points at");
        Ok(Settled::RolledBack { to, release: made })
    }

    /// Point `refname` at `sha` when that commit is in the repository;
    /// false when it is not.
    async fn move_branch_to(
        &self,
        app: &AppName,
        refname: &str,
        sha: &str,
    ) -> Result<bool, String> {
        let path = self.repos.path(app);
        let (refname, sha) = (refname.to_owned(), sha.to_owned());
        tokio::task::spawn_blocking(move || {
            let repo = git2::Repository::open_bare(path).map_err(|e| e.to_string())?;
            let Ok(oid) = git2::Oid::from_str(&sha) else {
                return Ok(false);
            };
            if repo.find_commit(oid).is_err() {
                return Ok(false);
            }
            repo.reference(&refname, oid, true, "cygni: the push's ref update was lost")
                .map_err(|e| e.to_string())?;
            Ok(true)
        })
        .await
        .map_err(|e| e.to_string())?
    }
}

/// Reconcile now, then every [`INTERVAL`] until `shutdown`.
pub async fn run(platform: Arc<Platform>, shutdown: CancellationToken) {
    run_every(platform, shutdown, INTERVAL).await
}

/// Reconcile now, then every `interval` until `shutdown`.
pub async fn run_every(platform: Arc<Platform>, shutdown: CancellationToken, interval: Duration) {
    let watcher = tokio::spawn(
        platform
            .converger
            .clone()
            .watch_exits(shutdown.child_token()),
    );
    loop {
        if let Err(e) = platform.reconcile().await {
            tracing::warn!(error = %e, "reconcile pass failed");
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(interval) => {}
        }
    }
    let _ = watcher.await;
}
