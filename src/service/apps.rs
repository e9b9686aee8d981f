//! Apps: who sees which, creating one (admins; its repo with it) and
//! destroying one (admins, with the name typed again).

use super::{Access, Actor, Service, ServiceError};
use crate::names::AppName;
use crate::state;

impl Service {
    /// The apps `actor` may see: all for admins, the granted ones otherwise.
    pub async fn visible_apps(&self, actor: &Actor) -> Result<Vec<state::apps::App>, ServiceError> {
        let principal = actor.principal.clone();
        let (mut apps, grants, parents) = self
            .db
            .call(move |c| {
                Ok((
                    state::apps::list(c)?,
                    super::current_grants(c, &principal)?,
                    state::previews::parents(c)?,
                ))
            })
            .await?;
        let parents: std::collections::HashMap<_, _> = parents.into_iter().collect();
        match grants {
            Some((state::keys::Role::Admin, _)) => {}
            // A grant on an app reaches its previews.
            Some((_, granted)) => apps.retain(|a| {
                granted.contains(&a.name)
                    || parents.get(&a.name).is_some_and(|p| granted.contains(p))
            }),
            None => apps.clear(),
        }
        Ok(apps)
    }

    /// Create an app and its repository, and route its host at once (it
    /// answers 503 until a deploy, not 404).
    pub async fn create_app(&self, actor: &Actor, app: &AppName) -> Result<(), ServiceError> {
        self.audited(actor, "apps:create", Some(app), "", async {
            self.require_admin(actor, "create apps")?;
            if app.is_composite() {
                return Err(ServiceError::Invalid(format!(
                    "invalid app name {app:?}: '--' is reserved for previews (NAME--APP); choose a name without it"
                )));
            }
            let name = app.clone();
            self.db.call(move |c| state::apps::create(c, &name)).await?;
            if let Err(e) = self.platform.repos.create(app) {
                // Keep the database and the disk in step: no app without a repo.
                let name = app.clone();
                let _ = self.db.call(move |c| state::apps::delete(c, &name)).await;
                return Err(e.into());
            }
            self.republish("apps:create").await;
            Ok(())
        })
        .await
    }

    /// Destroy an app and everything it owns, its persistent storage too,
    /// once `confirm` repeats its name. Returns the storage that went
    /// with it (an admin's host directories are unmounted, not removed).
    pub async fn destroy_app(
        &self,
        actor: &Actor,
        app: &AppName,
        confirm: Option<&str>,
    ) -> Result<Vec<crate::names::StorageName>, ServiceError> {
        self.audited(actor, "apps:destroy", Some(app), "", async {
            self.app(actor, app, Access::Admin).await?;
            let a = app.clone();
            let storage = self.db.call(move |c| state::storage::list(c, &a)).await?;
            if confirm != Some(app.as_str()) {
                let names: Vec<&str> = storage.iter().map(|m| m.name.as_str()).collect();
                let with = if names.is_empty() {
                    String::new()
                } else {
                    format!(" and its persistent storage ({})", names.join(", "))
                };
                return Err(ServiceError::Invalid(format!(
                    "this destroys {app} and all its data{with}: confirm with `apps:destroy {app} --confirm {app}`"
                )));
            }
            self.platform
                .destroy_app(app)
                .await
                .map_err(|e| ServiceError::Internal(e.message))?;
            self.acme.notify();
            Ok(storage
                .into_iter()
                .filter(|m| m.host_path.is_none())
                .map(|m| m.name)
                .collect())
        })
        .await
    }
}
