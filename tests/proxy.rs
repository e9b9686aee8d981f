//! The proxy as a user meets it: real sockets on loopback, real `curl`,
//! small hyper backends started inside each test. No fixed ports, no
//! sleeps for readiness: every wait has a deadline.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cygni::names::AppName;
use cygni::proxy::{
    serve_http, serve_https, tls, AppRoute, CertStore, Challenges, ProxyConfig, ProxyError,
    RouteTable, Routes, DEFAULT_RESPONSE_TIMEOUT,
};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Every network wait in these tests ends by this deadline.
const DEADLINE: Duration = Duration::from_secs(10);

/// Size of `/big`: far more than loopback socket buffers hold.
const BIG: usize = 64 << 20;

// ---------------------------------------------------------------- backends

/// A test app: answers `backend=NAME` followed by the request headers it
/// received (one `name: value` per line), and a few special paths.
struct Backend {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    /// Lets `/stream` send its second half.
    release: Arc<Notify>,
}

impl Backend {
    async fn start(name: &'static str) -> Backend {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let addr = listener.local_addr().expect("backend addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(Notify::new());
        let (h, r) = (Arc::clone(&hits), Arc::clone(&release));
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (h, r) = (Arc::clone(&h), Arc::clone(&r));
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        h.fetch_add(1, Ordering::SeqCst);
                        app(name, req, Arc::clone(&r))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Backend {
            addr,
            hits,
            release,
        }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

async fn app(
    name: &'static str,
    mut req: Request<Incoming>,
    release: Arc<Notify>,
) -> Result<Response<TestBody>, Infallible> {
    match req.uri().path() {
        "/stream" => {
            let (tx, rx) = mpsc::unbounded_channel();
            let _ = tx.send(Bytes::from_static(b"first\n"));
            tokio::spawn(async move {
                release.notified().await;
                let _ = tx.send(Bytes::from_static(b"second\n"));
            });
            Ok(Response::new(TestBody::stream(rx)))
        }
        "/ws" => {
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let Ok(upgraded) = upgrade.await else { return };
                let mut io = TokioIo::new(upgraded);
                let mut buf = [0u8; 64];
                // Echo upper-cased, so the test knows the app answered.
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    buf[..n].make_ascii_uppercase();
                    if io.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
            let resp = Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("connection", "upgrade")
                .header("upgrade", "cygni-echo")
                .body(TestBody::full(""))
                .expect("valid response");
            Ok(resp)
        }
        "/hang" => {
            // An app that never answers (until the test ends).
            std::future::pending::<()>().await;
            unreachable!()
        }
        "/big" => Ok(Response::new(TestBody::full(vec![b'x'; BIG]))),
        "/upload" => {
            // Read the whole body before answering (a stalled upload stalls here).
            let mut body = req.into_body();
            let mut n = 0;
            while let Some(frame) =
                std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
            {
                match frame {
                    Ok(f) => n += f.data_ref().map_or(0, |d| d.len()),
                    Err(_) => break,
                }
            }
            Ok(Response::new(TestBody::full(format!(
                "backend={name} got {n}\n"
            ))))
        }
        _ => {
            let mut text = format!("backend={name}\n");
            for (k, v) in req.headers() {
                text.push_str(&format!("{}: {}\n", k, v.to_str().unwrap_or("?")));
            }
            let resp = Response::builder()
                .header("x-backend", name)
                .header("connection", "x-hop")
                .header("x-hop", "1")
                .header("keep-alive", "timeout=5")
                .header("proxy-authenticate", "Basic")
                .header("x-kept", "1")
                .body(TestBody::full(text))
                .expect("valid response");
            Ok(resp)
        }
    }
}

/// A body that is either fixed or fed from a channel as the test decides.
enum TestBody {
    Full(Option<Bytes>),
    Stream(mpsc::UnboundedReceiver<Bytes>),
}

impl TestBody {
    fn full(s: impl Into<Bytes>) -> Self {
        TestBody::Full(Some(s.into()))
    }
    fn stream(rx: mpsc::UnboundedReceiver<Bytes>) -> Self {
        TestBody::Stream(rx)
    }
}

impl Body for TestBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            TestBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            TestBody::Stream(rx) => rx.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            TestBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            TestBody::Full(None) => SizeHint::with_exact(0),
            TestBody::Stream(_) => SizeHint::default(),
        }
    }
}

/// An address nothing listens on: bound, then closed.
fn dead_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

fn app_name(s: &str) -> AppName {
    AppName::parse(s).expect("valid app name")
}

fn routes(apps: &[(&str, &[&str], &[SocketAddr], bool)]) -> Routes {
    let mut b = Routes::builder();
    for (name, hosts, endpoints, redirect) in apps {
        b = b.app(
            app_name(name),
            hosts.iter().map(|h| h.to_string()).collect(),
            endpoints.to_vec(),
            *redirect,
        );
    }
    b.build()
}

// ------------------------------------------------------------------- proxy

struct Proxy {
    addr: SocketAddr,
    routes: Arc<RouteTable>,
    challenges: Arc<Challenges>,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), ProxyError>>,
}

impl Proxy {
    fn start(routes: Routes) -> Proxy {
        Proxy::start_with(routes, test_config())
    }

    fn start_with(routes: Routes, config: ProxyConfig) -> Proxy {
        // Bound (and listening) before serve_http runs: connections wait in
        // the backlog, so no readiness polling is needed.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let routes = Arc::new(RouteTable::new(routes));
        let challenges = Arc::new(Challenges::new());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(serve_http(
            listener,
            Arc::clone(&routes),
            Arc::clone(&challenges),
            config,
            shutdown.clone(),
        ));
        Proxy {
            addr,
            routes,
            challenges,
            shutdown,
            task,
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn test_config() -> ProxyConfig {
    ProxyConfig {
        workers: 2,
        drain_timeout: Duration::from_secs(5),
        ..ProxyConfig::default()
    }
}

// -------------------------------------------------------------------- curl

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// A header the backend says it received (from its echoed body).
    fn seen(&self, name: &str) -> Option<&str> {
        self.body.lines().find_map(|l| {
            let (k, v) = l.split_once(": ")?;
            k.eq_ignore_ascii_case(name).then_some(v)
        })
    }
}

/// `curl -i` against the proxy with the given Host; extra args as is.
async fn curl(proxy: SocketAddr, host: &str, path: &str, extra: &[&str]) -> Reply {
    let out = curl_raw(proxy, host, path, extra).await;
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_reply(&out.stdout)
}

async fn curl_raw(
    proxy: SocketAddr,
    host: &str,
    path: &str,
    extra: &[&str],
) -> std::process::Output {
    let mut cmd = tokio::process::Command::new("curl");
    cmd.args(["-sS", "-i", "--max-time", "10", "-H"])
        .arg(format!("Host: {host}"))
        .args(extra)
        .arg(format!("http://{proxy}{path}"))
        .kill_on_drop(true);
    tokio::time::timeout(DEADLINE, cmd.output())
        .await
        .expect("curl finished in time")
        .expect("curl runs (is it installed?)")
}

fn parse_reply(raw: &[u8]) -> Reply {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").expect("a header block");
    let mut lines = head.lines();
    let status_line = lines.next().expect("a status line");
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Reply {
        status,
        headers,
        body: body.to_string(),
    }
}

/// Read from `stream` until `needle` has been seen (or fail at the deadline).
async fn read_until(stream: &mut TcpStream, seen: &mut Vec<u8>, needle: &[u8]) {
    let deadline = Instant::now() + DEADLINE;
    while !seen.windows(needle.len()).any(|w| w == needle) {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(left, stream.read(&mut buf))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no {:?} before the deadline; got {:?}",
                    String::from_utf8_lossy(needle),
                    String::from_utf8_lossy(seen)
                )
            })
            .expect("read");
        assert!(
            n > 0,
            "connection closed; got {:?}",
            String::from_utf8_lossy(seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
}

/// Wait for the peer to close `stream`; returns how long that took.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Duration {
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(limit, stream.read(&mut buf)).await {
            Err(_) => panic!("connection still open after {limit:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return start.elapsed(),
            Ok(Ok(_)) => continue,
        }
    }
}

// ------------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_host_header() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let proxy = Proxy::start(routes(&[
        ("a", &["a.localhost", "www.example.com"], &[a.addr], false),
        ("b", &["b.localhost"], &[b.addr], false),
    ]));
    let r = curl(proxy.addr, "a.localhost", "/", &[]).await;
    assert_eq!(r.status, 200);
    assert!(r.body.starts_with("backend=a\n"), "{r:?}");
    let r = curl(proxy.addr, "B.LocalHost.:8080", "/", &[]).await;
    assert!(
        r.body.starts_with("backend=b\n"),
        "Host is normalized: {r:?}"
    );
    let r = curl(proxy.addr, "www.example.com", "/", &[]).await;
    assert!(r.body.starts_with("backend=a\n"), "custom domain: {r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_host_gets_404_page_and_no_app_content() {
    let a = Backend::start("a").await;
    let proxy = Proxy::start(routes(&[("a", &["a.localhost"], &[a.addr], false)]));
    let r = curl(proxy.addr, "evil.localhost", "/", &[]).await;
    assert_eq!(r.status, 404);
    assert!(r
        .header("content-type")
        .unwrap_or("")
        .starts_with("text/html"));
    assert!(r.body.contains("404"));
    assert!(!r.body.contains("backend="), "{r:?}");
    assert_eq!(a.hits(), 0, "the app was never asked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_without_endpoints_gets_503() {
    let proxy = Proxy::start(routes(&[("idle", &["idle.localhost"], &[], false)]));
    let r = curl(proxy.addr, "idle.localhost", "/", &[]).await;
    assert_eq!(r.status, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_endpoint_alone_gets_502() {
    let proxy = Proxy::start(routes(&[(
        "gone",
        &["gone.localhost"],
        &[dead_addr()],
        false,
    )]));
    let r = curl(proxy.addr, "gone.localhost", "/", &[]).await;
    assert_eq!(r.status, 502);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_endpoint_next_to_live_one_is_skipped() {
    let live = Backend::start("live").await;
    let proxy = Proxy::start(routes(&[(
        "a",
        &["a.localhost"],
        &[dead_addr(), live.addr],
        false,
    )]));
    for _ in 0..4 {
        let r = curl(proxy.addr, "a.localhost", "/", &[]).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert!(r.body.starts_with("backend=live\n"));
    }
    assert_eq!(live.hits(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_are_overwritten_and_request_id_added() {
    let a = Backend::start("a").await;
    let proxy = Proxy::start(routes(&[("a", &["a.localhost"], &[a.addr], false)]));
    let forged = [
        "-H",
        "X-Forwarded-For: 6.6.6.6",
        "-H",
        "X-Forwarded-Proto: https",
        "-H",
        "X-Forwarded-Host: bank.example",
        "-H",
        "X-Request-Id: forged",
    ];
    let r1 = curl(proxy.addr, "a.localhost:8080", "/", &forged).await;
    assert_eq!(r1.seen("x-forwarded-for"), Some("127.0.0.1"), "{r1:?}");
    assert_eq!(r1.seen("x-forwarded-proto"), Some("http"));
    assert_eq!(r1.seen("x-forwarded-host"), Some("a.localhost:8080"));
    assert_eq!(
        r1.seen("host"),
        Some("a.localhost:8080"),
        "Host is passed as is"
    );
    let id1 = r1.seen("x-request-id").expect("a request id").to_string();
    assert_ne!(id1, "forged");
    assert_eq!(
        r1.body.matches("x-forwarded-for:").count(),
        1,
        "not appended"
    );
    let r2 = curl(proxy.addr, "a.localhost", "/", &[]).await;
    assert_ne!(r2.seen("x-request-id"), Some(id1.as_str()), "ids differ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_not_forwarded_either_way() {
    let a = Backend::start("a").await;
    let proxy = Proxy::start(routes(&[("a", &["a.localhost"], &[a.addr], false)]));
    let r = curl(
        proxy.addr,
        "a.localhost",
        "/",
        &[
            "-H",
            "Connection: keep-alive, X-Secret",
            "-H",
            "X-Secret: 1",
            "-H",
            "Keep-Alive: timeout=99",
            "-H",
            "Proxy-Authorization: Basic Zm9vOmJhcg==",
            "-H",
            "Proxy: http://evil.example",
            "-H",
            "TE: trailers",
            "-H",
            "Upgrade: h2c",
            "-H",
            "X-Normal: 1",
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    for name in [
        "x-secret",
        "keep-alive",
        "proxy-authorization",
        "proxy",
        "te",
        "upgrade",
    ] {
        assert_eq!(r.seen(name), None, "{name} reached the app: {}", r.body);
    }
    assert_eq!(r.seen("x-normal"), Some("1"), "end-to-end headers pass");
    // And back: the app's hop-by-hop headers stop at the proxy.
    for name in ["x-hop", "keep-alive", "proxy-authenticate"] {
        assert_eq!(r.header(name), None, "{name} reached the client: {r:?}");
    }
    assert_eq!(r.header("x-kept"), Some("1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_across_endpoints() {
    let x = Backend::start("x").await;
    let y = Backend::start("y").await;
    let proxy = Proxy::start(routes(&[("a", &["a.localhost"], &[x.addr, y.addr], false)]));
    let mut seen = Vec::new();
    for _ in 0..4 {
        let r = curl(proxy.addr, "a.localhost", "/", &[]).await;
        seen.push(r.header("x-backend").expect("x-backend").to_string());
    }
    assert_eq!(seen, ["x", "y", "x", "y"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapped_routes_apply_to_the_next_request() {
    let old = Backend::start("old").await;
    let new = Backend::start("new").await;
    let proxy = Proxy::start(routes(&[("a", &["a.localhost"], &[old.addr], false)]));
    let r = curl(proxy.addr, "a.localhost", "/", &[]).await;
    assert_eq!(r.header("x-backend"), Some("old"));
    proxy
        .routes
        .replace(routes(&[("a", &["a.localhost"], &[new.addr], false)]));
    let r = curl(proxy.addr, "a.localhost", "/", &[]).await;
    assert_eq!(r.header("x-backend"), Some("new"));
    proxy.routes.replace(Routes::empty());
    let r = curl(proxy.addr, "a.localhost", "/", &[]).await;
    assert_eq!(r.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_streams_before_the_app_finishes() {
    let a = Backend::start("a").await;
    let proxy = Proxy::start(routes(&[("a", &["a.localhost"], &[a.addr], false)]));
    let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
    s.write_all(b"GET /stream HTTP/1.1\r\nHost: a.localhost\r\n\r\n")
        .await
        .expect("write");
    let mut seen = Vec::new();
    // The app holds "second" back until released: "first" can only arrive
    // now if the proxy does not buffer the body.
    read_until(&mut s, &mut seen, b"first\n").await;
    assert!(!seen.windows(6).any(|w| w == b"second"));
    a.release.notify_one();
    read_until(&mut s, &mut seen, b"second\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_round_trips_bytes() {
    let a = Backend::start("a").await;
    let proxy = Proxy::start(routes(&[("a", &["a.localhost"], &[a.addr], false)]));
    let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: a.localhost\r\nConnection: Upgrade\r\nUpgrade: cygni-echo\r\n\r\n",
    )
    .await
    .expect("write");
    let mut seen = Vec::new();
    read_until(&mut s, &mut seen, b"\r\n\r\n").await;
    let head = String::from_utf8_lossy(&seen).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: cygni-echo"), "{head}");
    assert!(head.contains("connection: upgrade"), "{head}");
    for word in [&b"ping"[..], b"hello again"] {
        s.write_all(word).await.expect("write through tunnel");
        let mut got = Vec::new();
        read_until(&mut s, &mut got, &word.to_ascii_uppercase()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acme_challenge_is_answered_before_routing_on_any_host() {
    let a = Backend::start("a").await;
    let proxy = Proxy::start(routes(&[("a", &["a.localhost"], &[a.addr], true)]));
    proxy.challenges.insert("tok-123_x", "tok-123_x.thumbprint");
    let path = "/.well-known/acme-challenge/tok-123_x";
    for host in ["unknown.example", "a.localhost"] {
        let r = curl(proxy.addr, host, path, &[]).await;
        assert_eq!(r.status, 200, "on {host}, not redirected: {r:?}");
        assert_eq!(r.body, "tok-123_x.thumbprint");
    }
    let r = curl(
        proxy.addr,
        "a.localhost",
        "/.well-known/acme-challenge/other",
        &[],
    )
    .await;
    assert_eq!(r.status, 404);
    proxy.challenges.remove("tok-123_x");
    let r = curl(proxy.addr, "unknown.example", path, &[]).await;
    assert_eq!(r.status, 404);
    assert_eq!(a.hits(), 0, "challenges never reach the app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_https_gives_308_to_same_host_and_path() {
    let a = Backend::start("a").await;
    let plain = Backend::start("plain").await;
    let proxy = Proxy::start(routes(&[
        ("secure", &["secure.localhost"], &[a.addr], true),
        ("plain", &["plain.localhost"], &[plain.addr], false),
    ]));
    let r = curl(proxy.addr, "Secure.localhost:8080", "/x/y?q=1", &[]).await;
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location"),
        Some("https://secure.localhost/x/y?q=1")
    );
    assert_eq!(a.hits(), 0);
    let r = curl(proxy.addr, "plain.localhost", "/x", &[]).await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_heads_get_431() {
    let a = Backend::start("a").await;
    let config = ProxyConfig {
        max_header_bytes: 4096,
        max_headers: 20,
        ..test_config()
    };
    let proxy = Proxy::start_with(routes(&[("a", &["a.localhost"], &[a.addr], false)]), config);
    // Just under both limits: served.
    let r = curl(
        proxy.addr,
        "a.localhost",
        "/",
        &["-H", &format!("X-Big: {}", "b".repeat(3000))],
    )
    .await;
    assert_eq!(r.status, 200);
    // One big header over the byte limit.
    let big = format!("X-Big: {}", "b".repeat(6000));
    let r = curl(proxy.addr, "a.localhost", "/", &["-H", &big]).await;
    assert_eq!(r.status, 431, "{r:?}");
    // Too many small headers.
    let many: Vec<String> = (0..30).map(|i| format!("X-H{i}: {i}")).collect();
    let args: Vec<&str> = many.iter().flat_map(|h| ["-H", h.as_str()]).collect();
    let r = curl(proxy.addr, "a.localhost", "/", &args).await;
    assert_eq!(r.status, 431, "{r:?}");
    assert_eq!(
        a.hits(),
        1,
        "only the request within limits reached the app"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_header_is_cut_off_by_header_read_timeout() {
    let config = ProxyConfig {
        header_read_timeout: Duration::from_millis(300),
        ..test_config()
    };
    let proxy = Proxy::start_with(Routes::empty(), config);
    let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: a.loc")
        .await
        .expect("write");
    let took = closed_within(&mut s, Duration::from_secs(5)).await;
    assert!(
        took >= Duration::from_millis(250),
        "closed too early: {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_upload_is_cut_off_by_idle_timeout() {
    let a = Backend::start("a").await;
    let config = ProxyConfig {
        idle_timeout: Duration::from_millis(300),
        ..test_config()
    };
    let proxy = Proxy::start_with(routes(&[("a", &["a.localhost"], &[a.addr], false)]), config);
    // Control: a complete upload is answered.
    let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: a.localhost\r\nContent-Length: 5\r\n\r\nhello")
        .await
        .expect("write");
    let mut seen = Vec::new();
    read_until(&mut s, &mut seen, b"got 5").await;
    // Then one that stops halfway: the proxy hangs up.
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: a.localhost\r\nContent-Length: 100\r\n\r\nabc")
        .await
        .expect("write");
    closed_within(&mut s, Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_accepting_and_lets_in_flight_requests_finish() {
    let a = Backend::start("a").await;
    let mut proxy = Proxy::start(routes(&[("a", &["a.localhost"], &[a.addr], false)]));
    let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
    s.write_all(b"GET /stream HTTP/1.1\r\nHost: a.localhost\r\n\r\n")
        .await
        .expect("write");
    let mut seen = Vec::new();
    read_until(&mut s, &mut seen, b"first\n").await;

    proxy.shutdown.cancel();
    // New connections are refused once every worker has dropped its listener.
    let deadline = Instant::now() + DEADLINE;
    while TcpStream::connect(proxy.addr).await.is_ok() {
        assert!(Instant::now() < deadline, "still accepting after shutdown");
        tokio::task::yield_now().await;
    }
    // The request in flight still completes.
    a.release.notify_one();
    read_until(&mut s, &mut seen, b"second\n").await;
    let result = tokio::time::timeout(DEADLINE, &mut proxy.task).await;
    assert!(
        matches!(result, Ok(Ok(Ok(())))),
        "serve_http returned: {result:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_pass_through_sized_and_chunked() {
    let a = Backend::start("a").await;
    let proxy = Proxy::start(routes(&[("a", &["a.localhost"], &[a.addr], false)]));
    let body = "x".repeat(100_000);
    let r = curl(
        proxy.addr,
        "a.localhost",
        "/upload",
        &["--data-binary", &body],
    )
    .await;
    assert_eq!(r.body, "backend=a got 100000\n", "{r:?}");
    // Transfer-Encoding is hop-by-hop: dropped, then re-framed upstream.
    let r = curl(
        proxy.addr,
        "a.localhost",
        "/upload",
        &["-H", "Transfer-Encoding: chunked", "--data-binary", &body],
    )
    .await;
    assert_eq!(r.body, "backend=a got 100000\n", "{r:?}");
}

// ------------------------------------------------ issue 9: next upstream

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connections_are_retried_on_every_other_endpoint_for_any_method() {
    let live = Backend::start("live").await;
    let proxy = Proxy::start(routes(&[(
        "a",
        &["a.localhost"],
        &[dead_addr(), dead_addr(), live.addr, dead_addr()],
        false,
    )]));
    // Whichever endpoint the rotation starts at, the request ends on the
    // live one: nothing was sent to the others, so even POST is safe.
    for _ in 0..8 {
        let r = curl(
            proxy.addr,
            "a.localhost",
            "/upload",
            &["--data-binary", "abc"],
        )
        .await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.body, "backend=live got 3\n");
    }
    assert_eq!(live.hits(), 8);
}

// ------------------------------------------- issue 16: HTTP hardening

/// A raw request on a fresh connection; returns the status code and the
/// whole reply (the request should carry `Connection: close`).
async fn raw(proxy: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(proxy).await.expect("connect");
    s.write_all(request).await.expect("write");
    let mut seen = Vec::new();
    read_until(&mut s, &mut seen, b"\r\n\r\n").await;
    let _ = tokio::time::timeout(DEADLINE, s.read_to_end(&mut seen)).await;
    let text = String::from_utf8_lossy(&seen).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_header_spoofing_regression() {
    let a = Backend::start("a").await;
    let forged: &[(&str, &str)] = &[
        ("Forwarded", "for=6.6.6.6;proto=https;host=evil.example"),
        ("X-Real-IP", "6.6.6.6"),
        ("X-Forwarded-Port", "443"),
        ("X-Client-IP", "6.6.6.6"),
        ("True-Client-IP", "6.6.6.6"),
        ("X-Cluster-Client-IP", "6.6.6.6"),
        ("CF-Connecting-IP", "6.6.6.6"),
        ("X-Forwarded-Ssl", "on"),
        ("X-Forwarded-For", "6.6.6.6"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "evil.example"),
    ];
    let args: Vec<String> = forged
        .iter()
        .flat_map(|(k, v)| ["-H".to_string(), format!("{k}: {v}")])
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();

    // Cygni as the edge: nothing the client says about itself gets through.
    let proxy = Proxy::start(routes(&[("a", &["a.localhost"], &[a.addr], false)]));
    let r = curl(proxy.addr, "a.localhost", "/", &args).await;
    assert_eq!(r.status, 200, "{r:?}");
    for (name, _) in forged {
        match name.to_ascii_lowercase().as_str() {
            "x-forwarded-for" => assert_eq!(r.seen(name), Some("127.0.0.1")),
            "x-forwarded-proto" => assert_eq!(r.seen(name), Some("http")),
            "x-forwarded-host" => assert_eq!(r.seen(name), Some("a.localhost")),
            _ => assert_eq!(r.seen(name), None, "{name} reached the app: {}", r.body),
        }
    }
    assert!(!r.body.contains("6.6.6.6"), "{}", r.body);

    // Behind a trusted load balancer, its word is kept and our hop added.
    let config = ProxyConfig {
        trusted_proxies: vec!["127.0.0.1".parse().unwrap()],
        ..test_config()
    };
    let proxy = Proxy::start_with(routes(&[("a", &["a.localhost"], &[a.addr], false)]), config);
    let r = curl(proxy.addr, "a.localhost", "/", &args).await;
    assert_eq!(r.seen("x-forwarded-for"), Some("6.6.6.6, 127.0.0.1"));
    assert_eq!(r.seen("x-forwarded-proto"), Some("https"));
    assert_eq!(r.seen("x-real-ip"), Some("6.6.6.6"));
    assert!(r.seen("forwarded").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_body_regression() {
    let a = Backend::start("a").await;
    let config = ProxyConfig {
        body_grace: Duration::from_millis(800),
        body_min_rate: 1000,
        ..test_config()
    };
    let proxy = Proxy::start_with(routes(&[("a", &["a.localhost"], &[a.addr], false)]), config);
    // Control: a body at a decent pace passes.
    let r = curl(
        proxy.addr,
        "a.localhost",
        "/upload",
        &["--data-binary", &"y".repeat(50_000)],
    )
    .await;
    assert_eq!(r.body, "backend=a got 50000\n");

    // Headers at once, then one byte every 200 ms: cut off after the grace
    // (plus 1 ms per byte), not kept open for as long as it trickles.
    let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: a.localhost\r\nContent-Length: 1000\r\n\r\n")
        .await
        .expect("write");
    let start = Instant::now();
    let trickle = tokio::spawn(async move {
        let mut s = s;
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        for _ in 0..100 {
            if s.write_all(b"z").await.is_err() {
                break;
            }
            match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
                Err(_) => {}
            }
        }
        seen
    });
    let seen = tokio::time::timeout(DEADLINE * 3, trickle)
        .await
        .expect("the trickle ends")
        .expect("no panic");
    let took = start.elapsed();
    let text = String::from_utf8_lossy(&seen);
    assert!(
        text.starts_with("HTTP/1.1 408"),
        "got {text:?} after {took:?}"
    );
    assert!(took < Duration::from_secs(4), "cut off only after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_that_never_reads_regression() {
    let a = Backend::start("a").await;
    let config = ProxyConfig {
        idle_timeout: Duration::from_secs(1),
        ..test_config()
    };
    let proxy = Proxy::start_with(routes(&[("a", &["a.localhost"], &[a.addr], false)]), config);
    let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
    s.write_all(b"GET /big HTTP/1.1\r\nHost: a.localhost\r\n\r\n")
        .await
        .expect("write");
    // Read nothing for a while: the proxy's writes stall, and it gives up.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    let drained = tokio::time::timeout(DEADLINE, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got += n,
            }
        }
    })
    .await;
    assert!(drained.is_ok(), "the connection is still open");
    assert!(
        got < BIG,
        "all {got} bytes came: the stalled write was not cut off"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_flood_from_one_address_regression() {
    let a = Backend::start("a").await;
    let config = ProxyConfig {
        max_conns_per_addr: 4,
        ..test_config()
    };
    let proxy = Proxy::start_with(routes(&[("a", &["a.localhost"], &[a.addr], false)]), config);
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
        s.write_all(b"GET / HTTP/1.1\r\nHost: a.localhost\r\n\r\n")
            .await
            .expect("write");
        let mut seen = Vec::new();
        read_until(&mut s, &mut seen, b"backend=a").await;
        held.push(s);
    }
    // The fifth from the same address is closed unanswered.
    let mut extra = TcpStream::connect(proxy.addr).await.expect("connect");
    let _ = extra
        .write_all(b"GET / HTTP/1.1\r\nHost: a.localhost\r\n\r\n")
        .await;
    closed_within(&mut extra, Duration::from_secs(5)).await;
    // One leaves: there is room again.
    drop(held.pop());
    let deadline = Instant::now() + DEADLINE;
    loop {
        let out = curl_raw(proxy.addr, "a.localhost", "/", &[]).await;
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no room after a connection closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An HTTPS proxy with a self-signed certificate for `host`.
fn start_https(routes: Routes, config: ProxyConfig, host: &str) -> (Proxy, String) {
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec![host.to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    let store = Arc::new(CertStore::new());
    store.insert(
        host,
        tls::certified_key(host, &cert.pem(), &key.serialize_pem()).expect("certified key"),
    );
    let tls_config = tls::server_config(store).expect("tls config");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy");
    let addr = listener.local_addr().expect("proxy addr");
    let routes = Arc::new(RouteTable::new(routes));
    let challenges = Arc::new(Challenges::new());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(serve_https(
        listener,
        Arc::clone(&routes),
        Arc::clone(&challenges),
        tls_config,
        config,
        shutdown.clone(),
    ));
    let proxy = Proxy {
        addr,
        routes,
        challenges,
        shutdown,
        task,
    };
    (proxy, cert.pem())
}

async fn curl_https(proxy: SocketAddr, host: &str, ca: &std::path::Path) -> std::process::Output {
    let mut cmd = tokio::process::Command::new("curl");
    cmd.args([
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "10",
    ])
    .arg("--cacert")
    .arg(ca)
    .arg("--resolve")
    .arg(format!("{host}:{}:127.0.0.1", proxy.port()))
    .arg(format!("https://{host}:{}/", proxy.port()))
    .kill_on_drop(true);
    tokio::time::timeout(DEADLINE, cmd.output())
        .await
        .expect("curl finished in time")
        .expect("curl runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_handshake_flood_regression() {
    let a = Backend::start("a").await;
    let config = ProxyConfig {
        max_handshakes_per_addr: 3,
        ..test_config()
    };
    let host = "a.example.com";
    let (proxy, ca) = start_https(routes(&[("a", &[host], &[a.addr], false)]), config, host);
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca).expect("write ca");
    let out = curl_https(proxy.addr, host, &ca_path).await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200", "{out:?}");

    // Three half-open handshakes (a TCP connect, then silence) are held...
    let mut half_open = Vec::new();
    for _ in 0..3 {
        half_open.push(TcpStream::connect(proxy.addr).await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // ...the next one from the same address is closed at once, and so a
    // real client is refused too while the flood lasts.
    let mut extra = TcpStream::connect(proxy.addr).await.expect("connect");
    let took = closed_within(&mut extra, Duration::from_secs(5)).await;
    assert!(took < Duration::from_secs(2), "held for {took:?}");
    // The flood stops: handshakes are served again.
    drop(half_open);
    let deadline = Instant::now() + DEADLINE;
    loop {
        let out = curl_https(proxy.addr, host, &ca_path).await;
        if String::from_utf8_lossy(&out.stdout) == "200" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "handshakes refused after the flood: {out:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_connection_flood_from_one_address_regression() {
    let a = Backend::start("a").await;
    let config = ProxyConfig {
        max_conns_per_addr: 2,
        ..test_config()
    };
    let host = "a.example.com";
    let (proxy, _) = start_https(routes(&[("a", &[host], &[a.addr], false)]), config, host);
    let _one = TcpStream::connect(proxy.addr).await.expect("connect");
    let _two = TcpStream::connect(proxy.addr).await.expect("connect");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut extra = TcpStream::connect(proxy.addr).await.expect("connect");
    let took = closed_within(&mut extra, Duration::from_secs(5)).await;
    assert!(took < Duration::from_secs(2), "held for {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_host_regression() {
    let a = Backend::start("a").await;
    let proxy = Proxy::start(routes(&[
        ("a", &["a.localhost"], &[a.addr], false),
        ("b", &["xn--bcher-kva.example.com"], &[a.addr], false),
    ]));
    for host in [
        "a b.localhost",
        "a.localhost/x",
        "user@a.localhost",
        "a.localhost:99999",
        "a.localhost:http",
        "a:b:c",
        "[zz]",
        "%61.localhost",
        "b\u{fc}cher",
    ] {
        let req = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let (status, text) = raw(proxy.addr, req.as_bytes()).await;
        assert_eq!(status, 400, "Host {host:?}: {text}");
        assert!(!text.contains("backend="), "{text}");
    }
    let (status, _) = raw(
        proxy.addr,
        b"GET / HTTP/1.1\r\nHost: a.localhost\r\nHost: b.localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 400, "two Host headers");
    // Well-formed but unknown stays 404.
    let (status, _) = raw(
        proxy.addr,
        b"GET / HTTP/1.1\r\nHost: c.localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unicode_host_is_idna_mapped_like_domains_add() {
    let a = Backend::start("a").await;
    // What `domains:add b bücher.example.com` stores.
    let stored = cygni::names::Hostname::parse("bücher.example.com").expect("valid");
    let proxy = Proxy::start(routes(&[("b", &[stored.as_str()], &[a.addr], false)]));
    for host in [
        "bücher.example.com",
        "BÜCHER.example.com:8080",
        "xn--bcher-kva.example.com",
    ] {
        let req = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let (status, text) = raw(proxy.addr, req.as_bytes()).await;
        assert_eq!(status, 200, "Host {host:?}: {text}");
        assert!(text.contains("backend=a"), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timer_fires_late_regression() {
    let a = Backend::start("a").await;
    let idle = Duration::from_secs(2);
    let config = ProxyConfig {
        idle_timeout: idle,
        header_read_timeout: Duration::from_secs(30),
        ..test_config()
    };
    let proxy = Proxy::start_with(routes(&[("a", &["a.localhost"], &[a.addr], false)]), config);
    let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
    let mut seen = Vec::new();
    // Requests at 1 s and 2.5 s: the old timer checked a counter every
    // period (2, 4, 6 s) and closed at 6 s, 3.5 s after the last activity.
    for (i, wait) in [Duration::from_millis(1000), Duration::from_millis(1500)]
        .into_iter()
        .enumerate()
    {
        tokio::time::sleep(wait).await;
        s.write_all(b"GET / HTTP/1.1\r\nHost: a.localhost\r\n\r\n")
            .await
            .expect("write");
        let deadline = Instant::now() + DEADLINE;
        while seen.windows(9).filter(|w| w == b"backend=a").count() <= i {
            let mut buf = [0u8; 4096];
            let left = deadline.saturating_duration_since(Instant::now());
            let n = tokio::time::timeout(left, s.read(&mut buf))
                .await
                .expect("an answer in time")
                .expect("read");
            assert!(n > 0, "closed early");
            seen.extend_from_slice(&buf[..n]);
        }
    }
    let took = closed_within(&mut s, Duration::from_secs(10)).await;
    assert!(
        took >= idle - Duration::from_millis(300) && took <= idle + Duration::from_millis(600),
        "idle for {idle:?} closed after {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_upgrade_smuggling_regression() {
    let a = Backend::start("a").await;
    let proxy = Proxy::start(routes(&[("a", &["a.localhost"], &[a.addr], false)]));
    let (status, text) = raw(
        proxy.addr,
        b"GET / HTTP/1.1\r\nHost: a.localhost\r\nConnection: Upgrade, HTTP2-Settings, close\r\n\
          Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let lower = text.to_ascii_lowercase();
    assert!(
        !lower.contains("\nupgrade:"),
        "the app saw the upgrade: {text}"
    );
    assert!(!lower.contains("http2-settings"), "{text}");
    // An app that would switch anyway never gets asked.
    let (status, text) = raw(
        proxy.addr,
        b"GET /ws HTTP/1.1\r\nHost: a.localhost\r\nConnection: Upgrade, close\r\nUpgrade: h2c\r\n\r\n",
    )
    .await;
    assert_ne!(status, 101, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_app_gets_gateway_timeout_regression() {
    assert_eq!(DEFAULT_RESPONSE_TIMEOUT, Duration::from_secs(60));
    let a = Backend::start("a").await;
    let routes = Routes::builder()
        .route(
            AppRoute::new(app_name("a"), vec![a.addr])
                .host("a.localhost", false)
                .response_timeout(Some(Duration::from_secs(1))),
        )
        .build();
    let proxy = Proxy::start(routes);
    let start = Instant::now();
    let r = curl(proxy.addr, "a.localhost", "/hang", &[]).await;
    let took = start.elapsed();
    assert_eq!(r.status, 504, "{r:?}");
    assert!(r.body.contains("504 Gateway Timeout"), "{}", r.body);
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "{took:?}"
    );
    // The connection to the app is not reused for the next request.
    let r = curl(proxy.addr, "a.localhost", "/", &[]).await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_requests_and_tunnels_are_counted_per_endpoint() {
    let a = Backend::start("a").await;
    let proxy = Proxy::start(routes(&[("a", &["a.localhost"], &[a.addr], false)]));
    assert_eq!(proxy.routes.in_flight(a.addr), 0);
    let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
    s.write_all(b"GET /stream HTTP/1.1\r\nHost: a.localhost\r\n\r\n")
        .await
        .expect("write");
    let mut seen = Vec::new();
    read_until(&mut s, &mut seen, b"first\n").await;
    assert_eq!(proxy.routes.in_flight(a.addr), 1);
    // The endpoint leaves the routes (a drain): the request still counts.
    proxy.routes.replace(Routes::empty());
    assert_eq!(proxy.routes.in_flight(a.addr), 1);
    a.release.notify_one();
    read_until(&mut s, &mut seen, b"second\n").await;
    wait_until(|| proxy.routes.in_flight(a.addr) == 0).await;

    // An upgraded connection counts for as long as it is open.
    proxy
        .routes
        .replace(routes(&[("a", &["a.localhost"], &[a.addr], false)]));
    let mut ws = TcpStream::connect(proxy.addr).await.expect("connect");
    ws.write_all(b"GET /ws HTTP/1.1\r\nHost: a.localhost\r\nConnection: upgrade\r\nUpgrade: cygni-echo\r\n\r\n")
        .await
        .expect("write");
    let mut seen = Vec::new();
    read_until(&mut ws, &mut seen, b"\r\n\r\n").await;
    ws.write_all(b"ping").await.expect("write");
    read_until(&mut ws, &mut seen, b"PING").await;
    assert_eq!(proxy.routes.in_flight(a.addr), 1);
    drop(ws);
    wait_until(|| proxy.routes.in_flight(a.addr) == 0).await;
}

async fn wait_until(mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !f() {
        assert!(Instant::now() < deadline, "condition not met in time");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_redirect_is_per_host_regression() {
    let a = Backend::start("a").await;
    // The local default host has no certificate; the custom domain has one.
    let routes = Routes::builder()
        .route(
            AppRoute::new(app_name("a"), vec![a.addr])
                .host("a.localhost", false)
                .host("shop.example.com", true),
        )
        .build();
    let proxy = Proxy::start(routes);
    let r = curl(proxy.addr, "shop.example.com", "/cart?x=1", &[]).await;
    assert_eq!(r.status, 308, "{r:?}");
    assert_eq!(
        r.header("location"),
        Some("https://shop.example.com/cart?x=1")
    );
    let r = curl(proxy.addr, "a.localhost", "/", &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
}

// ------------------------------------------------- the direct path, raw apps

/// A test app that speaks HTTP/1.1 by hand, so a test can send framings
/// and failures hyper's server never would. Each connection reads request
/// heads and answers by path; `accepted` counts its connections.
struct RawApp {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
}

impl RawApp {
    async fn start() -> RawApp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind raw app");
        let addr = listener.local_addr().expect("raw app addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (a, r) = (Arc::clone(&accepted), Arc::clone(&requests));
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(raw_app_connection(stream, Arc::clone(&r)));
            }
        });
        RawApp {
            addr,
            accepted,
            requests,
        }
    }
}

async fn raw_app_connection(mut stream: TcpStream, requests: Arc<AtomicUsize>) {
    let mut buf = Vec::new();
    let mut on_this_connection = 0;
    loop {
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end + 4);
        requests.fetch_add(1, Ordering::SeqCst);
        on_this_connection += 1;
        let mut words = head.split_whitespace();
        let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        let head_only = method == "HEAD";
        let out: &[&[u8]] = match path {
            "/length" => &[
                b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello",
                b" world",
            ],
            "/chunked" => &[
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
                b"lo\r\n6;x=y\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
            ],
            "/close" => &[
                b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil ",
                b"the close",
            ],
            "/not-modified" => &[b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\n\r\n"],
            "/early-hints" => &[
                b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            ],
            "/garbage" => &[b"this is not HTTP\r\n\r\n"],
            "/truncated" => &[b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this"],
            // The keep-alive race: the second request on a connection is
            // read, then the connection closes with no answer, as when an
            // app's keep-alive timeout fires just as the proxy reuses it.
            "/racy" if on_this_connection >= 2 => return,
            "/racy" => &[b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nracy"],
            _ => &[b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"],
        };
        for (i, part) in out.iter().enumerate() {
            let part = if head_only && i == 0 {
                // HEAD: the head only, with the GET's Content-Length.
                let end = part
                    .windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .map_or(part.len(), |e| e + 4);
                &part[..end]
            } else if head_only {
                break;
            } else {
                part
            };
            if stream.write_all(part).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if matches!(path, "/close" | "/garbage" | "/truncated") {
            return;
        }
    }
}

/// One worker, so one connection pool: the tests count the app's sockets.
fn one_worker_proxy(app: &RawApp) -> Proxy {
    Proxy::start_with(
        routes(&[("raw", &["raw.localhost"], &[app.addr], false)]),
        ProxyConfig {
            workers: 1,
            ..test_config()
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_path_relays_every_response_framing() {
    let app = RawApp::start().await;
    let proxy = one_worker_proxy(&app);
    let host = "raw.localhost";

    let r = curl(proxy.addr, host, "/length", &[]).await;
    assert_eq!((r.status, r.body.as_str()), (200, "hello world"));
    assert_eq!(r.header("content-length"), Some("11"));

    let r = curl(proxy.addr, host, "/chunked", &[]).await;
    assert_eq!((r.status, r.body.as_str()), (200, "hello world"));
    assert_eq!(r.header("content-length"), None);

    let r = curl(proxy.addr, host, "/close", &[]).await;
    assert_eq!((r.status, r.body.as_str()), (200, "until the close"));

    let r = curl(proxy.addr, host, "/length", &["-I"]).await;
    assert_eq!((r.status, r.body.as_str()), (200, ""));
    assert_eq!(
        r.header("content-length"),
        Some("11"),
        "HEAD keeps the length"
    );

    let r = curl(proxy.addr, host, "/not-modified", &[]).await;
    assert_eq!((r.status, r.body.as_str()), (304, ""));
    assert_eq!(r.header("etag"), Some("\"v1\""));

    let r = curl(proxy.addr, host, "/early-hints", &[]).await;
    assert_eq!((r.status, r.body.as_str()), (200, "ok"), "{r:?}");

    // Responses that ended by their framing left the socket reusable; the
    // ones read to the close did not. So: /length, /chunked, HEAD,
    // /not-modified and /early-hints on one connection, /close on another.
    let accepted = app.accepted.load(Ordering::SeqCst);
    assert_eq!(accepted, 2, "sockets opened to the app");
    for _ in 0..5 {
        let r = curl(proxy.addr, host, "/length", &[]).await;
        assert_eq!(r.body, "hello world");
    }
    assert_eq!(app.accepted.load(Ordering::SeqCst), accepted, "kept alive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_closing_a_reused_connection_regression() {
    // Threat: the app's keep-alive timeout closes a pooled socket just as
    // the proxy sends a request on it; the client must not see a 502.
    let app = RawApp::start().await;
    let proxy = one_worker_proxy(&app);
    for round in 0..3 {
        let r = curl(proxy.addr, "raw.localhost", "/racy", &[]).await;
        assert_eq!((r.status, r.body.as_str()), (200, "racy"), "round {round}");
    }
    // Rounds 2 and 3 each met a closed socket and were sent again.
    assert_eq!(app.requests.load(Ordering::SeqCst), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_sending_garbage_or_a_short_body_regression() {
    let app = RawApp::start().await;
    let proxy = one_worker_proxy(&app);
    let r = curl(proxy.addr, "raw.localhost", "/garbage", &[]).await;
    assert_eq!(r.status, 502);
    assert!(r.body.contains("502 Bad Gateway"), "{}", r.body);
    assert!(!r.body.contains("not HTTP"), "nothing of the app's bytes");

    // A body cut short: the client's response is cut too, never padded or
    // passed as complete.
    let out = curl_raw(proxy.addr, "raw.localhost", "/truncated", &[]).await;
    assert!(!out.status.success(), "curl must see a transfer error");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.ends_with("only this"), "{text:?}");

    // The proxy still serves.
    let r = curl(proxy.addr, "raw.localhost", "/length", &[]).await;
    assert_eq!(r.body, "hello world");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_trickled_head_regression() {
    // Threat: a head sent one byte at a time, each well inside the idle
    // timeout, holds a connection for ever unless the whole head has a
    // deadline. The same deadline applies after a response: a kept-alive
    // connection that then trickles is cut too.
    let app = Backend::start("a").await;
    let config = ProxyConfig {
        header_read_timeout: Duration::from_millis(800),
        idle_timeout: Duration::from_secs(30),
        ..test_config()
    };
    let proxy = Proxy::start_with(
        routes(&[("a", &["a.localhost"], &[app.addr], false)]),
        config,
    );
    let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: a.localhost\r\n\r\n")
        .await
        .expect("write");
    let mut seen = Vec::new();
    read_until(&mut s, &mut seen, b"backend=a").await;
    let start = Instant::now();
    let trickle = async {
        for b in b"GET / HTTP/1.1\r\nHost: a.localhost\r\nX-Slow: "
            .iter()
            .cycle()
        {
            if s.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            if start.elapsed() > Duration::from_secs(10) {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(12), trickle).await;
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(600) && took < Duration::from_secs(3),
        "the trickled head was cut after {took:?}, not at about 0.8 s"
    );
    assert_eq!(app.hits(), 1, "the trickled request never reached the app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_response_is_not_cut_by_the_header_deadline() {
    // A stream that outlasts the header-read deadline (SSE, long polls):
    // the deadline only counts while the connection waits for a head.
    let a = Backend::start("a").await;
    let config = ProxyConfig {
        header_read_timeout: Duration::from_millis(500),
        ..test_config()
    };
    let proxy = Proxy::start_with(routes(&[("a", &["a.localhost"], &[a.addr], false)]), config);
    let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
    s.write_all(b"GET /stream HTTP/1.1\r\nHost: a.localhost\r\n\r\n")
        .await
        .expect("write");
    let mut seen = Vec::new();
    read_until(&mut s, &mut seen, b"first\n").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    a.release.notify_one();
    read_until(&mut s, &mut seen, b"second\n").await;
    // Then the connection is ready for the next head, and the deadline
    // applies again.
    let took = closed_within(&mut s, Duration::from_secs(5)).await;
    assert!(
        took < Duration::from_secs(2),
        "idle after its response: {took:?}"
    );
}
