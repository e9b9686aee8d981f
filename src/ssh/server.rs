//! The SSH listener: connection limits, public-key authentication, and
//! channel requests. What an `exec` asks for is handed to [`super::git`] or
//! [`super::commands`]; everything else is refused.
//!
//! ```text
//! accept ──► limiter (unauthenticated only: per IP cap, early drop, fair eviction)
//!   └─► russh session ──auth_publickey (user `cygni`, signature verified)──► Identity
//!          └─ channel ──open──► pump (drains the channel from the first message)
//!                └─exec──► words ──► git-receive-pack | git-upload-pack | admin command
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
use russh::{Channel, ChannelId, ChannelMsg, ChannelWriteHalf, MethodKind, MethodSet};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{keys, Identity, SshContext};
use crate::metrics::Refusal as LoginRefusal;
use crate::state;

/// How long a client has, from TCP connect, to authenticate.
const LOGIN_DEADLINE: Duration = Duration::from_secs(30);
/// Unauthenticated connections allowed at once from one address. A flood
/// from one address cannot use up the slots everyone else needs, and each
/// slot frees itself at the login deadline.
const MAX_UNAUTH_PER_IP: usize = 16;
/// Unauthenticated connections in all, and where early drop starts: like
/// OpenSSH's `MaxStartups 64:30:256`, past `EARLY_DROP_START` a connection
/// is refused with a probability rising from 30 % to 100 % at
/// `MAX_UNAUTH_TOTAL`. An address's first pending connection is never
/// dropped early, and when every slot is taken it takes the oldest slot of
/// the address that holds the most (if that address holds at least two
/// more), else the oldest slot of all once that has waited
/// [`EVICT_MIN_AGE`]: a flood from many addresses, even one connection
/// from each of 256, slows everyone a little but locks no newcomer out.
const MAX_UNAUTH_TOTAL: usize = 256;
/// A pending connection younger than this is never taken for a newcomer:
/// a real client logs in well within it (OpenSSH over a real network: well
/// under a second), so a flood cannot evict the handshakes it races.
const EVICT_MIN_AGE: Duration = Duration::from_secs(2);
const EARLY_DROP_START: usize = 64;
const EARLY_DROP_RATE: f64 = 0.3;
/// Bytes of stdin buffered for a command before the client is slowed down.
const STDIN_QUEUE: usize = 64;
/// `env` requests honoured per channel; past this they are refused, and
/// nothing of them is kept. Only GIT_PROTOCOL is ever used.
const MAX_ENV_REQUESTS: usize = 16;
/// Bytes of channel data kept from before the exec (a client may send stdin
/// right behind its exec request); more is dropped.
const MAX_EARLY_STDIN: usize = 64 * 1024;
/// The one user name, as documented: `ssh cygni@HOST`.
const SSH_USER: &str = "cygni";

#[derive(Default)]
struct Limiter {
    inner: Mutex<Pending>,
}

/// The unauthenticated connections, by address, oldest first.
#[derive(Default)]
struct Pending {
    /// (id, since, evicted): ids rise, so each list is oldest first.
    by_ip: HashMap<IpAddr, Vec<(u64, std::time::Instant, CancellationToken)>>,
    total: usize,
    next_id: u64,
}

/// One unauthenticated connection's place. `evicted` fires when a
/// newcomer took it; the connection then ends.
struct Slot {
    limiter: Arc<Limiter>,
    ip: IpAddr,
    id: u64,
    evicted: CancellationToken,
}

/// Why a connection was not let in.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    PerAddress,
    EarlyDrop,
    Full,
}

impl Limiter {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `roll` is a uniform random number in [0, 1), the early-drop dice.
    fn acquire(
        self: &Arc<Self>,
        ip: IpAddr,
        roll: f64,
        now: std::time::Instant,
    ) -> Result<Slot, Refusal> {
        let mut g = self.lock();
        let mine = g.by_ip.get(&ip).map_or(0, Vec::len);
        if mine >= MAX_UNAUTH_PER_IP {
            return Err(Refusal::PerAddress);
        }
        if mine > 0 && roll < early_drop_probability(g.total) {
            return Err(Refusal::EarlyDrop);
        }
        if g.total >= MAX_UNAUTH_TOTAL {
            // Take the oldest slot of the heaviest address, if it holds at
            // least two more than this one: never a slot from a peer.
            let heaviest = g
                .by_ip
                .iter()
                .max_by_key(|(_, v)| v.len())
                .map(|(ip, v)| (*ip, v.len()));
            let victim = match heaviest {
                Some((victim, n)) if n > mine + 1 => victim,
                // No heavy address (one connection from each of many):
                // the oldest slot of all, if it has had its chance.
                _ => g
                    .by_ip
                    .iter()
                    .filter_map(|(ip, v)| v.first().map(|(id, since, _)| (*id, *since, *ip)))
                    .min_by_key(|(id, _, _)| *id)
                    .filter(|(_, since, _)| now.saturating_duration_since(*since) >= EVICT_MIN_AGE)
                    .map(|(_, _, ip)| ip)
                    .ok_or(Refusal::Full)?,
            };
            let list = g.by_ip.get_mut(&victim).ok_or(Refusal::Full)?;
            let (_, _, token) = list.remove(0);
            if list.is_empty() {
                g.by_ip.remove(&victim);
            }
            g.total -= 1;
            token.cancel();
            tracing::info!(%ip, %victim, "pre-auth slots full; took the oldest slot of the heaviest address, or of all");
        }
        let id = g.next_id;
        g.next_id += 1;
        let evicted = CancellationToken::new();
        g.by_ip
            .entry(ip)
            .or_default()
            .push((id, now, evicted.clone()));
        g.total += 1;
        Ok(Slot {
            limiter: self.clone(),
            ip,
            id,
            evicted,
        })
    }
}

/// OpenSSH's MaxStartups curve: 0 below the start, then from the rate up
/// to 1 at the cap.
fn early_drop_probability(total: usize) -> f64 {
    if total < EARLY_DROP_START {
        return 0.0;
    }
    if total >= MAX_UNAUTH_TOTAL {
        return 1.0;
    }
    let span = (MAX_UNAUTH_TOTAL - EARLY_DROP_START) as f64;
    let over = (total - EARLY_DROP_START) as f64;
    EARLY_DROP_RATE + (1.0 - EARLY_DROP_RATE) * over / span
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut g = self.limiter.lock();
        let Some(list) = g.by_ip.get_mut(&self.ip) else {
            return;
        };
        // An evicted slot was already taken out.
        let Some(pos) = list.iter().position(|(id, _, _)| *id == self.id) else {
            return;
        };
        list.remove(pos);
        if list.is_empty() {
            g.by_ip.remove(&self.ip);
        }
        g.total -= 1;
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
        // No compression: zlib before authentication is attack surface for
        // anyone, and compressing what sessions carry invites CRIME-style
        // oracles; pushes are already compressed packs.
        preferred: russh::Preferred {
            compression: std::borrow::Cow::Borrowed(&[russh::compression::NONE]),
            ..Default::default()
        },
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
        let roll = rand::Rng::gen::<f64>(&mut rand::thread_rng());
        let slot = match limiter.acquire(peer.ip(), roll, std::time::Instant::now()) {
            Ok(slot) => slot,
            Err(why) => {
                tracing::warn!(%peer, ?why, "too many unauthenticated ssh connections; dropped");
                drop(stream);
                continue;
            }
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
        session: None,
    };
    let evicted = slot.evicted.clone();
    let handshake =
        tokio::time::timeout_at(deadline, russh::server::run_stream(config, stream, handler));
    let session = tokio::select! {
        r = handshake => match r {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "ssh handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "ssh login deadline passed during handshake");
                return;
            }
        },
        _ = evicted.cancelled() => {
            tracing::debug!(%peer, "pre-auth slot taken by a newcomer during the handshake");
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
        _ = evicted.cancelled() => {
            tracing::info!(%peer, "pre-auth slot taken by a newcomer");
            let _ = handle
                .disconnect(russh::Disconnect::TooManyConnections, "too many unauthenticated connections".into(), String::new())
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

/// A session channel until its exec. Its messages are read from the
/// moment it opens (see [`pump`]): russh queues every request and data
/// packet on the channel as well as calling the handler, and a queue
/// nobody reads stalls the whole connection.
struct ChannelSlot {
    /// Taken by the exec (or the shell refusal).
    write: Option<ChannelWriteHalf<Msg>>,
    /// Hands the pump where stdin and window changes go, at exec.
    attach: Option<oneshot::Sender<Attach>>,
    /// Cancelled when the client closes the channel or goes away.
    closed: CancellationToken,
    git_protocol: Option<String>,
    pty: Option<super::PtyRequest>,
    env_requests: usize,
}

/// Where the pump sends what a command reads.
struct Attach {
    stdin: mpsc::Sender<Bytes>,
    resize: tokio::sync::watch::Sender<(u16, u16)>,
}

/// One client connection's state, owned by russh's session task.
struct Connection {
    ctx: Arc<SshContext>,
    peer: SocketAddr,
    identity: Option<Identity>,
    authed: Option<oneshot::Sender<()>>,
    channels: HashMap<ChannelId, ChannelSlot>,
    /// Counts this connection in the open-sessions gauge once it logged in.
    session: Option<crate::metrics::SessionGuard>,
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
        user: &str,
        _offer: russh::server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        // Any key for `cygni` proceeds to the signature: whether a key is
        // known is decided only once its owner has proven it, in
        // auth_publickey. Other user names get no further, whatever the key.
        if user != SSH_USER {
            self.ctx.platform.metrics.ssh_refused(LoginRefusal::User);
            return Ok(Auth::reject());
        }
        Ok(Auth::Accept)
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        let fingerprint = keys::fingerprint(key.public_key);
        if user != SSH_USER {
            tracing::info!(peer = %self.peer, user = %user.escape_debug(), "ssh login refused: the user name must be `cygni`");
            self.ctx.platform.metrics.ssh_refused(LoginRefusal::User);
            return Ok(Auth::reject());
        }
        let fp = fingerprint.clone();
        let found = self
            .ctx
            .db
            .call(move |c| state::keys::by_fingerprint(c, &fp))
            .await;
        match found {
            Ok(Some(k)) => {
                tracing::info!(peer = %self.peer, key = %k.name, role = k.role.as_str(), "ssh login");
                self.session = Some(self.ctx.platform.metrics.ssh_session());
                self.identity = Some(Identity {
                    name: k.name,
                    principal: crate::service::Principal::Key { fingerprint },
                    role: k.role,
                    source: crate::service::Source::Ssh,
                    address: Some(self.peer.ip()),
                });
                Ok(Auth::Accept)
            }
            Ok(None) => {
                tracing::info!(peer = %self.peer, %fingerprint, "ssh login refused: unknown key");
                self.ctx
                    .platform
                    .metrics
                    .ssh_refused(LoginRefusal::UnknownKey);
                Ok(Auth::reject())
            }
            Err(e) => {
                tracing::error!(error = %e, "key lookup failed");
                self.ctx.platform.metrics.ssh_refused(LoginRefusal::Error);
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
        let id = channel.id();
        let (read, write) = channel.split();
        let (attach_tx, attach_rx) = oneshot::channel();
        let closed = CancellationToken::new();
        tokio::spawn(pump(read, attach_rx, closed.clone()));
        self.channels.insert(
            id,
            ChannelSlot {
                write: Some(write),
                attach: Some(attach_tx),
                closed,
                git_protocol: None,
                pty: None,
                env_requests: 0,
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
        // Past a handful, env requests are refused outright: a client
        // gains nothing by sending more, and none of them is kept.
        match self.channels.get_mut(&channel) {
            Some(slot) if slot.env_requests < MAX_ENV_REQUESTS => {
                slot.env_requests += 1;
                if name == "GIT_PROTOCOL" && valid_git_protocol(value) {
                    slot.git_protocol = Some(value.to_owned());
                    session.channel_success(channel)
                } else {
                    session.channel_failure(channel)
                }
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
        if let Some(write) = self.channels.get_mut(&channel).and_then(|s| s.write.take()) {
            session.channel_success(channel)?;
            tokio::spawn(async move {
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
        let (Some(write), Some(attach)) = (slot.write.take(), slot.attach.take()) else {
            // One exec per channel.
            return session.channel_failure(channel);
        };
        let git_protocol = slot.git_protocol.clone();
        let pty = slot.pty.clone();
        let closed = slot.closed.clone();
        // Attach before replying: the pump must know where stdin goes
        // before russh queues the data a client sends behind its exec.
        let (stdin_tx, stdin_rx) = mpsc::channel(STDIN_QUEUE);
        let size = pty.as_ref().map(|p| (p.cols, p.rows)).unwrap_or((80, 24));
        let (resize_tx, resize_rx) = tokio::sync::watch::channel(size);
        let _ = attach.send(Attach {
            stdin: stdin_tx,
            resize: resize_tx,
        });
        session.channel_success(channel)?;

        let command = String::from_utf8_lossy(data).into_owned();
        let ctx = self.ctx.clone();
        let peer = self.peer;
        tokio::spawn(async move {
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
                passthrough: false,
            };
            super::run_exec(exec, command).await;
        });
        Ok(())
    }
}

/// Read a channel from its opening until it closes. Before the exec,
/// requests are dropped (the handler has seen them) and data is kept up to
/// a bound; from the exec on, stdin goes to the command while it wants it
/// and window changes to its pty. Reading never stops early: russh stalls
/// the whole connection when a channel's queue is not drained.
async fn pump(
    mut read: russh::ChannelReadHalf,
    mut attach: oneshot::Receiver<Attach>,
    closed: CancellationToken,
) {
    // However the loop ends, the channel is gone for good.
    let _closed = closed.drop_guard();
    let mut waiting = true;
    let mut stdin: Option<mpsc::Sender<Bytes>> = None;
    let mut resize: Option<tokio::sync::watch::Sender<(u16, u16)>> = None;
    let (mut early, mut early_len, mut early_eof) = (Vec::new(), 0usize, false);
    let mut early_size = None;
    loop {
        let msg = tokio::select! {
            biased;
            a = &mut attach, if waiting => {
                waiting = false;
                // No attach (the channel closed, or a shell was refused):
                // keep draining, keep nothing.
                let Ok(a) = a else {
                    early.clear();
                    continue;
                };
                {
                    if let Some(size) = early_size.take() {
                        a.resize.send_replace(size);
                    }
                    let mut tx = Some(a.stdin);
                    for chunk in std::mem::take(&mut early) {
                        if let Some(sender) = &tx {
                            if sender.send(chunk).await.is_err() {
                                tx = None;
                            }
                        }
                    }
                    stdin = if early_eof { None } else { tx };
                    resize = Some(a.resize);
                }
                continue;
            }
            m = read.wait() => match m {
                Some(m) => m,
                None => break,
            },
        };
        match msg {
            ChannelMsg::Data { data } => {
                if let Some(sender) = &stdin {
                    if sender.send(data).await.is_err() {
                        stdin = None;
                    }
                } else if waiting && early_len + data.len() <= MAX_EARLY_STDIN {
                    early_len += data.len();
                    early.push(data);
                }
            }
            // Dropping the sender tells the reader stdin has ended.
            ChannelMsg::Eof => {
                stdin = None;
                early_eof = true;
            }
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
                match &resize {
                    Some(r) => {
                        r.send_replace(size);
                    }
                    None => early_size = Some(size),
                }
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

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn limiter_caps_per_ip_and_frees() {
        let l = Arc::new(Limiter::default());
        // Under the early-drop start, no dice: the worst roll gets in.
        let slots: Vec<_> = (0..MAX_UNAUTH_PER_IP)
            .map(|_| l.acquire(ip(1), 0.0, t0()).expect("under the cap"))
            .collect();
        assert_eq!(
            l.acquire(ip(1), 0.99, t0()).err(),
            Some(Refusal::PerAddress)
        );
        assert!(
            l.acquire(ip(2), 0.0, t0()).is_ok(),
            "other addresses still get in"
        );
        drop(slots);
        assert!(l.acquire(ip(1), 0.0, t0()).is_ok(), "slots free on drop");
        assert_eq!(l.lock().total, 0, "every slot dropped");
    }

    #[test]
    fn early_drop_rises_from_the_start_to_the_cap() {
        assert_eq!(early_drop_probability(EARLY_DROP_START - 1), 0.0);
        assert_eq!(early_drop_probability(EARLY_DROP_START), EARLY_DROP_RATE);
        assert_eq!(early_drop_probability(MAX_UNAUTH_TOTAL), 1.0);
        let l = Arc::new(Limiter::default());
        let mut held = Vec::new();
        for last in 1..=(EARLY_DROP_START / 4) as u8 {
            for _ in 0..4 {
                held.push(l.acquire(ip(last), 0.0, t0()).expect("under the start"));
            }
        }
        // Past the start, an address's second connection rolls the dice...
        assert_eq!(l.acquire(ip(1), 0.0, t0()).err(), Some(Refusal::EarlyDrop));
        assert!(l.acquire(ip(1), 0.99, t0()).is_ok());
        // ...but a newcomer's first never does.
        assert!(l.acquire(ip(200), 0.0, t0()).is_ok());
    }

    #[test]
    fn a_full_table_gives_a_newcomer_the_heaviest_address_s_oldest_slot() {
        let l = Arc::new(Limiter::default());
        let mut held = Vec::new();
        for last in 2..18u8 {
            for _ in 0..MAX_UNAUTH_PER_IP {
                held.push(l.acquire(ip(last), 0.999_999, t0()).expect("lucky rolls"));
            }
        }
        assert_eq!(l.lock().total, MAX_UNAUTH_TOTAL);
        // The flood cannot grow, even from a fresh address of its own...
        let newcomer = l.acquire(ip(1), 0.0, t0()).expect("a newcomer gets in");
        assert_eq!(l.lock().total, MAX_UNAUTH_TOTAL);
        let evicted: Vec<usize> = (0..held.len())
            .filter(|&i| held[i].evicted.is_cancelled())
            .collect();
        assert_eq!(evicted.len(), 1, "exactly one slot was taken");
        assert_eq!(evicted[0] % MAX_UNAUTH_PER_IP, 0, "its address's oldest");
        let victim = held[evicted[0]].ip;
        let other = if victim == ip(2) { ip(3) } else { ip(2) };
        // ...nor take the newcomer's slot back.
        assert_eq!(
            l.acquire(other, 0.999_999, t0()).err(),
            Some(Refusal::PerAddress)
        );
        assert_eq!(
            l.acquire(victim, 0.999_999, t0()).err(),
            Some(Refusal::EarlyDrop)
        );
        // Dropping an evicted slot does not count it twice.
        drop(held);
        assert_eq!(l.lock().total, 1);
        drop(newcomer);
        assert_eq!(l.lock().total, 0);
        assert!(l.lock().by_ip.is_empty());
    }

    #[test]
    fn one_connection_from_each_of_many_addresses_locks_no_newcomer_out() {
        let l = Arc::new(Limiter::default());
        let held: Vec<_> = (0..MAX_UNAUTH_TOTAL)
            .map(|i| {
                l.acquire(
                    IpAddr::from([10, 0, (i / 250) as u8, (i % 250) as u8]),
                    0.0,
                    t0(),
                )
                .expect("first connections are never dropped early")
            })
            .collect();
        // While every slot is young, none is taken: they may be real
        // handshakes in progress.
        let soon = t0() + EVICT_MIN_AGE / 2;
        assert_eq!(l.acquire(ip(1), 0.0, soon).err(), Some(Refusal::Full));
        assert!(held.iter().all(|s| !s.evicted.is_cancelled()));
        // Once they have had their chance, a newcomer takes the oldest.
        let later = t0() + EVICT_MIN_AGE;
        let newcomer = l.acquire(ip(1), 0.0, later).expect("a newcomer gets in");
        let evicted: Vec<usize> = (0..held.len())
            .filter(|&i| held[i].evicted.is_cancelled())
            .collect();
        assert_eq!(evicted, vec![0], "the oldest slot, and only it");
        assert_eq!(l.lock().total, MAX_UNAUTH_TOTAL);
        // The next newcomer takes the next oldest, never the newcomer's.
        let next = l.acquire(ip(7), 0.0, later).expect("the next one too");
        assert!(held[1].evicted.is_cancelled() && !newcomer.evicted.is_cancelled());
        drop((held, newcomer, next));
        assert_eq!(l.lock().total, 0);
    }

    /// One instant for every slot of a test.
    fn t0() -> std::time::Instant {
        static T0: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        *T0.get_or_init(std::time::Instant::now)
    }
}
