//! Worker threads: a single-threaded runtime each, accepting on their own sockets, serving their
//! connections, sweeping connection deadlines, and draining on shutdown.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::proxy::HttpProxy;
use crate::proxy::error::REQUEST_TIMEOUT_RESPONSE;
use crate::state::ServerSettings;
use crate::upstream::pool;

use super::clock;
use super::conn::{
    ClientIo, Command, ConnContext, ConnState, ConnStream, ConnectionHold, Driver, Phase, ServeConnection,
};
use super::listener::BoundListener;

/// Every connection of a worker, with the listener it came in on.
type Connections = Arc<Mutex<Vec<(usize, Weak<ConnState>)>>>;

/// What a reload asks of a worker: listen on a new listener, or stop accepting on a removed one
/// (its connections drain).
pub enum Control {
    Add(usize, std::net::TcpListener),
    Remove(usize),
}

/// The running workers.
pub struct Workers {
    workers: Vec<Worker>,
}

struct Worker {
    thread: Option<JoinHandle<()>>,
    /// `Some(deadline)` asks the worker to stop accepting and drain until the deadline.
    shutdown: watch::Sender<Option<Instant>>,
    control: tokio::sync::mpsc::UnboundedSender<Control>,
}

/// The workers' control channels: what a reload uses to add and remove listeners.
#[derive(Clone)]
pub struct Controls(Vec<tokio::sync::mpsc::UnboundedSender<Control>>);

impl Controls {
    /// Listener `id` on these sockets, one per worker (in worker order).
    pub fn add(&self, id: usize, sockets: Vec<std::net::TcpListener>) {
        for (control, socket) in self.0.iter().zip(sockets) {
            let _ = control.send(Control::Add(id, socket));
        }
    }

    /// Listener `id` stops accepting everywhere; its connections finish what they do and close.
    pub fn remove(&self, id: usize) {
        for control in &self.0 {
            let _ = control.send(Control::Remove(id));
        }
    }

    pub fn workers(&self) -> usize {
        self.0.len()
    }
}

impl Workers {
    /// Starts `count` workers; worker `i` takes socket `i` of every listener (listener id = its
    /// position in `listeners`).
    pub fn start(count: usize, listeners: &mut [BoundListener], proxy: Arc<HttpProxy>) -> io::Result<Workers> {
        let mut workers = Vec::with_capacity(count);
        // Worker i takes sockets i, i + count, …: with sockets handed over by a process that had
        // more workers, some take several (none may be left unserved: the kernel queues
        // connections on each).
        let mut shares: Vec<Vec<(usize, std::net::TcpListener)>> = (0..count).map(|_| Vec::new()).collect();
        for (id, listener) in listeners.iter_mut().enumerate() {
            if listener.sockets.len() < count {
                return Err(io::Error::other(format!("listener {} has too few sockets", listener.name)));
            }
            for (i, socket) in listener.sockets.drain(..).enumerate() {
                shares[i % count].push((id, socket));
            }
        }
        for (index, sockets) in shares.into_iter().enumerate() {
            let (tx, rx) = watch::channel(None);
            let (control, control_rx) = tokio::sync::mpsc::unbounded_channel();
            let proxy = proxy.clone();
            let thread = std::thread::Builder::new().name(format!("gatehouse-worker-{index}")).spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start a worker runtime");
                        return;
                    }
                };
                runtime.block_on(run(sockets, proxy, rx, control_rx));
            })?;
            workers.push(Worker { thread: Some(thread), shutdown: tx, control });
        }
        Ok(Workers { workers })
    }

    pub fn controls(&self) -> Controls {
        Controls(self.workers.iter().map(|w| w.control.clone()).collect())
    }

    /// Stops accepting, lets in-flight requests finish until `grace` is over, then closes what is
    /// left and joins the threads.
    pub fn shutdown(mut self, grace: Duration) {
        let deadline = Instant::now() + grace;
        for worker in &self.workers {
            let _ = worker.shutdown.send(Some(deadline));
        }
        for worker in &mut self.workers {
            if let Some(thread) = worker.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for worker in &self.workers {
            let _ = worker.shutdown.send(Some(Instant::now()));
        }
    }
}

async fn run(
    sockets: Vec<(usize, std::net::TcpListener)>,
    proxy: Arc<HttpProxy>,
    mut shutdown: watch::Receiver<Option<Instant>>,
    mut control: tokio::sync::mpsc::UnboundedReceiver<Control>,
) {
    let connections: Connections = Arc::default();
    let mut accepts: Vec<(usize, tokio::task::JoinHandle<()>)> = Vec::new();
    let start = |id: usize, socket: std::net::TcpListener, accepts: &mut Vec<(usize, tokio::task::JoinHandle<()>)>| {
        match TcpListener::from_std(socket) {
            Ok(listener) => {
                accepts.push((id, tokio::spawn(accept_loop(listener, id, proxy.clone(), connections.clone()))));
            }
            Err(e) => tracing::error!(error = %e, "cannot register a listening socket"),
        }
    };
    for (id, socket) in sockets {
        start(id, socket, &mut accepts);
    }
    let sweeper = tokio::spawn(sweep_loop(proxy.clone(), connections.clone()));

    let deadline = loop {
        if let Some(deadline) = *shutdown.borrow_and_update() {
            break deadline;
        }
        tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() {
                    break Instant::now();
                }
            }
            Some(command) = control.recv() => match command {
                Control::Add(id, socket) => start(id, socket, &mut accepts),
                Control::Remove(id) => {
                    accepts.retain(|(listener, accept)| {
                        if *listener == id {
                            accept.abort();
                        }
                        *listener != id
                    });
                    let list = connections.lock().unwrap_or_else(|e| e.into_inner());
                    for state in list.iter().filter(|(l, _)| *l == id).filter_map(|(_, w)| w.upgrade()) {
                        state.command(Command::Drain);
                    }
                }
            },
        }
    };
    for (_, accept) in &accepts {
        accept.abort();
    }
    broadcast(&connections, Command::Drain);
    while live(&connections) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    broadcast(&connections, Command::Close);
    let closing = Instant::now();
    while live(&connections) > 0 && closing.elapsed() < Duration::from_secs(1) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    sweeper.abort();
    pool::clear();
}

fn live(connections: &Connections) -> usize {
    let mut list = connections.lock().unwrap_or_else(|e| e.into_inner());
    list.retain(|(_, w)| w.strong_count() > 0);
    list.len()
}

fn broadcast(connections: &Connections, command: Command) {
    let list = connections.lock().unwrap_or_else(|e| e.into_inner());
    for state in list.iter().filter_map(|(_, w)| w.upgrade()) {
        state.command(command);
    }
}

async fn accept_loop(listener: TcpListener, id: usize, proxy: Arc<HttpProxy>, connections: Connections) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let Some(open) = admit(&proxy, id) else {
                    // Over the listener's `max_connections`: closed at once, before any read.
                    drop(stream);
                    continue;
                };
                let state = ConnState::counted(Some(open.counts().clone()));
                connections.lock().unwrap_or_else(|e| e.into_inner()).push((id, Arc::downgrade(&state)));
                let proxy = proxy.clone();
                tokio::spawn(async move {
                    serve(stream, peer, id, proxy, state).await;
                    drop(open);
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Counts a new connection on listener `id`, unless the listener is full.
fn admit(proxy: &Arc<HttpProxy>, id: usize) -> Option<ConnectionHold> {
    let counts = proxy.counts.get(id)?;
    let limit = proxy.snapshot.load().listeners.get(id).and_then(|l| l.max_connections);
    let (open, before) = ConnectionHold::open(counts);
    if limit.is_some_and(|max| before >= max) {
        tracing::debug!(listener = id, "connection refused: the listener's max_connections is reached");
        return None;
    }
    Some(open)
}

/// The HTTP/2 connection preface: a clear-text client that starts with it speaks HTTP/2 (h2c with
/// prior knowledge).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

async fn serve(stream: TcpStream, peer: SocketAddr, listener: usize, proxy: Arc<HttpProxy>, state: Arc<ConnState>) {
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr().unwrap_or(peer);
    let snap = proxy.snapshot.load();
    let server = ConnLimits::of(&snap.server);
    let Some(settings) = snap.listeners.get(listener) else { return };
    let (tls, http2) = (settings.tls.clone(), settings.http2);
    drop(snap);
    let mut client_cert = None;
    let (io, h2, prefix) = match tls {
        Some(tls) => {
            // A client that does not finish its handshake in time, or sends something that is not
            // TLS, is closed: nothing to answer in.
            let handshake = tokio::time::timeout(tls.handshake_timeout, tls.acceptor.accept(stream));
            let stream = match handshake.await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let session = stream.get_ref().1;
            let h2 = http2 && session.alpn_protocol() == Some(b"h2");
            client_cert = session
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(super::tls::ClientIdentity::of)
                .map(Arc::new);
            (ClientIo::Tls(Box::new(stream)), h2, None)
        }
        None if http2 => {
            let mut stream = stream;
            let first = tokio::time::timeout(server.header_read_timeout, sniff_preface(&mut stream)).await;
            match first {
                Ok(Ok((h2, prefix))) => (ClientIo::Plain(stream), h2, Some(prefix)),
                // Closed before a byte, or silent for the whole head-read time.
                Ok(Err(_)) | Err(_) => return,
            }
        }
        None => (ClientIo::Plain(stream), false, None),
    };
    let scheme = if matches!(io, ClientIo::Tls(_)) { "https" } else { "http" };
    let mut ctx = ConnContext::new(peer, local, listener, scheme, state.clone());
    ctx.client_cert = client_cert;
    let ctx = Arc::new(ctx);
    let service = service_fn(move |req: http::Request<Incoming>| {
        let proxy = proxy.clone();
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(proxy.serve(&ctx, req).await) }
    });
    let io = TokioIo::new(ConnStream::new(io, state.clone(), prefix));
    if h2 {
        state.set_multiplexed();
        let conn = h2_builder(&server).serve_connection(io, service);
        Driver::new(conn, state, REQUEST_TIMEOUT_RESPONSE).await;
    } else {
        let conn = h1_builder(&server).serve_connection(io, service).with_upgrades();
        Driver::new(conn, state, REQUEST_TIMEOUT_RESPONSE).await;
    }
}

/// Reads the first bytes of a clear-text connection until they either are the HTTP/2 preface
/// or cannot be: `(is HTTP/2, the bytes read)`. One read suffices in practice.
async fn sniff_preface(stream: &mut TcpStream) -> std::io::Result<(bool, bytes::Bytes)> {
    use tokio::io::AsyncReadExt;
    let mut buf = bytes::BytesMut::with_capacity(4096);
    loop {
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let n = buf.len().min(H2_PREFACE.len());
        if buf[..n] != H2_PREFACE[..n] {
            return Ok((false, buf.freeze()));
        }
        if n == H2_PREFACE.len() {
            return Ok((true, buf.freeze()));
        }
    }
}

/// HTTP/2 settings: streams per connection and header list size from the limits; hyper's own
/// defences against rapid reset (a cap on streams reset before they are answered) stay on.
/// What a connection needs of the server settings, copied out of the snapshot (the settings
/// themselves hold lists and handles a connection has no use for).
#[derive(Clone, Copy)]
struct ConnLimits {
    header_read_timeout: Duration,
    max_uri_length: usize,
    max_header_bytes: usize,
    max_headers: usize,
    max_concurrent_streams: u32,
}

impl ConnLimits {
    fn of(server: &ServerSettings) -> ConnLimits {
        ConnLimits {
            header_read_timeout: server.header_read_timeout,
            max_uri_length: server.max_uri_length,
            max_header_bytes: server.max_header_bytes,
            max_headers: server.max_headers,
            max_concurrent_streams: server.max_concurrent_streams,
        }
    }
}

fn h2_builder(server: &ConnLimits) -> http2::Builder<TokioExecutor> {
    let mut builder = http2::Builder::new(TokioExecutor::new());
    let head_limit = (server.max_uri_length + server.max_header_bytes).saturating_mul(2) + 1024;
    builder
        .max_concurrent_streams(server.max_concurrent_streams)
        .max_header_list_size(u32::try_from(head_limit).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(Some(20))
        .max_local_error_reset_streams(Some(256))
        .timer(hyper_util::rt::TokioTimer::new());
    builder
}

/// hyper's parser limits sit above the configured ones, so that requests just over a limit get the
/// JSON error from the proxy; far bigger ones are stopped by hyper before they are buffered.
fn h1_builder(server: &ConnLimits) -> http1::Builder {
    let mut builder = http1::Builder::new();
    let head_limit = (server.max_uri_length + server.max_header_bytes).saturating_mul(2) + 1024;
    builder.keep_alive(true).max_header_size(head_limit).max_buf_size(head_limit.max(8192) + 8192);
    // hyper parses up to 100 fields without allocating; only a higher configured limit pays for more.
    if server.max_headers > 100 {
        builder.max_headers(server.max_headers);
    }
    builder
}

// hyper's connections are served through `ServeConnection` directly (a trait of ours on hyper's
// types): the driver needs graceful shutdown, and for HTTP/1 the stream back after a timeout.
impl<S> ServeConnection for http1::UpgradeableConnection<TokioIo<ConnStream>, S>
where
    S: hyper::service::HttpService<Incoming> + Unpin,
    S::ResBody: 'static,
    <S::ResBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn graceful_shutdown(&mut self) {
        std::pin::Pin::new(self).graceful_shutdown();
    }
    fn into_stream(self) -> Option<ConnStream> {
        self.into_parts().map(|parts| parts.io.into_inner())
    }
}

impl<S> ServeConnection for http2::Connection<TokioIo<ConnStream>, S, TokioExecutor>
where
    S: hyper::service::HttpService<Incoming> + Unpin,
    S::Future: Send + 'static,
    S::ResBody: Send + 'static,
    <S::ResBody as http_body::Body>::Data: Send,
    <S::ResBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn graceful_shutdown(&mut self) {
        std::pin::Pin::new(self).graceful_shutdown();
    }
    /// Streams may be in progress: there is no single stream to answer on.
    fn into_stream(self) -> Option<ConnStream> {
        None
    }
}

/// Compares each connection's phase with the clock and closes the ones past their deadline.
async fn sweep_loop(proxy: Arc<HttpProxy>, connections: Connections) {
    loop {
        let snap = proxy.snapshot.load();
        let header_read = snap.server.header_read_timeout.as_millis() as u64;
        let idle = snap.server.idle_timeout.as_millis() as u64;
        drop(snap);
        // Deadlines fire between one and two ticks late, never early.
        let tick = (header_read.min(idle) / 8).clamp(5, 250);
        tokio::time::sleep(Duration::from_millis(tick)).await;
        let now = clock::tick();
        pool::purge();
        let mut list = connections.lock().unwrap_or_else(|e| e.into_inner());
        list.retain(|(_, weak)| {
            let Some(state) = weak.upgrade() else { return false };
            let (phase, since) = state.phase();
            let waited = now.saturating_sub(since);
            match phase {
                Phase::ReadingHead if waited >= header_read + tick => state.command(Command::HeaderTimeout),
                Phase::Idle if waited >= idle + tick => state.command(Command::Close),
                _ => {}
            }
            true
        });
    }
}
