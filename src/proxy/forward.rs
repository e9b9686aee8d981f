//! One request through the proxy: ACME challenge, routing, header rewrite,
//! forwarding to an app endpoint, and the response on its way back.
//!
//! ```text
//! request ─► /.well-known/acme-challenge/? ─► yes: answer from Challenges (any Host)
//!              │ no
//!              ▼
//!            Host ─► malformed, missing or twice: 400
//!              │  ─► RouteTable (IDNA-mapped) ─► unknown: 404 page
//!              │                 ─► this host redirects, plain HTTP: 308
//!              │                 ─► no endpoints: 503
//!              ▼
//!            strip hop-by-hop and client forwarding headers (unless from a
//!            trusted proxy), refuse h2c, set X-Forwarded-*, X-Request-Id
//!              ▼
//!            in flight to endpoint += 1 ─► pool.get(endpoint)
//!              │   connect refused / timed out: next endpoint, each once ─► 502
//!              ▼
//!            response head within the route's deadline, else 504
//!            (request body: minimum rate, else 408)
//!              ▼
//!            response: strip hop-by-hop, stream body back (101: tunnel);
//!            in flight -= 1 when the body (or the tunnel) ends
//! ```
//!
//! Errors become responses in one place, [`error_response`], which also
//! picks the log level from who is at fault.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::upgrade::OnUpgrade;
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::TokioIo;

use super::body::{BodyTooSlow, ProxyBody, RequestBody, Responding, ResponseBody, UpstreamBody};
use super::challenges::ACME_CHALLENGE_PREFIX;
use super::pool::Sender;
use super::routes::{normalize_host, InFlight, Route, MAX_HOST_LEN};
use super::server::Worker;
use super::upstream;
use super::ProxyError;
use crate::metrics::{Protocol, UpstreamError};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static COMMA_SPACE: &[u8] = b", ";

static PROTO_HTTP: HeaderValue = HeaderValue::from_static("http");
static PROTO_HTTPS: HeaderValue = HeaderValue::from_static("https");
static UPGRADE: HeaderValue = HeaderValue::from_static("upgrade");
static TEXT_HTML: HeaderValue = HeaderValue::from_static("text/html; charset=utf-8");
static TEXT_PLAIN: HeaderValue = HeaderValue::from_static("text/plain");
static NO_STORE: HeaderValue = HeaderValue::from_static("no-store");

/// Resend limit for requests that were never written because a pooled
/// connection closed just as we picked it (the app's keep-alive timeout
/// racing our reuse).
const MAX_ATTEMPTS: u32 = 4;

/// The scheme a client reached the proxy with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scheme {
    Http,
    Https,
}

/// What a request needs to know about its connection. Built once per
/// connection so per-request work is only cloning ready-made values.
pub(crate) struct ConnCtx {
    pub(crate) worker: Arc<Worker>,
    pub(crate) scheme: Scheme,
    /// How the client speaks: the `protocol` label of request metrics.
    pub(crate) protocol: Protocol,
    /// The client's IP, formatted once per connection.
    pub(crate) client_ip: HeaderValue,
    pub(crate) peer: SocketAddr,
    /// The peer is a configured trusted proxy: its forwarding headers are
    /// kept, and its address is appended to `X-Forwarded-For`.
    pub(crate) trusted: bool,
    /// Shared with the connection's idle timer.
    pub(crate) state: Arc<ConnState>,
}

/// What a connection's idle timer reads: when bytes last moved (coarse
/// clock milliseconds), how many requests wait on an app, and how many of
/// those are still uploading their body. A request waiting for its app
/// with its body sent is under the route's response deadline instead.
///
/// For HTTP/1 it also carries the header-read clock (hyper's own timer
/// costs an allocation and a timer registration per request): when the
/// connection became ready for its next request head (coarse clock
/// milliseconds + 1; 0 while a request is being answered), and how many
/// responses are still on their way out.
#[derive(Debug, Default)]
pub(crate) struct ConnState {
    pub(crate) activity: AtomicU64,
    pub(crate) waiting: AtomicUsize,
    pub(crate) uploading: AtomicUsize,
    pub(crate) head_since: AtomicU64,
    pub(crate) responding: AtomicUsize,
}

impl ConnState {
    /// Requests wait on their app, none of them uploading.
    pub(crate) fn awaiting_app(&self) -> bool {
        self.waiting.load(Ordering::Relaxed) > 0 && self.uploading.load(Ordering::Relaxed) == 0
    }
}

impl ConnCtx {
    pub(crate) fn new(
        worker: Arc<Worker>,
        scheme: Scheme,
        protocol: Protocol,
        peer: SocketAddr,
        state: Arc<ConnState>,
    ) -> ConnCtx {
        let ip = peer.ip().to_canonical();
        let client_ip =
            HeaderValue::from_str(&ip.to_string()).expect("an IP address is a valid header value");
        let trusted = worker.trusted_proxies.contains(&ip);
        ConnCtx {
            worker,
            scheme,
            protocol,
            client_ip,
            peer,
            trusted,
            state,
        }
    }
}

/// Counts a request as waiting on its app while alive.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn start(n: &'a AtomicUsize) -> Waiting<'a> {
        // One task updates it at a time (h2 streams run on the connection's
        // task too); Relaxed is enough for a timer's hint.
        n.fetch_add(1, Ordering::Relaxed);
        Waiting(n)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Cheap, unique-enough request ids: a per-process random prefix, the worker
/// index, and a per-worker counter. No OS random source per request.
///
/// A client's own `X-Request-Id` is kept when it is one header of 20 to
/// 200 characters of `[A-Za-z0-9+=/-]` (Heroku's rule), so a caller can
/// follow its id through the app's logs; anything else is replaced by
/// one of ours. The id is the client's to choose, so it links lines, and
/// is never trusted for anything else.
pub(crate) struct RequestIds {
    prefix: [u8; 11],
    next: AtomicU64,
}

impl RequestIds {
    pub(crate) fn new(boot: u32, worker: usize) -> RequestIds {
        let mut prefix = [0u8; 11];
        hex(&mut prefix[..8], u64::from(boot));
        hex(&mut prefix[8..10], worker as u64);
        prefix[10] = b'-';
        RequestIds {
            prefix,
            next: AtomicU64::new(1),
        }
    }

    /// How many ids were handed out: the worker's request count.
    pub(crate) fn issued(&self) -> u64 {
        self.next.load(Ordering::Relaxed) - 1
    }

    pub(crate) fn next(&self) -> HeaderValue {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut buf = [0u8; 27];
        buf[..11].copy_from_slice(&self.prefix);
        hex(&mut buf[11..], n);
        HeaderValue::from_bytes(&buf).expect("hex digits and '-' are valid header bytes")
    }
}

/// Lowercase hex of `n`, right-aligned and zero-padded to `out.len()`.
fn hex(out: &mut [u8], mut n: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in out.iter_mut().rev() {
        *b = DIGITS[(n & 0xf) as usize];
        n >>= 4;
    }
}

/// Whether a client's `X-Request-Id` is kept (see [`RequestIds`]).
fn sane_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    (20..=200).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'=' | b'/' | b'-'))
}

/// What a request met on its way, for the metrics and the access log once
/// it is answered.
#[derive(Default)]
struct Seen {
    route: Option<Arc<Route>>,
    /// Set only when the route's access log is on.
    access: Option<Box<Access>>,
}

/// What an access line says about a request, taken before it moves on.
struct Access {
    method: Method,
    path: String,
    host: HeaderValue,
    request_id: Option<HeaderValue>,
    start: std::time::Instant,
}

/// The hyper service body: never fails, errors are turned into responses.
pub(crate) async fn handle(
    cx: Arc<ConnCtx>,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    // The head is in: the header-read clock stops until the response is
    // out (the guard restarts it when its body is dropped).
    let responding = Responding::start(&cx.state, &cx.worker.clock);
    // A clock read only when metrics are on; the rest of the recording is
    // atomic adds on handles the route (or the worker) already holds.
    let start = cx.worker.metrics.is_some().then(std::time::Instant::now);
    let mut seen = Seen::default();
    let (resp, err) = match proxy(&cx, req, &mut seen).await {
        Ok(resp) => (resp, None),
        Err(err) => (error_response(&cx, &err), Some(err)),
    };
    if let (Some(start), Some(m)) = (start, &cx.worker.metrics) {
        let handles = seen
            .route
            .as_ref()
            .and_then(|r| r.metrics())
            .unwrap_or(&m.unrouted);
        handles.request(cx.protocol, resp.status().as_u16(), start.elapsed());
    }
    if let (Some(access), Some(route)) = (seen.access, &seen.route) {
        log_access(&cx, route, &access, resp.status(), err.as_ref());
    }
    Ok(resp.map(|body| ResponseBody::new(body, responding)))
}

/// One router line in the app's log, in Heroku's `key=value` style.
fn log_access(
    cx: &ConnCtx,
    route: &Route,
    a: &Access,
    status: StatusCode,
    err: Option<&ProxyError>,
) {
    let Some(logs) = cx.worker.routes.access_logs() else {
        return;
    };
    let text = |v: &HeaderValue| String::from_utf8_lossy(v.as_bytes()).into_owned();
    let mut line = format!(
        "at={} method={} path={:?} host={:?} request_id={} fwd=\"{}\" status={} service={}ms protocol={}",
        if err.is_some() { "error" } else { "info" },
        a.method,
        a.path,
        text(&a.host),
        a.request_id.as_ref().map_or_else(|| "-".to_owned(), text),
        text(&cx.client_ip),
        status.as_u16(),
        a.start.elapsed().as_millis(),
        cx.protocol.as_str(),
    );
    if let Some(err) = err {
        line.push_str(&format!(" desc={:?}", err.to_string()));
    }
    logs.append(&route.app, "router", line.as_bytes());
}

async fn proxy(
    cx: &ConnCtx,
    mut req: Request<Incoming>,
    seen: &mut Seen,
) -> Result<Response<ProxyBody>, ProxyError> {
    // ACME first, on any Host and before redirects: the CA must reach the
    // challenge over plain HTTP even for apps that force HTTPS.
    if let Some(token) = req.uri().path().strip_prefix(ACME_CHALLENGE_PREFIX) {
        return Ok(challenge(cx, token));
    }
    if req.method() == Method::CONNECT {
        return Err(ProxyError::BadRequest {
            reason: "CONNECT is not supported",
        });
    }
    if req.uri().authority().is_some() {
        // Absolute-form target: its authority wins over Host (RFC 9112
        // section 3.2.2), and apps expect origin-form.
        absolute_to_origin_form(&mut req)?;
    }
    let host = {
        let mut all = req.headers().get_all(header::HOST).iter();
        match (all.next(), all.next()) {
            (Some(host), None) => host.clone(),
            (None, _) => {
                return Err(ProxyError::BadRequest {
                    reason: "missing Host header",
                })
            }
            (Some(_), Some(_)) => {
                return Err(ProxyError::BadRequest {
                    reason: "more than one Host header",
                })
            }
        }
    };

    // The snapshot guard is dropped at the end of this block, before any
    // await: only the route's `Arc` leaves it.
    let route = {
        let routes = cx.worker.routes.load();
        let entry = routes
            .lookup_bytes(host.as_bytes())
            .map_err(|_| ProxyError::BadRequest {
                reason: "malformed Host header",
            })?;
        match entry {
            Some(entry) if entry.redirect_https && cx.scheme == Scheme::Http => {
                return redirect_https(&host, req.uri());
            }
            Some(entry) => Some(Arc::clone(&entry.route)),
            None => None,
        }
    };
    let Some(route) = route else {
        // No app there: Cygni's own host, or nothing.
        return match &cx.worker.control {
            Some(control) if is_host(&host, control.0.host()) => {
                let resp = control
                    .0
                    .serve(super::ControlRequest {
                        req,
                        peer: cx.peer,
                        https: cx.scheme == Scheme::Https,
                    })
                    .await;
                Ok(resp.map(ProxyBody::Control))
            }
            _ => Err(ProxyError::UnknownHost),
        };
    };
    let Seen {
        route: slot,
        access,
    } = seen;
    let route = &**slot.insert(route);
    if route.access_log {
        *access = Some(Box::new(Access {
            method: req.method().clone(),
            path: req
                .uri()
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |pq| pq.as_str().to_owned()),
            host: host.clone(),
            request_id: None,
            start: std::time::Instant::now(),
        }));
    }
    let start = route.start().ok_or_else(|| ProxyError::NoEndpoints {
        app: route.app.clone(),
    })?;

    let upgrade = prepare_request(cx, &mut req, host);
    if let Some(access) = access {
        access.request_id = req.headers().get(&X_REQUEST_ID).cloned();
    }
    forward(cx, req, route, start, upgrade).await
}

/// `raw` (a Host header) names `host` (already normalized).
fn is_host(raw: &HeaderValue, host: &str) -> bool {
    let mut buf = [0u8; MAX_HOST_LEN];
    match normalize_host(raw.as_bytes(), &mut buf) {
        Ok(super::routes::Normal::Ascii(h)) => h == host,
        Ok(super::routes::Normal::Mapped(h)) => h.as_str() == host,
        Err(_) => false,
    }
}

fn challenge(cx: &ConnCtx, token: &str) -> Response<ProxyBody> {
    match cx.worker.challenges.get(token) {
        Some(key_auth) if !token.is_empty() => {
            let mut resp = Response::new(ProxyBody::full(key_auth));
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, TEXT_PLAIN.clone());
            resp.headers_mut()
                .insert(header::CACHE_CONTROL, NO_STORE.clone());
            resp
        }
        _ => page(StatusCode::NOT_FOUND, NOT_FOUND_PAGE),
    }
}

fn absolute_to_origin_form(req: &mut Request<Incoming>) -> Result<(), ProxyError> {
    let bad = ProxyError::BadRequest {
        reason: "invalid request target",
    };
    let authority = req.uri().authority().ok_or(bad)?;
    let host = HeaderValue::from_str(authority.as_str()).map_err(|_| ProxyError::BadRequest {
        reason: "invalid request target",
    })?;
    let origin = req
        .uri()
        .path_and_query()
        .map_or_else(|| Uri::from_static("/"), |pq| Uri::from(pq.clone()));
    req.headers_mut().insert(header::HOST, host);
    *req.uri_mut() = origin;
    Ok(())
}

fn redirect_https(host: &HeaderValue, uri: &Uri) -> Result<Response<ProxyBody>, ProxyError> {
    let mut buf = [0u8; MAX_HOST_LEN];
    // The route matched, so the Host normalizes; the port is dropped since
    // the HTTPS listener has its own.
    let host = normalize_host(host.as_bytes(), &mut buf).map_err(|_| ProxyError::UnknownHost)?;
    let path = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let location =
        HeaderValue::try_from(format!("https://{}{path}", host.as_str())).map_err(|_| {
            ProxyError::BadRequest {
                reason: "invalid request target",
            }
        })?;
    let mut resp = Response::new(ProxyBody::empty());
    *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
    resp.headers_mut().insert(header::LOCATION, location);
    Ok(resp)
}

/// Edit the request in place for the app. Returns whether the client asked
/// for a protocol upgrade (WebSocket), whose Upgrade semantics survive the
/// hop-by-hop stripping.
fn prepare_request(cx: &ConnCtx, req: &mut Request<Incoming>, host: HeaderValue) -> bool {
    let headers = req.headers_mut();
    // From a trusted proxy, what it says about its client is kept.
    let forwarded_for = if cx.trusted {
        headers.get(&X_FORWARDED_FOR).cloned()
    } else {
        None
    };
    let upgrade = strip_hop_by_hop(headers, true, !cx.trusted);
    // Room for the headers added below in one growth, not several.
    headers.reserve(5);
    if upgrade {
        headers.insert(header::CONNECTION, UPGRADE.clone());
    }
    let client_ip = match forwarded_for {
        Some(chain) => append_hop(&chain, &cx.client_ip),
        None => cx.client_ip.clone(),
    };
    // Overwrite, never append: anything the client sent in these is forged
    // as far as the app is concerned, since Cygni is the edge.
    headers.insert(X_FORWARDED_FOR.clone(), client_ip);
    let proto = match cx.scheme {
        Scheme::Http => &PROTO_HTTP,
        Scheme::Https => &PROTO_HTTPS,
    };
    if !cx.trusted || !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO.clone(), proto.clone());
    }
    if !cx.trusted || !headers.contains_key(&X_FORWARDED_HOST) {
        headers.insert(X_FORWARDED_HOST.clone(), host);
    }
    let keep_id = {
        let mut ids = headers.get_all(&X_REQUEST_ID).iter();
        matches!((ids.next(), ids.next()), (Some(id), None) if sane_request_id(id))
    };
    if !keep_id {
        headers.insert(X_REQUEST_ID.clone(), cx.worker.ids.next());
    }
    // Keep-alive to the app regardless of what the client spoke.
    *req.version_mut() = Version::HTTP_11;
    upgrade
}

/// `chain, ip`: a trusted proxy's `X-Forwarded-For` with its own address.
fn append_hop(chain: &HeaderValue, ip: &HeaderValue) -> HeaderValue {
    let mut v = Vec::with_capacity(chain.len() + 2 + ip.len());
    v.extend_from_slice(chain.as_bytes());
    v.extend_from_slice(COMMA_SPACE);
    v.extend_from_slice(ip.as_bytes());
    HeaderValue::from_bytes(&v).unwrap_or_else(|_| ip.clone())
}

/// Headers through which a client could lie about who or where it is.
/// Cygni is the edge: from anyone but a trusted proxy they are removed
/// (`X-Forwarded-For`, `-Proto` and `-Host` are then set by Cygni itself).
fn is_forwarding(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "forwarded"
            | "x-real-ip"
            | "x-forwarded-port"
            | "x-forwarded-server"
            | "x-forwarded-ssl"
            | "x-forwarded-scheme"
            | "x-forwarded-prefix"
            | "x-url-scheme"
            | "front-end-https"
            | "x-client-ip"
            | "true-client-ip"
            | "x-cluster-client-ip"
            | "cf-connecting-ip"
            | "fastly-client-ip"
            | "x-original-forwarded-for"
    )
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TE
        || name == header::TRAILER
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name == KEEP_ALIVE
        || is_proxy_header(name.as_str())
}

/// `Proxy-*`, and the bare `Proxy` header: never meaningful to an app, and
/// `Proxy` sets `HTTP_PROXY` in CGI-style apps (httpoxy).
fn is_proxy_header(name: &str) -> bool {
    name == "proxy" || name.starts_with("proxy-")
}

/// Remove hop-by-hop headers (RFC 9110 section 7.6.1): the fixed list and
/// every header named in `Connection`, and with `forwarding` the client's
/// forwarding headers ([`is_forwarding`]). When `keep_upgrade` is set and
/// `Connection` carries the `upgrade` token with an `Upgrade` header
/// present, `Upgrade` is kept and `true` is returned; the caller then puts
/// back `Connection: upgrade`. An upgrade to `h2c` is never kept: Cygni
/// speaks HTTP/2 to clients only over TLS, and an app answering 101 to
/// it would take the connection out of the proxy's hands.
pub(crate) fn strip_hop_by_hop(
    headers: &mut HeaderMap,
    keep_upgrade: bool,
    forwarding: bool,
) -> bool {
    // One pass over the names first: most messages carry none of these, and
    // then nothing is allocated or removed.
    if !headers
        .keys()
        .any(|n| is_hop_by_hop(n) || (forwarding && is_forwarding(n)))
    {
        return false;
    }
    let mut upgrade = false;
    let mut named: Vec<HeaderName> = Vec::new();
    for value in headers.get_all(header::CONNECTION) {
        let Ok(value) = value.to_str() else { continue };
        for token in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if token.eq_ignore_ascii_case("upgrade") {
                upgrade = true;
            } else if token.eq_ignore_ascii_case("keep-alive")
                || token.eq_ignore_ascii_case("close")
            {
                // The common tokens: `Keep-Alive` is removed below anyway and
                // `close` names no header. Skipping them keeps the usual
                // `Connection: keep-alive` from costing an allocation.
            } else if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                named.push(name);
            }
        }
    }
    let upgrade = keep_upgrade
        && upgrade
        && headers.contains_key(header::UPGRADE)
        && !upgrades_to_h2c(headers);
    named.extend(
        headers
            .keys()
            .filter(|n| is_proxy_header(n.as_str()) || (forwarding && is_forwarding(n)))
            .cloned(),
    );
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        KEEP_ALIVE.clone(),
    ] {
        headers.remove(name);
    }
    if !upgrade {
        headers.remove(header::UPGRADE);
    }
    upgrade
}

fn upgrades_to_h2c(headers: &HeaderMap) -> bool {
    headers.get_all(header::UPGRADE).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"h2c"))
    })
}

async fn forward(
    cx: &ConnCtx,
    mut req: Request<Incoming>,
    route: &Route,
    start: usize,
    upgrade: bool,
) -> Result<Response<ProxyBody>, ProxyError> {
    if upstream::eligible(&req, upgrade) {
        return forward_direct(cx, req, route, start).await;
    }
    let pool = &cx.worker.pool;
    // Taken before the request moves upstream: it resolves to the client's
    // socket once our 101 response has been written.
    let client_upgrade = if upgrade {
        Some(hyper::upgrade::on(&mut req))
    } else {
        None
    };
    let mut req = req.map(|body| RequestBody::new(body, cx.worker.body_rate, &cx.state));
    let mut failover = Failover::new(route, start);
    let mut attempts = 0;
    loop {
        let (addr, index) = failover.endpoint(route);
        // Counted from before the first await, so a drain that starts now
        // sees this request.
        let in_flight = InFlight::start(route.counter(index));
        attempts += 1;
        // Upgraded connections end up owned by the tunnel, so they get a
        // connection of their own instead of a pooled one.
        let got = if upgrade {
            pool.connect(addr, true).await.map(|s| (s, false))
        } else {
            pool.get(addr).await
        };
        let (mut sender, reused) = match got {
            Ok(got) => got,
            Err(err) => {
                failover.next(route, err)?;
                continue;
            }
        };
        let sent = {
            let _waiting = Waiting::start(&cx.state.waiting);
            tokio::time::timeout(route.response_timeout, sender.try_send_request(req)).await
        };
        match sent {
            Ok(Ok(resp)) => return respond(cx, resp, addr, sender, client_upgrade, in_flight),
            Ok(Err(mut err)) => match err.take_message() {
                // Not a byte was written: resending cannot repeat a side
                // effect, whatever the method.
                Some(back) if reused && attempts < MAX_ATTEMPTS => req = back,
                _ => {
                    let source = err.into_error();
                    if body_too_slow(&source) {
                        return Err(ProxyError::BodyTimeout);
                    }
                    return Err(ProxyError::Upstream { addr, source });
                }
            },
            Err(_) => return Err(response_timeout(route, addr)),
        }
    }
}

/// [`forward`] for a bodiless GET, HEAD or OPTIONS: the exchange with the
/// app happens on this task (see [`upstream`]). Same endpoint fail-over,
/// resend and deadline rules as the hyper path.
async fn forward_direct(
    cx: &ConnCtx,
    req: Request<Incoming>,
    route: &Route,
    start: usize,
) -> Result<Response<ProxyBody>, ProxyError> {
    let pool = &cx.worker.pool;
    let request = upstream::encode_request(&req);
    let method = req.method().clone();
    drop(req);
    let mut failover = Failover::new(route, start);
    let (mut attempts, mut fresh) = (0, false);
    loop {
        let (addr, index) = failover.endpoint(route);
        // Counted from before the first await, so a drain that starts now
        // sees this request.
        let in_flight = InFlight::start(route.counter(index));
        attempts += 1;
        let (mut conn, reused) = match pool.get_raw(addr, fresh).await {
            Ok(got) => got,
            Err(err) => {
                failover.next(route, err)?;
                continue;
            }
        };
        let got = {
            let _waiting = Waiting::start(&cx.state.waiting);
            tokio::time::timeout(
                route.response_timeout,
                upstream::exchange(&mut conn, &request, &method),
            )
            .await
        };
        match got {
            Ok(Ok(head)) => {
                let body = upstream::body(&head, conn, pool, addr, in_flight);
                let (mut parts, ()) = head.response.into_parts();
                strip_hop_by_hop(&mut parts.headers, false, false);
                let body = match body {
                    upstream::Ready::Whole(bytes) => ProxyBody::Full(bytes),
                    upstream::Ready::Streaming(raw) => ProxyBody::Raw(raw),
                };
                return Ok(Response::from_parts(parts, body));
            }
            // The app closed a kept-alive socket as we reused it: the
            // method is safe to resend, on a new connection this time.
            Ok(Err(fault)) if reused && fault.before_response() && attempts < MAX_ATTEMPTS => {
                tracing::debug!(%addr, error = %fault, "reused connection closed; resending");
                fresh = true;
            }
            Ok(Err(source)) => return Err(ProxyError::UpstreamDirect { addr, source }),
            Err(_) => return Err(response_timeout(route, addr)),
        }
    }
}

/// Which endpoint a request goes to, round robin from `start`. When no
/// connection can be made (refused, timed out, handshake), nothing was
/// sent: any method may go to the next endpoint, as nginx's
/// `proxy_next_upstream error timeout` does. Each endpoint is tried once.
struct Failover {
    index: usize,
    tried: usize,
}

impl Failover {
    fn new(route: &Route, start: usize) -> Failover {
        debug_assert!(start < route.endpoints.len());
        Failover {
            index: start,
            tried: 1,
        }
    }

    fn endpoint(&self, route: &Route) -> (SocketAddr, usize) {
        (route.endpoints[self.index], self.index)
    }

    /// After a failed connect: move on to the next endpoint, or give the
    /// error back once every endpoint was tried.
    fn next(&mut self, route: &Route, err: ProxyError) -> Result<(), ProxyError> {
        count_upstream(route, &err);
        let n = route.endpoints.len();
        if self.tried >= n {
            return Err(err);
        }
        tracing::debug!(error = %err, "endpoint unreachable, trying the next one");
        self.tried += 1;
        self.index = (self.index + 1) % n;
        Ok(())
    }
}

/// The route's response deadline passed, counted.
fn response_timeout(route: &Route, addr: SocketAddr) -> ProxyError {
    if let Some(m) = route.metrics() {
        m.upstream_error(UpstreamError::ResponseTimeout);
    }
    ProxyError::ResponseTimeout {
        addr,
        after: route.response_timeout,
    }
}

/// Count a failed connection to an app.
fn count_upstream(route: &Route, err: &ProxyError) {
    if let Some(m) = route.metrics() {
        m.upstream_error(match err {
            ProxyError::ConnectTimeout { .. } => UpstreamError::ConnectTimeout,
            _ => UpstreamError::Connect,
        });
    }
}

/// Whether hyper failed because our request body gave up on a slow client.
fn body_too_slow(err: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(err);
    while let Some(e) = source {
        if e.is::<BodyTooSlow>() {
            return true;
        }
        source = e.source();
    }
    false
}

fn respond(
    cx: &ConnCtx,
    mut resp: Response<Incoming>,
    addr: SocketAddr,
    sender: Sender,
    client_upgrade: Option<OnUpgrade>,
    in_flight: InFlight,
) -> Result<Response<ProxyBody>, ProxyError> {
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            return Err(ProxyError::UnexpectedUpgrade { addr });
        };
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        let kept = strip_hop_by_hop(resp.headers_mut(), true, false);
        if kept {
            resp.headers_mut()
                .insert(header::CONNECTION, UPGRADE.clone());
        }
        let shutdown = cx.worker.shutdown.clone();
        let drain = cx.worker.drain;
        cx.worker.tracker.spawn(tunnel(
            client_upgrade,
            upstream_upgrade,
            sender,
            addr,
            shutdown,
            drain,
            in_flight,
        ));
        let (parts, _) = resp.into_parts();
        return Ok(Response::from_parts(parts, ProxyBody::empty()));
    }
    strip_hop_by_hop(resp.headers_mut(), false, false);
    // Our own version, not the app's (RFC 9110, 6.2): an HTTP/1.0 app
    // would otherwise make hyper close the client's keep-alive connection.
    *resp.version_mut() = Version::HTTP_11;
    let (parts, body) = resp.into_parts();
    // A connection opened for an upgrade the app declined is not reused:
    // it was built to hand its socket over.
    let pool = client_upgrade
        .is_none()
        .then(|| Arc::clone(&cx.worker.pool));
    let body = UpstreamBody::new(body, sender, pool, addr, in_flight);
    Ok(Response::from_parts(parts, ProxyBody::Upstream(body)))
}

/// Copy bytes both ways between an upgraded client connection and the app
/// until either side closes. On shutdown, tunnels get the drain period.
async fn tunnel(
    client: OnUpgrade,
    upstream: OnUpgrade,
    sender: Sender,
    addr: SocketAddr,
    shutdown: tokio_util::sync::CancellationToken,
    drain: std::time::Duration,
    _in_flight: InFlight,
) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(both) => both,
        Err(e) => {
            tracing::debug!(%addr, error = %e, "upgrade failed");
            return;
        }
    };
    drop(sender);
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    let drained = async {
        shutdown.cancelled().await;
        tokio::time::sleep(drain).await;
    };
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
            if let Err(e) = r {
                tracing::debug!(%addr, error = %e, "tunnel ended");
            }
        }
        () = drained => tracing::info!(%addr, "closing upgraded connection at shutdown"),
    }
}

const NOT_FOUND_PAGE: &str = "<!doctype html>\n<title>404 Not Found</title>\n<h1>404 Not Found</h1>\n<p>No app is served at this address.</p>\n";
const BAD_GATEWAY_PAGE: &str = "<!doctype html>\n<title>502 Bad Gateway</title>\n<h1>502 Bad Gateway</h1>\n<p>The app did not answer.</p>\n";
const UNAVAILABLE_PAGE: &str = "<!doctype html>\n<title>503 Service Unavailable</title>\n<h1>503 Service Unavailable</h1>\n<p>The app is not running.</p>\n";
const BAD_REQUEST_PAGE: &str =
    "<!doctype html>\n<title>400 Bad Request</title>\n<h1>400 Bad Request</h1>\n";
const GATEWAY_TIMEOUT_PAGE: &str = "<!doctype html>\n<title>504 Gateway Timeout</title>\n<h1>504 Gateway Timeout</h1>\n<p>The app did not answer in time.</p>\n";
const REQUEST_TIMEOUT_PAGE: &str = "<!doctype html>\n<title>408 Request Timeout</title>\n<h1>408 Request Timeout</h1>\n<p>The request body arrived too slowly.</p>\n";

fn page(status: StatusCode, html: &'static str) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full(Bytes::from_static(html.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, TEXT_HTML.clone());
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, NO_STORE.clone());
    resp
}

/// The one place where proxy errors become HTTP responses and log lines.
/// The client sees a short page; the detail goes to the log.
fn error_response(cx: &ConnCtx, err: &ProxyError) -> Response<ProxyBody> {
    let status = err.status();
    if status == StatusCode::BAD_GATEWAY || status == StatusCode::GATEWAY_TIMEOUT {
        // The app's fault, but the operator may want to know.
        tracing::warn!(client = %cx.peer, error = %err, "upstream failed");
    } else {
        tracing::debug!(client = %cx.peer, error = %err, "request refused");
    }
    let html = match status {
        StatusCode::NOT_FOUND => NOT_FOUND_PAGE,
        StatusCode::SERVICE_UNAVAILABLE => UNAVAILABLE_PAGE,
        StatusCode::BAD_REQUEST | StatusCode::METHOD_NOT_ALLOWED => BAD_REQUEST_PAGE,
        StatusCode::GATEWAY_TIMEOUT => GATEWAY_TIMEOUT_PAGE,
        StatusCode::REQUEST_TIMEOUT => REQUEST_TIMEOUT_PAGE,
        _ => BAD_GATEWAY_PAGE,
    };
    page(status, html)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_distinct_and_valid() {
        let ids = RequestIds::new(0xdead_beef, 3);
        let a = ids.next();
        let b = ids.next();
        assert_ne!(a, b);
        assert_eq!(a.to_str().unwrap(), "deadbeef03-0000000000000001");
    }

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert("proxy", HeaderValue::from_static("http://evil"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        assert!(!strip_hop_by_hop(&mut h, true, true));
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["x-kept"]);
    }

    #[test]
    fn keeps_upgrade_when_asked_for() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(strip_hop_by_hop(&mut h, true, true));
        assert_eq!(h.get(header::UPGRADE).unwrap(), "websocket");
        assert!(h.get(header::CONNECTION).is_none());

        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(!strip_hop_by_hop(&mut h, false, true));
        assert!(h.get(header::UPGRADE).is_none());
    }

    #[test]
    fn h2c_upgrades_are_refused() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("Upgrade, HTTP2-Settings"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("H2C"));
        h.insert(
            "http2-settings",
            HeaderValue::from_static("AAMAAABkAAQAAP__"),
        );
        assert!(!strip_hop_by_hop(&mut h, true, true));
        assert!(h.is_empty(), "{h:?}");
    }

    #[test]
    fn forwarding_headers_are_stripped_unless_trusted() {
        let mut h = HeaderMap::new();
        for name in [
            "forwarded",
            "x-real-ip",
            "true-client-ip",
            "x-forwarded-port",
        ] {
            h.insert(name, HeaderValue::from_static("6.6.6.6"));
        }
        h.insert("accept", HeaderValue::from_static("*/*"));
        let mut kept = h.clone();
        strip_hop_by_hop(&mut h, true, true);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["accept"]);
        strip_hop_by_hop(&mut kept, true, false);
        assert_eq!(kept.len(), 5);
    }
}
