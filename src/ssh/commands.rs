//! Admin commands over `ssh cygni@HOST COMMAND [ARGS]`.
//!
//! One grammar: the exec string is split into words (shell-words, no shell)
//! and parsed by clap. Every command prints its result on stdout and exits
//! 0, or prints one line on stderr and exits non-zero. Listings take
//! `--json`.
//!
//! Permissions: apps and keys change only for admins. A deployer sees only
//! the apps granted to it; every other app is "app not found".

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use super::{keys, visible_app, Exec};
use crate::names::{AppName, InvalidName, KeyName};
use crate::state::{self, keys::Role, releases};

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The command line itself is wrong (exit 2).
    #[error("{0}")]
    Usage(String),
    #[error("app not found: {0}")]
    AppNotFound(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Name(#[from] InvalidName),
    #[error(transparent)]
    Key(#[from] keys::KeyError),
    /// Details go to the server log; the user gets a short line.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<state::StateError> for CommandError {
    fn from(e: state::StateError) -> Self {
        match e {
            state::StateError::Exists(what) => {
                CommandError::Invalid(format!("{what} already exists"))
            }
            state::StateError::NotFound(what) => CommandError::Invalid(format!("{what} not found")),
            other => {
                tracing::error!(error = %other, "state error in a command");
                CommandError::Internal("the database said no; see the server log".into())
            }
        }
    }
}

impl From<crate::git::GitError> for CommandError {
    fn from(e: crate::git::GitError) -> Self {
        tracing::error!(error = %e, "git error in a command");
        CommandError::Internal("repository error; see the server log".into())
    }
}

impl CommandError {
    fn exit_status(&self) -> u32 {
        match self {
            CommandError::Usage(_) => 2,
            _ => 1,
        }
    }
}

/// The command set. Doc comments are the one-line summaries `help` prints.
#[derive(Debug, Parser)]
#[command(
    name = "cygni",
    no_binary_name = true,
    disable_help_subcommand = true,
    disable_version_flag = true,
    override_usage = "ssh -p PORT cygni@HOST COMMAND [ARGS]"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// List every command, or show one command's usage
    Help { command: Option<String> },
    /// Print Cygni's version
    Version,
    /// List apps
    Apps {
        #[arg(long)]
        json: bool,
    },
    /// Create an app
    #[command(name = "apps:create")]
    AppsCreate { app: String },
    /// Destroy an app and everything it owns
    #[command(name = "apps:destroy")]
    AppsDestroy {
        app: String,
        /// The app's name again, to confirm
        #[arg(long, value_name = "APP")]
        confirm: Option<String>,
    },
    /// Show an app's details
    #[command(name = "apps:info")]
    AppsInfo {
        app: String,
        #[arg(long)]
        json: bool,
    },
    /// List an app's releases; the live one is marked
    Releases {
        app: String,
        #[arg(long)]
        json: bool,
        /// How many, newest first
        #[arg(short = 'n', long = "num", default_value_t = 20)]
        num: u32,
    },
    /// Show an app's output, or a release's build log
    Logs {
        app: String,
        /// How many lines
        #[arg(short = 'n', long = "num", default_value_t = 100)]
        num: usize,
        /// Only this process type or instance (web, web.1)
        #[arg(long, short = 'p', value_name = "PROCESS")]
        process: Option<String>,
        /// The build log of a release (v3 or 3) instead
        #[arg(long, value_name = "VERSION")]
        build: Option<String>,
    },
    /// List SSH keys
    Keys {
        #[arg(long)]
        json: bool,
    },
    /// Add an SSH public key, read from stdin
    #[command(name = "keys:add")]
    KeysAdd {
        name: String,
        #[arg(long, default_value = "deployer", value_parser = ["admin", "deployer"])]
        role: String,
    },
    /// Remove an SSH key by name or fingerprint
    #[command(name = "keys:remove")]
    KeysRemove { key: String },
    /// Let a deployer key push to and manage an app
    #[command(name = "keys:grant")]
    KeysGrant { name: String, app: String },
    /// Take a deployer key's access to an app away
    #[command(name = "keys:revoke")]
    KeysRevoke { name: String, app: String },
}

/// Parse words into a command. `Ok(Err(text))` is help text to print on
/// stdout (`--help`).
fn parse(words: &[String]) -> Result<Result<Cmd, String>, CommandError> {
    let matches = Cli::command().try_get_matches_from(words);
    match matches {
        Ok(m) => Cli::from_arg_matches(&m)
            .map(|c| Ok(c.cmd))
            .map_err(|e| CommandError::Usage(one_line(&e))),
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelp => Ok(Err(e.to_string())),
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            Err(CommandError::Usage(
                "no command given: try `help`".to_owned(),
            ))
        }
        Err(e) => Err(CommandError::Usage(one_line(&e))),
    }
}

/// clap's errors span several lines with usage; users get the first.
fn one_line(e: &clap::Error) -> String {
    let text = e.to_string();
    let first = text.lines().next().unwrap_or("invalid command");
    let first = first.strip_prefix("error: ").unwrap_or(first);
    if e.kind() == clap::error::ErrorKind::InvalidSubcommand {
        format!("{first}; try `help`")
    } else {
        first.to_owned()
    }
}

/// Run a command and return the exit status; errors are printed here.
pub(crate) async fn run(exec: &mut Exec, words: Vec<String>) -> u32 {
    let result = match parse(&words) {
        Ok(Ok(cmd)) => dispatch(exec, cmd).await,
        Ok(Err(help)) => {
            exec.stdout(help).await;
            Ok(())
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            exec.stderr(format!("error: {e}\n")).await;
            e.exit_status()
        }
    }
}

fn require_admin(exec: &Exec, what: &str) -> Result<(), CommandError> {
    if exec.identity.is_admin() {
        Ok(())
    } else {
        Err(CommandError::Forbidden(format!(
            "only admin keys can {what}"
        )))
    }
}

fn json<T: serde::Serialize>(value: &T) -> Result<String, CommandError> {
    let mut s =
        serde_json::to_string_pretty(value).map_err(|e| CommandError::Internal(e.to_string()))?;
    s.push('\n');
    Ok(s)
}

fn time(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| secs.to_string())
}

async fn dispatch(exec: &mut Exec, cmd: Cmd) -> Result<(), CommandError> {
    let ctx = exec.ctx.clone();
    match cmd {
        Cmd::Help { command } => {
            let text = help(command.as_deref())?;
            exec.stdout(text).await;
        }
        Cmd::Version => {
            exec.stdout(format!("cygni {}\n", env!("CARGO_PKG_VERSION")))
                .await;
        }
        Cmd::Apps { json: as_json } => {
            let mut apps = ctx.db.call(|c| state::apps::list(c)).await?;
            if !exec.identity.is_admin() {
                let fp = exec.identity.fingerprint.clone();
                let key = ctx
                    .db
                    .call(move |c| state::keys::by_fingerprint(c, &fp))
                    .await?;
                let granted = key.map(|k| k.apps).unwrap_or_default();
                apps.retain(|a| granted.contains(&a.name));
            }
            let text = if as_json {
                let rows: Vec<_> = apps
                    .iter()
                    .map(|a| {
                        serde_json::json!({
                            "name": a.name,
                            "url": ctx.app_url(&a.name),
                            "created_at": a.created_at,
                        })
                    })
                    .collect();
                json(&rows)?
            } else if apps.is_empty() {
                "no apps yet: push one with `git push cygni main`\n".to_owned()
            } else {
                apps.iter()
                    .map(|a| format!("{:<24} {}\n", a.name, ctx.app_url(&a.name)))
                    .collect()
            };
            exec.stdout(text).await;
        }
        Cmd::AppsCreate { app } => {
            require_admin(exec, "create apps")?;
            let app = AppName::parse(&app)?;
            let name = app.clone();
            ctx.db.call(move |c| state::apps::create(c, &name)).await?;
            if let Err(e) = ctx.repos.create(&app) {
                // Keep the database and the disk in step: no app without a repo.
                let name = app.clone();
                let _ = ctx.db.call(move |c| state::apps::delete(c, &name)).await;
                return Err(e.into());
            }
            // Routed at once: the new host answers 503 until a deploy, not 404.
            if let Err(e) = ctx.platform.publish_routes().await {
                tracing::warn!(error = %e, "route update after create");
            }
            exec.stdout(format!(
                "created {app}\ngit remote: ssh://cygni@HOST:PORT/{app}\nurl: {}\n",
                ctx.app_url(&app)
            ))
            .await;
        }
        Cmd::AppsDestroy { app, confirm } => {
            require_admin(exec, "destroy apps")?;
            let app = AppName::parse(&app)?;
            visible_app(&ctx, &exec.identity, &app).await?;
            if confirm.as_deref() != Some(app.as_str()) {
                return Err(CommandError::Invalid(format!(
                    "this destroys {app} and all its data: confirm with `apps:destroy {app} --confirm {app}`"
                )));
            }
            ctx.platform
                .destroy_app(&app)
                .await
                .map_err(|e| CommandError::Internal(e.message))?;
            exec.stdout(format!("destroyed {app}\n")).await;
        }
        Cmd::AppsInfo { app, json: as_json } => {
            let app = AppName::parse(&app)?;
            let record = visible_app(&ctx, &exec.identity, &app).await?;
            let branches = ctx.repos.branches(&app).unwrap_or_default();
            let repo_bytes = ctx.repos.size(&app);
            let info = serde_json::json!({
                "name": record.name,
                "url": ctx.app_url(&app),
                "created_at": record.created_at,
                "deploy_branch": record.deploy_branch.as_deref().unwrap_or("main"),
                "repo_size_bytes": repo_bytes,
                "branches": branches.iter().map(|(b, sha)| serde_json::json!({"name": b, "sha": sha})).collect::<Vec<_>>(),
            });
            let text = if as_json {
                json(&info)?
            } else {
                let mut s = format!(
                    "=== {app}\nurl:           {}\ncreated:       {}\ndeploy branch: {}\nrepo size:     {} KiB\n",
                    ctx.app_url(&app),
                    time(record.created_at),
                    record.deploy_branch.as_deref().unwrap_or("main"),
                    repo_bytes / 1024,
                );
                for (b, sha) in &branches {
                    s.push_str(&format!(
                        "branch:        {b} {}\n",
                        &sha[..sha.len().min(7)]
                    ));
                }
                s
            };
            exec.stdout(text).await;
        }
        Cmd::Releases {
            app,
            json: as_json,
            num,
        } => {
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
        }
        Cmd::Logs {
            app,
            num,
            process,
            build,
        } => {
            let app = AppName::parse(&app)?;
            visible_app(&ctx, &exec.identity, &app).await?;
            if let Some(v) = build {
                let version: u32 = v.strip_prefix('v').unwrap_or(&v).parse().map_err(|_| {
                    CommandError::Invalid(format!("{v:?} is not a release like v3"))
                })?;
                let bytes = ctx
                    .platform
                    .logs
                    .read_build_log(&app, version)
                    .map_err(|_| {
                        CommandError::Invalid(format!("no build log for {app} v{version}"))
                    })?;
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
        }
        Cmd::Keys { json: as_json } => {
            require_admin(exec, "list keys")?;
            let keys = ctx.db.call(|c| state::keys::list(c)).await?;
            let text = if as_json {
                json(&keys)?
            } else {
                keys.iter()
                    .map(|k| {
                        let apps = if k.role == Role::Admin {
                            "all apps".to_owned()
                        } else if k.apps.is_empty() {
                            "no apps".to_owned()
                        } else {
                            k.apps
                                .iter()
                                .map(AppName::as_str)
                                .collect::<Vec<_>>()
                                .join(",")
                        };
                        format!(
                            "{:<20} {:<9} {} {}\n",
                            k.name,
                            k.role.as_str(),
                            k.fingerprint,
                            apps
                        )
                    })
                    .collect()
            };
            exec.stdout(text).await;
        }
        Cmd::KeysAdd { name, role } => {
            require_admin(exec, "add keys")?;
            let name = KeyName::parse(&name)?;
            let role = Role::parse(&role).unwrap_or(Role::Deployer);
            let input = exec.read_stdin(16 * 1024).await?;
            let text = String::from_utf8(input)
                .map_err(|_| CommandError::Invalid("the key on stdin is not UTF-8 text".into()))?;
            let key = keys::parse_user_key(&text)?;
            let fingerprint = keys::fingerprint(&key);
            let public = key
                .to_openssh()
                .map_err(|e| CommandError::Internal(e.to_string()))?;
            let fp = fingerprint.clone();
            let n = name.clone();
            ctx.db
                .call(move |c| {
                    state::keys::add(
                        c,
                        state::keys::NewKey {
                            name: &n,
                            fingerprint: &fp,
                            public_key: &public,
                            role,
                        },
                    )
                })
                .await?;
            exec.stdout(format!(
                "added key {name} ({}) {fingerprint}\n",
                role.as_str()
            ))
            .await;
        }
        Cmd::KeysRemove { key } => {
            require_admin(exec, "remove keys")?;
            let removed = ctx.db.call(move |c| state::keys::remove(c, &key)).await?;
            exec.stdout(format!(
                "removed key {} {}\n",
                removed.name, removed.fingerprint
            ))
            .await;
        }
        Cmd::KeysGrant { name, app } => {
            require_admin(exec, "grant access")?;
            let app = AppName::parse(&app)?;
            let a = app.clone();
            let n = name.clone();
            ctx.db.call(move |c| state::keys::grant(c, &n, &a)).await?;
            exec.stdout(format!("key {name} can now push to and manage {app}\n"))
                .await;
        }
        Cmd::KeysRevoke { name, app } => {
            require_admin(exec, "revoke access")?;
            let app = AppName::parse(&app)?;
            let a = app.clone();
            let n = name.clone();
            ctx.db.call(move |c| state::keys::revoke(c, &n, &a)).await?;
            exec.stdout(format!("key {name} no longer has access to {app}\n"))
                .await;
        }
    }
    Ok(())
}

/// `help` lists every command with its summary; `help COMMAND` its usage.
fn help(command: Option<&str>) -> Result<String, CommandError> {
    let mut root = Cli::command();
    match command {
        None => {
            let mut s = String::from("Usage: ssh -p PORT cygni@HOST COMMAND [ARGS]\n\nCommands:\n");
            for sub in root.get_subcommands() {
                let about = sub.get_about().map(|a| a.to_string()).unwrap_or_default();
                s.push_str(&format!("  {:<16} {about}\n", sub.get_name()));
            }
            s.push_str("\nRun `help COMMAND` for a command's usage. Listings take --json.\n");
            Ok(s)
        }
        Some(name) => match root.find_subcommand_mut(name) {
            Some(sub) => Ok(sub.clone().bin_name(name).render_long_help().to_string()),
            None => Err(CommandError::Usage(format!(
                "unknown command {name:?}; try `help`"
            ))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        shell_words::split(s).unwrap()
    }

    #[test]
    fn parses_the_command_set() {
        assert!(matches!(
            parse(&words("apps --json")),
            Ok(Ok(Cmd::Apps { json: true }))
        ));
        assert!(matches!(
            parse(&words("apps:destroy shop --confirm shop")),
            Ok(Ok(Cmd::AppsDestroy { .. }))
        ));
        assert!(matches!(
            parse(&words("keys:add ci --role admin")),
            Ok(Ok(Cmd::KeysAdd { .. }))
        ));
        assert!(matches!(parse(&words("apps --help")), Ok(Err(_))));
    }

    #[test]
    fn bad_command_lines_are_one_line_errors() {
        for line in [
            "nope",
            "apps:create",
            "apps --bogus",
            "keys:add x --role root",
            "",
        ] {
            match parse(&words(line)) {
                Err(CommandError::Usage(msg)) => {
                    assert!(!msg.contains('\n'), "{line:?}: {msg:?}");
                    assert!(!msg.is_empty());
                }
                other => panic!("{line:?} parsed: {other:?}"),
            }
        }
    }

    /// Names go through AppName after parsing: hostile ones never become paths.
    #[test]
    fn hostile_app_names() {
        for name in [
            "..",
            "a;b",
            "App",
            "ａｐｐ",
            "a\u{200b}",
            "../x",
            &"a".repeat(64),
        ] {
            let line = vec!["apps:create".to_string(), name.to_string()];
            let Ok(Ok(Cmd::AppsCreate { app })) = parse(&line) else {
                panic!("{name:?} should reach the name check");
            };
            assert!(AppName::parse(&app).is_err(), "{name:?}");
        }
        // `-h` is clap's help flag, never an app name.
        assert!(matches!(parse(&words("apps:create -h")), Ok(Err(_))));
    }

    #[test]
    fn help_lists_every_command() {
        let text = help(None).unwrap();
        for name in [
            "apps:create",
            "apps:destroy",
            "keys:add",
            "keys:grant",
            "version",
        ] {
            assert!(text.contains(name), "{name} missing from help");
        }
        assert!(help(Some("apps:destroy")).unwrap().contains("--confirm"));
        assert!(help(Some("nope")).is_err());
    }
}
