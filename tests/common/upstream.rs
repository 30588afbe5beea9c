//! In-process upstream servers on port 0, each on its own thread and runtime, recording what they
//! receive. Behaviours cover what the gateway must cope with: echoing, streaming, hanging, slow
//! answers, fixed statuses.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::sync::mpsc;

/// What one received request looked like (only requests whose body arrived complete).
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Path and query as received.
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A custom answer to a request.
pub type Handler = Arc<dyn Fn(&Seen) -> Response<Bytes> + Send + Sync>;

/// How an upstream answers.
#[derive(Clone)]
pub enum UpstreamBehaviour {
    /// 200 with a JSON description of the request.
    Echo,
    /// This status and a short body.
    Status(u16),
    /// Echo after a delay.
    Delay(Duration),
    /// Send these chunks with this gap between them.
    Stream { chunks: Vec<&'static str>, gap: Duration },
    /// Never answer.
    Hang,
    /// A custom answer.
    Custom(Handler),
}

pub struct Upstream {
    pub addr: SocketAddr,
    pub name: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<AtomicUsize>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Upstream {
    pub fn echo(name: &str) -> Upstream {
        Self::start(name, UpstreamBehaviour::Echo)
    }

    pub fn start(name: &str, behaviour: UpstreamBehaviour) -> Upstream {
        Self::start_on("127.0.0.1", name, behaviour)
    }

    /// An upstream on another loopback address (`127.0.0.2`, …), for tests that need endpoints
    /// told apart by host rather than port.
    pub fn start_on(ip: &str, name: &str, behaviour: UpstreamBehaviour) -> Upstream {
        let listener = std::net::TcpListener::bind((ip, 0)).expect("bind upstream");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (s, c, n) = (seen.clone(), connections.clone(), name.to_owned());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let accept = async {
                    loop {
                        let Ok((stream, _)) = listener.accept().await else { continue };
                        c.fetch_add(1, Ordering::SeqCst);
                        let (s, b, n) = (s.clone(), behaviour.clone(), n.clone());
                        tokio::spawn(async move {
                            let svc = hyper::service::service_fn(move |req| {
                                let (s, b, n) = (s.clone(), b.clone(), n.clone());
                                async move { Ok::<_, Infallible>(answer(req, &s, &b, &n).await) }
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), svc)
                                .await;
                        });
                    }
                };
                tokio::select! {
                    _ = accept => {}
                    _ = stop_rx => {}
                }
            });
        });
        Upstream { addr, name: name.to_owned(), seen, connections, stop: Some(stop_tx), thread: Some(thread) }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen").clone()
    }

    pub fn requests(&self) -> usize {
        self.seen.lock().expect("seen").len()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Stops accepting and closes the listener (the address then refuses connections).
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn answer(
    req: Request<Incoming>,
    seen: &Mutex<Vec<Seen>>,
    behaviour: &UpstreamBehaviour,
    name: &str,
) -> Response<TestBody> {
    let (parts, body) = req.into_parts();
    // A request whose body never completed (the gateway aborted it) is not a delivered request.
    let Ok(body) = body.collect().await.map(|c| c.to_bytes()) else {
        return Response::new(TestBody::full("incomplete body"));
    };
    let record = Seen {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        headers: parts.headers.clone(),
        body: body.clone(),
    };
    seen.lock().expect("seen").push(record.clone());
    match behaviour {
        UpstreamBehaviour::Echo => echo(&record, name),
        UpstreamBehaviour::Delay(d) => {
            tokio::time::sleep(*d).await;
            echo(&record, name)
        }
        UpstreamBehaviour::Status(code) => {
            let mut r = Response::new(TestBody::full(format!("status {code} from {name}")));
            *r.status_mut() = StatusCode::from_u16(*code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            r
        }
        UpstreamBehaviour::Stream { chunks, gap } => {
            let (tx, rx) = mpsc::channel(1);
            let (chunks, gap) = (chunks.clone(), *gap);
            tokio::spawn(async move {
                for (i, chunk) in chunks.into_iter().enumerate() {
                    if i > 0 {
                        tokio::time::sleep(gap).await;
                    }
                    if tx.send(Bytes::from_static(chunk.as_bytes())).await.is_err() {
                        return;
                    }
                }
            });
            Response::new(TestBody::Channel(rx))
        }
        UpstreamBehaviour::Hang => std::future::pending().await,
        UpstreamBehaviour::Custom(f) => f(&record).map(TestBody::Full),
    }
}

fn echo(seen: &Seen, name: &str) -> Response<TestBody> {
    let mut headers = serde_json::Map::new();
    for (k, v) in &seen.headers {
        let list = headers.entry(k.as_str()).or_insert_with(|| json!([]));
        if let Some(a) = list.as_array_mut() {
            a.push(json!(String::from_utf8_lossy(v.as_bytes())));
        }
    }
    let body = json!({
        "instance": name,
        "method": seen.method,
        "uri": seen.uri,
        "headers": headers,
        "body_len": seen.body.len(),
        "body": String::from_utf8_lossy(&seen.body),
    });
    let mut r = Response::new(TestBody::full(body.to_string()));
    r.headers_mut().insert("content-type", "application/json".parse().expect("ct"));
    r
}

/// The upstream's response body: fixed bytes or chunks fed through a channel.
pub enum TestBody {
    Full(Bytes),
    Channel(mpsc::Receiver<Bytes>),
    Done,
}

impl TestBody {
    fn full(text: impl Into<String>) -> TestBody {
        TestBody::Full(Bytes::from(text.into()))
    }
}

impl Body for TestBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match &mut *self {
            TestBody::Full(_) => {
                let TestBody::Full(b) = std::mem::replace(&mut *self, TestBody::Done) else { unreachable!() };
                Poll::Ready(Some(Ok(Frame::data(b))))
            }
            TestBody::Channel(rx) => rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b)))),
            TestBody::Done => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, TestBody::Done)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            TestBody::Full(b) => http_body::SizeHint::with_exact(b.len() as u64),
            TestBody::Done => http_body::SizeHint::with_exact(0),
            TestBody::Channel(_) => http_body::SizeHint::default(),
        }
    }
}

/// A future that is never ready; `std::future::pending` with a concrete type for `select!`.
pub fn never() -> impl Future<Output = ()> {
    std::future::pending()
}
