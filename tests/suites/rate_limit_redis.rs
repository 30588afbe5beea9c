//! `rate_limit` with `backend: redis`, against a real redis-server: one limit shared by several
//! gateways, the script's arithmetic against the local algorithms, and what happens when Redis
//! dies, comes back, or stops answering.

use std::time::{Duration, Instant};

use gatehouse::policy::rate_limit::algorithm::{Algorithm, State};
use gatehouse::policy::rate_limit::redis::{DECIDE_LUA, REFUND_LUA, parse_reply, script_args};

use crate::common::redis::RedisServer;
use crate::common::{Client, Reply, TestGateway, Upstream};

fn config(app: &Upstream, redis: &RedisServer, policy: &str) -> String {
    format!(
        r#"listeners: [{{ name: public, address: "127.0.0.1:0" }}]
redis: {{ url: "{}", timeout: 200ms, retry_after: 300ms }}
upstreams:
  app: {{ endpoints: ["{}"] }}
routes:
  - name: limited
    match: {{ path: "/api/**" }}
    upstream: app
    policies:
      - rate_limit: {policy}
"#,
        redis.url(),
        app.url()
    )
}

async fn get(client: &mut Client, path: &str) -> Reply {
    client.request("GET", path, &[], "").await
}

#[tokio::test]
async fn gateways_sharing_redis_enforce_one_limit_together() {
    let redis = RedisServer::start();
    let app = Upstream::echo("app");
    let yaml = config(&app, &redis, "{ rate: 6/min, backend: redis }");
    let (one, two) = (TestGateway::start(&yaml), TestGateway::start(&yaml));
    let mut a = Client::connect(one.addr()).await;
    let mut b = Client::connect(two.addr()).await;

    let first = get(&mut a, "/api/x").await;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("ratelimit"), Some("\"6/min\";r=5;t=10"), "same headers as the local backend");
    let mut admitted = 1;
    for i in 0..11 {
        let reply = if i % 2 == 0 { get(&mut b, "/api/x").await } else { get(&mut a, "/api/x").await };
        match reply.status.as_u16() {
            200 => admitted += 1,
            429 => {
                assert_eq!(reply.error_code(), "rate_limited");
                assert_eq!(reply.header("retry-after"), Some("10"));
            }
            other => panic!("unexpected {other}: {}", reply.text()),
        }
    }
    assert_eq!(admitted, 6, "two nodes, one limit of 6");
    assert_eq!(app.requests(), 6);
    // The state lives in Redis, under the configured prefix, with a hash tag and an expiry.
    let keys = redis.command(&["--scan", "--pattern", "gatehouse:rl:*"]).unwrap();
    let keys: Vec<&str> = keys.lines().collect();
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert!(keys[0].contains('{') && keys[0].contains('}'), "{}", keys[0]);
    let ttl: i64 = redis.command(&["PTTL", keys[0]]).unwrap().trim().parse().unwrap();
    assert!(ttl > 50_000 && ttl <= 60_000, "the key lives until the bucket is full again: {ttl} ms");
}

#[tokio::test]
async fn stacked_limits_in_redis_write_nothing_when_one_refuses() {
    let redis = RedisServer::start();
    let app = Upstream::echo("app");
    let policy = "{ backend: redis, limits: [{ rate: 5/min, name: minute }, { rate: 2/hour, algorithm: fixed_window, name: hour }, { rate: 3/hour, key: global, algorithm: sliding_window, name: all }] }";
    let gw = TestGateway::start(&config(&app, &redis, policy));
    let mut client = Client::connect(gw.addr()).await;
    assert_eq!(get(&mut client, "/api/x").await.status, 200);
    assert_eq!(get(&mut client, "/api/x").await.status, 200);
    let refused = get(&mut client, "/api/x").await;
    assert_eq!(refused.status, 429);
    let ratelimit = refused.header("ratelimit").unwrap().to_owned();
    assert!(ratelimit.starts_with("\"minute\";r=3;"), "the minute limit was not charged: {ratelimit}");
    assert!(ratelimit.contains("\"hour\";r=0;"), "{ratelimit}");
    assert!(!ratelimit.contains("\"all\""), "a limit in a later group was not asked: {ratelimit}");
    // `all` counts by another key (its own Redis call): the two admitted requests are in it, the
    // refused ones are not.
    gw.reload_with(&config(
        &app,
        &redis,
        "{ backend: redis, limits: [{ rate: 3/hour, key: global, algorithm: sliding_window, name: all }] }",
    ));
    let reply = get(&mut client, "/api/x").await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("ratelimit").map(|v| v.split(";t=").next().unwrap().to_owned()),
        Some("\"all\";r=0".into())
    );
}

#[tokio::test]
async fn a_redis_outage_falls_back_to_local_counts_and_recovers() {
    let mut redis = RedisServer::start();
    let app = Upstream::echo("app");
    let gw = TestGateway::start(&config(&app, &redis, "{ rate: 3/min, backend: redis }"));
    let mut client = Client::connect(gw.addr()).await;
    assert_eq!(get(&mut client, "/api/x").await.status, 200);

    redis.kill();
    // The default failure mode: this node's own counters decide, with the same limit; no 5xx.
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(get(&mut client, "/api/x").await.status.as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429], "local counting started from zero");

    redis.restart();
    // After `retry_after` (300ms) Redis is tried again; its count (1) is the one that counts.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let reply = get(&mut client, "/api/x").await;
        if reply.status == 200 {
            // Redis was restarted empty: this is its first request.
            assert_eq!(reply.header("ratelimit"), Some("\"3/min\";r=2;t=20"));
            break;
        }
        assert!(Instant::now() < deadline, "Redis was never used again");
    }
    assert_eq!(redis.command(&["DBSIZE"]).unwrap().trim(), "1");
}

#[tokio::test]
async fn fail_closed_refuses_with_503_while_redis_is_down() {
    let mut redis = RedisServer::start();
    let app = Upstream::echo("app");
    let policy = "{ rate: 3/min, backend: redis, on_redis_failure: deny }";
    let gw = TestGateway::start(&format!("admin: {{ address: \"127.0.0.1:0\" }}\n{}", config(&app, &redis, policy)));
    let mut client = Client::connect(gw.addr()).await;
    assert_eq!(get(&mut client, "/api/x").await.status, 200);
    redis.kill();
    let reply = get(&mut client, "/api/x").await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.error_code(), "rate_limit_unavailable");
    assert_eq!(app.requests(), 1);
    // The metrics tell the allowed decision from the one Redis could not make.
    let metrics = crate::common::get(gw.gateway.admin_addr().unwrap(), "/metrics").await.text();
    for (decision, count) in [("allowed", 1), ("unavailable", 1)] {
        let line = format!(
            "gatehouse_rate_limit_decisions_total{{policy=\"rate_limit\",scope=\"route:limited\",limit=\"\",decision=\"{decision}\"}} {count}"
        );
        assert!(metrics.lines().any(|l| l == line), "no `{line}` in\n{metrics}");
    }
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&mut client, "/api/x").await.status != 200 {
        assert!(Instant::now() < deadline, "never recovered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_redis_that_stops_answering_delays_requests_by_the_timeout_at_most() {
    let redis = RedisServer::start();
    let app = Upstream::echo("app");
    let gw = TestGateway::start(&config(&app, &redis, "{ rate: 100/min, backend: redis }"));
    let mut client = Client::connect(gw.addr()).await;
    assert_eq!(get(&mut client, "/api/x").await.status, 200);
    redis.pause();
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    for _ in 0..10 {
        let t = Instant::now();
        let reply = get(&mut client, "/api/x").await;
        slowest = slowest.max(t.elapsed());
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    redis.resume();
    // 200ms timeout: the first request waits for it, the next ones skip Redis for 300ms. Generous
    // bounds: this is about not hanging, not about speed.
    assert!(slowest < Duration::from_secs(2), "a request took {slowest:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "ten requests took {:?}", started.elapsed());
}

#[test]
fn bad_redis_settings_are_refused() {
    let app = Upstream::echo("app");
    let base = |redis: &str, policy: &str| {
        format!(
            r#"listeners: [{{ name: public, address: "127.0.0.1:0" }}]
{redis}
upstreams:
  app: {{ endpoints: ["{}"] }}
routes:
  - {{ name: r, match: {{ path: "/**" }}, upstream: app, policies: [{{ rate_limit: {policy} }}] }}
"#,
            app.url()
        )
    };
    for (yaml, needle) in [
        (base("", "{ rate: 1/s, backend: redis }"), "needs a top-level `redis`"),
        (base("redis: { url: \"http://x\" }", "{ rate: 1/s, backend: redis }"), "invalid Redis URL"),
        (base("redis: {}", "{ rate: 1/s }"), "give the `url`"),
        (base("redis: { url: \"redis://a\", cluster: [\"redis://b\"] }", "{ rate: 1/s }"), "not both"),
        (base("", "{ rate: 1/s, on_redis_failure: deny }"), "applies to `backend: redis` only"),
        (
            base(
                "redis: { url: \"redis://127.0.0.1:1\" }",
                "{ rate: 1/s, algorithm: fixed_window, backend: redis, sync: batch }",
            ),
            "token_bucket limits only",
        ),
    ] {
        let err = match TestGateway::try_start(&yaml) {
            Ok(_) => panic!("accepted: {yaml}"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(needle), "{needle}: {err}");
    }
}

/// The Lua script and `algorithm.rs` are two spellings of one arithmetic: run the same request
/// times through both and compare every decision.
#[tokio::test]
async fn the_redis_script_decides_exactly_like_the_local_algorithms() {
    let redis = RedisServer::start();
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let decide = redis::Script::new(DECIDE_LUA);
    let refund = redis::Script::new(REFUND_LUA);
    let charge = redis::Script::new(gatehouse::policy::rate_limit::batch::CHARGE_LUA);
    const MS: u64 = 1_000_000;
    let algorithms = [
        Algorithm::TokenBucket { interval_ns: 200 * MS, burst: 10 },
        Algorithm::TokenBucket { interval_ns: 7 * MS, burst: 1 },
        Algorithm::FixedWindow { window_ns: 1000 * MS, limit: 5 },
        Algorithm::SlidingWindow { window_ns: 1000 * MS, limit: 7 },
        Algorithm::SlidingWindow { window_ns: 60_000 * MS, limit: 1 },
        Algorithm::CalendarMonth { limit: 30 },
    ];
    let mut rng = fastrand::Rng::with_seed(7);
    for (n, algorithm) in algorithms.iter().enumerate() {
        let key = format!("check:{n}");
        let mut state = State::default();
        let mut now = 1_700_000_000_000 * MS; // microsecond-aligned, like the script's clock
        for step in 0..400 {
            now += rng.u64(0..120) * MS / 4 + rng.u64(0..1000) * 1000;
            if matches!(algorithm, Algorithm::CalendarMonth { .. }) {
                now += rng.u64(0..3) * 86_400_000 * MS; // days, to cross month ends
            }
            let args = script_args(algorithm, now);
            let expected = algorithm.decide(&mut state, now);
            let reply = run_script(&decide, &mut conn, &key, now, 1, args).await;
            let (refused, got) = parse_reply(&reply, 1).unwrap();
            assert_eq!(refused.is_some(), !expected.allowed, "{algorithm:?} step {step}");
            let got = got[0];
            let same = (got.allowed, got.remaining, got.reset_ns);
            assert_eq!(same, (expected.allowed, expected.remaining, expected.reset_ns), "{algorithm:?} step {step}");
            // The script works in whole microseconds: a sliding window's retry time may be
            // rounded down by less than one.
            assert!(
                expected.retry_after_ns.abs_diff(got.retry_after_ns) < 1000,
                "{algorithm:?} step {step}: retry {} against {}",
                got.retry_after_ns,
                expected.retry_after_ns
            );
            if step % 7 == 3 {
                // Batch sync: admitted elsewhere, charged whatever the limit says.
                algorithm.charge(&mut state, now, 3);
                let reply = run_script(&charge, &mut conn, &key, now, 3, args).await;
                let global = algorithm.from_script_state([reply[0] as u64, reply[1] as u64, reply[2] as u64]);
                assert_eq!(global, state, "{algorithm:?} step {step}: charged states differ");
                continue;
            }
            if expected.allowed && step % 5 == 0 {
                algorithm.refund(&mut state, now);
                run_script(&refund, &mut conn, &key, now, 1, args).await;
            }
        }
    }
}

#[tokio::test]
async fn a_monthly_quota_in_redis_and_its_usage_read_out() {
    let redis = RedisServer::start();
    let app = Upstream::echo("app");
    let yaml = format!(
        r#"admin: {{ address: "127.0.0.1:0" }}
listeners: [{{ name: public, address: "127.0.0.1:0" }}]
redis: {{ url: "{}" }}
consumers:
  - {{ name: alice, plan: free, credentials: [{{ api_key: "alice-key-0123456789" }}] }}
upstreams:
  app: {{ endpoints: ["{}"] }}
policies:
  - api_key: {{}}
  - quota: {{ period: month, plans: {{ free: 3 }}, backend: redis }}
routes:
  - {{ name: a, match: {{ path: "/a/**" }}, upstream: app }}
  - {{ name: b, match: {{ path: "/b/**" }}, upstream: app }}
"#,
        redis.url(),
        app.url()
    );
    let (one, two) = (TestGateway::start(&yaml), TestGateway::start(&yaml));
    let key = [("x-api-key", "alice-key-0123456789")];
    let mut a = Client::connect(one.addr()).await;
    let mut b = Client::connect(two.addr()).await;
    assert_eq!(a.request("GET", "/a/x", &key, "").await.status, 200);
    assert_eq!(b.request("GET", "/b/x", &key, "").await.status, 200, "a global quota spans routes and nodes");
    let usage = crate::common::get(one.gateway.admin_addr().unwrap(), "/consumers/alice/usage").await.json();
    let quota = &usage["limits"][0];
    assert_eq!(quota["backend"], "redis");
    assert_eq!(quota["scope"], "global");
    assert_eq!(
        (quota["limit"].as_u64(), quota["used"].as_u64(), quota["remaining"].as_u64()),
        (Some(3), Some(2), Some(1))
    );
    let renews = quota["resets_in_seconds"].as_u64().unwrap();
    assert!((1..=31 * 86_400).contains(&renews), "renews at the start of next month: {renews}");
    assert_eq!(a.request("GET", "/a/x", &key, "").await.status, 200, "reading the usage used none of it");
    let refused = b.request("GET", "/a/x", &key, "").await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.error_code(), "quota_exceeded");
}

#[tokio::test]
async fn a_redis_cluster_holds_the_counters_of_a_fleet() {
    let cluster = crate::common::redis::RedisCluster::start(3);
    let app = Upstream::echo("app");
    let nodes = cluster.urls().iter().map(|u| format!("\"{u}\"")).collect::<Vec<_>>().join(", ");
    let yaml = format!(
        r#"listeners: [{{ name: public, address: "127.0.0.1:0" }}]
redis: {{ cluster: [{nodes}], timeout: 500ms }}
upstreams:
  app: {{ endpoints: ["{}"] }}
routes:
  - name: limited
    match: {{ path: "/api/**" }}
    upstream: app
    policies:
      - rate_limit:
          backend: redis
          key: header:x-tenant
          limits: [{{ rate: 2/min, name: minute }}, {{ rate: 100/day, algorithm: fixed_window, name: day }}]
"#,
        app.url()
    );
    let (one, two) = (TestGateway::start(&yaml), TestGateway::start(&yaml));
    let mut a = Client::connect(one.addr()).await;
    let mut b = Client::connect(two.addr()).await;
    for tenant in 0..24 {
        let tenant = format!("tenant-{tenant}");
        let headers = [("x-tenant", tenant.as_str())];
        let statuses = [
            a.request("GET", "/api/x", &headers, "").await.status.as_u16(),
            b.request("GET", "/api/x", &headers, "").await.status.as_u16(),
            a.request("GET", "/api/x", &headers, "").await.status.as_u16(),
        ];
        assert_eq!(statuses, [200, 200, 429], "{tenant}: both limits of a key in one slot, one call");
    }
    let per_node = cluster.keys_per_node("gatehouse:rl:*");
    assert_eq!(per_node.iter().sum::<usize>(), 48, "two keys per tenant: {per_node:?}");
    assert!(per_node.iter().filter(|&&n| n > 0).count() >= 2, "tenants spread over the nodes: {per_node:?}");
    assert!(per_node.iter().all(|n| n % 2 == 0), "a tenant's two keys share a slot: {per_node:?}");
}

#[tokio::test]
async fn batch_sync_shares_counts_without_a_round_trip_per_request() {
    let redis = RedisServer::start();
    let app = Upstream::echo("app");
    let yaml = config(&app, &redis, "{ rate: 10/hour, backend: redis, sync: batch, sync_interval: 50ms }")
        .replace("timeout: 200ms", "timeout: 2s");
    let (one, two) = (TestGateway::start(&yaml), TestGateway::start(&yaml));
    let mut a = Client::connect(one.addr()).await;
    let mut b = Client::connect(two.addr()).await;
    for _ in 0..6 {
        assert_eq!(get(&mut a, "/api/x").await.status, 200);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Node two meets the key: its first request is decided on what it knew (nothing), and the
    // next sync brings node one's six.
    assert_eq!(get(&mut b, "/api/x").await.status, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(get(&mut b, "/api/x").await.status.as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429], "10 for the fleet: 6 + 1 + 3");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Redis holds the fleet's count: ten tokens of 6 minutes each were taken, so the bucket is
    // full again (and the key expires) in an hour.
    assert_eq!(charged_tokens(&redis, 360_000), 10);
    // Node one, busy with the key before, was refreshed after it: it knows the limit is used up.
    assert_eq!(get(&mut a, "/api/x").await.status, 429);

    // Redis stops answering: requests do not wait for it (strict mode would wait the 2s timeout).
    redis.pause();
    let started = Instant::now();
    for _ in 0..5 {
        assert_eq!(get(&mut b, "/api/y").await.status, 429);
    }
    let elapsed = started.elapsed();
    redis.resume();
    assert!(elapsed < Duration::from_millis(1500), "five requests took {elapsed:?}");
}

#[tokio::test]
async fn batch_overshoot_is_bounded_and_paid_back() {
    let redis = RedisServer::start();
    let app = Upstream::echo("app");
    let yaml = config(&app, &redis, "{ rate: 5/hour, backend: redis, sync: batch, sync_interval: 200ms }");
    let (one, two) = (TestGateway::start(&yaml), TestGateway::start(&yaml));
    let mut a = Client::connect(one.addr()).await;
    let mut b = Client::connect(two.addr()).await;
    // Between two syncs each node admits what it believes is left: the documented overshoot,
    // at most (nodes - 1) x limit here.
    let mut admitted = 0;
    for _ in 0..8 {
        admitted += usize::from(get(&mut a, "/api/x").await.status == 200);
        admitted += usize::from(get(&mut b, "/api/x").await.status == 200);
    }
    assert!((5..=10).contains(&admitted), "{admitted} admitted by two nodes for a limit of 5");
    // Every admitted request is charged to Redis at the next sync, and the overshoot is paid
    // back: both nodes now refuse.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(charged_tokens(&redis, 720_000), admitted as u64);
    assert_eq!(get(&mut a, "/api/x").await.status, 429);
    assert_eq!(get(&mut b, "/api/x").await.status, 429);
}

/// How many tokens the fleet took from the one token bucket in Redis, from the key's expiry (it
/// expires when the bucket is full again: taken tokens x interval from now).
fn charged_tokens(redis: &RedisServer, interval_ms: u64) -> u64 {
    let keys = redis.command(&["--scan", "--pattern", "gatehouse:rl:*"]).unwrap();
    let ttl: u64 = redis.command(&["PTTL", keys.trim()]).unwrap().trim().parse().unwrap();
    (ttl + interval_ms / 2) / interval_ms
}

/// Runs one of the rate-limit scripts the way the gateway does, but at the made-up time `now_ns`,
/// and clears the expiry it set (by that clock; Redis would apply it by its own).
async fn run_script(
    script: &redis::Script,
    conn: &mut redis::aio::MultiplexedConnection,
    key: &str,
    now_ns: u64,
    second: u64,
    args: [u64; 3],
) -> Vec<i64> {
    let reply: redis::Value = script
        .key(key)
        .arg(now_ns / 1000)
        .arg(second)
        .arg(args[0])
        .arg(args[1])
        .arg(args[2])
        .invoke_async(conn)
        .await
        .unwrap();
    let _: i64 = redis::cmd("PERSIST").arg(key).query_async(conn).await.unwrap();
    match reply {
        redis::Value::Array(items) => items
            .into_iter()
            .map(|v| match v {
                redis::Value::Int(n) => n,
                other => panic!("unexpected {other:?}"),
            })
            .collect(),
        redis::Value::Int(n) => vec![n],
        other => panic!("unexpected {other:?}"),
    }
}
