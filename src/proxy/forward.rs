//! One request through the proxy: ACME challenge, routing, header rewrite,
//! forwarding to an app endpoint, and the response on its way back.
//!
//! ```text
//! request ─► /.well-known/acme-challenge/? ─► yes: answer from Challenges (any Host)
//!              │ no
//!              ▼
//!            Host ─► RouteTable ─► unknown: 404 page
//!              │                 ─► redirect_https on plain HTTP: 308
//!              │                 ─► no endpoints: 503
//!              ▼
//!            strip hop-by-hop, set X-Forwarded-*, X-Request-Id
//!              ▼
//!            pool.get(endpoint) ─► connect failed: next endpoint, once ─► 502
//!              ▼
//!            response: strip hop-by-hop, stream body back (101: tunnel)
//! ```
//!
//! Errors become responses in one place, [`error_response`], which also
//! picks the log level from who is at fault.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::upgrade::OnUpgrade;
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::TokioIo;

use super::body::{ProxyBody, UpstreamBody};
use super::challenges::ACME_CHALLENGE_PREFIX;
use super::pool::Sender;
use super::routes::normalize_host;
use super::server::Worker;
use super::ProxyError;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

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
    /// The client's IP, formatted once per connection.
    pub(crate) client_ip: HeaderValue,
    pub(crate) peer: SocketAddr,
}

impl ConnCtx {
    pub(crate) fn new(worker: Arc<Worker>, scheme: Scheme, peer: SocketAddr) -> ConnCtx {
        let ip = peer.ip().to_canonical().to_string();
        let client_ip = HeaderValue::from_str(&ip).expect("an IP address is a valid header value");
        ConnCtx {
            worker,
            scheme,
            client_ip,
            peer,
        }
    }
}

/// Cheap, unique-enough request ids: a per-process random prefix, the worker
/// index, and a per-worker counter. No OS random source per request.
///
/// Incoming `X-Request-Id` headers are overwritten: the value is
/// client-controlled, so an app (or its logs) could otherwise be fed a
/// forged or colliding id.
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

/// The hyper service body: never fails, errors are turned into responses.
pub(crate) async fn handle(
    cx: Arc<ConnCtx>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    match proxy(&cx, req).await {
        Ok(resp) => Ok(resp),
        Err(err) => Ok(error_response(&cx, &err)),
    }
}

async fn proxy(
    cx: &ConnCtx,
    mut req: Request<Incoming>,
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
    let host = match req.headers().get(header::HOST) {
        Some(host) => host.clone(),
        None => {
            return Err(ProxyError::BadRequest {
                reason: "missing Host header",
            })
        }
    };

    // The snapshot guard is dropped at the end of this block, before any
    // await: only `Copy` data leaves it.
    let (first, fallback) = {
        let routes = cx.worker.routes.load();
        let route = routes
            .lookup_bytes(host.as_bytes())
            .ok_or(ProxyError::UnknownHost)?;
        if route.redirect_https && cx.scheme == Scheme::Http {
            return redirect_https(&host, req.uri());
        }
        route.pick().ok_or_else(|| ProxyError::NoEndpoints {
            app: route.app.clone(),
        })?
    };

    let upgrade = prepare_request(cx, &mut req, host);
    forward(cx, req, first, fallback, upgrade).await
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
    let mut buf = [0u8; 262];
    // The route matched, so the Host normalizes; the port is dropped since
    // the HTTPS listener has its own.
    let host = normalize_host(host.as_bytes(), &mut buf).ok_or(ProxyError::UnknownHost)?;
    let path = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let location = HeaderValue::try_from(format!("https://{host}{path}")).map_err(|_| {
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
    let upgrade = strip_hop_by_hop(headers, true);
    // Room for the headers added below in one growth, not several.
    headers.reserve(5);
    if upgrade {
        headers.insert(header::CONNECTION, UPGRADE.clone());
    }
    // Overwrite, never append: anything the client sent in these is forged
    // as far as the app is concerned, since Cygni is the edge.
    headers.insert(X_FORWARDED_FOR.clone(), cx.client_ip.clone());
    let proto = match cx.scheme {
        Scheme::Http => &PROTO_HTTP,
        Scheme::Https => &PROTO_HTTPS,
    };
    headers.insert(X_FORWARDED_PROTO.clone(), proto.clone());
    headers.insert(X_FORWARDED_HOST.clone(), host);
    headers.insert(X_REQUEST_ID.clone(), cx.worker.ids.next());
    // Keep-alive to the app regardless of what the client spoke.
    *req.version_mut() = Version::HTTP_11;
    upgrade
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
/// every header named in `Connection`. When `keep_upgrade` is set and
/// `Connection` carries the `upgrade` token with an `Upgrade` header
/// present, `Upgrade` is kept and `true` is returned; the caller then puts
/// back `Connection: upgrade`.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) -> bool {
    // One pass over the names first: most messages carry none of these, and
    // then nothing is allocated or removed.
    if !headers.keys().any(is_hop_by_hop) {
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
    let upgrade = keep_upgrade && upgrade && headers.contains_key(header::UPGRADE);
    named.extend(
        headers
            .keys()
            .filter(|n| is_proxy_header(n.as_str()))
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

async fn forward(
    cx: &ConnCtx,
    mut req: Request<Incoming>,
    first: SocketAddr,
    mut fallback: Option<SocketAddr>,
    upgrade: bool,
) -> Result<Response<ProxyBody>, ProxyError> {
    let pool = &cx.worker.pool;
    // Taken before the request moves upstream: it resolves to the client's
    // socket once our 101 response has been written.
    let client_upgrade = if upgrade {
        Some(hyper::upgrade::on(&mut req))
    } else {
        None
    };
    let mut addr = first;
    let mut attempts = 0;
    loop {
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
            Err(err) => match fallback.take() {
                Some(next) => {
                    tracing::debug!(error = %err, next = %next, "endpoint unreachable, trying the next one");
                    addr = next;
                    continue;
                }
                None => return Err(err),
            },
        };
        match sender.try_send_request(req).await {
            Ok(resp) => return respond(cx, resp, addr, sender, client_upgrade),
            Err(mut err) => match err.take_message() {
                // Not a byte was written: resending cannot repeat a side
                // effect, whatever the method.
                Some(back) if reused && attempts < MAX_ATTEMPTS => req = back,
                _ => {
                    return Err(ProxyError::Upstream {
                        addr,
                        source: err.into_error(),
                    })
                }
            },
        }
    }
}

fn respond(
    cx: &ConnCtx,
    mut resp: Response<Incoming>,
    addr: SocketAddr,
    sender: Sender,
    client_upgrade: Option<OnUpgrade>,
) -> Result<Response<ProxyBody>, ProxyError> {
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            return Err(ProxyError::UnexpectedUpgrade { addr });
        };
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        let kept = strip_hop_by_hop(resp.headers_mut(), true);
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
        ));
        let (parts, _) = resp.into_parts();
        return Ok(Response::from_parts(parts, ProxyBody::empty()));
    }
    strip_hop_by_hop(resp.headers_mut(), false);
    // Our own version, not the app's (RFC 9110, 6.2): an HTTP/1.0 app
    // would otherwise make hyper close the client's keep-alive connection.
    *resp.version_mut() = Version::HTTP_11;
    let (parts, body) = resp.into_parts();
    // A connection opened for an upgrade the app declined is not reused:
    // it was built to hand its socket over.
    let pool = client_upgrade
        .is_none()
        .then(|| Arc::clone(&cx.worker.pool));
    let body = UpstreamBody::new(body, sender, pool, addr);
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
    if status == StatusCode::BAD_GATEWAY {
        // The app's fault, but the operator may want to know.
        tracing::warn!(client = %cx.peer, error = %err, "upstream failed");
    } else {
        tracing::debug!(client = %cx.peer, error = %err, "request refused");
    }
    let html = match status {
        StatusCode::NOT_FOUND => NOT_FOUND_PAGE,
        StatusCode::SERVICE_UNAVAILABLE => UNAVAILABLE_PAGE,
        StatusCode::BAD_REQUEST | StatusCode::METHOD_NOT_ALLOWED => BAD_REQUEST_PAGE,
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
        assert!(!strip_hop_by_hop(&mut h, true));
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["x-kept"]);
    }

    #[test]
    fn keeps_upgrade_when_asked_for() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(strip_hop_by_hop(&mut h, true));
        assert_eq!(h.get(header::UPGRADE).unwrap(), "websocket");
        assert!(h.get(header::CONNECTION).is_none());

        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(!strip_hop_by_hop(&mut h, false));
        assert!(h.get(header::UPGRADE).is_none());
    }
}
