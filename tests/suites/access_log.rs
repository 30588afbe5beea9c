//! The access log: one JSON line per request with the documented fields, and never a secret.

use std::time::{Duration, Instant};

use crate::common::{Client, RawConn, TestGateway, Upstream};

fn read_lines(path: &std::path::Path, want: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<serde_json::Value> =
            text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
        if lines.len() >= want || Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A gateway logging to `log`, with a route `/app/**` to `upstream`, and `extra` top-level keys.
fn app_config(log: &std::path::Path, upstream: &Upstream, extra: &str) -> String {
    format!(
        r#"access_log: {{ enabled: true, path: "{}" }}
{extra}
listeners: [{{ name: public, address: "127.0.0.1:0" }}]
upstreams:
  app: {{ endpoints: ["{}"] }}
routes:
  - {{ name: app, match: {{ path: "/app/**" }}, upstream: app }}
"#,
        log.display(),
        upstream.url()
    )
}

#[tokio::test]
async fn each_request_is_one_json_line_without_secrets() {
    let upstream = Upstream::echo("app");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let gw = TestGateway::start(&app_config(&log, &upstream, ""));
    let mut client = Client::connect(gw.addr()).await;
    let reply = client
        .request(
            "POST",
            "/app/login?api_key=SECRET-QUERY-KEY&token=SECRET-TOKEN",
            &[
                ("authorization", "Bearer SECRET-BEARER"),
                ("cookie", "session=SECRET-COOKIE"),
                ("x-api-key", "SECRET-HEADER-KEY"),
                ("user-agent", "test-agent/1.0"),
                ("x-request-id", "req-42"),
            ],
            "hello body",
        )
        .await;
    assert_eq!(reply.status, 200);
    client.get("/missing").await;
    let mut raw = RawConn::connect(gw.addr()).await;
    raw.send(b"GET /app/x HTTP/1.1\r\nHost: x\r\nUser-Agent: evil\"\n{\"status\":1}\r\n\r\n").await;
    let _ = raw.read_response(Duration::from_secs(1)).await;

    let lines = read_lines(&log, 2);
    assert!(lines.len() >= 2, "{lines:?}");
    let first = &lines[0];
    assert_eq!(first["method"], "POST");
    assert_eq!(first["path"], "/app/login");
    assert_eq!(first["route"], "app");
    assert_eq!(first["upstream"], upstream.url());
    assert_eq!(first["status"], 200);
    assert_eq!(first["request_id"], "req-42");
    assert_eq!(first["client"], "127.0.0.1");
    assert_eq!(first["listener"], "public");
    assert_eq!(first["bytes_in"], 10);
    assert_eq!(first["bytes_out"].as_u64(), Some(reply.body.len() as u64));
    assert_eq!(first["user_agent"], "test-agent/1.0");
    assert!(first["duration_ms"].as_f64().unwrap() >= first["upstream_ms"].as_f64().unwrap());
    assert!(first["time"].as_str().unwrap().ends_with('Z'));
    let second = &lines[1];
    assert_eq!(second["status"], 404);
    assert_eq!(second["route"], serde_json::Value::Null);
    assert_eq!(second["error"], "route_not_found");

    let text = std::fs::read_to_string(&log).unwrap();
    for secret in
        ["SECRET-QUERY-KEY", "SECRET-TOKEN", "SECRET-BEARER", "SECRET-COOKIE", "SECRET-HEADER-KEY", "hello body"]
    {
        assert!(!text.contains(secret), "{secret} leaked into the access log");
    }
}

#[tokio::test]
async fn the_access_log_is_off_unless_enabled() {
    let upstream = Upstream::echo("app");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let gw = TestGateway::start(&format!(
        r#"access_log: {{ enabled: false, path: "{}" }}
listeners: [{{ name: public, address: "127.0.0.1:0" }}]
upstreams:
  app: {{ endpoints: ["{}"] }}
routes: [{{ name: app, upstream: app }}]
"#,
        log.display(),
        upstream.url()
    ));
    assert_eq!(crate::common::get(gw.addr(), "/").await.status, 200);
    std::thread::sleep(Duration::from_millis(100));
    assert!(!log.exists());
}

#[tokio::test]
async fn logged_paths_are_normalised_and_clients_resolved_through_trusted_proxies() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let gw = TestGateway::start(&format!(
        r#"server: {{ workers: 1, trusted_proxies: ["127.0.0.1"] }}
access_log: {{ enabled: true, path: "{}" }}
listeners: [{{ name: public, address: "127.0.0.1:0" }}]
routes:
  - {{ name: hi, match: {{ path: /hello }}, policies: [{{ direct_response: {{ status: 200 }} }}] }}
"#,
        log.display()
    ));
    let mut client = Client::connect(gw.addr()).await;
    client.request("GET", "/a/../hell%6f", &[("x-forwarded-for", "203.0.113.9")], "").await;
    client.request("GET", "/nowhere", &[("x-forwarded-for", "198.51.100.4, 127.0.0.1")], "").await;
    let lines = read_lines(&log, 2);
    assert_eq!(lines[0]["path"], "/hello");
    assert_eq!(lines[0]["route"], "hi");
    assert_eq!(lines[0]["client"], "203.0.113.9");
    assert_eq!(lines[1]["status"], 404);
    assert_eq!(lines[1]["client"], "198.51.100.4", "resolved for requests that reach no upstream too");
}

#[tokio::test]
async fn with_tracing_the_trace_is_continued_upstream_and_logged() {
    let upstream = Upstream::echo("app");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let config = |tracing: &str| app_config(&log, &upstream, tracing);
    let gw = TestGateway::start(&config("tracing: { enabled: true, sampling: 1.0 }"));
    let mut client = Client::connect(gw.addr()).await;
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
    let reply = client.request("GET", "/app/a", &[("traceparent", parent), ("tracestate", "rojo=1")], "").await;
    assert_eq!(reply.status, 200);
    let seen = upstream.seen();
    let sent = seen[0].headers["traceparent"].to_str().unwrap().to_owned();
    assert!(sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "the client's trace: {sent}");
    assert!(!sent.contains("00f067aa0ba902b7"), "with the gateway's span as parent: {sent}");
    assert!(sent.ends_with("-00"), "the client's not-sampled flag is kept: {sent}");
    assert_eq!(seen[0].headers["tracestate"], "rojo=1");

    // No (or a broken) traceparent: a new trace, sampled at 1.0; a stray tracestate is dropped.
    for headers in [vec![], vec![("traceparent", "00-zz-broken"), ("tracestate", "stale=1")]] {
        assert_eq!(client.request("GET", "/app/b", &headers, "").await.status, 200);
    }
    let seen = upstream.seen();
    for request in &seen[1..3] {
        let sent = request.headers["traceparent"].to_str().unwrap();
        assert_eq!(sent.len(), 55, "{sent}");
        assert!(sent.starts_with("00-") && sent.ends_with("-01"), "{sent}");
        assert!(request.headers.get("tracestate").is_none());
    }
    assert_ne!(seen[1].headers["traceparent"], seen[2].headers["traceparent"], "each request its own trace");

    let lines = read_lines(&log, 3);
    assert_eq!(lines[0]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(lines[1]["trace_id"].as_str().unwrap(), &seen[1].headers["traceparent"].to_str().unwrap()[3..35]);

    // Tracing off (the default): whatever the client sent passes through untouched.
    gw.reload_with(&config(""));
    assert_eq!(client.request("GET", "/app/c", &[("traceparent", "00-zz-broken")], "").await.status, 200);
    let seen = upstream.seen();
    assert_eq!(seen.last().unwrap().headers["traceparent"], "00-zz-broken");
    let lines = read_lines(&log, 4);
    assert!(lines[3].get("trace_id").is_none(), "{}", lines[3]);
}
