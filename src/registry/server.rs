//! The pull-only OCI distribution endpoint (`--registry-listen ADDR`).
//!
//! ```text
//! accept ─► (256 connections at most) ─► hyper HTTP/1.1 (headers ≤ 64 KiB within 10 s)
//!   request ─► Basic credential (else 401 UNAUTHORIZED + WWW-Authenticate)
//!           ─► GET / HEAD only (else 405 UNSUPPORTED: nothing is ever written)
//!           ─► /v2/                          200 {}
//!              /v2/APP/manifests/TAG|DIGEST  the stored bytes, its media type and digest
//!              /v2/APP/blobs/DIGEST          streamed from disk; Range → 206 / 416
//!              /v2/APP/tags/list             the app's tags
//!              anything else                 404
//! ```
//!
//! `APP` is parsed as an [`AppName`] before anything is looked up, and
//! digests as [`Digest`]s, so no request string reaches a path. A blob is
//! served under an app only if one of that app's tagged manifests names
//! it. Lookups read the layout's index snapshot; nothing here writes.

use std::convert::Infallible;
use std::io::SeekFrom;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::TryStreamExt;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::sync::CancellationToken;

use super::layout::{Digest, MAX_JSON};
use super::Registry;
use crate::names::AppName;

type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// Connections served at once; more are closed on accept.
const MAX_CONNECTIONS: usize = 256;
/// A request's head must arrive within this (idle keep-alive included).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Request heads (line and headers) larger than this are refused with
/// 431 (hyper checks between reads, so one large read may get up to twice
/// this through).
const MAX_HEAD: usize = 64 << 10;
/// Data sent but not acknowledged for this long ends the connection: a
/// client that stops reading a blob does not hold it for ever.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);
const API_VERSION: &str = "registry/2.0";

/// Serves the endpoint on `listener` until `shutdown`.
pub async fn serve(
    listener: std::net::TcpListener,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let conns = tokio_util::task::TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "registry accept");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "registry: too many connections; closing one");
            continue;
        };
        let _ = socket2::SockRef::from(&stream).set_tcp_user_timeout(Some(STALL_TIMEOUT));
        let (registry, shutdown) = (registry.clone(), shutdown.clone());
        conns.spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let registry = registry.clone();
                async move { Ok::<_, Infallible>(handle(&registry, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_HEAD)
                .max_header_size(MAX_HEAD)
                .serve_connection(TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "registry connection");
                    }
                }
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                }
            }
            drop(slot);
        });
    }
    conns.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), conns.wait()).await;
    Ok(())
}

/// The OCI error codes this endpoint answers with.
#[derive(Debug, Clone, Copy)]
enum Code {
    Unauthorized,
    Unsupported,
    NameUnknown,
    ManifestUnknown,
    BlobUnknown,
}

impl Code {
    fn parts(self) -> (StatusCode, &'static str, &'static str) {
        match self {
            Code::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "UNAUTHORIZED",
                "authentication required",
            ),
            Code::Unsupported => (
                StatusCode::METHOD_NOT_ALLOWED,
                "UNSUPPORTED",
                "this registry is pull-only: Cygni publishes images when it builds them",
            ),
            Code::NameUnknown => (
                StatusCode::NOT_FOUND,
                "NAME_UNKNOWN",
                "repository name not known to registry",
            ),
            Code::ManifestUnknown => (
                StatusCode::NOT_FOUND,
                "MANIFEST_UNKNOWN",
                "manifest unknown",
            ),
            Code::BlobUnknown => (
                StatusCode::NOT_FOUND,
                "BLOB_UNKNOWN",
                "blob unknown to registry",
            ),
        }
    }
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

fn empty() -> Body {
    Empty::new()
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

fn base(status: StatusCode) -> hyper::http::response::Builder {
    Response::builder()
        .status(status)
        .header("Docker-Distribution-API-Version", API_VERSION)
}

fn error(code: Code, head: bool) -> Response<Body> {
    let (status, name, message) = code.parts();
    let body = serde_json::json!({"errors": [{"code": name, "message": message, "detail": {}}]})
        .to_string();
    let mut b = base(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, body.len());
    match code {
        Code::Unauthorized => {
            b = b.header(header::WWW_AUTHENTICATE, "Basic realm=\"cygni\"");
        }
        Code::Unsupported => {
            b = b.header(header::ALLOW, "GET, HEAD");
        }
        _ => {}
    }
    let body = if head { empty() } else { full(body) };
    b.body(body).unwrap_or_else(|_| Response::new(empty()))
}

/// Whether the request carries our Basic credential.
fn authorized(registry: &Registry, req: &Request<Incoming>) -> bool {
    use base64::Engine;
    let Some(value) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some((scheme, encoded)) = value.trim().split_once(' ') else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return false;
    }
    match base64::engine::general_purpose::STANDARD.decode(encoded.trim()) {
        Ok(decoded) => registry.credential_matches(&decoded),
        Err(_) => false,
    }
}

async fn handle(registry: &Registry, req: Request<Incoming>) -> Response<Body> {
    let head = req.method() == Method::HEAD;
    if !authorized(registry, &req) {
        return error(Code::Unauthorized, head);
    }
    if req.method() != Method::GET && !head {
        tracing::info!(method = %req.method(), path = req.uri().path(), "registry: refused a write");
        return error(Code::Unsupported, false);
    }
    let path = req.uri().path();
    let Some(rest) = path.strip_prefix("/v2") else {
        return error(Code::NameUnknown, head);
    };
    if rest.is_empty() || rest == "/" {
        let body = "{}";
        return base(StatusCode::OK)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONTENT_LENGTH, body.len())
            .body(if head { empty() } else { full(body) })
            .unwrap_or_else(|_| Response::new(empty()));
    }
    let parts: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
    let (name, kind, reference) = match parts.as_slice() {
        [name, "tags", "list"] => (*name, "tags", ""),
        [name, kind @ ("manifests" | "blobs"), reference] => (*name, *kind, *reference),
        _ => return error(Code::NameUnknown, head),
    };
    // The edge: a name that is not an app name names nothing.
    let Ok(app) = AppName::parse(name) else {
        return error(Code::NameUnknown, head);
    };
    let index = registry.layout().index();
    let Some(images) = index.app(&app) else {
        return error(Code::NameUnknown, head);
    };
    match kind {
        "tags" => {
            let tags: Vec<&String> = images.tags.keys().collect();
            let body = serde_json::json!({"name": app, "tags": tags}).to_string();
            base(StatusCode::OK)
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::CONTENT_LENGTH, body.len())
                .body(if head { empty() } else { full(body) })
                .unwrap_or_else(|_| Response::new(empty()))
        }
        "manifests" => {
            let found = match Digest::parse(reference) {
                Some(d) => images.manifests.get(&d),
                None => images.tags.get(reference),
            };
            let Some(d) = found.cloned() else {
                return error(Code::ManifestUnknown, head);
            };
            if d.size > MAX_JSON {
                return error(Code::ManifestUnknown, head);
            }
            let path = registry.layout().blob_path(&d.digest);
            let bytes = match tokio::fs::read(&path).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "registry: a tagged manifest is unreadable");
                    return error(Code::ManifestUnknown, head);
                }
            };
            base(StatusCode::OK)
                .header(header::CONTENT_TYPE, d.media_type.as_str())
                .header("Docker-Content-Digest", d.digest.as_str())
                .header(header::ETAG, format!("\"{}\"", d.digest))
                .header(header::CONTENT_LENGTH, bytes.len())
                .body(if head { empty() } else { full(bytes) })
                .unwrap_or_else(|_| Response::new(empty()))
        }
        _ => {
            let Some(digest) = Digest::parse(reference) else {
                return error(Code::BlobUnknown, head);
            };
            if !images.blobs.contains(&digest) && !images.manifests.contains_key(&digest) {
                return error(Code::BlobUnknown, head);
            }
            let range = req.headers().get(header::RANGE).cloned();
            blob(registry, &digest, range.as_ref(), head).await
        }
    }
}

/// A blob from disk, whole or one byte range of it, streamed.
async fn blob(
    registry: &Registry,
    digest: &Digest,
    range: Option<&HeaderValue>,
    head: bool,
) -> Response<Body> {
    let path = registry.layout().blob_path(digest);
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "registry: a referenced blob is unreadable");
            return error(Code::BlobUnknown, head);
        }
    };
    let len = match file.metadata().await {
        Ok(m) => m.len(),
        Err(_) => return error(Code::BlobUnknown, head),
    };
    let mut status = StatusCode::OK;
    let (start, end) = match range.and_then(|r| r.to_str().ok()) {
        None => (0, len),
        Some(r) => match parse_range(r, len) {
            Range::Whole => (0, len),
            Range::Part(s, e) => {
                status = StatusCode::PARTIAL_CONTENT;
                (s, e)
            }
            Range::Unsatisfiable => {
                return base(StatusCode::RANGE_NOT_SATISFIABLE)
                    .header(header::CONTENT_RANGE, format!("bytes */{len}"))
                    .header(header::CONTENT_LENGTH, 0)
                    .body(empty())
                    .unwrap_or_else(|_| Response::new(empty()));
            }
        },
    };
    let mut b = base(status)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header("Docker-Content-Digest", digest.as_str())
        .header(header::ETAG, format!("\"{digest}\""))
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CONTENT_LENGTH, end - start);
    if status == StatusCode::PARTIAL_CONTENT {
        b = b.header(
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{len}", end - 1),
        );
    }
    if head {
        return b.body(empty()).unwrap_or_else(|_| Response::new(empty()));
    }
    if start > 0 && file.seek(SeekFrom::Start(start)).await.is_err() {
        return error(Code::BlobUnknown, head);
    }
    let stream = tokio_util::io::ReaderStream::with_capacity(file.take(end - start), 64 << 10)
        .map_ok(Frame::data);
    b.body(StreamBody::new(stream).boxed_unsync())
        .unwrap_or_else(|_| Response::new(empty()))
}

#[derive(Debug, PartialEq, Eq)]
enum Range {
    /// No usable range (or several): the whole blob, as RFC 9110 allows.
    Whole,
    /// `[start, end)`.
    Part(u64, u64),
    Unsatisfiable,
}

/// One `bytes=` range against a blob of `len` bytes.
fn parse_range(value: &str, len: u64) -> Range {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return Range::Whole;
    };
    if spec.contains(',') {
        return Range::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Range::Whole;
    };
    let num = |s: &str| -> Option<Option<u64>> {
        let s = s.trim();
        if s.is_empty() {
            Some(None)
        } else if s.bytes().all(|b| b.is_ascii_digit()) {
            s.parse().ok().map(Some)
        } else {
            None
        }
    };
    match (num(first), num(last)) {
        (Some(Some(start)), Some(end)) => {
            if start >= len {
                return Range::Unsatisfiable;
            }
            let end = match end {
                Some(e) if e < start => return Range::Whole,
                Some(e) => e.min(len - 1) + 1,
                None => len,
            };
            Range::Part(start, end)
        }
        (Some(None), Some(Some(suffix))) => {
            if suffix == 0 || len == 0 {
                return Range::Unsatisfiable;
            }
            Range::Part(len.saturating_sub(suffix), len)
        }
        _ => Range::Whole,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// One request on a fresh connection: (status, head, body).
    async fn request(port: u16, head: &str) -> (u16, String, Vec<u8>) {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        s.write_all(head.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.unwrap();
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
        let status = head[9..12].parse().unwrap();
        (status, head, raw[split + 4..].to_vec())
    }

    fn get(method: &str, path: &str, auth: Option<&str>, extra: &str) -> String {
        use base64::Engine;
        let auth = auth
            .map(|a| {
                format!(
                    "Authorization: Basic {}\r\n",
                    base64::engine::general_purpose::STANDARD.encode(a)
                )
            })
            .unwrap_or_default();
        format!("{method} {path} HTTP/1.1\r\nHost: r\r\n{auth}{extra}Connection: close\r\n\r\n")
    }

    /// The endpoint on its own (no engine): a stored image, real sockets.
    #[tokio::test]
    async fn the_endpoint_serves_pulls_and_refuses_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Arc::new(Registry::open(dir.path(), "127.0.0.1:0".into()).unwrap());
        let layer: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let m = super::super::layout::store_test_image(registry.layout(), &layer);
        let app = AppName::parse("shop").unwrap();
        registry.layout().tag(&app, "v1", m.clone()).unwrap();
        let cred = std::fs::read_to_string(dir.path().join(super::super::CREDENTIAL_FILE)).unwrap();
        let cred_text = cred.trim();
        let cred = Some(cred_text);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(listener, registry.clone(), shutdown.clone()));
        let layer_d = Digest::of(&layer);

        let (st, head, body) = request(port, &get("GET", "/v2/", cred, "")).await;
        assert_eq!((st, body.as_slice()), (200, &b"{}"[..]));
        assert!(
            head.contains("docker-distribution-api-version: registry/2.0"),
            "{head}"
        );
        let (st, head, body) = request(port, &get("GET", "/v2/shop/manifests/v1", cred, "")).await;
        assert_eq!(st, 200);
        assert_eq!(Digest::of(&body), m.digest);
        assert!(
            head.contains(&format!("docker-content-digest: {}", m.digest)),
            "{head}"
        );
        let path = format!("/v2/shop/blobs/{layer_d}");
        let (st, head, body) = request(port, &get("GET", &path, cred, "")).await;
        assert_eq!((st, body.len()), (200, layer.len()));
        assert_eq!(body, layer);
        assert!(head.contains("content-length: 100000"), "{head}");
        let (st, head, body) = request(port, &get("GET", &path, cred, "Range: bytes=-5\r\n")).await;
        assert_eq!((st, body.as_slice()), (206, &layer[99_995..]));
        assert!(
            head.contains("content-range: bytes 99995-99999/100000"),
            "{head}"
        );
        let (st, _, body) = request(port, &get("HEAD", &path, cred, "")).await;
        assert_eq!((st, body.len()), (200, 0));

        // Refusals, with the OCI codes.
        let code = |body: &[u8]| {
            let v: serde_json::Value = serde_json::from_slice(body).unwrap();
            v["errors"][0]["code"].as_str().unwrap().to_owned()
        };
        let wrong = format!("{cred_text}x");
        for auth in [None, Some("cygni:nope"), Some(wrong.as_str())] {
            let (st, head, body) = request(port, &get("GET", &path, auth, "")).await;
            assert_eq!((st, code(&body)), (401, "UNAUTHORIZED".into()));
            assert!(
                head.contains("www-authenticate: basic realm=\"cygni\""),
                "{head}"
            );
        }
        for method in ["POST", "PUT", "PATCH", "DELETE"] {
            let (st, _, body) =
                request(port, &get(method, "/v2/shop/blobs/uploads/", cred, "")).await;
            assert_eq!((st, code(&body)), (405, "UNSUPPORTED".into()), "{method}");
        }
        let other = format!("/v2/shop/blobs/{}", Digest::of(b"not stored"));
        for (path, wanted) in [
            ("/v2/shop/manifests/v2", "MANIFEST_UNKNOWN"),
            (other.as_str(), "BLOB_UNKNOWN"),
            ("/v2/blog/manifests/v1", "NAME_UNKNOWN"),
            ("/v2/../../etc/passwd", "NAME_UNKNOWN"),
        ] {
            let (st, _, body) = request(port, &get("GET", path, cred, "")).await;
            assert_eq!((st, code(&body)), (404, wanted.into()), "{path}");
        }
        shutdown.cancel();
        server.await.unwrap().unwrap();
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Range::Part(0, 10));
        assert_eq!(parse_range("bytes=90-", 100), Range::Part(90, 100));
        assert_eq!(parse_range("bytes=90-500", 100), Range::Part(90, 100));
        assert_eq!(parse_range("bytes=-10", 100), Range::Part(90, 100));
        assert_eq!(parse_range("bytes=-500", 100), Range::Part(0, 100));
        assert_eq!(parse_range("bytes=100-", 100), Range::Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), Range::Unsatisfiable);
        assert_eq!(parse_range("bytes=0-", 0), Range::Unsatisfiable);
        // Forms this endpoint does not serve get the whole blob.
        for whole in [
            "items=0-1",
            "bytes=0-1,5-6",
            "bytes=9-1",
            "bytes=a-b",
            "bytes=5",
        ] {
            assert_eq!(parse_range(whole, 100), Range::Whole, "{whole}");
        }
    }
}
