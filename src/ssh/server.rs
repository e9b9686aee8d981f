//! The SSH listener: connection limits, public-key authentication, and
//! channel requests. What an `exec` asks for is handed to [`super::git`] or
//! [`super::commands`]; everything else is refused.
//!
//! ```text
//! accept ──► limiter (per IP + global, unauthenticated only)
//!   └─► russh session ──auth_publickey (signature verified)──► Identity
//!          └─ channel ──exec──► words ──► git-receive-pack | git-upload-pack | admin command
//! ```
//!
//! Identity is decided only in `auth_publickey`, after russh has verified
//! the signature. `auth_publickey_offered` answers "maybe" for any key, so
//! offering someone else's key tells the client nothing and grants nothing.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use russh::server::{Auth, ChannelOpenHandle, Handler, Msg, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, ChannelMsg, MethodKind, MethodSet};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{keys, Identity, SshContext};
use crate::state;

/// How long a client has, from TCP connect, to authenticate.
const LOGIN_DEADLINE: Duration = Duration::from_secs(30);
/// Unauthenticated connections allowed at once from one address, and in all.
/// A flood from one address cannot use up the slots everyone else needs, and
/// each slot frees itself at the login deadline.
const MAX_UNAUTH_PER_IP: usize = 16;
const MAX_UNAUTH_TOTAL: usize = 256;
/// Bytes of stdin buffered for a command before the client is slowed down.
const STDIN_QUEUE: usize = 64;

#[derive(Default)]
struct Limiter {
    inner: Mutex<(HashMap<IpAddr, usize>, usize)>,
}

struct Slot {
    limiter: Arc<Limiter>,
    ip: IpAddr,
}

impl Limiter {
    fn acquire(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (per_ip, total) = &mut *g;
        let n = per_ip.entry(ip).or_insert(0);
        if *n >= MAX_UNAUTH_PER_IP || *total >= MAX_UNAUTH_TOTAL {
            return None;
        }
        *n += 1;
        *total += 1;
        Some(Slot {
            limiter: self.clone(),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut g = self.limiter.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (per_ip, total) = &mut *g;
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
        *total -= 1;
    }
}

/// The russh server configuration Cygni runs with.
pub fn russh_config(host_key: russh::keys::PrivateKey) -> russh::server::Config {
    let mut methods = MethodSet::empty();
    methods.push(MethodKind::PublicKey);
    russh::server::Config {
        server_id: russh::SshId::Standard(
            format!("SSH-2.0-Cygni_{}", env!("CARGO_PKG_VERSION")).into(),
        ),
        methods,
        auth_rejection_time: Duration::from_millis(500),
        // OpenSSH probes with "none" first; no need to make every login slow.
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: vec![host_key],
        max_auth_attempts: 6,
        // Long deploys and `logs -f` send nothing for minutes; keepalives
        // find dead peers instead of an inactivity timer.
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(30)),
        keepalive_max: 4,
        nodelay: true,
        ..Default::default()
    }
}

/// Accept SSH connections until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    ctx: Arc<SshContext>,
    config: Arc<russh::server::Config>,
    shutdown: CancellationToken,
) {
    let limiter = Arc::new(Limiter::default());
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off a little rather than spin.
                    tracing::warn!(error = %e, "ssh accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Some(slot) = limiter.acquire(peer.ip()) else {
            tracing::warn!(%peer, "too many unauthenticated ssh connections; dropped");
            drop(stream);
            continue;
        };
        let ctx = ctx.clone();
        let config = config.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            connection(stream, peer, ctx, config, slot, shutdown).await;
        });
    }
}

async fn connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    ctx: Arc<SshContext>,
    config: Arc<russh::server::Config>,
    slot: Slot,
    shutdown: CancellationToken,
) {
    let deadline = tokio::time::Instant::now() + LOGIN_DEADLINE;
    let (authed_tx, authed_rx) = oneshot::channel();
    let handler = Connection {
        ctx,
        peer,
        identity: None,
        authed: Some(authed_tx),
        channels: HashMap::new(),
    };
    let session =
        match tokio::time::timeout_at(deadline, russh::server::run_stream(config, stream, handler))
            .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "ssh handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "ssh login deadline passed during handshake");
                return;
            }
        };
    let handle = session.handle();
    tokio::pin!(session);

    tokio::select! {
        r = &mut session => {
            log_end(peer, r);
            return;
        }
        _ = tokio::time::sleep_until(deadline) => {
            tracing::info!(%peer, "ssh login deadline passed");
            let _ = handle
                .disconnect(russh::Disconnect::ByApplication, "login timeout".into(), String::new())
                .await;
            return;
        }
        r = authed_rx => {
            if r.is_err() {
                return;
            }
        }
    }
    // Authenticated: the slot is for unauthenticated connections only.
    drop(slot);
    tokio::select! {
        r = &mut session => log_end(peer, r),
        _ = shutdown.cancelled() => {
            let _ = handle
                .disconnect(russh::Disconnect::ByApplication, "server shutting down".into(), String::new())
                .await;
        }
    }
}

fn log_end(peer: SocketAddr, r: Result<(), russh::Error>) {
    match r {
        Ok(()) => tracing::debug!(%peer, "ssh connection closed"),
        Err(e) => tracing::debug!(%peer, error = %e, "ssh connection ended with an error"),
    }
}

struct ChannelSlot {
    channel: Option<Channel<Msg>>,
    git_protocol: Option<String>,
    pty: Option<super::PtyRequest>,
}

/// One client connection's state, owned by russh's session task.
struct Connection {
    ctx: Arc<SshContext>,
    peer: SocketAddr,
    identity: Option<Identity>,
    authed: Option<oneshot::Sender<()>>,
    channels: HashMap<ChannelId, ChannelSlot>,
}

/// `GIT_PROTOCOL` is passed to git, so only its documented shape goes through
/// (`version=2`, colon-separated `key[=value]`).
fn valid_git_protocol(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 64
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'=' | b':' | b'.' | b'-' | b'_'))
}

impl Handler for Connection {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        _offer: russh::server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        // Let any key proceed to the signature: whether a key is known is
        // decided only once its owner has proven it, in auth_publickey.
        Ok(Auth::Accept)
    }

    async fn auth_publickey(
        &mut self,
        _user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        let fingerprint = keys::fingerprint(key.public_key);
        let fp = fingerprint.clone();
        let found = self
            .ctx
            .db
            .call(move |c| state::keys::by_fingerprint(c, &fp))
            .await;
        match found {
            Ok(Some(k)) => {
                tracing::info!(peer = %self.peer, key = %k.name, role = k.role.as_str(), "ssh login");
                self.identity = Some(Identity {
                    key_name: k.name,
                    fingerprint,
                    role: k.role,
                });
                Ok(Auth::Accept)
            }
            Ok(None) => {
                tracing::info!(peer = %self.peer, %fingerprint, "ssh login refused: unknown key");
                Ok(Auth::reject())
            }
            Err(e) => {
                tracing::error!(error = %e, "key lookup failed");
                Ok(Auth::reject())
            }
        }
    }

    async fn auth_succeeded(&mut self, _session: &mut Session) -> Result<(), Self::Error> {
        if let Some(tx) = self.authed.take() {
            let _ = tx.send(());
        }
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.identity.is_none() || self.channels.len() >= 8 {
            reply
                .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        }
        self.channels.insert(
            channel.id(),
            ChannelSlot {
                channel: Some(channel),
                git_protocol: None,
                pty: None,
            },
        );
        reply.accept().await;
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.channels.remove(&channel);
        Ok(())
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Every other variable is ignored: nothing from the client reaches a
        // process environment but a checked GIT_PROTOCOL.
        match self.channels.get_mut(&channel) {
            Some(slot) if name == "GIT_PROTOCOL" && valid_git_protocol(value) => {
                slot.git_protocol = Some(value.to_owned());
                session.channel_success(channel)
            }
            _ => session.channel_failure(channel),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn pty_request(
        &mut self,
        channel: ChannelId,
        term: &str,
        cols: u32,
        rows: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Only `run` uses it; the terminal name is passed on as TERM, so it
        // is checked like any other value that reaches a process.
        let term_ok = !term.is_empty()
            && term.len() <= 64
            && term
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'+'));
        match self.channels.get_mut(&channel) {
            Some(slot) => {
                slot.pty = Some(super::PtyRequest {
                    term: if term_ok { term } else { "xterm" }.to_owned(),
                    // 0 means "unknown" (no local terminal): a classic 80x24.
                    cols: if cols == 0 { 80 } else { cols.min(1000) as u16 },
                    rows: if rows == 0 { 24 } else { rows.min(1000) as u16 },
                });
                session.channel_success(channel)
            }
            None => session.channel_failure(channel),
        }
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // An interactive login gets a hint rather than a silent refusal.
        if let Some(ch) = self
            .channels
            .get_mut(&channel)
            .and_then(|s| s.channel.take())
        {
            session.channel_success(channel)?;
            tokio::spawn(async move {
                let (_read, write) = ch.split();
                let msg = "Cygni has no shell. Try: ssh -p PORT cygni@HOST help\r\n";
                let _ = write.extended_data_bytes(1, Bytes::from(msg)).await;
                let _ = write.exit_status(1).await;
                let _ = write.eof().await;
                let _ = write.close().await;
            });
            Ok(())
        } else {
            session.channel_failure(channel)
        }
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)
    }

    #[allow(clippy::too_many_arguments)]
    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _x11_auth_protocol: &str,
        _x11_auth_cookie: &str,
        _x11_screen_number: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)
    }

    async fn agent_request(
        &mut self,
        _channel: ChannelId,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        Ok(false)
    }

    async fn tcpip_forward(
        &mut self,
        _address: &str,
        _port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        Ok(false)
    }

    async fn streamlocal_forward(
        &mut self,
        _socket_path: &str,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        Ok(false)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(identity) = self.identity.clone() else {
            return session.channel_failure(channel);
        };
        let Some(slot) = self.channels.get_mut(&channel) else {
            return session.channel_failure(channel);
        };
        let Some(ch) = slot.channel.take() else {
            // One exec per channel.
            return session.channel_failure(channel);
        };
        let git_protocol = slot.git_protocol.clone();
        let pty = slot.pty.clone();
        session.channel_success(channel)?;

        let command = String::from_utf8_lossy(data).into_owned();
        let ctx = self.ctx.clone();
        let peer = self.peer;
        tokio::spawn(async move {
            let (read, write) = ch.split();
            let (stdin_tx, stdin_rx) = mpsc::channel(STDIN_QUEUE);
            let closed = tokio_util::sync::CancellationToken::new();
            let size = pty.as_ref().map(|p| (p.cols, p.rows)).unwrap_or((80, 24));
            let (resize_tx, resize_rx) = tokio::sync::watch::channel(size);
            tokio::spawn(pump_stdin(read, stdin_tx, resize_tx, closed.clone()));
            let exec = super::Exec {
                ctx,
                identity,
                peer,
                git_protocol,
                stdin: stdin_rx,
                closed,
                pty,
                resize: resize_rx,
                out: write,
                exit_override: None,
            };
            super::run_exec(exec, command).await;
        });
        Ok(())
    }
}

/// Read the channel until it closes, passing stdin bytes on while someone
/// wants them. Reading never stops early: russh stalls the whole connection
/// when a channel's queue is not drained.
async fn pump_stdin(
    mut read: russh::ChannelReadHalf,
    tx: mpsc::Sender<Bytes>,
    resize: tokio::sync::watch::Sender<(u16, u16)>,
    closed: tokio_util::sync::CancellationToken,
) {
    // However the loop ends, the channel is gone for good.
    let _closed = closed.drop_guard();
    let mut tx = Some(tx);
    while let Some(msg) = read.wait().await {
        match msg {
            ChannelMsg::Data { data } => {
                if let Some(sender) = &tx {
                    if sender.send(data).await.is_err() {
                        tx = None;
                    }
                }
            }
            // Dropping the sender tells the reader stdin has ended.
            ChannelMsg::Eof => tx = None,
            ChannelMsg::Close => break,
            // The client's terminal changed size (`ssh -t` forwards SIGWINCH).
            ChannelMsg::WindowChange {
                col_width,
                row_height,
                ..
            } => {
                let size = (
                    col_width.clamp(1, 1000) as u16,
                    row_height.clamp(1, 1000) as u16,
                );
                resize.send_replace(size);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_protocol_values() {
        assert!(valid_git_protocol("version=2"));
        assert!(valid_git_protocol("version=2:object-format=sha256"));
        for bad in ["", "version=2 --upload-pack=x", "a;b", "$(id)", "a\nb"] {
            assert!(!valid_git_protocol(bad), "{bad:?}");
        }
    }

    #[test]
    fn limiter_caps_per_ip_and_frees() {
        let l = Arc::new(Limiter::default());
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let slots: Vec<_> = (0..MAX_UNAUTH_PER_IP)
            .map(|_| l.acquire(ip).expect("under the cap"))
            .collect();
        assert!(l.acquire(ip).is_none(), "cap reached");
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        assert!(l.acquire(other).is_some(), "other addresses still get in");
        drop(slots);
        assert!(l.acquire(ip).is_some(), "slots free on drop");
    }
}
