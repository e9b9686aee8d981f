//! Preview environments: the rules behind `previews`, `previews:enable`,
//! `previews:disable`, `previews:destroy` and the API's
//! `/apps/{app}/previews`.
//!
//! ```text
//! previews:enable APP [--pattern 'preview/*'] [--idle 7d] ─► Manage on APP, not a preview
//!     ─► pattern PREFIX* that the deploy branch does not match ─► preview_settings row
//! previews:disable APP ─► every preview destroyed ─► settings gone
//! previews:destroy APP NAME ─► Manage on APP ─► the preview's app destroyed
//! ```
//!
//! Pushes (creating, redeploying, and deleting a branch) and the idle
//! sweep are the deploy layer's (`deploy/previews.rs`): they happen in the
//! push, under the hook. A grant on an app reaches its previews
//! ([`Service::app`]).

use super::{Access, Actor, Service, ServiceError};
use crate::deploy::previews::DEFAULT_IDLE;
use crate::names::AppName;
use crate::state::{self, previews::Settings};

/// The default branch pattern.
pub const DEFAULT_PATTERN: &str = "preview/*";
/// The longest idle limit: a year.
const MAX_IDLE_SECS: u64 = 366 * 86_400;

/// One preview as a user sees it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PreviewView {
    /// The branch's name part: `x` for `preview/x`.
    pub name: String,
    /// Its own app: `x--APP` (for `config:set`, `ps`, `logs`, `releases`).
    pub app: AppName,
    pub branch: String,
    pub url: String,
    /// The live release, `v2`; none before the first deploy is live.
    pub release: Option<String>,
    /// The newest release's status: building, live, failed, ...
    pub state: String,
    /// When the newest release was made.
    pub last_deploy: Option<i64>,
    /// The last push or proxied request (the idle sweep counts from it).
    pub last_active: i64,
}

/// An app's preview settings and previews.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PreviewsView {
    pub app: AppName,
    pub enabled: bool,
    pub pattern: Option<String>,
    pub idle_secs: Option<u64>,
    pub previews: Vec<PreviewView>,
}

/// `90s`, `30m`, `12h`, `7d`, `2w` → seconds (1 s to a year).
pub fn parse_idle(s: &str) -> Result<u64, ServiceError> {
    crate::span::parse_secs(s)
        .filter(|&n| n > 0 && n <= MAX_IDLE_SECS)
        .ok_or_else(|| {
            ServiceError::Invalid(format!(
                "{s:?} is not an idle limit: use e.g. 30m, 12h, 7d or 2w (at most 366d)"
            ))
        })
}

/// `PREFIX*`: one `*`, at the end, after a prefix of branch-name
/// characters that the deploy branch does not start with.
pub fn parse_pattern(pattern: &str, deploy_branch: Option<&str>) -> Result<String, ServiceError> {
    let bad = |why: &str| {
        ServiceError::Invalid(format!(
            "invalid preview pattern {pattern:?}: {why} (e.g. 'preview/*')"
        ))
    };
    let Some(prefix) = pattern.strip_suffix('*') else {
        return Err(bad(
            "it must end with '*', which stands for the preview's name",
        ));
    };
    if prefix.is_empty() {
        return Err(bad("it needs a prefix before '*'"));
    }
    let ok = prefix
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._/-".contains(&b))
        && !prefix.starts_with(['/', '-', '.'])
        && !prefix.contains("..")
        && !prefix.contains("//");
    if !ok {
        return Err(bad(
            "use letters, digits, '.', '_', '/' and '-' before the one '*'",
        ));
    }
    let deploy: Vec<&str> = match deploy_branch {
        Some(b) => vec![b],
        None => vec!["main", "master"],
    };
    if let Some(b) = deploy.iter().find(|b| b.starts_with(prefix)) {
        return Err(bad(&format!("it matches the deploy branch {b}")));
    }
    Ok(pattern.to_owned())
}

impl Service {
    /// The parent named in a previews call: one the actor may use, and
    /// not itself a preview.
    async fn preview_parent(
        &self,
        actor: &Actor,
        app: &AppName,
        access: Access,
    ) -> Result<state::apps::App, ServiceError> {
        let record = self.app(actor, app, access).await?;
        let a = app.clone();
        if let Some(p) = self
            .db
            .call(move |c| state::previews::by_app(c, &a))
            .await?
        {
            return Err(ServiceError::Invalid(format!(
                "{app} is a preview of {}: previews belong to {}",
                p.parent, p.parent
            )));
        }
        Ok(record)
    }

    /// An app's preview settings and previews.
    pub async fn previews(
        &self,
        actor: &Actor,
        app: &AppName,
    ) -> Result<PreviewsView, ServiceError> {
        self.preview_parent(actor, app, Access::Read).await?;
        let a = app.clone();
        let (settings, list) = self
            .db
            .call(move |c| {
                let settings = state::previews::settings(c, &a)?;
                let mut list = Vec::new();
                for p in state::previews::list(c, &a)? {
                    let newest = state::releases::list(c, &p.app, 1)?.into_iter().next();
                    let live = state::releases::live(c, &p.app)?;
                    list.push((p, newest, live));
                }
                Ok((settings, list))
            })
            .await?;
        let previews = list
            .into_iter()
            .map(|(p, newest, live)| PreviewView {
                url: self.platform.app_url(&p.app),
                release: live.map(|r| format!("v{}", r.version)),
                state: newest
                    .as_ref()
                    .map_or("none", |r| r.status.as_str())
                    .to_owned(),
                last_deploy: newest.map(|r| r.created_at),
                last_active: p.last_active(),
                name: p.name,
                app: p.app,
                branch: p.branch,
            })
            .collect();
        Ok(PreviewsView {
            app: app.clone(),
            enabled: settings.is_some(),
            pattern: settings.as_ref().map(|s| s.pattern.clone()),
            idle_secs: settings.map(|s| s.idle_secs),
            previews,
        })
    }

    /// Turn previews on for `app`, or change their pattern or idle limit
    /// (each keeps its current value, or the default, when not given).
    pub async fn enable_previews(
        &self,
        actor: &Actor,
        app: &AppName,
        pattern: Option<&str>,
        idle: Option<&str>,
    ) -> Result<Settings, ServiceError> {
        let detail = format!("{} {}", pattern.unwrap_or("-"), idle.unwrap_or("-"));
        self.audited(actor, "previews:enable", Some(app), detail, async {
            let record = self.preview_parent(actor, app, Access::Manage).await?;
            let a = app.clone();
            let current = self
                .db
                .call(move |c| state::previews::settings(c, &a))
                .await?;
            let pattern = match (pattern, &current) {
                (Some(p), _) => parse_pattern(p, record.deploy_branch.as_deref())?,
                (None, Some(s)) => s.pattern.clone(),
                (None, None) => DEFAULT_PATTERN.to_owned(),
            };
            let idle_secs = match (idle, &current) {
                (Some(i), _) => parse_idle(i)?,
                (None, Some(s)) => s.idle_secs,
                (None, None) => DEFAULT_IDLE.as_secs(),
            };
            let settings = Settings { pattern, idle_secs };
            let (a, s) = (app.clone(), settings.clone());
            self.db
                .call(move |c| state::previews::enable(c, &a, &s))
                .await?;
            Ok(settings)
        })
        .await
    }

    /// Turn previews off: every preview is destroyed first. Returns their
    /// names.
    pub async fn disable_previews(
        &self,
        actor: &Actor,
        app: &AppName,
    ) -> Result<Vec<String>, ServiceError> {
        self.audited(actor, "previews:disable", Some(app), "", async {
            self.preview_parent(actor, app, Access::Manage).await?;
            let destroyed = self.platform.destroy_previews_of(app).await?;
            let a = app.clone();
            let was_on = self
                .db
                .call(move |c| state::previews::disable(c, &a))
                .await?;
            if !was_on && destroyed.is_empty() {
                return Err(ServiceError::Invalid(format!(
                    "previews are not enabled for {app}"
                )));
            }
            self.republish("previews:disable").await;
            self.acme.notify();
            Ok(destroyed)
        })
        .await
    }

    /// Destroy one preview of `app` by name. Its branch stays in the
    /// repository: pushing it again makes a new preview.
    pub async fn destroy_preview(
        &self,
        actor: &Actor,
        app: &AppName,
        name: &str,
    ) -> Result<(), ServiceError> {
        self.audited(
            actor,
            "previews:destroy",
            Some(app),
            name.to_owned(),
            async {
                self.preview_parent(actor, app, Access::Manage).await?;
                if !self.platform.destroy_preview(app, name).await? {
                    return Err(ServiceError::NotFound(format!(
                        "{app} has no preview named {name:?}: `previews {app}` lists them"
                    )));
                }
                self.acme.notify();
                Ok(())
            },
        )
        .await
    }
}

/// `7d` for a week, `36h`, `90s`: how `previews` shows an idle limit.
pub fn show_idle(secs: u64) -> String {
    let d = secs;
    for (unit, n) in [("w", 7 * 86_400), ("d", 86_400), ("h", 3600), ("m", 60)] {
        if d >= n && d.is_multiple_of(n) {
            return format!("{}{unit}", d / n);
        }
    }
    format!("{d}s")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_limits() {
        assert_eq!(parse_idle("7d").unwrap(), 7 * 86_400);
        assert_eq!(parse_idle("90s").unwrap(), 90);
        assert_eq!(parse_idle("2w").unwrap(), 14 * 86_400);
        for bad in [
            "",
            "7",
            "d",
            "0d",
            "7y",
            "5é",
            "-1d",
            "400d",
            "99999999999999999999s",
        ] {
            assert!(parse_idle(bad).is_err(), "{bad:?}");
        }
        assert_eq!(show_idle(7 * 86_400), "1w");
        assert_eq!(show_idle(3 * 86_400), "3d");
        assert_eq!(show_idle(90), "90s");
    }

    #[test]
    fn patterns() {
        assert_eq!(parse_pattern("preview/*", None).unwrap(), "preview/*");
        assert!(parse_pattern("pr-*", None).is_ok());
        for bad in ["*", "preview/", "pre*view/*", "/x*", "a b*", "ma*", "../*"] {
            assert!(parse_pattern(bad, None).is_err(), "{bad:?}");
        }
        // The deploy branch setting counts, not main.
        assert!(parse_pattern("ma*", Some("prod")).is_ok());
        assert!(parse_pattern("pro*", Some("prod")).is_err());
    }
}
