//! Apps: who sees which, creating one (admins; its repo with it) and
//! destroying one (admins, with the name typed again).

use super::{Access, Actor, Service, ServiceError};
use crate::names::AppName;
use crate::state;

impl Service {
    /// The apps `actor` may see: all for admins, the granted ones otherwise.
    pub async fn visible_apps(&self, actor: &Actor) -> Result<Vec<state::apps::App>, ServiceError> {
        let principal = actor.principal.clone();
        let (mut apps, grants) = self
            .db
            .call(move |c| Ok((state::apps::list(c)?, super::current_grants(c, &principal)?)))
            .await?;
        match grants {
            Some((state::keys::Role::Admin, _)) => {}
            Some((_, granted)) => apps.retain(|a| granted.contains(&a.name)),
            None => apps.clear(),
        }
        Ok(apps)
    }

    /// Create an app and its repository, and route its host at once (it
    /// answers 503 until a deploy, not 404).
    pub async fn create_app(&self, actor: &Actor, app: &AppName) -> Result<(), ServiceError> {
        self.audited(actor, "apps:create", Some(app), "", async {
            self.require_admin(actor, "create apps")?;
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

    /// Destroy an app and everything it owns, once `confirm` repeats its
    /// name.
    pub async fn destroy_app(
        &self,
        actor: &Actor,
        app: &AppName,
        confirm: Option<&str>,
    ) -> Result<(), ServiceError> {
        self.audited(actor, "apps:destroy", Some(app), "", async {
            self.app(actor, app, Access::Admin).await?;
            if confirm != Some(app.as_str()) {
                return Err(ServiceError::Invalid(format!(
                    "this destroys {app} and all its data: confirm with `apps:destroy {app} --confirm {app}`"
                )));
            }
            self.platform
                .destroy_app(app)
                .await
                .map_err(|e| ServiceError::Internal(e.message))?;
            self.acme.notify();
            Ok(())
        })
        .await
    }
}
