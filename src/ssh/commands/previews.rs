//! `previews`, `previews:enable`, `previews:disable`, `previews:destroy`:
//! an app's preview environments. The rules are the service layer's
//! (`service/previews.rs`), the pushes the deploy layer's; this parses
//! and renders.

use super::{json, time, CommandError};
use crate::names::AppName;
use crate::service::previews::show_idle;
use crate::ssh::Exec;

pub(super) async fn list(exec: &mut Exec, app: AppName, as_json: bool) -> Result<(), CommandError> {
    let view = exec.ctx.service.previews(&exec.identity, &app).await?;
    let text = if as_json {
        json(&view.previews)?
    } else {
        let mut s = match (&view.pattern, view.idle_secs) {
            (Some(p), Some(idle)) => format!(
                "=== {app} previews (branches {p}; destroyed after {} without a push or request)\n",
                show_idle(idle)
            ),
            _ => format!("=== {app} previews: off (previews:enable {app} turns them on)\n"),
        };
        if view.previews.is_empty() && view.enabled {
            s.push_str("no previews yet: push a matching branch to make one\n");
        }
        for p in &view.previews {
            s.push_str(&format!(
                "{:<20} {:<28} {:<44} {:<5} {:<10} {}\n",
                p.name,
                p.branch,
                p.url,
                p.release.as_deref().unwrap_or("-"),
                p.state,
                p.last_deploy.map(time).unwrap_or_else(|| "-".into())
            ));
        }
        s
    };
    exec.stdout(text).await;
    Ok(())
}

pub(super) async fn enable(
    exec: &mut Exec,
    app: AppName,
    pattern: Option<String>,
    idle: Option<String>,
) -> Result<(), CommandError> {
    let s = exec
        .ctx
        .service
        .enable_previews(&exec.identity, &app, pattern.as_deref(), idle.as_deref())
        .await?;
    let example = s.pattern.replace('*', "NAME");
    exec.stdout(format!(
        "previews on for {app}: a push to {} deploys NAME--{app}; idle limit {}\n\
         try: git push cygni HEAD:{example}\n",
        s.pattern,
        show_idle(s.idle_secs)
    ))
    .await;
    Ok(())
}

pub(super) async fn disable(exec: &mut Exec, app: AppName) -> Result<(), CommandError> {
    let destroyed = exec
        .ctx
        .service
        .disable_previews(&exec.identity, &app)
        .await?;
    let gone = if destroyed.is_empty() {
        String::new()
    } else {
        format!("; destroyed {}", destroyed.join(", "))
    };
    exec.stdout(format!("previews off for {app}{gone}\n")).await;
    Ok(())
}

pub(super) async fn destroy(
    exec: &mut Exec,
    app: AppName,
    name: String,
) -> Result<(), CommandError> {
    exec.ctx
        .service
        .destroy_preview(&exec.identity, &app, &name)
        .await?;
    exec.stdout(format!("destroyed preview {name}--{app}\n"))
        .await;
    Ok(())
}
