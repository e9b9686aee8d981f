//! Heroku buildpack API v2: `bin/compile BUILD_DIR CACHE_DIR ENV_DIR`, then
//! `bin/release BUILD_DIR` for the default process types.
//!
//! ```text
//! config vars ──► ENV_DIR (private temp dir, one file per var)
//!                    │
//! bin/compile BUILD_DIR CACHE_DIR ENV_DIR ──► output streamed line by line
//!                    │ exit 0
//! bin/release BUILD_DIR ──► `default_process_types:` (a YAML subset, read by hand)
//! ```
//!
//! (`bin/detect` belongs to [`super::detect`].) Buildpacks are app-side
//! code as far as Cygni is concerned: they run as the build user with a
//! clean environment and only their fixed arguments.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{lchown, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use super::process::{Context, Ended, Step};
use super::{blocking, say, BuildError, StepStatus};
use crate::names::ProcessType;

/// How long `bin/release` may take: it prints a few lines.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(30);

/// A detected buildpack.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Buildpack<'a> {
    /// Its directory's name, e.g. `python`.
    pub name: &'a str,
    pub dir: &'a Path,
    /// What its `bin/detect` printed, e.g. `Python`.
    pub display: &'a str,
}

/// Compiles the app in place and returns the buildpack's default process
/// types.
pub(crate) async fn run(
    buildpack: &Buildpack<'_>,
    ctx: &Context<'_>,
    cache_dir: &Path,
    env: &BTreeMap<String, String>,
    compile_timeout: Duration,
) -> Result<BTreeMap<ProcessType, String>, BuildError> {
    say(
        ctx.output,
        format!("-----> Building with buildpack {}", buildpack.display),
    )
    .await;

    let env_dir = {
        let env = env.clone();
        let run_as = ctx.run_as;
        blocking(move || write_env_dir(&env, run_as)).await?
    };
    let compile = Step::new(
        buildpack.dir.join("bin/compile"),
        ctx.cwd,
        ctx.home,
        ctx.run_as,
    )
    .arg(ctx.cwd)
    .arg(cache_dir)
    .arg(env_dir.path());
    let ended = compile
        .run_streamed(compile_timeout, ctx.output, "")
        .await?;
    // The config vars are secrets: gone as soon as compile is.
    drop(env_dir);
    check(buildpack, "compile", ended, compile_timeout)?;

    let release = Step::new(
        buildpack.dir.join("bin/release"),
        ctx.cwd,
        ctx.home,
        ctx.run_as,
    )
    .arg(ctx.cwd);
    let captured = blocking(move || release.run_captured(RELEASE_TIMEOUT)).await?;
    check(buildpack, "release", captured.ended, RELEASE_TIMEOUT)?;
    let processes =
        parse_release(&String::from_utf8_lossy(&captured.stdout)).map_err(|reason| {
            BuildError::BadRelease {
                buildpack: buildpack.name.to_owned(),
                reason,
            }
        })?;

    say_types(ctx.output, buildpack.display, &processes).await;
    Ok(processes)
}

/// Says which default process types the buildpack gave.
pub(crate) async fn say_types(
    output: &tokio::sync::mpsc::Sender<Vec<u8>>,
    display: &str,
    processes: &BTreeMap<ProcessType, String>,
) {
    say(output, "-----> Discovering process types").await;
    let types = if processes.is_empty() {
        "(none: the Procfile says what to run)".to_owned()
    } else {
        processes
            .keys()
            .map(ProcessType::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    };
    say(
        output,
        format!("       Default types for buildpack {display} -> {types}"),
    )
    .await;
}

/// Turns how a step ended into an error naming the buildpack and the step.
fn check(
    buildpack: &Buildpack<'_>,
    step: &'static str,
    ended: Ended,
    timeout: Duration,
) -> Result<(), BuildError> {
    match ended {
        Ended::Exited(status) if status.success() => Ok(()),
        Ended::Exited(status) => Err(BuildError::BuildpackFailed {
            buildpack: buildpack.name.to_owned(),
            step,
            status: StepStatus(status),
        }),
        Ended::TimedOut => Err(BuildError::Timeout {
            what: format!("buildpack {}: bin/{step}", buildpack.name),
            after: timeout,
        }),
    }
}

/// Writes ENV_DIR: one file per config var, named after it, holding its
/// value. The dir is private (0700, files 0600), owned by the build user,
/// and removed when the returned handle drops. Names were checked by the
/// caller, so each is a plain file name.
pub(crate) fn write_env_dir(
    env: &BTreeMap<String, String>,
    run_as: Option<(u32, u32)>,
) -> Result<tempfile::TempDir, BuildError> {
    write_env_dir_in(env, run_as, &std::env::temp_dir())
}

/// [`write_env_dir`] under `parent`: a build container's ENV_DIR must be
/// where the Docker engine sees it, which a private /tmp (systemd's
/// PrivateTmp) is not.
pub(crate) fn write_env_dir_in(
    env: &BTreeMap<String, String>,
    run_as: Option<(u32, u32)>,
    parent: &Path,
) -> Result<tempfile::TempDir, BuildError> {
    // Private from creation on: the umask alone would leave it world-readable.
    let dir = tempfile::Builder::new()
        .prefix("cygni-env-")
        .permissions(fs::Permissions::from_mode(0o700))
        .tempdir_in(parent)
        .map_err(|source| BuildError::Io {
            action: "create",
            path: parent.join("cygni-env-*"),
            source,
        })?;
    let give = |path: &Path| -> Result<(), BuildError> {
        if let Some((uid, gid)) = run_as {
            lchown(path, Some(uid), Some(gid)).map_err(|source| BuildError::Io {
                action: "change the owner of",
                path: path.to_owned(),
                source,
            })?;
        }
        Ok(())
    };
    give(dir.path())?;
    for (name, value) in env {
        let path = dir.path().join(name);
        let write = || -> std::io::Result<()> {
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)?;
            file.write_all(value.as_bytes())
        };
        write().map_err(|source| BuildError::Io {
            action: "write",
            path: path.clone(),
            source,
        })?;
        give(&path)?;
    }
    Ok(dir)
}

/// Reads `default_process_types` from `bin/release` output. The subset of
/// YAML buildpacks print, read by hand rather than pulling in a YAML parser:
///
/// ```yaml
/// ---
/// addons: []
/// default_process_types:
///   web: npm start
///   worker: 'node worker.js'
/// ```
///
/// `default_process_types: {}` (or no such key) means none. Values may be
/// plain, or quoted with `'` or `"`; anything else there (nested maps, flow
/// maps) is refused rather than misread.
pub(crate) fn parse_release(text: &str) -> Result<BTreeMap<ProcessType, String>, String> {
    let mut processes = BTreeMap::new();
    let mut lines = text
        .lines()
        .map(|line| line.strip_suffix('\r').unwrap_or(line))
        .enumerate()
        .map(|(index, line)| (index + 1, line));

    // Find the key at the top level.
    let rest = loop {
        let Some((_, line)) = lines.next() else {
            return Ok(processes);
        };
        if let Some(rest) = line.strip_prefix("default_process_types:") {
            break rest.trim();
        }
    };
    match rest {
        "" => {}
        "{}" | "~" | "null" => return Ok(processes),
        other => {
            return Err(format!(
                "unsupported value for default_process_types: {other}"
            ))
        }
    }

    for (number, line) in lines {
        let content = line.trim();
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        // The next top-level key ends the map.
        if !line.starts_with([' ', '\t']) {
            break;
        }
        let (name, command) = content
            .split_once(':')
            .ok_or_else(|| format!("line {number}: expected `TYPE: command`"))?;
        let process =
            ProcessType::parse(name.trim()).map_err(|err| format!("line {number}: {err}"))?;
        let command = unquote(command.trim()).ok_or_else(|| {
            format!("line {number}: unsupported value for process type `{process}`")
        })?;
        if command.is_empty() {
            return Err(format!(
                "line {number}: process type `{process}` has an empty command"
            ));
        }
        if processes.insert(process.clone(), command).is_some() {
            return Err(format!(
                "line {number}: process type `{process}` is listed twice"
            ));
        }
    }
    Ok(processes)
}

/// A YAML scalar on one line: plain, 'single' ('' escapes a quote) or
/// "double" (\" and \\ escapes). `None` for anything else.
fn unquote(value: &str) -> Option<String> {
    if let Some(inner) = value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
        return Some(inner.replace("''", "'"));
    }
    if let Some(inner) = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        let mut out = String::with_capacity(inner.len());
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next()? {
                    '"' => out.push('"'),
                    '\\' => out.push('\\'),
                    _ => return None,
                },
                c => out.push(c),
            }
        }
        return Some(out);
    }
    // Flow collections, anchors and block scalars are not commands.
    if value.starts_with(['{', '[', '&', '*', '|', '>', '\'', '"']) {
        return None;
    }
    Some(value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> Vec<(String, String)> {
        parse_release(text)
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k.as_str().to_owned(), v))
            .collect()
    }

    #[test]
    fn reads_default_process_types() {
        let text = "---\naddons: []\ndefault_process_types:\n  web: npm start\n  worker: 'node w.js --name ''x'''\n  clock: \"run \\\"now\\\"\"\nconfig_vars: {}\n";
        assert_eq!(
            parsed(text),
            [
                ("clock".into(), "run \"now\"".into()),
                ("web".into(), "npm start".into()),
                ("worker".into(), "node w.js --name 'x'".into()),
            ]
        );
    }

    #[test]
    fn empty_or_missing_means_none() {
        assert!(parsed("---\ndefault_process_types: {}\n").is_empty());
        assert!(parsed("---\naddons: []\n").is_empty());
        assert!(parsed("").is_empty());
        assert!(parsed("default_process_types:\nconfig_vars: {}\n").is_empty());
    }

    #[test]
    fn crlf_and_commands_with_colons() {
        assert_eq!(
            parsed("default_process_types:\r\n  web: gunicorn app:app\r\n"),
            [("web".into(), "gunicorn app:app".into())]
        );
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        for bad in [
            "default_process_types: {web: x}",
            "default_process_types:\n  Web: x\n",
            "default_process_types:\n  web:\n",
            "default_process_types:\n  web: x\n  web: y\n",
            "default_process_types:\n  web: |\n",
            "default_process_types:\n  just text\n",
        ] {
            assert!(parse_release(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn env_dir_holds_one_private_file_per_var() {
        let env = BTreeMap::from([
            ("GREETING".to_owned(), "hi there".to_owned()),
            ("EMPTY".to_owned(), String::new()),
        ]);
        let dir = write_env_dir(&env, None).unwrap();
        let mode = fs::metadata(dir.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let greeting = dir.path().join("GREETING");
        assert_eq!(fs::read_to_string(&greeting).unwrap(), "hi there");
        assert_eq!(
            fs::metadata(&greeting).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(fs::read_to_string(dir.path().join("EMPTY")).unwrap(), "");
        let path = dir.path().to_owned();
        drop(dir);
        assert!(!path.exists(), "ENV_DIR must not outlive the build");
    }
}
