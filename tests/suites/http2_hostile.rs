//! Hostile HTTP/2, written frame by frame: a rapid-reset flood, a CONTINUATION flood, an oversized
//! frame, garbage after the preface. Each ends its own connection; other clients are served.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{Client, TestGateway, Upstream};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An empty SETTINGS frame: what a client sends after the preface.
fn settings() -> Vec<u8> {
    frame(4, 0, 0, &[])
}

/// HPACK for GET http://x/ with only static-table entries and one literal.
fn get_block() -> Vec<u8> {
    vec![0x82, 0x86, 0x84, 0x41, 0x01, b'x']
}

/// Reads until the server closes the connection (true) or `limit` passes (false); a GOAWAY
/// frame before the close is fine.
async fn closed_within(tcp: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = vec![0u8; 64 * 1024];
    tokio::time::timeout(limit, async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(_) => continue,
            }
        }
    })
    .await
    .unwrap_or(false)
}

fn gateway(app: &Upstream) -> TestGateway {
    TestGateway::start(&format!(
        r#"server: {{ workers: 1, timeouts: {{ header_read: 1s }} }}
listeners: [{{ name: public, address: "127.0.0.1:0" }}]
upstreams: {{ app: {{ endpoints: ["{}"] }} }}
routes: [{{ name: all, upstream: app }}]
"#,
        app.url()
    ))
}

async fn others_are_served(gw: &TestGateway) {
    let mut client = Client::connect(gw.addr()).await;
    assert_eq!(client.get("/still-fine").await.status, 200);
}

#[tokio::test]
async fn a_rapid_reset_flood_closes_its_connection() {
    let app = Upstream::start("slow", crate::common::UpstreamBehaviour::Delay(Duration::from_millis(200)));
    let gw = gateway(&app);
    let mut tcp = TcpStream::connect(gw.addr()).await.unwrap();
    // First one well-formed request: the frames below are valid HTTP/2, so what closes the
    // connection is the flood, not a malformed frame.
    let mut first = PREFACE.to_vec();
    first.extend(settings());
    first.extend(frame(1, 0x5, 1, &get_block()));
    tcp.write_all(&first).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while app.requests() == 0 {
        assert!(std::time::Instant::now() < deadline, "the well-formed request did not arrive");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut flood = Vec::new();
    for i in 1..2000u32 {
        let stream = 1 + 2 * i;
        flood.extend(frame(1, 0x5, stream, &get_block())); // HEADERS, END_STREAM | END_HEADERS
        flood.extend(frame(3, 0, stream, &8u32.to_be_bytes())); // RST_STREAM CANCEL
    }
    let _ = tcp.write_all(&flood).await;
    assert!(closed_within(&mut tcp, Duration::from_secs(5)).await, "the flood's connection stays open");
    // hyper allows 20 streams reset before they are answered: the flood's connection is cut long
    // before its 2000 streams reach the upstream.
    assert!(app.requests() < 200, "{} reset streams reached the upstream", app.requests());
    others_are_served(&gw).await;
}

#[tokio::test]
async fn a_continuation_flood_closes_its_connection() {
    let app = Upstream::echo("app");
    let gw = gateway(&app);
    let mut tcp = TcpStream::connect(gw.addr()).await.unwrap();
    let mut start = PREFACE.to_vec();
    start.extend(settings());
    // HEADERS without END_HEADERS, then CONTINUATION frames of literal headers that never end.
    start.extend(frame(1, 0x1, 1, &get_block()));
    tcp.write_all(&start).await.unwrap();
    let mut header = vec![0x00, 0x05]; // literal without indexing, new name of 5 bytes
    header.extend_from_slice(b"x-pad");
    header.push(100); // value length
    header.extend(std::iter::repeat_n(b'a', 100));
    let mut block = Vec::new();
    while block.len() + header.len() < 16_000 {
        block.extend_from_slice(&header);
    }
    let continuation = frame(9, 0, 1, &block);
    let mut sent = 0usize;
    for _ in 0..2000 {
        match tokio::time::timeout(Duration::from_secs(5), tcp.write_all(&continuation)).await {
            Ok(Ok(())) => sent += continuation.len(),
            _ => break,
        }
    }
    // Cut off near the header-list limit (some 80 KB, plus what the socket buffers hold), not
    // after the 32 MB the flood would be.
    assert!(sent < 8 << 20, "{sent} bytes of one header block were taken");
    assert!(closed_within(&mut tcp, Duration::from_secs(5)).await, "the flood's connection stays open");
    assert_eq!(app.requests(), 0);
    others_are_served(&gw).await;
}

#[tokio::test]
async fn oversized_frames_and_garbage_close_their_connection() {
    let app = Upstream::echo("app");
    let gw = gateway(&app);
    // A DATA frame longer than the 16 KiB SETTINGS_MAX_FRAME_SIZE.
    let mut tcp = TcpStream::connect(gw.addr()).await.unwrap();
    let mut bytes = PREFACE.to_vec();
    bytes.extend(settings());
    bytes.extend(frame(1, 0x4, 1, &get_block()));
    bytes.extend(frame(0, 0, 1, &vec![0u8; 70_000]));
    let _ = tcp.write_all(&bytes).await;
    assert!(closed_within(&mut tcp, Duration::from_secs(5)).await);
    // Garbage right after the preface.
    let mut tcp = TcpStream::connect(gw.addr()).await.unwrap();
    let mut bytes = PREFACE.to_vec();
    bytes.extend_from_slice(&[0xff; 64]);
    let _ = tcp.write_all(&bytes).await;
    assert!(closed_within(&mut tcp, Duration::from_secs(5)).await);
    // A preface cut short, then silence: closed by the head-read deadline.
    let mut tcp = TcpStream::connect(gw.addr()).await.unwrap();
    tcp.write_all(&PREFACE[..10]).await.unwrap();
    assert!(closed_within(&mut tcp, Duration::from_secs(5)).await);
    others_are_served(&gw).await;
}
