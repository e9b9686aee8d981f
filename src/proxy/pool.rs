//! Keep-alive connections to app endpoints, one pool per proxy worker.
//!
//! ```text
//! request ──► checkout(addr) ──► idle SendRequest? ──► yes: reuse
//!                                      └─ no: connect + handshake (TCP_NODELAY)
//! response body fully read ──► UpstreamBody drop ──► checkin(addr, sender)
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

pub(crate) struct Pool {
    idle: Mutex<HashMap<SocketAddr, Vec<Idle>>>,
    generation: AtomicU64,
    connect_timeout: Duration,
    client: http1::Builder,
}

impl Pool {
    pub(crate) fn new(connect_timeout: Duration) -> Pool {
        Pool {
            idle: Mutex::new(HashMap::new()),
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

    /// Close connections idle since before the previous sweep.
    pub(crate) fn sweep(&self) {
        let now = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain(|_, list| {
            list.retain(|e| e.generation + 1 >= now && !e.sender.is_closed());
            !list.is_empty()
        });
    }

    /// Open a new connection. `upgrades` keeps the connection able to hand
    /// its socket over after a `101 Switching Protocols` (WebSockets); such
    /// connections are never pooled.
    pub(crate) async fn connect(
        &self,
        addr: SocketAddr,
        upgrades: bool,
    ) -> Result<Sender, ProxyError> {
        let stream =
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(source)) => return Err(ProxyError::Connect { addr, source }),
                Err(_) => return Err(ProxyError::ConnectTimeout { addr }),
            };
        // Requests and responses are written whole; Nagle would only delay
        // the last segment. Failure just means a slower socket.
        let _ = stream.set_nodelay(true);
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
