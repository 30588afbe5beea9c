//! One client connection: its deadline state, its I/O wrapper, and the future that drives it.
//!
//! Deadlines are coarse and per connection, not a timer per request: the connection records which
//! phase it is in (waiting for a request head, idle between requests, or serving one) and since when;
//! the worker's sweeper (see `worker.rs`) compares that with the clock once per tick and tells the
//! connection to close. A read in the idle phase starts the head-read deadline, so a client that
//! trickles a request head byte by byte is cut off after `header_read`, while an idle keep-alive
//! connection gets the longer `idle` timeout.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::clock;

/// Where a connection is in its life, for deadlines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Waiting for (the rest of) a request head: `header_read` applies.
    ReadingHead = 0,
    /// Between requests with nothing received: `idle` applies.
    Idle = 1,
    /// A request is being served: route and upstream timeouts apply.
    Active = 2,
}

/// What the worker asks a connection to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Command {
    None = 0,
    /// Finish the request in progress, then close (shutdown).
    Drain = 1,
    /// Close now (idle timeout, or the drain grace period is over).
    Close = 2,
    /// Answer 408 and close: the client did not send a complete head in time.
    HeaderTimeout = 3,
}

/// Deadline state shared by the connection's driver, its I/O, its requests and the worker's sweeper.
pub struct ConnState {
    phase: AtomicU8,
    since_ms: AtomicU64,
    in_flight: AtomicU32,
    command: AtomicU8,
    waker: AtomicWaker,
    /// The raw bytes of the request head being read (see `HeadCopy`).
    head: Mutex<Vec<u8>>,
    /// Whether `head` holds the head of the next request to be dispatched.
    head_fresh: AtomicBool,
    /// HTTP/2: bytes are frames of many streams, never an HTTP/1 head to copy or time.
    multiplexed: AtomicBool,
    /// The listener's counts, whose requests in flight this connection's requests are.
    listener: Option<Arc<ListenerCounts>>,
}

/// What a listener counts over all workers: its open connections (for `max_connections`) and
/// its requests in flight; both are in the metrics.
#[derive(Debug, Default)]
pub struct ListenerCounts {
    pub connections: std::sync::atomic::AtomicUsize,
    pub requests: std::sync::atomic::AtomicUsize,
}

/// A tunnel's place in its listener's count of open connections.
pub struct ConnectionHold(Arc<ListenerCounts>);

impl ConnectionHold {
    /// Counts one more open connection on `counts`; the count goes down when this is dropped.
    /// Returns the count before.
    pub fn open(counts: &Arc<ListenerCounts>) -> (ConnectionHold, usize) {
        let before = counts.connections.fetch_add(1, Ordering::AcqRel);
        (ConnectionHold(counts.clone()), before)
    }

    pub fn counts(&self) -> &Arc<ListenerCounts> {
        &self.0
    }
}

impl Drop for ConnectionHold {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The counts of each listener, by listener id.
pub type Counts = Arc<[Arc<ListenerCounts>]>;

/// Listener ids a process can hand out (a reload that adds a listener takes a new one; removed
/// ones are not reused).
pub const MAX_LISTENER_IDS: usize = 64;

/// Fresh counts for `listeners` listeners.
pub fn counts(listeners: usize) -> Counts {
    (0..listeners).map(|_| Arc::default()).collect()
}

/// Most bytes of a raw request head kept for inspection.
const HEAD_COPY_LIMIT: usize = 96 * 1024;

impl ConnState {
    pub fn new() -> Arc<ConnState> {
        ConnState::counted(None)
    }

    /// A connection whose requests in flight are also counted in its listener's `requests`.
    pub fn counted(listener: Option<Arc<ListenerCounts>>) -> Arc<ConnState> {
        Arc::new(ConnState {
            phase: AtomicU8::new(Phase::ReadingHead as u8),
            since_ms: AtomicU64::new(clock::now_ms()),
            in_flight: AtomicU32::new(0),
            command: AtomicU8::new(Command::None as u8),
            waker: AtomicWaker::new(),
            head: Mutex::new(Vec::new()),
            head_fresh: AtomicBool::new(true),
            multiplexed: AtomicBool::new(false),
            listener,
        })
    }

    pub fn phase(&self) -> (Phase, u64) {
        let phase = match self.phase.load(Ordering::Relaxed) {
            0 => Phase::ReadingHead,
            1 => Phase::Idle,
            _ => Phase::Active,
        };
        (phase, self.since_ms.load(Ordering::Relaxed))
    }

    /// A request head was parsed and handed to the proxy. Returns whether the raw copy of the head
    /// belongs to this request (it does not for a pipelined request hyper had already buffered).
    #[inline]
    pub fn begin_request(&self) -> bool {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        if let Some(listener) = &self.listener {
            listener.requests.fetch_add(1, Ordering::Relaxed);
        }
        self.phase.store(Phase::Active as u8, Ordering::Relaxed);
        self.head_fresh.swap(false, Ordering::Relaxed)
    }

    /// Whether the raw head of the current request had a `Content-Length` field. hyper drops
    /// Content-Length when Transfer-Encoding is present, so this is the only way to see that a
    /// request carried both (a request smuggling attempt). `None` when the head is not known.
    pub fn head_had_content_length(&self) -> Option<bool> {
        let head = self.head.lock().unwrap_or_else(|e| e.into_inner());
        raw_head_has_field(&head, b"content-length")
    }

    /// The response of a request is finished (its body ended or was dropped).
    #[inline]
    pub fn end_request(&self) {
        if let Some(listener) = &self.listener {
            listener.requests.fetch_sub(1, Ordering::Relaxed);
        }
        if self.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.since_ms.store(clock::now_ms(), Ordering::Relaxed);
            self.phase.store(Phase::Idle as u8, Ordering::Relaxed);
        }
    }

    /// Bytes arrived. Outside of a request they are a request head: the head-read deadline starts,
    /// and a copy is kept (heads are small; bodies, read while a request is active, are not copied).
    #[inline]
    fn on_read(&self, bytes: &[u8]) {
        let phase = self.phase.load(Ordering::Relaxed);
        if phase == Phase::Active as u8 || self.multiplexed.load(Ordering::Relaxed) {
            return;
        }
        let mut head = self.head.lock().unwrap_or_else(|e| e.into_inner());
        if phase == Phase::Idle as u8 {
            self.since_ms.store(clock::now_ms(), Ordering::Relaxed);
            self.phase.store(Phase::ReadingHead as u8, Ordering::Relaxed);
            head.clear();
            self.head_fresh.store(true, Ordering::Relaxed);
        }
        let room = HEAD_COPY_LIMIT.saturating_sub(head.len());
        head.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    /// Keeps the connection counted as open on its listener after hyper has let go of it (a
    /// WebSocket tunnel): released when dropped.
    pub fn hold_connection(&self) -> Option<ConnectionHold> {
        Some(ConnectionHold::open(self.listener.as_ref()?).0)
    }

    /// The connection speaks HTTP/2: the first request must still come within the head-read
    /// deadline, and after that only the idle deadline applies (between requests: frames such as
    /// PING do not restart a head-read clock).
    pub fn set_multiplexed(&self) {
        self.multiplexed.store(true, Ordering::Relaxed);
        self.head.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Asks the connection to act; a stronger command is never replaced by a weaker one.
    pub fn command(&self, command: Command) {
        let _ = self.command.fetch_max(command as u8, Ordering::Relaxed);
        self.waker.wake();
    }

    fn pending_command(&self) -> Command {
        match self.command.load(Ordering::Relaxed) {
            0 => Command::None,
            1 => Command::Drain,
            2 => Command::Close,
            _ => Command::HeaderTimeout,
        }
    }
}

/// Whether the header section of a raw HTTP/1 head (request line first) has a field `name`
/// (lowercase). `None` when the head is incomplete.
fn raw_head_has_field(head: &[u8], name: &[u8]) -> Option<bool> {
    // Only lines terminated by '\n' count: the rest of the buffer is an incomplete line.
    let mut rest = head;
    let mut first = true;
    loop {
        let end = memchr::memchr(b'\n', rest)?;
        let line = &rest[..end];
        rest = &rest[end + 1..];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if std::mem::take(&mut first) {
            continue;
        }
        if line.is_empty() {
            return Some(false);
        }
        if line.len() > name.len() && line[..name.len()].eq_ignore_ascii_case(name) {
            let after = &line[name.len()..];
            if after.iter().find(|b| **b != b' ' && **b != b'\t') == Some(&b':') {
                return Some(true);
            }
        }
    }
}

/// The client's byte stream: the socket, or TLS over it.
pub enum ClientIo {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// The client connection as hyper sees it: every read notes activity for the deadline logic
/// (and, in HTTP/1, copies the request head). Bytes read before hyper took over (to tell HTTP/2
/// from HTTP/1) are given to it first.
pub struct ConnStream {
    io: ClientIo,
    state: Arc<ConnState>,
    prefix: Option<bytes::Bytes>,
}

impl ConnStream {
    pub fn new(io: ClientIo, state: Arc<ConnState>, prefix: Option<bytes::Bytes>) -> Self {
        ConnStream { io, state, prefix: prefix.filter(|p| !p.is_empty()) }
    }
}

macro_rules! with_io {
    ($self:expr, $io:ident => $body:expr) => {
        match &mut $self.io {
            ClientIo::Plain($io) => {
                let $io = Pin::new($io);
                $body
            }
            ClientIo::Tls($io) => {
                let $io = Pin::new(&mut **$io);
                $body
            }
        }
    };
}

impl AsyncRead for ConnStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(prefix) = &mut this.prefix {
            let n = prefix.len().min(buf.remaining());
            let head = prefix.split_to(n);
            buf.put_slice(&head);
            this.state.on_read(&head);
            if prefix.is_empty() {
                this.prefix = None;
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let result = with_io!(self, io => io.poll_read(cx, buf));
        let new = &buf.filled()[before..];
        if !new.is_empty() {
            self.state.on_read(new);
        }
        result
    }
}

impl AsyncWrite for ConnStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        with_io!(self, io => io.poll_write(cx, buf))
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        with_io!(self, io => io.poll_write_vectored(cx, bufs))
    }
    fn is_write_vectored(&self) -> bool {
        match &self.io {
            ClientIo::Plain(tcp) => tcp.is_write_vectored(),
            ClientIo::Tls(tls) => tls.is_write_vectored(),
        }
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        with_io!(self, io => io.poll_flush(cx))
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        with_io!(self, io => io.poll_shutdown(cx))
    }
}

/// Facts about one client connection that requests need.
pub struct ConnContext {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// The transport's listener id (index into the snapshot's listeners).
    pub listener: usize,
    /// `http` or `https`.
    pub scheme: &'static str,
    /// The peer's IP as a header value, built once per connection for `X-Forwarded-For`.
    pub peer_ip_value: http::HeaderValue,
    /// `for=…` for RFC 7239 `Forwarded`, built once per connection.
    pub forwarded_for: String,
    /// The last `Forwarded` element built, with the Host it was built for: requests on one
    /// connection nearly always name the same host, so this is built once, not per request.
    forwarded_cache: Mutex<Option<(Option<http::HeaderValue>, Option<http::HeaderValue>)>>,
    pub state: Arc<ConnState>,
    /// The client's verified certificate, on a listener with `tls.client_auth`.
    pub client_cert: Option<Arc<super::tls::ClientIdentity>>,
}

impl ConnContext {
    pub fn new(
        peer: SocketAddr,
        local: SocketAddr,
        listener: usize,
        scheme: &'static str,
        state: Arc<ConnState>,
    ) -> ConnContext {
        let ip = crate::state::canonical_ip(peer.ip());
        let peer_ip_value =
            http::HeaderValue::from_str(&ip.to_string()).unwrap_or_else(|_| http::HeaderValue::from_static("unknown"));
        let forwarded_for = match ip {
            std::net::IpAddr::V4(v4) => format!("for={v4}"),
            std::net::IpAddr::V6(v6) => format!("for=\"[{v6}]\""),
        };
        ConnContext {
            peer,
            local,
            listener,
            scheme,
            peer_ip_value,
            forwarded_for,
            forwarded_cache: Mutex::new(None),
            state,
            client_cert: None,
        }
    }

    /// This connection's `Forwarded` element for a request to `host` (cached per host).
    pub fn forwarded_element(&self, host: Option<&http::HeaderValue>) -> Option<http::HeaderValue> {
        let mut cache = self.forwarded_cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((cached_host, element)) = cache.as_ref() {
            if cached_host.as_ref() == host {
                return element.clone();
            }
        }
        let element = crate::proxy::headers::forwarded_element(&self.forwarded_for, self.scheme, host);
        *cache = Some((host.cloned(), element.clone()));
        element
    }
}

/// Drives one hyper connection and obeys the worker's commands.
pub struct Driver<C> {
    conn: Option<C>,
    state: Arc<ConnState>,
    draining: bool,
    timeout_response: &'static [u8],
}

/// What a connection driver needs from hyper's connection types (HTTP/1 now; HTTP/2 later).
pub trait ServeConnection: Future<Output = Result<(), hyper::Error>> + Unpin {
    fn graceful_shutdown(&mut self);
    /// Gives back the client stream if nothing is in progress, for a last raw response.
    fn into_stream(self) -> Option<ConnStream>;
}

impl<C: ServeConnection> Driver<C> {
    pub fn new(conn: C, state: Arc<ConnState>, timeout_response: &'static [u8]) -> Self {
        Driver { conn: Some(conn), state, draining: false, timeout_response }
    }
}

impl<C: ServeConnection> Future for Driver<C> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        this.state.waker.register(cx.waker());
        match this.state.pending_command() {
            Command::None => {}
            Command::Drain => {
                if !this.draining {
                    this.draining = true;
                    if let Some(conn) = this.conn.as_mut() {
                        conn.graceful_shutdown();
                    }
                }
            }
            Command::Close => {
                this.conn = None;
                return Poll::Ready(());
            }
            Command::HeaderTimeout => {
                if let Some(stream) = this.conn.take().and_then(ServeConnection::into_stream) {
                    let response = this.timeout_response;
                    // The client is slow by definition: give the courtesy response a bounded time.
                    tokio::spawn(async move {
                        use tokio::io::AsyncWriteExt;
                        let mut stream = stream;
                        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
                            let _ = stream.write_all(response).await;
                            let _ = stream.shutdown().await;
                        })
                        .await;
                    });
                }
                return Poll::Ready(());
            }
        }
        let Some(conn) = this.conn.as_mut() else {
            return Poll::Ready(());
        };
        match Pin::new(conn).poll(cx) {
            Poll::Ready(result) => {
                if let Err(err) = result {
                    tracing::debug!(error = %err, "client connection ended with an error");
                }
                this.conn = None;
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_head_field_detection() {
        let head = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\nhello";
        assert_eq!(raw_head_has_field(head, b"content-length"), Some(true));
        assert_eq!(raw_head_has_field(head, b"transfer-encoding"), Some(true));
        let head = b"POST / HTTP/1.1\r\nHost: a\r\nX-Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\nContent-Length: 9\r\n";
        assert_eq!(raw_head_has_field(head, b"content-length"), Some(false), "body bytes and other names do not count");
        assert_eq!(raw_head_has_field(b"GET / HTTP/1.1\r\nHost: a\r\n", b"content-length"), None, "incomplete head");
        assert_eq!(raw_head_has_field(b"GET / HTTP/1.1\r\nContent-length : 1\r\n", b"content-length"), Some(true));
        assert_eq!(raw_head_has_field(b"GET / HTTP/1.1\nCONTENT-LENGTH:1\n\n", b"content-length"), Some(true));
    }

    #[test]
    fn head_copy_tracks_phases() {
        let state = ConnState::new();
        state.on_read(b"GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
        assert!(state.begin_request(), "the first head is fresh");
        assert_eq!(state.head_had_content_length(), Some(true));
        state.on_read(b"ignored body bytes");
        state.end_request();
        assert!(!state.begin_request(), "a pipelined request without new reads is not fresh");
        state.end_request();
        state.on_read(b"GET / HTTP/1.1\r\n\r\n");
        assert!(state.begin_request());
        assert_eq!(state.head_had_content_length(), Some(false));
    }
}
