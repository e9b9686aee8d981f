//! Reading releases and certificates, and the certificate changes
//! (`certs:renew`, `certs:redirect`), for every front door.

use super::{Access, Actor, Service, ServiceError};
use crate::names::AppName;
use crate::state::{self, certs::CertRecord, releases::Release};

/// The most releases one listing returns.
pub const MAX_RELEASES: u32 = 1000;

impl From<crate::acme::AcmeError> for ServiceError {
    fn from(e: crate::acme::AcmeError) -> Self {
        tracing::error!(error = %e, "acme error in the service layer");
        ServiceError::Internal("certificate store error; see the server log".into())
    }
}

impl Service {
    /// An app's releases, newest first.
    pub async fn releases(
        &self,
        actor: &Actor,
        app: &AppName,
        limit: u32,
    ) -> Result<Vec<Release>, ServiceError> {
        self.app(actor, app, Access::Read).await?;
        let a = app.clone();
        let limit = limit.min(MAX_RELEASES);
        Ok(self
            .db
            .call(move |c| state::releases::list(c, &a, limit))
            .await?)
    }

    /// One release by version.
    pub async fn release(
        &self,
        actor: &Actor,
        app: &AppName,
        version: u32,
    ) -> Result<Release, ServiceError> {
        self.app(actor, app, Access::Read).await?;
        let a = app.clone();
        self.db
            .call(move |c| state::releases::get(c, &a, version))
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("{app} has no release v{version}")))
    }

    /// Certificates of one app's current hosts, or (admins) of every app.
    pub async fn certs(
        &self,
        actor: &Actor,
        app: Option<&AppName>,
    ) -> Result<Vec<CertRecord>, ServiceError> {
        match app {
            Some(a) => {
                self.app(actor, a, Access::Read).await?;
            }
            None => self.require_admin(actor, "list every app's certificates (give an app)")?,
        }
        let a = app.cloned();
        let mut rows = self
            .db
            .call(move |c| state::certs::list(c, a.as_ref()))
            .await?;
        if let Some(app) = app {
            // Rows of hosts no longer wanted (a domain removed) stay in the
            // database until the app goes; show only the current ones.
            let hosts = self.acme.hosts_of(app).await?;
            rows.retain(|r| hosts.contains(&r.host));
        }
        Ok(rows)
    }

    /// Ask for a renewal now; returns the hosts it covers.
    pub async fn renew_certs(
        &self,
        actor: &Actor,
        app: &AppName,
    ) -> Result<Vec<String>, ServiceError> {
        self.audited(actor, "certs:renew", Some(app), "", async {
            self.app(actor, app, Access::Manage).await?;
            let hosts = self.acme.request_renewal(app).await?;
            if hosts.is_empty() {
                return Err(ServiceError::Invalid(format!(
                    "{app} is only served at local names, which get no certificates"
                )));
            }
            Ok(hosts)
        })
        .await
    }

    pub async fn set_https_redirect(
        &self,
        actor: &Actor,
        app: &AppName,
        on: bool,
    ) -> Result<(), ServiceError> {
        let detail = if on { "on" } else { "off" };
        self.audited(actor, "certs:redirect", Some(app), detail, async {
            self.app(actor, app, Access::Manage).await?;
            let a = app.clone();
            self.db
                .call(move |c| state::certs::set_redirect(c, &a, on))
                .await?;
            self.republish("certs:redirect").await;
            Ok(())
        })
        .await
    }

    /// A one-off command may run: the actor manages the app. The attempt
    /// is audited with the program's name (not its arguments, which may
    /// carry secrets).
    pub async fn authorize_run(
        &self,
        actor: &Actor,
        app: &AppName,
        program: &str,
    ) -> Result<(), ServiceError> {
        let detail = format!("program={}", program.chars().take(64).collect::<String>());
        self.audited(actor, "run", Some(app), detail, async {
            self.app(actor, app, Access::Manage).await?;
            Ok(())
        })
        .await
    }
}
