//! Authentication and authorization through a running gateway: JWT with a remote JWKS (rotation,
//! outages, floods of unknown key ids), and no path variant that skips a route's policies.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use gatehouse::policy::jwt::sign::TokenSigner;
use http::Response;
use serde_json::{Value, json};

use crate::common::{Client, TestGateway, Upstream, UpstreamBehaviour};

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn claims(sub: &str) -> Value {
    json!({"sub": sub, "iss": "idp", "aud": "api", "iat": now(), "exp": now() + 600, "roles": ["user"]})
}

/// A JWKS endpoint whose answer the test controls.
struct Jwks {
    server: Upstream,
    answer: Arc<Mutex<(u16, String)>>,
}

impl Jwks {
    fn start(keys: &[&TokenSigner]) -> Jwks {
        let answer = Arc::new(Mutex::new((200, String::new())));
        let a = answer.clone();
        let server = Upstream::start(
            "jwks",
            UpstreamBehaviour::Custom(Arc::new(move |_| {
                let (status, body) = a.lock().unwrap().clone();
                let mut r = Response::new(Bytes::from(body));
                *r.status_mut() = status.try_into().unwrap();
                r
            })),
        );
        let jwks = Jwks { server, answer };
        jwks.publish(keys);
        jwks
    }

    fn publish(&self, keys: &[&TokenSigner]) {
        let keys: Vec<Value> = keys.iter().map(|k| k.jwk()).collect();
        *self.answer.lock().unwrap() = (200, json!({ "keys": keys }).to_string());
    }

    fn fail_with(&self, status: u16, body: &str) {
        *self.answer.lock().unwrap() = (status, body.to_owned());
    }

    fn url(&self) -> String {
        format!("{}/jwks.json", self.server.url())
    }
}

fn gateway(jwks_url: &str, app: &Upstream) -> TestGateway {
    gateway_with(jwks_url, app, "200ms")
}

fn gateway_with(jwks_url: &str, app: &Upstream, min_refetch: &str) -> TestGateway {
    TestGateway::start(&format!(
        r#"listeners: [{{ name: public, address: "127.0.0.1:0" }}]
x-jwt: &jwt
  jwt: {{ jwks_url: "{jwks_url}", issuer: idp, audience: api, forward_claims: {{ sub: x-user-id }}, jwks_min_refetch: {min_refetch} }}
upstreams:
  app: {{ endpoints: ["{}"] }}
routes:
  - {{ name: public, match: {{ path: "/public/**" }}, upstream: app }}
  - {{ name: api, match: {{ path: "/api/**" }}, upstream: app, policies: [*jwt] }}
  - name: admin
    match: {{ path: "/api/admin/**" }}
    upstream: app
    policies: [*jwt, {{ authorize: {{ roles: [admin] }} }}]
"#,
        app.url()
    ))
}

async fn call(gw: &TestGateway, path: &str, token: Option<&str>) -> (u16, Value) {
    let mut client = Client::connect(gw.addr()).await;
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    let reply = client.request("GET", path, &headers, "").await;
    (reply.status.as_u16(), serde_json::from_slice(&reply.body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn rotated_keys_are_fetched_when_an_unknown_kid_appears() {
    let (old, new) =
        (TokenSigner::generate("ES256", Some("old")).unwrap(), TokenSigner::generate("ES256", Some("new")).unwrap());
    let jwks = Jwks::start(&[&old]);
    let app = Upstream::echo("app");
    let gw = gateway(&jwks.url(), &app);
    let (status, echo) = call(&gw, "/api/x", Some(&old.sign(&claims("alice")).unwrap())).await;
    assert_eq!(status, 200);
    assert_eq!(echo["headers"]["x-user-id"][0], "alice");
    assert_eq!(jwks.server.requests(), 1, "fetched on first use");
    // The identity provider rotates: the new kid is not known yet, so the JWKS is fetched again.
    jwks.publish(&[&old, &new]);
    tokio::time::sleep(Duration::from_millis(250)).await;
    let (status, _) = call(&gw, "/api/x", Some(&new.sign(&claims("bob")).unwrap())).await;
    assert_eq!(status, 200);
    assert_eq!(jwks.server.requests(), 2);
}

#[tokio::test]
async fn a_flood_of_unknown_kids_does_not_hammer_the_identity_provider() {
    let known = TokenSigner::generate("EdDSA", Some("known")).unwrap();
    let jwks = Jwks::start(&[&known]);
    let app = Upstream::echo("app");
    let gw = gateway_with(&jwks.url(), &app, "10s");
    assert_eq!(call(&gw, "/api/x", Some(&known.sign(&claims("a")).unwrap())).await.0, 200);
    for i in 0..40 {
        let stranger = TokenSigner::generate("EdDSA", Some(&format!("random-{i}"))).unwrap();
        assert_eq!(call(&gw, "/api/x", Some(&stranger.sign(&claims("x")).unwrap())).await.0, 401);
    }
    assert_eq!(jwks.server.requests(), 1, "40 unknown kids within the 10s refetch interval fetched nothing more");
    assert_eq!(app.requests(), 1, "no unverified request reached the upstream");
}

#[tokio::test]
async fn known_keys_keep_working_when_the_jwks_breaks() {
    let key = TokenSigner::generate("ES384", Some("k1")).unwrap();
    let jwks = Jwks::start(&[&key]);
    let app = Upstream::echo("app");
    let gw = gateway(&jwks.url(), &app);
    let token = key.sign(&claims("alice")).unwrap();
    assert_eq!(call(&gw, "/api/x", Some(&token)).await.0, 200);
    for (status, body) in
        [(200, "not json"), (200, r#"{"keys":[]}"#), (200, r#"{"keys":[{"kty":"RSA","n":"x"}]}"#), (500, "down")]
    {
        jwks.fail_with(status, body);
        tokio::time::sleep(Duration::from_millis(250)).await;
        // An unknown kid forces a fetch of the broken JWKS ...
        let other = TokenSigner::generate("ES384", Some("k2")).unwrap();
        assert_eq!(call(&gw, "/api/x", Some(&other.sign(&claims("x")).unwrap())).await.0, 401);
        // ... and the keys fetched before still verify.
        let fresh = key.sign(&claims("bob")).unwrap();
        assert_eq!(call(&gw, "/api/x", Some(&fresh)).await.0, 200, "after a JWKS answering {status} {body}");
    }
}

#[tokio::test]
async fn an_unreachable_jwks_means_503_not_a_pass() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let app = Upstream::echo("app");
    let gw = gateway(&format!("http://127.0.0.1:{port}/jwks.json"), &app);
    let key = TokenSigner::generate("ES256", Some("k")).unwrap();
    let (status, body) = call(&gw, "/api/x", Some(&key.sign(&claims("a")).unwrap())).await;
    assert_eq!(status, 503);
    assert_eq!(body["error"]["code"], "auth_unavailable");
    assert_eq!(app.requests(), 0);
}

#[tokio::test]
async fn no_path_variant_reaches_a_protected_route_without_its_policies() {
    let key = TokenSigner::generate("ES256", Some("k")).unwrap();
    let jwks = Jwks::start(&[&key]);
    let app = Upstream::echo("app");
    let gw = gateway(&jwks.url(), &app);
    for path in [
        "/api/x",
        "/public/../api/x",
        "/public/%2e%2e/api/x",
        "/public/.%2E/api/x",
        "//api/x",
        "/./api/x",
        "/%61pi/x",
        "/api/admin/../x",
        "/api/",
        "/api",
    ] {
        let (status, _) = call(&gw, path, None).await;
        assert_eq!(status, 401, "{path} skipped the jwt policy");
    }
    for path in ["/public%2F..%2Fapi/x", "/public/..;/api/x", "/public/..\\api/x"] {
        let (status, _) = call(&gw, path, None).await;
        assert_eq!(status, 400, "{path}");
    }
    // Case is not folded: /API is a different path, served by no route.
    assert_eq!(call(&gw, "/API/x", None).await.0, 404);
    assert_eq!(app.requests(), 0, "nothing reached the upstream");
    // A user token does not open the admin route, however it is spelled.
    let user = key.sign(&claims("alice")).unwrap();
    for path in ["/api/admin/x", "/api/x/../admin/x", "/api//admin/x", "/api/%61dmin/x"] {
        assert_eq!(call(&gw, path, Some(&user)).await.0, 403, "{path}");
    }
    let mut admin_claims = claims("root");
    admin_claims["roles"] = json!(["admin"]);
    assert_eq!(call(&gw, "/api/admin/x", Some(&key.sign(&admin_claims).unwrap())).await.0, 200);
    assert_eq!(app.requests(), 1);
}

#[tokio::test]
async fn rejections_carry_a_bearer_challenge_and_reach_nothing() {
    let key = TokenSigner::generate("ES256", Some("k")).unwrap();
    let jwks = Jwks::start(&[&key]);
    let app = Upstream::echo("app");
    let gw = gateway(&jwks.url(), &app);
    let mut client = Client::connect(gw.addr()).await;
    let expired = key.sign(&json!({"sub": "a", "iss": "idp", "aud": "api", "exp": now() - 3600})).unwrap();
    let reply = client.request("GET", "/api/x", &[("authorization", &format!("Bearer {expired}"))], "").await;
    assert_eq!(reply.status, 401);
    assert_eq!(
        reply.header("www-authenticate"),
        Some("Bearer realm=\"gatehouse\", error=\"invalid_token\", error_description=\"the token has expired\"")
    );
    assert_eq!(reply.error_code(), "invalid_token");
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(app.requests(), 0);
}

#[tokio::test]
async fn cors_preflights_are_answered_and_rejections_carry_cors_headers() {
    let key = TokenSigner::generate("ES256", Some("k")).unwrap();
    let jwks = Jwks::start(&[&key]);
    let app = Upstream::echo("app");
    let gw = TestGateway::start(&format!(
        r#"listeners: [{{ name: public, address: "127.0.0.1:0" }}]
policies:
  - cors:
      allow_origins: ["https://app.example.com", {{ regex: "https://[a-z]+\\.example\\.org" }}]
      allow_methods: [GET, POST]
      allow_headers: [authorization, content-type]
      expose_headers: [x-request-id]
      allow_credentials: true
      max_age: 10m
upstreams:
  app: {{ endpoints: ["{}"] }}
routes:
  - name: orders
    match: {{ path: "/orders/**", methods: [GET, POST, PUT] }}
    upstream: app
    policies:
      - jwt: {{ jwks_url: "{}" }}
"#,
        app.url(),
        jwks.url()
    ));
    let mut client = Client::connect(gw.addr()).await;
    let preflight = |origin: &'static str, method: &'static str| {
        vec![
            ("origin", origin),
            ("access-control-request-method", method),
            ("access-control-request-headers", "authorization"),
        ]
    };
    let ok = client.request("OPTIONS", "/orders/1", &preflight("https://app.example.com", "POST"), "").await;
    assert_eq!(ok.status, 204, "{}", ok.text());
    assert_eq!(ok.header("access-control-allow-origin"), Some("https://app.example.com"));
    assert_eq!(ok.header("access-control-allow-methods"), Some("GET, POST"));
    assert_eq!(ok.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(ok.header("access-control-max-age"), Some("600"));
    let other = client.request("OPTIONS", "/orders/1", &preflight("https://shop.example.org", "GET"), "").await;
    assert_eq!(other.status, 204);
    // Refused by the CORS policy: an origin it does not list, a method it does not allow.
    for (origin, method) in [("https://evil.example", "GET"), ("https://app.example.com", "PUT")] {
        let refused = client.request("OPTIONS", "/orders/1", &preflight(origin, method), "").await;
        assert_eq!(refused.status, 403, "{origin} {method}");
        assert_eq!(refused.error_code(), "cors_rejected");
        assert!(refused.header("access-control-allow-origin").is_none());
    }
    // A method no route serves: the preflight is an ordinary OPTIONS request, which nothing takes.
    let nothing = client.request("OPTIONS", "/orders/1", &preflight("https://app.example.com", "DELETE"), "").await;
    assert_eq!(nothing.status, 405);
    assert!(nothing.header("access-control-allow-origin").is_none());
    // A plain OPTIONS (no preflight headers) is an ordinary request too.
    assert_eq!(client.request("OPTIONS", "/orders/1", &[("origin", "https://app.example.com")], "").await.status, 405);

    // The gateway's own rejection carries CORS headers, so the page can read it.
    let anonymous = client.request("GET", "/orders/1", &[("origin", "https://app.example.com")], "").await;
    assert_eq!(anonymous.status, 401);
    assert_eq!(anonymous.header("access-control-allow-origin"), Some("https://app.example.com"));
    assert_eq!(anonymous.header("vary"), Some("Origin"));
    let token = format!("Bearer {}", key.sign(&claims("alice")).unwrap());
    let allowed = client
        .request("GET", "/orders/1", &[("origin", "https://app.example.com"), ("authorization", &token)], "")
        .await;
    assert_eq!(allowed.status, 200);
    assert_eq!(allowed.header("access-control-allow-origin"), Some("https://app.example.com"));
    assert_eq!(allowed.header("access-control-expose-headers"), Some("x-request-id"));
    let stranger =
        client.request("GET", "/orders/1", &[("origin", "https://evil.example"), ("authorization", &token)], "").await;
    assert_eq!(stranger.status, 200, "CORS is for browsers: the request itself is served");
    assert!(stranger.header("access-control-allow-origin").is_none());
    assert_eq!(app.requests(), 2, "preflights never reach the upstream");
}

#[tokio::test]
async fn ip_restriction_uses_the_client_address_resolved_through_trusted_proxies() {
    let app = Upstream::echo("app");
    let config = |trusted: &str| {
        format!(
            r#"server: {{ workers: 1, trusted_proxies: [{trusted}] }}
listeners: [{{ name: public, address: "127.0.0.1:0" }}]
upstreams:
  app: {{ endpoints: ["{}"] }}
routes:
  - name: office
    match: {{ path: "/office/**" }}
    upstream: app
    policies: [{{ ip_restriction: {{ allow: ["203.0.113.0/24", "2001:db8::/32"], deny: ["203.0.113.66"] }} }}]
  - name: no-loopback
    match: {{ path: "/open/**" }}
    upstream: app
    policies: [{{ ip_restriction: {{ deny: ["127.0.0.0/8"] }} }}]
"#,
            app.url()
        )
    };
    let behind_proxy = TestGateway::start(&config("\"127.0.0.1\""));
    let mut client = Client::connect(behind_proxy.addr()).await;
    let from = |ip: &'static str| vec![("x-forwarded-for", ip)];
    assert_eq!(client.request("GET", "/office/x", &from("203.0.113.9"), "").await.status, 200);
    assert_eq!(client.request("GET", "/office/x", &from("2001:db8::7"), "").await.status, 200);
    assert_eq!(client.request("GET", "/office/x", &from("203.0.113.66"), "").await.status, 403);
    assert_eq!(client.request("GET", "/office/x", &from("198.51.100.1"), "").await.status, 403);
    let refused = client.request("GET", "/office/x", &[], "").await;
    assert_eq!(refused.status, 403);
    assert_eq!(refused.error_code(), "forbidden");
    // Without trusting the peer, a forged X-Forwarded-For changes nothing: the peer is loopback.
    let direct = TestGateway::start(&config(""));
    let mut client = Client::connect(direct.addr()).await;
    assert_eq!(client.request("GET", "/office/x", &from("203.0.113.9"), "").await.status, 403);
    assert_eq!(client.request("GET", "/open/x", &from("203.0.113.9"), "").await.status, 403);
    assert_eq!(app.requests(), 2);
}

/// Runs `gatehouse keygen` and returns (key, sha256).
fn keygen() -> (String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["keygen", "--consumer", "x"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let key = text.lines().find(|l| l.trim().starts_with("gh_")).unwrap().trim().to_owned();
    let digest =
        text.lines().find_map(|l| l.split("api_key_sha256: \"").nth(1)).unwrap().trim_end_matches('"').to_owned();
    (key, digest)
}

#[tokio::test]
async fn api_keys_identify_consumers_and_acls_check_their_groups() {
    let (partner_key, partner_digest) = keygen();
    let (intern_key, intern_digest) = keygen();
    let key = TokenSigner::generate("ES256", Some("k")).unwrap();
    let jwks = Jwks::start(&[&key]);
    let app = Upstream::echo("app");
    let gw = TestGateway::start(&format!(
        r#"listeners: [{{ name: public, address: "127.0.0.1:0" }}]
consumers:
  - name: partner-a
    groups: [partners]
    plan: pro
    credentials:
      - api_key_sha256: "{partner_digest}"
      - api_key: "expired-key-0123456789"
        expires: "2020-01-01T00:00:00Z"
      - api_key: "revoked-key-0123456789"
        revoked: true
  - name: intern
    groups: [staff]
    credentials: [{{ api_key_sha256: "{intern_digest}" }}]
  - name: billing-service
    groups: [partners, internal]
    credentials: [{{ jwt_subject: svc-billing }}]
upstreams:
  app: {{ endpoints: ["{}"] }}
routes:
  - name: partner-api
    match: {{ path: "/partners/**" }}
    upstream: app
    policies:
      - api_key: {{ key_from: [{{ header: x-api-key }}, {{ query: apikey }}] }}
      - jwt: {{ jwks_url: "{}", consumer_claim: sub, forward_claims: {{ sub: x-user-id }} }}
      - acl: {{ allow: [partners] }}
"#,
        app.url(),
        jwks.url()
    ));
    let mut client = Client::connect(gw.addr()).await;
    let forged = [("x-api-key", partner_key.as_str()), ("x-user-id", "admin")];
    let ok = client.request("GET", "/partners/x", &forged, "").await;
    assert_eq!(ok.status, 200);
    let seen = app.seen();
    let h = &seen.last().unwrap().headers;
    assert_eq!(h["x-consumer-name"], "partner-a");
    assert_eq!(h["x-consumer-groups"], "partners");
    assert!(h.get("x-api-key").is_none(), "the key is removed before forwarding");
    assert!(h.get("x-user-id").is_none(), "the jwt policy's identity headers are removed even when api_key checks");

    // The key in the query is removed from the forwarded query too.
    let q = client.request("GET", &format!("/partners/q?apikey={partner_key}&page=2"), &[], "").await;
    assert_eq!(q.status, 200);
    assert_eq!(app.seen().last().unwrap().uri, "/partners/q?page=2");

    for (name, value, expect) in [
        ("unknown", "gh_not-a-real-key-at-all", "not valid"),
        ("expired", "expired-key-0123456789", "expired"),
        ("revoked", "revoked-key-0123456789", "revoked"),
    ] {
        let reply = client.request("GET", "/partners/x", &[("x-api-key", value)], "").await;
        assert_eq!(reply.status, 401, "{name}");
        assert!(reply.json()["error"]["message"].as_str().unwrap().contains(expect), "{name}: {}", reply.text());
    }
    // A valid key of a consumer outside the allowed groups.
    let intern = client.request("GET", "/partners/x", &[("x-api-key", &intern_key)], "").await;
    assert_eq!(intern.status, 403);
    // A JWT whose subject maps to a consumer in an allowed group; forged consumer headers are dropped.
    let token = format!("Bearer {}", key.sign(&json!({"sub": "svc-billing", "exp": now() + 60})).unwrap());
    let svc = client
        .request(
            "GET",
            "/partners/x",
            &[("authorization", &token), ("x-consumer-name", "partner-a"), ("x-consumer-groups", "admins")],
            "",
        )
        .await;
    assert_eq!(svc.status, 200);
    let seen = app.seen();
    let h = &seen.last().unwrap().headers;
    assert_eq!(h.get_all("x-consumer-name").iter().collect::<Vec<_>>(), vec!["billing-service"]);
    assert_eq!(h["x-consumer-groups"], "partners,internal");
    // A JWT of nobody in particular: authenticated, but not a consumer the ACL knows.
    let stranger = format!("Bearer {}", key.sign(&json!({"sub": "someone", "exp": now() + 60})).unwrap());
    assert_eq!(client.request("GET", "/partners/x", &[("authorization", &stranger)], "").await.status, 403);
    // No credential at all.
    assert_eq!(client.request("GET", "/partners/x", &[], "").await.status, 401);
    assert_eq!(app.requests(), 3);
}

#[tokio::test]
async fn policies_attach_globally_per_listener_and_per_route() {
    let key = TokenSigner::generate("ES256", Some("k")).unwrap();
    let jwks = Jwks::start(&[&key]);
    let app = Upstream::echo("app");
    let gw = TestGateway::start(&format!(
        r#"listeners:
  - name: public
    address: "127.0.0.1:0"
    policies: [{{ jwt: {{ jwks_url: "{jwks}" }} }}]
  - name: internal
    address: "127.0.0.1:0"
policies:
  - response_headers: {{ set: {{ x-scope: global }} }}
upstreams:
  app: {{ endpoints: ["{app}"] }}
routes:
  - {{ name: api, match: {{ path: "/api/**" }}, upstream: app }}
  - name: status
    match: {{ path: /status }}
    policies: [{{ direct_response: {{ status: 200, body: up }} }}, {{ response_headers: {{ set: {{ x-scope: route }} }} }}]
"#,
        jwks = jwks.url(),
        app = app.url()
    ));
    let public = gw.listener("public");
    let internal = gw.listener("internal");
    // The public listener's jwt policy covers its routes; the internal listener has none.
    assert_eq!(crate::common::get(public, "/api/x").await.status, 401);
    let open = crate::common::get(internal, "/api/x").await;
    assert_eq!(open.status, 200);
    assert_eq!(open.header("x-scope"), Some("global"));
    let mut client = Client::connect(public).await;
    let token = format!("Bearer {}", key.sign(&claims("alice")).unwrap());
    assert_eq!(client.request("GET", "/api/x", &[("authorization", &token)], "").await.status, 200);
    // The listener's jwt applies to the direct response too; the route's own response_headers
    // replaces the global one.
    assert_eq!(crate::common::get(public, "/status").await.status, 401);
    let status = crate::common::get(internal, "/status").await;
    assert_eq!(status.text(), "up");
    assert_eq!(status.header("x-scope"), Some("route"));
}
