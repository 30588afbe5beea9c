//! Hot reload and graceful shutdown: new config takes effect at once, bad config never does,
//! in-flight requests finish on their generation, and nothing fails under load.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::common::{Client, TestGateway, Upstream, UpstreamBehaviour, get};

fn routed_to(upstream: &Upstream, path: &str) -> String {
    format!(
        r#"listeners: [{{ name: public, address: "127.0.0.1:0" }}]
upstreams:
  target: {{ endpoints: ["{}"] }}
routes:
  - {{ name: r, match: {{ path: "{path}" }}, upstream: target }}
"#,
        upstream.url()
    )
}

async fn instance(addr: std::net::SocketAddr, path: &str) -> String {
    let reply = get(addr, path).await;
    if reply.status == 200 {
        reply.json()["instance"].as_str().unwrap().to_owned()
    } else {
        reply.status.as_u16().to_string()
    }
}

#[tokio::test]
async fn a_reload_switches_routes_and_upstreams_at_once() {
    let (a, b) = (Upstream::echo("a"), Upstream::echo("b"));
    let gw = TestGateway::start(&routed_to(&a, "/**"));
    assert_eq!(gw.gateway.shared().generation(), 1);
    assert_eq!(instance(gw.addr(), "/x").await, "a");
    let generation = gw.reload_with(&routed_to(&b, "/only/**"));
    assert_eq!(generation, 2);
    assert_eq!(instance(gw.addr(), "/only/x").await, "b");
    assert_eq!(instance(gw.addr(), "/x").await, "404");
}

#[tokio::test]
async fn an_invalid_config_is_refused_and_the_old_one_keeps_serving() {
    let a = Upstream::echo("a");
    let gw = TestGateway::start(&routed_to(&a, "/**"));
    gw.write_config(
        "listeners: [{ name: public, address: \"127.0.0.1:0\" }]\nroutes:\n  - { name: r, upstream: nowhere }\n",
    );
    let errors = gw.gateway.reload().expect_err("the reload must fail");
    let text = errors.to_string();
    assert!(text.contains("routes[0].upstream") && text.contains("no upstream is named \"nowhere\""), "{text}");
    assert!(text.contains(":5:"), "the error has its line: {text}");
    gw.write_config("listeners: [ {{{ not yaml");
    assert!(gw.gateway.reload().is_err());
    assert_eq!(gw.gateway.shared().generation(), 1);
    assert_eq!(instance(gw.addr(), "/still").await, "a");
    let history = gw.gateway.shared().reloads();
    assert_eq!(history.len(), 2);
    assert!(history.iter().all(|r| !r.ok && !r.errors.is_empty()));
}

#[tokio::test]
async fn changing_the_file_reloads_it() {
    let (a, b) = (Upstream::echo("a"), Upstream::echo("b"));
    let gw = TestGateway::start_watching(&routed_to(&a, "/**"), Duration::from_millis(50));
    assert_eq!(instance(gw.addr(), "/").await, "a");
    gw.write_config(&routed_to(&b, "/**"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while instance(gw.addr(), "/").await != "b" {
        assert!(Instant::now() < deadline, "the changed file was not picked up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(gw.gateway.shared().generation(), 2);
}

#[tokio::test]
async fn in_flight_requests_finish_on_the_generation_they_started_with() {
    let slow = Upstream::start("slow", UpstreamBehaviour::Delay(Duration::from_millis(600)));
    let fast = Upstream::echo("fast");
    let gw = TestGateway::start(&routed_to(&slow, "/**"));
    let addr = gw.addr();
    let in_flight = tokio::spawn(async move { instance(addr, "/long").await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    gw.reload_with(&routed_to(&fast, "/**"));
    assert_eq!(instance(gw.addr(), "/new").await, "fast");
    assert_eq!(in_flight.await.unwrap(), "slow", "the request that started before the reload completed");
}

#[tokio::test]
async fn reloading_under_load_fails_no_request() {
    let (a, b) = (Upstream::echo("a"), Upstream::echo("b"));
    let gw = TestGateway::start(&format!("server: {{ workers: 2 }}\n{}", routed_to(&a, "/**")));
    let addr = gw.addr();
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut loads = Vec::new();
    for i in 0..6 {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        loads.push(tokio::spawn(async move {
            // Half the clients keep one connection, half connect anew each time.
            let mut kept = Client::connect(addr).await;
            while !stop.load(Ordering::Relaxed) {
                let reply = if i % 2 == 0 { kept.get("/load").await } else { get(addr, "/load").await };
                if reply.status == 200 { &ok } else { &failed }.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for round in 0..12 {
        tokio::time::sleep(Duration::from_millis(60)).await;
        let target = if round % 2 == 0 { &b } else { &a };
        gw.reload_with(&format!("server: {{ workers: 2 }}\n{}", routed_to(target, "/**")));
    }
    stop.store(true, Ordering::Relaxed);
    for l in loads {
        l.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    assert!(ok.load(Ordering::Relaxed) > 100, "too little load to mean anything: {}", ok.load(Ordering::Relaxed));
    assert!(a.requests() > 0 && b.requests() > 0);
    assert_eq!(gw.gateway.shared().generation(), 13);
}

#[tokio::test]
async fn unchanged_upstreams_keep_their_pooled_connections_across_reloads() {
    let a = Upstream::echo("a");
    let gw = TestGateway::start(&routed_to(&a, "/**"));
    let mut client = Client::connect(gw.addr()).await;
    client.get("/1").await;
    gw.reload_with(&routed_to(&a, "/**").replace("name: r,", "name: renamed,"));
    client.get("/2").await;
    assert_eq!(a.connections(), 1, "the pool survived the reload");
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests_and_stops_accepting() {
    let slow = Upstream::start("slow", UpstreamBehaviour::Delay(Duration::from_millis(500)));
    let gw = TestGateway::start(&routed_to(&slow, "/**"));
    let addr = gw.addr();
    let mut idle = Client::connect(addr).await;
    idle.get("/warm").await;
    let in_flight = tokio::spawn(async move { get(addr, "/long").await.status });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let started = Instant::now();
    let gateway = gw.gateway;
    tokio::task::spawn_blocking(move || gateway.shutdown()).await.unwrap();
    assert_eq!(in_flight.await.unwrap(), 200, "the in-flight request completed");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "the listener is closed");
}

#[tokio::test]
async fn shutdown_gives_up_on_requests_after_the_grace_period() {
    let hang = Upstream::start("hang", UpstreamBehaviour::Hang);
    let gw = TestGateway::start(&format!(
        "server: {{ workers: 1, timeouts: {{ shutdown_grace: 300ms }} }}\n{}",
        routed_to(&hang, "/**")
    ));
    let addr = gw.addr();
    let stuck = tokio::spawn(async move {
        let mut conn = crate::common::RawConn::connect(addr).await;
        conn.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        conn.closed_within(Duration::from_secs(5)).await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let gateway = gw.gateway;
    tokio::task::spawn_blocking(move || gateway.shutdown()).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(2), "shutdown took {:?}", started.elapsed());
    assert!(stuck.await.unwrap(), "the stuck connection was closed");
}

#[tokio::test]
async fn settings_that_need_a_restart_are_reported_on_reload() {
    let a = Upstream::echo("a");
    let gw = TestGateway::start(&routed_to(&a, "/**"));
    gw.reload_with(&format!(
        "server: {{ workers: 3 }}\nadmin: {{ enabled: false, address: \"127.0.0.1:1\" }}\n{}",
        routed_to(&a, "/**")
    ));
    let last = gw.gateway.shared().reloads().pop().unwrap();
    assert!(last.ok);
    assert_eq!(last.pending_restart, vec!["admin".to_owned(), "server.workers".to_owned()]);
    assert_eq!(instance(gw.addr(), "/").await, "a");
}

#[tokio::test]
async fn listeners_are_added_and_removed_by_a_reload() {
    use crate::common::RawConn;
    let app = Upstream::start("app", UpstreamBehaviour::Delay(Duration::from_millis(300)));
    let free = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (first, second) = (free(), free());
    let config = |listeners: &str| {
        format!(
            "server: {{ workers: 2 }}\nlisteners: [{{ name: main, address: \"127.0.0.1:0\" }}{listeners}]\nupstreams: {{ app: {{ endpoints: [\"{}\"] }} }}\nroutes: [{{ name: all, upstream: app }}]\n",
            app.url()
        )
    };
    let gw = TestGateway::start(&config(""));
    let main = gw.addr();

    // Added: it serves at once, on every worker.
    gw.reload_with(&config(&format!(", {{ name: extra, address: \"127.0.0.1:{first}\" }}")));
    let extra = std::net::SocketAddr::from(([127, 0, 0, 1], first));
    assert_eq!(gw.gateway.listener_addr("extra"), Some(extra));
    for _ in 0..4 {
        assert_eq!(get(extra, "/a").await.status, 200);
    }
    let sockets = crate::common::listening_sockets(first);
    assert_eq!(sockets.len(), 2, "one listening socket per worker: {sockets:?}");
    let names: Vec<_> = gw.gateway.shared().listeners().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["main", "extra"]);

    // Removed: no new connection; an open one finishes the request it is in, then closes.
    let mut kept = RawConn::connect(extra).await;
    kept.send(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    gw.reload_with(&config(""));
    let reply = kept.read_response(Duration::from_secs(5)).await.expect("the request in flight finished");
    assert!(reply.text().contains("\"instance\":\"app\""), "{}", reply.text());
    assert!(kept.closed_within(Duration::from_secs(3)).await, "the removed listener's connection drains and closes");
    let refused = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(extra)).await;
    assert!(!matches!(refused, Ok(Ok(_))), "the removed listener still accepts");
    assert_eq!(gw.gateway.listener_addr("extra"), None);
    assert_eq!(get(main, "/b").await.status, 200, "the others serve on");

    // Re-added under the same name at another address: a listener of its own.
    gw.reload_with(&config(&format!(", {{ name: extra, address: \"127.0.0.1:{second}\" }}")));
    assert_eq!(get(std::net::SocketAddr::from(([127, 0, 0, 1], second)), "/c").await.status, 200);

    // An address that cannot be bound refuses the reload; the running listeners stay.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    gw.write_config(&config(&format!(
        ", {{ name: extra, address: \"127.0.0.1:{second}\" }}, {{ name: busy, address: \"127.0.0.1:{taken_port}\" }}"
    )));
    let error = gw.gateway.reload().unwrap_err().to_string();
    assert!(error.contains("listeners[2].address"), "{error}");
    assert_eq!(get(std::net::SocketAddr::from(([127, 0, 0, 1], second)), "/d").await.status, 200);
    drop(taken);
}
