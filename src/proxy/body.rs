//! Bodies through the proxy: an app's response body streamed through as
//! it arrives, a small fixed page the proxy writes itself, and a client's
//! request body on its way to the app under a minimum-rate deadline.
//!
//! Enums and plain structs rather than boxed `dyn Body`: no allocation and
//! no dynamic dispatch per frame.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::{Instant, Sleep};

use super::forward::ConnState;
use super::pool::{Pool, Sender};
use super::routes::InFlight;

pub(crate) enum ProxyBody {
    /// Through hyper's client: requests with a body, and upgrades.
    Upstream(UpstreamBody),
    /// Read straight off the app's socket (see [`super::upstream`]).
    Raw(super::upstream::RawBody),
    Full(Option<Bytes>),
    /// Cygni's own responses on the control host (API, git over HTTPS).
    Control(super::ControlBody),
}

impl ProxyBody {
    pub(crate) fn full(bytes: impl Into<Bytes>) -> ProxyBody {
        ProxyBody::Full(Some(bytes.into()))
    }

    pub(crate) fn empty() -> ProxyBody {
        ProxyBody::Full(None)
    }
}

/// What a client connection's service answers with: the body, and the
/// guard that restarts the connection's header-read clock once hyper is
/// done with it (written out, or the connection gone).
pub(crate) struct ResponseBody {
    inner: ProxyBody,
    _responding: Responding,
}

impl ResponseBody {
    pub(crate) fn new(inner: ProxyBody, responding: Responding) -> ResponseBody {
        ResponseBody {
            inner,
            _responding: responding,
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// One request being answered on a connection, from its complete head to
/// its response body's drop. When the last one ends, the connection is
/// ready for the next head and its header-read clock starts.
pub(crate) struct Responding {
    state: Arc<ConnState>,
    clock: Arc<AtomicU64>,
}

impl Responding {
    pub(crate) fn start(state: &Arc<ConnState>, clock: &Arc<AtomicU64>) -> Responding {
        state.head_since.store(0, Ordering::Relaxed);
        state.responding.fetch_add(1, Ordering::Relaxed);
        Responding {
            state: Arc::clone(state),
            clock: Arc::clone(clock),
        }
    }
}

impl Drop for Responding {
    fn drop(&mut self) {
        if self.state.responding.fetch_sub(1, Ordering::Relaxed) == 1 {
            let now = self.clock.load(Ordering::Relaxed);
            self.state.head_since.store(now + 1, Ordering::Relaxed);
        }
    }
}

/// An app's response body, passed through frame by frame (never buffered).
/// Holds the connection it came on, and gives it back to the pool once the
/// body has been read to the end: only then is an HTTP/1.1 connection free
/// for the next request.
pub(crate) struct UpstreamBody {
    body: Incoming,
    done: bool,
    /// Kept alive until the body ends: the connection must outlive the
    /// response it is still delivering.
    sender: Option<Sender>,
    /// Where to give the connection back; `None` for connections that must
    /// not be reused (opened for an upgrade).
    pool: Option<Arc<Pool>>,
    addr: SocketAddr,
    /// The request stays in flight to `addr` until its body is done.
    _in_flight: InFlight,
}

impl UpstreamBody {
    pub(crate) fn new(
        body: Incoming,
        sender: Sender,
        pool: Option<Arc<Pool>>,
        addr: SocketAddr,
        in_flight: InFlight,
    ) -> Self {
        UpstreamBody {
            body,
            done: false,
            sender: Some(sender),
            pool,
            addr,
            _in_flight: in_flight,
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // A body dropped half-read (client went away) leaves the connection
        // mid-response; dropping the sender lets hyper close it.
        if self.done || self.body.is_end_stream() {
            if let (Some(pool), Some(sender)) = (self.pool.take(), self.sender.take()) {
                pool.checkin(self.addr, sender);
            }
        }
    }
}

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Upstream(up) => {
                let polled = Pin::new(&mut up.body).poll_frame(cx);
                if let Poll::Ready(None) = polled {
                    up.done = true;
                }
                polled.map(|frame| frame.map(|r| r.map_err(Into::into)))
            }
            ProxyBody::Raw(raw) => Pin::new(raw).poll_frame(cx),
            ProxyBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::Control(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|frame| frame.map(|r| r.map_err(Into::into))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream(up) => up.done || up.body.is_end_stream(),
            ProxyBody::Raw(raw) => raw.is_end_stream(),
            ProxyBody::Full(bytes) => bytes.is_none(),
            ProxyBody::Control(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream(up) => up.body.size_hint(),
            ProxyBody::Raw(raw) => raw.size_hint(),
            ProxyBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ProxyBody::Full(None) => SizeHint::with_exact(0),
            ProxyBody::Control(body) => body.size_hint(),
        }
    }
}

/// How slow a request body may be: it must have arrived whole by
/// `grace` after the request was forwarded, plus one second for every
/// `min_rate` bytes received (Apache's `mod_reqtimeout` rule). A body
/// trickled one byte every few seconds is cut off after about `grace`; a
/// large upload at any reasonable speed keeps extending its deadline.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyRate {
    pub(crate) grace: Duration,
    /// Bytes per second; 0 turns the check off.
    pub(crate) min_rate: u64,
}

/// The error a request body ends with when its client is too slow; the
/// forwarding code finds it in hyper's error chain and answers 408.
#[derive(Debug, thiserror::Error)]
#[error("the client sent its request body too slowly")]
pub(crate) struct BodyTooSlow;

/// A client's request body on its way to the app. Empty bodies (most
/// requests) and bodies already whole pass with no timer at all; the
/// deadline's timer is made on the first wait for the client.
pub(crate) struct RequestBody {
    inner: Incoming,
    rate: Option<Deadline>,
    /// While set, the connection counts one upload in progress: its idle
    /// timer then applies even though a request waits on the app.
    uploading: Option<Arc<ConnState>>,
}

struct Deadline {
    at: Instant,
    min_rate: u64,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl RequestBody {
    pub(crate) fn new(inner: Incoming, rate: BodyRate, conn: &Arc<ConnState>) -> RequestBody {
        if inner.is_end_stream() {
            return RequestBody {
                inner,
                rate: None,
                uploading: None,
            };
        }
        let rate = (rate.min_rate > 0).then(|| Deadline {
            at: Instant::now() + rate.grace,
            min_rate: rate.min_rate,
            sleep: None,
        });
        conn.uploading
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        RequestBody {
            inner,
            rate,
            uploading: Some(Arc::clone(conn)),
        }
    }

    fn done_uploading(&mut self) {
        if let Some(conn) = self.uploading.take() {
            conn.uploading
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        self.done_uploading();
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(d), Some(data)) = (&mut this.rate, frame.data_ref()) {
                    let nanos = (data.len() as u64).saturating_mul(1_000_000_000) / d.min_rate;
                    d.at += Duration::from_nanos(nanos);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.done_uploading();
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                this.done_uploading();
                Poll::Ready(None)
            }
            Poll::Pending => {
                let Some(d) = &mut this.rate else {
                    return Poll::Pending;
                };
                let at = d.at;
                let sleep = d
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
                if sleep.deadline() != at {
                    sleep.as_mut().reset(at);
                }
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        this.done_uploading();
                        Poll::Ready(Some(Err(Box::new(BodyTooSlow))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
