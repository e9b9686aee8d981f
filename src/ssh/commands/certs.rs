//! `certs [APP]`, `certs:renew APP`, `certs:redirect APP on|off`.
//!
//! Reads and marks rows in `certificates`; the renewer (acme) does the
//! ordering, so `certs:renew` returns at once and `certs` shows progress.

use super::{json, time, CommandError};
use crate::names::AppName;
use crate::ssh::Exec;
use crate::state::{self, certs::CertRecord};

impl From<crate::acme::AcmeError> for CommandError {
    fn from(e: crate::acme::AcmeError) -> Self {
        match e {
            crate::acme::AcmeError::State(e) => e.into(),
            other => {
                tracing::error!(error = %other, "acme error in a command");
                CommandError::Internal("certificate store error; see the server log".into())
            }
        }
    }
}

/// The status line `apps:info` and `certs` share.
pub(super) fn status(r: &CertRecord, now: i64) -> String {
    match (r.is_valid_at(now), r.not_after, &r.last_error) {
        (true, Some(until), None) => format!("valid until {}", time(until)),
        (true, Some(until), Some(_)) => {
            format!("valid until {}, last renewal failed", time(until))
        }
        (false, Some(until), _) if until <= now => format!("expired {}", time(until)),
        (false, _, Some(_)) => "none yet, ordering failed".to_owned(),
        _ => "none yet, ordering".to_owned(),
    }
}

pub(super) async fn list(
    exec: &mut Exec,
    app: Option<AppName>,
    as_json: bool,
) -> Result<(), CommandError> {
    let ctx = exec.ctx.clone();
    let rows = ctx.service.certs(&exec.identity, app.as_ref()).await?;
    let now = state::now();
    let text = if as_json {
        json(&rows)?
    } else if rows.is_empty() {
        match &app {
            Some(app) => format!(
                "no certificates for {app}: it is served only at local names (see `help certs`)\n"
            ),
            None => "no certificates\n".to_owned(),
        }
    } else {
        let mut s = String::new();
        for r in &rows {
            s.push_str(&format!(
                "=== {}{}\nstatus:       {}\n",
                r.host,
                r.app
                    .as_ref()
                    .map(|a| format!(" ({a})"))
                    .unwrap_or_default(),
                status(r, now)
            ));
            if let (Some(issuer), Some(serial)) = (&r.issuer, &r.serial) {
                s.push_str(&format!("issuer:       {issuer}\nserial:       {serial}\n"));
            }
            if let Some(t) = r.not_after {
                s.push_str(&format!("expires:      {}\n", time(t)));
            }
            let next = match (r.force_renew, r.next_attempt_at, r.renew_at) {
                (_, Some(t), _) if t > now => Some(t),
                (true, _, _) => Some(now),
                (_, _, Some(t)) => Some(t),
                _ => None,
            };
            if let Some(t) = next {
                s.push_str(&format!("next renewal: {}\n", time(t)));
            }
            if let Some(e) = &r.last_error {
                s.push_str(&format!(
                    "last error:   {e} (attempt {}, at {})\n",
                    r.attempts,
                    time(r.last_attempt_at.unwrap_or(now))
                ));
            }
        }
        s
    };
    exec.stdout(text).await;
    Ok(())
}

pub(super) async fn renew(exec: &mut Exec, app: AppName) -> Result<(), CommandError> {
    let hosts = exec.ctx.service.renew_certs(&exec.identity, &app).await?;
    exec.stdout(format!(
        "renewal requested for {}; follow it with `certs {app}`\n",
        hosts.join(", ")
    ))
    .await;
    Ok(())
}

pub(super) async fn redirect(exec: &mut Exec, app: AppName, on: bool) -> Result<(), CommandError> {
    exec.ctx
        .service
        .set_https_redirect(&exec.identity, &app, on)
        .await?;
    exec.stdout(format!(
        "{app}: plain HTTP {}\n",
        if on {
            "redirects to HTTPS once every host has a certificate"
        } else {
            "is served as is"
        }
    ))
    .await;
    Ok(())
}
