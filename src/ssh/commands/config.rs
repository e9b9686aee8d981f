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
use crate::ssh::{visible_app, Exec};
use crate::state;

/// Largest value, and largest total per app.
const MAX_VALUE: usize = 64 * 1024;
const MAX_TOTAL: usize = 512 * 1024;
/// Settings Cygni reads from the app's config; every other CYGNI_ name is reserved.
const ALLOWED_CYGNI: &[&str] = &["CYGNI_BUILDER"];

/// `[A-Za-z_][A-Za-z0-9_]*`, not reserved.
pub fn check_name(name: &str) -> Result<(), CommandError> {
    let b = name.as_bytes();
    let shaped = !b.is_empty()
        && b.len() <= 256
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_');
    if !shaped {
        return Err(CommandError::Invalid(format!(
            "invalid config var name {name:?}: use letters, digits and '_', not starting with a digit"
        )));
    }
    if name == "PORT" || name == "DYNO" {
        return Err(CommandError::Invalid(format!(
            "{name} is set by Cygni for each instance and cannot be configured"
        )));
    }
    if name.starts_with("CYGNI_") && !ALLOWED_CYGNI.contains(&name) {
        return Err(CommandError::Invalid(format!(
            "{name}: the CYGNI_ prefix is reserved (settable: {})",
            ALLOWED_CYGNI.join(", ")
        )));
    }
    Ok(())
}

fn check_value(name: &str, value: &[u8]) -> Result<String, CommandError> {
    if value.len() > MAX_VALUE {
        return Err(CommandError::Invalid(format!(
            "the value of {name} is larger than {} KiB",
            MAX_VALUE / 1024
        )));
    }
    if value.contains(&0) {
        return Err(CommandError::Invalid(format!(
            "the value of {name} contains a NUL byte, which an environment variable cannot hold"
        )));
    }
    String::from_utf8(value.to_vec()).map_err(|_| {
        CommandError::Invalid(format!(
            "the value of {name} is not UTF-8 text (encode binary data, e.g. as base64, in the app)"
        ))
    })
}

/// An app the caller may see, and its config vars.
async fn app_vars(
    exec: &Exec,
    app: &str,
) -> Result<(AppName, BTreeMap<String, String>), CommandError> {
    let ctx = exec.ctx.clone();
    let app = AppName::parse(app)?;
    visible_app(&ctx, &exec.identity, &app).await?;
    let a = app.clone();
    let vars = ctx
        .db
        .call(move |c| state::config_vars::get_all(c, &a))
        .await?;
    Ok((app, vars))
}

pub(super) async fn show(
    exec: &mut Exec,
    app: String,
    as_json: bool,
    reveal: bool,
) -> Result<(), CommandError> {
    let (app, vars) = app_vars(exec, &app).await?;
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
    app: String,
    key: String,
    as_json: bool,
) -> Result<(), CommandError> {
    let (app, vars) = app_vars(exec, &app).await?;
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
    app: String,
    pairs: Vec<String>,
    restart: bool,
    encoded: bool,
    stdin_key: Option<String>,
) -> Result<(), CommandError> {
    let ctx = exec.ctx.clone();
    let app = AppName::parse(&app)?;
    visible_app(&ctx, &exec.identity, &app).await?;

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
    let a = app.clone();
    let current = ctx
        .db
        .call(move |c| state::config_vars::get_all(c, &a))
        .await?;
    let mut total: usize = current
        .iter()
        .filter(|(k, _)| !set.contains_key(*k))
        .map(|(k, v)| k.len() + v.len())
        .sum();
    total += set.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
    if total > MAX_TOTAL {
        return Err(CommandError::Invalid(format!(
            "{app}'s config would exceed {} KiB in all",
            MAX_TOTAL / 1024
        )));
    }
    let names: Vec<String> = set.keys().cloned().collect();
    apply(exec, &app, set, Vec::new(), restart, &names.join(", ")).await
}

pub(super) async fn unset(
    exec: &mut Exec,
    app: String,
    keys: Vec<String>,
    restart: bool,
) -> Result<(), CommandError> {
    let ctx = exec.ctx.clone();
    let app = AppName::parse(&app)?;
    visible_app(&ctx, &exec.identity, &app).await?;
    for k in &keys {
        check_name(k)?;
    }
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
    let platform = exec.ctx.platform.clone();
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let mut progress = Progress::new(Some(tx));
    let outcome = with_progress(
        exec,
        rx,
        platform.change_config(app, set, unset, restart, &mut progress),
    )
    .await?;
    let text = match outcome {
        Outcome::Released(v) => format!("{names} updated on {app}; released v{v}\n"),
        Outcome::Stored => format!("{names} updated on {app}; the next release will use it\n"),
    };
    exec.stdout(text).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["A", "_x", "DATABASE_URL", "a1", "CYGNI_BUILDER"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for (bad, why) in [
            ("1A", "invalid config var name"),
            ("A-B", "invalid config var name"),
            ("", "invalid config var name"),
            ("A B", "invalid config var name"),
            ("PORT", "set by Cygni"),
            ("CYGNI_SECRET", "reserved"),
        ] {
            let e = check_name(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
            assert!(!bad.is_empty() || e.contains("\"\""));
        }
    }

    #[test]
    fn values() {
        assert_eq!(
            check_value("K", b"$(id) `x` a;b|c&d\n'\"").unwrap(),
            "$(id) `x` a;b|c&d\n'\""
        );
        assert!(check_value("K", b"a\0b").is_err());
        assert!(check_value("K", &[0xff, 0xfe]).is_err());
        assert!(check_value("K", &vec![b'a'; MAX_VALUE + 1]).is_err());
        // Errors never carry the value.
        let e = check_value("K", b"secret\0").unwrap_err().to_string();
        assert!(!e.contains("secret"));
    }
}
