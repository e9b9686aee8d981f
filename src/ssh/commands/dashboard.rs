//! `dashboard:login`: a one-time link that signs a browser in to the web
//! dashboard as the key that asked (with that key's role).

use super::CommandError;
use crate::service::sessions::CODE_TTL_SECS;
use crate::ssh::Exec;

/// The links alone on stdout (one per listener), the advice on stderr.
pub(super) async fn login(exec: &mut Exec) -> Result<(), CommandError> {
    let (code, _expires_at) = exec
        .ctx
        .service
        .dashboard_login_code(&exec.identity)
        .await?;
    let links: String = exec
        .ctx
        .dashboard_urls
        .iter()
        .map(|base| format!("{base}/login/{code}\n"))
        .collect();
    exec.stdout(links).await;
    exec.stderr(format!(
        "Open one of these links within {} minutes; it works once and signs you in as {} ({}).\n",
        CODE_TTL_SECS / 60,
        exec.identity.name,
        exec.identity.role.as_str(),
    ))
    .await;
    Ok(())
}
