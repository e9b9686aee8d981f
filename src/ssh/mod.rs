//! The SSH front door: `git push` and admin commands.
//!
//! - `server.rs`: listener, limits, authentication, channel requests;
//! - `git.rs`: the bridge between a channel and `git receive-pack` /
//!   `git upload-pack`;
//! - `commands.rs`: the admin command grammar and what each command does;
//! - `keys.rs`: host key and user public keys;
//! - `terminal.rs`: control characters escaped in what reaches a terminal.
//!
//! An exec string is split into words (never given to a shell) and goes to
//! exactly one of git or commands. Both report one exit status.

pub mod commands;
pub mod git;
pub mod keys;
pub mod server;
pub mod terminal;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use russh::server::Msg;
use russh::ChannelWriteHalf;
use tokio::sync::mpsc;

use crate::git::{GitEnv, Repos};
use crate::hook::PushRegistry;
use crate::state::{self, Db};

/// What the SSH side needs from the rest of the daemon.
pub struct SshContext {
    pub db: Db,
    pub repos: Repos,
    pub git_env: GitEnv,
    pub pushes: Arc<PushRegistry>,
    pub hook_socket: PathBuf,
    /// This binary, which the pre-receive hook runs as `cygni hook pre-receive`.
    pub cygni_bin: PathBuf,
    pub data_dir: PathBuf,
    /// Apps are at `http://APP.DOMAIN[:PORT]`.
    pub domain: String,
    /// The dashboard's base URLs (control host, loopback listener), for
    /// `dashboard:login`.
    pub dashboard_urls: Vec<String>,
    pub platform: Arc<crate::deploy::Platform>,
    /// When the daemon started, for `status`.
    pub started: std::time::Instant,
    /// Certificates: `certs`, `certs:renew`, and `notify()` after a change
    /// of hosts.
    pub acme: crate::acme::Acme,
    /// The business rules every command goes through.
    pub service: Arc<crate::service::Service>,
}

impl SshContext {
    /// The URL an app is served at, for messages.
    pub fn app_url(&self, app: &crate::names::AppName) -> String {
        self.platform.app_url(app)
    }
}

/// Who is on the other end, decided once the key's signature is verified:
/// the service layer's actor.
pub type Identity = crate::service::Actor;

/// One `exec` request in flight.
pub(crate) struct Exec {
    pub ctx: Arc<SshContext>,
    pub identity: Identity,
    pub peer: SocketAddr,
    pub git_protocol: Option<String>,
    /// The client's stdin; ends at the client's EOF.
    pub stdin: mpsc::Receiver<Bytes>,
    /// Cancelled when the client closes the channel or goes away, so long
    /// commands (`logs -f`, `run`) stop even when they have nothing to say.
    pub closed: tokio_util::sync::CancellationToken,
    /// The client asked for a pseudo-terminal (`ssh -t`).
    pub pty: Option<PtyRequest>,
    /// The client's terminal size (cols, rows), updated on window changes.
    pub resize: tokio::sync::watch::Receiver<(u16, u16)>,
    pub out: ChannelWriteHalf<Msg>,
    /// A command whose status is another process's (`run`) sets it here.
    pub exit_override: Option<u32>,
    /// stdout is another program's own bytes (`run`), passed on raw.
    pub passthrough: bool,
}

/// A pseudo-terminal as the client asked for it.
#[derive(Debug, Clone)]
pub struct PtyRequest {
    pub term: String,
    pub cols: u16,
    pub rows: u16,
}

impl Exec {
    /// Text for the client's terminal: control characters are escaped
    /// ([`terminal`]), so nothing an app, a config value or an error holds
    /// can drive the reader's terminal. `--json` output passes unchanged.
    pub async fn stdout(&self, bytes: impl Into<Bytes>) {
        let bytes = bytes.into();
        if self.passthrough {
            self.write(None, bytes).await;
        } else {
            self.write(None, shown(bytes)).await;
        }
    }

    /// [`Exec::stdout`] for stderr.
    pub async fn stderr(&self, bytes: impl Into<Bytes>) {
        self.write(Some(1), shown(bytes.into())).await;
    }

    /// Exact bytes, for output whose bytes are the point (a one-off's own
    /// output, git's protocol). Nothing a person reads should come here.
    pub async fn stdout_raw(&self, bytes: impl Into<Bytes>) -> bool {
        self.write(None, bytes.into()).await
    }

    /// [`Exec::stdout_raw`] for stderr.
    pub async fn stderr_raw(&self, bytes: impl Into<Bytes>) -> bool {
        self.write(Some(1), bytes.into()).await
    }

    /// Write to the channel; false once the client is gone. Never waits on
    /// a client that went away: russh's write waits for window space that
    /// a dead peer never grants, so every write races `closed`.
    async fn write(&self, ext: Option<u32>, bytes: Bytes) -> bool {
        if self.closed.is_cancelled() {
            return false;
        }
        let send = async {
            match ext {
                None => self.out.data_bytes(bytes).await,
                Some(code) => self.out.extended_data_bytes(code, bytes).await,
            }
        };
        tokio::select! {
            r = send => r.is_ok(),
            _ = self.closed.cancelled() => false,
        }
    }

    /// Read stdin to its end, refusing more than `limit` bytes.
    pub async fn read_stdin(&mut self, limit: usize) -> Result<Vec<u8>, commands::CommandError> {
        let mut buf = Vec::new();
        while let Some(chunk) = self.stdin.recv().await {
            if buf.len() + chunk.len() > limit {
                return Err(commands::CommandError::Invalid(format!(
                    "input is larger than {limit} bytes"
                )));
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf)
    }
}

/// `bytes` as the terminal may show them.
fn shown(bytes: Bytes) -> Bytes {
    match terminal::escape(&bytes, terminal::Cr::OnlyInCrLf) {
        std::borrow::Cow::Borrowed(_) => bytes,
        std::borrow::Cow::Owned(escaped) => Bytes::from(escaped),
    }
}

/// Run one exec request to completion and close the channel with its status.
pub(crate) async fn run_exec(mut exec: Exec, command: String) {
    let status = match shell_words::split(&command) {
        Err(_) => {
            exec.stderr("error: unbalanced quotes in the command\n")
                .await;
            2
        }
        Ok(words) => match words.first().map(String::as_str) {
            Some("git-receive-pack") | Some("git-upload-pack") => {
                git::serve(&mut exec, &words).await
            }
            Some("git-upload-archive") => {
                exec.stderr("error: git-upload-archive is not supported\n")
                    .await;
                1
            }
            first => {
                // `run` relays the one-off's own output, escape sequences
                // and all: that is what a pty session needs.
                exec.passthrough = first == Some("run");
                // Commands that never read stdin drop it at once: a client
                // that sends some would otherwise fill the queue, block the
                // pump and with it the whole connection (`logs -f`).
                if !matches!(first, Some("run" | "keys:add" | "config:set")) {
                    exec.stdin.close();
                }
                let status = commands::run(&mut exec, words).await;
                exec.exit_override
                    .take()
                    .filter(|_| status == 0)
                    .unwrap_or(status)
            }
        },
    };
    tracing::info!(peer = %exec.peer, key = %exec.identity.name, command = %first_word(&command), status, "ssh exec");
    // Drop stdin first so a pump blocked on a full queue moves on.
    exec.stdin.close();
    let _ = exec.out.exit_status(status).await;
    let _ = exec.out.eof().await;
    let _ = exec.out.close().await;
}

/// For logs: the command without its arguments, which may hold secrets.
fn first_word(command: &str) -> &str {
    command.split_whitespace().next().unwrap_or("")
}

/// An app `identity` may read (the service layer's rule): anything it may
/// not see is "app not found".
pub(crate) async fn readable_app(
    ctx: &SshContext,
    identity: &Identity,
    app: &crate::names::AppName,
) -> Result<state::apps::App, commands::CommandError> {
    Ok(ctx
        .service
        .app(identity, app, crate::service::Access::Read)
        .await?)
}

/// An app `identity` may change (the service layer's rule): anything it
/// may not see is "app not found"; a viewer is refused.
pub(crate) async fn visible_app(
    ctx: &SshContext,
    identity: &Identity,
    app: &crate::names::AppName,
) -> Result<state::apps::App, commands::CommandError> {
    Ok(ctx
        .service
        .app(identity, app, crate::service::Access::Manage)
        .await?)
}
