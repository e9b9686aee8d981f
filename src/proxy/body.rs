//! Response bodies the proxy sends: an app's body streamed through as it
//! arrives, or a small fixed page the proxy writes itself.
//!
//! An enum rather than a boxed `dyn Body`: no allocation and no dynamic
//! dispatch per frame.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::pool::{Pool, Sender};

pub(crate) enum ProxyBody {
    Upstream(UpstreamBody),
    Full(Option<Bytes>),
}

impl ProxyBody {
    pub(crate) fn full(bytes: impl Into<Bytes>) -> ProxyBody {
        ProxyBody::Full(Some(bytes.into()))
    }

    pub(crate) fn empty() -> ProxyBody {
        ProxyBody::Full(None)
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
}

impl UpstreamBody {
    pub(crate) fn new(
        body: Incoming,
        sender: Sender,
        pool: Option<Arc<Pool>>,
        addr: SocketAddr,
    ) -> Self {
        UpstreamBody {
            body,
            done: false,
            sender: Some(sender),
            pool,
            addr,
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

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ProxyBody::Upstream(up) => {
                let polled = Pin::new(&mut up.body).poll_frame(cx);
                if let Poll::Ready(None) = polled {
                    up.done = true;
                }
                polled
            }
            ProxyBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream(up) => up.done || up.body.is_end_stream(),
            ProxyBody::Full(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream(up) => up.body.size_hint(),
            ProxyBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ProxyBody::Full(None) => SizeHint::with_exact(0),
        }
    }
}
