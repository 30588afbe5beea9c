//! gatehouse's HTTP/1.1 client side: one request at a time on a pooled upstream connection
//! (request path step 7).
//!
//! There is no task and no channel per connection. The request's future writes the request and
//! reads the response head itself; the response body is read from the socket by whoever polls it
//! (the client connection's task, while it writes the body to the client), and the connection goes
//! back to the worker's pool the moment its body's last byte is read. A read buffer is taken when
//! the socket has something to read and is released with the bytes it holds, so an idle
//! connection in the pool is a socket and nothing else — nginx's model, and the reason a thousand
//! proxied connections fit in a fraction of the memory that a per-connection client task with its
//! buffers and queues takes.
//!
//! Framing follows RFC 9112 strictly on the response side: a response with both `Content-Length`
//! and `Transfer-Encoding`, differing `Content-Length`s, a malformed chunk or a head over 64 KiB is
//! an error (502), never guessed at; a body delimited by the connection's close, or a response
//! that came before the request was fully sent, closes the connection after it.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version, header};
use http_body::{Body as _, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::proxy::body::{BodyError, UpstreamBody};
use crate::proxy::headers::has_token;

use super::PoolSettings;

/// The largest response head (status line and headers) accepted.
const MAX_HEAD: usize = 64 * 1024;
/// The most response headers accepted.
const MAX_HEADERS: usize = 128;
/// What one read asks the socket for, at most.
const READ_SIZE: usize = 8 * 1024;
/// The longest chunk-size line (with extensions) of a chunked body.
const MAX_CHUNK_LINE: usize = 4 * 1024;
/// The largest trailer section of a chunked body.
const MAX_TRAILERS: usize = 16 * 1024;
/// A body held in memory is sent in the same write as the head up to this size.
const COALESCE: usize = 16 * 1024;

/// Why an exchange or a response body failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the connection was closed before a response came")]
    Closed,
    #[error("writing the request failed: {0}")]
    Write(io::Error),
    #[error("reading the response failed: {0}")]
    Read(io::Error),
    #[error("malformed response head: {0}")]
    Head(&'static str),
    #[error("the response head is larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("malformed response body: {0}")]
    Body(&'static str),
    #[error("the connection was closed before the response body ended")]
    Truncated,
    #[error("{0}")]
    ClientBody(#[source] BodyError),
}

/// An upstream connection: the socket, or TLS over it.
pub enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Io {
    /// A connected socket made ready for HTTP: no Nagle delay, and with `tls` the handshake done
    /// (the certificate checked for `host`, unless the settings name another).
    pub async fn over(stream: TcpStream, host: &str, tls: Option<&super::tls::UpstreamTls>) -> io::Result<Io> {
        stream.set_nodelay(true)?;
        match tls {
            Some(tls) => Ok(Io::Tls(Box::new(tls.connect(stream, host).await?))),
            None => Ok(Io::Plain(stream)),
        }
    }

    /// Whether the socket has (or may have) something to read; TLS may hold decrypted bytes, so
    /// it always says yes.
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Io::Plain(s) => s.poll_read_ready(cx),
            Io::Tls(_) => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncRead for Io {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// An HTTP/1.1 connection to an endpoint, between requests or carrying one.
pub struct Conn {
    io: Io,
    /// Bytes read and not yet consumed; empty (and without capacity) between requests.
    buf: BytesMut,
    /// Taken from the pool: it served a request before, and the upstream may have closed it since.
    reused: bool,
}

impl Conn {
    pub fn new(io: Io) -> Conn {
        Conn { io, buf: BytesMut::new(), reused: false }
    }

    /// Marks a connection taken from the pool.
    pub fn reuse(mut self) -> Conn {
        self.reused = true;
        self
    }

    /// Whether an idle connection is still open with nothing unread. Asks the socket only when
    /// the reactor saw it become readable (a close, or bytes nobody asked for), so the usual
    /// answer costs no system call.
    pub fn is_idle_open(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        let mut probe = ReadBuf::new(&mut probe);
        let mut cx = Context::from_waker(Waker::noop());
        matches!(Pin::new(&mut self.io).poll_read(&mut cx, &mut probe), Poll::Pending)
    }

    /// Reads what the socket has into the buffer (taking buffer space only once it is readable).
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        ready!(self.io.poll_read_ready(cx))?;
        if self.buf.capacity() == 0 {
            self.buf = spare::take();
        }
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(READ_SIZE);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }

    /// Before going back to the pool: nothing unread, and no buffer kept.
    fn idle(mut self) -> Option<Conn> {
        if !self.buf.is_empty() {
            // Bytes after the response's end: the upstream does not frame its messages as it
            // says it does. Closed.
            return None;
        }
        spare::give(std::mem::take(&mut self.buf));
        Some(self)
    }
}

/// Read buffers between requests: a pooled connection holds none, and the next request on this
/// worker takes one back instead of allocating (its memory is reused in place once the bytes of
/// the previous response read into it have been sent on and dropped).
mod spare {
    use std::cell::RefCell;

    use bytes::BytesMut;

    /// At most this many are kept per worker.
    const KEEP: usize = 64;

    thread_local! {
        static SPARE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
    }

    pub fn take() -> BytesMut {
        SPARE.with(|s| s.borrow_mut().pop()).unwrap_or_default()
    }

    pub fn give(buf: BytesMut) {
        if buf.capacity() >= 1024 {
            SPARE.with(|s| {
                let mut spare = s.borrow_mut();
                if spare.len() < KEEP {
                    spare.push(buf);
                }
            });
        }
    }
}

/// After a `101`: the connection, with any bytes the upstream sent after its response head,
/// read first.
impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.buf.is_empty() {
            let n = this.buf.len().min(out.remaining());
            out.put_slice(&this.buf[..n]);
            this.buf.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, out)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// The upstream's side of a switched (`101`) connection, in the response's extensions.
#[derive(Clone)]
pub struct Upgraded(Arc<Mutex<Option<Conn>>>);

impl Upgraded {
    pub fn take(&self) -> Option<Conn> {
        self.0.lock().ok()?.take()
    }
}

/// Where a connection goes when its response is over.
#[derive(Clone, Copy)]
pub struct Release {
    pub key: u64,
    pub settings: PoolSettings,
}

/// A failed exchange.
pub struct Failure {
    pub error: Error,
    /// Some of the request went out: it cannot go to another connection as it is, unless `stale`.
    pub written: bool,
    /// The connection came from the pool and turned out to be closed by the upstream before any
    /// answer: nothing of the request went out, or it may be sent again (an idempotent method with
    /// its body in memory — RFC 9110 §9.2.2), so it takes another connection.
    pub stale: bool,
}

/// How the request body is framed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Outgoing {
    None,
    Length(u64),
    Chunked,
}

/// Sends `request` on `conn` and reads the response head. The request is left in place (and whole,
/// unless its streamed body was started), so the caller can send it elsewhere after a failure.
/// With `release`, the connection goes back to that pool after the response; without, it is
/// closed (a connection of its own, for the gateway's occasional calls and health checks).
pub async fn exchange(
    conn: Conn,
    request: &mut Request<UpstreamBody>,
    release: Option<Release>,
) -> Result<Response<Body>, Failure> {
    let outgoing = framing(request);
    let coalesced = match request.body() {
        UpstreamBody::Full(Some(bytes)) if bytes.len() <= COALESCE => bytes.len(),
        _ => 0,
    };
    let head = encode_head(request, outgoing, coalesced);
    let mut out = Pieces::default();
    let mut body_done = true;
    match request.body() {
        UpstreamBody::Full(Some(bytes)) if !bytes.is_empty() => {
            if bytes.len() <= COALESCE {
                let mut both = head;
                both.extend_from_slice(bytes);
                out.push(Bytes::from(both));
            } else {
                out.push(Bytes::from(head));
                out.push(bytes.clone());
            }
        }
        UpstreamBody::Streaming { .. } => {
            out.push(Bytes::from(head));
            body_done = false;
        }
        _ => out.push(Bytes::from(head)),
    }
    let left = match outgoing {
        Outgoing::Length(n) if !body_done => Some(n),
        _ => None,
    };
    let mut exchange = Exchange {
        conn,
        out,
        body_done,
        chunked: outgoing == Outgoing::Chunked,
        left,
        sent: false,
        written: false,
        received: false,
        parse: false,
        early: None,
        write_error: None,
    };
    let head_only = request.method() == Method::HEAD;
    let idempotent = matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    );
    let replayable = !matches!(request.body(), UpstreamBody::Streaming { .. });
    let body = request.body_mut();
    let result = std::future::poll_fn(|cx| exchange.poll(cx, body)).await;
    match result {
        Ok(head) => {
            exchange.finish(head, head_only, release).map_err(|error| Failure { error, written: true, stale: false })
        }
        Err(error) => {
            let closed =
                matches!(&error, Error::Closed) || matches!(&error, Error::Write(e) | Error::Read(e) if is_reset(e));
            let stale = exchange.conn.reused
                && !exchange.received
                && closed
                && (!exchange.written || (replayable && idempotent));
            Err(Failure { error, written: exchange.written, stale })
        }
    }
}

fn is_reset(e: &io::Error) -> bool {
    // UnexpectedEof: a TLS upstream that closed without close_notify.
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::UnexpectedEof
    )
}

/// The request's body framing, from its body and its `Content-Length`.
fn framing(request: &Request<UpstreamBody>) -> Outgoing {
    let declared = request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    match request.body() {
        UpstreamBody::Full(Some(bytes)) => Outgoing::Length(bytes.len() as u64),
        UpstreamBody::Empty | UpstreamBody::Full(None) => {
            let sends_body = matches!(*request.method(), Method::POST | Method::PUT | Method::PATCH);
            if sends_body || declared.is_some() { Outgoing::Length(0) } else { Outgoing::None }
        }
        UpstreamBody::Streaming { body, .. } => match declared.or(body.size_hint().exact()) {
            Some(n) => Outgoing::Length(n),
            None => Outgoing::Chunked,
        },
    }
}

/// The request line and headers; `Content-Length`/`Transfer-Encoding` as `outgoing` says.
fn encode_head(request: &Request<UpstreamBody>, outgoing: Outgoing, extra: usize) -> Vec<u8> {
    let target = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let headers = request.headers();
    let mut digits = [0; 20];
    let length = match outgoing {
        Outgoing::Length(n) => itoa(n, &mut digits),
        _ => &[],
    };
    // The exact size (and `extra` for a body that follows in the same buffer): a `Bytes` made
    // from a vector with no spare capacity costs no further allocation.
    let mut size = request.method().as_str().len() + 1 + target.len() + b" HTTP/1.1\r\n".len() + 2 + extra;
    for (name, value) in headers {
        if name != header::CONTENT_LENGTH && name != header::TRANSFER_ENCODING {
            size += name.as_str().len() + 2 + value.len() + 2;
        }
    }
    size += match outgoing {
        Outgoing::None => 0,
        Outgoing::Length(_) => b"content-length: \r\n".len() + length.len(),
        Outgoing::Chunked => b"transfer-encoding: chunked\r\n".len(),
    };
    let mut head = Vec::with_capacity(size);
    head.extend_from_slice(request.method().as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    match outgoing {
        Outgoing::None => {}
        Outgoing::Length(_) => {
            head.extend_from_slice(b"content-length: ");
            head.extend_from_slice(length);
            head.extend_from_slice(b"\r\n");
        }
        Outgoing::Chunked => head.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    head.extend_from_slice(b"\r\n");
    head
}

fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// One request going out while the response is awaited: both sides are driven together, so an
/// upstream that answers before it has read the whole body (a 413, a redirect) is heard.
struct Exchange {
    conn: Conn,
    /// Pieces still to write.
    out: Pieces,
    body_done: bool,
    chunked: bool,
    /// With `Content-Length`: body bytes still to come.
    left: Option<u64>,
    /// The whole request is written (and flushed).
    sent: bool,
    written: bool,
    received: bool,
    /// The buffer may hold a complete head (after a 1xx was taken off it).
    parse: bool,
    /// A successful response head that came before the request was fully sent.
    early: Option<Head>,
    write_error: Option<io::Error>,
}

const PIECES: usize = 4;

/// The bytes waiting to be written, in order: at most a head and a body, or a chunk's size line,
/// data and CRLF (more is only queued once these are out). Kept inline: no allocation.
#[derive(Default)]
struct Pieces {
    pieces: [Bytes; PIECES],
    start: usize,
    end: usize,
}

impl Pieces {
    fn is_empty(&self) -> bool {
        self.start == self.end
    }

    fn push(&mut self, piece: Bytes) {
        if self.is_empty() {
            self.start = 0;
            self.end = 0;
        }
        debug_assert!(self.end < PIECES, "queued beyond the pieces' room");
        self.pieces[self.end] = piece;
        self.end += 1;
    }

    fn slices<'a>(&'a self, slices: &mut [IoSlice<'a>; PIECES]) -> usize {
        for (slice, piece) in slices.iter_mut().zip(&self.pieces[self.start..self.end]) {
            *slice = IoSlice::new(piece);
        }
        self.end - self.start
    }

    fn advance(&mut self, mut written: usize) {
        while written > 0 && !self.is_empty() {
            let front = &mut self.pieces[self.start];
            if written >= front.len() {
                written -= front.len();
                *front = Bytes::new();
                self.start += 1;
            } else {
                front.advance(written);
                written = 0;
            }
        }
    }
}

/// A parsed response head and where it ended.
struct Head {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
}

impl Exchange {
    fn poll(&mut self, cx: &mut Context<'_>, body: &mut UpstreamBody) -> Poll<Result<Head, Error>> {
        loop {
            let mut progressed = false;
            if !self.sent && self.write_error.is_none() {
                progressed |= self.poll_send(cx, body)?;
            }
            if let Some(head) = self.early.take() {
                // A success that came early: the upstream still reads the body (a streaming
                // endpoint may need all of it to finish its answer), so it is sent first.
                if self.sent || self.write_error.is_some() {
                    return Poll::Ready(Ok(head));
                }
                self.early = Some(head);
                if !progressed {
                    return Poll::Pending;
                }
                continue;
            }
            if self.parse {
                match parse_head(&mut self.conn.buf)? {
                    Some(head) if head.status.is_informational() && head.status != StatusCode::SWITCHING_PROTOCOLS => {
                        // 100 Continue, 103 Early Hints: the final answer follows.
                        continue;
                    }
                    Some(head) if !self.sent && head.status.is_success() => {
                        self.early = Some(head);
                        continue;
                    }
                    // Anything else ends the request here (a refusal, a redirect: the body is not
                    // wanted); the connection is not reused.
                    Some(head) => return Poll::Ready(Ok(head)),
                    None if self.conn.buf.len() > MAX_HEAD => return Poll::Ready(Err(Error::HeadTooLarge)),
                    None => self.parse = false,
                }
            }
            match self.conn.poll_fill(cx) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(match self.write_error.take() {
                        Some(e) if !self.received => Error::Write(e),
                        _ if self.received => Error::Head("the connection was closed in the middle of it"),
                        _ => Error::Closed,
                    }));
                }
                Poll::Ready(Ok(_)) => {
                    self.received = true;
                    self.parse = true;
                    progressed = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(Error::Read(e))),
                Poll::Pending => {}
            }
            if !progressed {
                return Poll::Pending;
            }
        }
    }

    /// Writes what it can of the request; whether anything moved.
    fn poll_send(&mut self, cx: &mut Context<'_>, body: &mut UpstreamBody) -> Result<bool, Error> {
        if !self.out.is_empty() {
            let mut slices = [IoSlice::new(&[]); PIECES];
            let n = self.out.slices(&mut slices);
            return match Pin::new(&mut self.conn.io).poll_write_vectored(cx, &slices[..n]) {
                Poll::Ready(Ok(0)) => {
                    self.write_error = Some(io::ErrorKind::WriteZero.into());
                    Ok(true)
                }
                Poll::Ready(Ok(written)) => {
                    self.written = true;
                    self.out.advance(written);
                    Ok(true)
                }
                Poll::Ready(Err(e)) => {
                    // The upstream may have answered and closed: its answer is still read.
                    self.write_error = Some(e);
                    Ok(true)
                }
                Poll::Pending => Ok(false),
            };
        }
        if !self.body_done {
            return match Pin::new(body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    match frame.into_data() {
                        Ok(data) => self.queue_data(data)?,
                        Err(frame) => {
                            if let (Ok(trailers), true) = (frame.into_trailers(), self.chunked) {
                                self.queue_end(Some(&trailers));
                                self.body_done = true;
                            }
                        }
                    }
                    Ok(true)
                }
                Poll::Ready(Some(Err(e))) => Err(Error::ClientBody(e)),
                Poll::Ready(None) => {
                    if self.left.is_some_and(|left| left > 0) {
                        return Err(Error::ClientBody(BodyError::Length));
                    }
                    if self.chunked {
                        self.queue_end(None);
                    }
                    self.body_done = true;
                    Ok(true)
                }
                Poll::Pending => {
                    // What TLS holds back of the written pieces goes out while the body waits.
                    if let Poll::Ready(Err(e)) = Pin::new(&mut self.conn.io).poll_flush(cx) {
                        self.write_error = Some(e);
                        return Ok(true);
                    }
                    Ok(false)
                }
            };
        }
        match Pin::new(&mut self.conn.io).poll_flush(cx) {
            Poll::Ready(Ok(())) => {
                self.sent = true;
                Ok(true)
            }
            Poll::Ready(Err(e)) => {
                self.write_error = Some(e);
                Ok(true)
            }
            Poll::Pending => Ok(false),
        }
    }

    fn queue_data(&mut self, data: Bytes) -> Result<(), Error> {
        if data.is_empty() {
            return Ok(());
        }
        if let Some(left) = self.left.as_mut() {
            *left = left.checked_sub(data.len() as u64).ok_or(Error::ClientBody(BodyError::Length))?;
        }
        if self.chunked {
            self.out.push(Bytes::from(format!("{:x}\r\n", data.len())));
            self.out.push(data);
            self.out.push(Bytes::from_static(b"\r\n"));
        } else {
            self.out.push(data);
        }
        Ok(())
    }

    /// The last chunk and the trailers of a chunked body.
    fn queue_end(&mut self, trailers: Option<&HeaderMap>) {
        let mut end = b"0\r\n".to_vec();
        for (name, value) in trailers.into_iter().flatten() {
            end.extend_from_slice(name.as_str().as_bytes());
            end.extend_from_slice(b": ");
            end.extend_from_slice(value.as_bytes());
            end.extend_from_slice(b"\r\n");
        }
        end.extend_from_slice(b"\r\n");
        self.out.push(Bytes::from(end));
    }

    /// The response with its body reader (or, for a `101`, the connection in its extensions).
    fn finish(self, head: Head, head_only: bool, release: Option<Release>) -> Result<Response<Body>, Error> {
        let Head { status, version, headers } = head;
        let mut response = Response::new(Body::empty());
        *response.status_mut() = status;
        *response.version_mut() = version;
        if status == StatusCode::SWITCHING_PROTOCOLS {
            let conn = Upgraded(Arc::new(Mutex::new(Some(self.conn))));
            response.extensions_mut().insert(conn);
            *response.headers_mut() = headers;
            return Ok(response);
        }
        let decoder = body_framing(status, head_only, &headers)?;
        // The connection carries the next request only if both messages ended where their
        // framing says and both sides meant to keep it open.
        let reusable = self.sent
            && !matches!(decoder, Decoder::Eof)
            && keeps_alive(version, &headers)
            && release.is_some_and(|r| r.settings.max_idle_per_endpoint > 0);
        *response.headers_mut() = headers;
        *response.body_mut() = Body { conn: Some(self.conn), decoder, reusable, release };
        Ok(response)
    }
}

/// Parses a complete response head off the front of `buf`; `None` until it is complete.
fn parse_head(buf: &mut BytesMut) -> Result<Option<Head>, Error> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut slots);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) if len > MAX_HEAD => return Err(Error::HeadTooLarge),
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Error::Head("too many headers")),
        Err(_) => return Err(Error::Head("not an HTTP/1.x response")),
    };
    let status = response.code.and_then(|c| StatusCode::from_u16(c).ok()).ok_or(Error::Head("bad status code"))?;
    let version = if response.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
    // Where the names and values are first (offsets, on the stack): the values become slices of
    // the head's bytes, without a copy.
    let base = buf.as_ptr() as usize;
    let mut spans = [[0u32; 4]; MAX_HEADERS];
    let count = response.headers.len();
    for (span, h) in spans.iter_mut().zip(response.headers.iter()) {
        let name = h.name.as_ptr() as usize - base;
        let value = h.value.as_ptr() as usize - base;
        *span = [name, name + h.name.len(), value, value + h.value.len()].map(|n| n as u32);
    }
    let head = buf.split_to(len).freeze();
    // Room for the headers the gateway adds to a response (request id, CORS, rate limits).
    let mut headers = HeaderMap::with_capacity(count + 4);
    for [name_start, name_end, start, end] in spans[..count].iter().map(|s| s.map(|n| n as usize)) {
        let name = HeaderName::from_bytes(&head[name_start..name_end]).map_err(|_| Error::Head("bad header name"))?;
        let value =
            HeaderValue::from_maybe_shared(head.slice(start..end)).map_err(|_| Error::Head("bad header value"))?;
        headers.append(name, value);
    }
    Ok(Some(Head { status, version, headers }))
}

/// How the response body is delimited (RFC 9112 §6.3).
fn body_framing(status: StatusCode, head_only: bool, headers: &HeaderMap) -> Result<Decoder, Error> {
    if head_only || status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED
    {
        return Ok(Decoder::Done);
    }
    let mut length: Option<u64> = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for part in value.as_bytes().split(|b| *b == b',') {
            let part = part.trim_ascii();
            if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
                return Err(Error::Head("bad Content-Length"));
            }
            let n: u64 =
                std::str::from_utf8(part).ok().and_then(|s| s.parse().ok()).ok_or(Error::Head("bad Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(Error::Head("differing Content-Length values"));
            }
            length = Some(n);
        }
    }
    let mut last_coding: Option<&[u8]> = None;
    let mut other_coding = false;
    for value in headers.get_all(header::TRANSFER_ENCODING) {
        for coding in value.as_bytes().split(|b| *b == b',') {
            let coding = coding.trim_ascii();
            if !coding.is_empty() {
                other_coding |= !coding.eq_ignore_ascii_case(b"chunked");
                last_coding = Some(coding);
            }
        }
    }
    match (last_coding, length) {
        (Some(_), Some(_)) => Err(Error::Head("both Content-Length and Transfer-Encoding")),
        (Some(coding), None) if coding.eq_ignore_ascii_case(b"chunked") && !other_coding => {
            Ok(Decoder::Chunked(Chunk::Size))
        }
        // gzip and the like as a transfer coding: what the client would get is neither the body
        // nor labelled as encoded (Transfer-Encoding is hop-by-hop). Refused, not guessed at.
        (Some(_), None) => Err(Error::Head("a transfer coding other than chunked")),
        (None, Some(n)) => Ok(Decoder::Length(n)),
        (None, None) => Ok(Decoder::Eof),
    }
}

/// Whether the upstream means to keep the connection open after this response.
fn keeps_alive(version: Version, headers: &HeaderMap) -> bool {
    if has_token(headers, header::CONNECTION, "close") {
        return false;
    }
    version == Version::HTTP_11 || has_token(headers, header::CONNECTION, "keep-alive")
}

/// The upstream's response body, read from the connection as it is polled.
pub struct Body {
    conn: Option<Conn>,
    decoder: Decoder,
    reusable: bool,
    release: Option<Release>,
}

enum Decoder {
    Length(u64),
    Chunked(Chunk),
    /// Until the upstream closes the connection.
    Eof,
    Done,
}

/// Where a chunked body's decoder stands.
enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
    End,
}

/// What the chunked decoder produced from the buffer.
enum Decoded {
    Data(Bytes),
    Trailers(HeaderMap),
    End,
    More,
}

impl Body {
    fn empty() -> Body {
        Body { conn: None, decoder: Decoder::Done, reusable: false, release: None }
    }

    /// The body ended where its framing said: the connection goes back to the pool.
    fn finish(&mut self) {
        self.decoder = Decoder::Done;
        if let (Some(conn), Some(release), true) = (self.conn.take(), self.release, self.reusable) {
            if let Some(conn) = conn.idle() {
                super::pool::put(release.key, conn, release.settings);
            }
        }
    }

    fn fail(&mut self, error: Error) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        self.conn = None;
        self.decoder = Decoder::Done;
        Poll::Ready(Some(Err(error)))
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_mut() else { return Poll::Ready(None) };
            match &mut this.decoder {
                Decoder::Done | Decoder::Length(0) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Decoder::Length(left) => {
                    if conn.buf.is_empty() {
                        match ready!(conn.poll_fill(cx)) {
                            Ok(0) => return this.fail(Error::Truncated),
                            Ok(_) => {}
                            Err(e) => return this.fail(Error::Read(e)),
                        }
                    }
                    let n = conn.buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                    let data = conn.buf.split_to(n).freeze();
                    *left -= n as u64;
                    if *left == 0 {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Decoder::Eof => {
                    if !conn.buf.is_empty() {
                        let data = conn.buf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    match ready!(conn.poll_fill(cx)) {
                        Ok(0) => {
                            // The end, and the connection is gone with it.
                            this.conn = None;
                            this.decoder = Decoder::Done;
                            return Poll::Ready(None);
                        }
                        Ok(_) => {}
                        Err(e) => return this.fail(Error::Read(e)),
                    }
                }
                Decoder::Chunked(state) => match decode_chunk(state, &mut conn.buf) {
                    Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Decoded::Trailers(trailers)) => {
                        // The trailers are the body's last frame: the connection is done with.
                        this.finish();
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                    }
                    Ok(Decoded::End) => {
                        this.finish();
                        return Poll::Ready(None);
                    }
                    Ok(Decoded::More) => match ready!(conn.poll_fill(cx)) {
                        Ok(0) => return this.fail(Error::Truncated),
                        Ok(_) => {}
                        Err(e) => return this.fail(Error::Read(e)),
                    },
                    Err(e) => return this.fail(e),
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.decoder, Decoder::Done | Decoder::Length(0) | Decoder::Chunked(Chunk::End))
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder {
            Decoder::Length(n) => SizeHint::with_exact(n),
            Decoder::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        // A body nobody polled because it was empty from the start (204, HEAD, Content-Length: 0)
        // still ends cleanly; one dropped before its end leaves the connection mid-message, and it
        // is closed.
        if matches!(self.decoder, Decoder::Done | Decoder::Length(0) | Decoder::Chunked(Chunk::End)) {
            self.finish();
        }
    }
}

/// Takes the next piece of a chunked body off the front of `buf`.
fn decode_chunk(state: &mut Chunk, buf: &mut BytesMut) -> Result<Decoded, Error> {
    loop {
        match state {
            Chunk::Size => {
                let Some(end) = memchr::memchr(b'\n', buf) else {
                    if buf.len() > MAX_CHUNK_LINE {
                        return Err(Error::Body("chunk-size line too long"));
                    }
                    return Ok(Decoded::More);
                };
                if end > MAX_CHUNK_LINE {
                    return Err(Error::Body("chunk-size line too long"));
                }
                let size = chunk_size(&buf[..end])?;
                buf.advance(end + 1);
                *state = if size == 0 { Chunk::Trailers } else { Chunk::Data(size) };
            }
            Chunk::Data(left) => {
                if buf.is_empty() {
                    return Ok(Decoded::More);
                }
                let n = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                let data = buf.split_to(n).freeze();
                *left -= n as u64;
                if *left == 0 {
                    *state = Chunk::DataEnd;
                }
                return Ok(Decoded::Data(data));
            }
            Chunk::DataEnd => {
                if buf.len() < 2 {
                    return Ok(Decoded::More);
                }
                if &buf[..2] != b"\r\n" {
                    return Err(Error::Body("chunk data not followed by CRLF"));
                }
                buf.advance(2);
                *state = Chunk::Size;
            }
            Chunk::Trailers => {
                // httparse decides where the section ends (it accepts a bare LF as well): the
                // bytes it took are exactly the bytes consumed.
                let mut slots = [httparse::EMPTY_HEADER; 32];
                let (taken, parsed) = match httparse::parse_headers(buf, &mut slots) {
                    Ok(httparse::Status::Complete((taken, parsed))) => (taken, parsed),
                    Ok(httparse::Status::Partial) if buf.len() > MAX_TRAILERS => {
                        return Err(Error::Body("trailer section too large"));
                    }
                    Ok(httparse::Status::Partial) => return Ok(Decoded::More),
                    Err(_) => return Err(Error::Body("malformed trailers")),
                };
                if taken > MAX_TRAILERS {
                    return Err(Error::Body("trailer section too large"));
                }
                let trailers = trailer_map(parsed)?;
                buf.advance(taken);
                *state = Chunk::End;
                if !trailers.is_empty() {
                    return Ok(Decoded::Trailers(trailers));
                }
            }
            Chunk::End => return Ok(Decoded::End),
        }
    }
}

/// `chunk-size [ chunk-ext ] CRLF` (the line without its LF).
fn chunk_size(line: &[u8]) -> Result<u64, Error> {
    let line = line.strip_suffix(b"\r").ok_or(Error::Body("chunk-size line not ended by CRLF"))?;
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(Error::Body("no chunk size"));
    }
    if digits > 16 {
        return Err(Error::Body("chunk size too large"));
    }
    let rest = &line[digits..];
    let ext = rest.trim_ascii_start();
    if !(rest.is_empty() || ext.starts_with(b";")) {
        return Err(Error::Body("bad chunk size"));
    }
    if ext.iter().any(|b| b.is_ascii_control() && *b != b'\t') {
        return Err(Error::Body("bad chunk extension"));
    }
    let mut size = 0u64;
    for b in &line[..digits] {
        let digit = (*b as char).to_digit(16).unwrap_or(0);
        size = size
            .checked_mul(16)
            .and_then(|s| s.checked_add(u64::from(digit)))
            .ok_or(Error::Body("chunk size too large"))?;
    }
    Ok(size)
}

fn trailer_map(parsed: &[httparse::Header<'_>]) -> Result<HeaderMap, Error> {
    let mut trailers = HeaderMap::with_capacity(parsed.len());
    for h in parsed {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| Error::Body("bad trailer name"))?;
        let value = HeaderValue::from_bytes(h.value).map_err(|_| Error::Body("bad trailer value"))?;
        trailers.append(name, value);
    }
    Ok(trailers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(bytes: &[u8]) -> Result<Option<Head>, Error> {
        parse_head(&mut BytesMut::from(bytes))
    }

    fn framing_of(raw: &[u8], head_only: bool) -> Result<Decoder, Error> {
        let head = head(raw)?.expect("complete head");
        body_framing(head.status, head_only, &head.headers)
    }

    /// Decodes `input` fed in pieces of `step` bytes: the data, the trailers, whether it ended.
    fn dechunk(input: &[u8], step: usize) -> Result<(Vec<u8>, Option<HeaderMap>, bool), Error> {
        let mut state = Chunk::Size;
        let mut buf = BytesMut::new();
        let (mut data, mut trailers) = (Vec::new(), None);
        let mut fed = 0;
        loop {
            match decode_chunk(&mut state, &mut buf)? {
                Decoded::Data(d) => data.extend_from_slice(&d),
                Decoded::Trailers(t) => trailers = Some(t),
                Decoded::End => return Ok((data, trailers, true)),
                Decoded::More if fed >= input.len() => return Ok((data, trailers, false)),
                Decoded::More => {
                    let next = (fed + step).min(input.len());
                    buf.extend_from_slice(&input[fed..next]);
                    fed = next;
                }
            }
        }
    }

    #[test]
    fn a_response_head_becomes_status_version_and_headers() {
        let parsed =
            head(b"HTTP/1.0 404 Not Found\r\nX-A: 1\r\nx-a: 2\r\nContent-Length: 0\r\n\r\nrest").unwrap().unwrap();
        assert_eq!(parsed.status, StatusCode::NOT_FOUND);
        assert_eq!(parsed.version, Version::HTTP_10);
        let values: Vec<_> = parsed.headers.get_all("x-a").iter().map(|v| v.to_str().unwrap()).collect();
        assert_eq!(values, ["1", "2"]);
        assert!(head(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n").unwrap().is_none(), "incomplete");
        for bad in [
            &b"HTTP/1.1 99 Low\r\n\r\n"[..],
            b"HTTP/2 200 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nbad name: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nx: a\x00b\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nx: a\r\n folded\r\n\r\n",
            b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",
        ] {
            assert!(head(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let many: String = (0..MAX_HEADERS + 1).map(|i| format!("x-{i}: v\r\n")).collect();
        assert!(head(format!("HTTP/1.1 200 OK\r\n{many}\r\n").as_bytes()).is_err());
    }

    #[test]
    fn the_body_is_framed_by_rfc_9112_and_nothing_ambiguous_passes() {
        let ok = |raw: &[u8], head_only: bool| framing_of(raw, head_only).unwrap();
        assert!(matches!(ok(b"HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n", false), Decoder::Length(12)));
        assert!(matches!(
            ok(b"HTTP/1.1 200 OK\r\ncontent-length: 7, 7\r\ncontent-length: 7\r\n\r\n", false),
            Decoder::Length(7)
        ));
        assert!(matches!(ok(b"HTTP/1.1 200 OK\r\ntransfer-encoding: Chunked\r\n\r\n", false), Decoder::Chunked(_)));
        assert!(matches!(ok(b"HTTP/1.1 200 OK\r\n\r\n", false), Decoder::Eof));
        for no_body in [
            &b"HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n"[..],
            b"HTTP/1.1 304 Not Modified\r\ncontent-length: 5\r\n\r\n",
        ] {
            assert!(matches!(ok(no_body, false), Decoder::Done));
        }
        assert!(matches!(ok(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", true), Decoder::Done), "HEAD");
        for bad in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 5, 6\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: -5\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 0x5\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: \r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n",
            // Codings other than chunked would reach the client undecoded and unlabelled.
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
        ] {
            assert!(framing_of(bad, false).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection_tokens() {
        let keeps = |raw: &[u8]| {
            let h = head(raw).unwrap().unwrap();
            keeps_alive(h.version, &h.headers)
        };
        assert!(keeps(b"HTTP/1.1 200 OK\r\n\r\n"));
        assert!(!keeps(b"HTTP/1.1 200 OK\r\nconnection: foo, Close\r\n\r\n"));
        assert!(!keeps(b"HTTP/1.0 200 OK\r\n\r\n"));
        assert!(keeps(b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\n\r\n"));
    }

    #[test]
    fn chunked_bodies_decode_alike_in_any_split() {
        let input = b"5;ext=\"a b\"\r\nhello\r\n1 ; x\r\n \r\nb\r\n0123456789A\r\n0\r\nx-sum: 1\r\nx-more: 2\r\n\r\n";
        for step in [1, 2, 3, 7, input.len()] {
            let (data, trailers, ended) = dechunk(input, step).unwrap();
            assert_eq!(data, b"hello 0123456789A", "step {step}");
            assert!(ended);
            let trailers = trailers.unwrap();
            assert_eq!(trailers.get("x-sum").unwrap(), "1");
            assert_eq!(trailers.get("x-more").unwrap(), "2");
        }
        let (data, trailers, ended) = dechunk(b"3\r\nabc\r\n0\r\n\r\n", 1).unwrap();
        assert_eq!((data.as_slice(), trailers.is_none(), ended), (&b"abc"[..], true, true));
        // A trailer section ended by bare LFs: exactly its bytes are taken, nothing after them.
        let mut state = Chunk::Trailers;
        let mut buf = BytesMut::from(&b"x: 1\n\nNEXT"[..]);
        assert!(matches!(decode_chunk(&mut state, &mut buf), Ok(Decoded::Trailers(_))));
        assert_eq!(&buf[..], b"NEXT", "the rest stays for the framing check");
        let (_, _, ended) = dechunk(b"3\r\nabc\r\n", 1).unwrap();
        assert!(!ended, "no last chunk yet");
    }

    #[test]
    fn malformed_chunked_bodies_are_errors() {
        let long_line = format!("5;{}\r\nhello\r\n0\r\n\r\n", "e".repeat(MAX_CHUNK_LINE));
        let long_trailers = format!("0\r\nx: {}\r\n\r\n", "t".repeat(MAX_TRAILERS));
        for bad in [
            &b"zz\r\nhello\r\n0\r\n\r\n"[..],
            b"\r\nhello\r\n0\r\n\r\n",
            b"-5\r\nhello\r\n0\r\n\r\n",
            b"5 x\r\nhello\r\n0\r\n\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5;a\x01b\r\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloXX0\r\n\r\n",
            b"10000000000000000\r\n",
            b"0\r\nbad trailer\r\n\r\n",
            long_line.as_bytes(),
            long_trailers.as_bytes(),
        ] {
            for step in [1, 5, bad.len()] {
                assert!(dechunk(bad, step).is_err(), "{:?} in steps of {step}", String::from_utf8_lossy(bad));
            }
        }
        // The largest size that fits: accepted as a size (the data never comes).
        assert!(dechunk(b"ffffffffffffffff\r\n", 1).is_ok());
    }

    #[test]
    fn request_heads_carry_the_framing_gatehouse_chose() {
        let request = |method: Method, body: UpstreamBody, headers: &[(&str, &str)]| {
            let mut r = Request::new(body);
            *r.method_mut() = method;
            *r.uri_mut() = "/p?q=1".parse().unwrap();
            for (k, v) in headers {
                r.headers_mut()
                    .append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
            }
            r
        };
        let text = |r: &Request<UpstreamBody>| {
            let head = encode_head(r, framing(r), 0);
            assert_eq!(head.len(), head.capacity(), "sized exactly");
            String::from_utf8(head).unwrap()
        };
        let get = request(Method::GET, UpstreamBody::Empty, &[("host", "a"), ("x-two", "1"), ("x-two", "2")]);
        assert_eq!(text(&get), "GET /p?q=1 HTTP/1.1\r\nhost: a\r\nx-two: 1\r\nx-two: 2\r\n\r\n");
        let post = request(Method::POST, UpstreamBody::Empty, &[("host", "a")]);
        assert_eq!(text(&post), "POST /p?q=1 HTTP/1.1\r\nhost: a\r\ncontent-length: 0\r\n\r\n");
        // A stale or forged length never goes out next to the real one.
        let full = request(
            Method::PUT,
            UpstreamBody::Full(Some(Bytes::from_static(b"12345"))),
            &[("content-length", "99"), ("transfer-encoding", "chunked")],
        );
        assert_eq!(text(&full), "PUT /p?q=1 HTTP/1.1\r\ncontent-length: 5\r\n\r\n");
        assert_eq!(itoa(0, &mut [0; 20]), b"0");
        assert_eq!(itoa(u64::MAX, &mut [0; 20]), b"18446744073709551615");
    }
}
