//! The service layer: the business rules every front door shares.
//!
//! ```text
//!   ssh commands ──┐
//!   (HTTP API) ────┼──► Service::{apps, config, domains, ps, releases, keys, previews}
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
pub mod audit;
pub mod cluster;
pub mod config;
pub mod domains;
pub mod keys;
pub mod logs;
pub mod previews;
pub mod ps;
pub mod releases;
pub mod sessions;
pub mod storage;
pub mod sync;
pub mod tokens;

use std::sync::Arc;

use crate::acme::Acme;
use crate::deploy::Platform;
use crate::names::AppName;
use crate::state::{self, keys::Role, Db};

pub use crate::actor::{Actor, Principal, Source};

/// The role and grants the actor's credential has now, or `None` when it
/// is gone (removed, revoked or expired).
fn current_grants(
    c: &rusqlite::Connection,
    principal: &Principal,
) -> Result<Option<(Role, Vec<AppName>)>, state::StateError> {
    Ok(match principal {
        Principal::Key { fingerprint } => {
            state::keys::by_fingerprint(c, fingerprint)?.map(|k| (k.role, k.apps))
        }
        Principal::Token { id } => state::tokens::by_id(c, *id)?
            .filter(|t| !t.expired(state::now()))
            .map(|t| (t.role, t.apps)),
    })
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
    /// Something named that is not there (a release, a token, a key).
    #[error("{0}")]
    NotFound(String),
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
            state::StateError::NotFound(what) => {
                ServiceError::NotFound(format!("{what} not found"))
            }
            state::StateError::Full(line) => ServiceError::Invalid(line),
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
    /// Dashboard login codes and browser sessions (in memory).
    pub sessions: sessions::Sessions,
    /// Syncs from repository URLs, once the daemon has enabled them.
    sync: std::sync::OnceLock<Arc<sync::Syncer>>,
}

impl Service {
    pub fn new(db: Db, platform: Arc<Platform>, acme: Acme, domain: String) -> Service {
        Service {
            db,
            platform,
            acme,
            domain,
            sessions: sessions::Sessions::default(),
            sync: std::sync::OnceLock::new(),
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
        let principal = actor.principal.clone();
        let (found, grants, parent) = self
            .db
            .call(move |c| {
                Ok((
                    state::apps::get(c, &name)?,
                    current_grants(c, &principal)?,
                    state::previews::by_app(c, &name)?.map(|p| p.parent),
                ))
            })
            .await?;
        // Re-read the credential: a grant, its role or the key or token
        // itself may have changed since the actor signed in.
        let role = grants.as_ref().map(|g| g.0);
        let visible = match &grants {
            Some((Role::Admin, _)) => true,
            // A grant on an app reaches its previews.
            Some((_, apps)) => {
                apps.contains(app) || parent.as_ref().is_some_and(|p| apps.contains(p))
            }
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
                "viewers can only read {app}"
            ))),
            (Access::Admin, _) => Err(ServiceError::Forbidden(format!(
                "only admins can do that to {app}"
            ))),
        }
    }

    /// Operations that name no app and are for admins only.
    pub fn require_admin(&self, actor: &Actor, what: &str) -> Result<(), ServiceError> {
        if actor.is_admin() {
            Ok(())
        } else {
            Err(ServiceError::Forbidden(format!("only admins can {what}")))
        }
    }

    /// Run a change and append its outcome to the audit log: who, what,
    /// which app, from where, and the result, refusals included. `detail`
    /// names what changed (keys, hosts, counts), never a secret value.
    pub async fn audited<T>(
        &self,
        actor: &Actor,
        action: &str,
        app: Option<&AppName>,
        detail: impl Into<String>,
        change: impl std::future::Future<Output = Result<T, ServiceError>>,
    ) -> Result<T, ServiceError> {
        let result = change.await;
        // An operator's setup fault reaches an admin as its cause.
        let result = match result {
            Err(ServiceError::Deploy(e)) => Err(ServiceError::Deploy(e.shown_to(actor.is_admin()))),
            other => other,
        };
        let (outcome, message) = match &result {
            Ok(_) => ("ok", String::new()),
            Err(ServiceError::Forbidden(_)) => ("denied", result_message(&result)),
            Err(ServiceError::AppNotFound(_)) if !actor.is_admin() => {
                ("denied", result_message(&result))
            }
            Err(_) => ("failed", result_message(&result)),
        };
        self.record(actor, action, app, detail.into(), outcome, message)
            .await;
        result
    }

    /// Append one audit entry. A failure to write it is logged, not
    /// returned: the change it describes has already happened.
    pub async fn record(
        &self,
        actor: &Actor,
        action: &str,
        app: Option<&AppName>,
        detail: String,
        outcome: &str,
        message: String,
    ) {
        let entry = actor.audit_entry(action, app, detail, outcome, message);
        tracing::info!(
            actor = %entry.actor, source = %entry.source, action = %entry.action,
            app = entry.app.as_deref().unwrap_or("-"), result = %entry.result, "audit"
        );
        if let Err(e) = self.db.call(move |c| state::audit::append(c, &entry)).await {
            tracing::error!(error = %e, "cannot write the audit log");
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

fn result_message<T>(r: &Result<T, ServiceError>) -> String {
    match r {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    }
}
