//! Listeners, workers and connections: accepting, per-connection timeouts,
//! and the drain on shutdown.
//!
//! ```text
//! serve_http ──► N threads, each: current_thread runtime
//!                  ├─ ticker: coarse clock (250 ms), pool sweep (30 s)
//!                  └─ accept_loop (on a dup of the listener)
//!                       ├─ over the per-address cap? close at once
//!                       └─ serve_connection (one task per client connection)
//!                            hyper http1 + header-read timeout + idle timer
//! shutdown ──► stop accepting ──► graceful_shutdown each connection
//!          ──► wait up to drain_timeout ──► drop what is left
//! ```
//!
//! `serve_connection` is generic over the socket type so the HTTPS listener
//! hands it a TLS stream and gets the same behaviour:
//!
//! ```text
//! serve_https ──► same workers ──► accept ──► TLS handshake (10 s, and at most
//!                                              max_handshakes_per_addr at once)
//!                   ALPN h2         ──► serve_h2 (hyper http2)       ─┐ same idle timer
//!                   ALPN http/1.1   ──► serve_connection (http1)     ─┤ and drain
//!                   ALPN acme-tls/1 ──► close: the handshake was the ─┘
//!                                       whole TLS-ALPN-01 answer
//! ```

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use std::future::Future;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::body::BodyRate;
use super::challenges::Challenges;
use super::forward::{self, ConnCtx, ConnState, RequestIds, Scheme};
use super::pool::{Pool, SWEEP_PERIOD};
use super::routes::RouteTable;
use super::tls::{ACME_TLS_ALPN, ALPN_H2};
use super::{ProxyConfig, ProxyError};
use crate::metrics::{AppHandles, Protocol};

/// A client must finish the TLS handshake within this time.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// hyper's default header count; it parses that many on the stack.
const HYPER_DEFAULT_MAX_HEADERS: usize = 100;

/// Resolution of the coarse clock that stamps connection activity: idle
/// timers fire within this much of their set time.
const TICK: Duration = Duration::from_millis(250);

/// Everything one worker (one runtime) needs, shared by its connections.
pub(crate) struct Worker {
    pub(crate) routes: Arc<RouteTable>,
    pub(crate) challenges: Arc<Challenges>,
    pub(crate) pool: Arc<Pool>,
    pub(crate) ids: RequestIds,
    pub(crate) tracker: TaskTracker,
    pub(crate) shutdown: CancellationToken,
    pub(crate) drain: Duration,
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    /// Set on the HTTPS listener's workers.
    tls: Option<TlsAcceptor>,
    idle_timeout: Duration,
    /// HTTP/1 only; enforced by `drive` from the coarse clock.
    header_read_timeout: Duration,
    pub(crate) body_rate: BodyRate,
    pub(crate) trusted_proxies: Vec<IpAddr>,
    pub(crate) control: Option<super::ControlHook>,
    /// Milliseconds since `epoch`, advanced by the worker's ticker: what
    /// connections stamp their activity with, without a clock read per I/O.
    pub(crate) clock: Arc<AtomicU64>,
    epoch: Instant,
    /// Shared by every worker of the listener.
    conns: Arc<AddrLimits>,
    handshakes: Arc<AddrLimits>,
    /// Set when the routes record metrics.
    pub(crate) metrics: Option<WorkerMetrics>,
}

/// A worker's ready-made metric handles.
pub(crate) struct WorkerMetrics {
    /// Requests no app answered (unknown Host, bad requests, ACME).
    pub(crate) unrouted: Arc<AppHandles>,
    /// Open client connections of this listener.
    connections: prometheus_client::metrics::gauge::Gauge,
}

impl Worker {
    #[allow(clippy::too_many_arguments)]
    fn new(
        index: usize,
        boot: u32,
        routes: Arc<RouteTable>,
        challenges: Arc<Challenges>,
        config: &ProxyConfig,
        shutdown: CancellationToken,
        tls: Option<TlsAcceptor>,
        limits: &(Arc<AddrLimits>, Arc<AddrLimits>),
    ) -> Worker {
        let mut http1 = http1::Builder::new();
        // No timer for hyper: its header-read timeout costs an allocation
        // and a timer registration per request; `drive` keeps the same
        // deadline from the coarse clock instead.
        http1
            .header_read_timeout(None)
            .max_header_size(config.max_header_bytes)
            .keep_alive(true);
        if config.max_headers != HYPER_DEFAULT_MAX_HEADERS {
            http1.max_headers(config.max_headers);
        }
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_header_list_size(config.max_header_bytes as u32);
        let metrics = routes.metrics().map(|m| WorkerMetrics {
            unrouted: m.proxy.app(crate::metrics::proxy::NO_APP),
            connections: m.proxy.connections(if tls.is_some() {
                Protocol::Https
            } else {
                Protocol::Http
            }),
        });
        Worker {
            metrics,
            routes,
            challenges,
            pool: Arc::new(Pool::new(config.connect_timeout)),
            ids: RequestIds::new(boot, index),
            tracker: TaskTracker::new(),
            shutdown,
            drain: config.drain_timeout,
            http1,
            http2,
            tls,
            idle_timeout: config.idle_timeout,
            header_read_timeout: config.header_read_timeout,
            body_rate: BodyRate {
                grace: config.body_grace,
                min_rate: config.body_min_rate,
            },
            trusted_proxies: config
                .trusted_proxies
                .iter()
                .map(|ip| ip.to_canonical())
                .collect(),
            control: config.control.clone(),
            clock: Arc::new(AtomicU64::new(0)),
            epoch: Instant::now(),
            conns: Arc::clone(&limits.0),
            handshakes: Arc::clone(&limits.1),
        }
    }

    fn tick(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.clock.store(ms, Ordering::Relaxed);
    }
}

/// Open connections (or handshakes) per client address, shared by the
/// workers of one listener. Taken once per connection, never per request.
pub(crate) struct AddrLimits {
    max: usize,
    open: Mutex<HashMap<u128, usize>>,
}

impl AddrLimits {
    fn new(max: usize) -> Arc<AddrLimits> {
        Arc::new(AddrLimits {
            max,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for `ip`, or `None` when it already holds `max`.
    fn acquire(self: &Arc<Self>, ip: IpAddr) -> Option<AddrSlot> {
        if self.max == 0 {
            return Some(AddrSlot {
                limits: None,
                key: 0,
            });
        }
        let key = addr_key(ip);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(key).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(AddrSlot {
            limits: Some(Arc::clone(self)),
            key,
        })
    }
}

/// One address's IPv4, or its IPv6 /64: one host or one subnet's worth of
/// addresses, which a single client can pick from freely.
fn addr_key(ip: IpAddr) -> u128 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => (u128::from(v6) & !((1u128 << 64) - 1)) | 1 << 32,
    }
}

pub(crate) struct AddrSlot {
    limits: Option<Arc<AddrLimits>>,
    key: u128,
}

impl Drop for AddrSlot {
    fn drop(&mut self) {
        let Some(limits) = &self.limits else { return };
        let mut open = limits.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// Serve plain HTTP on an already-bound listener until `shutdown` is
/// cancelled, then stop accepting and let in-flight requests finish for up
/// to `config.drain_timeout`.
///
/// With `config.per_core_runtimes` (the default) this starts `workers`
/// threads, each running its own `current_thread` runtime that accepts on a
/// duplicate of the listener; the kernel hands each new connection to
/// whichever worker is free to accept it.
pub async fn serve_http(
    listener: std::net::TcpListener,
    routes: Arc<RouteTable>,
    challenges: Arc<Challenges>,
    config: ProxyConfig,
    shutdown: CancellationToken,
) -> Result<(), ProxyError> {
    serve(listener, routes, challenges, config, shutdown, None).await
}

/// Serve HTTPS on an already-bound listener, like [`serve_http`] but with a
/// TLS handshake first (`tls` comes from [`super::tls::server_config`]).
/// Requests see scheme `https`, so no app redirects them; HTTP/2 is spoken
/// to clients that negotiate `h2`.
pub async fn serve_https(
    listener: std::net::TcpListener,
    routes: Arc<RouteTable>,
    challenges: Arc<Challenges>,
    tls: Arc<rustls::ServerConfig>,
    config: ProxyConfig,
    shutdown: CancellationToken,
) -> Result<(), ProxyError> {
    let acceptor = TlsAcceptor::from(tls);
    serve(
        listener,
        routes,
        challenges,
        config,
        shutdown,
        Some(acceptor),
    )
    .await
}

async fn serve(
    listener: std::net::TcpListener,
    routes: Arc<RouteTable>,
    challenges: Arc<Challenges>,
    config: ProxyConfig,
    shutdown: CancellationToken,
    tls: Option<TlsAcceptor>,
) -> Result<(), ProxyError> {
    if config.max_headers == 0 {
        return Err(ProxyError::Config {
            reason: "max_headers must be at least 1",
        });
    }
    if config.max_header_bytes < 1024 {
        return Err(ProxyError::Config {
            reason: "max_header_bytes must be at least 1024",
        });
    }
    listener
        .set_nonblocking(true)
        .map_err(|source| ProxyError::Listener { source })?;
    // Calling listen again on a listening socket only changes its backlog:
    // std binds with 128, which a burst of new connections overflows.
    socket2::SockRef::from(&listener)
        .listen(config.listen_backlog)
        .map_err(|source| ProxyError::Listener { source })?;
    let limits = (
        AddrLimits::new(config.max_conns_per_addr),
        AddrLimits::new(config.max_handshakes_per_addr),
    );
    // Once per process: request ids from different restarts don't collide.
    let boot: u32 = rand::random();

    if !config.per_core_runtimes {
        let worker = Arc::new(Worker::new(
            0, boot, routes, challenges, &config, shutdown, tls, &limits,
        ));
        let listener =
            TcpListener::from_std(listener).map_err(|source| ProxyError::Listener { source })?;
        accept_loop(listener, worker).await;
        return Ok(());
    }

    let workers = match config.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    // A worker that fails to start stops the others through this token, so
    // serve_http never returns while some threads are still serving.
    let stop = shutdown.child_token();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let mut started = 0;
    let mut first_error = None;
    for index in 0..workers {
        let spawned = listener
            .try_clone()
            .map_err(|source| ProxyError::Listener { source })
            .and_then(|listener| {
                let worker = Arc::new(Worker::new(
                    index,
                    boot,
                    Arc::clone(&routes),
                    Arc::clone(&challenges),
                    &config,
                    stop.clone(),
                    tls.clone(),
                    &limits,
                ));
                let done = done_tx.clone();
                std::thread::Builder::new()
                    .name(format!("cygni-proxy-{index}"))
                    .spawn(move || {
                        let result = run_worker_thread(index, listener, worker);
                        let _ = done.send((index, result));
                    })
                    .map_err(|source| ProxyError::Worker {
                        worker: index,
                        source,
                    })
            });
        match spawned {
            Ok(_) => started += 1,
            Err(e) => {
                first_error = Some(e);
                stop.cancel();
                break;
            }
        }
    }
    drop(done_tx);
    drop(listener);

    let mut finished = 0;
    while let Some((index, result)) = done_rx.recv().await {
        finished += 1;
        if let Err(e) = result {
            tracing::error!(worker = index, error = %e, "proxy worker failed");
            stop.cancel();
            first_error.get_or_insert(e);
        }
    }
    if finished < started && first_error.is_none() {
        // A thread ended without reporting: it panicked.
        first_error = Some(ProxyError::WorkerPanicked { worker: finished });
        stop.cancel();
    }
    first_error.map_or(Ok(()), Err)
}

fn run_worker_thread(
    index: usize,
    listener: std::net::TcpListener,
    worker: Arc<Worker>,
) -> Result<(), ProxyError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| ProxyError::Worker {
            worker: index,
            source,
        })?;
    runtime.block_on(async move {
        let listener = TcpListener::from_std(listener).map_err(|source| ProxyError::Worker {
            worker: index,
            source,
        })?;
        accept_loop(listener, worker).await;
        Ok(())
    })
    // Dropping the runtime here cancels whatever outlived the drain.
}

async fn accept_loop(listener: TcpListener, worker: Arc<Worker>) {
    let sweeper = {
        let worker = Arc::clone(&worker);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(TICK);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let sweep_every = (SWEEP_PERIOD.as_millis() / TICK.as_millis()) as u64;
            let mut ticks = 0u64;
            // Requests seen at the last sweep, and sweeps since the count
            // last moved (None: no load yet).
            let (mut seen, mut quiet) = (0, None::<u32>);
            loop {
                tokio::select! {
                    () = worker.shutdown.cancelled() => return,
                    _ = every.tick() => {
                        worker.tick();
                        ticks += 1;
                        if ticks.is_multiple_of(sweep_every) {
                            worker.pool.sweep();
                            // The first two quiet sweeps after a load give
                            // what it left in the allocator back to the
                            // system: the first after its connections close,
                            // the second after the pool closes its idle ones
                            // (their tasks free them after this sweep).
                            let issued = worker.ids.issued();
                            quiet = if issued != seen {
                                Some(0)
                            } else {
                                quiet.map(|q| q.saturating_add(1))
                            };
                            if matches!(quiet, Some(1 | 2)) {
                                release_free_memory();
                            }
                            seen = issued;
                        }
                    }
                }
            }
        })
    };
    let cancelled = worker.shutdown.cancelled();
    tokio::pin!(cancelled);
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut cancelled => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let Some(slot) = worker.conns.acquire(peer.ip()) else {
                    // Closed unread: a flood from one address costs it a
                    // connect, us an accept and a close.
                    tracing::debug!(client = %peer, "too many connections from this address");
                    continue;
                };
                // Responses go out whole; Nagle would only hold back the
                // last segment. A failure just means a slower socket.
                let _ = stream.set_nodelay(true);
                let worker2 = Arc::clone(&worker);
                match &worker.tls {
                    None => worker.tracker.spawn(async move {
                        let _slot = slot;
                        serve_connection(stream, peer, Scheme::Http, worker2).await
                    }),
                    Some(acceptor) => {
                        let acceptor = acceptor.clone();
                        worker.tracker.spawn(async move {
                            let _slot = slot;
                            serve_tls(stream, peer, acceptor, worker2).await
                        })
                    }
                };
            }
            Err(e) => accept_failed(e).await,
        }
    }
    drop(listener);
    worker.tracker.close();
    // Connections bound their own drain; the margin covers their last poll.
    let bound = worker.drain + Duration::from_secs(1);
    if tokio::time::timeout(bound, worker.tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            connections = worker.tracker.len(),
            "abandoning connections still open after the drain period"
        );
    }
    sweeper.abort();
}

/// Return freed heap memory to the system. glibc keeps what a load freed
/// in its per-thread arenas (and raises its trim threshold after large
/// frees), so without this the RSS a burst left stays for good.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks and trims the allocator's own arenas,
    // under their locks; any thread may call it at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Errors from accept are about one connection (reset before we got it) or
/// about resources (out of file descriptors). Neither should stop the
/// listener; the pause keeps the second kind from spinning.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionAborted | ConnectionReset | Interrupted | WouldBlock => {}
        _ => {
            tracing::warn!(error = %e, "accept failed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Serve one client connection until it closes, times out, or shutdown's
/// drain period ends.
///
/// Timeouts are per connection, never per request: hyper's header-read
/// timer (which also closes connections idle between requests) and one
/// idle timer here that only re-arms when it fires.
pub(crate) async fn serve_connection<IO>(
    io: IO,
    peer: SocketAddr,
    scheme: Scheme,
    worker: Arc<Worker>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let state = Arc::new(ConnState::default());
    let io = TokioIo::new(Counted::new(io, &state, &worker));
    let protocol = match scheme {
        Scheme::Http => Protocol::Http,
        Scheme::Https => Protocol::Https,
    };
    let cx = Arc::new(ConnCtx::new(
        Arc::clone(&worker),
        scheme,
        protocol,
        peer,
        Arc::clone(&state),
    ));
    let service = service_fn(move |req| forward::handle(Arc::clone(&cx), req));
    let conn = worker.http1.serve_connection(io, service).with_upgrades();
    let head = Some(worker.header_read_timeout);
    drive(conn, |c| c.graceful_shutdown(), &state, head, peer, &worker).await;
}

/// Handshake, then serve by the negotiated ALPN protocol.
async fn serve_tls(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    worker: Arc<Worker>,
) {
    let Some(handshaking) = worker.handshakes.acquire(peer.ip()) else {
        tracing::debug!(client = %peer, "too many TLS handshakes from this address");
        return;
    };
    let handshake = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream));
    let stream = tokio::select! {
        biased;
        () = worker.shutdown.cancelled() => return,
        done = handshake => match done {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                // Unknown SNI, old protocol versions, scanners: the client's
                // problem, so debug only.
                tracing::debug!(client = %peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(client = %peer, "TLS handshake timed out");
                return;
            }
        },
    };
    drop(handshaking);
    match stream.get_ref().1.alpn_protocol() {
        Some(ACME_TLS_ALPN) => {
            // RFC 8737: the CA only checks the certificate; no HTTP follows.
            let mut stream = stream;
            let _ = stream.shutdown().await;
        }
        Some(ALPN_H2) => serve_h2(stream, peer, worker).await,
        _ => serve_connection(stream, peer, Scheme::Https, worker).await,
    }
}

/// One HTTP/2 client connection (HTTPS only). Requests carry their host
/// in `:authority`; `forward` turns that into `Host` for the app, which
/// always gets HTTP/1.1.
async fn serve_h2<IO>(io: IO, peer: SocketAddr, worker: Arc<Worker>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let state = Arc::new(ConnState::default());
    let io = TokioIo::new(Counted::new(io, &state, &worker));
    let cx = Arc::new(ConnCtx::new(
        Arc::clone(&worker),
        Scheme::Https,
        Protocol::H2,
        peer,
        Arc::clone(&state),
    ));
    let service = service_fn(move |req| forward::handle(Arc::clone(&cx), req));
    let conn = worker.http2.serve_connection(io, service);
    drive(conn, |c| c.graceful_shutdown(), &state, None, peer, &worker).await;
}

/// Poll a connection to its end, with the idle timer and the drain on
/// shutdown. `graceful` starts the protocol's graceful shutdown.
///
/// The idle timer reads when bytes last moved (stamped by [`Counted`] from
/// the worker's coarse clock) and re-arms for the time left, so it fires
/// `idle_timeout` after the last activity, give or take one tick.
///
/// With `head` (HTTP/1) the same timer keeps the header-read deadline: a
/// connection ready for a request head (since its accept, or since its
/// last response went out) must complete one within `head`, however
/// slowly its bytes trickle in. While a request is being answered the
/// timer still wakes every `head`, to catch the moment it ends.
async fn drive<C, E>(
    conn: C,
    graceful: impl Fn(Pin<&mut C>),
    state: &ConnState,
    head: Option<Duration>,
    peer: SocketAddr,
    worker: &Worker,
) where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    tokio::pin!(conn);
    // Counted once per connection, never per request.
    let _open = worker
        .metrics
        .as_ref()
        .map(|m| OpenGauge::new(&m.connections));
    let cancelled = worker.shutdown.cancelled();
    tokio::pin!(cancelled);
    let idle = worker.idle_timeout;
    let timer = tokio::time::sleep(head.map_or(idle, |h| h.min(idle)));
    tokio::pin!(timer);
    let mut draining = false;
    // The connection is active, and ready for a request head, from its
    // accept.
    let accepted = worker.clock.load(Ordering::Relaxed);
    state.activity.store(accepted, Ordering::Relaxed);
    if head.is_some() {
        state.head_since.store(accepted + 1, Ordering::Relaxed);
    }
    loop {
        tokio::select! {
            biased;
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(client = %peer, error = %e, "connection ended with an error");
                }
                return;
            }
            () = &mut cancelled, if !draining => {
                draining = true;
                graceful(conn.as_mut());
                timer.as_mut().reset(Instant::now() + worker.drain);
            }
            () = &mut timer => {
                if draining {
                    tracing::info!(client = %peer, "closing connection still busy after the drain period");
                    return;
                }
                let now = worker.clock.load(Ordering::Relaxed);
                let mut next = idle;
                if let Some(head) = head {
                    let since = state.head_since.load(Ordering::Relaxed);
                    if since != 0 && state.responding.load(Ordering::Relaxed) == 0 {
                        let waited = Duration::from_millis(now.saturating_sub(since - 1));
                        if waited + TICK / 2 >= head {
                            tracing::debug!(client = %peer, "closing connection: no request head in time");
                            return;
                        }
                        next = next.min(head - waited);
                    } else {
                        next = next.min(head);
                    }
                }
                if state.awaiting_app() {
                    // The route's response deadline governs this wait.
                    timer.as_mut().reset(Instant::now() + next);
                    continue;
                }
                let last = state.activity.load(Ordering::Relaxed);
                let quiet = Duration::from_millis(now.saturating_sub(last));
                if quiet + TICK / 2 >= idle {
                    tracing::debug!(client = %peer, "closing idle connection");
                    return;
                }
                next = next.min(idle - quiet);
                // At least a tick ahead: the clock moves in ticks.
                timer.as_mut().reset(Instant::now() + next.max(TICK));
            }
        }
    }
}

/// Counts one open connection on a gauge until dropped.
struct OpenGauge<'a>(&'a prometheus_client::metrics::gauge::Gauge);

impl<'a> OpenGauge<'a> {
    fn new(g: &'a prometheus_client::metrics::gauge::Gauge) -> OpenGauge<'a> {
        g.inc();
        OpenGauge(g)
    }
}

impl Drop for OpenGauge<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A socket that stamps its reads and writes with the worker's coarse
/// clock, so the idle timer knows when bytes last moved without reading a
/// clock on every I/O.
struct Counted<IO> {
    inner: IO,
    state: Arc<ConnState>,
    clock: Arc<AtomicU64>,
}

impl<IO> Counted<IO> {
    fn new(inner: IO, state: &Arc<ConnState>, worker: &Worker) -> Counted<IO> {
        Counted {
            inner,
            state: Arc::clone(state),
            clock: Arc::clone(&worker.clock),
        }
    }

    fn touch(&self) {
        let now = self.clock.load(Ordering::Relaxed);
        self.state.activity.store(now, Ordering::Relaxed);
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Counted<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if polled.is_ready() {
            self.touch();
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Counted<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if polled.is_ready() {
            self.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if polled.is_ready() {
            self.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
