//! Timeouts: connect, upstream response head, the route's total, slow request heads, idle
//! keep-alive connections.

use std::time::{Duration, Instant};

use crate::common::{Client, RawConn, TestGateway, Upstream, UpstreamBehaviour, get};

#[tokio::test]
async fn a_hanging_upstream_gets_504_after_the_response_header_timeout() {
    let upstream = Upstream::start("hang", UpstreamBehaviour::Hang);
    let gw = TestGateway::start(&format!(
        r#"listeners: [{{ name: public, address: "127.0.0.1:0" }}]
upstreams:
  slow: {{ endpoints: ["{}"], timeouts: {{ response_header: 300ms }} }}
routes: [{{ name: slow, upstream: slow }}]
"#,
        upstream.url()
    ));
    let started = Instant::now();
    let reply = get(gw.addr(), "/").await;
    let took = started.elapsed();
    assert_eq!(reply.status, 504);
    assert_eq!(reply.error_code(), "upstream_timeout");
    assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(2), "{took:?}");
}

#[tokio::test]
async fn the_route_timeout_bounds_the_whole_exchange() {
    let upstream = Upstream::start("slow", UpstreamBehaviour::Delay(Duration::from_secs(3)));
    let gw = TestGateway::start(&format!(
        r#"listeners: [{{ name: public, address: "127.0.0.1:0" }}]
upstreams:
  slow: {{ endpoints: ["{}"] }}
routes:
  - {{ name: quick, match: {{ path: /quick }}, upstream: slow, timeout: 250ms }}
"#,
        upstream.url()
    ));
    let started = Instant::now();
    let reply = get(gw.addr(), "/quick").await;
    assert_eq!(reply.status, 504);
    assert_eq!(reply.error_code(), "route_timeout");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_routes_per_try_timeout_moves_a_hanging_try_to_another_endpoint() {
    let hang = Upstream::start("hang", UpstreamBehaviour::Hang);
    let good = Upstream::echo("good");
    let gw = TestGateway::start(&format!(
        r#"listeners: [{{ name: public, address: "127.0.0.1:0" }}]
upstreams:
  app:
    endpoints: ["{}", "{}"]
    retries: {{ attempts: 1, on: [timeout], backoff: 1ms }}
    passive_health: {{ consecutive_failures: 0 }}
routes:
  - {{ name: patient, match: {{ path: /patient }}, upstream: app, timeout: 1s }}
  - {{ name: eager, match: {{ path: /eager }}, upstream: app, timeout: {{ per_try: 150ms, total: 3s }} }}
"#,
        hang.url(),
        good.url()
    ));
    let mut client = Client::connect(gw.addr()).await;
    // Every other try lands on the hanging endpoint: after 150ms it is tried again elsewhere.
    for i in 0..6 {
        let started = Instant::now();
        let reply = client.get("/eager").await;
        assert_eq!(reply.status, 200, "request {i}: {}", reply.text());
        assert!(started.elapsed() < Duration::from_millis(1500), "request {i} took {:?}", started.elapsed());
    }
    assert!(hang.requests() >= 2, "the hanging endpoint was tried: {}", hang.requests());
    // Without a per-try timeout the upstream's (60s) applies: the route's total cuts it off.
    let mut statuses = Vec::new();
    for _ in 0..2 {
        let mut client = Client::connect(gw.addr()).await;
        let reply = client.get("/patient").await;
        statuses.push((reply.status.as_u16(), reply.error_code()));
    }
    assert!(statuses.contains(&(504, "route_timeout".to_owned())), "{statuses:?}");
}

/// A listener whose accept queue is full and never drained: further SYNs are dropped, so a
/// connect to it neither succeeds nor fails until the client gives up. Keep all three alive.
async fn blackhole() -> (socket2::Socket, std::net::SocketAddr, Vec<tokio::net::TcpStream>) {
    let blocked = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    blocked.bind(&"127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap().into()).unwrap();
    blocked.listen(0).unwrap();
    let addr = blocked.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_millis(200), tokio::net::TcpStream::connect(addr)).await
        {
            fillers.push(s);
        }
    }
    (blocked, addr, fillers)
}

#[tokio::test]
async fn an_unreachable_endpoint_gets_a_connect_timeout() {
    let (_blocked, addr, _fillers) = blackhole().await;
    let gw = TestGateway::start(&format!(
        r#"listeners: [{{ name: public, address: "127.0.0.1:0" }}]
upstreams:
  blackhole: {{ endpoints: ["http://{addr}"], timeouts: {{ connect: 300ms, response_header: 100ms }} }}
  patient: {{ endpoints: ["http://{addr}"], timeouts: {{ connect: 30s }} }}
routes:
  - {{ name: all, upstream: blackhole }}
  - {{ name: own, match: {{ path: /own }}, upstream: patient, timeout: {{ connect: 200ms }} }}
"#
    ));
    let started = Instant::now();
    let reply = get(gw.addr(), "/").await;
    assert_eq!(reply.status, 504, "{}", reply.text());
    assert_eq!(reply.error_code(), "upstream_connect_timeout", "the response-head timeout starts after connecting");
    assert!(started.elapsed() < Duration::from_secs(2));
    // A route's connect timeout replaces its upstream's.
    let started = Instant::now();
    let reply = get(gw.addr(), "/own").await;
    assert_eq!(reply.error_code(), "upstream_connect_timeout", "{}", reply.text());
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
}

#[tokio::test]
async fn max_pending_refuses_requests_beyond_the_connections_being_opened() {
    let (_blocked, addr, fillers) = blackhole().await;
    let gw = TestGateway::start(&format!(
        r#"listeners: [{{ name: public, address: "127.0.0.1:0" }}]
upstreams:
  slow_to_accept:
    endpoints: ["http://{addr}"]
    timeouts: {{ connect: 1s }}
    retries: {{ attempts: 0 }}
    circuit_breaker: {{ max_pending: 2, min_requests: 1000 }}
routes: [{{ name: all, upstream: slow_to_accept }}]
"#
    ));
    let waiting: Vec<_> = (0..2)
        .map(|_| {
            let at = gw.addr();
            tokio::spawn(async move { get(at, "/").await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let third = get(gw.addr(), "/").await;
    assert_eq!(third.error_code(), "upstream_overloaded", "{}", third.text());
    assert!(started.elapsed() < Duration::from_millis(500), "refused at once: {:?}", started.elapsed());
    for w in waiting {
        assert_eq!(w.await.unwrap().error_code(), "upstream_connect_timeout");
    }
    // The places are given back when the attempts end.
    let again = get(gw.addr(), "/").await;
    assert_eq!(again.error_code(), "upstream_connect_timeout");
    drop(fillers);
}

#[tokio::test]
async fn a_refused_connection_is_502_at_once() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let gw = TestGateway::start(&format!(
        r#"listeners: [{{ name: public, address: "127.0.0.1:0" }}]
upstreams:
  gone: {{ endpoints: ["http://127.0.0.1:{port}"] }}
routes: [{{ name: all, upstream: gone }}]
"#
    ));
    let reply = get(gw.addr(), "/").await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.error_code(), "upstream_unavailable");
}

fn slow_client_gateway(upstream: &Upstream) -> TestGateway {
    TestGateway::start(&format!(
        r#"server: {{ workers: 1, timeouts: {{ header_read: 500ms, idle: 800ms }} }}
listeners: [{{ name: public, address: "127.0.0.1:0" }}]
upstreams:
  app: {{ endpoints: ["{}"] }}
routes: [{{ name: all, upstream: app }}]
"#,
        upstream.url()
    ))
}

#[tokio::test]
async fn a_slow_request_head_is_cut_off_with_408_while_others_are_served() {
    let upstream = Upstream::echo("app");
    let gw = slow_client_gateway(&upstream);
    let mut slow = RawConn::connect(gw.addr()).await;
    let started = Instant::now();
    slow.send(b"GET /slow HTTP/1.1\r\nHost: x\r\n").await;
    // Meanwhile another client is served normally, on the same (single) worker.
    let mut other = Client::connect(gw.addr()).await;
    for _ in 0..5 {
        assert_eq!(other.get("/fast").await.status, 200);
    }
    let reply = slow.read_response(Duration::from_secs(3)).await.expect("a 408");
    let took = started.elapsed();
    assert_eq!(reply.status, 408);
    assert_eq!(reply.json()["error"]["code"], "request_timeout");
    assert!(took >= Duration::from_millis(500) && took < Duration::from_millis(1500), "{took:?}");
    assert!(slow.closed_within(Duration::from_secs(1)).await);
    assert!(upstream.seen().iter().all(|s| s.uri == "/fast"));
}

#[tokio::test]
async fn a_trickling_client_cannot_hold_a_connection() {
    let upstream = Upstream::echo("app");
    let gw = slow_client_gateway(&upstream);
    let mut conn = RawConn::connect(gw.addr()).await;
    let started = Instant::now();
    let mut cut_off = false;
    for byte in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n" {
        use tokio::io::AsyncWriteExt;
        if conn.stream.write_all(&[*byte]).await.is_err() {
            cut_off = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        if started.elapsed() > Duration::from_secs(2) {
            break;
        }
    }
    let reply = conn.read_response(Duration::from_secs(2)).await;
    assert!(cut_off || reply.as_ref().is_some_and(|r| r.status == 408), "the trickle was not cut off");
    assert!(started.elapsed() < Duration::from_millis(2500));
    assert_eq!(upstream.requests(), 0);
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed() {
    let upstream = Upstream::echo("app");
    let gw = slow_client_gateway(&upstream);
    let mut conn = RawConn::connect(gw.addr()).await;
    conn.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(conn.read_response(Duration::from_secs(2)).await.expect("response").status, 200);
    let idle_since = Instant::now();
    // Longer than header_read: an idle connection is governed by the idle timeout instead.
    assert!(!conn.closed_within(Duration::from_millis(600)).await, "closed before the idle timeout");
    assert!(conn.closed_within(Duration::from_secs(2)).await, "not closed after the idle timeout");
    assert!(idle_since.elapsed() >= Duration::from_millis(800));
}
