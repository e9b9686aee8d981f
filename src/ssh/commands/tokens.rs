//! `tokens`, `tokens:create`, `tokens:revoke` (admins) and `audit`.

use super::{json, time, CommandError};
use crate::names::AppName;
use crate::service::tokens::parse_expiry;
use crate::ssh::Exec;
use crate::state::keys::Role;

pub(super) async fn list(exec: &mut Exec, as_json: bool) -> Result<(), CommandError> {
    let tokens = exec.ctx.service.tokens(&exec.identity).await?;
    let text = if as_json {
        json(&tokens)?
    } else if tokens.is_empty() {
        "no tokens: create one with `tokens:create NAME --role ROLE`\n".to_owned()
    } else {
        let now = crate::state::now();
        tokens
            .iter()
            .map(|t| {
                let apps = match t.role {
                    Role::Admin => "all apps".to_owned(),
                    _ if t.apps.is_empty() => "no apps".to_owned(),
                    _ => t
                        .apps
                        .iter()
                        .map(AppName::as_str)
                        .collect::<Vec<_>>()
                        .join(","),
                };
                let expires = match t.expires_at {
                    Some(at) if at <= now => format!("expired {}", time(at)),
                    Some(at) => format!("expires {}", time(at)),
                    None => "never expires".to_owned(),
                };
                let used = t
                    .last_used_at
                    .map(|at| format!("last used {}", time(at)))
                    .unwrap_or_else(|| "never used".to_owned());
                format!(
                    "{:<20} {:<9} {apps}; {expires}; {used}\n",
                    t.name,
                    t.role.as_str()
                )
            })
            .collect()
    };
    exec.stdout(text).await;
    Ok(())
}

/// Prints the token alone on stdout, so `TOKEN=$(ssh … tokens:create …)`
/// captures it; the advice goes to stderr.
pub(super) async fn create(
    exec: &mut Exec,
    name: String,
    role: Role,
    apps: Vec<AppName>,
    expires: Option<String>,
) -> Result<(), CommandError> {
    let expires_in = expires.as_deref().map(parse_expiry).transpose()?;
    let created = exec
        .ctx
        .service
        .create_token(&exec.identity, &name, role, apps, expires_in)
        .await?;
    exec.stdout(format!("{}\n", created.secret)).await;
    exec.stderr(format!(
        "created token {} ({}); it is shown only once: store it now\n",
        created.token.name,
        created.token.role.as_str()
    ))
    .await;
    Ok(())
}

pub(super) async fn revoke(exec: &mut Exec, name: String) -> Result<(), CommandError> {
    exec.ctx.service.revoke_token(&exec.identity, &name).await?;
    exec.stdout(format!("revoked token {name}\n")).await;
    Ok(())
}

pub(super) async fn audit(
    exec: &mut Exec,
    app: Option<AppName>,
    num: u32,
    as_json: bool,
) -> Result<(), CommandError> {
    let entries = exec
        .ctx
        .service
        .audit_log(&exec.identity, app.as_ref(), num)
        .await?;
    let text = if as_json {
        json(&entries)?
    } else if entries.is_empty() {
        "no audit entries\n".to_owned()
    } else {
        entries
            .iter()
            .map(|e| {
                let mut line = format!(
                    "{}  {:<8} {:<14} {:<16} {} {}({}) via {}{}",
                    time(e.at),
                    e.result,
                    e.action,
                    e.app.as_deref().unwrap_or("-"),
                    e.actor_kind,
                    e.actor,
                    e.role,
                    e.source,
                    e.address
                        .as_deref()
                        .map(|a| format!(" from {a}"))
                        .unwrap_or_default()
                );
                if !e.detail.is_empty() {
                    line.push_str(&format!("  [{}]", e.detail));
                }
                if !e.message.is_empty() {
                    line.push_str(&format!("  {}", e.message));
                }
                // Ref names and messages came from users: one line each
                // (stdout escapes the other control characters).
                format!("{}\n", line.replace('\n', "\\n").replace('\r', "\\r"))
            })
            .collect()
    };
    exec.stdout(text).await;
    Ok(())
}
