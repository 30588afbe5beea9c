//! Proxying over HTTP/1.1: pooled upstream connections, streaming bodies, 100-continue, hop-by-hop
//! and forwarding headers, request ids, upstream failures.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Response;
use http_body_util::BodyExt;

use crate::common::{Client, RawConn, TestGateway, Upstream, UpstreamBehaviour, get};

fn one_route(upstream: &Upstream, extra: &str) -> String {
    format!(
        "listeners: [{{ name: public, address: \"127.0.0.1:0\" }}]\n\
         upstreams:\n  backend: {{ endpoints: [\"{}\"] }}\n\
         routes:\n  - name: all\n    upstream: backend\n{extra}",
        upstream.url()
    )
}

#[tokio::test]
async fn proxies_a_request_and_returns_the_upstream_response() {
    let upstream = Upstream::echo("backend-1");
    let gw = TestGateway::start(&one_route(&upstream, ""));
    let reply = get(gw.addr(), "/hello/world?x=1&y=two").await;
    assert_eq!(reply.status, 200);
    let echo = reply.json();
    assert_eq!(echo["instance"], "backend-1");
    assert_eq!(echo["method"], "GET");
    assert_eq!(echo["uri"], "/hello/world?x=1&y=two");
    assert_eq!(reply.header("content-type"), Some("application/json"));
}

#[tokio::test]
async fn upstream_connections_are_pooled_and_reused() {
    let upstream = Upstream::echo("backend");
    let gw = TestGateway::start(&one_route(&upstream, ""));
    let mut client = Client::connect(gw.addr()).await;
    for _ in 0..20 {
        assert_eq!(client.get("/a").await.status, 200);
    }
    // Separate client connections share the worker's pool too.
    for _ in 0..5 {
        assert_eq!(get(gw.addr(), "/b").await.status, 200);
    }
    assert_eq!(upstream.requests(), 25);
    assert_eq!(upstream.connections(), 1, "every request reused the one pooled connection");
}

#[tokio::test]
async fn a_response_without_body_keeps_the_pooled_connection_usable() {
    let upstream = Upstream::start(
        "nobody",
        UpstreamBehaviour::Custom(Arc::new(|seen| {
            let mut r = Response::new(Bytes::new());
            *r.status_mut() =
                if seen.uri.starts_with("/204") { 204.try_into().unwrap() } else { 200.try_into().unwrap() };
            r
        })),
    );
    let gw = TestGateway::start(&one_route(&upstream, ""));
    let mut client = Client::connect(gw.addr()).await;
    for path in ["/204", "/200", "/204"] {
        let reply = client.get(path).await;
        assert!(reply.body.is_empty());
    }
    let head = client.request("HEAD", "/200", &[], "").await;
    assert_eq!(head.status, 200);
    assert_eq!(client.get("/204").await.status, 204);
    assert_eq!(upstream.connections(), 1);
}

#[tokio::test]
async fn response_bodies_stream_chunk_by_chunk() {
    let upstream = Upstream::start(
        "stream",
        UpstreamBehaviour::Stream { chunks: vec!["first\n", "second\n"], gap: Duration::from_millis(800) },
    );
    let gw = TestGateway::start(&one_route(&upstream, ""));
    let mut client = Client::connect(gw.addr()).await;
    let started = Instant::now();
    let req = http::Request::get("/events").header("host", "x").body(http_body_util::Full::new(Bytes::new())).unwrap();
    let (first_at, body) = client.stream(req).await;
    assert!(first_at < Duration::from_millis(600), "first chunk after {first_at:?}: it was buffered");
    assert_eq!(body, "first\nsecond\n");
    assert!(started.elapsed() >= Duration::from_millis(800), "the stream took the upstream's time");
}

#[tokio::test]
async fn request_bodies_stream_to_the_upstream_before_the_client_finishes() {
    // A raw upstream that reports the moment the first body chunk arrives.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (first_tx, first_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut s, _) = listener.accept().await.unwrap();
        let mut seen = Vec::new();
        let mut first_tx = Some(first_tx);
        let mut buf = [0u8; 4096];
        loop {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                return;
            }
            seen.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&seen);
            if text.contains("part-one") {
                if let Some(tx) = first_tx.take() {
                    let _ = tx.send(());
                }
            }
            if text.contains("part-two") && text.ends_with("0\r\n\r\n") {
                s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.unwrap();
                return;
            }
        }
    });
    let config = format!(
        "listeners: [{{ name: public, address: \"127.0.0.1:0\" }}]\n\
         upstreams:\n  raw: {{ endpoints: [\"http://{addr}\"] }}\n\
         routes:\n  - {{ name: upload, upstream: raw }}\n"
    );
    let gw = TestGateway::start(&config);
    let mut conn = RawConn::connect(gw.addr()).await;
    conn.send(b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n8\r\npart-one\r\n").await;
    tokio::time::timeout(Duration::from_secs(2), first_rx)
        .await
        .expect("the first chunk reached the upstream while the client was still sending")
        .unwrap();
    conn.send(b"8\r\npart-two\r\n0\r\n\r\n").await;
    let reply = conn.read_response(Duration::from_secs(3)).await.expect("response");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "ok");
}

#[tokio::test]
async fn content_length_and_chunked_bodies_arrive_intact() {
    let upstream = Upstream::echo("backend");
    let gw = TestGateway::start(&one_route(&upstream, ""));
    let big = "x".repeat(300_000);
    let mut client = Client::connect(gw.addr()).await;
    let reply = client.request("POST", "/cl", &[("content-type", "text/plain")], &big).await;
    assert_eq!(reply.json()["body_len"], 300_000);
    let mut conn = RawConn::connect(gw.addr()).await;
    conn.send(
        b"PUT /chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .await;
    let reply = conn.read_response(Duration::from_secs(3)).await.expect("response");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["body"], "hello world");
    let seen = upstream.seen();
    assert_eq!(seen.last().unwrap().body, "hello world");
}

#[tokio::test]
async fn expect_100_continue_is_answered_by_the_gateway() {
    let upstream = Upstream::echo("backend");
    let gw = TestGateway::start(&one_route(&upstream, ""));
    let mut conn = RawConn::connect(gw.addr()).await;
    conn.send(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n").await;
    let interim = conn.read_response(Duration::from_secs(2)).await.expect("interim response");
    assert_eq!(interim.status, 100, "{}", interim.head);
    conn.send(b"hello").await;
    let reply = conn.read_response(Duration::from_secs(2)).await.expect("final response");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["body"], "hello");
    assert!(upstream.seen()[0].headers.get("expect").is_none(), "Expect is handled here, not forwarded");
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_in_both_directions() {
    let upstream = Upstream::start(
        "hops",
        UpstreamBehaviour::Custom(Arc::new(|_| {
            Response::builder()
                .header("connection", "x-upstream-hop")
                .header("x-upstream-hop", "secret")
                .header("keep-alive", "timeout=5")
                .header("proxy-authenticate", "Basic")
                .header("upgrade", "h2c")
                .header("x-kept", "yes")
                .body(Bytes::from_static(b"ok"))
                .unwrap()
        })),
    );
    let gw = TestGateway::start(&one_route(&upstream, ""));
    let mut client = Client::connect(gw.addr()).await;
    let reply = client
        .request(
            "GET",
            "/",
            &[
                ("connection", "x-client-hop, keep-alive"),
                ("x-client-hop", "secret"),
                ("keep-alive", "timeout=9"),
                ("proxy-authorization", "Basic c2VjcmV0"),
                ("proxy-connection", "keep-alive"),
                ("te", "trailers"),
                ("upgrade", "websocket"),
                ("x-end-to-end", "kept"),
            ],
            "",
        )
        .await;
    let seen = &upstream.seen()[0].headers;
    for hop in ["x-client-hop", "keep-alive", "proxy-authorization", "proxy-connection", "te", "upgrade"] {
        assert!(seen.get(hop).is_none(), "{hop} was forwarded upstream");
    }
    assert_ne!(seen.get("connection").and_then(|v| v.to_str().ok()), Some("x-client-hop, keep-alive"));
    assert_eq!(seen["x-end-to-end"], "kept");
    for hop in ["x-upstream-hop", "keep-alive", "proxy-authenticate", "upgrade"] {
        assert!(reply.header(hop).is_none(), "{hop} was forwarded to the client");
    }
    assert_eq!(reply.header("x-kept"), Some("yes"));
}

#[tokio::test]
async fn forwarding_headers_from_untrusted_clients_are_replaced() {
    let upstream = Upstream::echo("backend");
    let gw = TestGateway::start(&one_route(&upstream, ""));
    let mut client = Client::connect(gw.addr()).await;
    client
        .request(
            "GET",
            "/",
            &[
                ("host", "Api.Example.com:8443"),
                ("x-forwarded-for", "6.6.6.6"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "evil.example"),
                ("forwarded", "for=6.6.6.6;proto=https"),
            ],
            "",
        )
        .await;
    let h = &upstream.seen()[0].headers;
    assert_eq!(h.get_all("x-forwarded-for").iter().collect::<Vec<_>>(), vec!["127.0.0.1"]);
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "Api.Example.com:8443");
    assert_eq!(h["forwarded"], "for=127.0.0.1;proto=http;host=\"Api.Example.com:8443\"");
    assert_eq!(h["host"], upstream.addr.to_string(), "the endpoint's authority by default");
}

#[tokio::test]
async fn forwarding_headers_from_trusted_proxies_are_kept_and_extended() {
    let upstream = Upstream::echo("backend");
    let config = format!("server: {{ workers: 1, trusted_proxies: [\"127.0.0.0/8\"] }}\n{}", one_route(&upstream, ""));
    let gw = TestGateway::start(&config);
    let mut client = Client::connect(gw.addr()).await;
    client
        .request(
            "GET",
            "/",
            &[
                ("x-forwarded-for", "203.0.113.7"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "api.example.com"),
                ("forwarded", "for=203.0.113.7;proto=https"),
            ],
            "",
        )
        .await;
    let h = &upstream.seen()[0].headers;
    assert_eq!(h["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(h["x-forwarded-host"], "api.example.com");
    assert!(h["forwarded"].to_str().unwrap().starts_with("for=203.0.113.7;proto=https, for=127.0.0.1;proto=http"));
}

#[tokio::test]
async fn forwarding_headers_can_be_switched_off() {
    let upstream = Upstream::echo("backend");
    let config = format!(
        "server: {{ workers: 1, forwarded_headers: {{ x_forwarded: false, forwarded: false }} }}\n{}",
        one_route(&upstream, "")
    );
    let gw = TestGateway::start(&config);
    let mut client = Client::connect(gw.addr()).await;
    client
        .request(
            "GET",
            "/",
            &[("x-forwarded-for", "6.6.6.6"), ("x-forwarded-host", "evil"), ("forwarded", "for=6.6.6.6")],
            "",
        )
        .await;
    let h = &upstream.seen()[0].headers;
    for name in ["x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "forwarded"] {
        assert!(h.get(name).is_none(), "{name}: neither added nor passed through from an untrusted client");
    }
}

#[tokio::test]
async fn request_ids_are_generated_forwarded_and_echoed() {
    let upstream = Upstream::echo("backend");
    let gw = TestGateway::start(&one_route(&upstream, ""));
    let mut client = Client::connect(gw.addr()).await;
    let reply = client.get("/").await;
    let id = reply.header("x-request-id").expect("echoed").to_owned();
    assert_eq!(id.len(), 36, "a UUID: {id}");
    assert_eq!(upstream.seen()[0].headers["x-request-id"], id.as_str());
    let reply = client.request("GET", "/", &[("x-request-id", "trace-abc-123")], "").await;
    assert_eq!(reply.header("x-request-id"), Some("trace-abc-123"));
    assert_eq!(upstream.seen()[1].headers["x-request-id"], "trace-abc-123");
    let reply = client.request("GET", "/", &[("x-request-id", "<script>")], "").await;
    assert_ne!(reply.header("x-request-id"), Some("<script>"), "a malformed id is replaced");
}

#[tokio::test]
async fn the_request_id_header_is_configurable() {
    let upstream = Upstream::echo("backend");
    let config = format!(
        "server: {{ workers: 1, request_id: {{ header: x-correlation-id, trust_incoming: false }} }}\n{}",
        one_route(&upstream, "")
    );
    let gw = TestGateway::start(&config);
    let mut client = Client::connect(gw.addr()).await;
    let reply = client.request("GET", "/", &[("x-correlation-id", "from-client")], "").await;
    let id = reply.header("x-correlation-id").expect("echoed");
    assert_ne!(id, "from-client", "incoming ids are not trusted with trust_incoming: false");
    assert_eq!(upstream.seen()[0].headers["x-correlation-id"], id);
    assert!(reply.header("x-request-id").is_none());
}

#[tokio::test]
async fn errors_from_the_gateway_are_json_with_a_stable_shape() {
    let mut upstream = Upstream::echo("backend");
    let gw = TestGateway::start(&one_route(&upstream, ""));
    upstream.stop();
    let reply = get(gw.addr(), "/x").await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let body = reply.text();
    assert!(body.starts_with("{\"error\":{\"status\":502,\"code\":\"upstream_unavailable\",\"message\":"), "{body}");
    let json = reply.json();
    assert_eq!(json["error"]["request_id"], reply.header("x-request-id").unwrap());
    assert!(!body.contains(&upstream.addr.port().to_string()), "upstream addresses are not disclosed: {body}");
}

#[tokio::test]
async fn workers_share_the_listening_port() {
    let upstream = Upstream::echo("backend");
    let config = format!("server: {{ workers: 2 }}\n{}", one_route(&upstream, ""));
    let gw = TestGateway::start(&config);
    assert_eq!(gw.gateway.snapshot().server.workers, 2);
    // The kernel spreads connections over both workers' sockets; each worker has its own pool.
    let mut clients = Vec::new();
    for _ in 0..24 {
        let mut c = Client::connect(gw.addr()).await;
        assert_eq!(c.get("/").await.status, 200);
        clients.push(c);
    }
    assert_eq!(upstream.connections(), 2, "one pooled upstream connection per worker");
}

impl Client {
    /// Sends `req` and reads the body frame by frame, reporting when the first data arrived.
    pub async fn stream(&mut self, req: http::Request<http_body_util::Full<Bytes>>) -> (Duration, String) {
        let started = Instant::now();
        let resp = self.send_raw(req).await;
        let mut body = resp.into_body();
        let mut first = None;
        let mut text = String::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.expect("frame");
            if let Some(data) = frame.data_ref() {
                first.get_or_insert_with(|| started.elapsed());
                text.push_str(&String::from_utf8_lossy(data));
            }
        }
        (first.unwrap_or_default(), text)
    }
}
