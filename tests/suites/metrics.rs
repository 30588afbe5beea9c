//! Prometheus metrics at the admin listener's /metrics, scraped and parsed after known traffic.

use std::collections::BTreeMap;

use crate::common::{Client, TestGateway, Upstream, UpstreamBehaviour};

/// `name{labels}` → value, from the text exposition; every sample line must parse.
fn samples(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("not a sample: {line}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("not a number: {line}"));
        assert!(out.insert(series.to_owned(), value).is_none(), "series twice: {series}");
    }
    out
}

async fn scrape(gw: &TestGateway, accept: Option<&str>) -> (String, String) {
    let mut admin = Client::connect(gw.gateway.admin_addr().unwrap()).await;
    let headers: Vec<(&str, &str)> = accept.map(|a| vec![("accept", a)]).unwrap_or_default();
    let reply = admin.request("GET", "/metrics", &headers, "").await;
    assert_eq!(reply.status, 200);
    (reply.header("content-type").unwrap_or_default().to_owned(), reply.text())
}

fn config(app: &Upstream, failing: &Upstream, metrics: &str) -> String {
    let hang = "http://127.0.0.1:9"; // discard port: nothing listens; only used by /hang
    config_with(app, failing, hang, metrics)
}

fn config_with(app: &Upstream, failing: &Upstream, hang: &str, metrics: &str) -> String {
    format!(
        r#"admin: {{ address: "127.0.0.1:0" }}
{metrics}
listeners: [{{ name: public, address: "127.0.0.1:0" }}]
upstreams:
  app: {{ endpoints: ["{}"] }}
  failing: {{ endpoints: ["{}"], retries: {{ attempts: 1, on: ["503"] }}, passive_health: {{ consecutive_failures: 0 }} }}
  hang: {{ endpoints: ["{hang}"] }}
routes:
  - {{ name: users, match: {{ path: "/users/**" }}, upstream: app }}
  - {{ name: broken, match: {{ path: /broken }}, upstream: failing }}
  - {{ name: teapot, match: {{ path: /teapot }}, policies: [{{ direct_response: {{ status: 418, body: "short and stout" }} }}] }}
  - {{ name: limited, match: {{ path: /limited }}, upstream: app, policies: [{{ rate_limit: {{ key: client_ip, rate: 1/h }} }}] }}
  - {{ name: hang, match: {{ path: /hang }}, upstream: hang }}
"#,
        app.url(),
        failing.url()
    )
}

#[tokio::test]
async fn requests_are_counted_by_route_upstream_method_and_status_class() {
    let app = Upstream::echo("app");
    let failing = Upstream::start("failing", UpstreamBehaviour::Status(503));
    let hang = Upstream::start("hang", UpstreamBehaviour::Hang);
    let gw = TestGateway::start(&config_with(&app, &failing, &hang.url(), ""));
    let mut client = Client::connect(gw.addr()).await;
    for i in 0..3 {
        assert_eq!(client.get(&format!("/users/{i}")).await.status, 200);
    }
    for _ in 0..2 {
        assert_eq!(client.request("POST", "/users/new", &[], "0123456789").await.status, 200);
    }
    assert_eq!(client.get("/broken").await.status, 503);
    assert_eq!(client.get("/teapot").await.status, 418);
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(client.get("/limited").await.status.as_u16());
    }
    assert_eq!(statuses, [200, 429, 429]);
    // Paths that match no route: one series, however many different paths.
    for i in 0..50 {
        assert_eq!(client.get(&format!("/random/{i}/{}", i * 7919)).await.status, 404);
    }

    let (content_type, text) = scrape(&gw, None).await;
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    assert!(text.contains("# TYPE gatehouse_requests_total counter"), "{text}");
    assert!(!text.contains("# EOF"));
    let s = samples(&text);
    let requests = |route: &str, upstream: &str, method: &str, status: &str| {
        let key = format!(
            "gatehouse_requests_total{{listener=\"public\",route=\"{route}\",upstream=\"{upstream}\",method=\"{method}\",status=\"{status}\"}}"
        );
        s.get(&key).copied().unwrap_or_else(|| panic!("no {key} in\n{text}"))
    };
    assert_eq!(requests("users", "app", "GET", "2xx"), 3.0);
    assert_eq!(requests("users", "app", "POST", "2xx"), 2.0);
    assert_eq!(requests("broken", "failing", "GET", "5xx"), 1.0);
    assert_eq!(requests("teapot", "", "GET", "4xx"), 1.0);
    assert_eq!(requests("", "", "GET", "4xx"), 50.0);
    assert_eq!(requests("limited", "app", "GET", "2xx"), 1.0);
    assert_eq!(requests("limited", "", "GET", "4xx"), 2.0, "refused before any upstream");
    let request_series = s.keys().filter(|k| k.starts_with("gatehouse_requests_total{")).count();
    assert_eq!(request_series, 7, "no other series: {text}");

    // The histogram of the same requests: cumulative buckets ending in +Inf = count.
    let labels = "listener=\"public\",route=\"users\",upstream=\"app\",method=\"GET\",status=\"2xx\"}";
    let mut buckets: Vec<(f64, f64)> = s
        .iter()
        .filter(|(k, _)| k.starts_with("gatehouse_request_duration_seconds_bucket{le=\"") && k.ends_with(labels))
        .map(|(k, v)| {
            let le = k.split('"').nth(1).unwrap();
            (if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap() }, *v)
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert_eq!(buckets.len(), 15, "14 bounds and +Inf: {text}");
    assert_eq!(buckets.last().unwrap(), &(f64::INFINITY, 3.0));
    assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "cumulative: {buckets:?}");
    let count_key = "gatehouse_request_duration_seconds_count{listener=\"public\",route=\"users\",upstream=\"app\",method=\"GET\",status=\"2xx\"}";
    assert_eq!(s[count_key], 3.0);

    // The gateway's own error answers, by code.
    assert_eq!(s["gatehouse_errors_total{listener=\"public\",route=\"\",code=\"route_not_found\"}"], 50.0);
    assert_eq!(s["gatehouse_errors_total{listener=\"public\",route=\"limited\",code=\"rate_limited\"}"], 2.0);
    // The rate limit's own decisions, by the limit that refused.
    let decision = |limit: &str, decision: &str| {
        s[&format!(
            "gatehouse_rate_limit_decisions_total{{policy=\"rate_limit\",scope=\"route:limited\",limit=\"{limit}\",decision=\"{decision}\"}}"
        )]
    };
    assert_eq!(decision("", "allowed"), 1.0);
    assert_eq!(decision("1/h", "limited"), 2.0);
    assert_eq!(decision("", "unavailable"), 0.0);
    // An upstream's own 503 is passed on, not a gateway error.
    for route in ["users", "broken"] {
        let label = format!("route=\"{route}\"");
        assert!(!s.keys().any(|k| k.starts_with("gatehouse_errors_total{") && k.contains(&label)), "{text}");
    }

    // Bodies, tries, retries, endpoints, the config.
    assert_eq!(s["gatehouse_request_body_bytes_total{listener=\"public\",route=\"users\"}"], 20.0);
    assert!(s["gatehouse_response_body_bytes_total{listener=\"public\",route=\"users\"}"] > 0.0);
    assert_eq!(
        s["gatehouse_upstream_responses_total{upstream=\"failing\",outcome=\"5xx\"}"], 2.0,
        "a try and its retry"
    );
    assert_eq!(s["gatehouse_upstream_retries_total{upstream=\"failing\"}"], 1.0);
    assert_eq!(s["gatehouse_upstream_responses_total{upstream=\"app\",outcome=\"2xx\"}"], 6.0, "5 users and 1 limited");
    assert_eq!(s["gatehouse_upstream_response_header_seconds_count{upstream=\"app\"}"], 6.0);
    let endpoint = format!("{{upstream=\"app\",endpoint=\"{}\"}}", app.url());
    assert_eq!(s[&format!("gatehouse_upstream_endpoint_healthy{endpoint}")], 1.0);
    assert_eq!(s[&format!("gatehouse_upstream_endpoint_requests_total{endpoint}")], 6.0);
    assert_eq!(s[&format!("gatehouse_upstream_endpoint_in_flight{endpoint}")], 0.0);
    assert_eq!(s["gatehouse_config_generation"], 1.0);
    assert_eq!(s[&format!("gatehouse_build_info{{version=\"{}\"}}", env!("CARGO_PKG_VERSION"))], 1.0);
    assert_eq!(s["gatehouse_connections_open{listener=\"public\"}"], 1.0, "this test's client");
    assert_eq!(s["gatehouse_requests_in_flight{listener=\"public\"}"], 0.0, "every request answered");

    // A request in flight shows as one, at the listener and at the endpoint.
    let at = gw.addr();
    let waiting = tokio::spawn(async move { crate::common::get(at, "/hang").await });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let s = samples(&scrape(&gw, None).await.1);
    assert_eq!(s["gatehouse_requests_in_flight{listener=\"public\"}"], 1.0);
    assert_eq!(
        s[&format!("gatehouse_upstream_endpoint_in_flight{{upstream=\"hang\",endpoint=\"{}\"}}", hang.url())],
        1.0
    );
    waiting.abort();

    // A reload keeps the counts; reloads are counted.
    gw.reload_with(&config_with(&app, &failing, &hang.url(), ""));
    assert_eq!(client.get("/users/9").await.status, 200);
    let (_, text) = scrape(&gw, None).await;
    let s = samples(&text);
    let key =
        "gatehouse_requests_total{listener=\"public\",route=\"users\",upstream=\"app\",method=\"GET\",status=\"2xx\"}";
    assert_eq!(s[key], 4.0, "{text}");
    assert_eq!(s["gatehouse_config_reloads_total{result=\"ok\"}"], 1.0);
    assert_eq!(s["gatehouse_config_generation"], 2.0);
}

#[tokio::test]
async fn openmetrics_on_request_and_nothing_counted_when_off() {
    let app = Upstream::echo("app");
    let failing = Upstream::start("failing", UpstreamBehaviour::Status(503));
    let gw = TestGateway::start(&config(&app, &failing, "metrics: { enabled: false }"));
    let mut client = Client::connect(gw.addr()).await;
    assert_eq!(client.get("/users/1").await.status, 200);
    let (content_type, text) = scrape(&gw, Some("application/openmetrics-text;version=1.0.0,text/plain;q=0.5")).await;
    assert!(content_type.starts_with("application/openmetrics-text"), "{content_type}");
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert!(text.contains("# TYPE gatehouse_upstream_endpoint_requests counter"), "{text}");
    let s = samples(&text.replace("# EOF\n", ""));
    assert!(!s.keys().any(|k| k.starts_with("gatehouse_requests_total{")), "requests are not counted: {text}");
    // What the gateway tracks anyway is still there.
    let endpoint = format!("{{upstream=\"app\",endpoint=\"{}\"}}", app.url());
    assert_eq!(s[&format!("gatehouse_upstream_endpoint_requests_total{endpoint}")], 1.0);
}

#[tokio::test]
async fn consumers_are_counted_when_asked_up_to_the_cap() {
    let app = Upstream::echo("app");
    let gw = TestGateway::start(&format!(
        r#"admin: {{ address: "127.0.0.1:0" }}
metrics: {{ consumers: true, max_consumers: 2 }}
listeners: [{{ name: public, address: "127.0.0.1:0" }}]
consumers:
  - {{ name: alice, credentials: [{{ api_key: "alice-key-0123456789" }}] }}
  - {{ name: bob, credentials: [{{ api_key: "bob-key-0123456789ab" }}] }}
  - {{ name: carol, credentials: [{{ api_key: "carol-key-0123456789" }}] }}
upstreams:
  app: {{ endpoints: ["{}"] }}
routes:
  - {{ name: api, match: {{ path: "/api/**" }}, upstream: app, policies: [{{ api_key: {{}} }}] }}
"#,
        app.url()
    ));
    let mut client = Client::connect(gw.addr()).await;
    // Carol calls first, but she is third in the config: the cap goes by the config, not by who
    // calls first, so the series do not depend on traffic.
    for (key, times) in [("carol-key-0123456789", 4), ("alice-key-0123456789", 3), ("bob-key-0123456789ab", 2)] {
        for _ in 0..times {
            assert_eq!(client.request("GET", "/api/x", &[("x-api-key", key)], "").await.status, 200);
        }
    }
    assert_eq!(client.request("GET", "/api/x", &[("x-api-key", "wrong-key-0123456789")], "").await.status, 401);
    let s = samples(&scrape(&gw, None).await.1);
    let count = |consumer: &str, status: &str| {
        s.get(&format!(
            "gatehouse_consumer_requests_total{{consumer=\"{consumer}\",route=\"api\",status=\"{status}\"}}"
        ))
        .copied()
    };
    assert_eq!(count("alice", "2xx"), Some(3.0));
    assert_eq!(count("bob", "2xx"), Some(2.0));
    assert_eq!(count("carol", "2xx"), None, "over the cap of 2");
    assert_eq!(count("other", "2xx"), Some(4.0));
    let series = s.keys().filter(|k| k.starts_with("gatehouse_consumer_requests_total{")).count();
    assert_eq!(series, 3, "an unidentified request is no consumer");
}

#[tokio::test]
async fn a_split_counts_each_answer_under_the_side_that_gave_it() {
    let app = Upstream::echo("app");
    let failing = Upstream::start("failing", UpstreamBehaviour::Status(503));
    let gw = TestGateway::start(&format!(
        r#"admin: {{ address: "127.0.0.1:0" }}
listeners: [{{ name: public, address: "127.0.0.1:0" }}]
upstreams:
  app: {{ endpoints: ["{}"] }}
  failing: {{ endpoints: ["{}"], retries: {{ attempts: 0 }}, passive_health: {{ consecutive_failures: 0 }} }}
routes:
  - {{ name: canary, split: [{{ upstream: app, weight: 1 }}, {{ upstream: failing, weight: 1 }}] }}
"#,
        app.url(),
        failing.url()
    ));
    let mut client = Client::connect(gw.addr()).await;
    let mut answered = (0.0, 0.0);
    for _ in 0..40 {
        match client.get("/x").await.status.as_u16() {
            200 => answered.0 += 1.0,
            _ => answered.1 += 1.0,
        }
    }
    assert!(answered.0 > 0.0 && answered.1 > 0.0, "both sides drawn: {answered:?}");
    let (_, text) = scrape(&gw, None).await;
    let s = samples(&text);
    let count = |upstream: &str, status: &str| {
        let key = format!(
            "gatehouse_requests_total{{listener=\"public\",route=\"canary\",upstream=\"{upstream}\",method=\"GET\",status=\"{status}\"}}"
        );
        s.get(&key).copied()
    };
    // app answered every 200, failing every 503: a side mixed up would show the other pairs.
    assert_eq!(count("app", "2xx"), Some(answered.0), "{text}");
    assert_eq!(count("failing", "5xx"), Some(answered.1), "{text}");
    assert_eq!((count("app", "5xx"), count("failing", "2xx")), (None, None), "{text}");
}

#[tokio::test]
async fn policy_cache_hits_and_misses_are_counted() {
    let app = Upstream::echo("app");
    let auth = Upstream::start("auth", UpstreamBehaviour::Status(200));
    let gw = TestGateway::start(&format!(
        r#"admin: {{ address: "127.0.0.1:0" }}
listeners: [{{ name: public, address: "127.0.0.1:0" }}]
upstreams: {{ app: {{ endpoints: ["{}"] }} }}
routes:
  - name: checked
    upstream: app
    policies: [{{ forward_auth: {{ url: "{}/check", cache: {{ ttl: 1m, key: [authorization] }} }} }}]
"#,
        app.url(),
        auth.url()
    ));
    let series =
        |result: &str| format!("gatehouse_policy_cache_lookups_total{{cache=\"forward_auth\",result=\"{result}\"}}");
    let before = samples(&scrape(&gw, None).await.1);
    let mut client = Client::connect(gw.addr()).await;
    for _ in 0..5 {
        assert_eq!(client.request("GET", "/x", &[("authorization", "Bearer same")], "").await.status, 200);
    }
    let after = samples(&scrape(&gw, None).await.1);
    // The counts are the process's (other tests' gateways share them): at least this request's.
    let delta = |result: &str| after[&series(result)] - before[&series(result)];
    assert!(delta("miss") >= 1.0, "the first decision is asked for");
    assert!(delta("hit") >= 4.0, "the other four are remembered");
    assert_eq!(auth.requests(), 1, "and the service was asked once");
}
