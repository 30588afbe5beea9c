//! A tonic gRPC service (`test.Echo`) with every kind of call, and a tonic client that talks
//! HTTP/2 to any address (the gateway): messages are prost types written out by hand, so no
//! protoc is needed.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use tonic::codegen::http;
use tonic::{Request, Response, Status, Streaming};

#[derive(Clone, PartialEq, prost::Message)]
pub struct Note {
    #[prost(string, tag = "1")]
    pub text: String,
}

pub fn note(text: &str) -> Note {
    Note { text: text.to_owned() }
}

type NoteStream = Pin<Box<dyn Stream<Item = Result<Note, Status>> + Send>>;
type Codec = tonic_prost::ProstCodec<Note, Note>;

/// The service: routes `/test.Echo/<Method>` to the handlers below.
#[derive(Clone, Default)]
struct Echo;

struct Unary;
impl tonic::server::UnaryService<Note> for Unary {
    type Response = Note;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Note>, Status>> + Send>>;
    fn call(&mut self, request: Request<Note>) -> Self::Future {
        Box::pin(async move {
            let seen_te = request.metadata().get("te").map(|v| v.to_str().unwrap_or("").to_owned()).unwrap_or_default();
            let text = request.into_inner().text;
            if text == "fail" {
                return Err(Status::not_found("no such note: fail"));
            }
            if text == "slow" {
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            let mut response = Response::new(note(&format!("echo: {text}")));
            response.metadata_mut().insert("x-served-by", "tonic".parse().unwrap());
            response.metadata_mut().insert("x-seen-te", seen_te.parse().unwrap());
            Ok(response)
        })
    }
}

struct ServerStream;
impl tonic::server::ServerStreamingService<Note> for ServerStream {
    type Response = Note;
    type ResponseStream = NoteStream;
    type Future = Pin<Box<dyn Future<Output = Result<Response<NoteStream>, Status>> + Send>>;
    fn call(&mut self, request: Request<Note>) -> Self::Future {
        Box::pin(async move {
            let n: usize = request.into_inner().text.parse().map_err(|_| Status::invalid_argument("a count"))?;
            let stream = futures_util::stream::iter(0..n).then(|i| async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok(note(&format!("part {i}")))
            });
            Ok(Response::new(Box::pin(stream) as NoteStream))
        })
    }
}

struct ClientStream;
impl tonic::server::ClientStreamingService<Note> for ClientStream {
    type Response = Note;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Note>, Status>> + Send>>;
    fn call(&mut self, request: Request<Streaming<Note>>) -> Self::Future {
        Box::pin(async move {
            let mut stream = request.into_inner();
            let mut texts = Vec::new();
            while let Some(item) = stream.next().await {
                texts.push(item?.text);
            }
            Ok(Response::new(note(&texts.join("+"))))
        })
    }
}

struct Bidi;
impl tonic::server::StreamingService<Note> for Bidi {
    type Response = Note;
    type ResponseStream = NoteStream;
    type Future = Pin<Box<dyn Future<Output = Result<Response<NoteStream>, Status>> + Send>>;
    fn call(&mut self, request: Request<Streaming<Note>>) -> Self::Future {
        Box::pin(async move {
            let stream = request.into_inner().map(|item| item.map(|n| note(&format!("re: {}", n.text))));
            Ok(Response::new(Box::pin(stream) as NoteStream))
        })
    }
}

impl<B> tower_service::Service<http::Request<B>> for Echo
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request.uri().path().to_owned();
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(Codec::default());
            Ok(match path.as_str() {
                "/test.Echo/Unary" => grpc.unary(Unary, request).await,
                "/test.Echo/ServerStream" => grpc.server_streaming(ServerStream, request).await,
                "/test.Echo/ClientStream" => grpc.client_streaming(ClientStream, request).await,
                "/test.Echo/Bidi" => grpc.streaming(Bidi, request).await,
                _ => Status::unimplemented(path).into_http(),
            })
        })
    }
}

impl tonic::server::NamedService for Echo {
    const NAME: &'static str = "test.Echo";
}

/// Serves `test.Echo` on a port of its own (a thread and runtime of its own).
pub struct EchoServer {
    pub addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    _thread: std::thread::JoinHandle<()>,
}

impl EchoServer {
    pub fn start() -> EchoServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                // Every accepted connection counted, so tests can tell how many the gateway opened.
                let incoming = Box::pin(futures_util::stream::unfold(listener, move |listener| {
                    let counted = counted.clone();
                    async move {
                        let accepted = listener.accept().await.map(|(stream, _)| {
                            let _ = stream.set_nodelay(true);
                            counted.fetch_add(1, Ordering::SeqCst);
                            stream
                        });
                        Some((accepted, listener))
                    }
                }));
                let _ = tonic::transport::Server::builder().add_service(Echo).serve_with_incoming(incoming).await;
            });
        });
        EchoServer { addr, connections, _thread: thread }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// tonic's client over one HTTP/2 connection (prior knowledge) to `addr`.
#[derive(Clone)]
pub struct H2(hyper::client::conn::http2::SendRequest<tonic::body::Body>);

impl tower_service::Service<http::Request<tonic::body::Body>> for H2 {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }
    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(self.0.send_request(request))
    }
}

pub struct EchoClient {
    grpc: tonic::client::Grpc<H2>,
}

impl EchoClient {
    pub async fn connect(addr: SocketAddr) -> EchoClient {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        let origin: http::Uri = format!("http://{addr}").parse().unwrap();
        EchoClient { grpc: tonic::client::Grpc::with_origin(H2(sender), origin) }
    }

    fn path(method: &str) -> http::uri::PathAndQuery {
        format!("/test.Echo/{method}").parse().unwrap()
    }

    pub async fn unary(&mut self, request: Request<Note>) -> Result<Response<Note>, Status> {
        self.grpc.ready().await.map_err(|e| Status::unknown(e.to_string()))?;
        self.grpc.unary(request, Self::path("Unary"), Codec::default()).await
    }

    pub async fn call_unknown(&mut self) -> Result<Response<Note>, Status> {
        self.grpc.ready().await.map_err(|e| Status::unknown(e.to_string()))?;
        self.grpc.unary(Request::new(note("x")), Self::path("Nothing"), Codec::default()).await
    }

    pub async fn server_stream(&mut self, n: usize) -> Result<Streaming<Note>, Status> {
        self.grpc.ready().await.map_err(|e| Status::unknown(e.to_string()))?;
        let request = Request::new(note(&n.to_string()));
        Ok(self.grpc.server_streaming(request, Self::path("ServerStream"), Codec::default()).await?.into_inner())
    }

    pub async fn client_stream(&mut self, texts: &[&str]) -> Result<Note, Status> {
        self.grpc.ready().await.map_err(|e| Status::unknown(e.to_string()))?;
        let notes: Vec<Note> = texts.iter().map(|t| note(t)).collect();
        let request = Request::new(futures_util::stream::iter(notes));
        Ok(self.grpc.client_streaming(request, Self::path("ClientStream"), Codec::default()).await?.into_inner())
    }

    /// Opens a bidirectional call: what is sent on the channel goes out as it is sent.
    pub async fn bidi(&mut self) -> Result<(tokio::sync::mpsc::Sender<Note>, Streaming<Note>), Status> {
        self.grpc.ready().await.map_err(|e| Status::unknown(e.to_string()))?;
        let (tx, rx) = tokio::sync::mpsc::channel::<Note>(4);
        let outgoing = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|n| (n, rx)) });
        let response = self.grpc.streaming(Request::new(outgoing), Self::path("Bidi"), Codec::default()).await?;
        Ok((tx, response.into_inner()))
    }
}

pub fn frame(flag: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![flag];
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Splits a gRPC-Web answer body into (messages, trailer block).
pub fn frames(mut body: &[u8]) -> (Vec<String>, String) {
    use prost::Message;
    let (mut messages, mut trailers) = (Vec::new(), String::new());
    while body.len() >= 5 {
        let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
        let payload = &body[5..5 + len];
        if body[0] & 0x80 != 0 {
            trailers = String::from_utf8(payload.to_vec()).unwrap();
        } else {
            messages.push(Note::decode(payload).unwrap().text);
        }
        body = &body[5 + len..];
    }
    assert!(body.is_empty(), "a partial frame is left");
    (messages, trailers)
}

/// Decodes a grpc-web-text body: padded base64 pieces one after the other (each frame encoded as
/// it came). Returns the bytes and the number of pieces.
pub fn decode_text(text: &str) -> (Vec<u8>, usize) {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let (mut decoded, mut pieces) = (Vec::new(), 0);
    let mut rest = text;
    while !rest.is_empty() {
        pieces += 1;
        let end =
            rest.find('=').map(|i| rest[i..].find(|c| c != '=').map_or(rest.len(), |j| i + j)).unwrap_or(rest.len());
        decoded.extend(b64.decode(&rest[..end]).unwrap());
        rest = &rest[end..];
    }
    (decoded, pieces)
}
