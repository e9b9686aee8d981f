//! The metrics listener (`--metrics-listen`, loopback by default):
//! `/metrics`, `/healthz`, `/readyz`, and 404 for anything else.
//!
//! Plain HTTP/1.1 on the main runtime, at most [`MAX_CONNECTIONS`] at
//! once, each with a header-read timeout: it is for a local Prometheus or
//! a supervisor, not for the internet (the control host serves the same
//! answers behind a token).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Health, Metrics, CONTENT_TYPE as METRICS_TYPE};

/// Connections served at once; more wait in the backlog.
pub const MAX_CONNECTIONS: usize = 32;

const TEXT: &str = "text/plain; charset=utf-8";

/// Answer one request on the metrics listener.
pub async fn respond(
    metrics: &Arc<Metrics>,
    health: &Health,
    method: &Method,
    path: &str,
) -> (StatusCode, &'static str, String) {
    if method != Method::GET && method != Method::HEAD {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            TEXT,
            "only GET and HEAD\n".into(),
        );
    }
    match path {
        "/metrics" => (StatusCode::OK, METRICS_TYPE, metrics.render().await),
        "/healthz" => answer(health.healthz()),
        "/readyz" => answer(health.readyz().await),
        _ => (
            StatusCode::NOT_FOUND,
            TEXT,
            "not found: try /metrics, /healthz or /readyz\n".into(),
        ),
    }
}

fn answer(a: super::health::Answer) -> (StatusCode, &'static str, String) {
    let status = StatusCode::from_u16(a.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, TEXT, a.body)
}

/// Serve until `shutdown`, then let open requests finish (bounded).
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: CancellationToken,
) {
    let tracker = TaskTracker::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (metrics, health) = (metrics.clone(), health.clone());
        let stop = shutdown.clone();
        tracker.spawn(async move {
            let _permit = permit;
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let (metrics, health) = (metrics.clone(), health.clone());
                async move {
                    let (status, kind, body) =
                        respond(&metrics, &health, req.method(), req.uri().path()).await;
                    let body = if req.method() == Method::HEAD {
                        Bytes::new()
                    } else {
                        Bytes::from(body)
                    };
                    let mut resp = Response::new(Full::new(body));
                    *resp.status_mut() = status;
                    resp.headers_mut()
                        .insert(CONTENT_TYPE, HeaderValue::from_static(kind));
                    resp.headers_mut()
                        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
                    Ok::<_, std::convert::Infallible>(resp)
                }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => if let Err(e) = r {
                    tracing::debug!(client = %peer, error = %e, "metrics connection ended");
                },
                () = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                }
            }
        });
    }
    tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(6), tracker.wait()).await;
}
