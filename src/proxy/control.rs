//! The control host (`cygni.DOMAIN`): requests for it leave the app path
//! and go to Cygni's own HTTP service (the API, git over HTTPS), which
//! implements [`Control`] outside the proxy.
//!
//! The check costs app traffic nothing: it runs only when a Host matched
//! no app route, where the proxy would otherwise answer 404.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::{Request, Response};

/// A control response body: anything, streamed (logs, git packs).
pub type ControlBody = BoxBody<Bytes, hyper::Error>;

/// One request for the control host, with what the proxy knows of it.
pub struct ControlRequest {
    pub req: Request<Incoming>,
    pub peer: SocketAddr,
    /// It came over TLS.
    pub https: bool,
}

pub type ControlFuture = Pin<Box<dyn Future<Output = Response<ControlBody>> + Send>>;

pub trait Control: Send + Sync + 'static {
    /// The control host, normalized: lowercase ASCII, no port.
    fn host(&self) -> &str;
    fn serve(&self, req: ControlRequest) -> ControlFuture;
}

/// The proxy's handle on the control service.
#[derive(Clone)]
pub struct ControlHook(pub Arc<dyn Control>);

impl std::fmt::Debug for ControlHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ControlHook").field(&self.0.host()).finish()
    }
}
