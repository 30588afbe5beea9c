//! TLS to upstreams: `https://` endpoints verified against a configured CA (or the system's roots),
//! SNI, a client certificate for upstreams that demand one, and the insecure switch.

use crate::common::tls::{HttpsUpstream, Pki};
use crate::common::{Client, TestGateway};

fn gateway(endpoint: &str, tls: &str, extra: &str) -> TestGateway {
    TestGateway::start(&format!(
        r#"listeners: [{{ name: public, address: "127.0.0.1:0" }}]
upstreams:
  secure: {{ endpoints: ["{endpoint}"]{tls}{extra} }}
routes: [{{ name: all, upstream: secure }}]
"#
    ))
}

#[tokio::test]
async fn https_endpoints_are_verified_against_the_configured_ca() {
    let pki = Pki::new();
    let cert = pki.issue("svc", &["localhost"]);
    let upstream = HttpsUpstream::start(&pki, &cert, false).await;
    let ca = pki.ca_pem_path();
    let gw = gateway(
        &format!("https://localhost:{}", upstream.addr.port()),
        &format!(", tls: {{ ca: \"{}\" }}", ca.display()),
        "",
    );
    let mut client = Client::connect(gw.addr()).await;
    let reply = client.get("/orders/1?x=2").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let seen = reply.json();
    assert_eq!(seen["sni"], "localhost", "SNI is the endpoint's host");
    assert_eq!(seen["host"], format!("localhost:{}", upstream.addr.port()));
    assert_eq!(seen["uri"], "/orders/1?x=2");
    assert_eq!(seen["client_cert"], false);
    // Pooled: a second request reuses the TLS connection.
    assert_eq!(client.get("/again").await.status, 200);
    assert_eq!(upstream.handshakes.load(std::sync::atomic::Ordering::Relaxed), 1, "one handshake for both");

    // Trusting another CA (as the system's roots would be): no connection, 502.
    let stranger = Pki::new();
    let stranger_ca = stranger.ca_pem_path();
    let untrusted = gateway(
        &format!("https://localhost:{}", upstream.addr.port()),
        &format!(", tls: {{ ca: \"{}\" }}", stranger_ca.display()),
        "",
    );
    let reply = Client::connect(untrusted.addr()).await.get("/x").await;
    assert_eq!(reply.status, 502, "{}", reply.text());
    assert_eq!(reply.error_code(), "upstream_unavailable");

    // A certificate for another name is refused too.
    let other = pki.issue("other", &["other.test"]);
    let wrong = HttpsUpstream::start(&pki, &other, false).await;
    let gw = gateway(
        &format!("https://localhost:{}", wrong.addr.port()),
        &format!(", tls: {{ ca: \"{}\" }}", ca.display()),
        "",
    );
    assert_eq!(Client::connect(gw.addr()).await.get("/x").await.status, 502);
    // Unless server_name says which name to expect (and to send in SNI).
    let gw = gateway(
        &format!("https://127.0.0.1:{}", wrong.addr.port()),
        &format!(", tls: {{ ca: \"{}\", server_name: other.test }}", ca.display()),
        "",
    );
    let reply = Client::connect(gw.addr()).await.get("/x").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["sni"], "other.test");
}

#[tokio::test]
async fn a_client_certificate_is_presented_to_upstreams_that_demand_one() {
    let pki = Pki::new();
    let cert = pki.issue("svc", &["localhost"]);
    let upstream = HttpsUpstream::start(&pki, &cert, true).await;
    let ca = pki.ca_pem_path();
    let gateway_cert = pki.issue("gateway-client", &["gateway.test"]);
    let url = format!("https://localhost:{}", upstream.addr.port());
    let with = gateway(
        &url,
        &format!(
            ", tls: {{ ca: \"{}\", client_certificate: {{ cert: \"{}\", key: \"{}\" }} }}",
            ca.display(),
            gateway_cert.cert.display(),
            gateway_cert.key.display()
        ),
        "",
    );
    let reply = Client::connect(with.addr()).await.get("/mtls").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["client_cert"], true);

    let without = gateway(&url, &format!(", tls: {{ ca: \"{}\" }}", ca.display()), "");
    assert_eq!(Client::connect(without.addr()).await.get("/mtls").await.status, 502);
}

#[tokio::test]
async fn insecure_skip_verify_takes_any_certificate_and_health_checks_speak_tls() {
    let pki = Pki::new();
    let cert = pki.issue("svc", &["somewhere.else"]);
    let upstream = HttpsUpstream::start(&pki, &cert, false).await;
    let gw = gateway(
        &format!("https://localhost:{}", upstream.addr.port()),
        ", tls: { insecure_skip_verify: true }",
        ", health_check: { type: http, path: /health, interval: 50ms, timeout: 40ms, healthy_threshold: 1 }",
    );
    let reply = Client::connect(gw.addr()).await.get("/x").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    // The HTTPS health check reaches the endpoint over TLS (a plain-HTTP probe could not) and
    // keeps it up.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let probes = upstream.paths.lock().unwrap().iter().filter(|p| *p == "/health").count();
    assert!(probes >= 2, "{probes} health probes arrived over TLS");
    let snapshot = gw.gateway.snapshot();
    let endpoint = snapshot.upstreams["secure"].members().endpoints[0].clone();
    assert!(endpoint.url.starts_with("https://"));
    assert!(!endpoint.state.active_down.load(std::sync::atomic::Ordering::Relaxed), "the TLS health check passes");
}

#[test]
fn upstream_tls_settings_are_checked() {
    let pki = Pki::new();
    std::fs::write(pki.path("junk.pem"), "junk").unwrap();
    for (upstream, words) in [
        (r#"{ endpoints: ["https://a:1", "http://b:1"] }"#.to_owned(), "mix of http:// and https://"),
        (r#"{ endpoints: ["http://a:1"], tls: { insecure_skip_verify: true } }"#.to_owned(), "write https://"),
        (
            format!(r#"{{ endpoints: ["https://a:1"], tls: {{ ca: "{}" }} }}"#, pki.path("missing.pem").display()),
            "tls.ca",
        ),
        (
            format!(r#"{{ endpoints: ["https://a:1"], tls: {{ ca: "{}" }} }}"#, pki.path("junk.pem").display()),
            "no certificate",
        ),
        (r#"{ endpoints: ["https://a:1"], tls: { server_name: "bad name!" } }"#.to_owned(), "tls.server_name"),
    ] {
        let error = TestGateway::try_start(&format!(
            "listeners: [{{ name: p, address: \"127.0.0.1:0\" }}]\nupstreams: {{ u: {upstream} }}\nroutes: [{{ name: r, upstream: u }}]\n"
        ))
        .err()
        .unwrap_or_else(|| panic!("{upstream} was accepted"))
        .to_string();
        assert!(error.contains(words), "{upstream}: {error}");
    }
}
