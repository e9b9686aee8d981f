//! `domains`, `domains:add`, `domains:remove`: custom hosts for an app.
//!
//! Hosts are normalized once ([`Hostname::parse`]: lowercase, IDNA to
//! ASCII, no trailing dot or port); the rules and the route update are the
//! service layer's (`service/domains.rs`).

use super::{json, CommandError};
use crate::names::{AppName, Hostname};
use crate::ssh::Exec;

pub(super) async fn list(exec: &mut Exec, app: AppName, as_json: bool) -> Result<(), CommandError> {
    let d = exec.ctx.service.domains(&exec.identity, &app).await?;
    let text = if as_json {
        json(&d)?
    } else {
        let mut s = format!("=== {app} domains\n{} (default)\n", d.default);
        for h in &d.custom {
            s.push_str(&format!("{h}\n"));
        }
        s
    };
    exec.stdout(text).await;
    Ok(())
}

pub(super) async fn add(exec: &mut Exec, app: AppName, host: String) -> Result<(), CommandError> {
    // The app first: a deployer without a grant learns nothing of it.
    exec.ctx
        .service
        .app(&exec.identity, &app, crate::service::Access::Manage)
        .await?;
    let host = Hostname::parse(&host)?;
    exec.ctx
        .service
        .add_domain(&exec.identity, &app, &host)
        .await?;
    exec.stdout(format!("added {host} to {app}\n")).await;
    Ok(())
}

pub(super) async fn remove(
    exec: &mut Exec,
    app: AppName,
    host: String,
) -> Result<(), CommandError> {
    exec.ctx
        .service
        .app(&exec.identity, &app, crate::service::Access::Manage)
        .await?;
    let host = Hostname::parse(&host)?;
    exec.ctx
        .service
        .remove_domain(&exec.identity, &app, &host)
        .await?;
    exec.stdout(format!("removed {host} from {app}\n")).await;
    Ok(())
}
