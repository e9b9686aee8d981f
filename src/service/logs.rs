//! Log settings of an app: the per-app access log (`router` lines), off
//! by default.
//!
//! When it is on, the proxy writes one line per request into the app's
//! log (source `router`, read with `logs APP -p router`); when it is off
//! the proxy's only cost is a flag read in the route entry.

use super::{Access, Actor, Service, ServiceError};
use crate::names::AppName;
use crate::state;

/// The settings `logs:set` knows.
pub const SETTINGS: &[&str] = &["access-log"];

impl Service {
    /// Turn an app's access log on or off; the routes follow at once.
    pub async fn set_access_log(
        &self,
        actor: &Actor,
        app: &AppName,
        on: bool,
    ) -> Result<(), ServiceError> {
        self.app(actor, app, Access::Manage).await?;
        let a = app.clone();
        self.db
            .call(move |c| state::apps::set_access_log(c, &a, on))
            .await?;
        self.republish("logs:set").await;
        Ok(())
    }

    /// One setting by name, as a front door receives it.
    pub async fn set_log_setting(
        &self,
        actor: &Actor,
        app: &AppName,
        setting: &str,
        on: bool,
    ) -> Result<(), ServiceError> {
        self.audited(
            actor,
            "logs:set",
            Some(app),
            format!("{setting}={}", if on { "on" } else { "off" }),
            async {
                // The app first: an actor without a grant learns nothing of it.
                self.app(actor, app, Access::Manage).await?;
                match setting {
                    "access-log" => self.set_access_log(actor, app, on).await,
                    other => Err(ServiceError::Invalid(format!(
                        "unknown log setting {other:?}; known: {}",
                        SETTINGS.join(", ")
                    ))),
                }
            },
        )
        .await
    }
}
