//! `basic_auth` through a running gateway: argon2id (from `gatehouse hash-password`) and bcrypt
//! hashes, the challenge, revocation, password changes on reload, and password checks that never
//! stall the worker's other requests.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::common::{Client, Reply, TestGateway, Upstream};

/// `gatehouse hash-password`, as a user would run it.
fn hash_password(password: &str) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["hash-password", "--username", "x"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(format!("{password}\n").as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    text.lines().find_map(|l| l.split("password_hash: \"").nth(1)).unwrap().trim_end_matches('"').to_owned()
}

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
}

fn config(app: &Upstream, alice_hash: &str, bob_hash: &str) -> String {
    format!(
        r#"listeners: [{{ name: public, address: "127.0.0.1:0" }}]
consumers:
  - name: alice
    groups: [staff]
    credentials: [{{ username: alice, password_hash: "{alice_hash}" }}]
  - name: bob
    credentials:
      - {{ username: bob, password_hash: "{bob_hash}" }}
      - {{ username: bob-old, password_hash: "{bob_hash}", revoked: true }}
upstreams:
  app: {{ endpoints: ["{}"] }}
routes:
  - {{ name: open, match: {{ path: "/open/**" }}, upstream: app }}
  - name: reports
    match: {{ path: "/reports/**" }}
    upstream: app
    policies: [{{ basic_auth: {{ realm: partners }} }}]
  - name: staff
    match: {{ path: "/staff/**" }}
    upstream: app
    policies: [{{ basic_auth: {{ keep_credentials: true }} }}, {{ acl: {{ allow: [staff] }} }}]
"#,
        app.url()
    )
}

async fn get(client: &mut Client, path: &str, authorization: Option<&str>) -> Reply {
    let headers: Vec<(&str, &str)> = authorization.iter().map(|a| ("authorization", *a)).collect();
    client.request("GET", path, &headers, "").await
}

#[tokio::test]
async fn users_are_checked_against_argon2id_and_bcrypt_hashes() {
    let app = Upstream::echo("app");
    let alice_hash = hash_password("correct horse");
    assert!(alice_hash.starts_with("$argon2id$"));
    let bob_hash = bcrypt::hash("b0b's secret", 4).unwrap();
    let gw = TestGateway::start(&config(&app, &alice_hash, &bob_hash));
    let mut client = Client::connect(gw.addr()).await;

    let reply = get(&mut client, "/reports/q", Some(&basic("alice", "correct horse"))).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let seen = app.seen();
    let h = &seen.last().unwrap().headers;
    assert_eq!(h["x-consumer-name"], "alice");
    assert!(h.get("authorization").is_none(), "the password never reaches the service");
    assert_eq!(get(&mut client, "/reports/q", Some(&basic("bob", "b0b's secret"))).await.status, 200);
    // The scheme is case-insensitive (RFC 7617).
    let lower = basic("bob", "b0b's secret").replacen("Basic", "basic", 1);
    assert_eq!(get(&mut client, "/reports/q", Some(&lower)).await.status, 200);

    for (auth, code, message) in [
        (basic("alice", "wrong"), "invalid_credentials", "wrong"),
        (basic("alice", "correct horse "), "invalid_credentials", "wrong"),
        (basic("mallory", "correct horse"), "invalid_credentials", "wrong"),
        (basic("bob-old", "b0b's secret"), "invalid_credentials", "revoked"),
        ("Basic !!!".to_owned(), "invalid_credentials", "base64"),
        (format!("Basic {}", STANDARD.encode("no-colon")), "invalid_credentials", "base64"),
    ] {
        let reply = get(&mut client, "/reports/q", Some(&auth)).await;
        assert_eq!(reply.status, 401, "{auth}");
        assert_eq!(reply.error_code(), code, "{auth}");
        assert!(reply.json()["error"]["message"].as_str().unwrap().contains(message), "{auth}: {}", reply.text());
        assert_eq!(reply.header("www-authenticate"), Some("Basic realm=\"partners\", charset=\"UTF-8\""));
    }
    // An unknown user and a wrong password look the same.
    let unknown = get(&mut client, "/reports/q", Some(&basic("mallory", "x"))).await;
    let wrong = get(&mut client, "/reports/q", Some(&basic("alice", "x"))).await;
    assert_eq!(unknown.json()["error"]["message"], wrong.json()["error"]["message"]);

    let missing = get(&mut client, "/reports/q", None).await;
    assert_eq!(missing.status, 401);
    assert_eq!(missing.error_code(), "unauthorized");
    assert_eq!(missing.header("www-authenticate"), Some("Basic realm=\"partners\", charset=\"UTF-8\""));
    // A bearer token is not Basic credentials.
    assert_eq!(get(&mut client, "/reports/q", Some("Bearer abc")).await.status, 401);

    // keep_credentials, and the consumer's groups for acl.
    let staff = get(&mut client, "/staff/x", Some(&basic("alice", "correct horse"))).await;
    assert_eq!(staff.status, 200);
    assert!(app.seen().last().unwrap().headers.get("authorization").is_some());
    assert_eq!(get(&mut client, "/staff/x", Some(&basic("bob", "b0b's secret"))).await.status, 403);
    assert_eq!(app.requests(), 4);
}

#[tokio::test]
async fn a_changed_password_takes_effect_at_the_reload() {
    let app = Upstream::echo("app");
    let old = bcrypt::hash("old-password", 4).unwrap();
    let bob = bcrypt::hash("bob", 4).unwrap();
    let gw = TestGateway::start(&config(&app, &old, &bob));
    let mut client = Client::connect(gw.addr()).await;
    // Checked, and remembered by the worker.
    for _ in 0..2 {
        assert_eq!(get(&mut client, "/reports/q", Some(&basic("alice", "old-password"))).await.status, 200);
    }
    gw.reload_with(&config(&app, &bcrypt::hash("new-password", 4).unwrap(), &bob));
    let mut client = Client::connect(gw.addr()).await;
    assert_eq!(get(&mut client, "/reports/q", Some(&basic("alice", "old-password"))).await.status, 401);
    assert_eq!(get(&mut client, "/reports/q", Some(&basic("alice", "new-password"))).await.status, 200);
}

#[tokio::test]
async fn password_checks_do_not_stall_other_requests() {
    let app = Upstream::echo("app");
    // Cost 13: each check takes a good fraction of a second, on purpose.
    let slow = bcrypt::hash("slow-password", 13).unwrap();
    let gw = TestGateway::start(&config(&app, &slow, &slow));
    let addr = gw.addr();
    // More distinct wrong guesses than there are CPUs: they queue for the hashing slots.
    let guesses: Vec<_> = (0..6)
        .map(|i| {
            tokio::spawn(async move {
                let mut client = Client::connect(addr).await;
                get(&mut client, "/reports/q", Some(&basic("alice", &format!("guess-{i}")))).await.status
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The same (single) worker still proxies at once: the checks run off its event loop.
    let mut client = Client::connect(addr).await;
    assert_eq!(get(&mut client, "/open/x", None).await.status, 200);
    let pending = guesses.iter().filter(|g| !g.is_finished()).count();
    assert!(pending > 0, "the open request waited for every password check");
    for g in guesses {
        assert_eq!(g.await.unwrap(), 401);
    }
}
