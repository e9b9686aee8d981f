//! Response bodies for the API: whole ones, and streams fed by a channel
//! (logs as Server-Sent Events, build output, git's packs).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame};
use hyper::{header, Response, StatusCode};
use tokio::sync::mpsc;

use crate::proxy::ControlBody;

pub fn full(bytes: impl Into<Bytes>) -> ControlBody {
    Full::new(bytes.into())
        .map_err(|never: std::convert::Infallible| match never {})
        .boxed()
}

pub fn empty() -> ControlBody {
    full(Bytes::new())
}

pub fn json_text(status: StatusCode, text: impl Into<Bytes>) -> Response<ControlBody> {
    let mut resp = Response::new(full(text));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

pub fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Response<ControlBody> {
    match serde_json::to_vec(value) {
        Ok(v) => json_text(status, v),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode a response");
            json_text(
                StatusCode::INTERNAL_SERVER_ERROR,
                r#"{"id":"internal_error","message":"cannot encode the response"}"#,
            )
        }
    }
}

/// A body that yields what is sent on the channel until every sender is
/// gone.
pub struct ChannelBody(pub mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

/// A streamed response and the sender that feeds it.
pub fn stream(
    status: StatusCode,
    content_type: &'static str,
) -> (Response<ControlBody>, mpsc::Sender<Bytes>) {
    let (tx, rx) = mpsc::channel(64);
    let mut resp = Response::new(ChannelBody(rx).boxed());
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache"),
    );
    (resp, tx)
}
