//! The HTTP/1.1 client side on the wire: upstreams that answer with scripted bytes — framing that
//! is ambiguous or broken, bodies in tiny pieces, informational responses, early answers, stale
//! pooled connections — and what the client and the pool see of it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::{Client, RawConn, TestGateway};

/// What the scripted upstream does for one request.
struct Answer {
    /// Bytes to send, each piece in a write of its own (with a pause between pieces).
    pieces: Vec<Vec<u8>>,
    /// Read the request body (by its Content-Length) before answering.
    read_body: bool,
    /// Close the connection after answering (after draining what the client still sends).
    close: bool,
    /// Send the first piece before reading the body, the rest after it.
    head_first: bool,
}

impl Answer {
    fn bytes(bytes: &[u8]) -> Answer {
        Answer { pieces: vec![bytes.to_vec()], read_body: true, close: false, head_first: false }
    }
    fn closing(mut self) -> Answer {
        self.close = true;
        self
    }
}

type Script = dyn Fn(usize, &str) -> Answer + Send + Sync;

/// An upstream on a raw socket answering each request head (numbered from 0 across connections)
/// with what the script says.
struct WireUpstream {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    heads: Arc<Mutex<Vec<String>>>,
}

impl WireUpstream {
    async fn start(script: impl Fn(usize, &str) -> Answer + Send + Sync + 'static) -> WireUpstream {
        Self::start_counting(false, script).await
    }

    /// `start`, the script given each request's number on its connection instead (from 0).
    async fn per_connection(script: impl Fn(usize, &str) -> Answer + Send + Sync + 'static) -> WireUpstream {
        Self::start_counting(true, script).await
    }

    async fn start_counting(
        per_connection: bool,
        script: impl Fn(usize, &str) -> Answer + Send + Sync + 'static,
    ) -> WireUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let script: Arc<Script> = Arc::new(script);
        let (c, h) = (connections.clone(), heads.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                c.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(stream, script.clone(), h.clone(), per_connection));
            }
        });
        WireUpstream { addr, connections, heads }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }

    fn gateway(&self) -> TestGateway {
        TestGateway::start(&format!(
            "listeners: [{{ name: public, address: \"127.0.0.1:0\" }}]\n\
             upstreams:\n  backend: {{ endpoints: [\"{}\"], timeouts: {{ response_header: 2s }} }}\n\
             routes:\n  - name: all\n    upstream: backend\n",
            self.url()
        ))
    }
}

async fn serve(mut stream: TcpStream, script: Arc<Script>, heads: Arc<Mutex<Vec<String>>>, per_connection: bool) {
    let mut on_connection = 0;
    let mut buf = Vec::new();
    loop {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let n = {
            let mut heads = heads.lock().unwrap();
            heads.push(head.clone());
            heads.len() - 1
        };
        let answer = script(if per_connection { on_connection } else { n }, &head);
        on_connection += 1;
        let mut pieces = answer.pieces.iter();
        if answer.head_first {
            let first = pieces.next().expect("a first piece");
            if stream.write_all(first).await.is_err() {
                return;
            }
        }
        if answer.read_body {
            let length = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            while buf.len() < length {
                let mut chunk = [0u8; 65536];
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            buf.drain(..length);
        }
        for (i, piece) in pieces.enumerate() {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            if stream.write_all(piece).await.is_err() {
                return;
            }
        }
        if answer.close {
            // A lingering close: what the client still sends is read, so the kernel does not
            // answer it with a reset that could overtake the response.
            let _ = stream.shutdown().await;
            let mut sink = [0u8; 65536];
            let drain = async { while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {} };
            let _ = tokio::time::timeout(Duration::from_secs(3), drain).await;
            return;
        }
    }
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

#[tokio::test]
async fn ambiguous_or_malformed_response_heads_are_a_502() {
    let oversized = format!("HTTP/1.1 200 OK\r\nx-big: {}\r\ncontent-length: 2\r\n\r\nok", "a".repeat(70 * 1024));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "/te-and-cl",
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n".to_vec(),
        ),
        ("/two-lengths", b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok!".to_vec()),
        ("/length-list", b"HTTP/1.1 200 OK\r\ncontent-length: 2, 3\r\n\r\nok!".to_vec()),
        ("/not-a-length", b"HTTP/1.1 200 OK\r\ncontent-length: +2\r\n\r\nok".to_vec()),
        ("/status", b"HTTP/1.1 2000 OK\r\ncontent-length: 2\r\n\r\nok".to_vec()),
        ("/folded", b"HTTP/1.1 200 OK\r\nx-a: b\r\n  folded\r\ncontent-length: 2\r\n\r\nok".to_vec()),
        ("/not-http", b"SSH-2.0-OpenSSH_9.2\r\n\r\n".to_vec()),
        ("/oversized", oversized.into_bytes()),
    ];
    let table: Vec<(String, Vec<u8>)> = cases.iter().map(|(p, b)| (p.to_string(), b.clone())).collect();
    let upstream = WireUpstream::start(move |_, head| {
        let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
        match table.iter().find(|(p, _)| *p == path) {
            Some((_, bytes)) => Answer::bytes(bytes).closing(),
            None => Answer::bytes(OK),
        }
    })
    .await;
    let gw = upstream.gateway();
    for (path, _) in &cases {
        let mut client = Client::connect(gw.addr()).await;
        let reply = client.get(path).await;
        assert_eq!(reply.status, 502, "{path}: {}", reply.text());
        assert_eq!(reply.error_code(), "upstream_error", "{path}");
        // The gateway and the client's connection keep serving.
        let good = client.get("/good").await;
        assert_eq!((good.status.as_u16(), good.text().as_str()), (200, "ok"), "after {path}");
    }
}

#[tokio::test]
async fn a_chunked_body_in_one_byte_pieces_arrives_whole_and_the_connection_is_reused() {
    let body = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;name=value\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n0\r\nx-checksum: 42\r\n\r\n";
    let upstream = WireUpstream::start(move |n, _| {
        if n == 0 {
            Answer { pieces: body.iter().map(|b| vec![*b]).collect(), read_body: true, close: false, head_first: false }
        } else {
            Answer::bytes(OK)
        }
    })
    .await;
    let gw = upstream.gateway();
    let mut client = Client::connect(gw.addr()).await;
    let reply = client.get("/chunked").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "hello 0123456789");
    assert_eq!(client.get("/next").await.text(), "ok");
    assert_eq!(upstream.connections(), 1, "the connection went back to the pool after the last chunk");
}

#[tokio::test]
async fn broken_or_cut_off_bodies_never_return_their_connection_to_the_pool() {
    let answers: Vec<&'static [u8]> = vec![
        // A chunk size that is not hex.
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\nzz\r\nmore\r\n0\r\n\r\n",
        // Chunk data not followed by CRLF.
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nokXX3\r\nabc\r\n0\r\n\r\n",
        // A chunk size that overflows 64 bits.
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1ffffffffffffffff\r\nok\r\n0\r\n\r\n",
        // More bytes after the body than its length says (a second, unasked-for response).
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nforged",
    ];
    let n_answers = answers.len();
    let upstream = WireUpstream::start(move |n, _| match answers.get(n / 2) {
        Some(bad) if n % 2 == 0 => Answer::bytes(bad),
        _ => Answer::bytes(OK),
    })
    .await;
    let gw = upstream.gateway();
    for i in 0..n_answers {
        let mut raw = RawConn::connect(gw.addr()).await;
        raw.send(b"GET /bad HTTP/1.1\r\nhost: x\r\n\r\n").await;
        let _ = raw.read_response(Duration::from_secs(3)).await;
        // The next request gets a good answer on a new upstream connection, never the rest of
        // the broken one.
        let reply = crate::common::get(gw.addr(), "/good").await;
        assert_eq!((reply.status.as_u16(), reply.text().as_str()), (200, "ok"), "after answer {i}");
        // Answer i came on the connection pooled after answer i-1's good one.
        assert_eq!(upstream.connections(), i + 2, "answer {i}: its connection was closed, not pooled");
    }
    // A body cut off by the upstream's close: the client's response ends abruptly, not cleanly.
    let cut = WireUpstream::start(|_, _| {
        Answer::bytes(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly ten..").closing()
    })
    .await;
    let gw = cut.gateway();
    let mut raw = RawConn::connect(gw.addr()).await;
    raw.send(b"GET /cut HTTP/1.1\r\nhost: x\r\n\r\n").await;
    let reply = raw.read_response(Duration::from_secs(3)).await;
    // The client sees the announced length and fewer bytes (or nothing), never a clean ending.
    if let Some(reply) = reply {
        assert_eq!(reply.header("content-length").as_deref(), Some("100"), "{}", reply.head);
        assert!(reply.body.len() < 100);
    }
    assert!(raw.closed_within(Duration::from_secs(3)).await, "the client's connection is closed after it");
}

#[tokio::test]
async fn a_body_delimited_by_the_upstreams_close_arrives_whole() {
    let upstream = WireUpstream::start(|_, _| {
        Answer::bytes(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil the end").closing()
    })
    .await;
    let gw = upstream.gateway();
    let mut client = Client::connect(gw.addr()).await;
    for _ in 0..3 {
        let reply = client.get("/eof").await;
        assert_eq!((reply.status.as_u16(), reply.text().as_str()), (200, "until the end"));
    }
    assert_eq!(upstream.connections(), 3, "a close-delimited body uses its connection up");
}

#[tokio::test]
async fn informational_responses_before_the_answer_are_passed_over() {
    let upstream = WireUpstream::start(|_, _| {
        Answer::bytes(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 4\r\n\r\ndone",
        )
    })
    .await;
    let gw = upstream.gateway();
    let mut client = Client::connect(gw.addr()).await;
    for _ in 0..2 {
        let reply = client.request("POST", "/things", &[("content-type", "text/plain")], "thing").await;
        assert_eq!((reply.status.as_u16(), reply.text().as_str()), (201, "done"));
    }
    assert_eq!(upstream.connections(), 1);
}

#[tokio::test]
async fn pooled_connections_the_upstream_closed_are_replaced_without_a_failure() {
    // Closed while idle, and the close has arrived: the pool's check drops the connection.
    let closing = WireUpstream::start(|_, _| Answer::bytes(OK).closing()).await;
    let gw = closing.gateway();
    let mut client = Client::connect(gw.addr()).await;
    for i in 0..10 {
        let method = if i % 2 == 0 { "GET" } else { "POST" };
        let reply = client.request(method, "/again", &[], if i % 2 == 0 { "" } else { "body" }).await;
        assert_eq!((reply.status.as_u16(), reply.text().as_str()), (200, "ok"), "request {i} ({method})");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(closing.connections(), 10);

    // Closed by the upstream only once the next request is on its way (a keep-alive timeout
    // racing the request): no answer, and nothing to tell beforehand. A GET is sent again on a
    // new connection; a POST, which the upstream may have acted on, is not.
    let racing = WireUpstream::per_connection(|i, _| match i {
        0 => Answer::bytes(OK),
        _ => Answer { pieces: Vec::new(), read_body: true, close: true, head_first: false },
    })
    .await;
    let gw = racing.gateway();
    let mut client = Client::connect(gw.addr()).await;
    for i in 0..5 {
        let reply = client.get("/again").await;
        assert_eq!((reply.status.as_u16(), reply.text().as_str()), (200, "ok"), "GET {i}");
    }
    assert_eq!(racing.connections(), 5, "each GET after the first met a closing connection, then a new one");
    let reply = client.request("POST", "/once", &[], "body").await;
    assert_eq!(reply.status.as_u16(), 502, "a POST that went out is not sent twice");
    let posts = racing.heads().iter().filter(|h| h.starts_with("POST /once")).count();
    assert_eq!(posts, 1);
}

#[tokio::test]
async fn an_upstream_that_answers_before_the_body_is_sent_is_heard() {
    // The upstream refuses an upload from its head alone, without reading the body and without
    // closing; the client waits for `100 Continue` and then for the answer before sending its
    // body (as curl does for large uploads). The gateway must hear the refusal while the body is
    // still to come, and must not reuse the connection: the body it never sent would be read as
    // the next request.
    let upstream = WireUpstream::start(|_, head| {
        if head.starts_with("POST /upload") {
            let refusal = b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 8\r\n\r\ntoo much".to_vec();
            Answer { pieces: vec![refusal], read_body: false, close: false, head_first: false }
        } else {
            Answer::bytes(OK)
        }
    })
    .await;
    let gw = upstream.gateway();
    let mut raw = RawConn::connect(gw.addr()).await;
    raw.send(b"POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 1048576\r\nexpect: 100-continue\r\n\r\n").await;
    let mut reply = raw.read_response(Duration::from_secs(5)).await.expect("an answer");
    if reply.status == 100 {
        reply = raw.read_response(Duration::from_secs(5)).await.expect("the final answer");
    }
    assert_eq!((reply.status, reply.text().as_str()), (413, "too much"), "the upstream's own answer: {}", reply.head);
    let next = crate::common::get(gw.addr(), "/next").await;
    assert_eq!(next.text(), "ok");
    assert_eq!(upstream.connections(), 2, "the connection with a request half sent was not reused");
}

#[tokio::test]
async fn a_success_that_starts_before_the_body_is_read_still_gets_the_body() {
    // A streaming endpoint: it answers `200` at once, then reads the whole upload and ends its
    // answer with what it read. The gateway keeps sending the body after the early head.
    let upstream = WireUpstream::start(|_, head| {
        let length = if head.contains("content-length: 200000") { "done" } else { "lost" };
        Answer {
            pieces: vec![
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec(),
                format!("4\r\n{length}\r\n0\r\n\r\n").into_bytes(),
            ],
            read_body: true,
            close: false,
            head_first: true,
        }
    })
    .await;
    let gw = upstream.gateway();
    let mut raw = RawConn::connect(gw.addr()).await;
    let body = vec![b'x'; 200_000];
    for _ in 0..2 {
        // Part of the body, a pause in which the upstream's early head arrives, the rest.
        raw.send(b"POST /stream HTTP/1.1\r\nhost: x\r\ncontent-length: 200000\r\n\r\n").await;
        raw.send(&body[..1000]).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        raw.send(&body[1000..]).await;
        let reply = raw.read_response(Duration::from_secs(10)).await.expect("an answer");
        assert_eq!((reply.status, reply.text().as_str()), (200, "done"), "the body was sent after the early head");
    }
    assert_eq!(upstream.connections(), 1, "the request was sent whole: its connection is reused");
}

#[tokio::test]
async fn requests_are_framed_for_the_upstream_as_http_1_1() {
    let upstream = WireUpstream::start(|_, _| Answer::bytes(OK)).await;
    let gw = upstream.gateway();
    let mut client = Client::connect(gw.addr()).await;
    client.get("/get").await;
    client.request("POST", "/empty-post", &[], "").await;
    client.request("PUT", "/put", &[("content-type", "text/plain")], "12345").await;
    let mut raw = RawConn::connect(gw.addr()).await;
    raw.send(
        b"POST /chunked HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(raw.read_response(Duration::from_secs(3)).await.map(|r| r.status), Some(200));
    let heads = upstream.heads();
    let header = |i: usize, name: &str| {
        heads[i].lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    };
    assert!(heads[0].starts_with("GET /get HTTP/1.1\r\n"), "{}", heads[0]);
    assert_eq!(header(0, "content-length"), None, "a GET without a body announces none");
    assert_eq!(header(1, "content-length").as_deref(), Some("0"));
    assert_eq!(header(2, "content-length").as_deref(), Some("5"));
    assert!(heads[3].starts_with("POST /chunked HTTP/1.1\r\n"));
    assert_eq!(header(3, "transfer-encoding").as_deref(), Some("chunked"), "a body of unknown length goes chunked");
    assert_eq!(header(3, "content-length"), None);
    for head in &heads[..4] {
        assert_eq!(head.matches("\r\nhost:").count(), 1, "exactly one Host: {head}");
    }
    assert_eq!(upstream.connections(), 1);
}
