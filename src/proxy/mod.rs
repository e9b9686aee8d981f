//! The reverse proxy: every app reachable at `APP.DOMAIN` and its custom
//! domains, through one HTTP and one HTTPS listener.
//!
//! ```text
//!                 ┌──────────── worker 0 (current_thread runtime, core 0) ──────────┐
//! listener ─dup─► │ accept ─► connection (hyper http1) ─► forward ─► pool ─► app    │
//!          ─dup─► │ worker 1 ... one per core, each with its own upstream pool      │
//!                 └──────────────────────────────────────────────────────────────────┘
//!  RouteTable (ArcSwap<Routes>) and Challenges (ArcSwap<map>) are shared, read-only
//!  on the request path; deploy swaps in new snapshots.
//! ```
//!
//! - [`routes`]: host → app endpoints, the immutable snapshot and its swap.
//! - [`challenges`]: ACME HTTP-01 tokens, answered before any routing.
//! - `server`: listeners, per-core workers, connection timeouts, shutdown.
//! - [`tls`]: rustls configuration, the SNI certificate resolver and its
//!   hot-swapped certificate store (filled by `acme`).
//! - `forward`: one request: routing, header rewrite, upstream, upgrades.
//! - `pool`, `body`: keep-alive upstream connections and streamed bodies.
//!
//! Why per-core `current_thread` runtimes: a proxied request hops between
//! tasks (the client connection's, and for requests with a body the
//! upstream connection's); on a multi-thread runtime those hops become
//! cross-core wakes. Keeping a connection and its upstream pool on one
//! thread avoids them (see PERFORMANCE.md and `scripts/bench-proxy.sh`).
//! Bodiless GET/HEAD/OPTIONS requests make no hop at all (`upstream`).
//!
//! Measured on the real daemon with `scripts/bench-daemon.sh` (cygni serve
//! --runtime local, an nginx app deployed by git push, nginx 1 worker with
//! upstream keepalive in front of the same instance; wrk on one core,
//! everything server-side on the other; 3 alternating rounds of 10 s,
//! medians), 2026-12-02, load about 1-2:
//!
//! | scenario | cygni req/s | nginx req/s | ratio | p99 ratio | proxy CPU/request (µs) |
//! |---|---|---|---|---|---|
//! | HTTP keep-alive c=50 | 45,770 | 41,580 | 1.10 | 0.93 | 15.09 vs 16.42 (0.92) |
//! | HTTP keep-alive c=200 | 44,661 | 42,888 | 1.04 | 0.93 | 15.81 vs 16.31 (0.97) |
//! | HTTPS keep-alive c=50 | 41,287 | 31,295 | 1.32 | 0.80 | 16.76 vs 23.16 (0.72) |
//! | HTTPS keep-alive c=200 | 38,596 | 31,745 | 1.22 | 1.00 | 18.26 vs 23.21 (0.79) |
//! | HTTP, connection per request | 45,836 | 41,817 | 1.10 | 0.96 | 15.05 vs 16.40 (0.92) |
//!
//! Before the direct path and the coarse header-read deadline (same
//! script, the previous build, a loaded machine) plain HTTP cost 1.25-1.33×
//! nginx's CPU per request.
//! - Syscalls per keep-alive request (strace): Cygni 2 `recvfrom`, 1
//!   `writev`, 1 `sendto`, 0.05 `epoll_wait`; nginx 2 `recvfrom`, 2
//!   `writev`, 1 `getsockopt`, 1 `getpid`. `perf` (cpu-clock): 73% kernel
//!   for both; Cygni's own code and libc 26%, nginx's with libcrypto 27%.
//! - `scripts/bench-memory.sh`, 2026-12-02, release build with the hot
//!   code laid out together (`build.rs`): VmRSS 12.4 MB idle with one app,
//!   16.0 MB with 10 (4.0 MB anonymous, 12.0 MB pages of the executable),
//!   29.0 MB right after 30 s of load, 18.4 MB 60 s later (+2.4 MB over
//!   idle; `malloc_trim` at the second quiet sweep). The same script on
//!   the same code linked in the default layout: 21.6 MB, 25.8 MB (3.9 +
//!   21.9), 38.0 MB, 27.8 MB. The kernel maps code 64 KiB around each
//!   fault; resident `.text` went from 17.1 to 6.8 MB of 29.2 MB.
//!
//! What recording metrics costs (`scripts/bench-metrics.sh`, 2026-12-02:
//! two daemons from one release build, `metrics = false` on one, each in
//! front of its own instance of the same nginx app; HTTP only; the
//! machine loaded by other builds, load 3-9, so absolute figures are
//! about three times the quiet ones: read the ratios, on / off):
//!
//! | scenario | rounds | req/s ratio | daemon CPU/request (on vs off) |
//! |---|---|---|---|
//! | keep-alive c=50 | 5 | 0.97 | 29.90 vs 29.36 µs (1.02) |
//! | keep-alive c=50 | 3 | 1.01 | 32.56 vs 32.37 µs (1.01) |
//! | keep-alive c=200 | 3 | 1.01 | 45.85 vs 46.40 µs (0.99) |
//! | connection per request | 5 | 0.99 | 28.85 vs 28.71 µs (1.00) |
//! | connection per request | 3 | 0.69 (noisy: 0.65-1.10 by round) | 35.29 vs 34.11 µs (1.03) |

mod body;
mod challenges;
pub mod control;
mod forward;
mod pool;
pub mod routes;
mod server;
pub mod tls;
mod upstream;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hyper::StatusCode;

pub use challenges::Challenges;
pub use control::{Control, ControlBody, ControlHook, ControlRequest};
pub use routes::{AppRoute, Route, RouteTable, Routes, RoutesBuilder, DEFAULT_RESPONSE_TIMEOUT};
pub use server::{serve_http, serve_https};
pub use tls::CertStore;

use crate::names::AppName;

/// How the proxy listens and when it gives up on slow peers.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// A client must send a request's whole header block within this time,
    /// counted from when the connection is ready for a request. It also
    /// closes keep-alive connections that sit idle between requests.
    pub header_read_timeout: Duration,
    /// A connection on which no byte moved either way for this long is
    /// closed: a stalled upload, or a client that stopped reading its
    /// response (a write that cannot progress moves no byte). Fires within
    /// a quarter second of the set time. A request waiting for its app is
    /// under the route's response deadline instead. Upgraded (WebSocket)
    /// connections are exempt: they have their own pings.
    pub idle_timeout: Duration,
    /// A request body must have arrived whole by this long after the
    /// request was forwarded, plus one second per `body_min_rate` bytes
    /// received; else the client gets 408 (Apache's `mod_reqtimeout` rule).
    pub body_grace: Duration,
    /// Bytes per second a slow body must average beyond `body_grace`; 0
    /// turns the body deadline off.
    pub body_min_rate: u64,
    /// Open connections accepted from one client address (IPv6: one /64)
    /// on each listener; more are closed at once. 0 = no cap.
    pub max_conns_per_addr: usize,
    /// TLS handshakes in progress from one client address (IPv6: one /64);
    /// more are closed at once. 0 = no cap. Above what one legitimate
    /// address opens at once (a NAT, or wrk's 200 connections starting
    /// together), far below what a half-open flood holds.
    pub max_handshakes_per_addr: usize,
    /// Peers whose forwarding headers (`X-Forwarded-*`, `Forwarded`,
    /// `X-Real-IP`, ...) are believed: a load balancer in front of Cygni.
    /// Empty (the default): Cygni is the edge, and clients' forwarding
    /// headers are removed or overwritten.
    pub trusted_proxies: Vec<IpAddr>,
    /// Listen backlog set on the listeners (the kernel caps it at
    /// `net.core.somaxconn`). std's default is 128; nginx uses 511.
    pub listen_backlog: i32,
    /// Most request headers accepted; more gets `431`. 100 keeps hyper's
    /// parser on the stack; any other value costs a heap allocation per
    /// request.
    pub max_headers: usize,
    /// Largest request head (request line and headers) in bytes; more gets
    /// `431`.
    pub max_header_bytes: usize,
    /// Worker threads, each with its own runtime and upstream pool.
    /// 0 = one per core available to the process.
    pub workers: usize,
    /// `false` serves on the caller's (multi-thread) runtime instead of
    /// per-core runtimes; `workers` is then ignored. Kept for measurement.
    pub per_core_runtimes: bool,
    /// Give up connecting to an app endpoint after this long (then the next
    /// endpoint is tried once).
    pub connect_timeout: Duration,
    /// On shutdown, in-flight requests get this long to finish.
    pub drain_timeout: Duration,
    /// Where requests for the control host (`cygni.DOMAIN`) go: Cygni's
    /// API and git over HTTPS. `None`: such a Host is unknown, like any.
    pub control: Option<ControlHook>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_headers: 100,
            max_header_bytes: 32 * 1024,
            workers: 0,
            per_core_runtimes: true,
            connect_timeout: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(10),
            body_grace: Duration::from_secs(20),
            body_min_rate: 500,
            max_conns_per_addr: 512,
            max_handshakes_per_addr: 256,
            trusted_proxies: Vec::new(),
            listen_backlog: 4096,
            control: None,
        }
    }
}

/// Everything that can go wrong in the proxy. Request-level variants map to
/// a status code in [`ProxyError::status`]; the client only ever sees a
/// short page, the detail goes to the log.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("invalid proxy configuration: {reason}")]
    Config { reason: &'static str },
    #[error("cannot prepare the HTTP listener")]
    Listener {
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start proxy worker {worker}")]
    Worker {
        worker: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("proxy worker {worker} stopped unexpectedly")]
    WorkerPanicked { worker: usize },

    // Downstream (the client's request).
    #[error("bad request: {reason}")]
    BadRequest { reason: &'static str },
    #[error("no app is served at this Host")]
    UnknownHost,

    // Upstream (the app).
    #[error("app {app} has no running web endpoint")]
    NoEndpoints { app: AppName },
    #[error("cannot connect to app endpoint {addr}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("timed out connecting to app endpoint {addr}")]
    ConnectTimeout { addr: SocketAddr },
    #[error("HTTP handshake with app endpoint {addr} failed")]
    Handshake {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
    #[error("app endpoint {addr} failed during the request")]
    Upstream {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
    #[error("app endpoint {addr} failed during the request")]
    UpstreamDirect {
        addr: SocketAddr,
        #[source]
        source: upstream::UpstreamFault,
    },
    #[error("app endpoint {addr} switched protocols without being asked to")]
    UnexpectedUpgrade { addr: SocketAddr },
    #[error("app endpoint {addr} did not start its response within {after:?}")]
    ResponseTimeout { addr: SocketAddr, after: Duration },
    #[error("the client sent its request body too slowly")]
    BodyTimeout,
}

impl ProxyError {
    /// The status a client gets for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ProxyError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::ResponseTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::UnknownHost => StatusCode::NOT_FOUND,
            ProxyError::NoEndpoints { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Connect { .. }
            | ProxyError::ConnectTimeout { .. }
            | ProxyError::Handshake { .. }
            | ProxyError::Upstream { .. }
            | ProxyError::UpstreamDirect { .. }
            | ProxyError::UnexpectedUpgrade { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::Config { .. }
            | ProxyError::Listener { .. }
            | ProxyError::Worker { .. }
            | ProxyError::WorkerPanicked { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}
