//! Server-Sent Events and other long responses: each event reaches the client before the upstream
//! sends the next one, over HTTP/1.1 and HTTP/2 alike.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::TestGateway;

const EVENTS: usize = 4;
const GAP: Duration = Duration::from_millis(400);

/// An SSE upstream: `EVENTS` events `GAP` apart, each one's send time noted.
async fn sse_upstream() -> (String, Arc<Mutex<Vec<Instant>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let sent = Arc::new(Mutex::new(Vec::new()));
    let log = sent.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = tcp.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    head.extend_from_slice(&buf[..n]);
                }
                let start = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n";
                tcp.write_all(start.as_bytes()).await.unwrap();
                for i in 0..EVENTS {
                    if i > 0 {
                        tokio::time::sleep(GAP).await;
                    }
                    let event = format!("id: {i}\nevent: tick\ndata: {{\"n\":{i}}}\n\n");
                    log.lock().unwrap().push(Instant::now());
                    if tcp.write_all(format!("{:x}\r\n{event}\r\n", event.len()).as_bytes()).await.is_err() {
                        return;
                    }
                }
                let _ = tcp.write_all(b"0\r\n\r\n").await;
            });
        }
    });
    (url, sent)
}

/// Reads the body frame by frame: each event's text and arrival time.
async fn events(mut body: hyper::body::Incoming) -> Vec<(String, Instant)> {
    let mut out = Vec::new();
    let mut pending = String::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.unwrap().into_data() else { continue };
        pending.push_str(std::str::from_utf8(&data).unwrap());
        while let Some(end) = pending.find("\n\n") {
            out.push((pending[..end].to_owned(), Instant::now()));
            pending.drain(..end + 2);
        }
    }
    out
}

fn check(received: &[(String, Instant)], sent: &[Instant]) {
    assert_eq!(received.len(), EVENTS, "{received:?}");
    for (i, (text, at)) in received.iter().enumerate() {
        assert!(text.contains(&format!("data: {{\"n\":{i}}}")), "{text}");
        if let Some(next) = sent.get(i + 1) {
            assert!(at < next, "event {i} reached the client only after the upstream sent event {}: buffered", i + 1);
        }
    }
}

#[tokio::test]
async fn server_sent_events_arrive_one_by_one_over_http1_and_http2() {
    let (url, sent) = sse_upstream().await;
    let gw = TestGateway::start(&format!(
        r#"listeners: [{{ name: public, address: "127.0.0.1:0" }}]
upstreams: {{ sse: {{ endpoints: ["{url}"] }} }}
routes: [{{ name: events, upstream: sse }}]
"#
    ));

    let tcp = TcpStream::connect(gw.addr()).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    let request = http::Request::get("/events").header("host", "x").header("accept", "text/event-stream");
    let response = sender.send_request(request.body(Full::new(Bytes::new())).unwrap()).await.unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let received = events(response.into_body()).await;
    check(&received, &sent.lock().unwrap().clone());

    sent.lock().unwrap().clear();
    let tcp = TcpStream::connect(gw.addr()).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    let request = http::Request::get("http://x/events").header("accept", "text/event-stream");
    let response = sender.send_request(request.body(Full::new(Bytes::new())).unwrap()).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    let received = events(response.into_body()).await;
    check(&received, &sent.lock().unwrap().clone());
}
