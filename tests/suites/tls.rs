//! TLS termination and HTTP/2: certificates by SNI, ALPN, versions, rotation without a restart,
//! h2c with prior knowledge next to HTTP/1.1, hostile handshakes and clients no one here wrote.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::tls::{Pki, get, handshake, presented, replace};
use crate::common::{Client, TestGateway, Upstream};

/// A gateway with an HTTPS listener serving `certificates` (YAML list items) and a clear-text one.
fn gateway(app: &Upstream, certificates: &str, tls_extra: &str) -> TestGateway {
    TestGateway::start(&format!(
        r#"listeners:
  - name: https
    address: "127.0.0.1:0"
    tls:
      watch_interval: 50ms
      certificates:
{certificates}{tls_extra}
  - {{ name: plain, address: "127.0.0.1:0" }}
upstreams: {{ app: {{ endpoints: ["{}"] }} }}
routes: [{{ name: all, upstream: app }}]
"#,
        app.url()
    ))
}

fn item(issued: &crate::common::tls::Issued, extra: &str) -> String {
    format!("        - {{ cert: \"{}\", key: \"{}\"{extra} }}\n", issued.cert.display(), issued.key.display())
}

#[tokio::test]
async fn certificates_are_chosen_by_sni_exact_then_wildcard_then_default() {
    let app = Upstream::echo("app");
    let pki = Pki::new();
    let fallback = pki.issue("fallback", &["fallback.test"]);
    let api = pki.issue("api", &["api.example.com"]);
    let wild = pki.issue("wild", &["*.apps.example.com"]);
    let gw = gateway(&app, &(item(&api, "") + &item(&wild, "") + &item(&fallback, ", default: true")), "");
    let addr = gw.listener("https");
    let config = || pki.client(&["http/1.1"], None);

    let stream = handshake(addr, "api.example.com", config()).await.unwrap();
    assert_eq!(presented(&stream), api.der);
    let (status, version, body) = get(stream, false, "api.example.com", "/hello").await;
    assert_eq!((status, version), (200, http::Version::HTTP_11));
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["headers"]["x-forwarded-proto"][0], "https", "the upstream learns the client used TLS");

    let stream = handshake(addr, "shop.apps.example.com", config()).await.unwrap();
    assert_eq!(presented(&stream), wild.der, "one label under a wildcard");
    // Not two labels under it, and not the bare parent: those get the default.
    let mut lenient = pki.client(&["http/1.1"], None);
    lenient.dangerous().set_certificate_verifier(std::sync::Arc::new(AcceptAny));
    for name in ["a.b.apps.example.com", "apps.example.com", "unknown.test"] {
        let stream = handshake(addr, name, lenient.clone()).await.unwrap();
        assert_eq!(presented(&stream), fallback.der, "{name}");
    }
    // Names are compared without case.
    let stream = handshake(addr, "API.Example.COM", config()).await.unwrap();
    assert_eq!(presented(&stream), api.der);
    // No SNI at all (an IP address as the name): the default.
    let stream = handshake(addr, "127.0.0.1", lenient.clone()).await.unwrap();
    assert_eq!(presented(&stream), fallback.der);
}

#[tokio::test]
async fn alpn_chooses_http2_or_http1_and_both_tls_versions_work() {
    let app = Upstream::echo("app");
    let pki = Pki::new();
    let cert = pki.issue("site", &["site.test"]);
    let gw = gateway(&app, &item(&cert, ""), "");
    let addr = gw.listener("https");

    let stream = handshake(addr, "site.test", pki.client(&["h2", "http/1.1"], None)).await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (status, version, body) = get(stream, true, "site.test", "/over/h2?q=1").await;
    assert_eq!((status, version), (200, http::Version::HTTP_2));
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["uri"], "/over/h2?q=1", "HTTP/2 in front, HTTP/1.1 behind, the same request");
    assert_eq!(seen["headers"]["host"][0], app.url().trim_start_matches("http://"));

    let stream = handshake(addr, "site.test", pki.client(&["http/1.1"], None)).await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(get(stream, false, "site.test", "/").await.1, http::Version::HTTP_11);
    // A client that offers no ALPN speaks HTTP/1.1.
    let stream = handshake(addr, "site.test", pki.client(&[], None)).await.unwrap();
    assert_eq!(get(stream, false, "site.test", "/").await.0, 200);

    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let stream = handshake(addr, "site.test", pki.client(&["http/1.1"], Some(&[version]))).await.unwrap();
        assert_eq!(stream.get_ref().1.protocol_version(), Some(version.version));
    }

    // min_version 1.3 refuses a TLS 1.2-only client.
    let strict = gateway(&app, &item(&cert, ""), "      min_version: \"1.3\"\n");
    let only12 = pki.client(&["http/1.1"], Some(&[&rustls::version::TLS12]));
    assert!(handshake(strict.listener("https"), "site.test", only12).await.is_err());
}

#[tokio::test]
async fn h2c_with_prior_knowledge_and_http1_share_a_clear_text_listener() {
    let app = Upstream::echo("app");
    let pki = Pki::new();
    let cert = pki.issue("site", &["site.test"]);
    let gw = gateway(&app, &item(&cert, ""), "");
    let plain = gw.listener("plain");

    let tcp = TcpStream::connect(plain).await.unwrap();
    let (status, version, _) = get(tcp, true, "site.test", "/h2c").await;
    assert_eq!((status, version), (200, http::Version::HTTP_2));
    let mut client = Client::connect(plain).await;
    assert_eq!(client.get("/h1").await.status, 200);

    // Many streams at once on one connection, each answered.
    let tcp = TcpStream::connect(plain).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut calls = Vec::new();
    for i in 0..100 {
        let mut sender = sender.clone();
        calls.push(tokio::spawn(async move {
            let request = http::Request::builder()
                .uri(format!("http://site.test/stream/{i}"))
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap();
            let response = sender.send_request(request).await.unwrap();
            let body = http_body_util::BodyExt::collect(response.into_body()).await.unwrap().to_bytes();
            serde_json::from_slice::<serde_json::Value>(&body).unwrap()["uri"].as_str().unwrap().to_owned()
        }));
    }
    for (i, call) in calls.into_iter().enumerate() {
        assert_eq!(call.await.unwrap(), format!("/stream/{i}"));
    }
}

#[tokio::test]
async fn renewed_certificates_are_used_without_a_restart_or_a_dropped_connection() {
    let app = Upstream::echo("app");
    let pki = Pki::new();
    let first = pki.issue("site", &["site.test"]);
    let gw = gateway(&app, &item(&first, ""), "");
    let addr = gw.listener("https");
    let config = || pki.client(&["http/1.1"], None);

    // A connection opened before the renewal.
    let stream = handshake(addr, "site.test", config()).await.unwrap();
    assert_eq!(presented(&stream), first.der);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let send = |sender: &mut hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>| {
        let request = http::Request::builder()
            .uri("/kept")
            .header("host", "site.test")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        sender.send_request(request)
    };
    assert_eq!(send(&mut sender).await.unwrap().status(), 200);

    // The renewal: new files written over the old ones, as certbot or cert-manager do.
    let renewed = pki.issue("renewed", &["site.test"]);
    replace(&first.key, &std::fs::read(&renewed.key).unwrap());
    replace(&first.cert, &std::fs::read(&renewed.cert).unwrap());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let stream = handshake(addr, "site.test", config()).await.unwrap();
        if presented(&stream) == renewed.der {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the renewed certificate is not served");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The old connection goes on.
    assert_eq!(send(&mut sender).await.unwrap().status(), 200);

    // A broken renewal (a key that is not the certificate's) is not taken: the last good pair stays.
    let other = pki.issue("other", &["site.test"]);
    replace(&first.key, &std::fs::read(&other.key).unwrap());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stream = handshake(addr, "site.test", config()).await.unwrap();
    assert_eq!(presented(&stream), renewed.der);
    assert_eq!(get(stream, false, "site.test", "/").await.0, 200);
    // …and the watcher still watches: a good pair after the broken one is taken.
    let third = pki.issue("third", &["site.test"]);
    replace(&first.key, &std::fs::read(&third.key).unwrap());
    replace(&first.cert, &std::fs::read(&third.cert).unwrap());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while presented(&handshake(addr, "site.test", config()).await.unwrap()) != third.der {
        assert!(std::time::Instant::now() < deadline, "the pair after a broken renewal is not served");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn hostile_handshakes_close_only_their_own_connection() {
    let app = Upstream::echo("app");
    let pki = Pki::new();
    let cert = pki.issue("site", &["site.test"]);
    let gw = TestGateway::start(&format!(
        r#"listeners:
  - name: https
    address: "127.0.0.1:0"
    tls: {{ handshake_timeout: 300ms, certificates: [{{ cert: "{}", key: "{}" }}] }}
upstreams: {{ app: {{ endpoints: ["{}"] }} }}
routes: [{{ name: all, upstream: app }}]
"#,
        cert.cert.display(),
        cert.key.display(),
        app.url()
    ));
    let addr = gw.listener("https");
    // Plain HTTP to the TLS port, random bytes, a truncated ClientHello, and silence.
    let truncated_hello = [0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03];
    let attempts: Vec<&[u8]> = vec![
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        &[0xde, 0xad, 0xbe, 0xef, 0x00, 0xff, 0x13, 0x37],
        &truncated_hello,
        b"",
    ];
    let mut open = Vec::new();
    for bytes in &attempts {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(bytes).await.unwrap();
        open.push(tcp);
    }
    // Meanwhile a real client is served.
    let stream = handshake(addr, "site.test", pki.client(&["h2"], None)).await.unwrap();
    assert_eq!(get(stream, true, "site.test", "/").await.0, 200);
    for (mut tcp, bytes) in open.into_iter().zip(&attempts) {
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(3), async {
            // An alert may come first; then the close.
            loop {
                match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => return true,
                    Ok(_) => continue,
                }
            }
        })
        .await;
        assert_eq!(read, Ok(true), "closed after {bytes:?}");
    }
}

#[test]
fn bad_tls_settings_are_config_errors_with_their_place() {
    let pki = Pki::new();
    let cert = pki.issue("site", &["site.test"]);
    let other = pki.issue("other", &["other.test"]);
    std::fs::write(pki.path("junk.pem"), "not a certificate").unwrap();
    let c = |cert: &std::path::Path, key: &std::path::Path| {
        format!("{{ cert: \"{}\", key: \"{}\" }}", cert.display(), key.display())
    };
    let missing = pki.path("missing.pem");
    for (tls, words) in [
        (format!("{{ certificates: [{}] }}", c(&missing, &cert.key)), "missing.pem"),
        (format!("{{ certificates: [{}] }}", c(&pki.path("junk.pem"), &cert.key)), "no certificate"),
        (format!("{{ certificates: [{}] }}", c(&cert.cert, &other.key)), "is not the key of"),
        ("{ certificates: [] }".to_owned(), "at least one certificate"),
        (format!("{{ certificates: [{}], alpn: [spdy/3] }}", c(&cert.cert, &cert.key)), "h2 and http/1.1"),
        (format!("{{ certificates: [{}], min_version: \"1.1\" }}", c(&cert.cert, &cert.key)), "1.1"),
        (
            format!("{{ certificates: [{}, {}] }}", c(&cert.cert, &cert.key), c(&cert.cert, &cert.key)),
            "another certificate",
        ),
    ] {
        let error =
            TestGateway::try_start(&format!("listeners: [{{ name: https, address: \"127.0.0.1:0\", tls: {tls} }}]\n"))
                .err()
                .unwrap_or_else(|| panic!("{tls} was accepted"))
                .to_string();
        assert!(error.contains(words), "{tls}: {error}");
        assert!(error.contains("listeners[0].tls"), "{tls}: {error}");
    }
}

/// Whether a command-line client is at hand (./scripts/test installs them; a plain `cargo test`
/// on a machine without them says so and goes on).
/// The command-line tool a test drives; missing, the test fails (./scripts/test installs it) rather
/// than passing without having checked anything.
fn require(tool: &str) {
    let found = std::process::Command::new(tool).arg("--version").output().is_ok();
    assert!(found, "{tool} is not installed: ./scripts/test installs it (curl, nghttp2-client)");
}

/// curl, as users test a gateway: HTTP/2 over TLS by ALPN, and h2c with prior knowledge.
#[tokio::test]
async fn curl_speaks_http2_to_it_over_tls_and_in_clear_text() {
    require("curl");
    let app = Upstream::echo("app");
    let pki = Pki::new();
    let cert = pki.issue("site", &["site.test"]);
    let gw = gateway(&app, &item(&cert, ""), "");
    let (https, plain) = (gw.listener("https"), gw.listener("plain"));
    let ca = pki.ca_pem_path();
    let curl = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            let out = std::process::Command::new("curl")
                .args(["-sS", "-o", "/dev/null", "-w", "%{http_code} %{http_version}"])
                .args(&args)
                .output()
                .unwrap();
            assert!(out.status.success(), "curl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
    };
    let resolve = format!("site.test:{}:127.0.0.1", https.port());
    let over_tls = curl(vec![
        "--http2".into(),
        "--cacert".into(),
        ca.display().to_string(),
        "--resolve".into(),
        resolve,
        format!("https://site.test:{}/x", https.port()),
    ]);
    assert_eq!(over_tls.await.unwrap(), "200 2");
    let h2c = curl(vec!["--http2-prior-knowledge".into(), format!("http://{plain}/x")]);
    assert_eq!(h2c.await.unwrap(), "200 2");
    let h1 = curl(vec!["--http1.1".into(), format!("http://{plain}/x")]);
    assert_eq!(h1.await.unwrap(), "200 1.1");
}

/// Accepts any certificate: to see which one the server presents for names it has none for.
#[derive(Debug)]
struct AcceptAny;

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        let algorithms = rustls::crypto::ring::default_provider().signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, &algorithms)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        let algorithms = rustls::crypto::ring::default_provider().signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, &algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider().signature_verification_algorithms.supported_schemes()
    }
}

#[tokio::test]
async fn a_clear_text_listener_can_send_everyone_to_https() {
    let gw = TestGateway::start(
        r#"listeners:
  - { name: http, address: "127.0.0.1:0", https_redirect: { port: 8443 } }
  - { name: http-default, address: "127.0.0.1:0", https_redirect: { status: 301 } }
routes: [{ name: teapot, policies: [{ direct_response: { status: 418 } }] }]
"#,
    );
    let mut client = Client::connect(gw.listener("http")).await;
    for method in ["GET", "POST"] {
        let reply = client.request(method, "/orders/7?x=%2F1", &[("host", "Shop.Example.com:80")], "").await;
        assert_eq!(reply.status, 308, "{method}");
        assert_eq!(reply.header("location"), Some("https://shop.example.com:8443/orders/7?x=%2F1"));
    }
    let mut client = Client::connect(gw.listener("http-default")).await;
    let reply = client.request("GET", "/", &[("host", "shop.example.com")], "").await;
    assert_eq!(reply.status, 301);
    assert_eq!(reply.header("location"), Some("https://shop.example.com/"), "443 is left out");

    let error =
        TestGateway::try_start("listeners: [{ name: h, address: \"127.0.0.1:0\", https_redirect: { status: 200 } }]\n")
            .err()
            .unwrap()
            .to_string();
    assert!(error.contains("listeners[0].https_redirect.status"), "{error}");
}

#[tokio::test]
async fn client_certificates_are_verified_and_their_subject_sent_upstream() {
    let app = Upstream::echo("app");
    let pki = Pki::new();
    let cert = pki.issue("site", &["site.test"]);
    let ca = pki.ca_pem_path();
    let start = |required: bool| {
        TestGateway::start(&format!(
            r#"listeners:
  - name: https
    address: "127.0.0.1:0"
    tls:
      certificates: [{{ cert: "{}", key: "{}" }}]
      client_auth: {{ ca: "{}", required: {required}, subject_header: x-client-subject, san_header: x-client-san }}
upstreams: {{ app: {{ endpoints: ["{}"] }} }}
routes: [{{ name: all, upstream: app }}]
"#,
            cert.cert.display(),
            cert.key.display(),
            ca.display(),
            app.url()
        ))
    };
    let gw = start(true);
    let addr = gw.listener("https");
    let client_a = pki.issue_client("client-a", "client-a", "Acme, Inc.", &["client-a.test"]);

    let stream = handshake(addr, "site.test", pki.client_with_cert(&client_a)).await.unwrap();
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    let request = http::Request::get("/who")
        .header("host", "site.test")
        .header("x-client-subject", "CN=admin")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    assert_eq!(sender.send_request(request).await.unwrap().status(), 200);
    let seen = app.seen().last().unwrap().headers.clone();
    assert_eq!(seen["x-client-subject"], "O=Acme\\, Inc.,CN=client-a", "the verified subject, not the client's claim");
    assert_eq!(seen["x-client-san"], "client-a.test");

    // No certificate, or one from another CA: no request gets through.
    let stranger = Pki::new();
    let foreign = stranger.issue_client("foreign", "mallory", "Evil", &[]);
    // Trusting the server, presenting a certificate the listener's CA did not issue.
    let foreign_config = pki.client_with_cert(&foreign);
    for config in [pki.client(&["http/1.1"], None), foreign_config] {
        let outcome = async {
            let stream = handshake(addr, "site.test", config).await.ok()?;
            // TLS 1.3: the server's refusal can arrive after the client thinks it is done.
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.ok()?;
            tokio::spawn(conn);
            let request = http::Request::get("/")
                .header("host", "site.test")
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap();
            sender.send_request(request).await.ok().map(|r| r.status())
        };
        assert_eq!(outcome.await, None, "a client without a valid certificate was served");
    }

    // Optional client certificates: served without one, and the headers are not passed through.
    let gw = start(false);
    let stream = handshake(gw.listener("https"), "site.test", pki.client(&["http/1.1"], None)).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let request = http::Request::get("/anonymous")
        .header("host", "site.test")
        .header("x-client-subject", "CN=admin")
        .header("x-client-san", "admin.test")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    assert_eq!(sender.send_request(request).await.unwrap().status(), 200);
    let seen = app.seen().last().unwrap().headers.clone();
    assert!(seen.get("x-client-subject").is_none() && seen.get("x-client-san").is_none(), "{seen:?}");
}

/// Reloads under load keep TLS and HTTP/2 clients whole: each client keeps its connection (an
/// HTTP/2 one multiplexes ten requests at once) while the routes switch twelve times.
#[tokio::test]
async fn reloading_under_load_fails_no_request_over_tls_and_http2() {
    let (a, b) = (Upstream::echo("a"), Upstream::echo("b"));
    let pki = Pki::new();
    let cert = pki.issue("site", &["site.test"]);
    let config = |target: &Upstream| {
        format!(
            r#"server: {{ workers: 2 }}
listeners:
  - {{ name: https, address: "127.0.0.1:0", tls: {{ certificates: [{{ cert: "{}", key: "{}" }}] }} }}
  - {{ name: plain, address: "127.0.0.1:0" }}
upstreams: {{ target: {{ endpoints: ["{}"] }} }}
routes: [{{ name: all, upstream: target }}]
"#,
            cert.cert.display(),
            cert.key.display(),
            target.url()
        )
    };
    let gw = TestGateway::start(&config(&a));
    let (https, plain) = (gw.listener("https"), gw.listener("plain"));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ok = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let failed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut loads = Vec::new();
    for kind in 0..3 {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        let config = pki.client(if kind == 0 { &["h2"] } else { &["http/1.1"] }, None);
        loads.push(tokio::spawn(async move {
            use std::sync::atomic::Ordering;
            let request = || {
                http::Request::get("https://site.test/load")
                    .header("host", "site.test")
                    .body(http_body_util::Full::new(bytes::Bytes::new()))
                    .unwrap()
            };
            match kind {
                // HTTP/2 over TLS: ten streams at a time on one connection.
                0 => {
                    let stream = handshake(https, "site.test", config).await.unwrap();
                    let (sender, conn) = hyper::client::conn::http2::handshake(
                        hyper_util::rt::TokioExecutor::new(),
                        hyper_util::rt::TokioIo::new(stream),
                    )
                    .await
                    .unwrap();
                    tokio::spawn(conn);
                    while !stop.load(Ordering::Relaxed) {
                        let batch: Vec<_> = (0..10)
                            .map(|_| {
                                let mut sender = sender.clone();
                                let request = request();
                                tokio::spawn(async move { sender.send_request(request).await.map(|r| r.status()) })
                            })
                            .collect();
                        for call in batch {
                            let good = matches!(call.await, Ok(Ok(s)) if s == 200);
                            if good { &ok } else { &failed }.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                // HTTP/1.1 over TLS, one kept connection.
                1 => {
                    let stream = handshake(https, "site.test", config).await.unwrap();
                    let (mut sender, conn) =
                        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
                    tokio::spawn(conn);
                    while !stop.load(Ordering::Relaxed) {
                        let good = matches!(sender.send_request(request()).await, Ok(r) if r.status() == 200);
                        if good { &ok } else { &failed }.fetch_add(1, Ordering::Relaxed);
                    }
                }
                // h2c, one kept connection.
                _ => {
                    let tcp = TcpStream::connect(plain).await.unwrap();
                    let (mut sender, conn) = hyper::client::conn::http2::handshake(
                        hyper_util::rt::TokioExecutor::new(),
                        hyper_util::rt::TokioIo::new(tcp),
                    )
                    .await
                    .unwrap();
                    tokio::spawn(conn);
                    while !stop.load(Ordering::Relaxed) {
                        let good = matches!(sender.send_request(request()).await, Ok(r) if r.status() == 200);
                        if good { &ok } else { &failed }.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for round in 0..12 {
        tokio::time::sleep(Duration::from_millis(60)).await;
        gw.reload_with(&config(if round % 2 == 0 { &b } else { &a }));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for load in loads {
        load.await.unwrap();
    }
    let (ok, failed) =
        (ok.load(std::sync::atomic::Ordering::Relaxed), failed.load(std::sync::atomic::Ordering::Relaxed));
    assert_eq!(failed, 0, "{failed} of {} failed", ok + failed);
    assert!(ok > 100, "too little load to mean anything: {ok}");
    assert!(a.requests() > 0 && b.requests() > 0);
}

/// h2load (nghttp2), a client no one here wrote: many streams on few connections, in clear
/// text and over TLS, every request answered.
#[tokio::test]
async fn h2load_gets_every_answer_over_h2c_and_h2() {
    require("h2load");
    let app = Upstream::echo("app");
    let pki = Pki::new();
    let cert = pki.issue("site", &["site.test"]);
    let gw = gateway(&app, &item(&cert, ""), "");
    for url in [format!("http://{}/load", gw.listener("plain")), format!("https://{}/load", gw.listener("https"))] {
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new("h2load").args(["-n", "2000", "-c", "10", "-m", "10", &url]).output().unwrap()
        })
        .await
        .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(text.contains("2000 succeeded, 0 failed, 0 errored"), "{text}");
        assert!(text.contains("status codes: 2000 2xx"), "{text}");
    }
}
