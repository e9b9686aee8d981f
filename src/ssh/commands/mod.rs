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

mod apps;
mod certs;
mod cluster;
mod config;
mod dashboard;
mod domains;
mod keys;
mod logs;
mod previews;
mod ps;
mod releases;
mod status;
mod storage;
mod sync;
mod tokens;

use super::Exec;
use crate::names::{AppName, InvalidName, ProcessType};
use crate::state;

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
    Key(#[from] super::keys::KeyError),
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
            state::StateError::Full(line) => CommandError::Invalid(line),
            other if other.is_busy() => {
                tracing::warn!(error = %other, "database busy");
                CommandError::Invalid(state::BUSY_MESSAGE.to_owned())
            }
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
    /// Create an app (--from URL: and deploy it from that repository)
    #[command(name = "apps:create")]
    AppsCreate {
        app: AppName,
        /// Deploy from this repository URL (https; others if the admin allows)
        #[arg(long, value_name = "URL")]
        from: Option<String>,
        /// The branch of --from to deploy (default main)
        #[arg(long, value_name = "BRANCH", requires = "from")]
        branch: Option<String>,
        /// Fetch the commit's submodules too (https only)
        #[arg(long, requires = "from")]
        submodules: bool,
    },
    /// Fetch the app's source URL (or URL) and deploy it, as a push would
    #[command(
        name = "git:sync",
        after_help = "--every 10m checks the source on a schedule and deploys when its ref                       moved; --every off stops that. Progress goes to stderr."
    )]
    GitSync {
        app: AppName,
        /// The repository URL (default: the app's source)
        url: Option<String>,
        /// The branch or tag (main, refs/tags/v1; default: the source's)
        #[arg(long = "ref", value_name = "REF")]
        reference: Option<String>,
        /// Check on a schedule: 10m, 1h, 1d, or off
        #[arg(long, value_name = "INTERVAL")]
        every: Option<String>,
        /// Fetch the commit's submodules too (https only); kept for later syncs
        #[arg(long, conflicts_with = "no_submodules")]
        submodules: bool,
        /// Stop fetching submodules
        #[arg(long)]
        no_submodules: bool,
    },
    /// Destroy an app and everything it owns
    #[command(name = "apps:destroy")]
    AppsDestroy {
        app: AppName,
        /// The app's name again, to confirm
        #[arg(long, value_name = "APP")]
        confirm: Option<String>,
    },
    /// Show an app's details
    #[command(name = "apps:info")]
    AppsInfo {
        app: AppName,
        #[arg(long)]
        json: bool,
    },
    /// Show an app's config vars (values masked unless --reveal)
    Config {
        app: AppName,
        #[arg(long)]
        json: bool,
        /// Show the values
        #[arg(long)]
        reveal: bool,
    },
    /// Print one config var's value
    #[command(name = "config:get")]
    ConfigGet {
        app: AppName,
        key: String,
        /// Print it as a JSON string (exact, even with trailing newlines)
        #[arg(long)]
        json: bool,
    },
    /// Set config vars (KEY=VALUE ...) and release them without a rebuild
    #[command(name = "config:set")]
    ConfigSet {
        app: AppName,
        /// KEY=VALUE pairs
        pairs: Vec<String>,
        /// Only store the change; the next release picks it up
        #[arg(long)]
        no_restart: bool,
        /// Values are base64
        #[arg(long)]
        encoded: bool,
        /// Read KEY's value, byte for byte, from stdin
        #[arg(long, value_name = "KEY")]
        stdin: Option<String>,
    },
    /// Remove config vars and release the change
    #[command(name = "config:unset")]
    ConfigUnset {
        app: AppName,
        #[arg(required = true)]
        keys: Vec<String>,
        #[arg(long)]
        no_restart: bool,
    },
    /// List an app's domains
    Domains {
        app: AppName,
        #[arg(long)]
        json: bool,
    },
    /// Route a custom domain to an app
    #[command(name = "domains:add")]
    DomainsAdd { app: AppName, host: String },
    /// Stop routing a custom domain
    #[command(name = "domains:remove")]
    DomainsRemove { app: AppName, host: String },
    /// List an app's instances: state, uptime, restarts
    Ps {
        app: AppName,
        #[arg(long)]
        json: bool,
    },
    /// Set how many instances of each process type run (web=2 worker=1)
    #[command(name = "ps:scale")]
    PsScale {
        app: AppName,
        #[arg(required = true)]
        pairs: Vec<String>,
    },
    /// Restart an app's instances (of one type), without downtime
    #[command(name = "ps:restart")]
    PsRestart {
        app: AppName,
        process: Option<ProcessType>,
    },
    /// Stop every instance of an app until ps:start
    #[command(name = "ps:stop")]
    PsStop { app: AppName },
    /// Start a stopped app again
    #[command(name = "ps:start")]
    PsStart { app: AppName },
    /// Run a one-off command in the app's release and env: run APP -- CMD ...
    Run {
        app: AppName,
        /// The command and its arguments (no shell: use `sh -c '...'` for one)
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Make a new release from an earlier one's build and config (default: the previous)
    Rollback {
        app: AppName,
        version: Option<String>,
    },
    /// List the cluster's nodes (kube runtime; admins)
    #[command(name = "cluster:nodes")]
    ClusterNodes {
        #[arg(long)]
        json: bool,
    },
    /// Print the line that joins a new node to the cluster as an agent (kube runtime; admins)
    #[command(name = "cluster:join-command")]
    ClusterJoinCommand {
        #[arg(long)]
        json: bool,
    },
    /// Print a one-time link (valid 5 minutes) that signs a browser in to the web dashboard
    #[command(name = "dashboard:login")]
    DashboardLogin,
    /// Show the host and every app's state
    Status {
        #[arg(long)]
        json: bool,
    },
    /// List an app's releases; the live one is marked
    Releases {
        app: AppName,
        #[arg(long)]
        json: bool,
        /// How many, newest first
        #[arg(short = 'n', long = "num", default_value_t = 20)]
        num: u32,
    },
    /// Show an app's output, or a release's build log
    Logs {
        app: AppName,
        /// How many lines
        #[arg(short = 'n', long = "num", default_value_t = 100)]
        num: usize,
        /// Only this process type or instance (web, web.1)
        #[arg(long, short = 'p', value_name = "PROCESS")]
        process: Option<String>,
        /// The build log of a release (v3 or 3) instead
        #[arg(long, value_name = "VERSION")]
        build: Option<String>,
        /// Keep printing new lines until you disconnect
        #[arg(short = 'f', long = "tail")]
        follow: bool,
    },
    /// Change an app's log settings: `access-log on|off` (router lines in `logs APP -p router`)
    #[command(name = "logs:set")]
    LogsSet {
        app: AppName,
        /// The setting: access-log
        setting: String,
        #[arg(value_name = "on|off", value_parser = on_off, action = clap::ArgAction::Set)]
        on: bool,
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
        #[arg(long, default_value = "deployer", value_parser = state::keys::Role::from_arg)]
        role: state::keys::Role,
    },
    /// Remove an SSH key by name or fingerprint
    #[command(name = "keys:remove")]
    KeysRemove { key: String },
    /// Let a deployer key push to and manage an app
    #[command(name = "keys:grant")]
    KeysGrant { name: String, app: AppName },
    /// Take a deployer key's access to an app away
    #[command(name = "keys:revoke")]
    KeysRevoke { name: String, app: AppName },
    /// List API tokens (admins)
    Tokens {
        #[arg(long)]
        json: bool,
    },
    /// Create an API token; it is printed once, alone on stdout
    #[command(name = "tokens:create")]
    TokensCreate {
        name: String,
        #[arg(long, value_parser = state::keys::Role::from_arg)]
        role: state::keys::Role,
        /// An app a developer or viewer token may reach (repeat for more)
        #[arg(long = "app", value_name = "APP")]
        apps: Vec<AppName>,
        /// Expire after this long: 90m, 12h, 30d, 2w
        #[arg(long, value_name = "DURATION")]
        expires: Option<String>,
    },
    /// Revoke an API token by name; it is refused from then on
    #[command(name = "tokens:revoke")]
    TokensRevoke { name: String },
    /// Show who changed what: every change and refused attempt
    Audit {
        app: Option<AppName>,
        /// How many entries, newest last
        #[arg(short = 'n', long = "num", default_value_t = 50)]
        num: u32,
        #[arg(long)]
        json: bool,
    },
    /// Show TLS certificates: hosts, issuer, expiry, next renewal, last error
    #[command(
        after_help = "APP.DOMAIN and every custom domain get a certificate, except local \
                      names (localhost, *.localhost, *.local, *.test, *.example, *.internal, \
                      IP addresses, single labels). Without APP (admins): every app."
    )]
    Certs {
        app: Option<AppName>,
        #[arg(long)]
        json: bool,
    },
    /// Renew an app's certificates now, past any backoff
    #[command(name = "certs:renew")]
    CertsRenew { app: AppName },
    /// Redirect an app's plain HTTP to HTTPS once it has certificates (default on)
    #[command(name = "certs:redirect")]
    CertsRedirect {
        app: AppName,
        #[arg(value_name = "on|off", value_parser = on_off, action = clap::ArgAction::Set)]
        on: bool,
    },
    /// List an app's persistent storage
    Storage {
        app: AppName,
        #[arg(long)]
        json: bool,
    },
    /// Mount persistent storage NAME at /path in the app (from the next deploy or restart)
    #[command(
        name = "storage:mount",
        after_help = "NAME is kept in the data dir across deploys, restarts and rollbacks. \
                      The app finds it in $CYGNI_STORAGE_<NAME> (NAME upper-cased, '-' as '_'): \
                      the mount path in a container, the directory on the local runtime."
    )]
    StorageMount {
        app: AppName,
        /// NAME:/path, e.g. data:/data
        #[arg(value_name = "NAME:/path")]
        mount: String,
        /// Admins: mount this host directory (under storage_host_paths) instead
        #[arg(long, value_name = "DIR")]
        host_path: Option<String>,
    },
    /// Unmount persistent storage (its files are kept)
    #[command(name = "storage:unmount")]
    StorageUnmount {
        app: AppName,
        #[arg(value_name = "NAME:/path")]
        mount: String,
    },
    /// List an app's preview environments: name, branch, URL, release, state
    Previews {
        app: AppName,
        #[arg(long)]
        json: bool,
    },
    /// Deploy a preview (NAME--APP) for each push to a matching branch
    #[command(
        name = "previews:enable",
        after_help = "A push to preview/NAME deploys NAME--APP, served at NAME--APP.DOMAIN, \
                      with a copy of APP's config (change it with config:set NAME--APP). \
                      Deleting the branch (git push cygni :preview/NAME) removes it, and so \
                      does --idle without a push or a request. Run again to change a setting."
    )]
    PreviewsEnable {
        app: AppName,
        /// Branches that deploy previews: PREFIX* (default 'preview/*')
        #[arg(long, value_name = "PATTERN")]
        pattern: Option<String>,
        /// Destroy a preview after this long without a push or request: 30m, 12h, 7d (default), 2w
        #[arg(long, value_name = "DURATION")]
        idle: Option<String>,
    },
    /// Stop deploying previews, and destroy every preview of the app
    #[command(name = "previews:disable")]
    PreviewsDisable { app: AppName },
    /// Destroy one preview (its branch stays; a new push makes it again)
    #[command(name = "previews:destroy")]
    PreviewsDestroy { app: AppName, name: String },
}

/// Every command that names an app, as a command line for `app` with
/// placeholder values for its other required arguments. Made from the
/// parser itself, so a new command is in it without anyone listing it:
/// the access tests run each line as a key that may not see `app`.
pub fn lines_naming_an_app(app: &str) -> Vec<Vec<String>> {
    let root = Cli::command();
    let mut lines = Vec::new();
    for sub in root.get_subcommands() {
        let positionals: Vec<&clap::Arg> = sub.get_positionals().collect();
        if !positionals.iter().any(|a| a.get_id() == "app") {
            continue;
        }
        let mut line = vec![sub.get_name().to_owned()];
        for arg in positionals {
            let value = match arg.get_id().as_str() {
                "app" => app,
                "host" => "www.example.org",
                "pairs" => "web=1",
                "keys" | "key" => "GREETING",
                "name" => "somekey",
                "command" => "true",
                "version" => "v1",
                "on" => "on",
                "process" => "web",
                "mount" => "data:/data",
                _ if !arg.is_required_set() => continue,
                other => other,
            };
            line.push(value.to_owned());
        }
        lines.push(line);
    }
    lines
}

fn on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        other => Err(format!("expected on or off, got {other:?}")),
    }
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

/// The parser on any words, for the fuzz checks (`fuzz/checks.rs`): no
/// panic, and a refusal is one non-empty line, as every error must be.
#[doc(hidden)]
pub fn fuzz_parse(words: &[String]) {
    if let Err(e) = parse(words) {
        let line = e.to_string();
        assert!(!line.is_empty(), "an empty error for {words:?}");
        assert!(!line.contains('\n'), "{line:?} for {words:?}");
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

pub(super) fn require_admin(exec: &Exec, what: &str) -> Result<(), CommandError> {
    if exec.identity.is_admin() {
        Ok(())
    } else {
        Err(CommandError::Forbidden(format!("only admins can {what}")))
    }
}

/// Drive `fut` while forwarding the progress lines it sends to the
/// client's stderr as they come (stdout stays for results).
pub(super) async fn with_progress<T>(
    exec: &Exec,
    mut rx: tokio::sync::mpsc::Receiver<String>,
    fut: impl std::future::Future<Output = T>,
) -> T {
    tokio::pin!(fut);
    let result = loop {
        tokio::select! {
            r = &mut fut => break r,
            Some(line) = rx.recv() => exec.stderr(line).await,
        }
    };
    while let Ok(line) = rx.try_recv() {
        exec.stderr(line).await;
    }
    result
}

/// A service-layer refusal as the user sees it: one line.
impl From<crate::service::ServiceError> for CommandError {
    fn from(e: crate::service::ServiceError) -> Self {
        use crate::service::ServiceError as S;
        match e {
            S::AppNotFound(app) => CommandError::AppNotFound(app.to_string()),
            S::Forbidden(m) => CommandError::Forbidden(m),
            S::Invalid(m) | S::NotFound(m) => CommandError::Invalid(m),
            S::Name(n) => CommandError::Name(n),
            S::Deploy(d) => CommandError::Invalid(d.to_string()),
            S::Internal(m) => CommandError::Internal(m),
        }
    }
}

/// A deploy-side failure as the user sees it: one line.
impl From<crate::deploy::DeployError> for CommandError {
    fn from(e: crate::deploy::DeployError) -> Self {
        CommandError::Invalid(e.to_string())
    }
}

/// Parse `v3` or `3`.
pub(super) fn parse_version(v: &str) -> Result<u32, CommandError> {
    v.strip_prefix('v')
        .unwrap_or(v)
        .parse()
        .map_err(|_| CommandError::Invalid(format!("{v:?} is not a release like v3")))
}

pub(super) fn json<T: serde::Serialize>(value: &T) -> Result<String, CommandError> {
    let mut s =
        serde_json::to_string_pretty(value).map_err(|e| CommandError::Internal(e.to_string()))?;
    s.push('\n');
    Ok(s)
}

pub(super) fn time(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| secs.to_string())
}

async fn dispatch(exec: &mut Exec, cmd: Cmd) -> Result<(), CommandError> {
    match cmd {
        Cmd::Help { command } => {
            let text = help(command.as_deref())?;
            exec.stdout(text).await;
        }
        Cmd::Version => {
            exec.stdout(format!("cygni {}\n", env!("CARGO_PKG_VERSION")))
                .await;
        }
        Cmd::Apps { json: as_json } => apps::list(exec, as_json).await?,
        Cmd::AppsCreate {
            app, from: None, ..
        } => apps::create(exec, app).await?,
        Cmd::AppsCreate {
            app,
            from: Some(url),
            branch,
            submodules,
        } => sync::create_from(exec, app, url, branch, submodules).await?,
        Cmd::GitSync {
            app,
            url,
            reference,
            every,
            submodules,
            no_submodules,
        } => {
            let submodules = match (submodules, no_submodules) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => None,
            };
            sync::sync(exec, app, url, reference, every, submodules).await?
        }
        Cmd::AppsDestroy { app, confirm } => apps::destroy(exec, app, confirm).await?,
        Cmd::AppsInfo { app, json: as_json } => apps::info(exec, app, as_json).await?,
        Cmd::Releases {
            app,
            json: as_json,
            num,
        } => releases::list(exec, app, as_json, num).await?,
        Cmd::Logs {
            app,
            num,
            process,
            build,
            follow,
        } => releases::logs(exec, app, num, process, build, follow).await?,
        Cmd::LogsSet { app, setting, on } => logs::set(exec, app, setting, on).await?,
        Cmd::Rollback { app, version } => releases::rollback(exec, app, version).await?,
        Cmd::Config {
            app,
            json: as_json,
            reveal,
        } => config::show(exec, app, as_json, reveal).await?,
        Cmd::ConfigGet {
            app,
            key,
            json: as_json,
        } => config::get(exec, app, key, as_json).await?,
        Cmd::ConfigSet {
            app,
            pairs,
            no_restart,
            encoded,
            stdin,
        } => config::set(exec, app, pairs, !no_restart, encoded, stdin).await?,
        Cmd::ConfigUnset {
            app,
            keys,
            no_restart,
        } => config::unset(exec, app, keys, !no_restart).await?,
        Cmd::Domains { app, json: as_json } => domains::list(exec, app, as_json).await?,
        Cmd::DomainsAdd { app, host } => domains::add(exec, app, host).await?,
        Cmd::DomainsRemove { app, host } => domains::remove(exec, app, host).await?,
        Cmd::Ps { app, json: as_json } => ps::list(exec, app, as_json).await?,
        Cmd::PsScale { app, pairs } => ps::scale(exec, app, pairs).await?,
        Cmd::PsRestart { app, process } => ps::restart(exec, app, process).await?,
        Cmd::PsStop { app } => ps::stop_start(exec, app, true).await?,
        Cmd::PsStart { app } => ps::stop_start(exec, app, false).await?,
        Cmd::Run { app, command } => ps::run(exec, app, command).await?,
        Cmd::DashboardLogin => dashboard::login(exec).await?,
        Cmd::Status { json: as_json } => status::show(exec, as_json).await?,
        Cmd::ClusterNodes { json: as_json } => cluster::nodes(exec, as_json).await?,
        Cmd::ClusterJoinCommand { json: as_json } => cluster::join_command(exec, as_json).await?,
        Cmd::Keys { json: as_json } => keys::list(exec, as_json).await?,
        Cmd::KeysAdd { name, role } => keys::add(exec, name, role).await?,
        Cmd::KeysRemove { key } => keys::remove(exec, key).await?,
        Cmd::KeysGrant { name, app } => keys::grant(exec, name, app).await?,
        Cmd::KeysRevoke { name, app } => keys::revoke(exec, name, app).await?,
        Cmd::Tokens { json: as_json } => tokens::list(exec, as_json).await?,
        Cmd::TokensCreate {
            name,
            role,
            apps,
            expires,
        } => tokens::create(exec, name, role, apps, expires).await?,
        Cmd::TokensRevoke { name } => tokens::revoke(exec, name).await?,
        Cmd::Audit {
            app,
            num,
            json: as_json,
        } => tokens::audit(exec, app, num, as_json).await?,
        Cmd::Certs { app, json: as_json } => certs::list(exec, app, as_json).await?,
        Cmd::CertsRenew { app } => certs::renew(exec, app).await?,
        Cmd::CertsRedirect { app, on } => certs::redirect(exec, app, on).await?,
        Cmd::Storage { app, json: as_json } => storage::list(exec, app, as_json).await?,
        Cmd::StorageMount {
            app,
            mount,
            host_path,
        } => storage::mount(exec, app, mount, host_path).await?,
        Cmd::StorageUnmount { app, mount } => storage::unmount(exec, app, mount).await?,
        Cmd::Previews { app, json: as_json } => previews::list(exec, app, as_json).await?,
        Cmd::PreviewsEnable { app, pattern, idle } => {
            previews::enable(exec, app, pattern, idle).await?
        }
        Cmd::PreviewsDisable { app } => previews::disable(exec, app).await?,
        Cmd::PreviewsDestroy { app, name } => previews::destroy(exec, app, name).await?,
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
        assert!(matches!(
            parse(&words("certs shop --json")),
            Ok(Ok(Cmd::Certs { json: true, .. }))
        ));
        assert!(matches!(
            parse(&words("certs:renew shop")),
            Ok(Ok(Cmd::CertsRenew { .. }))
        ));
        assert!(matches!(
            parse(&words("certs:redirect shop off")),
            Ok(Ok(Cmd::CertsRedirect { .. }))
        ));
        assert!(parse(&words("certs:redirect shop maybe")).is_err());
        assert!(matches!(
            parse(&words("logs:set shop access-log on")),
            Ok(Ok(Cmd::LogsSet { on: true, .. }))
        ));
        assert!(parse(&words("logs:set shop access-log maybe")).is_err());
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
            // The parser yields AppNames: a hostile one is a one-line
            // usage error before any handler runs.
            match parse(&line) {
                Err(CommandError::Usage(msg)) => {
                    assert!(msg.contains("invalid app name"), "{name:?}: {msg}");
                    assert!(!msg.contains('\n'));
                }
                other => panic!("{name:?} parsed: {other:?}"),
            }
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
            "git:sync",
            "version",
        ] {
            assert!(text.contains(name), "{name} missing from help");
        }
        assert!(help(Some("apps:destroy")).unwrap().contains("--confirm"));
        assert!(help(Some("nope")).is_err());
    }
}
