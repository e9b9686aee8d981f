//! The push hook: how git's pre-receive hook reaches the daemon.
//!
//! ```text
//! ssh session ──registers token──► PushRegistry
//!     │
//!     └─ spawns `git receive-pack` (env: CYGNI_BIN, CYGNI_HOOK_SOCKET, CYGNI_PUSH_TOKEN)
//!            └─ hooks/pre-receive ─► `cygni hook pre-receive`
//!                   │  one JSON request line over DATA/run/hook.sock
//!                   ▼
//!               HookServer ──► PushHandler (deploy) ──► output lines ──► hook stdout
//!                                                    ──► verdict ──► exit 0 / 1
//! ```
//!
//! What the hook prints reaches the pusher as `remote:` lines, which is why
//! deploy progress flows through here rather than the SSH channel's stderr.
//! The token binds a hook call to the authenticated SSH session that started
//! the push, so nothing else on the host can trigger a deploy by talking to
//! the socket, and the daemon knows which key pushed.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::names::AppName;

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("hook socket {path}: {source}")]
    Socket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the hook must run under a push from Cygni's SSH server ({0} is not set)")]
    MissingEnv(&'static str),
    #[error("cannot reach the Cygni daemon: {0}")]
    Connect(std::io::Error),
    #[error("hook protocol: {0}")]
    Protocol(String),
}

/// One ref update, as git gives it to pre-receive on stdin.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RefUpdate {
    pub old: String,
    pub new: String,
    pub name: String,
}

impl RefUpdate {
    /// The branch name, for `refs/heads/BRANCH` updates.
    pub fn branch(&self) -> Option<&str> {
        self.name.strip_prefix("refs/heads/")
    }

    pub fn is_delete(&self) -> bool {
        self.new.bytes().all(|b| b == b'0')
    }
}

/// Where the pushed objects sit while the hook runs (git's quarantine).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Quarantine {
    pub object_directory: Option<PathBuf>,
    pub alternate_object_directories: Vec<PathBuf>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Request {
    token: String,
    updates: Vec<RefUpdate>,
    quarantine: Quarantine,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
enum Frame {
    /// Bytes for the pusher's terminal.
    Out { d: String },
    /// The verdict; the last frame.
    End { ok: bool },
}

/// Who is pushing to what, known from the SSH session.
#[derive(Debug, Clone)]
pub struct PushSession {
    pub app: AppName,
    /// Who pushes, and through which door (for the audit log).
    pub actor: crate::actor::Actor,
}

/// A push as the daemon's handler sees it.
pub struct Push {
    pub session: PushSession,
    pub updates: Vec<RefUpdate>,
    pub quarantine: Quarantine,
    pub holder: PushHolder,
}

/// Keeps things alive until the push is over, i.e. until `receive-pack`
/// has exited. git moves the refs only after the hook returns, so a lock
/// that must cover the ref update (the app's deploy lock) is parked here.
pub struct PushHolder {
    registry: Arc<PushRegistry>,
    token: String,
}

impl PushHolder {
    pub fn keep_until_push_ends(&self, thing: Box<dyn std::any::Any + Send>) {
        if let Some(p) = self.registry.lock().get_mut(&self.token) {
            p.held.push(thing);
        }
        // No entry: the push already ended, and `thing` drops here.
    }
}

struct Pending {
    session: PushSession,
    held: Vec<Box<dyn std::any::Any + Send>>,
}

/// Text sent to the pusher, line by line, as it happens.
pub type PushOutput = mpsc::Sender<String>;

/// Decides a push. `Err(reason)` rejects it; the reason is shown as the
/// last `remote:` line.
#[async_trait::async_trait]
pub trait PushHandler: Send + Sync + 'static {
    async fn pre_receive(&self, push: Push, out: PushOutput) -> Result<(), String>;
}

/// Tokens of the pushes in flight, each tied to its SSH session.
#[derive(Default)]
pub struct PushRegistry {
    pending: Mutex<HashMap<String, Pending>>,
}

/// Removes the token when the push ends, however it ends.
pub struct PushToken {
    registry: Arc<PushRegistry>,
    pub token: String,
}

impl Drop for PushToken {
    fn drop(&mut self) {
        // Take the entry out under the lock, drop what it holds after.
        let entry = self.registry.lock().remove(&self.token);
        drop(entry);
    }
}

impl PushRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn register(self: &Arc<Self>, session: PushSession) -> PushToken {
        let token = random_token();
        self.lock().insert(
            token.clone(),
            Pending {
                session,
                held: Vec::new(),
            },
        );
        PushToken {
            registry: self.clone(),
            token,
        }
    }

    fn lookup(&self, token: &str) -> Option<PushSession> {
        self.lock().get(token).map(|p| p.session.clone())
    }
}

fn random_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The socket path under the data dir.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("run").join("hook.sock")
}

/// Bind the hook socket (owner-only) before the daemon starts serving.
pub fn bind(data_dir: &Path) -> Result<UnixListener, HookError> {
    use std::os::unix::fs::PermissionsExt;
    let path = socket_path(data_dir);
    let err = |source| HookError::Socket {
        path: path.clone(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
    }
    // A stale socket from a previous run would make bind fail.
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(err(e)),
        _ => {}
    }
    let listener = UnixListener::bind(&path).map_err(err)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(listener)
}

/// Answer hook calls until `shutdown`.
pub async fn serve(
    listener: UnixListener,
    registry: Arc<PushRegistry>,
    handler: Arc<dyn PushHandler>,
    shutdown: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "hook socket accept failed");
                    continue;
                }
            },
        };
        let registry = registry.clone();
        let handler = handler.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, &registry, handler).await {
                tracing::warn!(error = %e, "hook call failed");
            }
        });
    }
}

async fn answer(
    stream: tokio::net::UnixStream,
    registry: &Arc<PushRegistry>,
    handler: Arc<dyn PushHandler>,
) -> Result<(), HookError> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    // The request is one line; a bound keeps a confused client from growing it forever.
    let mut reader = BufReader::new(tokio::io::AsyncReadExt::take(read, 1 << 20));
    reader
        .read_line(&mut line)
        .await
        .map_err(|e| HookError::Protocol(e.to_string()))?;
    let req = decode_request(&line)?;

    let Some(session) = registry.lookup(&req.token) else {
        send(&mut write, &Frame::End { ok: false }).await?;
        return Err(HookError::Protocol("unknown push token".into()));
    };
    let push = Push {
        session,
        updates: req.updates,
        quarantine: req.quarantine,
        holder: PushHolder {
            registry: registry.clone(),
            token: req.token,
        },
    };

    let (tx, mut rx) = mpsc::channel::<String>(256);
    let decision = tokio::spawn(async move { handler.pre_receive(push, tx).await });
    // Forward output as it comes; the handler's sender drops when it returns.
    // If the hook goes away (git or the pusher died), keep reading and drop
    // the output: a deploy never waits on a pusher that is gone.
    let mut hook_gone = false;
    while let Some(text) = rx.recv().await {
        if hook_gone {
            continue;
        }
        let d = progress_text(&text);
        if send(&mut write, &Frame::Out { d }).await.is_err() {
            hook_gone = true;
            tracing::info!(
                "the pre-receive hook went away; dropping push output until the deploy ends"
            );
        }
    }
    let verdict = match decision.await {
        Ok(v) => v,
        Err(e) => Err(format!("internal error: {e}")),
    };
    if hook_gone {
        tracing::info!(
            ok = verdict.is_ok(),
            "deploy of a push whose hook went away is over"
        );
        return Ok(());
    }
    if let Err(reason) = &verdict {
        send(
            &mut write,
            &Frame::Out {
                d: progress_text(&format!(" !     {reason}\n")),
            },
        )
        .await?;
    }
    send(
        &mut write,
        &Frame::End {
            ok: verdict.is_ok(),
        },
    )
    .await
}

/// Push output as the pusher's terminal may show it: control characters
/// escaped, `\r` kept (git's client splits `remote:` lines on it).
fn progress_text(text: &str) -> String {
    crate::ssh::terminal::escape_str(text, crate::ssh::terminal::Cr::Keep).into_owned()
}

/// The daemon's side: one request line from the hook.
fn decode_request(line: &str) -> Result<Request, HookError> {
    serde_json::from_str(line).map_err(|e| HookError::Protocol(e.to_string()))
}

/// The hook's side: one frame line from the daemon.
fn decode_frame(line: &str) -> Result<Frame, HookError> {
    serde_json::from_str(line).map_err(|e| HookError::Protocol(e.to_string()))
}

/// Both decoders on one line, for the fuzz target (`fuzz/`): neither may
/// panic, and a request that decodes re-encodes to one that decodes alike.
#[doc(hidden)]
pub fn fuzz_decode(line: &str) {
    if let Ok(req) = decode_request(line) {
        let again = serde_json::to_string(&req).expect("a decoded request encodes");
        let back = decode_request(&again).expect("an encoded request decodes");
        assert_eq!(back.updates, req.updates);
        assert_eq!(back.token, req.token);
        for u in &req.updates {
            let _ = (u.branch(), u.is_delete());
        }
    }
    if let Ok(Frame::Out { d }) = decode_frame(line) {
        let _ = progress_text(&d);
    }
}

async fn send(w: &mut tokio::net::unix::OwnedWriteHalf, frame: &Frame) -> Result<(), HookError> {
    let mut line = serde_json::to_vec(frame).map_err(|e| HookError::Protocol(e.to_string()))?;
    line.push(b'\n');
    w.write_all(&line)
        .await
        .map_err(|e| HookError::Protocol(e.to_string()))
}

/// The `cygni hook pre-receive` side, run by git. Returns the exit code.
///
/// Blocking std I/O on purpose: this is a short-lived child of git with
/// nothing else to do.
pub fn run_pre_receive() -> Result<i32, HookError> {
    let env = |name: &'static str| std::env::var(name).map_err(|_| HookError::MissingEnv(name));
    let socket = env("CYGNI_HOOK_SOCKET")?;
    let token = env("CYGNI_PUSH_TOKEN")?;

    let mut updates = Vec::new();
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(|e| HookError::Protocol(e.to_string()))?;
        let mut parts = line.split_whitespace();
        if let (Some(old), Some(new), Some(name)) = (parts.next(), parts.next(), parts.next()) {
            updates.push(RefUpdate {
                old: old.to_owned(),
                new: new.to_owned(),
                name: name.to_owned(),
            });
        }
    }
    let split_paths = |v: Option<std::ffi::OsString>| -> Vec<PathBuf> {
        v.map(|v| std::env::split_paths(&v).collect())
            .unwrap_or_default()
    };
    let quarantine = Quarantine {
        object_directory: std::env::var_os("GIT_OBJECT_DIRECTORY").map(PathBuf::from),
        alternate_object_directories: split_paths(std::env::var_os(
            "GIT_ALTERNATE_OBJECT_DIRECTORIES",
        )),
    };

    let stream = std::os::unix::net::UnixStream::connect(&socket).map_err(HookError::Connect)?;
    let mut writer = stream.try_clone().map_err(HookError::Connect)?;
    let mut req = serde_json::to_vec(&Request {
        token,
        updates,
        quarantine,
    })
    .map_err(|e| HookError::Protocol(e.to_string()))?;
    req.push(b'\n');
    writer.write_all(&req).map_err(HookError::Connect)?;

    let stdout = std::io::stdout();
    for line in std::io::BufReader::new(stream).lines() {
        let line = line.map_err(|e| HookError::Protocol(e.to_string()))?;
        match decode_frame(&line) {
            Ok(Frame::Out { d }) => {
                let mut out = stdout.lock();
                // git relays what we print as `remote:` lines; flush per
                // frame so progress shows as it happens.
                let _ = out.write_all(d.as_bytes());
                let _ = out.flush();
            }
            Ok(Frame::End { ok }) => return Ok(if ok { 0 } else { 1 }),
            Err(e) => return Err(HookError::Protocol(e.to_string())),
        }
    }
    Err(HookError::Protocol(
        "the daemon closed the connection before deciding".into(),
    ))
}
