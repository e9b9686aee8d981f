//! Keep-alive connections to app endpoints, one pool per proxy worker.
//!
//! ```text
//! request ──► checkout(addr) ──► idle SendRequest? ──► yes: reuse
//!                                      └─ no: connect + handshake (TCP_NODELAY)
//! response body fully read ──► UpstreamBody drop ──► checkin(addr, sender)
//!
//! direct path (bodiless GET/HEAD/OPTIONS, see super::upstream):
//! get_raw(addr) ──► idle socket with no event since? ──► yes: reuse
//!                                     └─ no: connect (TCP_NODELAY)
//! body read to its end ──► checkin_raw(addr, socket)
//! ```
//!
//! Why not hyper-util's legacy client: it boxes futures, clones URIs and
//! spawns a task per response to wait for the connection to become idle.
//! Here a connection goes back to the pool when the response body it
//! carried has been read to the end (see [`super::body::UpstreamBody`]),
//! which costs nothing extra per request.
//!
//! Each worker (one per core) owns its pool, so the mutex below is never
//! contended; it is there only so the same code also runs on a shared
//! multi-thread runtime. It is never held across an await.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::body::RequestBody;
use super::upstream::RawConn;
use super::ProxyError;

/// Idle connections kept per endpoint. More than the concurrency a single
/// worker reaches in practice; extras are closed rather than hoarded.
const MAX_IDLE_PER_ENDPOINT: usize = 256;

/// How often idle connections are swept. A connection unused for one to two
/// sweep periods is closed, so apps that went away don't keep sockets open.
pub(crate) const SWEEP_PERIOD: Duration = Duration::from_secs(30);

pub(crate) type Sender = SendRequest<RequestBody>;

struct Idle {
    sender: Sender,
    /// Sweep generation when the connection was checked in: cheaper than a
    /// clock read per request.
    generation: u64,
}

/// An idle socket of the direct path ([`super::upstream`]).
struct RawIdle {
    conn: RawConn,
    generation: u64,
}

pub(crate) struct Pool {
    idle: Mutex<HashMap<SocketAddr, Vec<Idle>>>,
    raw: Mutex<HashMap<SocketAddr, Vec<RawIdle>>>,
    generation: AtomicU64,
    connect_timeout: Duration,
    client: http1::Builder,
}

impl Pool {
    pub(crate) fn new(connect_timeout: Duration) -> Pool {
        Pool {
            idle: Mutex::new(HashMap::new()),
            raw: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
            connect_timeout,
            client: http1::Builder::new(),
        }
    }

    /// A connection to `addr` that is ready for a request: a pooled one if
    /// any is still open, else a new one.
    pub(crate) async fn get(&self, addr: SocketAddr) -> Result<(Sender, bool), ProxyError> {
        while let Some(mut sender) = self.checkout(addr) {
            // Usually ready at once; just after the previous response ended
            // the connection task may not have run yet, so wait for it.
            if sender.ready().await.is_ok() {
                return Ok((sender, true));
            }
        }
        Ok((self.connect(addr, false).await?, false))
    }

    fn checkout(&self, addr: SocketAddr) -> Option<Sender> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.get_mut(&addr)?;
        // Most recently used first: it is the least likely to have been
        // closed by the app's own keep-alive timeout.
        while let Some(entry) = list.pop() {
            if !entry.sender.is_closed() {
                return Some(entry.sender);
            }
        }
        None
    }

    pub(crate) fn checkin(&self, addr: SocketAddr, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let generation = self.generation.load(Ordering::Relaxed);
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.entry(addr).or_default();
        if list.len() < MAX_IDLE_PER_ENDPOINT {
            list.push(Idle { sender, generation });
        }
    }

    /// A socket for the direct path: the most recently used idle one
    /// that has seen no event since (an event on an idle socket is the
    /// app closing it, or bytes it should not have sent), else a new one.
    /// With `fresh`, a new one regardless (after a reused one failed). The
    /// flag says it was reused.
    pub(crate) async fn get_raw(
        &self,
        addr: SocketAddr,
        fresh: bool,
    ) -> Result<(RawConn, bool), ProxyError> {
        if !fresh {
            if let Some(conn) = self.checkout_raw(addr) {
                return Ok((conn, true));
            }
        }
        let stream = self.open(addr).await?;
        Ok((RawConn::new(stream), false))
    }

    fn checkout_raw(&self, addr: SocketAddr) -> Option<RawConn> {
        // Only asks whether an event is recorded; the read that follows
        // registers the real waker.
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        loop {
            let RawIdle { conn, .. } = {
                let mut raw = self.raw.lock().unwrap_or_else(|e| e.into_inner());
                raw.get_mut(&addr)?.pop()?
            };
            let event = conn.stream.poll_read_ready(&mut cx).is_ready();
            // Readiness can also be left over from the last read of the
            // previous response; a read that would block tells them apart
            // (and clears it).
            let open = !event
                || matches!(
                    conn.stream.try_read(&mut [0u8; 1]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
                );
            if open {
                return Some(conn);
            }
        }
    }

    pub(crate) fn checkin_raw(&self, addr: SocketAddr, conn: RawConn) {
        let generation = self.generation.load(Ordering::Relaxed);
        let mut raw = self.raw.lock().unwrap_or_else(|e| e.into_inner());
        let list = raw.entry(addr).or_default();
        if list.len() < MAX_IDLE_PER_ENDPOINT {
            list.push(RawIdle { conn, generation });
        }
    }

    /// Close connections idle since before the previous sweep.
    pub(crate) fn sweep(&self) {
        let now = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain(|_, list| {
            list.retain(|e| e.generation + 1 >= now && !e.sender.is_closed());
            !list.is_empty()
        });
        drop(idle);
        let mut raw = self.raw.lock().unwrap_or_else(|e| e.into_inner());
        raw.retain(|_, list| {
            list.retain(|e| e.generation + 1 >= now);
            !list.is_empty()
        });
    }

    /// A new TCP connection to `addr`, under the connect timeout.
    async fn open(&self, addr: SocketAddr) -> Result<TcpStream, ProxyError> {
        let stream =
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(source)) => return Err(ProxyError::Connect { addr, source }),
                Err(_) => return Err(ProxyError::ConnectTimeout { addr }),
            };
        // Requests and responses are written whole; Nagle would only delay
        // the last segment. Failure just means a slower socket.
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    /// Open a new connection. `upgrades` keeps the connection able to hand
    /// its socket over after a `101 Switching Protocols` (WebSockets); such
    /// connections are never pooled.
    pub(crate) async fn connect(
        &self,
        addr: SocketAddr,
        upgrades: bool,
    ) -> Result<Sender, ProxyError> {
        let stream = self.open(addr).await?;
        let (sender, conn) = self
            .client
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|source| ProxyError::Handshake { addr, source })?;
        if upgrades {
            tokio::spawn(async move {
                if let Err(e) = conn.with_upgrades().await {
                    tracing::debug!(%addr, error = %e, "upstream connection ended");
                }
            });
        } else {
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(%addr, error = %e, "upstream connection ended");
                }
            });
        }
        Ok(sender)
    }
}
