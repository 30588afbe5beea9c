//! Upstreams with several endpoints: the balancing algorithms, passive and active health, and
//! retries with their budget.

use std::collections::HashMap;
use std::time::Duration;

use crate::common::{Client, GrpcHealth, TestGateway, Upstream, UpstreamBehaviour};

fn config(endpoints: &[&Upstream], upstream_settings: &str) -> String {
    let list = endpoints.iter().map(|u| format!("\"{}\"", u.url())).collect::<Vec<_>>().join(", ");
    format!(
        r#"listeners: [{{ name: public, address: "127.0.0.1:0" }}]
upstreams:
  app:
    endpoints: [{list}]
{upstream_settings}
routes:
  - {{ name: all, match: {{ path: "/**" }}, upstream: app }}
"#
    )
}

/// Which endpoint answered (the echo upstream names itself in its body).
async fn served_by(client: &mut Client, path: &str, headers: &[(&str, &str)]) -> String {
    let reply = client.request("GET", path, headers, "").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()["instance"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn consistent_hashing_keeps_keys_and_moves_only_a_removed_endpoints_keys() {
    let (a, b, c) = (Upstream::echo("a"), Upstream::echo("b"), Upstream::echo("c"));
    let settings = "    balance: consistent_hash\n    hash_on: header:x-user";
    let gw = TestGateway::start(&config(&[&a, &b, &c], settings));
    let mut client = Client::connect(gw.addr()).await;
    let mut before = HashMap::new();
    for user in 0..120 {
        let user = format!("user-{user}");
        let first = served_by(&mut client, "/x", &[("x-user", &user)]).await;
        assert_eq!(served_by(&mut client, "/y", &[("x-user", &user)]).await, first, "{user} moved between requests");
        before.insert(user, first);
    }
    // Without the header, a client is hashed by its address: always the same endpoint, not random.
    let anonymous = served_by(&mut client, "/x", &[]).await;
    for _ in 0..20 {
        assert_eq!(served_by(&mut client, "/x", &[]).await, anonymous);
    }
    let shares: Vec<usize> = ["a", "b", "c"].iter().map(|n| before.values().filter(|v| v == n).count()).collect();
    assert!(shares.iter().all(|&s| s >= 15), "every endpoint gets keys: {shares:?}");

    gw.reload_with(&config(&[&a, &c], settings));
    let mut moved = 0;
    for (user, owner) in &before {
        let now = served_by(&mut client, "/x", &[("x-user", user)]).await;
        if now != *owner {
            moved += 1;
            assert_eq!(owner, "b", "{user} moved from {owner}, which is still there");
        }
    }
    assert_eq!(moved, shares[1], "exactly b's keys moved");
}

#[tokio::test]
async fn least_request_and_ewma_send_less_to_a_slow_endpoint() {
    for balance in ["least_request", "ewma"] {
        let fast = Upstream::echo("fast");
        let slow = Upstream::start("slow", UpstreamBehaviour::Delay(Duration::from_millis(60)));
        let gw = TestGateway::start(&config(&[&fast, &slow], &format!("    balance: {balance}")));
        let addr = gw.addr();
        // 8 clients at once for a while: the slow endpoint holds requests longer, so it is busier.
        let clients: Vec<_> = (0..8)
            .map(|_| {
                tokio::spawn(async move {
                    let mut client = Client::connect(addr).await;
                    let mut served = Vec::new();
                    for _ in 0..25 {
                        let reply = client.get("/x").await;
                        served.push(reply.json()["instance"].as_str().unwrap_or_default().to_owned());
                    }
                    served
                })
            })
            .collect();
        let mut to_slow = 0;
        let mut total = 0;
        for client in clients {
            for served in client.await.unwrap() {
                total += 1;
                to_slow += usize::from(served == "slow");
            }
        }
        assert!(to_slow * 4 < total, "{balance}: {to_slow} of {total} went to the slow endpoint");
    }
}

#[tokio::test]
async fn a_failing_endpoint_is_ejected_and_its_requests_retried_elsewhere() {
    let good = Upstream::echo("good");
    let bad = Upstream::start("bad", UpstreamBehaviour::Status(503));
    let settings = "    passive_health: { consecutive_failures: 3, ejection_time: 30s }\n    retries: { attempts: 2, on: [connect_failure, \"503\"] }";
    let gw =
        TestGateway::start(&format!("admin: {{ address: \"127.0.0.1:0\" }}\n{}", config(&[&good, &bad], settings)));
    let mut client = Client::connect(gw.addr()).await;
    for i in 0..40 {
        let reply = client.get("/x").await;
        assert_eq!(reply.status, 200, "request {i}: retried on the good endpoint");
    }
    assert!(bad.requests() <= 3, "ejected after 3 failures in a row: it saw {}", bad.requests());
    assert!(good.requests() >= 40);
    let state = crate::common::get(gw.gateway.admin_addr().unwrap(), "/upstreams").await.json();
    let endpoints = state["upstreams"][0]["endpoints"].as_array().unwrap().clone();
    let health: Vec<(String, bool)> =
        endpoints.iter().map(|e| (e["url"].as_str().unwrap().to_owned(), e["healthy"].as_bool().unwrap())).collect();
    assert_eq!(health, [(good.url(), true), (bad.url(), false)], "the admin API shows the ejection");
    // A POST is not idempotent: never retried after the upstream saw it.
    let gw = TestGateway::start(&config(&[&bad], "    retries: { attempts: 2, on: [\"503\"] }"));
    let before = bad.requests();
    let mut client = Client::connect(gw.addr()).await;
    assert_eq!(client.request("POST", "/x", &[], "order").await.status, 503);
    assert_eq!(bad.requests(), before + 1, "tried once");
}

#[tokio::test]
async fn a_dead_endpoint_costs_no_client_a_failure() {
    let live = Upstream::echo("live");
    let mut dying = Upstream::echo("dying");
    let gw = TestGateway::start(&config(&[&live, &dying], ""));
    let mut client = Client::connect(gw.addr()).await;
    for _ in 0..10 {
        assert_eq!(client.get("/x").await.status, 200);
    }
    dying.stop();
    // Defaults: a connect failure is retried on another endpoint; five in a row eject.
    for i in 0..50 {
        let reply = client.request("POST", "/x", &[], "payload").await;
        assert_eq!(reply.status, 200, "request {i}: {}", reply.text());
        assert_eq!(reply.json()["body"], "payload", "the body went to the live endpoint intact");
    }
}

#[tokio::test]
async fn the_retry_budget_caps_retries_when_everything_fails() {
    let a = Upstream::start("a", UpstreamBehaviour::Status(503));
    let b = Upstream::start("b", UpstreamBehaviour::Status(503));
    let settings = "    passive_health: { consecutive_failures: 0 }\n    retries: { attempts: 3, on: [\"503\"], budget_percent: 20, min_per_second: 0, backoff: 1ms, max_backoff: 1ms }";
    let gw = TestGateway::start(&config(&[&a, &b], settings));
    let mut client = Client::connect(gw.addr()).await;
    for _ in 0..100 {
        assert_eq!(client.get("/x").await.status, 503);
    }
    let tries = a.requests() + b.requests();
    // Without the budget: 400 tries. With it: 100 + 20% of them.
    assert!((100..=121).contains(&tries), "{tries} tries for 100 requests");
}

#[tokio::test]
async fn a_small_body_is_sent_again_on_retry() {
    let bad = Upstream::start("bad", UpstreamBehaviour::Status(502));
    let good = Upstream::echo("good");
    let settings = "    balance: round_robin\n    passive_health: { consecutive_failures: 0 }\n    retries: { attempts: 1, on: [\"502\"] }";
    let gw = TestGateway::start(&config(&[&bad, &good], settings));
    let mut client = Client::connect(gw.addr()).await;
    for _ in 0..4 {
        let reply = client.request("PUT", "/doc", &[], "version 2").await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.json()["body"], "version 2");
    }
    assert!(bad.seen().iter().all(|r| r.body == b"version 2"[..]), "the failed tries had the body too");
}

#[test]
fn bad_upstream_settings_are_refused() {
    let a = Upstream::echo("a");
    for (settings, needle) in [
        ("    balance: consistent_hash", "needs `hash_on`"),
        ("    hash_on: client_ip", "applies to `balance: consistent_hash` only"),
        ("    balance: consistent_hash\n    hash_on: moon", "unknown key `moon`"),
        ("    balance: consistent_hash\n    hash_on: \"header:\"", "needs a name"),
        ("    retries: { on: [bogus] }", "expected connect_failure"),
        ("    retries: { on: [\"404\"] }", "5xx"),
        ("    retries: { attempts: 50 }", "at most 10"),
        ("    passive_health: { max_ejected_percent: 150 }", "at most 100"),
        ("    balance: fastest", "unknown variant"),
        ("    health_check: { type: grpc, path: /healthz }", "path: applies to `type: http` only"),
        ("    health_check: { type: grpc, expect_status: [2xx] }", "expect_status: applies to `type: http` only"),
        ("    health_check: { type: grpc, host: \"not a host\" }", "is not a host[:port]"),
        ("    health_check: { type: http, service: users.v1.Users }", "applies to `type: grpc` only"),
        ("    health_check: { type: tcp, port: 0 }", "a port from 1 to 65535"),
        ("    health_check: { type: tcp, path: /healthz }", "path: applies to `type: http` only"),
        ("    health_check: { type: tcp, body_contains: ok }", "body_contains: applies to `type: http` only"),
        (
            "    health_check: { type: tcp, host: users.internal }",
            "host: applies to `type: http` and `type: grpc` only",
        ),
        ("    health_check: { type: grpc, port: 70000 }", "health_check.port: 70000 is out of range"),
    ] {
        let err = match TestGateway::try_start(&config(&[&a], settings)) {
            Ok(_) => panic!("accepted: {settings}"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(needle), "{settings}: {err}");
    }
}

#[tokio::test]
async fn the_circuit_breaker_opens_probes_and_closes() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let failing = Arc::new(AtomicBool::new(true));
    let flag = failing.clone();
    let app = Upstream::start(
        "app",
        UpstreamBehaviour::Custom(Arc::new(move |_| {
            let status = if flag.load(Ordering::SeqCst) { 503 } else { 200 };
            http::Response::builder().status(status).body(bytes::Bytes::from_static(b"{}")).unwrap()
        })),
    );
    let settings = "    passive_health: { consecutive_failures: 0 }\n    retries: { attempts: 0 }\n    circuit_breaker: { min_requests: 5, failure_ratio: 0.5, open_for: 400ms, half_open_requests: 2 }";
    let gw = TestGateway::start(&config(&[&app], settings));
    let mut client = Client::connect(gw.addr()).await;
    for _ in 0..5 {
        assert_eq!(client.get("/x").await.status, 503);
    }
    assert_eq!(app.requests(), 5);
    let open = client.get("/x").await;
    assert_eq!(open.status, 503);
    assert_eq!(open.error_code(), "circuit_open");
    assert_eq!(open.header("retry-after"), Some("1"));
    assert_eq!(app.requests(), 5, "an open breaker does not touch the upstream");
    // Half-open after 400ms: a failing probe opens it again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(client.get("/x").await.error_code(), "", "the probe reached the upstream (its own 503)");
    assert_eq!(client.get("/x").await.error_code(), "circuit_open");
    // The upstream recovers: two successful probes close the breaker.
    failing.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..10 {
        assert_eq!(client.get("/x").await.status, 200);
    }
}

#[tokio::test]
async fn cancelled_requests_give_back_their_place_under_max_requests() {
    // Every request hangs until the route's timeout cancels it. Were a cancelled request still
    // counted, two of them would fill max_requests for ever and later ones get 503.
    let hang = Upstream::start("hang", UpstreamBehaviour::Hang);
    let list = format!("\"{}\"", hang.url());
    let gw = TestGateway::start(&format!(
        r#"listeners: [{{ name: public, address: "127.0.0.1:0" }}]
upstreams:
  app:
    endpoints: [{list}]
    retries: {{ attempts: 0 }}
    passive_health: {{ consecutive_failures: 0 }}
    circuit_breaker: {{ max_requests: 2, min_requests: 1000 }}
routes:
  - {{ name: all, match: {{ path: "/**" }}, upstream: app, timeout: 100ms }}
"#
    ));
    for i in 0..6 {
        let reply = crate::common::get(gw.addr(), "/x").await;
        assert_eq!(reply.error_code(), "route_timeout", "request {i}: {}", reply.text());
    }
    // And the cap itself holds: with two requests hanging, a third is refused at once.
    let (one, two) = (gw.addr(), gw.addr());
    let first = tokio::spawn(async move { crate::common::get(one, "/slow").await });
    let second = tokio::spawn(async move { crate::common::get(two, "/slow").await });
    tokio::time::sleep(Duration::from_millis(30)).await;
    let third = crate::common::get(gw.addr(), "/x").await;
    assert_eq!(third.error_code(), "upstream_overloaded", "{}", third.text());
    assert_eq!(first.await.unwrap().error_code(), "route_timeout");
    assert_eq!(second.await.unwrap().error_code(), "route_timeout");
}

/// An upstream whose `/health` answers 200 or 503 as `well` says, and echoes everything else.
fn checkable(name: &'static str, well: std::sync::Arc<std::sync::atomic::AtomicBool>) -> Upstream {
    use std::sync::atomic::Ordering;
    Upstream::start(
        name,
        UpstreamBehaviour::Custom(std::sync::Arc::new(move |seen| {
            let status = if seen.uri != "/health" || well.load(Ordering::SeqCst) { 200 } else { 503 };
            let body = serde_json::json!({"instance": name}).to_string();
            http::Response::builder().status(status).body(bytes::Bytes::from(body)).unwrap()
        })),
    )
}

#[tokio::test]
async fn active_health_checks_take_endpoints_out_and_back() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let (a_well, b_well) = (Arc::new(AtomicBool::new(true)), Arc::new(AtomicBool::new(true)));
    let (a, b) = (checkable("a", a_well.clone()), checkable("b", b_well.clone()));
    let settings = "    health_check: { path: /health, interval: 50ms, timeout: 40ms, unhealthy_threshold: 2, healthy_threshold: 2 }\n    on_all_unhealthy: fail";
    let gw = TestGateway::start(&config(&[&a, &b], settings));
    let mut client = Client::connect(gw.addr()).await;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..20 {
        seen.insert(served_by(&mut client, "/x", &[]).await);
    }
    assert_eq!(seen.len(), 2, "both in rotation: {seen:?}");

    b_well.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(400)).await;
    for _ in 0..20 {
        assert_eq!(served_by(&mut client, "/x", &[]).await, "a", "b failed its checks");
    }
    // Nobody healthy, and the upstream says fail rather than spread.
    a_well.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let reply = client.get("/x").await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.error_code(), "no_endpoint");
    // Back after two good checks.
    b_well.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(400)).await;
    for _ in 0..10 {
        assert_eq!(served_by(&mut client, "/x", &[]).await, "b");
    }
}

#[tokio::test]
async fn a_tcp_check_notices_a_stopped_endpoint() {
    let live = Upstream::echo("live");
    let mut gone = Upstream::echo("gone");
    let settings = "    health_check: { type: tcp, interval: 50ms, timeout: 40ms, unhealthy_threshold: 1 }\n    retries: { attempts: 0 }\n    passive_health: { consecutive_failures: 0 }";
    let gw = TestGateway::start(&config(&[&live, &gone], settings));
    gone.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut client = Client::connect(gw.addr()).await;
    for i in 0..20 {
        assert_eq!(client.get("/x").await.status, 200, "request {i} went to the stopped endpoint");
    }
}

/// The endpoints that answer 20 requests in a row (a 503 counts as "503").
async fn rotation(client: &mut Client) -> std::collections::BTreeSet<String> {
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let reply = client.get("/x").await;
        seen.insert(if reply.status == 200 {
            reply.json()["instance"].as_str().unwrap_or_default().to_owned()
        } else {
            reply.status.as_u16().to_string()
        });
    }
    seen
}

/// Polls until the rotation is `want`, for at most 5 s.
async fn wait_for_rotation(client: &mut Client, want: &[&str]) {
    let want: std::collections::BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
    let start = std::time::Instant::now();
    loop {
        let got = rotation(client).await;
        if got == want {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "after 5 s the rotation is {got:?}, not {want:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Endpoints a (127.0.0.1) and b (127.0.0.2) serve HTTP; their gRPC health servers listen on one
/// port of the same two addresses, which the check's `port` points at.
fn grpc_checked(service: &str) -> (Upstream, Upstream, GrpcHealth, GrpcHealth, String) {
    let a = Upstream::start_at("a", UpstreamBehaviour::Echo, "127.0.0.1:0");
    let b = Upstream::start_at("b", UpstreamBehaviour::Echo, "127.0.0.2:0");
    let (ha, hb) = GrpcHealth::pair();
    let settings = format!(
        "    health_check: {{ type: grpc, service: \"{service}\", port: {}, interval: 100ms, timeout: 90ms, unhealthy_threshold: 2, healthy_threshold: 2 }}\n    on_all_unhealthy: fail",
        ha.port()
    );
    let yaml = config(&[&a, &b], &settings);
    (a, b, ha, hb, yaml)
}

#[tokio::test]
async fn grpc_health_checks_take_endpoints_out_and_back() {
    use tonic_health::ServingStatus;
    let (_a, _b, _ha, hb, yaml) = grpc_checked("");
    let gw = TestGateway::start(&yaml);
    let mut client = Client::connect(gw.addr()).await;
    // Checks have run (and passed) for a while: with `fail`, failing ones would show as 503.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rotation(&mut client).await, ["a", "b"].map(String::from).into());

    hb.set("", ServingStatus::NotServing).await;
    wait_for_rotation(&mut client, &["a"]).await;
    hb.set("", ServingStatus::Serving).await;
    wait_for_rotation(&mut client, &["a", "b"]).await;
}

#[tokio::test]
async fn a_grpc_check_of_a_service_the_server_does_not_know_fails() {
    use tonic_health::ServingStatus;
    let (_a, _b, ha, _hb, yaml) = grpc_checked("users.v1.Users");
    // Only a's health server knows the service; b's answers NOT_FOUND.
    ha.set("users.v1.Users", ServingStatus::Serving).await;
    let gw = TestGateway::start(&yaml);
    let mut client = Client::connect(gw.addr()).await;
    wait_for_rotation(&mut client, &["a"]).await;
    // And it stays that way: a is checked for the service, and passes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rotation(&mut client).await, ["a"].map(String::from).into());
}
