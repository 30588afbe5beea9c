//! Limits on traffic besides rates: requests in flight (`concurrency`), body sizes per route
//! (`body_limit`) and connections per listener (`max_connections`).

use std::time::{Duration, Instant};

use crate::common::{Client, RawConn, Reply, TestGateway, Upstream, UpstreamBehaviour};

fn config(app: &Upstream, policies: &str) -> String {
    format!(
        r#"listeners: [{{ name: public, address: "127.0.0.1:0" }}]
upstreams:
  app: {{ endpoints: ["{}"] }}
routes:
  - name: slow
    match: {{ path: "/slow/**" }}
    upstream: app
    policies:
{policies}
  - {{ name: other, match: {{ path: "/other/**" }}, upstream: app }}
"#,
        app.url()
    )
}

/// Sends a request on its own connection, in the background.
fn spawn_get(
    gw: &TestGateway,
    path: &str,
    headers: &'static [(&'static str, &'static str)],
) -> tokio::task::JoinHandle<Reply> {
    let (addr, path) = (gw.addr(), path.to_owned());
    tokio::spawn(async move { Client::connect(addr).await.request("GET", &path, headers, "").await })
}

async fn get(gw: &TestGateway, path: &str, headers: &[(&str, &str)]) -> Reply {
    Client::connect(gw.addr()).await.request("GET", path, headers, "").await
}

#[tokio::test]
async fn requests_over_the_concurrency_limit_are_shed_with_503() {
    let app = Upstream::start("app", UpstreamBehaviour::Delay(Duration::from_millis(800)));
    let gw = TestGateway::start(&config(&app, "      - concurrency: { max: 2 }"));
    let busy = [spawn_get(&gw, "/slow/1", &[]), spawn_get(&gw, "/slow/2", &[])];
    tokio::time::sleep(Duration::from_millis(250)).await;
    let started = Instant::now();
    let shed = get(&gw, "/slow/3", &[]).await;
    assert_eq!(shed.status, 503);
    assert_eq!(shed.error_code(), "concurrency_limited");
    assert_eq!(shed.header("retry-after"), Some("1"));
    assert!(started.elapsed() < Duration::from_millis(500), "refused at once, not queued");
    assert_eq!(get(&gw, "/other/x", &[]).await.status, 200, "another route is not limited");
    for request in busy {
        assert_eq!(request.await.unwrap().status, 200);
    }
    // Both slots are back.
    let again = [spawn_get(&gw, "/slow/4", &[]), spawn_get(&gw, "/slow/5", &[])];
    for request in again {
        assert_eq!(request.await.unwrap().status, 200);
    }
}

#[tokio::test]
async fn a_bounded_queue_waits_for_a_slot() {
    let app = Upstream::start("app", UpstreamBehaviour::Delay(Duration::from_millis(600)));
    let gw = TestGateway::start(&config(&app, "      - concurrency: { max: 1, queue: 1, queue_timeout: 5s }"));
    let first = spawn_get(&gw, "/slow/1", &[]);
    tokio::time::sleep(Duration::from_millis(150)).await;
    let queued = spawn_get(&gw, "/slow/2", &[]);
    tokio::time::sleep(Duration::from_millis(150)).await;
    let shed = get(&gw, "/slow/3", &[]).await;
    assert_eq!(shed.status, 503, "the queue holds one");
    assert_eq!(first.await.unwrap().status, 200);
    assert_eq!(queued.await.unwrap().status, 200, "the queued request got the slot when it was freed");

    // A queued request that waits longer than queue_timeout is refused.
    let gw = TestGateway::start(&config(&app, "      - concurrency: { max: 1, queue: 5, queue_timeout: 100ms }"));
    let first = spawn_get(&gw, "/slow/1", &[]);
    tokio::time::sleep(Duration::from_millis(150)).await;
    let started = Instant::now();
    let timed_out = get(&gw, "/slow/2", &[]).await;
    assert_eq!(timed_out.status, 503);
    assert!(started.elapsed() >= Duration::from_millis(90), "it waited in the queue first");
    assert_eq!(first.await.unwrap().status, 200);
}

#[tokio::test]
async fn the_slot_is_held_until_the_response_body_is_sent() {
    let app = Upstream::start(
        "app",
        UpstreamBehaviour::Stream { chunks: vec!["one ", "two ", "three"], gap: Duration::from_millis(300) },
    );
    let gw = TestGateway::start(&config(&app, "      - concurrency: { max: 1 }"));
    let streaming = spawn_get(&gw, "/slow/1", &[]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The first response's head has been sent; its body is still coming.
    assert_eq!(get(&gw, "/slow/2", &[]).await.status, 503);
    assert_eq!(streaming.await.unwrap().text(), "one two three");
    assert_eq!(get(&gw, "/slow/3", &[]).await.status, 200, "given back once the body ended");
}

#[tokio::test]
async fn concurrency_keys_keep_callers_apart() {
    let app = Upstream::start("app", UpstreamBehaviour::Delay(Duration::from_millis(600)));
    let gw = TestGateway::start(&config(&app, "      - concurrency: { max: 1, key: header:x-tenant }"));
    let a = spawn_get(&gw, "/slow/1", &[("x-tenant", "a")]);
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(get(&gw, "/slow/2", &[("x-tenant", "a")]).await.status, 503);
    assert_eq!(get(&gw, "/slow/3", &[("x-tenant", "b")]).await.status, 200, "tenant b has its own slot");
    assert_eq!(a.await.unwrap().status, 200);
}

#[tokio::test]
async fn a_route_body_limit_refuses_large_bodies_while_they_stream() {
    let app = Upstream::echo("app");
    let gw = TestGateway::start(&config(&app, "      - body_limit: { max: 1KiB }"));
    let mut client = Client::connect(gw.addr()).await;
    let small = client.request("POST", "/slow/x", &[], &"a".repeat(1024)).await;
    assert_eq!(small.status, 200);
    // Announced too large: refused before a byte is read.
    let announced = client.request("POST", "/slow/x", &[], &"a".repeat(1025)).await;
    assert_eq!(announced.status, 413);
    assert_eq!(announced.error_code(), "payload_too_large");
    assert_eq!(app.requests(), 1);
    // Chunked, so the size shows only while it streams.
    let mut raw = RawConn::connect(gw.addr()).await;
    let chunk = "a".repeat(600);
    raw.send(
        format!("POST /slow/x HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n")
            .as_bytes(),
    )
    .await;
    let reply = raw.read_response(Duration::from_secs(5)).await.expect("a response");
    assert_eq!(reply.status, 413, "{}", reply.text());
    // Other routes keep the server's limit (none here).
    let mut client = Client::connect(gw.addr()).await;
    assert_eq!(client.request("POST", "/other/x", &[], &"a".repeat(4096)).await.status, 200);
}

#[tokio::test]
async fn a_listener_keeps_at_most_max_connections_open() {
    let app = Upstream::echo("app");
    let yaml = config(&app, "      - body_limit: { max: 1MiB }")
        .replace("address: \"127.0.0.1:0\" }", "address: \"127.0.0.1:0\", max_connections: 2 }");
    let gw = TestGateway::start(&yaml);
    let mut one = Client::connect(gw.addr()).await;
    let mut two = Client::connect(gw.addr()).await;
    assert_eq!(one.get("/other/1").await.status, 200);
    assert_eq!(two.get("/other/2").await.status, 200);
    let mut third = RawConn::connect(gw.addr()).await;
    assert!(third.closed_within(Duration::from_secs(2)).await, "the third connection is closed at once");
    drop(one);
    // The slot frees when the gateway sees the first connection close.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut conn = RawConn::connect(gw.addr()).await;
        conn.send(b"GET /other/3 HTTP/1.1\r\nhost: x\r\n\r\n").await;
        if let Some(reply) = conn.read_response(Duration::from_secs(1)).await {
            assert_eq!(reply.status, 200);
            break;
        }
        assert!(Instant::now() < deadline, "no connection was admitted after one closed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(two.get("/other/4").await.status, 200, "open connections are not disturbed");
}

#[test]
fn bad_traffic_limits_are_refused() {
    let app = Upstream::echo("app");
    for (policy, needle) in [
        ("      - concurrency: { max: 0 }", "between 1 and"),
        ("      - concurrency: { max: 1, queue: 2, queue_timeout: 0s }", "queue_timeout"),
        ("      - concurrency: { max: 1, key: nobody }", "unknown key"),
        ("      - body_limit: { max: 0 }", "at least 1 byte"),
        ("      - body_limit: { max: lots }", "invalid size"),
    ] {
        let err = match TestGateway::try_start(&config(&app, policy)) {
            Ok(_) => panic!("accepted {policy}"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(needle), "{policy}: {err}");
    }
}
