//! `config`, `config:get`, `config:set`, `config:unset`.
//!
//! Values are stored and returned byte for byte: quotes, `$(...)`,
//! backticks, `;` and newlines are just bytes, because no shell ever sees
//! them (the exec string is split by shell-words, then parsed by clap). A
//! value never appears in a process argument, a log line or an error
//! message: errors name the key only.

use std::collections::BTreeMap;

use base64::Engine as _;

use super::{json, with_progress, CommandError};
use crate::deploy::ops::Outcome;
use crate::deploy::Progress;
use crate::names::AppName;
use crate::ssh::Exec;

use crate::service::config::{check_name, check_value, MAX_VALUE};

/// An app the caller may see, and its config vars.
async fn app_vars(
    exec: &Exec,
    app: &AppName,
) -> Result<(AppName, BTreeMap<String, String>), CommandError> {
    let vars = exec.ctx.service.config_vars(&exec.identity, app).await?;
    Ok((app.clone(), vars))
}

pub(super) async fn show(
    exec: &mut Exec,
    app: AppName,
    as_json: bool,
    reveal: bool,
) -> Result<(), CommandError> {
    let (app, vars) = app_vars(exec, &app).await?;
    if reveal && !exec.identity.sees_secrets() {
        return Err(CommandError::Forbidden(format!(
            "viewers see {app}'s config values masked"
        )));
    }
    let shown = |v: &String| {
        if reveal {
            v.clone()
        } else {
            "********".to_owned()
        }
    };
    let text = if as_json {
        let map: BTreeMap<&String, String> = vars.iter().map(|(k, v)| (k, shown(v))).collect();
        json(&map)?
    } else if vars.is_empty() {
        format!("{app} has no config vars\n")
    } else {
        let mut s = format!("=== {app} config vars\n");
        for (k, v) in &vars {
            if reveal {
                s.push_str(&format!("{k}={v}\n"));
            } else {
                s.push_str(&format!("{k}=******** ({} bytes)\n", v.len()));
            }
        }
        if !reveal {
            s.push_str("(values hidden: add --reveal to show them)\n");
        }
        s
    };
    exec.stdout(text).await;
    Ok(())
}

pub(super) async fn get(
    exec: &mut Exec,
    app: AppName,
    key: String,
    as_json: bool,
) -> Result<(), CommandError> {
    let (app, vars) = app_vars(exec, &app).await?;
    if !exec.identity.sees_secrets() {
        return Err(CommandError::Forbidden(format!(
            "viewers see {app}'s config values masked"
        )));
    }
    let Some(value) = vars.get(&key) else {
        return Err(CommandError::Invalid(format!(
            "{app} has no config var {key}"
        )));
    };
    let text = if as_json {
        json(value)?
    } else {
        format!("{value}\n")
    };
    exec.stdout(text).await;
    Ok(())
}

pub(super) async fn set(
    exec: &mut Exec,
    app: AppName,
    pairs: Vec<String>,
    restart: bool,
    encoded: bool,
    stdin_key: Option<String>,
) -> Result<(), CommandError> {
    // Who may change it comes first: a deployer without a grant learns
    // nothing, not even which of its arguments are wrong.
    exec.ctx
        .service
        .app(&exec.identity, &app, crate::service::Access::Manage)
        .await?;
    // Validate everything before storing anything.
    let mut set = BTreeMap::new();
    for (i, pair) in pairs.iter().enumerate() {
        // Never echo it: an argument without '=' may be a secret typed
        // without its name. Counting the app as argument 1.
        let Some((name, value)) = pair.split_once('=') else {
            return Err(CommandError::Invalid(format!(
                "argument {} is not KEY=VALUE (not shown: it may be a secret)",
                i + 2
            )));
        };
        check_name(name)?;
        let bytes = if encoded {
            base64::engine::general_purpose::STANDARD
                .decode(value.trim())
                .map_err(|_| CommandError::Invalid(format!("the value of {name} is not base64")))?
        } else {
            value.as_bytes().to_vec()
        };
        set.insert(name.to_owned(), check_value(name, &bytes)?);
    }
    if let Some(name) = stdin_key {
        check_name(&name)?;
        let bytes = exec.read_stdin(MAX_VALUE + 1).await.map_err(|_| {
            CommandError::Invalid(format!(
                "the value of {name} is larger than {} KiB",
                MAX_VALUE / 1024
            ))
        })?;
        set.insert(name.clone(), check_value(&name, &bytes)?);
    }
    if set.is_empty() {
        return Err(CommandError::Usage(
            "nothing to set: give KEY=VALUE pairs or --stdin KEY".into(),
        ));
    }
    let names: Vec<String> = set.keys().cloned().collect();
    apply(exec, &app, set, Vec::new(), restart, &names.join(", ")).await
}

pub(super) async fn unset(
    exec: &mut Exec,
    app: AppName,
    keys: Vec<String>,
    restart: bool,
) -> Result<(), CommandError> {
    let names = keys.join(", ");
    apply(exec, &app, BTreeMap::new(), keys, restart, &names).await
}

async fn apply(
    exec: &mut Exec,
    app: &AppName,
    set: BTreeMap<String, String>,
    unset: Vec<String>,
    restart: bool,
    names: &str,
) -> Result<(), CommandError> {
    let ctx = exec.ctx.clone();
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let mut progress = Progress::new(Some(tx));
    let outcome = with_progress(
        exec,
        rx,
        ctx.service
            .change_config(&exec.identity, app, set, unset, restart, &mut progress),
    )
    .await?;
    let text = match outcome {
        Outcome::Released(v) => format!("{names} updated on {app}; released v{v}\n"),
        Outcome::Stored => format!("{names} updated on {app}; the next release will use it\n"),
    };
    exec.stdout(text).await;
    Ok(())
}
