//! The direct path to an app: a request without a body is written, and its
//! response read, by the client connection's own task.
//!
//! ```text
//! GET/HEAD/OPTIONS, no body, no upgrade
//!   ──► pool.get_raw(addr)  (a kept-alive socket, or a new one)
//!   ──► write the request head (one write)
//!   ──► read + parse the response head (httparse; 1xx skipped)
//!   ──► body already in the buffer? ──► yes: socket back to the pool now,
//!                                         the response carries the bytes
//!                                   └─► no: RawBody reads the rest as
//!                                         hyper polls it, then gives the
//!                                         socket back
//! ```
//!
//! Why a second client beside hyper's: hyper's HTTP/1 client runs each
//! connection as a task of its own, so every request crosses tasks three
//! times (the request over a channel, the response head over a oneshot,
//! the body over another channel), each with its own allocation and
//! wake-up. That was the difference between Cygni's CPU per request and
//! nginx's, which does the whole exchange in one event handler. Requests
//! with a body, and upgrades, still go through hyper's client
//! ([`super::pool::Pool::get`]): streaming a body up while a response may
//! already come down is where hyper earns its keep.
//!
//! Framing follows RFC 9112 section 6.3: no body for HEAD, 1xx, 204 and
//! 304; `Transfer-Encoding` with `chunked` last is decoded here (hyper
//! re-chunks it for the client); any other transfer coding, or no length
//! at all, reads to the close; conflicting `Content-Length` values are an
//! error. A socket goes back to the pool only after a body that ended by
//! its own framing, on an HTTP/1.1 response without `Connection: close`.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Version};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::body::BoxError;
use super::pool::Pool;
use super::routes::InFlight;

/// Response headers parsed at most; hyper's client default.
const MAX_HEADERS: usize = 100;

/// A response head larger than this is refused (hyper's client allows
/// about 400 KiB; nginx's proxy_buffer_size is 4 to 8 KiB).
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// What is read at a time.
const READ_CHUNK: usize = 16 * 1024;

/// A chunk-size line longer than this is refused.
const MAX_CHUNK_LINE: usize = 1024;

/// Trailer bytes read (and dropped) at most after the last chunk.
const MAX_TRAILER_BYTES: usize = 16 * 1024;

/// What went wrong talking to an app on the direct path.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamFault {
    #[error("connection error")]
    Io(#[from] io::Error),
    #[error("the app closed the connection before a complete response head")]
    ClosedBeforeHead,
    #[error("the app closed the connection before the end of the body")]
    ClosedInBody,
    #[error("response head larger than {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    #[error("malformed response head: {0}")]
    Malformed(&'static str),
    #[error("malformed chunked body: {0}")]
    BadChunk(&'static str),
}

impl UpstreamFault {
    /// Nothing of a response arrived: on a reused connection this is the
    /// app's keep-alive timeout racing our reuse, and the request may go
    /// again on a new connection.
    pub(crate) fn before_response(&self) -> bool {
        match self {
            UpstreamFault::ClosedBeforeHead => true,
            UpstreamFault::Io(e) => matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::UnexpectedEof
            ),
            _ => false,
        }
    }
}

/// A kept-alive socket to an app endpoint, with the bytes read past the
/// last response (none, with a well-behaved app).
pub(crate) struct RawConn {
    pub(crate) stream: TcpStream,
    buf: BytesMut,
}

impl RawConn {
    pub(crate) fn new(stream: TcpStream) -> RawConn {
        RawConn {
            stream,
            buf: BytesMut::new(),
        }
    }

    /// Clean to reuse: nothing left over from the last response.
    pub(crate) fn is_clean(&self) -> bool {
        self.buf.is_empty()
    }
}

/// Whether a request takes the direct path: safe to resend (so a reused
/// socket the app just closed can be retried), no body, no upgrade.
pub(crate) fn eligible<B: Body>(req: &Request<B>, upgrade: bool) -> bool {
    !upgrade
        && matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS)
        && req.body().is_end_stream()
}

/// The request head as the app gets it, written once and reused for a
/// resend.
pub(crate) fn encode_request<B>(req: &Request<B>) -> Vec<u8> {
    let path = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let size = req
        .headers()
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + req.method().as_str().len()
        + path.len()
        + 13;
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// How the body after a response head ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    Close,
}

/// A parsed response head, its framing, and whether the socket may carry
/// another request after the body.
pub(crate) struct Head {
    pub(crate) response: Response<()>,
    framing: Framing,
    keep_alive: bool,
}

/// Write `request` and read the response head, skipping 1xx responses.
pub(crate) async fn exchange(
    conn: &mut RawConn,
    request: &[u8],
    method: &Method,
) -> Result<Head, UpstreamFault> {
    conn.stream.write_all(request).await?;
    loop {
        if let Some(head) = parse_head(&mut conn.buf, method)? {
            return Ok(head);
        }
        if conn.buf.len() >= MAX_HEAD_BYTES {
            return Err(UpstreamFault::HeadTooLarge);
        }
        conn.buf.reserve(READ_CHUNK);
        let n = tokio::io::AsyncReadExt::read_buf(&mut conn.stream, &mut conn.buf).await?;
        if n == 0 {
            return Err(UpstreamFault::ClosedBeforeHead);
        }
    }
}

/// Parse one response head off the front of `buf`. `None`: incomplete.
/// 1xx heads are consumed and skipped (hyper's client drops them too).
fn parse_head(buf: &mut BytesMut, method: &Method) -> Result<Option<Head>, UpstreamFault> {
    loop {
        if buf.is_empty() {
            return Ok(None);
        }
        // Header positions, taken while `buf` is borrowed by httparse, so
        // the values can then share one frozen copy of the head.
        let mut spans = [(0usize, 0usize, 0usize, 0usize); MAX_HEADERS];
        let (len, code, minor, count) = {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut parsed = httparse::Response::new(&mut headers);
            let len = match parsed.parse(buf) {
                Ok(httparse::Status::Complete(len)) => len,
                Ok(httparse::Status::Partial) => return Ok(None),
                Err(httparse::Error::TooManyHeaders) => {
                    return Err(UpstreamFault::Malformed("too many headers"))
                }
                Err(_) => return Err(UpstreamFault::Malformed("not an HTTP/1.x response")),
            };
            let base = buf.as_ptr() as usize;
            for (span, h) in spans.iter_mut().zip(parsed.headers.iter()) {
                let n = h.name.as_ptr() as usize - base;
                let v = h.value.as_ptr() as usize - base;
                *span = (n, n + h.name.len(), v, v + h.value.len());
            }
            (
                len,
                parsed.code.unwrap_or(0),
                parsed.version.unwrap_or(1),
                parsed.headers.len(),
            )
        };
        let head = buf.split_to(len).freeze();
        let status = StatusCode::from_u16(code)
            .map_err(|_| UpstreamFault::Malformed("invalid status code"))?;
        if status.is_informational() {
            if status == StatusCode::SWITCHING_PROTOCOLS {
                return Err(UpstreamFault::Malformed("switched protocols unasked"));
            }
            continue;
        }
        let mut headers = HeaderMap::with_capacity(count);
        for &(n0, n1, v0, v1) in &spans[..count] {
            let name = HeaderName::from_bytes(&head[n0..n1])
                .map_err(|_| UpstreamFault::Malformed("invalid header name"))?;
            let value = HeaderValue::from_maybe_shared(head.slice(v0..v1))
                .map_err(|_| UpstreamFault::Malformed("invalid header value"))?;
            headers.append(name, value);
        }
        let (framing, keep_alive) = framing(&headers, status, method, minor)?;
        let mut response = Response::new(());
        *response.status_mut() = status;
        *response.version_mut() = Version::HTTP_11;
        if framing == Framing::Chunked {
            // Decoded here; hyper frames the body for the client itself.
            headers.remove(header::CONTENT_LENGTH);
        }
        *response.headers_mut() = headers;
        return Ok(Some(Head {
            response,
            framing,
            keep_alive,
        }));
    }
}

/// RFC 9112 section 6.3, and whether the connection persists (9.3).
fn framing(
    headers: &HeaderMap,
    status: StatusCode,
    method: &Method,
    minor: u8,
) -> Result<(Framing, bool), UpstreamFault> {
    let mut close = minor == 0;
    for v in headers.get_all(header::CONNECTION) {
        for token in v.as_bytes().split(|&b| b == b',') {
            let token = token.trim_ascii();
            if token.eq_ignore_ascii_case(b"close") {
                close = true;
            } else if minor == 0 && token.eq_ignore_ascii_case(b"keep-alive") {
                close = false;
            }
        }
    }
    if *method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok((Framing::Empty, !close));
    }
    let mut codings = headers.get_all(header::TRANSFER_ENCODING).iter().peekable();
    if codings.peek().is_some() {
        let last = codings
            .last()
            .and_then(|v| v.as_bytes().rsplit(|&b| b == b',').next())
            .map(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"))
            .unwrap_or(false);
        return Ok(if last && minor == 1 {
            (Framing::Chunked, !close)
        } else {
            (Framing::Close, false)
        });
    }
    let mut length = None;
    for v in headers.get_all(header::CONTENT_LENGTH) {
        for part in v.as_bytes().split(|&b| b == b',') {
            let part = part.trim_ascii();
            if part.is_empty() || !part.iter().all(u8::is_ascii_digit) || part.len() > 19 {
                return Err(UpstreamFault::Malformed("invalid Content-Length"));
            }
            let n: u64 = std::str::from_utf8(part)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or(UpstreamFault::Malformed("invalid Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(UpstreamFault::Malformed("conflicting Content-Length"));
            }
            length = Some(n);
        }
    }
    Ok(match length {
        Some(0) => (Framing::Empty, !close),
        Some(n) => (Framing::Length(n), !close),
        None => (Framing::Close, false),
    })
}

/// Where a body is, once its head is parsed.
pub(crate) enum Ready {
    /// The whole body is in hand; the socket has gone back to the pool
    /// (or been closed).
    Whole(Option<Bytes>),
    /// The rest has to be read.
    Streaming(RawBody),
}

/// Take the body that is already buffered, if that is all of it; else a
/// [`RawBody`] that reads the rest.
pub(crate) fn body(
    head: &Head,
    mut conn: RawConn,
    pool: &Arc<Pool>,
    addr: SocketAddr,
    in_flight: InFlight,
) -> Ready {
    match head.framing {
        Framing::Empty => {
            finish(conn, head.keep_alive, pool, addr);
            Ready::Whole(None)
        }
        Framing::Length(n) if conn.buf.len() as u64 >= n => {
            let bytes = conn.buf.split_to(n as usize).freeze();
            finish(conn, head.keep_alive, pool, addr);
            Ready::Whole(Some(bytes))
        }
        framing => Ready::Streaming(RawBody {
            conn: Some(conn),
            state: match framing {
                Framing::Length(n) => State::Length(n),
                Framing::Chunked => State::Chunked(Chunk::Size {
                    value: 0,
                    digits: 0,
                    line: 0,
                    ext: false,
                }),
                _ => State::Close,
            },
            keep_alive: head.keep_alive,
            pool: Arc::clone(pool),
            addr,
            in_flight: Some(in_flight),
        }),
    }
}

/// A body ended by its framing: the socket may carry the next request.
fn finish(conn: RawConn, keep_alive: bool, pool: &Pool, addr: SocketAddr) {
    if keep_alive && conn.is_clean() {
        pool.checkin_raw(addr, conn);
    }
}

/// The rest of a response body, read from the app's socket as hyper polls
/// for it.
pub(crate) struct RawBody {
    /// `None` once the body has ended.
    conn: Option<RawConn>,
    state: State,
    keep_alive: bool,
    pool: Arc<Pool>,
    addr: SocketAddr,
    /// The request stays in flight to `addr` until its body is done.
    in_flight: Option<InFlight>,
}

enum State {
    Length(u64),
    Chunked(Chunk),
    Close,
}

/// Where a chunked decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Reading a chunk-size line: its value so far, hex digits seen,
    /// bytes of the line seen, and whether an extension started.
    Size {
        value: u64,
        digits: u8,
        line: usize,
        ext: bool,
    },
    /// `n` data bytes left in this chunk.
    Data(u64),
    /// The CRLF after a chunk's data; `cr`: the CR was seen.
    DataEnd {
        cr: bool,
    },
    /// Trailer lines after the last chunk: bytes seen, and bytes in the
    /// current line (0: at a line start).
    Trailers {
        seen: usize,
        line: usize,
    },
    Done,
}

/// One step of the chunked decoder over `buf`.
enum Step {
    Data(Bytes),
    More,
    End,
}

fn decode_chunked(chunk: &mut Chunk, buf: &mut BytesMut) -> Result<Step, UpstreamFault> {
    loop {
        match *chunk {
            Chunk::Done => return Ok(Step::End),
            Chunk::Data(0) => *chunk = Chunk::DataEnd { cr: false },
            Chunk::Data(n) => {
                if buf.is_empty() {
                    return Ok(Step::More);
                }
                let take = (buf.len() as u64).min(n) as usize;
                *chunk = Chunk::Data(n - take as u64);
                return Ok(Step::Data(buf.split_to(take).freeze()));
            }
            _ => {
                if buf.is_empty() {
                    return Ok(Step::More);
                }
                let b = buf[0];
                buf.advance(1);
                *chunk = chunk_byte(*chunk, b)?;
            }
        }
    }
}

/// The decoder's next state after one byte outside chunk data.
fn chunk_byte(chunk: Chunk, b: u8) -> Result<Chunk, UpstreamFault> {
    Ok(match chunk {
        Chunk::Size {
            value,
            digits,
            line,
            ext,
        } => {
            if line >= MAX_CHUNK_LINE {
                return Err(UpstreamFault::BadChunk("chunk-size line too long"));
            }
            let line = line + 1;
            match b {
                b'\n' if digits == 0 => return Err(UpstreamFault::BadChunk("missing chunk size")),
                b'\n' if value == 0 => Chunk::Trailers { seen: 0, line: 0 },
                b'\n' => Chunk::Data(value),
                _ if ext => Chunk::Size {
                    value,
                    digits,
                    line,
                    ext,
                },
                b';' | b' ' | b'\t' | b'\r' => Chunk::Size {
                    value,
                    digits,
                    line,
                    ext: true,
                },
                _ => {
                    let digit = (b as char)
                        .to_digit(16)
                        .ok_or(UpstreamFault::BadChunk("invalid chunk size"))?;
                    if digits >= 15 {
                        return Err(UpstreamFault::BadChunk("chunk size too large"));
                    }
                    Chunk::Size {
                        value: value * 16 + u64::from(digit),
                        digits: digits + 1,
                        line,
                        ext,
                    }
                }
            }
        }
        Chunk::DataEnd { cr } => match b {
            b'\r' if !cr => Chunk::DataEnd { cr: true },
            b'\n' => Chunk::Size {
                value: 0,
                digits: 0,
                line: 0,
                ext: false,
            },
            _ => return Err(UpstreamFault::BadChunk("missing CRLF after chunk data")),
        },
        Chunk::Trailers { seen, line } => {
            if seen >= MAX_TRAILER_BYTES {
                return Err(UpstreamFault::BadChunk("trailers too large"));
            }
            match b {
                b'\n' if line == 0 => Chunk::Done,
                b'\n' => Chunk::Trailers {
                    seen: seen + 1,
                    line: 0,
                },
                // A CR alone does not start a line's content.
                b'\r' => Chunk::Trailers {
                    seen: seen + 1,
                    line,
                },
                _ => Chunk::Trailers {
                    seen: seen + 1,
                    line: line + 1,
                },
            }
        }
        Chunk::Data(_) | Chunk::Done => chunk,
    })
}

impl RawBody {
    /// The body ended by its framing.
    fn end(&mut self) {
        if let Some(conn) = self.conn.take() {
            finish(conn, self.keep_alive, &self.pool, self.addr);
        }
        self.in_flight = None;
    }

    /// Read more from the app into the buffer; `Ok(0)` at its close.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(Ok(0));
        };
        conn.buf.reserve(READ_CHUNK);
        tokio_util::io::poll_read_buf(Pin::new(&mut conn.stream), cx, &mut conn.buf)
    }
}

impl Body for RawBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match &mut this.state {
                State::Length(0) => {
                    this.end();
                    return Poll::Ready(None);
                }
                State::Length(left) => {
                    if !conn.buf.is_empty() {
                        let take = (conn.buf.len() as u64).min(*left) as usize;
                        *left -= take as u64;
                        let data = conn.buf.split_to(take).freeze();
                        if *left == 0 {
                            this.end();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                State::Close => {
                    if !conn.buf.is_empty() {
                        let data = conn.buf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                State::Chunked(chunk) => match decode_chunked(chunk, &mut conn.buf) {
                    Ok(Step::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Step::End) => {
                        this.end();
                        return Poll::Ready(None);
                    }
                    Ok(Step::More) => {}
                    Err(e) => {
                        this.conn = None;
                        return Poll::Ready(Some(Err(Box::new(e))));
                    }
                },
            }
            match std::task::ready!(this.poll_fill(cx)) {
                Ok(0) => {
                    if matches!(this.state, State::Close) {
                        // Read to the close: that is how this body ends,
                        // and the socket is done.
                        this.conn = None;
                        this.in_flight = None;
                        return Poll::Ready(None);
                    }
                    this.conn = None;
                    return Poll::Ready(Some(Err(Box::new(UpstreamFault::ClosedInBody))));
                }
                Ok(_) => {}
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(Box::new(UpstreamFault::Io(e)))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none() || matches!(self.state, State::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &[u8], method: &Method) -> Result<Option<Head>, UpstreamFault> {
        let mut buf = BytesMut::from(raw);
        parse_head(&mut buf, method)
    }

    fn chunked(input: &[u8]) -> Result<(Vec<u8>, bool), UpstreamFault> {
        // Fed one byte at a time: every state must survive a split.
        let mut chunk = Chunk::Size {
            value: 0,
            digits: 0,
            line: 0,
            ext: false,
        };
        let mut out = Vec::new();
        let mut buf = BytesMut::new();
        for &b in input {
            buf.extend_from_slice(&[b]);
            loop {
                match decode_chunked(&mut chunk, &mut buf)? {
                    Step::Data(d) => out.extend_from_slice(&d),
                    Step::More => break,
                    Step::End => return Ok((out, true)),
                }
            }
        }
        Ok((out, false))
    }

    #[test]
    fn parses_a_response_head_and_its_framing() {
        let h = head(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello",
            &Method::GET,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.response.status(), StatusCode::OK);
        assert_eq!(h.response.headers()["x-a"], "b");
        assert_eq!(h.framing, Framing::Length(5));
        assert!(h.keep_alive);
    }

    #[test]
    fn partial_heads_wait_for_more() {
        assert!(head(b"HTTP/1.1 200 OK\r\nContent-Le", &Method::GET)
            .unwrap()
            .is_none());
    }

    #[test]
    fn informational_responses_are_skipped() {
        let h = head(
            b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
            &Method::GET,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.response.status(), StatusCode::NO_CONTENT);
        assert_eq!(h.framing, Framing::Empty);
        assert!(head(b"HTTP/1.1 101 Switching\r\n\r\n", &Method::GET).is_err());
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let f = |raw: &[u8], m: &Method| {
            let h = head(raw, m).unwrap().unwrap();
            (h.framing, h.keep_alive)
        };
        assert_eq!(
            f(
                b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n",
                &Method::HEAD
            ),
            (Framing::Empty, true)
        );
        assert_eq!(
            f(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 3\r\n\r\n",
                &Method::GET
            ),
            (Framing::Chunked, true)
        );
        assert_eq!(
            f(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
                &Method::GET
            ),
            (Framing::Close, false)
        );
        assert_eq!(
            f(b"HTTP/1.1 200 OK\r\n\r\n", &Method::GET),
            (Framing::Close, false)
        );
        assert_eq!(
            f(
                b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n",
                &Method::GET
            ),
            (Framing::Length(1), false)
        );
        assert_eq!(
            f(
                b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n",
                &Method::GET
            ),
            (Framing::Length(1), false)
        );
        assert_eq!(
            f(
                b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n",
                &Method::GET
            ),
            (Framing::Length(1), true)
        );
        assert_eq!(
            f(
                b"HTTP/1.1 200 OK\r\nContent-Length: 4, 4\r\n\r\n",
                &Method::GET
            ),
            (Framing::Length(4), true)
        );
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
            b"SSH-2.0-OpenSSH\r\n\r\n",
        ] {
            assert!(
                head(bad, &Method::GET).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn chunked_bodies_decode_across_any_split() {
        let (body, ended) =
            chunked(b"5;ext=1\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\n")
                .unwrap();
        assert_eq!(body, b"hello 0123456789");
        assert!(ended);
        let (body, ended) = chunked(b"3\r\nabc\r\n").unwrap();
        assert_eq!((body.as_slice(), ended), (&b"abc"[..], false));
    }

    #[test]
    fn malformed_chunks_are_refused() {
        for bad in [
            &b"zz\r\n"[..],
            b"\r\n",
            b"3\r\nabcX",
            b"fffffffffffffffff\r\n",
        ] {
            assert!(chunked(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let long = [b'1'; 1]
            .iter()
            .chain(std::iter::repeat_n(&b';', MAX_CHUNK_LINE + 1))
            .copied()
            .collect::<Vec<u8>>();
        assert!(chunked(&long).is_err());
    }

    #[test]
    fn request_heads_are_origin_form_http_1_1() {
        let req = Request::builder()
            .method(Method::GET)
            .uri("/a?b=1")
            .header("host", "app.localhost")
            .header("x-request-id", "abc")
            .body(())
            .unwrap();
        assert_eq!(
            encode_request(&req),
            b"GET /a?b=1 HTTP/1.1\r\nhost: app.localhost\r\nx-request-id: abc\r\n\r\n"
        );
        assert!(eligible(
            &Request::get("/")
                .body(http_body_util::Empty::<Bytes>::new())
                .unwrap(),
            false
        ));
        assert!(!eligible(
            &Request::post("/")
                .body(http_body_util::Empty::<Bytes>::new())
                .unwrap(),
            false
        ));
        assert!(!eligible(
            &Request::get("/")
                .body(http_body_util::Empty::<Bytes>::new())
                .unwrap(),
            true
        ));
    }
}
