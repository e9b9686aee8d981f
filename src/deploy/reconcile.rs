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
