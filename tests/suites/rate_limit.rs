//! `rate_limit` through a running gateway: the 429 and its headers exactly, keys kept apart,
//! stacked limits that refund, spoofing that does not escape a limit, and counters across reloads.
//!
//! Limits here are per minute or slower, so the few milliseconds between a test's requests can
//! never refill a bucket and make a test flaky; exact timing is tested on the algorithms.

use crate::common::{Client, Reply, TestGateway, Upstream};

async fn get(client: &mut Client, path: &str, headers: &[(&str, &str)]) -> Reply {
    client.request("GET", path, headers, "").await
}

fn statuses(replies: &[Reply]) -> Vec<u16> {
    replies.iter().map(|r| r.status.as_u16()).collect()
}

fn routes(app: &Upstream, policy: &str) -> String {
    format!(
        r#"listeners: [{{ name: public, address: "127.0.0.1:0" }}]
upstreams:
  app: {{ endpoints: ["{}"] }}
routes:
  - {{ name: open, match: {{ path: "/open/**" }}, upstream: app }}
  - name: limited
    match: {{ path: "/api/**" }}
    upstream: app
    policies:
      - rate_limit: {policy}
"#,
        app.url()
    )
}

#[tokio::test]
async fn a_token_bucket_answers_429_with_exact_headers() {
    let app = Upstream::echo("app");
    let gw = TestGateway::start(&routes(&app, "{ rate: 3/min }"));
    let mut client = Client::connect(gw.addr()).await;

    let first = get(&mut client, "/api/a", &[]).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("ratelimit-policy"), Some("\"3/min\";q=3;w=60"));
    assert_eq!(first.header("ratelimit"), Some("\"3/min\";r=2;t=20"), "one token back every 20 s");
    assert!(first.header("x-ratelimit-limit").is_none(), "the default is the IETF fields only");
    assert_eq!(get(&mut client, "/api/b", &[]).await.header("ratelimit"), Some("\"3/min\";r=1;t=40"));
    assert_eq!(get(&mut client, "/api/c", &[]).await.header("ratelimit"), Some("\"3/min\";r=0;t=60"));

    let refused = get(&mut client, "/api/d", &[]).await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.error_code(), "rate_limited");
    assert_eq!(refused.header("retry-after"), Some("20"));
    assert_eq!(refused.header("ratelimit-policy"), Some("\"3/min\";q=3;w=60"));
    assert_eq!(refused.header("ratelimit"), Some("\"3/min\";r=0;t=60"));
    assert_eq!(refused.header("content-type"), Some("application/json"));
    assert!(refused.json()["error"]["request_id"].is_string());
    assert_eq!(app.requests(), 3, "a refused request never reaches the upstream");

    // Other routes are not limited, and carry no rate-limit headers.
    let open = get(&mut client, "/open/x", &[]).await;
    assert_eq!(open.status, 200);
    assert!(open.header("ratelimit").is_none());
}

#[tokio::test]
async fn x_ratelimit_headers_and_windows() {
    let app = Upstream::echo("app");
    let gw = TestGateway::start(&routes(&app, "{ rate: 2/min, algorithm: fixed_window, headers: x_ratelimit }"));
    let mut client = Client::connect(gw.addr()).await;
    let first = get(&mut client, "/api/a", &[]).await;
    assert_eq!(first.header("x-ratelimit-limit"), Some("2"));
    assert_eq!(first.header("x-ratelimit-remaining"), Some("1"));
    let reset: u64 = first.header("x-ratelimit-reset").unwrap().parse().unwrap();
    assert!((1..=60).contains(&reset), "seconds to the end of the minute: {reset}");
    assert!(first.header("ratelimit").is_none());
    let second = get(&mut client, "/api/b", &[]).await;
    assert_eq!(second.header("x-ratelimit-remaining"), Some("0"));
    let refused = get(&mut client, "/api/c", &[]).await;
    assert_eq!(refused.status, 429);
    let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    let reset: u64 = refused.header("x-ratelimit-reset").unwrap().parse().unwrap();
    assert_eq!(retry, reset, "a fixed window opens again when it ends");
    assert!((1..=60).contains(&retry));

    // `both` sends both families; `none` neither, but still limits.
    gw.reload_with(&routes(&app, "{ rate: 2/min, algorithm: sliding_window, headers: both }"));
    let reply = get(&mut client, "/api/a", &[]).await;
    assert_eq!(reply.status, 200, "a changed limit starts afresh");
    assert_eq!(reply.header("ratelimit-policy"), Some("\"2/min\";q=2;w=60"));
    assert_eq!(reply.header("x-ratelimit-remaining"), Some("1"));
    gw.reload_with(&routes(&app, "{ rate: 1/min, headers: none }"));
    let reply = get(&mut client, "/api/a", &[]).await;
    assert_eq!(reply.status, 200);
    assert!(reply.header("ratelimit").is_none() && reply.header("x-ratelimit-limit").is_none());
    let refused = get(&mut client, "/api/a", &[]).await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.header("retry-after"), Some("60"), "Retry-After is sent whatever the header style");
}

#[tokio::test]
async fn keys_are_counted_apart_and_a_missing_key_falls_back_to_the_address() {
    let app = Upstream::echo("app");
    let gw = TestGateway::start(&routes(&app, "{ key: header:x-tenant, rate: 2/min }"));
    let mut client = Client::connect(gw.addr()).await;
    let mut a = Vec::new();
    for _ in 0..3 {
        a.push(get(&mut client, "/api/x", &[("x-tenant", "a")]).await);
    }
    assert_eq!(statuses(&a), [200, 200, 429]);
    let b = get(&mut client, "/api/x", &[("x-tenant", "b")]).await;
    assert_eq!(b.status, 200, "tenant b has its own count");
    // No header: counted by the client's address, not as one shared "no tenant" bucket, and not
    // as tenant a either.
    let mut none = Vec::new();
    for _ in 0..3 {
        none.push(get(&mut client, "/api/x", &[]).await);
    }
    assert_eq!(statuses(&none), [200, 200, 429]);
    // A key value cannot be "127.0.0.1" to steal the fallback bucket: values and addresses are
    // tagged apart.
    let spoof = get(&mut client, "/api/x", &[("x-tenant", "127.0.0.1")]).await;
    assert_eq!(spoof.status, 200);
}

#[tokio::test]
async fn spoofed_forwarding_headers_do_not_escape_an_address_limit() {
    let app = Upstream::echo("app");
    let gw = TestGateway::start(&routes(&app, "{ rate: 2/min }"));
    let mut client = Client::connect(gw.addr()).await;
    let mut replies = Vec::new();
    for i in 0..4 {
        let xff = format!("203.0.113.{i}");
        replies.push(
            get(
                &mut client,
                "/api/x",
                &[("x-forwarded-for", &xff), ("forwarded", &format!("for={xff}")), ("x-real-ip", &xff)],
            )
            .await,
        );
    }
    assert_eq!(statuses(&replies), [200, 200, 429, 429], "the peer is not a trusted proxy: its headers do not count");
    // Path variants reach the same route, and so the same limit.
    for path in ["/api/../api/x", "/API/x", "/api//x", "/%61pi/x"] {
        let reply = get(&mut client, path, &[]).await;
        assert!(reply.status == 429 || reply.status == 404, "{path}: {}", reply.status);
    }
    assert_eq!(app.requests(), 2);
}

#[tokio::test]
async fn trusted_proxies_make_the_forwarded_client_the_key() {
    let app = Upstream::echo("app");
    let yaml = routes(&app, "{ rate: 1/min }")
        .replace("listeners:", "server: { workers: 1, trusted_proxies: [127.0.0.1/32] }\nlisteners:");
    let gw = TestGateway::start(&yaml);
    let mut client = Client::connect(gw.addr()).await;
    let one = [("x-forwarded-for", "198.51.100.1")];
    let two = [("x-forwarded-for", "198.51.100.2")];
    assert_eq!(get(&mut client, "/api/x", &one).await.status, 200);
    assert_eq!(get(&mut client, "/api/x", &one).await.status, 429);
    assert_eq!(get(&mut client, "/api/x", &two).await.status, 200, "another client behind the same proxy");
}

fn consumers_config(app: &Upstream, policy: &str) -> String {
    format!(
        r#"listeners: [{{ name: public, address: "127.0.0.1:0" }}]
consumers:
  - {{ name: alice, plan: free, credentials: [{{ api_key: "alice-key-0123456789" }}] }}
  - {{ name: bob, plan: pro, credentials: [{{ api_key: "bob-key-0123456789ab" }}] }}
upstreams:
  app: {{ endpoints: ["{}"] }}
routes:
  - name: limited
    match: {{ path: "/api/**" }}
    upstream: app
    policies:
      - api_key: {{}}
      - rate_limit: {policy}
"#,
        app.url()
    )
}

#[tokio::test]
async fn stacked_limits_per_consumer_refund_what_a_refusal_took() {
    let app = Upstream::echo("app");
    let policy = "{ key: consumer, headers: both, limits: [{ rate: 5/min, name: minute }, { rate: 2/hour, algorithm: fixed_window, name: hour }] }";
    let gw = TestGateway::start(&consumers_config(&app, policy));
    let mut client = Client::connect(gw.addr()).await;
    let alice = [("x-api-key", "alice-key-0123456789")];
    let first = get(&mut client, "/api/x", &alice).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("ratelimit-policy"), Some("\"minute\";q=5;w=60, \"hour\";q=2;w=3600"));
    let second = get(&mut client, "/api/x", &alice).await;
    let third = get(&mut client, "/api/x", &alice).await;
    assert_eq!(statuses(&[second, third]), [200, 429]);
    // The hourly limit refused the third request: the minute limit was given its token back, so it
    // still shows 3 left (5 - 2), not 2.
    let fourth = get(&mut client, "/api/x", &alice).await;
    assert_eq!(fourth.status, 429);
    let ratelimit = fourth.header("ratelimit").unwrap();
    assert!(ratelimit.starts_with("\"minute\";r=3;"), "{ratelimit}");
    assert!(ratelimit.contains("\"hour\";r=0;"), "{ratelimit}");
    // X-RateLimit-* describe the limit closest to refusing.
    assert_eq!(fourth.header("x-ratelimit-limit"), Some("2"));
    assert_eq!(fourth.header("x-ratelimit-remaining"), Some("0"));

    // Bob is another consumer: his own counts.
    let bob = [("x-api-key", "bob-key-0123456789ab")];
    assert_eq!(get(&mut client, "/api/x", &bob).await.status, 200);
    // Without a key, the api_key policy refuses first: unauthenticated requests use no one's limit.
    assert_eq!(get(&mut client, "/api/x", &[]).await.status, 401);
    assert_eq!(app.requests(), 3);
}

#[tokio::test]
async fn counters_survive_a_reload_that_keeps_the_limit() {
    let app = Upstream::echo("app");
    let yaml = routes(&app, "{ rate: 2/min }");
    let gw = TestGateway::start(&yaml);
    let mut client = Client::connect(gw.addr()).await;
    assert_eq!(get(&mut client, "/api/x", &[]).await.status, 200);
    assert_eq!(get(&mut client, "/api/x", &[]).await.status, 200);
    assert_eq!(get(&mut client, "/api/x", &[]).await.status, 429);
    // The same limit (other routes changed): still used up.
    gw.reload_with(&format!("{yaml}  - {{ name: more, match: {{ path: \"/more/**\" }}, upstream: app }}\n"));
    assert_eq!(get(&mut client, "/api/x", &[]).await.status, 429, "a reload does not reset the count");
    // A changed limit starts a fresh count.
    gw.reload_with(&routes(&app, "{ rate: 3/min }"));
    assert_eq!(get(&mut client, "/api/x", &[]).await.status, 200);
}

#[tokio::test]
async fn a_global_limit_is_shared_by_routes_unless_keyed_by_route() {
    let app = Upstream::echo("app");
    let config = |key: &str| {
        format!(
            r#"listeners: [{{ name: public, address: "127.0.0.1:0" }}]
policies: [{{ rate_limit: {{ key: {key}, rate: 2/min }} }}]
upstreams:
  app: {{ endpoints: ["{}"] }}
routes:
  - {{ name: one, match: {{ path: "/one/**" }}, upstream: app }}
  - {{ name: two, match: {{ path: "/two/**" }}, upstream: app }}
"#,
            app.url()
        )
    };
    let gw = TestGateway::start(&config("client_ip"));
    let mut client = Client::connect(gw.addr()).await;
    assert_eq!(get(&mut client, "/one/x", &[]).await.status, 200);
    assert_eq!(get(&mut client, "/two/x", &[]).await.status, 200);
    assert_eq!(get(&mut client, "/one/x", &[]).await.status, 429, "one count across the routes");
    gw.reload_with(&config("[client_ip, route]"));
    for path in ["/one/x", "/one/x", "/two/x", "/two/x"] {
        assert_eq!(get(&mut client, path, &[]).await.status, 200, "{path}");
    }
    assert_eq!(get(&mut client, "/two/x", &[]).await.status, 429);
}

#[tokio::test]
async fn path_params_and_query_values_can_be_keys() {
    let app = Upstream::echo("app");
    let yaml = format!(
        r#"listeners: [{{ name: public, address: "127.0.0.1:0" }}]
upstreams:
  app: {{ endpoints: ["{}"] }}
routes:
  - name: orgs
    match: {{ path: "/orgs/{{org}}/**" }}
    upstream: app
    policies: [{{ rate_limit: {{ key: param:org, rate: 1/min }} }}]
  - name: search
    match: {{ path: "/search" }}
    upstream: app
    policies: [{{ rate_limit: {{ key: [client_ip, query:index], rate: 1/min }} }}]
"#,
        app.url()
    );
    let gw = TestGateway::start(&yaml);
    let mut client = Client::connect(gw.addr()).await;
    assert_eq!(get(&mut client, "/orgs/acme/repos", &[]).await.status, 200);
    assert_eq!(get(&mut client, "/orgs/acme/members", &[]).await.status, 429);
    assert_eq!(get(&mut client, "/orgs/globex/repos", &[]).await.status, 200);
    assert_eq!(get(&mut client, "/search?index=a&q=1", &[]).await.status, 200);
    assert_eq!(get(&mut client, "/search?q=2&index=a", &[]).await.status, 429);
    assert_eq!(get(&mut client, "/search?index=b", &[]).await.status, 200);
}

#[test]
fn bad_rate_limits_are_refused_with_their_paths() {
    let app = Upstream::echo("app");
    for (policy, path, needle) in [
        ("{ rate: 0/s }", "rate", "admits nothing"),
        ("{ rate: 10 }", "rate", "COUNT/PERIOD"),
        ("{ }", "rate", "needs a `rate`"),
        ("{ rate: 1/s, limits: [{ rate: 2/s }] }", "rate", "not both"),
        ("{ rate: 1/s, burst: 0 }", "burst", "at least 1"),
        ("{ rate: 1/s, algorithm: fixed_window, burst: 3 }", "burst", "token_bucket"),
        ("{ rate: 1/s, key: user }", "key", "unknown key"),
        ("{ rate: 1/s, key: [client_ip, \"header:\"] }", "key[1]", "needs a name"),
        ("{ rate: 1/s, key: [] }", "key", "empty key"),
        ("{ rate: 1/s, max_keys: 5 }", "max_keys", "between"),
        ("{ limits: [{ rate: 1/s }, { rate: 1/s }] }", "limits[1].name", "named"),
        ("{ limits: [{ rate: 1/s, name: \"a\\\"b\" }] }", "limits[0].name", "printable"),
        ("{ rate: 1/s, algorithm: leaky }", "algorithm", "unknown variant"),
    ] {
        let yaml = routes(&app, policy);
        let err = match TestGateway::try_start(&yaml) {
            Ok(_) => panic!("{policy} was accepted"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(needle), "{policy}: {err}");
        assert!(err.contains(path), "{policy}: expected {path} in {err}");
    }
}
