//! Spans exported over OTLP/HTTP, received by an in-process collector that decodes them with the
//! official protobuf types.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Response;
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::{Span, span::SpanKind, status::StatusCode};
use prost::Message;

use crate::common::upstream::Seen;
use crate::common::{Client, TestGateway, Upstream, UpstreamBehaviour};

/// A collector: answers every export with an empty success and keeps what it was sent.
fn collector() -> Upstream {
    Upstream::start(
        "collector",
        UpstreamBehaviour::Custom(Arc::new(|_: &Seen| {
            let mut response = Response::new(Bytes::from(ExportTraceServiceResponse::default().encode_to_vec()));
            response.headers_mut().insert("content-type", "application/x-protobuf".parse().unwrap());
            response
        })),
    )
}

/// Every span the collector has received, with its resource's `service.name`.
fn received(collector: &Upstream) -> Vec<(String, Span)> {
    let mut spans = Vec::new();
    for seen in collector.seen() {
        assert_eq!(seen.method, "POST");
        assert_eq!(seen.uri, "/v1/traces");
        assert_eq!(seen.headers["content-type"], "application/x-protobuf");
        let request = ExportTraceServiceRequest::decode(seen.body.as_ref()).expect("an OTLP protobuf export");
        for resource in request.resource_spans {
            let service = resource
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                .and_then(|a| a.value.as_ref())
                .and_then(|v| match &v.value {
                    Some(Value::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for scope in resource.scope_spans {
                spans.extend(scope.spans.into_iter().map(|s| (service.clone(), s)));
            }
        }
    }
    spans
}

/// Waits until `enough` holds for what the collector received (exports are batched).
async fn wait_for(collector: &Upstream, enough: impl Fn(&[Span]) -> bool) -> Vec<Span> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let spans: Vec<Span> = received(collector).into_iter().map(|(_, s)| s).collect();
        if enough(&spans) || Instant::now() > deadline {
            return spans;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn attribute(span: &Span, key: &str) -> Option<Value> {
    span.attributes.iter().find(|a| a.key == key).and_then(|a| a.value.clone()).and_then(|v| v.value)
}

fn text(span: &Span, key: &str) -> String {
    match attribute(span, key) {
        Some(Value::StringValue(s)) => s,
        other => panic!("{key}: {other:?} in {}", span.name),
    }
}

fn int(span: &Span, key: &str) -> i64 {
    match attribute(span, key) {
        Some(Value::IntValue(n)) => n,
        other => panic!("{key}: {other:?} in {}", span.name),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn gateway(collector: &Upstream, rest: &str) -> TestGateway {
    TestGateway::start(&format!(
        r#"listeners: [{{ name: public, address: "127.0.0.1:0" }}]
tracing:
  enabled: true
  sampling: 0.0
  otlp: {{ endpoint: "{}/v1/traces", service_name: gatehouse-test, interval: 100ms, headers: {{ x-collector-key: k1 }} }}
{rest}"#,
        collector.url()
    ))
}

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test]
async fn a_sampled_request_is_a_server_span_with_upstream_and_policy_children() {
    let collector = collector();
    let app = Upstream::echo("app");
    let auth = Upstream::start("auth", UpstreamBehaviour::Status(200));
    let gw = gateway(
        &collector,
        &format!(
            r#"upstreams: {{ app: {{ endpoints: ["{}"] }} }}
routes:
  - name: orders
    match: {{ path: "/orders/**" }}
    upstream: app
    policies: [{{ forward_auth: {{ url: "{}/check" }} }}]
"#,
            app.url(),
            auth.url()
        ),
    );
    let mut client = Client::connect(gw.addr()).await;
    let traceparent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let reply =
        client.request("GET", "/orders/7?x=1", &[("traceparent", &traceparent), ("user-agent", "t/1")], "").await;
    assert_eq!(reply.status, 200);

    let spans = wait_for(&collector, |s| s.len() >= 3).await;
    assert_eq!(spans.len(), 3, "{spans:#?}");
    let server = spans.iter().find(|s| s.kind == SpanKind::Server as i32).expect("a server span");
    assert_eq!(server.name, "GET orders");
    assert_eq!(hex(&server.trace_id), CLIENT_TRACE);
    assert_eq!(hex(&server.parent_span_id), CLIENT_SPAN, "the client's span is the parent");
    assert_eq!(text(server, "http.request.method"), "GET");
    assert_eq!(text(server, "url.path"), "/orders/7");
    assert_eq!(text(server, "user_agent.original"), "t/1");
    assert_eq!(text(server, "gatehouse.route"), "orders");
    assert_eq!(int(server, "http.response.status_code"), 200);
    assert!(server.end_time_unix_nano >= server.start_time_unix_nano && server.start_time_unix_nano > 0);
    assert_ne!(server.status.as_ref().map(|s| s.code), Some(StatusCode::Error as i32));

    let upstream = spans.iter().find(|s| s.kind == SpanKind::Client as i32).expect("a client span");
    assert_eq!(upstream.name, "GET");
    assert_eq!(upstream.trace_id, server.trace_id);
    assert_eq!(upstream.parent_span_id, server.span_id);
    assert_eq!(text(upstream, "url.full"), format!("{}/orders/7?x=1", app.url()));
    assert_eq!(int(upstream, "http.response.status_code"), 200);
    // What the upstream received: the same trace, with the try's span as its parent.
    let sent = app.seen().last().unwrap().headers["traceparent"].to_str().unwrap().to_owned();
    assert_eq!(sent, format!("00-{CLIENT_TRACE}-{}-01", hex(&upstream.span_id)));

    let policy = spans.iter().find(|s| s.kind == SpanKind::Internal as i32).expect("a policy span");
    assert_eq!(policy.name, "forward_auth");
    assert_eq!(policy.parent_span_id, server.span_id);
    assert!(policy.start_time_unix_nano >= server.start_time_unix_nano);
    assert!(policy.end_time_unix_nano <= upstream.start_time_unix_nano);

    let (service, _) = received(&collector).into_iter().next().unwrap();
    assert_eq!(service, "gatehouse-test");
    assert_eq!(collector.seen()[0].headers["x-collector-key"], "k1", "configured headers go with each export");
}

#[tokio::test]
async fn unsampled_requests_export_nothing_and_failures_are_error_spans() {
    let collector = collector();
    let app = Upstream::echo("app");
    let gw = gateway(
        &collector,
        &format!(
            r#"upstreams: {{ app: {{ endpoints: ["{}"] }}, down: {{ endpoints: ["http://127.0.0.1:1"] }} }}
routes:
  - {{ name: app, match: {{ path: "/app/**" }}, upstream: app }}
  - {{ name: down, match: {{ path: "/down/**" }}, upstream: down }}
"#,
            app.url()
        ),
    );
    let mut client = Client::connect(gw.addr()).await;
    // sampling 0 and unsampled parents: propagated, not exported.
    for _ in 0..20 {
        assert_eq!(client.get("/app/x").await.status, 200);
    }
    let unsampled = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-00");
    assert_eq!(client.request("GET", "/app/y", &[("traceparent", &unsampled)], "").await.status, 200);
    // One sampled request to a dead upstream: its spans are errors.
    let sampled = format!("00-{}-{CLIENT_SPAN}-01", "1".repeat(32));
    let reply = client.request("GET", "/down/z", &[("traceparent", &sampled)], "").await;
    assert_eq!(reply.status, 502);

    let is_server = |s: &Span| s.kind == SpanKind::Server as i32;
    wait_for(&collector, |s| s.iter().any(is_server)).await;
    // Whatever else was to come has come by now (exports run every 100ms).
    tokio::time::sleep(Duration::from_millis(400)).await;
    let spans: Vec<Span> = received(&collector).into_iter().map(|(_, s)| s).collect();
    assert!(spans.iter().all(|s| hex(&s.trace_id) == "1".repeat(32)), "only the sampled request's spans: {spans:#?}");
    let servers: Vec<_> = spans.iter().filter(|s| is_server(s)).collect();
    assert_eq!(servers.len(), 1);
    let server = servers[0];
    assert_eq!(int(server, "http.response.status_code"), 502);
    assert_eq!(server.status.as_ref().unwrap().code, StatusCode::Error as i32);
    assert_eq!(text(server, "error.type"), "upstream_unavailable");
    // One client span per try: the default retry of a refused connection is a second one.
    let tries: Vec<_> = spans.iter().filter(|s| s.kind == SpanKind::Client as i32).collect();
    assert_eq!(tries.len(), 2, "{tries:#?}");
    for (resend, upstream) in tries.iter().enumerate() {
        assert_eq!(upstream.parent_span_id, server.span_id);
        assert_eq!(upstream.status.as_ref().unwrap().code, StatusCode::Error as i32);
        assert_eq!(text(upstream, "error.type"), "upstream_unavailable");
        assert!(attribute(upstream, "http.response.status_code").is_none());
        if resend > 0 {
            assert_eq!(int(upstream, "http.request.resend_count"), resend as i64);
        }
    }
}

#[tokio::test]
async fn a_collector_that_is_down_costs_requests_nothing() {
    // A collector that accepts connections and never answers (the costly kind of down: a
    // refused connection fails in microseconds) and one that refuses.
    let hanging = Upstream::start("collector", UpstreamBehaviour::Hang);
    for endpoint in [format!("{}/v1/traces", hanging.url()), "http://127.0.0.1:1/v1/traces".to_owned()] {
        let app = Upstream::echo("app");
        let gw = TestGateway::start(&format!(
            r#"listeners: [{{ name: public, address: "127.0.0.1:0" }}]
tracing: {{ enabled: true, sampling: 1.0, otlp: {{ endpoint: "{endpoint}", interval: 50ms, timeout: 5s, max_queue: 16 }} }}
upstreams: {{ app: {{ endpoints: ["{}"] }} }}
routes: [{{ name: app, upstream: app }}]
"#,
            app.url()
        ));
        let mut client = Client::connect(gw.addr()).await;
        let started = Instant::now();
        for _ in 0..200 {
            assert_eq!(client.get("/x").await.status, 200);
        }
        // Exports wait up to 5 s each; none of that may fall on the requests.
        assert!(started.elapsed() < Duration::from_secs(3), "{endpoint}: {:?} for 200 requests", started.elapsed());
    }
}

#[test]
fn bad_otlp_settings_are_config_errors() {
    for (otlp, words) in [
        (r#"{ endpoint: "ftp://collector:4318/v1/traces" }"#, "http://"),
        (r#"{ endpoint: "not a url" }"#, "http://"),
        (r#"{ endpoint: "http://c:4318/v1/traces", headers: { "bad header": x } }"#, "header"),
        (r#"{ endpoint: "http://c:4318/v1/traces", interval: 0s }"#, "longer than 0"),
        (r#"{ endpoint: "http://c:4318/v1/traces", bogus: 1 }"#, "unknown field"),
    ] {
        let error = TestGateway::try_start(&format!(
            "listeners: [{{ name: public, address: \"127.0.0.1:0\" }}]\ntracing: {{ enabled: true, otlp: {otlp} }}\n"
        ))
        .err()
        .unwrap_or_else(|| panic!("{otlp} was accepted"))
        .to_string();
        assert!(error.contains(words), "{otlp}: {error}");
    }
}
