//! `introspection` (RFC 7662) through a running gateway, against a real introspection endpoint:
//! the request it gets, active and inactive tokens, caching bounded by expiry, failures failing
//! closed, and the choice between `jwt` and `introspection` on one route.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use gatehouse::policy::jwt::sign::TokenSigner;
use http::Response;
use serde_json::{Value, json};

use crate::common::upstream::Seen;
use crate::common::{Client, Reply, TestGateway, Upstream, UpstreamBehaviour};

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// Client credentials the endpoint accepts: `gateway` / `s3cret:x` (form-encoded, then base64).
const CLIENT_AUTH: &str = "Basic Z2F0ZXdheTpzM2NyZXQlM0F4";

/// The authorization server's introspection endpoint: the token decides the answer.
fn endpoint() -> Upstream {
    Upstream::start(
        "idp",
        UpstreamBehaviour::Custom(Arc::new(|seen: &Seen| {
            let json = |status: u16, body: Value| {
                let mut r = Response::new(Bytes::from(body.to_string()));
                *r.status_mut() = status.try_into().unwrap();
                r.headers_mut().insert("content-type", "application/json".parse().unwrap());
                r
            };
            if seen.headers.get("authorization").is_none_or(|v| v != CLIENT_AUTH) {
                return json(401, json!({"error": "invalid_client"}));
            }
            let form: Vec<(String, String)> = form_urlencoded::parse(&seen.body).into_owned().collect();
            let token = form.iter().find(|(k, _)| k == "token").map_or("", |(_, v)| v.as_str());
            let exp = now() + 3600;
            match token {
                "alice-token" => json(
                    200,
                    json!({"active": true, "sub": "alice", "client_id": "web", "scope": "orders:read profile",
                           "aud": ["api"], "exp": exp}),
                ),
                "writer-token" => json(
                    200,
                    json!({"active": true, "sub": "wendy", "scope": "orders:write", "aud": "api", "exp": exp}),
                ),
                "short-token" => json(200, json!({"active": true, "sub": "sam", "aud": "api", "exp": now() + 1})),
                "other-aud-token" => json(200, json!({"active": true, "sub": "x", "aud": "billing", "exp": exp})),
                "broken-token" => json(500, json!({"error": "server_error"})),
                "garbage-token" => Response::new(Bytes::from_static(b"<html>oops</html>")),
                _ => json(200, json!({"active": false})),
            }
        })),
    )
}

fn gateway(url: &str, app: &Upstream, extra: &str) -> TestGateway {
    TestGateway::start(&format!(
        r#"listeners: [{{ name: public, address: "127.0.0.1:0" }}]
x-introspection: &introspection
  introspection:
    url: "{url}"
    client_id: gateway
    client_secret: "s3cret:x"
    audience: api
    forward_claims: {{ sub: x-user-id, scope: x-scopes }}
    {extra}
upstreams:
  app: {{ endpoints: ["{app}"] }}
routes:
  - {{ name: orders, match: {{ path: "/orders/**" }}, upstream: app, policies: [*introspection] }}
  - name: orders-write
    match: {{ path: "/orders/**", methods: [POST] }}
    upstream: app
    policies: [*introspection, {{ authorize: {{ scopes: ["orders:write"] }} }}]
"#,
        app = app.url()
    ))
}

async fn call(client: &mut Client, method: &str, token: &str, extra: &[(&str, &str)]) -> Reply {
    let auth = format!("Bearer {token}");
    let mut headers = vec![("authorization", auth.as_str())];
    headers.extend_from_slice(extra);
    client.request(method, "/orders/1", &headers, "").await
}

fn header_values(reply: &Reply, name: &str) -> Vec<String> {
    reply.json()["headers"][name]
        .as_array()
        .map_or(Vec::new(), |a| a.iter().map(|v| v.as_str().unwrap().to_owned()).collect())
}

#[tokio::test]
async fn active_tokens_pass_with_their_claims_and_inactive_ones_get_401() {
    let idp = endpoint();
    let app = Upstream::echo("app");
    let gw = gateway(&format!("{}/oauth2/introspect", idp.url()), &app, "");
    let mut client = Client::connect(gw.addr()).await;

    let reply = call(&mut client, "GET", "alice-token", &[("x-user-id", "root"), ("x-scopes", "admin")]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(header_values(&reply, "x-user-id"), ["alice"], "claims replace what the client sent");
    assert_eq!(header_values(&reply, "x-scopes"), ["orders:read profile"]);
    assert_eq!(header_values(&reply, "authorization"), ["Bearer alice-token"], "kept unless strip_token");

    let asked = &idp.seen()[0];
    assert_eq!(asked.method, "POST");
    assert_eq!(asked.uri, "/oauth2/introspect");
    assert_eq!(asked.headers["content-type"], "application/x-www-form-urlencoded");
    assert_eq!(asked.headers["authorization"], CLIENT_AUTH);
    assert_eq!(asked.body, "token=alice-token&token_type_hint=access_token");

    for (token, why) in [("revoked-token", "inactive"), ("other-aud-token", "another audience")] {
        let reply = call(&mut client, "GET", token, &[]).await;
        assert_eq!(reply.status, 401, "{why}");
        assert_eq!(reply.error_code(), "invalid_token", "{why}");
        assert!(reply.header("www-authenticate").unwrap().contains("error=\"invalid_token\""), "{why}");
    }
    let missing = client.get("/orders/1").await;
    assert_eq!(missing.status, 401);
    assert_eq!(missing.error_code(), "unauthorized");

    // Scopes from the introspection answer feed `authorize`.
    assert_eq!(call(&mut client, "POST", "alice-token", &[]).await.status, 403);
    assert_eq!(call(&mut client, "POST", "writer-token", &[]).await.status, 200);
    assert_eq!(app.requests(), 2);
}

#[tokio::test]
async fn malformed_tokens_are_refused_without_asking() {
    let idp = endpoint();
    let app = Upstream::echo("app");
    let gw = gateway(&idp.url(), &app, "");
    let mut client = Client::connect(gw.addr()).await;
    let long = "a".repeat(5000);
    for token in ["a,b", "tok\"en", "==", long.as_str()] {
        let reply = call(&mut client, "GET", token, &[]).await;
        assert_eq!(reply.status, 401, "{token:.20}");
        assert_eq!(reply.error_code(), "invalid_token");
    }
    assert_eq!(idp.requests(), 0);
    assert_eq!(app.requests(), 0);
}

#[tokio::test]
async fn answers_are_cached_never_beyond_the_tokens_expiry() {
    let idp = endpoint();
    let app = Upstream::echo("app");
    let gw = gateway(&idp.url(), &app, "cache_ttl: 1m");
    let mut client = Client::connect(gw.addr()).await;
    for _ in 0..3 {
        assert_eq!(call(&mut client, "GET", "alice-token", &[]).await.status, 200);
        assert_eq!(call(&mut client, "GET", "dead-token", &[]).await.status, 401);
    }
    assert_eq!(idp.requests(), 2, "one call per token, active or not");

    // A token expiring in a second is cached for at most that second.
    assert_eq!(call(&mut client, "GET", "short-token", &[]).await.status, 200);
    assert_eq!(idp.requests(), 3);
    tokio::time::sleep(Duration::from_millis(2300)).await;
    assert_eq!(call(&mut client, "GET", "short-token", &[]).await.status, 200);
    assert_eq!(idp.requests(), 4, "asked again once the token's own expiry passed");

    // cache_ttl: 0s asks every time.
    let gw = gateway(&idp.url(), &app, "cache_ttl: 0s");
    let mut client = Client::connect(gw.addr()).await;
    for _ in 0..3 {
        assert_eq!(call(&mut client, "GET", "alice-token", &[]).await.status, 200);
    }
    assert_eq!(idp.requests(), 7);
}

#[tokio::test]
async fn an_endpoint_that_cannot_answer_fails_closed_and_is_asked_again() {
    let idp = endpoint();
    let app = Upstream::echo("app");
    let gw = gateway(&idp.url(), &app, "");
    let mut client = Client::connect(gw.addr()).await;
    for token in ["broken-token", "garbage-token", "broken-token"] {
        let reply = call(&mut client, "GET", token, &[]).await;
        assert_eq!(reply.status, 503, "{token}");
        assert_eq!(reply.error_code(), "auth_unavailable");
        assert!(!reply.text().contains("oops") && !reply.text().contains("server_error"), "{}", reply.text());
    }
    assert_eq!(idp.requests(), 3, "failures are not cached");

    // Wrong client credentials: the endpoint says 401 to gatehouse, which is not the client's fault.
    let wrong = TestGateway::start(&format!(
        r#"listeners: [{{ name: public, address: "127.0.0.1:0" }}]
upstreams:
  app: {{ endpoints: ["{}"] }}
routes:
  - name: orders
    match: {{ path: "/orders/**" }}
    upstream: app
    policies: [{{ introspection: {{ url: "{}", client_id: gateway, client_secret: wrong }} }}]
"#,
        app.url(),
        idp.url()
    ));
    let mut client = Client::connect(wrong.addr()).await;
    assert_eq!(call(&mut client, "GET", "alice-token", &[]).await.status, 503);

    // Unreachable, or too slow.
    let mut gone = Upstream::echo("gone");
    let gone_url = gone.url();
    gone.stop();
    let slow = Upstream::start("slow", UpstreamBehaviour::Delay(Duration::from_secs(3)));
    for url in [gone_url, slow.url()] {
        let gw = gateway(&url, &app, "timeout: 300ms");
        let mut client = Client::connect(gw.addr()).await;
        assert_eq!(call(&mut client, "GET", "alice-token", &[]).await.status, 503, "{url}");
    }
    assert_eq!(app.requests(), 0);
}

#[tokio::test]
async fn jwts_go_to_jwt_and_opaque_tokens_to_introspection_on_one_route() {
    let idp = endpoint();
    let app = Upstream::echo("app");
    let secret = "a-shared-secret-of-32-bytes-long!";
    let key = TokenSigner::hmac(secret.as_bytes(), "HS256", None).unwrap();
    let gw = TestGateway::start(&format!(
        r#"listeners: [{{ name: public, address: "127.0.0.1:0" }}]
upstreams:
  app: {{ endpoints: ["{}"] }}
routes:
  - name: orders
    match: {{ path: "/orders/**" }}
    upstream: app
    policies:
      - jwt: {{ secret: "{secret}", forward_claims: {{ sub: x-user-id }} }}
      - introspection: {{ url: "{}", client_id: gateway, client_secret: "s3cret:x", forward_claims: {{ sub: x-user-id }} }}
"#,
        app.url(),
        idp.url()
    ));
    let mut client = Client::connect(gw.addr()).await;
    let jwt = key.sign(&json!({"sub": "jay", "exp": now() + 60})).unwrap();
    let reply = call(&mut client, "GET", &jwt, &[]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(header_values(&reply, "x-user-id"), ["jay"]);
    assert_eq!(idp.requests(), 0, "a JWT is verified locally");
    let reply = call(&mut client, "GET", "alice-token", &[]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(header_values(&reply, "x-user-id"), ["alice"]);
    assert_eq!(idp.requests(), 1);
    // A forged JWT is refused by jwt, not passed to introspection.
    let forged = TokenSigner::hmac(b"another-secret-of-32-bytes-long!!", "HS256", None)
        .unwrap()
        .sign(&json!({"sub": "x", "exp": now() + 60}))
        .unwrap();
    assert_eq!(call(&mut client, "GET", &forged, &[]).await.status, 401);
    assert_eq!(idp.requests(), 1);
}
