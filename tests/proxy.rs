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
use cygni::proxy::{serve_http, Challenges, ProxyConfig, ProxyError, RouteTable, Routes};
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
