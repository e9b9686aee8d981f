//! Reconcile: make what runs match what SQLite says should run.
//!
//! ```text
//! live releases + formation (SQLite) ──┐
//!                                      ├──► start what is missing, stop what is extra ──► routes
//! runtime.list() (what actually runs) ─┘
//! ```
//!
//! Idempotent: it does not know why it was called (start-up, a crash, a
//! scale change, the timer) and does not need to. An app whose lock is held
//! (a deploy or release in progress) is skipped this round: the deploy owns
//! its instances until it finishes.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Platform, STOP_GRACE};
use crate::names::AppName;
use crate::proxy::Routes;
use crate::runtime::{Instance, InstanceId, InstanceSpec, InstanceState};
use crate::state::{self, formation, releases};

/// How often reconcile runs on its own.
pub const INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    State(#[from] state::StateError),
    #[error(transparent)]
    Runtime(#[from] crate::runtime::RuntimeError),
}

impl Platform {
    /// Rebuild the routes snapshot from SQLite and what runs, and swap it in.
    ///
    /// Every app gets `APP.DOMAIN`; its endpoints are the live release's
    /// `web` instances that are up. An app with none answers 503. Plain
    /// HTTP redirects to HTTPS for apps whose every host has a valid
    /// certificate, unless the app turned that off (`state::certs::https_apps`).
    pub async fn publish_routes(&self) -> Result<(), ReconcileError> {
        let domain = self.domain.clone();
        let (apps, live, domains, https) = self
            .db
            .call(move |c| {
                Ok((
                    state::apps::list(c)?,
                    releases::all_live(c)?,
                    state::domains::all(c)?,
                    state::certs::https_apps(c, &domain, state::now())?,
                ))
            })
            .await?;
        let instances = self.runtime.list(None).await?;
        let live_version: HashMap<&AppName, u32> =
            live.iter().map(|r| (&r.app, r.version)).collect();

        let mut builder = Routes::builder();
        for app in &apps {
            let version = live_version.get(&app.name).copied();
            let endpoints = instances
                .iter()
                .filter(|i| {
                    i.app == app.name
                        && Some(i.release) == version
                        && i.process.is_web()
                        && matches!(i.state, InstanceState::Running | InstanceState::Starting)
                        && !self.is_draining(&i.id)
                })
                .filter_map(|i| i.endpoint)
                .collect();
            let mut hosts = vec![format!("{}.{}", app.name, self.domain)];
            hosts.extend(
                domains
                    .iter()
                    .filter(|(a, _)| *a == app.name)
                    .map(|(_, h)| h.to_string()),
            );
            let redirect_https = https.contains(&app.name);
            builder = builder.app(app.name.clone(), hosts, endpoints, redirect_https);
        }
        self.routes.replace(builder.build());
        Ok(())
    }

    /// One pass over every app. Errors for one app are logged and do not
    /// stop the others.
    pub async fn reconcile(&self) -> Result<(), ReconcileError> {
        let (apps, live) = self
            .db
            .call(|c| Ok((state::apps::list(c)?, releases::all_live(c)?)))
            .await?;
        let running = self.runtime.list(None).await?;
        let known: BTreeSet<&AppName> = apps.iter().map(|a| &a.name).collect();

        // Instances of apps that no longer exist: stop them.
        let orphans: Vec<&Instance> = running.iter().filter(|i| !known.contains(&i.app)).collect();
        for i in orphans {
            tracing::info!(instance = %i.id, "stopping an instance of a removed app");
            let _ = self.runtime.stop(&i.id, STOP_GRACE).await;
        }

        for app in &apps {
            // A deploy in progress owns this app's instances.
            let lock = self.app_lock(&app.name);
            let Ok(_guard) = lock.try_lock() else {
                continue;
            };
            let release = live.iter().find(|r| r.app == app.name);
            if let Err(e) = self.reconcile_app(&app.name, release, &running).await {
                tracing::warn!(app = %app.name, error = %e, "reconcile failed");
            }
        }
        self.publish_routes().await
    }

    /// Bring one app's instances to its live release's formation (none when
    /// the app is stopped). Returns the instances it started.
    pub(super) async fn reconcile_app(
        &self,
        app: &AppName,
        release: Option<&releases::Release>,
        running: &[Instance],
    ) -> Result<Vec<Instance>, ReconcileError> {
        let mine: Vec<&Instance> = running.iter().filter(|i| &i.app == app).collect();
        let mut wanted: BTreeSet<InstanceId> = BTreeSet::new();
        let mut started = Vec::new();
        let a = app.clone();
        let stopped = self
            .db
            .call(move |c| state::apps::is_stopped(c, &a))
            .await?;

        if let (Some(release), false) = (release, stopped) {
            if let Some(artifact) = &release.artifact {
                let a = app.clone();
                let stored = self.db.call(move |c| formation::get(c, &a)).await?;
                for (process, count) in formation::desired(&stored, &release.processes) {
                    for index in 1..=count {
                        let spec = InstanceSpec {
                            app: app.clone(),
                            release: release.version,
                            process: process.clone(),
                            index,
                            command: release.processes[&process].clone(),
                            env: release.env.clone(),
                            artifact: artifact.clone(),
                        };
                        let id = spec.id();
                        let up = mine
                            .iter()
                            .any(|i| i.id == id && i.state != InstanceState::Stopped);
                        if !up {
                            tracing::info!(instance = %id, "reconcile: starting");
                            started.push(self.runtime.start(spec).await?);
                        }
                        wanted.insert(id);
                    }
                }
            }
        }
        let extra: Vec<Instance> = mine
            .into_iter()
            .filter(|i| !wanted.contains(&i.id) && i.state != InstanceState::Stopped)
            .cloned()
            .collect();
        for i in &extra {
            tracing::info!(instance = %i.id, "reconcile: stopping");
        }
        // Out of the routes first, so a scale-down drops no request.
        self.drain_and_stop(&extra).await;
        Ok(started)
    }
}

/// Reconcile now, then every [`INTERVAL`] until `shutdown`.
pub async fn run(platform: Arc<Platform>, shutdown: CancellationToken) {
    loop {
        if let Err(e) = platform.reconcile().await {
            tracing::warn!(error = %e, "reconcile pass failed");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(INTERVAL) => {}
        }
    }
}
