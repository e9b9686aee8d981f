//! Who asks: the identity every front door (SSH, the HTTP API, git over
//! HTTPS, the dashboard) hands to the service layer, and the audit entry it leaves.
//!
//! It sits below `service`, `hook` and `deploy` so that all of them can
//! carry it: a push is audited where its outcome is known, in the deploy
//! pipeline.

use crate::names::AppName;
use crate::state::{self, keys::Role};

/// Which credential an actor signed in with. Grants and roles are read
/// again through it on every check, so a revoked key or token, or a
/// changed grant, counts at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Key { fingerprint: String },
    Token { id: i64 },
}

/// Which front door a request came through (for the audit log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Ssh,
    GitSsh,
    Api,
    GitHttp,
    /// A browser session of the web dashboard.
    Dashboard,
    /// The daemon itself, on a schedule (`git:sync --every`).
    Scheduler,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Ssh => "ssh",
            Source::GitSsh => "git-ssh",
            Source::Api => "api",
            Source::GitHttp => "git-http",
            Source::Dashboard => "dashboard",
            Source::Scheduler => "scheduler",
        }
    }
}

/// Who asks: a key or a token with a role, through a front door, from an
/// address.
#[derive(Debug, Clone)]
pub struct Actor {
    /// The key's or token's name.
    pub name: String,
    pub principal: Principal,
    pub role: Role,
    pub source: Source,
    pub address: Option<std::net::IpAddr>,
}

impl Actor {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// Viewers see config values masked, whatever they ask for.
    pub fn sees_secrets(&self) -> bool {
        self.role != Role::Viewer
    }

    /// The same actor, coming through another door (an SSH session's git
    /// push is `git-ssh`).
    pub fn via(&self, source: Source) -> Actor {
        Actor {
            source,
            ..self.clone()
        }
    }

    pub fn kind(&self) -> &'static str {
        match self.principal {
            Principal::Key { .. } => "key",
            Principal::Token { .. } => "token",
        }
    }
}

impl Actor {
    /// The audit entry for `action` by this actor, now.
    pub fn audit_entry(
        &self,
        action: &str,
        app: Option<&AppName>,
        detail: String,
        outcome: &str,
        message: String,
    ) -> state::audit::Entry {
        state::audit::Entry {
            id: 0,
            at: state::now(),
            actor: self.name.clone(),
            actor_kind: self.kind().to_owned(),
            role: self.role.as_str().to_owned(),
            source: self.source.as_str().to_owned(),
            address: self.address.map(|a| a.to_string()),
            action: action.to_owned(),
            app: app.map(|a| a.to_string()),
            detail,
            result: outcome.to_owned(),
            message,
        }
    }
}
