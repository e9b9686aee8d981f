//! `ps`, `ps:scale`, `ps:restart`, `ps:stop`, `ps:start` and `run`: an
//! app's processes.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use super::{json, with_progress, CommandError};
use crate::deploy::Progress;
use crate::names::{AppName, ProcessType};
use crate::runtime::{Attach, PtySize};
use crate::ssh::{readable_app, visible_app, Exec};
use crate::state::{formation, releases};

use crate::service::ps::MAX_SCALE;
/// How long a one-off `run` may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(60 * 60);

fn uptime(since: SystemTime) -> String {
    let secs = SystemTime::now()
        .duration_since(since)
        .unwrap_or_default()
        .as_secs();
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m", secs / 60),
        3600..=86399 => format!("{}h{}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d{}h", secs / 86400, secs % 86400 / 3600),
    }
}

pub(super) async fn list(exec: &mut Exec, app: AppName, as_json: bool) -> Result<(), CommandError> {
    let ctx = exec.ctx.clone();
    let record = readable_app(&ctx, &exec.identity, &app).await?;
    let a = app.clone();
    let (live, stored) = ctx
        .db
        .call(move |c| Ok((releases::live(c, &a)?, formation::get(c, &a)?)))
        .await?;
    let mut instances = ctx
        .platform
        .runtime
        .list(Some(&app))
        .await
        .map_err(|e| CommandError::Internal(e.to_string()))?;
    instances.sort_by(|a, b| (&a.process, a.index).cmp(&(&b.process, b.index)));
    // Instances of other releases are being drained and stopped after a
    // change that already returned: shown apart, as what is going away.
    let live_version = live.as_ref().map(|r| r.version);
    let (instances, draining): (Vec<_>, Vec<_>) = instances
        .into_iter()
        .partition(|i| Some(i.release) == live_version);
    let desired = live
        .as_ref()
        .map(|r| formation::desired(&stored, &r.processes))
        .unwrap_or_default();

    let text = if as_json {
        let rows: Vec<_> = instances
            .iter()
            .map(|i| {
                serde_json::json!({
                    "name": format!("{}.{}", i.process, i.index),
                    "process": i.process,
                    "release": i.release,
                    "state": i.state.as_str(),
                    "started_at": i.started_at.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
                    "restarts": i.restarts,
                    "endpoint": i.endpoint.map(|e| e.to_string()),
                })
            })
            .collect();
        let draining: Vec<_> = draining
            .iter()
            .map(|i| {
                serde_json::json!({
                    "name": format!("{}.{}", i.process, i.index),
                    "process": i.process,
                    "release": i.release,
                })
            })
            .collect();
        json(&serde_json::json!({
            "app": app,
            "stopped": record.stopped,
            "formation": desired,
            "instances": rows,
            "draining": draining,
        }))?
    } else {
        let mut s = format!("=== {app}");
        if record.stopped {
            s.push_str(" (stopped: ps:start to run it again)");
        }
        s.push('\n');
        if !desired.is_empty() {
            let f: Vec<String> = desired.iter().map(|(p, n)| format!("{p}={n}")).collect();
            s.push_str(&format!("formation: {}\n", f.join(" ")));
        }
        if instances.is_empty() {
            s.push_str("no instances running\n");
        }
        for i in &instances {
            s.push_str(&format!(
                "{:<12} {:<9} up {:<7} restarts {:<3} v{:<4} {}\n",
                format!("{}.{}", i.process, i.index),
                i.state.as_str(),
                uptime(i.started_at),
                i.restarts,
                i.release,
                i.endpoint.map(|e| e.to_string()).unwrap_or_default()
            ));
        }
        for i in &draining {
            s.push_str(&format!(
                "{:<12} draining  (v{}, replaced; stops once its requests finish)\n",
                format!("{}.{}", i.process, i.index),
                i.release
            ));
        }
        s
    };
    exec.stdout(text).await;
    Ok(())
}

pub(super) async fn scale(
    exec: &mut Exec,
    app: AppName,
    pairs: Vec<String>,
) -> Result<(), CommandError> {
    let ctx = exec.ctx.clone();
    visible_app(&ctx, &exec.identity, &app).await?;
    let mut changes = BTreeMap::new();
    for pair in &pairs {
        let (p, n) = pair
            .split_once('=')
            .ok_or_else(|| CommandError::Invalid(format!("expected TYPE=COUNT, got {pair:?}")))?;
        let process = ProcessType::parse(p)?;
        let count: u32 = n.parse().map_err(|_| {
            CommandError::Invalid(format!("{p}: count must be a number from 0 to {MAX_SCALE}"))
        })?;
        changes.insert(process, count);
    }
    let summary: Vec<String> = changes.iter().map(|(p, n)| format!("{p}={n}")).collect();
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let mut progress = Progress::new(Some(tx));
    with_progress(
        exec,
        rx,
        ctx.service
            .scale(&exec.identity, &app, changes, &mut progress),
    )
    .await?;
    exec.stdout(format!("scaled {app} to {}\n", summary.join(" ")))
        .await;
    Ok(())
}

pub(super) async fn restart(
    exec: &mut Exec,
    app: AppName,
    process: Option<ProcessType>,
) -> Result<(), CommandError> {
    let ctx = exec.ctx.clone();
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let mut progress = Progress::new(Some(tx));
    let n = with_progress(
        exec,
        rx,
        ctx.service
            .restart(&exec.identity, &app, process.as_ref(), &mut progress),
    )
    .await?;
    exec.stdout(format!("restarted {n} instance(s) of {app}\n"))
        .await;
    Ok(())
}

pub(super) async fn stop_start(
    exec: &mut Exec,
    app: AppName,
    stop: bool,
) -> Result<(), CommandError> {
    let ctx = exec.ctx.clone();
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let mut progress = Progress::new(Some(tx));
    with_progress(
        exec,
        rx,
        ctx.service
            .set_stopped(&exec.identity, &app, stop, &mut progress),
    )
    .await?;
    let verb = if stop { "stopped" } else { "started" };
    exec.stdout(format!("{verb} {app}\n")).await;
    Ok(())
}

/// The command's output streams back as it comes and the client's stdin
/// reaches it; its exit status becomes the SSH exit status (see
/// [`Exec::exit_override`]). With `ssh -t` it runs on a pseudo-terminal.
pub(super) async fn run(
    exec: &mut Exec,
    app: AppName,
    command: Vec<String>,
) -> Result<(), CommandError> {
    let ctx = exec.ctx.clone();
    let program = command.first().map(String::as_str).unwrap_or("");
    ctx.service
        .authorize_run(&exec.identity, &app, program)
        .await?;
    let platform = ctx.platform.clone();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(256);
    // The command owns stdin from here; the exec keeps an ended one.
    let stdin = std::mem::replace(&mut exec.stdin, tokio::sync::mpsc::channel(1).1);
    let io = Attach {
        stdin,
        output: tx,
        pty: exec.pty.as_ref().map(|p| PtySize {
            cols: p.cols,
            rows: p.rows,
            term: p.term.clone(),
        }),
        resize: exec.resize.clone(),
    };
    let fut = platform.run_one_off(&app, command, io, RUN_TIMEOUT);
    tokio::pin!(fut);
    let closed = exec.closed.clone();
    let result = loop {
        tokio::select! {
            r = &mut fut => break r,
            Some(chunk) = rx.recv() => exec.stdout(chunk).await,
            // The client went away: dropping the future kills the command.
            _ = closed.cancelled() => return Ok(()),
        }
    };
    while let Ok(chunk) = rx.try_recv() {
        exec.stdout(chunk).await;
    }
    let code = result?;
    exec.exit_override = Some(code.clamp(0, 255) as u32);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptimes() {
        let now = SystemTime::now();
        assert_eq!(uptime(now), "0s");
        assert_eq!(uptime(now - Duration::from_secs(125)), "2m");
        assert_eq!(uptime(now - Duration::from_secs(3 * 3600 + 60)), "3h1m");
    }
}
