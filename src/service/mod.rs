//! The service layer: the business rules every front door shares.
//!
//! ```text
//!   ssh commands ──┐
//!   (HTTP API) ────┼──► Service::{apps, config, domains, ps, releases, keys}
//!   (dashboard) ───┘        │ authorize (one rule, here) · validate · limits
//!                           ▼
//!            state (SQLite) · deploy (Platform: converger, pipeline) · acme
//! ```
//!
//! A front door parses its input into types and renders what comes back;
//! it never writes to `state` itself, and never republishes routes: the
//! functions here do both. Authorization is decided in [`Service::app`]:
//! an actor that may not see an app gets [`ServiceError::AppNotFound`],
//! so a missing grant and a missing app look the same.

pub mod apps;
pub mod cluster;
pub mod config;
pub mod domains;
pub mod keys;
pub mod ps;

use std::sync::Arc;

use crate::acme::Acme;
use crate::deploy::Platform;
use crate::names::AppName;
use crate::state::{self, keys::Role, Db};

/// Who asks: a key (or, later, a token) with a role.
#[derive(Debug, Clone)]
pub struct Actor {
    pub key_name: String,
    pub fingerprint: String,
    pub role: Role,
}

impl Actor {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// Viewers see config values masked, whatever they ask for.
    pub fn sees_secrets(&self) -> bool {
        self.role != Role::Viewer
    }
}

/// What an operation needs from the actor on one app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// See it: listings, config (masked where the front door masks), logs.
    Read,
    /// Change it: push, config, domains, scale, restart, rollback.
    Manage,
    /// Only admins: destroy, grants.
    Admin,
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("app not found: {0}")]
    AppNotFound(AppName),
    #[error("{0}")]
    Forbidden(String),
    /// A bad request the actor can fix; the message says how.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Name(#[from] crate::names::InvalidName),
    #[error(transparent)]
    Deploy(#[from] crate::deploy::DeployError),
    /// Details are in the server log; the actor gets a short line.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<state::StateError> for ServiceError {
    fn from(e: state::StateError) -> Self {
        match e {
            state::StateError::Exists(what) => {
                ServiceError::Invalid(format!("{what} already exists"))
            }
            state::StateError::NotFound(what) => ServiceError::Invalid(format!("{what} not found")),
            other if other.is_busy() => {
                tracing::warn!(error = %other, "database busy");
                ServiceError::Invalid(state::BUSY_MESSAGE.to_owned())
            }
            other => {
                tracing::error!(error = %other, "state error in the service layer");
                ServiceError::Internal("the database said no; see the server log".into())
            }
        }
    }
}

impl From<crate::git::GitError> for ServiceError {
    fn from(e: crate::git::GitError) -> Self {
        tracing::error!(error = %e, "git error in the service layer");
        ServiceError::Internal("repository error; see the server log".into())
    }
}

/// Everything the rules need.
pub struct Service {
    pub db: Db,
    pub platform: Arc<Platform>,
    pub acme: Acme,
    /// Apps live at `APP.DOMAIN`.
    pub domain: String,
}

impl Service {
    pub fn new(db: Db, platform: Arc<Platform>, acme: Acme, domain: String) -> Service {
        Service {
            db,
            platform,
            acme,
            domain,
        }
    }

    /// The one authorization rule. Admins may do anything to any app; a
    /// developer (`deployer`) may read and manage the apps granted to it; a
    /// viewer may only read its granted apps. Anything else is "app not
    /// found" first (so nobody learns which apps exist), then "forbidden"
    /// for what the role may not do on an app it sees.
    pub async fn app(
        &self,
        actor: &Actor,
        app: &AppName,
        access: Access,
    ) -> Result<state::apps::App, ServiceError> {
        let name = app.clone();
        let fingerprint = actor.fingerprint.clone();
        let (found, key) = self
            .db
            .call(move |c| {
                Ok((
                    state::apps::get(c, &name)?,
                    state::keys::by_fingerprint(c, &fingerprint)?,
                ))
            })
            .await?;
        // Re-read the key: a grant, its role or the key itself may have
        // changed since the actor signed in.
        let role = key.as_ref().map(|k| k.role);
        let visible = match &key {
            Some(k) if k.role == Role::Admin => true,
            Some(k) => k.apps.contains(app),
            None => false,
        };
        let record = match found {
            Some(a) if visible => a,
            _ => return Err(ServiceError::AppNotFound(app.clone())),
        };
        match (access, role) {
            (_, Some(Role::Admin)) | (Access::Read, _) | (Access::Manage, Some(Role::Deployer)) => {
                Ok(record)
            }
            (Access::Manage, _) => Err(ServiceError::Forbidden(format!(
                "viewer keys can only read {app}"
            ))),
            (Access::Admin, _) => Err(ServiceError::Forbidden(format!(
                "only admin keys can do that to {app}"
            ))),
        }
    }

    /// Operations that name no app and are for admins only.
    pub fn require_admin(&self, actor: &Actor, what: &str) -> Result<(), ServiceError> {
        if actor.is_admin() {
            Ok(())
        } else {
            Err(ServiceError::Forbidden(format!(
                "only admin keys can {what}"
            )))
        }
    }

    /// Republish routes after a change of hosts or apps; a failure is
    /// logged (the next reconcile publishes again).
    async fn republish(&self, after: &str) {
        if let Err(e) = self.platform.publish_routes().await {
            tracing::warn!(error = %e, "route update after {after}");
        }
    }
}
