//! Processes and releases: scale, restart, stop/start and rollback, each
//! for an actor that may manage the app, each through the converger.

use std::collections::BTreeMap;

use super::{Access, Actor, Service, ServiceError};
use crate::deploy::Progress;
use crate::names::{AppName, ProcessType};

/// The most instances of one process type `ps:scale` accepts.
pub const MAX_SCALE: u32 = 100;

impl Service {
    pub async fn scale(
        &self,
        actor: &Actor,
        app: &AppName,
        changes: BTreeMap<ProcessType, u32>,
        progress: &mut Progress,
    ) -> Result<(), ServiceError> {
        let detail = changes
            .iter()
            .map(|(p, n)| format!("{p}={n}"))
            .collect::<Vec<_>>()
            .join(" ");
        self.audited(actor, "ps:scale", Some(app), detail, async {
            self.app(actor, app, Access::Manage).await?;
            if changes.is_empty() {
                return Err(ServiceError::Invalid(
                    "give TYPE=COUNT pairs, e.g. web=2".into(),
                ));
            }
            for (process, count) in &changes {
                if process.as_str() == "release" {
                    return Err(ServiceError::Invalid(
                        "release runs once per release and cannot be scaled".into(),
                    ));
                }
                if *count > MAX_SCALE {
                    return Err(ServiceError::Invalid(format!(
                        "{process}: count must be a number from 0 to {MAX_SCALE}"
                    )));
                }
            }
            Ok(self.platform.scale(app, changes, progress).await?)
        })
        .await
    }

    /// Returns how many instances were restarted.
    pub async fn restart(
        &self,
        actor: &Actor,
        app: &AppName,
        only: Option<&ProcessType>,
        progress: &mut Progress,
    ) -> Result<usize, ServiceError> {
        let detail = only.map(|p| format!("process={p}")).unwrap_or_default();
        self.audited(actor, "ps:restart", Some(app), detail, async {
            self.app(actor, app, Access::Manage).await?;
            Ok(self.platform.restart(app, only, progress).await?)
        })
        .await
    }

    /// `ps:stop` (true) and `ps:start` (false).
    pub async fn set_stopped(
        &self,
        actor: &Actor,
        app: &AppName,
        stopped: bool,
        progress: &mut Progress,
    ) -> Result<(), ServiceError> {
        let action = if stopped { "ps:stop" } else { "ps:start" };
        self.audited(actor, action, Some(app), "", async {
            self.app(actor, app, Access::Manage).await?;
            Ok(self.platform.set_stopped(app, stopped, progress).await?)
        })
        .await
    }

    /// Returns the new release's version.
    pub async fn rollback(
        &self,
        actor: &Actor,
        app: &AppName,
        version: Option<u32>,
        progress: &mut Progress,
    ) -> Result<u32, ServiceError> {
        let detail = version.map(|v| format!("to=v{v}")).unwrap_or_default();
        self.audited(actor, "rollback", Some(app), detail, async {
            self.app(actor, app, Access::Manage).await?;
            Ok(self.platform.rollback(app, version, progress).await?)
        })
        .await
    }
}
