//! `logs:set APP SETTING on|off`: an app's log settings (Dokku's
//! `logs:set` form). The one setting is `access-log`; the rule is the
//! service layer's (`service/logs.rs`). `logs` itself is in `releases.rs`.

use super::CommandError;
use crate::names::AppName;
use crate::ssh::Exec;

pub(super) async fn set(
    exec: &mut Exec,
    app: AppName,
    setting: String,
    on: bool,
) -> Result<(), CommandError> {
    exec.ctx
        .service
        .set_log_setting(&exec.identity, &app, &setting, on)
        .await?;
    let state = if on { "on" } else { "off" };
    let hint = if on {
        format!("; read it with `logs {app} -p router`")
    } else {
        String::new()
    };
    exec.stdout(format!("{setting} {state} for {app}{hint}\n"))
        .await;
    Ok(())
}
