//! Custom domains: one app per host, `NAME.DOMAIN` reserved for apps,
//! routed and given a certificate as soon as they are added.

use super::{Access, Actor, Service, ServiceError};
use crate::names::{AppName, Hostname};
use crate::state;

/// An app's hosts: its default one and its custom domains.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Domains {
    pub default: String,
    pub custom: Vec<Hostname>,
}

impl Service {
    pub async fn domains(&self, actor: &Actor, app: &AppName) -> Result<Domains, ServiceError> {
        self.app(actor, app, Access::Read).await?;
        let a = app.clone();
        let custom = self.db.call(move |c| state::domains::list(c, &a)).await?;
        Ok(Domains {
            default: format!("{app}.{}", self.domain),
            custom,
        })
    }

    pub async fn add_domain(
        &self,
        actor: &Actor,
        app: &AppName,
        host: &Hostname,
    ) -> Result<(), ServiceError> {
        self.audited(actor, "domains:add", Some(app), format!("host={host}"), async {
            self.app(actor, app, Access::Manage).await?;
            // NAME.DOMAIN is where app NAME lives (or will): never a custom domain.
            if let Some(label) = host
                .as_str()
                .strip_suffix(&format!(".{}", self.domain))
                .filter(|l| !l.contains('.'))
            {
                return Err(ServiceError::Invalid(format!(
                    "{host} is reserved for the app named {label:?}: hosts like NAME.{} are apps' default hosts",
                    self.domain
                )));
            }
            let (a, h) = (app.clone(), host.clone());
            self.db
                .call(move |c| state::domains::add(c, &a, &h))
                .await?;
            self.republish("domains:add").await;
            self.acme.notify();
            Ok(())
        })
        .await
    }

    pub async fn remove_domain(
        &self,
        actor: &Actor,
        app: &AppName,
        host: &Hostname,
    ) -> Result<(), ServiceError> {
        self.audited(
            actor,
            "domains:remove",
            Some(app),
            format!("host={host}"),
            async {
                self.app(actor, app, Access::Manage).await?;
                let (a, h) = (app.clone(), host.clone());
                self.db
                    .call(move |c| state::domains::remove(c, &a, &h))
                    .await?;
                self.republish("domains:remove").await;
                self.acme.notify();
                Ok(())
            },
        )
        .await
    }
}
