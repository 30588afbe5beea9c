//! Hostile and malformed input: clear errors, never a panic, never a bypass, nothing reaching the
//! upstream that should not.

use std::time::Duration;

use crate::common::{Client, RawConn, TestGateway, Upstream};

/// `/admin/**` is answered by the gateway (standing in for a protected route's policy); everything
/// else goes to the upstream.
fn guarded(upstream: &Upstream, server: &str) -> TestGateway {
    TestGateway::start(&format!(
        r#"server: {{ workers: 1{server} }}
listeners: [{{ name: public, address: "127.0.0.1:0" }}]
upstreams:
  app: {{ endpoints: ["{}"] }}
routes:
  - name: admin
    match: {{ path: "/admin/**" }}
    policies: [{{ direct_response: {{ status: 403, body: admin-guard }} }}]
  - name: app
    match: {{ path: "/**" }}
    upstream: app
"#,
        upstream.url()
    ))
}

async fn raw(gw: &TestGateway, request: &[u8]) -> Option<crate::common::client::RawReply> {
    let mut conn = RawConn::connect(gw.addr()).await;
    conn.send(request).await;
    conn.read_response(Duration::from_secs(3)).await
}

#[tokio::test]
async fn no_encoding_of_a_path_escapes_its_route() {
    let upstream = Upstream::echo("app");
    let gw = guarded(&upstream, "");
    let mut client = Client::connect(gw.addr()).await;
    for path in [
        "/admin/users",
        "/public/../admin/users",
        "/public/%2e%2e/admin/users",
        "/public/%2E%2e/admin/users",
        "/public/.%2e/admin/users",
        "/%61dmin/users",
        "/%61%64%6d%69%6e/users",
        "//admin/users",
        "/./admin/users",
        "/admin/./users",
        "/x/y/../../admin/users",
        "/../../admin/users",
    ] {
        let reply = client.get(path).await;
        assert_eq!(reply.status, 403, "{path} escaped the admin route: {}", reply.text());
        assert_eq!(reply.text(), "admin-guard");
    }
    assert_eq!(upstream.requests(), 0, "nothing reached the upstream");
}

#[tokio::test]
async fn ambiguous_path_encodings_are_rejected_by_default() {
    let upstream = Upstream::echo("app");
    let gw = guarded(&upstream, "");
    for path in [
        "/admin%2Fusers",
        "/public%2F..%2Fadmin/users",
        "/admin%5cusers",
        "/public/..;/admin/users",
        "/public/..%3B/admin",
        "/a%00b",
        "/a%zz",
        "/a%",
    ] {
        let mut client = Client::connect(gw.addr()).await;
        let reply = client.get(path).await;
        assert_eq!(reply.status, 400, "{path}: {}", reply.text());
        assert_eq!(reply.error_code(), "bad_request");
    }
    let reply = raw(&gw, b"GET /public\\..\\admin HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("response");
    assert_eq!(reply.status, 400, "a literal backslash: {}", reply.head);
    assert_eq!(upstream.requests(), 0);
}

#[tokio::test]
async fn escaped_slashes_can_be_decoded_by_config() {
    let upstream = Upstream::echo("app");
    let gw = guarded(&upstream, ", path: { escaped_slashes: decode }");
    let mut client = Client::connect(gw.addr()).await;
    assert_eq!(client.get("/public%2F..%2Fadmin/users").await.status, 403, "decoded, then resolved");
    let reply = client.get("/files%2Fa%2fb").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["uri"], "/files/a/b", "the upstream gets the normalised path");
}

#[tokio::test]
async fn the_upstream_receives_the_normalised_path() {
    let upstream = Upstream::echo("app");
    let gw = guarded(&upstream, "");
    let mut client = Client::connect(gw.addr()).await;
    let reply = client.get("/a//b/./c/../%7Euser/%c3%a9?q=%2e%2e").await;
    assert_eq!(reply.json()["uri"], "/a/b/~user/%C3%A9?q=%2e%2e", "the query is forwarded untouched");
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_rejected() {
    let upstream = Upstream::echo("app");
    let gw = guarded(&upstream, "");
    let smuggle = b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin/users HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut conn = RawConn::connect(gw.addr()).await;
    conn.send(smuggle).await;
    let reply = conn.read_response(Duration::from_secs(3)).await.expect("response");
    assert_eq!(reply.status, 400, "{}", reply.head);
    assert!(reply.text().contains("both Content-Length and Transfer-Encoding"), "{}", reply.text());
    assert!(conn.closed_within(Duration::from_secs(3)).await, "the connection is closed after a framing error");
    // The same with Transfer-Encoding first.
    let reply =
        raw(&gw, b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\ncontent-length: 5\r\n\r\n0\r\n\r\n")
            .await;
    assert_eq!(reply.expect("response").status, 400);
    assert_eq!(upstream.requests(), 0, "nothing was smuggled through");
}

#[tokio::test]
async fn other_framing_tricks_are_rejected() {
    let upstream = Upstream::echo("app");
    let gw = guarded(&upstream, "");
    for (name, request) in [
        (
            "differing duplicate Content-Length",
            &b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde"[..],
        ),
        ("Content-Length list", b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 5\r\n\r\nabcde"),
        ("negative Content-Length", b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n"),
        ("non-chunked coding", b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nabc"),
        ("coding before chunked", b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"),
        (
            "two Transfer-Encoding lines",
            b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        ("chunked in HTTP/1.0", b"POST /x HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("bad chunk size", b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"),
        ("obs-fold", b"GET /x HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n"),
        ("space before colon", b"GET /x HTTP/1.1\r\nHost: x\r\nContent-Length : 0\r\n\r\n"),
    ] {
        let reply = raw(&gw, request).await;
        let status = reply.as_ref().map_or(0, |r| r.status);
        assert_eq!(status, 400, "{name}");
    }
    // A chunk-size error is only seen while streaming: the upstream may have received the head, but
    // never a complete request body, and no second request.
    assert!(upstream.seen().iter().all(|s| s.uri == "/x"));
    assert!(upstream.requests() <= 1);
    // Identical duplicates are harmless and accepted, as RFC 9110 allows.
    let reply = raw(&gw, b"POST /ok HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nhi")
        .await
        .expect("response");
    assert_eq!(reply.status, 200);
}

#[tokio::test]
async fn malformed_requests_get_400_and_the_gateway_keeps_serving() {
    let upstream = Upstream::echo("app");
    let gw = guarded(&upstream, "");
    for request in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET\r\n\r\n",
        b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost x\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Header: x\r\nHost: x\r\n\r\n",
        b"GET /\x01 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Bad: \x00\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    ] {
        let mut conn = RawConn::connect(gw.addr()).await;
        conn.send(request).await;
        match conn.read_response(Duration::from_secs(2)).await {
            Some(reply) => assert_eq!(reply.status, 400, "{:?}: {}", String::from_utf8_lossy(request), reply.head),
            None => {
                assert!(conn.closed_within(Duration::from_secs(2)).await, "{request:?}: neither answered nor closed")
            }
        }
    }
    // Random garbage: every connection ends (answer or close) and nothing panics.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..60 {
        let mut bytes = Vec::new();
        for _ in 0..(seed % 300) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            bytes.push(b"GET /\r\n :HTTP/1.1%\x00\xffab"[(seed % 20) as usize]);
        }
        let mut conn = RawConn::connect(gw.addr()).await;
        conn.send(&bytes).await;
        let _ = conn.read_response(Duration::from_millis(300)).await;
    }
    assert_eq!(Client::connect(gw.addr()).await.get("/still-alive").await.status, 200);
}

#[tokio::test]
async fn host_headers_must_be_single_and_well_formed() {
    let upstream = Upstream::echo("app");
    let gw = guarded(&upstream, "");
    for (name, request) in [
        ("missing", &b"GET / HTTP/1.1\r\n\r\n"[..]),
        ("duplicate", b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n"),
        ("junk", b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n"),
        ("userinfo", b"GET / HTTP/1.1\r\nHost: user@a.example\r\n\r\n"),
        ("bad port", b"GET / HTTP/1.1\r\nHost: a.example:http\r\n\r\n"),
    ] {
        let reply = raw(&gw, request).await.expect("response");
        assert_eq!(reply.status, 400, "{name}: {}", reply.head);
    }
    let reply = raw(&gw, b"GET / HTTP/1.0\r\n\r\n").await.expect("response");
    assert_eq!(reply.status, 200, "HTTP/1.0 needs no Host");
}

#[tokio::test]
async fn absolute_form_targets_never_make_an_open_proxy() {
    let upstream = Upstream::echo("app");
    let only_api = TestGateway::start(&format!(
        r#"listeners: [{{ name: public, address: "127.0.0.1:0" }}]
upstreams:
  app: {{ endpoints: ["{}"] }}
routes:
  - {{ name: api, match: {{ host: api.example.com }}, upstream: app }}
"#,
        upstream.url()
    ));
    let reply = raw(&only_api, b"GET http://evil.example/steal HTTP/1.1\r\nHost: api.example.com\r\n\r\n")
        .await
        .expect("response");
    assert_eq!(reply.status, 404, "the target's host counts, and no route serves it");
    let reply = raw(&only_api, b"GET http://api.example.com/ok?x=1 HTTP/1.1\r\nHost: evil.example\r\n\r\n")
        .await
        .expect("response");
    assert_eq!(reply.status, 200);
    let seen = upstream.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].uri, "/ok?x=1", "sent upstream in origin form");
    assert_eq!(seen[0].headers["host"], upstream.addr.to_string());
    assert_eq!(seen[0].headers["x-forwarded-host"], "api.example.com");
    let reply =
        raw(&only_api, b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n").await.expect("response");
    assert_eq!(reply.status, 400);
    assert_eq!(upstream.requests(), 1);
}

#[tokio::test]
async fn oversized_request_heads_are_refused_with_json() {
    let upstream = Upstream::echo("app");
    let gw = guarded(&upstream, ", limits: { max_uri_length: 1KiB, max_header_bytes: 4KiB, max_headers: 20 }");
    let mut client = Client::connect(gw.addr()).await;
    let long = format!("/x?{}", "a".repeat(1100));
    let reply = client.get(&long).await;
    assert_eq!(reply.status, 414);
    assert_eq!(reply.error_code(), "uri_too_long");

    let many: Vec<(String, String)> = (0..25).map(|i| (format!("x-h{i}"), "v".to_owned())).collect();
    let headers: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let reply = Client::connect(gw.addr()).await.request("GET", "/", &headers, "").await;
    assert_eq!(reply.status, 431);
    assert_eq!(reply.error_code(), "headers_too_large");

    let big = "b".repeat(5000);
    let reply = Client::connect(gw.addr()).await.request("GET", "/", &[("x-big", &big)], "").await;
    assert_eq!(reply.status, 431);
    assert_eq!(reply.error_code(), "headers_too_large");

    // Far beyond the limits the parser refuses before buffering it all.
    let huge = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Huge: {}\r\n\r\n", "h".repeat(200_000));
    let reply = raw(&gw, huge.as_bytes()).await;
    assert!(reply.is_none_or(|r| r.status == 431));
    assert_eq!(upstream.requests(), 0);
    assert_eq!(Client::connect(gw.addr()).await.get("/fine").await.status, 200);
}

#[tokio::test]
async fn bodies_over_the_size_limit_get_413_without_being_buffered() {
    let upstream = Upstream::echo("app");
    let gw = guarded(&upstream, ", limits: { max_body_size: 1KiB }");
    let mut client = Client::connect(gw.addr()).await;
    assert_eq!(client.request("POST", "/ok", &[], &"a".repeat(1024)).await.status, 200, "exactly the limit is fine");
    let reply = Client::connect(gw.addr()).await.request("POST", "/big", &[], &"a".repeat(1025)).await;
    assert_eq!(reply.status, 413);
    assert_eq!(reply.error_code(), "payload_too_large");
    // A streamed body is stopped as soon as it passes the limit, before the client has sent it all.
    let mut conn = RawConn::connect(gw.addr()).await;
    conn.send(b"POST /stream HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n400\r\n").await;
    conn.send(&[b'a'; 1024]).await;
    conn.send(b"\r\n400\r\n").await;
    conn.send(&[b'b'; 1024]).await;
    let reply = conn.read_response(Duration::from_secs(3)).await.expect("413 before the body ended");
    assert_eq!(reply.status, 413, "{}", reply.head);
    assert_eq!(reply.json()["error"]["code"], "payload_too_large");
    assert!(upstream.seen().iter().all(|s| s.uri == "/ok"), "no oversized body was delivered");
}
