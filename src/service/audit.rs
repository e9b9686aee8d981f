//! Reading the audit log: admins see every entry, others the entries of
//! the apps granted to them. Old entries are pruned after
//! `audit_retention_days`.

use super::{Access, Actor, Service, ServiceError};
use crate::names::AppName;
use crate::state::{self, audit::Scope, keys::Role};

/// The most entries one listing returns.
pub const MAX_ENTRIES: u32 = 10_000;

impl Service {
    pub async fn audit_log(
        &self,
        actor: &Actor,
        app: Option<&AppName>,
        limit: u32,
    ) -> Result<Vec<state::audit::Entry>, ServiceError> {
        if let Some(app) = app {
            self.app(actor, app, Access::Read).await?;
        }
        let principal = actor.principal.clone();
        let one = app.map(|a| a.to_string());
        let limit = limit.min(MAX_ENTRIES);
        Ok(self
            .db
            .call(move |c| {
                let grants = super::current_grants(c, &principal)?;
                match grants {
                    Some((Role::Admin, _)) => {
                        state::audit::list(c, Scope::All(one.as_deref()), limit)
                    }
                    Some((_, apps)) => {
                        let apps: Vec<String> = apps.iter().map(|a| a.to_string()).collect();
                        state::audit::list(c, Scope::Apps(&apps, one.as_deref()), limit)
                    }
                    None => Ok(Vec::new()),
                }
            })
            .await?)
    }

    /// Delete entries older than `days`; returns how many went.
    pub async fn prune_audit(&self, days: u32) -> Result<usize, ServiceError> {
        let before = state::now() - i64::from(days) * 86_400;
        Ok(self
            .db
            .call(move |c| state::audit::prune(c, before))
            .await?)
    }
}
