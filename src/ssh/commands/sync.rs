//! `apps:create APP --from URL [--branch B] [--submodules]` and
//! `git:sync APP [URL] [--ref REF] [--every 10m|off] [--submodules|--no-submodules]`: deploys from a repository URL, with the
//! progress of a push on stderr and the outcome on stdout.

use super::CommandError;
use crate::names::AppName;
use crate::service::sync::PreparedSync;
use crate::ssh::Exec;

/// Run a prepared sync, forwarding its lines to stderr as they come.
async fn run_streaming(exec: &Exec, prep: PreparedSync) -> Result<(), CommandError> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let app = prep.app.clone();
    let service = exec.ctx.service.clone();
    let actor = exec.identity.clone();
    let fut = service.run_sync(&actor, prep, Some(tx));
    tokio::pin!(fut);
    let result = loop {
        tokio::select! {
            r = &mut fut => break r,
            Some(line) = rx.recv() => exec.stderr(line).await,
        }
    };
    while let Ok(line) = rx.try_recv() {
        exec.stderr(line).await;
    }
    let run = result?;
    let version = run.release.map(|v| format!("v{v}")).unwrap_or_default();
    exec.stdout(format!(
        "synced {app} {version} ({}) from {}\nurl: {}\n",
        run.sha
            .as_deref()
            .map(|s| &s[..7.min(s.len())])
            .unwrap_or("-"),
        run.url,
        exec.ctx.app_url(&app)
    ))
    .await;
    Ok(())
}

pub(super) async fn create_from(
    exec: &mut Exec,
    app: AppName,
    url: String,
    branch: Option<String>,
    submodules: bool,
) -> Result<(), CommandError> {
    let ctx = exec.ctx.clone();
    let prep = ctx
        .service
        .create_app_from(&exec.identity, &app, &url, branch.as_deref(), submodules)
        .await?;
    exec.stdout(format!("created {app}\n")).await;
    run_streaming(exec, prep).await
}

pub(super) async fn sync(
    exec: &mut Exec,
    app: AppName,
    url: Option<String>,
    reference: Option<String>,
    every: Option<String>,
    submodules: Option<bool>,
) -> Result<(), CommandError> {
    let ctx = exec.ctx.clone();
    let schedule_only =
        every.is_some() && url.is_none() && reference.is_none() && submodules.is_none();
    if !schedule_only {
        let prep = ctx
            .service
            .prepare_sync(
                &exec.identity,
                &app,
                url.as_deref(),
                reference.as_deref(),
                submodules,
            )
            .await?;
        run_streaming(exec, prep).await?;
    }
    if let Some(every) = every {
        let set = ctx
            .service
            .set_sync_every(&exec.identity, &app, &every)
            .await?;
        let text = match set {
            Some(d) => format!("{app} syncs every {}s when its source moves\n", d.as_secs()),
            None => format!("{app} no longer syncs on a schedule\n"),
        };
        exec.stdout(text).await;
    }
    Ok(())
}
