//! Listeners, workers and connections: accepting, per-connection timeouts,
//! and the drain on shutdown.
//!
//! ```text
//! serve_http ──► N threads, each: current_thread runtime
//!                  └─ accept_loop (on a dup of the listener)
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
//! serve_https ──► same workers ──► accept ──► TLS handshake (bounded, see tls.rs)
//!                   ALPN h2         ──► serve_h2 (hyper http2)       ─┐ same idle timer
//!                   ALPN http/1.1   ──► serve_connection (http1)     ─┤ and drain
//!                   ALPN acme-tls/1 ──► close: the handshake was the ─┘
//!                                       whole TLS-ALPN-01 answer
//! ```

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
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

use super::challenges::Challenges;
use super::forward::{self, ConnCtx, RequestIds, Scheme};
use super::pool::{Pool, SWEEP_PERIOD};
use super::routes::RouteTable;
use super::tls::{ACME_TLS_ALPN, ALPN_H2};
use super::{ProxyConfig, ProxyError};

/// A client must finish the TLS handshake within this time.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// hyper's default header count; it parses that many on the stack.
const HYPER_DEFAULT_MAX_HEADERS: usize = 100;

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
}

impl Worker {
    fn new(
        index: usize,
        boot: u32,
        routes: Arc<RouteTable>,
        challenges: Arc<Challenges>,
        config: &ProxyConfig,
        shutdown: CancellationToken,
        tls: Option<TlsAcceptor>,
    ) -> Worker {
        let mut http1 = http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(config.header_read_timeout)
            .max_header_size(config.max_header_bytes)
            .keep_alive(true);
        if config.max_headers != HYPER_DEFAULT_MAX_HEADERS {
            http1.max_headers(config.max_headers);
        }
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_header_list_size(config.max_header_bytes as u32);
        Worker {
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
    // Once per process: request ids from different restarts don't collide.
    let boot: u32 = rand::random();

    if !config.per_core_runtimes {
        let worker = Arc::new(Worker::new(
            0, boot, routes, challenges, &config, shutdown, tls,
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
            let mut every = tokio::time::interval(SWEEP_PERIOD);
            loop {
                tokio::select! {
                    () = worker.shutdown.cancelled() => return,
                    _ = every.tick() => worker.pool.sweep(),
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
                // Responses go out whole; Nagle would only hold back the
                // last segment. A failure just means a slower socket.
                let _ = stream.set_nodelay(true);
                let worker2 = Arc::clone(&worker);
                match &worker.tls {
                    None => {
                        worker
                            .tracker
                            .spawn(serve_connection(stream, peer, Scheme::Http, worker2))
                    }
                    Some(acceptor) => {
                        worker
                            .tracker
                            .spawn(serve_tls(stream, peer, acceptor.clone(), worker2))
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
    let activity = Arc::new(AtomicU64::new(0));
    let io = TokioIo::new(Counted {
        inner: io,
        activity: Arc::clone(&activity),
    });
    let cx = Arc::new(ConnCtx::new(Arc::clone(&worker), scheme, peer));
    let service = service_fn(move |req| forward::handle(Arc::clone(&cx), req));
    let conn = worker.http1.serve_connection(io, service).with_upgrades();
    drive(conn, |c| c.graceful_shutdown(), &activity, peer, &worker).await;
}

/// Handshake, then serve by the negotiated ALPN protocol.
async fn serve_tls(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    worker: Arc<Worker>,
) {
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
    let activity = Arc::new(AtomicU64::new(0));
    let io = TokioIo::new(Counted {
        inner: io,
        activity: Arc::clone(&activity),
    });
    let cx = Arc::new(ConnCtx::new(Arc::clone(&worker), Scheme::Https, peer));
    let service = service_fn(move |req| forward::handle(Arc::clone(&cx), req));
    let conn = worker.http2.serve_connection(io, service);
    drive(conn, |c| c.graceful_shutdown(), &activity, peer, &worker).await;
}

/// Poll a connection to its end, with the idle timer and the drain on
/// shutdown. `graceful` starts the protocol's graceful shutdown.
async fn drive<C, E>(
    conn: C,
    graceful: impl Fn(Pin<&mut C>),
    activity: &AtomicU64,
    peer: SocketAddr,
    worker: &Worker,
) where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    tokio::pin!(conn);
    let cancelled = worker.shutdown.cancelled();
    tokio::pin!(cancelled);
    let timer = tokio::time::sleep(worker.idle_timeout);
    tokio::pin!(timer);
    let mut seen = 0;
    let mut draining = false;
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
                let now = activity.load(Ordering::Relaxed);
                if now == seen {
                    tracing::debug!(client = %peer, "closing idle connection");
                    return;
                }
                seen = now;
                timer.as_mut().reset(Instant::now() + worker.idle_timeout);
            }
        }
    }
}

/// A socket that counts its reads and writes, so the idle timer can tell
/// whether anything moved since it last fired without reading a clock on
/// every I/O.
struct Counted<IO> {
    inner: IO,
    activity: Arc<AtomicU64>,
}

impl<IO> Counted<IO> {
    fn touch(&self) {
        // One task touches it at a time; a plain load/store is enough.
        let n = self.activity.load(Ordering::Relaxed);
        self.activity.store(n.wrapping_add(1), Ordering::Relaxed);
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
