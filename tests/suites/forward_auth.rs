//! `forward_auth` through a running gateway, against a real authorization service: what the
//! service sees (and what a client cannot make it see), allow with granted headers, denials passed
//! through, failures failing closed (or open when configured), pooling and the decision cache.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Response;
use serde_json::Value;

use crate::common::upstream::Seen;
use crate::common::{Client, Reply, TestGateway, Upstream, UpstreamBehaviour};

/// The authorization service: decides by the `Authorization` header.
fn auth_service() -> Upstream {
    Upstream::start(
        "auth",
        UpstreamBehaviour::Custom(Arc::new(|seen: &Seen| {
            let header = |name: &str| seen.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("");
            let respond = |status: u16, headers: &[(&'static str, &str)], body: &str| {
                let mut r = Response::new(Bytes::from(body.to_owned()));
                *r.status_mut() = status.try_into().unwrap();
                for (k, v) in headers {
                    r.headers_mut().append(*k, v.parse().unwrap());
                }
                r
            };
            match header("authorization") {
                "Bearer alice" => respond(
                    200,
                    &[
                        ("x-auth-user", "alice"),
                        ("x-auth-role", "reader"),
                        ("x-auth-role", "writer"),
                        ("x-internal", "1"),
                    ],
                    "ok",
                ),
                "Bearer bob" if header("x-forwarded-method") == "GET" => respond(200, &[("x-auth-user", "bob")], ""),
                "Bearer bob" => respond(403, &[("content-type", "text/plain")], "bob may only read"),
                "Bearer browser" => {
                    respond(302, &[("location", "https://login.example/?next=/app"), ("set-cookie", "state=xyz")], "")
                }
                "Bearer boom" => respond(500, &[], "database down"),
                "Bearer huge" => respond(401, &[], &"x".repeat(100 * 1024)),
                _ => respond(
                    401,
                    &[("www-authenticate", "Bearer realm=\"api\""), ("content-type", "application/json")],
                    r#"{"error":"login required"}"#,
                ),
            }
        })),
    )
}

fn gateway(auth_url: &str, policy_extra: &str, app: &Upstream) -> TestGateway {
    TestGateway::start(&format!(
        r#"listeners: [{{ name: public, address: "127.0.0.1:0" }}]
upstreams:
  app: {{ endpoints: ["{}"] }}
routes:
  - {{ name: public, match: {{ path: "/public/**" }}, upstream: app }}
  - name: api
    match: {{ path: "/api/**" }}
    upstream: app
    policies:
      - forward_auth: {{ url: "{auth_url}", upstream_headers: [x-auth-user, x-auth-role]{policy_extra} }}
"#,
        app.url()
    ))
}

async fn call(client: &mut Client, method: &str, path: &str, token: &str, extra: &[(&str, &str)]) -> Reply {
    let auth = format!("Bearer {token}");
    let mut headers = vec![("authorization", auth.as_str())];
    headers.extend_from_slice(extra);
    client.request(method, path, &headers, "").await
}

fn values(echo: &Value, name: &str) -> Vec<String> {
    echo["headers"][name].as_array().map_or(Vec::new(), |a| a.iter().map(|v| v.as_str().unwrap().to_owned()).collect())
}

#[tokio::test]
async fn allowed_requests_carry_the_granted_headers_and_nothing_forged() {
    let auth = auth_service();
    let app = Upstream::echo("app");
    let gw = gateway(&format!("{}/verify?realm=api", auth.url()), "", &app);
    let mut client = Client::connect(gw.addr()).await;

    let spoofed = [
        ("x-auth-user", "mallory"),
        ("x-auth-role", "admin"),
        ("x-forwarded-uri", "/public/x"),
        ("x-forwarded-method", "GET"),
        ("x-forwarded-for", "10.9.9.9"),
        ("x-trace", "t-1"),
        ("cookie", "session=s1"),
    ];
    let reply = call(&mut client, "GET", "/api/items/../orders?page=2", "alice", &spoofed).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let echo = reply.json();
    assert_eq!(echo["uri"], "/api/orders?page=2");
    assert_eq!(values(&echo, "x-auth-user"), ["alice"], "the client's x-auth-user never passes");
    assert_eq!(values(&echo, "x-auth-role"), ["reader", "writer"], "every granted value, nothing forged");
    assert!(values(&echo, "x-internal").is_empty(), "only the configured upstream_headers are copied");

    let asked = auth.seen();
    assert_eq!(asked.len(), 1);
    let q = &asked[0];
    let h = |name: &str| q.headers.get(name).map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(q.method, "GET");
    assert_eq!(q.uri, "/verify?realm=api");
    assert_eq!(h("host").as_deref(), Some(auth.addr.to_string().as_str()), "the service's own Host");
    assert_eq!(h("x-forwarded-host").as_deref(), Some(gw.addr().to_string().as_str()));
    assert_eq!(h("x-forwarded-method").as_deref(), Some("GET"));
    assert_eq!(h("x-forwarded-uri").as_deref(), Some("/api/orders?page=2"), "normalised, not the client's claim");
    assert_eq!(h("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(h("x-forwarded-for").as_deref(), Some("127.0.0.1"), "the client address, not the client's claim");
    assert_eq!(h("authorization").as_deref(), Some("Bearer alice"));
    assert_eq!(h("x-trace").as_deref(), Some("t-1"), "end-to-end headers are passed");
    assert_eq!(h("cookie").as_deref(), Some("session=s1"));
    assert!(h("x-request-id").is_some(), "the request id, to correlate logs");
    assert!(q.headers.get("content-length").is_none() && q.body.is_empty(), "no body goes to the service");

    // Bob may read but not write: the service decides on the method it is told.
    let reply = call(&mut client, "GET", "/api/orders", "bob", &[]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(values(&reply.json(), "x-auth-user"), ["bob"]);
    let reply = call(&mut client, "DELETE", "/api/orders/1", "bob", &[]).await;
    assert_eq!(reply.status, 403);
    assert_eq!(reply.text(), "bob may only read");
    assert_eq!(reply.header("content-type"), Some("text/plain"));

    // Routes without the policy never ask.
    let before = auth.requests();
    assert_eq!(client.get("/public/x").await.status, 200);
    assert_eq!(auth.requests(), before);
    assert_eq!(app.requests(), 3, "exactly the allowed requests reached the app");
}

#[tokio::test]
async fn denials_are_the_services_answer_and_reach_nothing() {
    let auth = auth_service();
    let app = Upstream::echo("app");
    let gw = gateway(&auth.url(), "", &app);
    let mut client = Client::connect(gw.addr()).await;

    let reply = client.get("/api/orders").await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.header("www-authenticate"), Some("Bearer realm=\"api\""));
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(reply.text(), r#"{"error":"login required"}"#);
    assert!(reply.header("x-request-id").is_some());

    let reply = call(&mut client, "GET", "/api/app", "browser", &[]).await;
    assert_eq!(reply.status, 302);
    assert_eq!(reply.header("location"), Some("https://login.example/?next=/app"));
    assert_eq!(reply.header("set-cookie"), Some("state=xyz"));

    // A broken service is not a decision: fail closed, without its error text.
    let reply = call(&mut client, "GET", "/api/orders", "boom", &[]).await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.error_code(), "auth_unavailable");
    assert!(!reply.text().contains("database"), "{}", reply.text());

    // An answer too large to pass on is a failure too.
    let reply = call(&mut client, "GET", "/api/orders", "huge", &[]).await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.error_code(), "auth_unavailable");

    assert_eq!(app.requests(), 0);
    assert_eq!(client.get("/api/orders").await.status, 401, "the connection still serves after failures");
}

#[tokio::test]
async fn an_unreachable_or_slow_service_fails_closed_or_open_as_configured() {
    // Closed (the default): unreachable.
    let app = Upstream::echo("app");
    let mut gone = Upstream::echo("gone");
    let gone_url = gone.url();
    gone.stop();
    let gw = gateway(&gone_url, ", timeout: 300ms", &app);
    let mut client = Client::connect(gw.addr()).await;
    let reply = call(&mut client, "GET", "/api/orders", "alice", &[]).await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.error_code(), "auth_unavailable");

    // Closed: too slow.
    let slow = Upstream::start("slow", UpstreamBehaviour::Delay(Duration::from_secs(3)));
    let gw = gateway(&slow.url(), ", timeout: 300ms", &app);
    let mut client = Client::connect(gw.addr()).await;
    let started = Instant::now();
    let reply = call(&mut client, "GET", "/api/orders", "alice", &[]).await;
    assert_eq!(reply.status, 503);
    assert!(started.elapsed() < Duration::from_secs(2), "the timeout bounds the wait: {:?}", started.elapsed());
    assert_eq!(app.requests(), 0);

    // Open: the request passes, but never with headers the client made up.
    let gw = gateway(&gone_url, ", timeout: 300ms, on_failure: allow", &app);
    let mut client = Client::connect(gw.addr()).await;
    let reply = call(&mut client, "GET", "/api/orders", "alice", &[("x-auth-user", "mallory")]).await;
    assert_eq!(reply.status, 200);
    assert!(values(&reply.json(), "x-auth-user").is_empty());
    // A denial is still a denial when failing open.
    let auth = auth_service();
    let gw = gateway(&auth.url(), ", on_failure: allow", &app);
    let mut client = Client::connect(gw.addr()).await;
    assert_eq!(client.get("/api/orders").await.status, 401);
    assert_eq!(call(&mut client, "GET", "/api/orders", "boom", &[]).await.status, 200);
}

#[tokio::test]
async fn connections_to_the_service_are_reused() {
    let auth = auth_service();
    let app = Upstream::echo("app");
    let gw = gateway(&auth.url(), "", &app);
    let mut client = Client::connect(gw.addr()).await;
    for _ in 0..20 {
        assert_eq!(call(&mut client, "GET", "/api/orders", "alice", &[]).await.status, 200);
        assert_eq!(client.get("/api/orders").await.status, 401);
    }
    assert_eq!(auth.requests(), 40, "no cache configured: every request is asked about");
    assert_eq!(auth.connections(), 1, "allow and deny answers leave the connection reusable");
}

#[tokio::test]
async fn allow_decisions_are_cached_by_the_key_headers_and_denials_are_not() {
    let auth = auth_service();
    let app = Upstream::echo("app");
    let gw = gateway(&auth.url(), ", cache: { ttl: 400ms, key: [authorization] }", &app);
    let mut client = Client::connect(gw.addr()).await;

    for path in ["/api/a", "/api/b", "/api/c"] {
        let reply = call(&mut client, "GET", path, "alice", &[("x-auth-user", "mallory")]).await;
        assert_eq!(reply.status, 200);
        assert_eq!(values(&reply.json(), "x-auth-user"), ["alice"], "a cached grant still replaces forged headers");
        assert_eq!(values(&reply.json(), "x-auth-role"), ["reader", "writer"]);
    }
    assert_eq!(auth.requests(), 1, "one decision for one caller");
    assert_eq!(call(&mut client, "GET", "/api/a", "bob", &[]).await.status, 200);
    assert_eq!(auth.requests(), 2, "another caller is asked about");
    for _ in 0..3 {
        assert_eq!(client.get("/api/a").await.status, 401);
    }
    assert_eq!(auth.requests(), 5, "denials and requests without the key are never cached");

    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(call(&mut client, "GET", "/api/a", "alice", &[]).await.status, 200);
    assert_eq!(auth.requests(), 6, "an expired decision is asked about again");

    // With :method in the key, bob's read does not answer for his write.
    let gw = gateway(&auth.url(), ", cache: { ttl: 30s, key: [authorization, \":method\"] }", &app);
    let mut client = Client::connect(gw.addr()).await;
    assert_eq!(call(&mut client, "GET", "/api/a", "bob", &[]).await.status, 200);
    assert_eq!(call(&mut client, "POST", "/api/a", "bob", &[]).await.status, 403);
    assert_eq!(call(&mut client, "GET", "/api/b", "bob", &[]).await.status, 200);
    assert_eq!(auth.requests(), 8);
}

#[tokio::test]
async fn forward_headers_limits_what_the_service_sees() {
    let auth = auth_service();
    let app = Upstream::echo("app");
    let gw = gateway(&auth.url(), ", forward_headers: [authorization]", &app);
    let mut client = Client::connect(gw.addr()).await;
    let reply = call(&mut client, "GET", "/api/a", "alice", &[("cookie", "session=s1"), ("x-trace", "t")]).await;
    assert_eq!(reply.status, 200);
    let q = &auth.seen()[0];
    assert!(q.headers.get("cookie").is_none() && q.headers.get("x-trace").is_none());
    assert_eq!(q.headers.get("authorization").unwrap(), "Bearer alice");
    assert!(q.headers.get("x-request-id").is_some() && q.headers.get("x-forwarded-uri").is_some());
    // The app still gets the whole request.
    assert_eq!(values(&reply.json(), "cookie"), ["session=s1"]);
}
