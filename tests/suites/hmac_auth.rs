//! `hmac_auth` through a running gateway: requests signed as Kong's hmac-auth clients and
//! draft-cavage clients sign them, and every way of tampering with, replaying or under-signing a
//! request.

use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::common::{Client, Reply, TestGateway, Upstream};

const SECRET: &str = "partner-a-shared-secret-0123456789";

fn gateway(app: &Upstream, policy: &str) -> TestGateway {
    TestGateway::start(&format!(
        r#"listeners: [{{ name: public, address: "127.0.0.1:0" }}]
consumers:
  - name: partner-a
    groups: [partners]
    credentials:
      - {{ username: partner-a, secret: "{SECRET}" }}
      - {{ username: old-key, secret: "{SECRET}", revoked: true }}
upstreams:
  app: {{ endpoints: ["{}"] }}
routes:
  - name: orders
    match: {{ path: "/orders/**" }}
    upstream: app
    policies: [{{ hmac_auth: {policy} }}]
"#,
        app.url()
    ))
}

fn http_date(offset_secs: i64) -> String {
    let now = SystemTime::now();
    let at = if offset_secs >= 0 {
        now + Duration::from_secs(offset_secs as u64)
    } else {
        now - Duration::from_secs(offset_secs.unsigned_abs())
    };
    httpdate::fmt_http_date(at)
}

fn sign(secret: &str, algorithm: ring::hmac::Algorithm, text: &str) -> String {
    let key = ring::hmac::Key::new(algorithm, secret.as_bytes());
    STANDARD.encode(ring::hmac::sign(&key, text.as_bytes()).as_ref())
}

fn digest(body: &str) -> String {
    format!("SHA-256={}", STANDARD.encode(ring::digest::digest(&ring::digest::SHA256, body.as_bytes())))
}

/// A signed request as a client library would build it.
struct Signed {
    method: &'static str,
    target: String,
    date: String,
    body: String,
    headers: &'static str,
    key_id: &'static str,
    secret: &'static str,
    algorithm: (&'static str, ring::hmac::Algorithm),
    /// Sent instead of what was signed, to tamper.
    sent_target: Option<String>,
    sent_body: Option<String>,
    scheme: &'static str,
    content_type: Option<&'static str>,
}

impl Signed {
    fn new(method: &'static str, target: &str, body: &str) -> Signed {
        Signed {
            method,
            target: target.to_owned(),
            date: http_date(0),
            body: body.to_owned(),
            headers: "date @request-target digest",
            key_id: "partner-a",
            secret: SECRET,
            algorithm: ("hmac-sha256", ring::hmac::HMAC_SHA256),
            sent_target: None,
            sent_body: None,
            scheme: "hmac",
            content_type: None,
        }
    }

    async fn send(&self, client: &mut Client) -> Reply {
        let digest = digest(&self.body);
        let lines: Vec<String> = self
            .headers
            .split(' ')
            .map(|h| match h {
                "date" => format!("date: {}", self.date),
                "digest" => format!("digest: {digest}"),
                "@request-target" | "(request-target)" => {
                    format!("{h}: {} {}", self.method.to_lowercase(), self.target)
                }
                "request-line" => format!("{} {} HTTP/1.1", self.method, self.target),
                other => panic!("unknown {other}"),
            })
            .collect();
        let signature = sign(self.secret, self.algorithm.1, &lines.join("\n"));
        let key = if self.scheme == "hmac" { "username" } else { "keyId" };
        let authorization = format!(
            r#"{} {key}="{}", algorithm="{}", headers="{}", signature="{signature}""#,
            self.scheme, self.key_id, self.algorithm.0, self.headers
        );
        let target = self.sent_target.clone().unwrap_or_else(|| self.target.clone());
        let body = self.sent_body.clone().unwrap_or_else(|| self.body.clone());
        let mut headers = vec![("authorization", authorization.as_str()), ("date", &self.date), ("digest", &digest)];
        headers.extend(self.content_type.map(|c| ("content-type", c)));
        client.request(self.method, &target, &headers, &body).await
    }
}

#[tokio::test]
async fn signed_requests_pass_and_every_tampering_is_refused() {
    let app = Upstream::echo("app");
    let gw = gateway(&app, "{ validate_body: true }");
    let mut client = Client::connect(gw.addr()).await;

    let ok = Signed::new("POST", "/orders?ref=42", r#"{"item":"lamp","qty":2}"#).send(&mut client).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let seen = app.seen();
    let last = seen.last().unwrap();
    assert_eq!(last.body, r#"{"item":"lamp","qty":2}"#);
    assert_eq!(last.headers["x-consumer-name"], "partner-a");
    assert!(last.headers.get("authorization").is_none(), "the signature is removed before forwarding");

    let refused = |name: &str, reply: &Reply, expect: &str| {
        assert_eq!(reply.status, 401, "{name}: {}", reply.text());
        assert_eq!(reply.error_code(), "invalid_signature", "{name}");
        let message = reply.json()["error"]["message"].as_str().unwrap().to_owned();
        assert!(message.contains(expect), "{name}: {message}");
    };
    let body = r#"{"item":"lamp","qty":2}"#;

    let mut other_path = Signed::new("POST", "/orders?ref=42", body);
    other_path.sent_target = Some("/orders?ref=43".into());
    refused("another target", &other_path.send(&mut client).await, "not valid");

    let mut tampered = Signed::new("POST", "/orders", body);
    tampered.sent_body = Some(r#"{"item":"lamp","qty":200}"#.into());
    refused("another body", &tampered.send(&mut client).await, "Digest");

    let mut stale = Signed::new("POST", "/orders", body);
    stale.date = http_date(-3600);
    refused("an old date (replay)", &stale.send(&mut client).await, "clock");
    let mut future = Signed::new("POST", "/orders", body);
    future.date = http_date(3600);
    refused("a future date", &future.send(&mut client).await, "clock");

    let mut no_target = Signed::new("POST", "/orders", body);
    no_target.headers = "date digest";
    refused("the target not signed", &no_target.send(&mut client).await, "@request-target");
    let mut no_digest = Signed::new("POST", "/orders", body);
    no_digest.headers = "date @request-target";
    refused("the digest not signed", &no_digest.send(&mut client).await, "digest");

    let mut wrong_secret = Signed::new("POST", "/orders", body);
    wrong_secret.secret = "someone-elses-secret-0123456789";
    refused("a wrong secret", &wrong_secret.send(&mut client).await, "not valid");
    let mut unknown = Signed::new("POST", "/orders", body);
    unknown.key_id = "nobody";
    refused("an unknown key", &unknown.send(&mut client).await, "not valid");
    let mut revoked = Signed::new("POST", "/orders", body);
    revoked.key_id = "old-key";
    refused("a revoked key", &revoked.send(&mut client).await, "revoked");
    let mut sha1 = Signed::new("POST", "/orders", body);
    sha1.algorithm = ("hmac-sha1", ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY);
    refused("hmac-sha1 unless enabled", &sha1.send(&mut client).await, "algorithm");

    for malformed in [r#"hmac username=partner-a"#, r#"hmac username="partner-a", username="x""#, "hmac !!!"] {
        let reply =
            client.request("GET", "/orders", &[("authorization", malformed), ("date", &http_date(0))], "").await;
        assert_eq!(reply.status, 401, "{malformed}");
    }

    let missing = client.get("/orders").await;
    assert_eq!(missing.status, 401);
    assert_eq!(missing.error_code(), "unauthorized");
    assert_eq!(
        missing.header("www-authenticate"),
        Some("hmac realm=\"gatehouse\", headers=\"date @request-target digest\"")
    );
    assert_eq!(app.requests(), 1, "only the untampered request reached the app");
}

#[tokio::test]
async fn kong_request_line_and_cavage_signatures_are_accepted() {
    let app = Upstream::echo("app");
    let gw = gateway(&app, "{ algorithms: [hmac-sha512, hmac-sha256], clock_skew: 30s }");
    let mut client = Client::connect(gw.addr()).await;
    let mut kong = Signed::new("GET", "/orders/7?expand=items", "");
    kong.headers = "date request-line";
    assert_eq!(kong.send(&mut client).await.status, 200);
    let mut cavage = Signed::new("DELETE", "/orders/7", "");
    cavage.scheme = "Signature";
    cavage.headers = "(request-target) date";
    cavage.algorithm = ("hmac-sha512", ring::hmac::HMAC_SHA512);
    assert_eq!(cavage.send(&mut client).await.status, 200);
    // Without validate_body, an unsigned digest is fine; the skew is the configured 30s.
    let mut skewed = Signed::new("GET", "/orders", "");
    skewed.headers = "date @request-target";
    skewed.date = http_date(-60);
    assert_eq!(skewed.send(&mut client).await.status, 401);
    assert_eq!(app.requests(), 2);
}

#[tokio::test]
async fn a_checked_body_is_bounded() {
    let app = Upstream::echo("app");
    let gw = gateway(&app, "{ validate_body: true, max_body_size: 1KiB }");
    let mut client = Client::connect(gw.addr()).await;
    let big = "x".repeat(4096);
    let reply = Signed::new("POST", "/orders", &big).send(&mut client).await;
    assert_eq!(reply.status, 413);
    assert_eq!(app.requests(), 0);
    let mut client = Client::connect(gw.addr()).await;
    assert_eq!(Signed::new("POST", "/orders", &"x".repeat(1000)).send(&mut client).await.status, 200);
}

#[tokio::test]
async fn a_grpc_web_text_call_is_signed_over_the_text_the_browser_sent() {
    use crate::common::grpc_echo::{EchoServer, decode_text, frame, frames, note};
    use prost::Message;
    // The digest covers the base64 text as sent; the gateway checks it on that text, then
    // decodes the body for the gRPC service.
    let echo = EchoServer::start();
    let gw = TestGateway::start(&format!(
        r#"listeners: [{{ name: public, address: "127.0.0.1:0" }}]
consumers: [{{ name: partner-a, credentials: [{{ username: partner-a, secret: "{SECRET}" }}] }}]
upstreams: {{ echo: {{ endpoints: ["http://{}"], protocol: http2 }} }}
routes:
  - {{ name: echo, match: {{ path: "/test.Echo/**" }}, upstream: echo, policies: [{{ hmac_auth: {{ validate_body: true }} }}] }}
"#,
        echo.addr
    ));
    let mut client = Client::connect(gw.addr()).await;
    let text = STANDARD.encode(frame(0, &note("signed").encode_to_vec()));
    let mut call = Signed::new("POST", "/test.Echo/Unary", &text);
    call.content_type = Some("application/grpc-web-text");
    let reply = call.send(&mut client).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let (decoded, _) = decode_text(&reply.text());
    let (messages, trailers) = frames(&decoded);
    assert_eq!(messages, ["echo: signed"], "the service got the decoded message");
    assert!(trailers.contains("grpc-status:0"), "{trailers:?}");
    // A body changed after signing is refused before anything reaches the service.
    call.sent_body = Some(STANDARD.encode(frame(0, &note("forged").encode_to_vec())));
    // (A gRPC client gets the gateway's refusal as a gRPC status: 16, unauthenticated.)
    let reply = call.send(&mut client).await;
    assert_eq!(reply.header("grpc-status"), Some("16"), "{:?} {}", reply.headers, reply.text());
    assert!(decode_text(&reply.text()).0.is_empty(), "no message came back");
}
