//! Preview environments: the push side and the idle sweep.
//!
//! ```text
//! push preview/x ──► settings on? pattern matches? ──► NAME valid, NAME--APP ≤ 63?
//!                     │ no: stored, not deployed          │ no: the push is refused
//!                     ▼                                    ▼
//!                 (as before)          first push: app row x--APP + link + copy of APP's config
//!                                      deploy_from(x--APP, source: APP's repo) ──► live at x--APP.DOMAIN
//!                                      (a first deploy that fails takes the new preview away again)
//! push :preview/x ──► destroy_app(x--APP) (the one branch deletion allowed)
//! sweep (every reconcile interval) ──► requests seen since the last sweep? touch
//!                                  ──► idle past the parent's limit? destroy_app
//! ```
//!
//! A preview is an app of its own, so releases, ps, logs, config, routes
//! and certificates work for it unchanged, and nothing here touches the
//! parent's releases, instances, routes or config: the parent's lock is
//! never taken, the preview's is.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{fail, internal, AppGuard, DeployError, Platform, Progress, Stage};
use crate::hook::RefUpdate;
use crate::names::{AppName, PreviewName};
use crate::state::{self, previews, previews::Preview, previews::Settings};

/// The default idle limit of `previews:enable`: 7 days.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(7 * 24 * 3600);

/// The idle rule: a preview with no push and no proxied request for
/// `idle_secs` is due for removal. No limit (previews were turned off
/// while it was being made) removes nothing.
pub fn is_idle(preview: &Preview, idle_secs: Option<u64>, now: i64) -> bool {
    let Some(idle) = idle_secs else {
        return false;
    };
    let idle = i64::try_from(idle).unwrap_or(i64::MAX);
    now.saturating_sub(preview.last_active()) >= idle
}

fn db_error(e: state::StateError) -> String {
    if e.is_busy() {
        return state::BUSY_MESSAGE.to_owned();
    }
    tracing::error!(error = %e, "previews: database error in a push");
    "internal error; see the server log".to_owned()
}

impl Platform {
    /// Before a push's updates run: refuse a push into a preview itself
    /// (it deploys from its parent's repository), and a push with a
    /// preview branch whose name cannot be a host, so that nothing of it
    /// lands. Returns the app's preview settings, when previews are on.
    pub(super) async fn preview_settings(
        &self,
        app: &AppName,
        updates: &[RefUpdate],
    ) -> Result<Option<Settings>, String> {
        let a = app.clone();
        let (link, settings) = self
            .db
            .call(move |c| Ok((previews::by_app(c, &a)?, previews::settings(c, &a)?)))
            .await
            .map_err(db_error)?;
        if let Some(p) = link {
            return Err(format!(
                "{app} is a preview of {}: push the branch {} to {} instead",
                p.parent, p.branch, p.parent
            ));
        }
        let Some(settings) = settings else {
            return Ok(None);
        };
        for u in updates {
            let Some(name) = u.branch().and_then(|b| settings.preview_name(b)) else {
                continue;
            };
            name.and_then(|n| n.app_name(app))
                .map_err(|e| format!("{e}; nothing was pushed"))?;
        }
        Ok(Some(settings))
    }

    /// One ref update, if it is a preview's: `None` when it is not (the
    /// push goes on as before), else the deploy lock of the deployed
    /// preview (none for a deletion).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn preview_update(
        &self,
        app: &AppName,
        settings: Option<&Settings>,
        record: &state::apps::App,
        update: &RefUpdate,
        object_dirs: &[PathBuf],
        progress: &mut Progress,
    ) -> Result<Option<Option<AppGuard>>, String> {
        let (Some(settings), Some(branch)) = (settings, update.branch()) else {
            return Ok(None);
        };
        // The deploy branch is never a preview's, whatever the pattern.
        if Self::is_deploy_branch(record.deploy_branch.as_deref(), branch) {
            return Ok(None);
        }
        let Some(name) = settings.preview_name(branch) else {
            return Ok(None);
        };
        // Checked for the whole push in `preview_settings`.
        let name = name.map_err(|e| e.to_string())?;
        let child = name.app_name(app).map_err(|e| e.to_string())?;
        if update.is_delete() {
            self.remove_preview(app, &name, &child, branch, progress)
                .await?;
            return Ok(Some(None));
        }
        let guard = self
            .deploy_preview(app, &name, &child, branch, update, object_dirs, progress)
            .await?;
        Ok(Some(Some(guard)))
    }

    #[allow(clippy::too_many_arguments)]
    async fn deploy_preview(
        &self,
        app: &AppName,
        name: &PreviewName,
        child: &AppName,
        branch: &str,
        update: &RefUpdate,
        object_dirs: &[PathBuf],
        progress: &mut Progress,
    ) -> Result<AppGuard, String> {
        let short = &update.new[..update.new.len().min(7)];
        progress
            .step(format!(
                "Received {app} ({branch} {short}): preview {child}"
            ))
            .await;
        let (a, n) = (app.clone(), name.as_str().to_owned());
        let existing = self
            .db
            .call(move |c| previews::get(c, &a, &n))
            .await
            .map_err(db_error)?;
        let created = match existing {
            Some(p) if p.branch != branch => {
                return Err(format!(
                    "preview {name} deploys from branch {}: delete that branch first",
                    p.branch
                ))
            }
            Some(_) => {
                let c2 = child.clone();
                self.db
                    .call(move |c| previews::touch_push(c, &c2, state::now()))
                    .await
                    .map_err(db_error)?;
                false
            }
            None => {
                let (a, n, c2, b) = (app.clone(), name.clone(), child.clone(), branch.to_owned());
                self.db
                    .call(move |c| previews::create(c, &a, &n, &c2, &b))
                    .await
                    .map_err(|e| match e {
                        state::StateError::Exists(_) => format!(
                            "an app named {child} exists already and is not a preview of {app}: rename the branch"
                        ),
                        state::StateError::Full(line) => line,
                        e => db_error(e),
                    })?;
                progress
                    .step(format!(
                        "Creating preview {child} (config copied from {app})"
                    ))
                    .await;
                true
            }
        };
        match self
            .deploy_from(child, app, update, object_dirs.to_vec(), progress)
            .await
        {
            Ok((_, guard)) => {
                // Idle time counts from the end of the last deploy.
                let c2 = child.clone();
                if let Err(e) = self
                    .db
                    .call(move |c| previews::touch_push(c, &c2, state::now()))
                    .await
                {
                    tracing::warn!(app = %child, error = %e, "recording a preview's push");
                }
                Ok(guard)
            }
            Err(e) => {
                if created {
                    // Nothing of a preview whose branch never landed stays.
                    if let Err(e) = self.destroy_app(child).await {
                        tracing::warn!(app = %child, error = %e, "removing a preview whose first deploy failed");
                    }
                    progress
                        .info(format!("preview {child} removed: its first deploy failed"))
                        .await;
                }
                Err(e.to_string())
            }
        }
    }

    async fn remove_preview(
        &self,
        app: &AppName,
        name: &PreviewName,
        child: &AppName,
        branch: &str,
        progress: &mut Progress,
    ) -> Result<(), String> {
        let (a, n) = (app.clone(), name.as_str().to_owned());
        let existing = self
            .db
            .call(move |c| previews::get(c, &a, &n))
            .await
            .map_err(db_error)?;
        match existing {
            Some(p) => {
                progress
                    .step(format!("Branch {branch} deleted: removing preview {child}"))
                    .await;
                self.destroy_app(&p.app).await.map_err(|e| e.to_string())?;
                progress.info(format!("preview {child} removed")).await;
            }
            None => {
                progress
                    .step(format!("Branch {branch} deleted (it had no preview)"))
                    .await;
            }
        }
        Ok(())
    }

    /// Destroy one preview of `app` by name (`previews:destroy`); false
    /// when there is none of that name.
    pub async fn destroy_preview(&self, app: &AppName, name: &str) -> Result<bool, DeployError> {
        let (a, n) = (app.clone(), name.to_owned());
        let Some(p) = self
            .db
            .call(move |c| previews::get(c, &a, &n))
            .await
            .map_err(|e| internal(Stage::Switch, e))?
        else {
            return Ok(false);
        };
        self.destroy_app(&p.app).await?;
        Ok(true)
    }

    /// Destroy every preview of `app` (with `apps:destroy` and
    /// `previews:disable`); returns their names.
    pub fn destroy_previews_of<'a>(
        &'a self,
        app: &'a AppName,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<String>, DeployError>> + Send + 'a>> {
        // Boxed: destroy_app calls this, and this calls destroy_app (for
        // previews, which have none of their own).
        Box::pin(async move {
            let a = app.clone();
            let list = self
                .db
                .call(move |c| match previews::list(c, &a) {
                    Err(state::StateError::NotFound(_)) => Ok(Vec::new()),
                    r => r,
                })
                .await
                .map_err(|e| internal(Stage::Switch, e))?;
            let mut names = Vec::new();
            for p in list {
                if p.app == *app {
                    return Err(fail(Stage::Switch, "a preview cannot be its own parent"));
                }
                self.destroy_app(&p.app).await?;
                names.push(p.name);
            }
            Ok(names)
        })
    }

    /// One pass of the idle sweep at `now`: record requests the proxy
    /// answered for previews since the last pass (`seen` keeps the counts),
    /// then destroy the previews idle past their parent's limit. Returns
    /// the previews destroyed.
    pub async fn sweep_previews(
        &self,
        seen: &mut HashMap<AppName, u64>,
        now: i64,
    ) -> Result<Vec<AppName>, DeployError> {
        let all = self
            .db
            .call(|c| previews::all(c))
            .await
            .map_err(|e| internal(Stage::Switch, e))?;
        let mut removed = Vec::new();
        seen.retain(|app, _| all.iter().any(|(p, _)| p.app == *app));
        for (mut p, idle) in all {
            if let Some(total) = self.metrics.proxy.requests_of(p.app.as_str()) {
                let before = seen.insert(p.app.clone(), total);
                // A count that moved (or is new and not zero) is a request.
                if before.map_or(total > 0, |b| b != total) {
                    let a = p.app.clone();
                    self.db
                        .call(move |c| previews::touch_request(c, &a, now))
                        .await
                        .map_err(|e| internal(Stage::Switch, e))?;
                    p.last_request_at = Some(now);
                }
            }
            if !is_idle(&p, idle, now) {
                continue;
            }
            // A preview being deployed is in use: skip it this time.
            if self.app_lock(&p.app).try_lock().is_err() {
                continue;
            }
            tracing::info!(app = %p.app, parent = %p.parent, idle_s = now - p.last_active(), "preview idle: destroying it");
            self.destroy_app(&p.app).await?;
            let entry = state::audit::Entry {
                id: 0,
                at: now,
                actor: "cygni".into(),
                actor_kind: "daemon".into(),
                role: "admin".into(),
                source: "daemon".into(),
                address: None,
                action: "previews:expire".into(),
                app: Some(p.parent.to_string()),
                detail: format!("{} idle {}s", p.name, now - p.last_active()),
                result: "ok".into(),
                message: String::new(),
            };
            if let Err(e) = self.db.call(move |c| state::audit::append(c, &entry)).await {
                tracing::error!(error = %e, "cannot write the audit log");
            }
            seen.remove(&p.app);
            removed.push(p.app);
        }
        Ok(removed)
    }
}

/// The idle sweep, every `interval` until shutdown.
pub async fn sweep_every(platform: Arc<Platform>, shutdown: CancellationToken, interval: Duration) {
    let mut seen = HashMap::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(interval) => {}
        }
        if let Err(e) = platform.sweep_previews(&mut seen, state::now()).await {
            tracing::warn!(error = %e, "preview sweep failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn preview(created: i64, push: i64, request: Option<i64>) -> Preview {
        Preview {
            app: AppName::parse("x--shop").unwrap(),
            parent: AppName::parse("shop").unwrap(),
            name: "x".into(),
            branch: "preview/x".into(),
            created_at: created,
            last_push_at: push,
            last_request_at: request,
        }
    }

    /// The sweep itself, with injected times: a request seen between two
    /// passes keeps a preview; one idle past the limit goes, with its app
    /// row, and the parent stays.
    #[tokio::test]
    async fn the_sweep_keeps_used_previews_and_destroys_idle_ones() {
        use crate::proxy::{routes::Routes, RouteTable};
        let dir = tempfile::tempdir().unwrap();
        let db = state::Db::open(&dir.path().join("cygni.db")).unwrap();
        let platform = Platform::new(
            db.clone(),
            crate::git::Repos::new(dir.path()).unwrap(),
            Arc::new(crate::runtime::fake::FakeRuntime::default()),
            Arc::new(RouteTable::new(Routes::empty())),
            Arc::new(crate::logs::LogStore::open(&dir.path().join("logs")).unwrap()),
            super::super::Paths {
                slugs: dir.path().join("slugs"),
                cache: dir.path().join("cache"),
                buildpacks: dir.path().join("buildpacks"),
                storage: dir.path().join("storage"),
            },
            "localhost".into(),
            Duration::from_secs(5),
            false,
        );
        let shop = AppName::parse("shop").unwrap();
        let (a, b) = (
            PreviewName::parse("a").unwrap(),
            PreviewName::parse("b").unwrap(),
        );
        let (a_app, b_app) = (a.app_name(&shop).unwrap(), b.app_name(&shop).unwrap());
        let (s2, a2, b2, aa, ba) = (
            shop.clone(),
            a.clone(),
            b.clone(),
            a_app.clone(),
            b_app.clone(),
        );
        let t0 = db
            .call(move |c| {
                state::apps::create(c, &s2)?;
                let settings = Settings {
                    pattern: "preview/*".into(),
                    idle_secs: 100,
                };
                previews::enable(c, &s2, &settings)?;
                let p = previews::create(c, &s2, &a2, &aa, "preview/a")?;
                previews::create(c, &s2, &b2, &ba, "preview/b")?;
                Ok(p.created_at)
            })
            .await
            .unwrap();
        let mut seen = HashMap::new();
        // Routes were published (handles exist), then a request for a.
        let handles = platform.metrics.proxy.app(a_app.as_str());
        platform.metrics.proxy.app(b_app.as_str());
        assert!(platform
            .sweep_previews(&mut seen, t0 + 10)
            .await
            .unwrap()
            .is_empty());
        handles.request(crate::metrics::Protocol::Http, 200, Duration::ZERO);
        assert!(platform
            .sweep_previews(&mut seen, t0 + 50)
            .await
            .unwrap()
            .is_empty());
        // b: nothing since its push, 100 s ago; a: a request 50 s ago.
        let removed = platform.sweep_previews(&mut seen, t0 + 100).await.unwrap();
        assert_eq!(removed, vec![b_app.clone()]);
        let removed = platform.sweep_previews(&mut seen, t0 + 149).await.unwrap();
        assert!(removed.is_empty());
        let removed = platform.sweep_previews(&mut seen, t0 + 150).await.unwrap();
        assert_eq!(removed, vec![a_app.clone()]);
        let s2 = shop.clone();
        let (left, parent, gone) = db
            .call(move |c| {
                Ok((
                    previews::list(c, &s2)?,
                    state::apps::get(c, &s2)?,
                    state::apps::get(c, &a_app)?,
                ))
            })
            .await
            .unwrap();
        assert!(left.is_empty() && parent.is_some() && gone.is_none());
        let audit = db
            .call(move |c| state::audit::list(c, state::audit::Scope::All(Some(shop.as_str())), 10))
            .await
            .unwrap();
        assert_eq!(
            audit
                .iter()
                .filter(|e| e.action == "previews:expire")
                .count(),
            2
        );
    }

    #[test]
    fn idle_counts_from_the_last_push_or_request() {
        let day = 24 * 3600;
        let p = preview(1000, 1000, None);
        assert!(!is_idle(&p, Some(7 * day as u64), 1000 + 7 * day - 1));
        assert!(is_idle(&p, Some(7 * day as u64), 1000 + 7 * day));
        // A later push or request moves the limit.
        let pushed = preview(1000, 1000 + day, None);
        assert!(!is_idle(&pushed, Some(7 * day as u64), 1000 + 7 * day));
        let requested = preview(1000, 1000, Some(1000 + 3 * day));
        assert!(!is_idle(&requested, Some(7 * day as u64), 1000 + 9 * day));
        assert!(is_idle(&requested, Some(7 * day as u64), 1000 + 10 * day));
        // No limit: never.
        assert!(!is_idle(&p, None, i64::MAX));
    }
}
