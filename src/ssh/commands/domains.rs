//! `domains`, `domains:add`, `domains:remove`: custom hosts for an app.
//!
//! Hosts are normalized once ([`Hostname::parse`]: lowercase, IDNA to
//! ASCII, no trailing dot or port) and routed as soon as they are added.

use super::{json, CommandError};
use crate::names::{AppName, Hostname};
use crate::ssh::{visible_app, Exec};
use crate::state;

pub(super) async fn list(exec: &mut Exec, app: String, as_json: bool) -> Result<(), CommandError> {
    let ctx = exec.ctx.clone();
    let app = AppName::parse(&app)?;
    visible_app(&ctx, &exec.identity, &app).await?;
    let a = app.clone();
    let custom = ctx.db.call(move |c| state::domains::list(c, &a)).await?;
    let default = format!("{app}.{}", ctx.domain);
    let text = if as_json {
        json(&serde_json::json!({ "default": default, "custom": custom }))?
    } else {
        let mut s = format!("=== {app} domains\n{default} (default)\n");
        for h in &custom {
            s.push_str(&format!("{h}\n"));
        }
        s
    };
    exec.stdout(text).await;
    Ok(())
}

pub(super) async fn add(exec: &mut Exec, app: String, host: String) -> Result<(), CommandError> {
    let ctx = exec.ctx.clone();
    let app = AppName::parse(&app)?;
    visible_app(&ctx, &exec.identity, &app).await?;
    let host = Hostname::parse(&host)?;
    // NAME.DOMAIN is where app NAME lives (or will): never a custom domain.
    if let Some(label) = host
        .as_str()
        .strip_suffix(&format!(".{}", ctx.domain))
        .filter(|l| !l.contains('.'))
    {
        return Err(CommandError::Invalid(format!(
            "{host} is reserved for the app named {label:?}: hosts like NAME.{} are apps' default hosts",
            ctx.domain
        )));
    }
    let (a, h) = (app.clone(), host.clone());
    ctx.db.call(move |c| state::domains::add(c, &a, &h)).await?;
    if let Err(e) = ctx.platform.publish_routes().await {
        tracing::warn!(error = %e, "route update after domains:add");
    }
    ctx.acme.notify();
    exec.stdout(format!("added {host} to {app}\n")).await;
    Ok(())
}

pub(super) async fn remove(exec: &mut Exec, app: String, host: String) -> Result<(), CommandError> {
    let ctx = exec.ctx.clone();
    let app = AppName::parse(&app)?;
    visible_app(&ctx, &exec.identity, &app).await?;
    let host = Hostname::parse(&host)?;
    let (a, h) = (app.clone(), host.clone());
    ctx.db
        .call(move |c| state::domains::remove(c, &a, &h))
        .await?;
    if let Err(e) = ctx.platform.publish_routes().await {
        tracing::warn!(error = %e, "route update after domains:remove");
    }
    ctx.acme.notify();
    exec.stdout(format!("removed {host} from {app}\n")).await;
    Ok(())
}
