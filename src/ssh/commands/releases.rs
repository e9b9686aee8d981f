//! `releases` and `logs`: what an app ran and what it printed.

use super::{json, parse_version, time, with_progress, CommandError};
use crate::deploy::Progress;
use crate::names::AppName;
use crate::ssh::{readable_app, visible_app, Exec};
use crate::state::releases;

pub(super) async fn list(
    exec: &mut Exec,
    app: AppName,
    as_json: bool,
    num: u32,
) -> Result<(), CommandError> {
    let ctx = exec.ctx.clone();
    let list = ctx.service.releases(&exec.identity, &app, num).await?;
    let synced = ctx.service.syncs_by_release(&exec.identity, &app).await?;
    let text = if as_json {
        let rows: Vec<serde_json::Value> = list
            .iter()
            .map(|r| {
                let mut v = serde_json::to_value(r).unwrap_or_default();
                if let (Some(run), Some(obj)) = (synced.get(&r.version), v.as_object_mut()) {
                    obj.insert("sync".into(), serde_json::json!(run.id));
                }
                v
            })
            .collect();
        json(&rows)?
    } else if list.is_empty() {
        format!("{app} has no releases yet: git push to deploy\n")
    } else {
        let mut s = format!("=== {app} releases\n");
        for r in &list {
            let sha = r
                .sha
                .as_deref()
                .map(|s| &s[..s.len().min(7)])
                .unwrap_or("-");
            let status = match (&r.status, &r.failed_stage) {
                (releases::Status::Failed, Some(stage)) => format!("failed ({stage})"),
                (st, _) => st.as_str().to_owned(),
            };
            let mark = if r.status == releases::Status::Live {
                "*"
            } else {
                " "
            };
            let via = synced
                .get(&r.version)
                .map(|run| format!(" (sync #{} from {})", run.id, run.url))
                .unwrap_or_default();
            s.push_str(&format!(
                "{mark} v{:<4} {sha:<7}  {status:<20} {}  {}{via}\n",
                r.version,
                time(r.created_at),
                r.description
            ));
        }
        s
    };
    exec.stdout(text).await;
    Ok(())
}

pub(super) async fn logs(
    exec: &mut Exec,
    app: AppName,
    num: usize,
    process: Option<String>,
    build: Option<String>,
    follow: bool,
) -> Result<(), CommandError> {
    let ctx = exec.ctx.clone();
    readable_app(&ctx, &exec.identity, &app).await?;
    let logs = ctx.platform.logs.clone();
    if let Some(v) = build {
        let version = parse_version(&v)?;
        let a = app.clone();
        let bytes = tokio::task::spawn_blocking(move || logs.read_build_log(&a, version))
            .await
            .map_err(|e| CommandError::Internal(e.to_string()))?
            .map_err(|_| CommandError::Invalid(format!("no build log for {app} v{version}")))?;
        exec.stdout(bytes).await;
        return Ok(());
    }
    // Subscribe before reading the tail, so no line falls between the two.
    let mut live = follow.then(|| logs.follow(&app));
    let (a, p) = (app.clone(), process.clone());
    let l2 = logs.clone();
    let lines = tokio::task::spawn_blocking(move || l2.tail(&a, num.min(100_000), p.as_deref()))
        .await
        .map_err(|e| CommandError::Internal(e.to_string()))?
        .map_err(|e| CommandError::Internal(e.to_string()))?;
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    exec.stdout(text).await;
    let Some(rx) = live.as_mut() else {
        return Ok(());
    };
    let closed = exec.closed.clone();
    loop {
        tokio::select! {
            _ = closed.cancelled() => return Ok(()),
            line = rx.recv() => match line {
                Ok(l) if process.as_deref().is_none_or(|p| l.is_from(p)) => exec.stdout(format!("{l}\n")).await,
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    exec.stdout(format!("[... {n} lines skipped: the reader fell behind]\n")).await
                }
                // The app was destroyed.
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(()),
            },
        }
    }
}

pub(super) async fn rollback(
    exec: &mut Exec,
    app: AppName,
    version: Option<String>,
) -> Result<(), CommandError> {
    let ctx = exec.ctx.clone();
    visible_app(&ctx, &exec.identity, &app).await?;
    let version = version.as_deref().map(parse_version).transpose()?;
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let mut progress = Progress::new(Some(tx));
    let v = with_progress(
        exec,
        rx,
        ctx.service
            .rollback(&exec.identity, &app, version, &mut progress),
    )
    .await?;
    exec.stdout(format!("rolled {app} back: released v{v}\n"))
        .await;
    Ok(())
}
