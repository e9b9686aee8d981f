//! `releases` and `logs`: what an app ran and what it printed.

use super::{json, time, CommandError};
use crate::names::AppName;
use crate::ssh::{visible_app, Exec};
use crate::state::{self, releases};

pub(super) async fn list(
    exec: &mut Exec,
    app: String,
    as_json: bool,
    num: u32,
) -> Result<(), CommandError> {
    let ctx = exec.ctx.clone();
    let app = AppName::parse(&app)?;
    visible_app(&ctx, &exec.identity, &app).await?;
    let a = app.clone();
    let list = ctx
        .db
        .call(move |c| state::releases::list(c, &a, num.min(1000)))
        .await?;
    let text = if as_json {
        json(&list)?
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
            s.push_str(&format!(
                "{mark} v{:<4} {sha:<7}  {status:<20} {}  {}\n",
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
    app: String,
    num: usize,
    process: Option<String>,
    build: Option<String>,
) -> Result<(), CommandError> {
    let ctx = exec.ctx.clone();
    let app = AppName::parse(&app)?;
    visible_app(&ctx, &exec.identity, &app).await?;
    if let Some(v) = build {
        let version: u32 = v
            .strip_prefix('v')
            .unwrap_or(&v)
            .parse()
            .map_err(|_| CommandError::Invalid(format!("{v:?} is not a release like v3")))?;
        let bytes = ctx
            .platform
            .logs
            .read_build_log(&app, version)
            .map_err(|_| CommandError::Invalid(format!("no build log for {app} v{version}")))?;
        exec.stdout(bytes).await;
        return Ok(());
    }
    let lines = ctx
        .platform
        .logs
        .tail(&app, num.min(100_000), process.as_deref())
        .map_err(|e| CommandError::Internal(e.to_string()))?;
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    exec.stdout(text).await;
    Ok(())
}
