//! Routes, upstreams, consumers and credentials changed through the admin API: validated like the
//! file, in effect at once, kept in `admin.store` across a restart.

use std::path::Path;

use gatehouse::Gateway;

use crate::common::{Client, TestGateway, Upstream};

const TOKEN: &str = "changes-admin-token-0123456789";

fn config(store: &Path, app: &Upstream) -> String {
    format!(
        r#"admin: {{ address: "127.0.0.1:0", token: "{TOKEN}", store: "{}" }}
listeners: [{{ name: public, address: "127.0.0.1:0" }}]
upstreams: {{ app: {{ endpoints: ["{}"] }} }}
routes:
  - {{ name: app, match: {{ path: "/app/**" }}, upstream: app }}
  - {{ name: old, match: {{ path: "/old/**" }}, upstream: app }}
"#,
        store.display(),
        app.url()
    )
}

struct Admin {
    client: Client,
}

impl Admin {
    async fn connect(gateway: &Gateway) -> Admin {
        Admin { client: Client::connect(gateway.admin_addr().unwrap()).await }
    }

    async fn call(&mut self, method: &str, path: &str, body: &str) -> crate::common::Reply {
        let bearer = format!("Bearer {TOKEN}");
        let headers = [("authorization", bearer.as_str()), ("content-type", "application/json")];
        self.client.request(method, path, &headers, body).await
    }
}

#[tokio::test]
async fn routes_and_upstreams_change_at_once_and_survive_a_restart() {
    let app = Upstream::echo("app");
    let orders = Upstream::echo("orders");
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("changes.json");
    let gw = TestGateway::start(&config(&store, &app));
    let mut admin = Admin::connect(&gw.gateway).await;
    let mut client = Client::connect(gw.addr()).await;
    assert_eq!(client.get("/orders/1").await.status, 404);

    // A new upstream, then a route to it: traffic follows on the next request.
    let up = admin.call("PUT", "/upstreams/orders", &format!(r#"{{"endpoints": ["{}"]}}"#, orders.url())).await;
    assert_eq!(up.status, 201, "{}", up.text());
    assert_eq!(up.json()["created"], true);
    let route = r#"{"match": {"path": "/orders/**"}, "upstream": "orders", "strip_prefix": "/orders"}"#;
    let created = admin.call("PUT", "/routes/orders", route).await;
    assert_eq!(created.status, 201, "{}", created.text());
    let generation = created.json()["generation"].as_u64().unwrap();
    let reply = client.get("/orders/7").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["instance"], "orders");
    assert_eq!(reply.json()["uri"], "/7");
    let shown = admin.call("GET", "/routes/orders", "").await.json();
    assert_eq!(shown["source"], "admin");
    assert_eq!(shown["route"]["upstream"], "orders");
    assert_eq!(admin.call("GET", "/routes/app", "").await.json()["source"], "file");
    // The compiled table lists it with the file's routes.
    assert!(admin.call("GET", "/routes", "").await.text().contains("\"orders\""));

    // Replace it: 200, the new path works and the old one is gone.
    let replaced =
        admin.call("PUT", "/routes/orders", r#"{"match": {"path": "/v2/orders/**"}, "upstream": "orders"}"#).await;
    assert_eq!(replaced.status, 200, "{}", replaced.text());
    assert_eq!(replaced.json()["created"], false);
    assert!(replaced.json()["generation"].as_u64().unwrap() > generation);
    assert_eq!(client.get("/orders/7").await.status, 404);
    assert_eq!(client.get("/v2/orders/7").await.json()["instance"], "orders");

    // A route of the file can be replaced and deleted too.
    assert_eq!(client.get("/old/x").await.status, 200);
    assert_eq!(admin.call("DELETE", "/routes/old", "").await.status, 200);
    assert_eq!(client.get("/old/x").await.status, 404);
    assert_eq!(admin.call("DELETE", "/routes/old", "").await.status, 404, "gone already");
    assert_eq!(admin.call("GET", "/routes/old", "").await.status, 404);

    // The store holds the changes; a reload of the file keeps them on top.
    let kept: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&store).unwrap()).unwrap();
    assert!(kept["routes"]["old"].is_null() && kept["routes"].get("old").is_some(), "{kept}");
    assert_eq!(kept["routes"]["orders"]["upstream"], "orders");
    gw.gateway.reload().unwrap();
    assert_eq!(client.get("/v2/orders/7").await.status, 200);
    assert_eq!(client.get("/old/x").await.status, 404);
    let reloads = admin.call("GET", "/reloads", "").await.json();
    let sources: Vec<_> = reloads["reloads"].as_array().unwrap().iter().map(|r| r["source"].clone()).collect();
    assert!(sources.contains(&"admin".into()) && sources.contains(&"file".into()), "{sources:?}");

    // A restart reads the store: the same config as before it.
    drop((client, admin));
    let gw = gw.restart();
    let mut client = Client::connect(gw.addr()).await;
    assert_eq!(client.get("/v2/orders/7").await.json()["instance"], "orders");
    assert_eq!(client.get("/old/x").await.status, 404);
    assert_eq!(client.get("/app/x").await.status, 200);

    // Forgetting every change: the file alone again, now and after a restart.
    let mut admin = Admin::connect(&gw.gateway).await;
    assert_eq!(admin.call("DELETE", "/changes", "").await.status, 200);
    assert_eq!(client.get("/v2/orders/7").await.status, 404);
    assert_eq!(client.get("/old/x").await.status, 200);
    assert_eq!(admin.call("GET", "/changes", "").await.json()["changes"], serde_json::json!({}));
    drop((client, admin));
    let gw = gw.restart();
    let mut client = Client::connect(gw.addr()).await;
    assert_eq!(client.get("/old/x").await.status, 200);
    assert_eq!(client.get("/v2/orders/7").await.status, 404);
}

#[tokio::test]
async fn a_store_that_cannot_be_read_stops_the_start() {
    let app = Upstream::echo("app");
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("changes.json");
    std::fs::write(&store, r#"{"routes": {"x": {"upstream": "app", "bogus": 1}}}"#).unwrap();
    let error = TestGateway::try_start(&config(&store, &app)).err().expect("a broken store stops the start");
    let text = error.to_string();
    assert!(text.contains("changes.json") && text.contains("bogus"), "{text}");
    // A change in the store that no longer compiles against the file is reported with its name.
    std::fs::write(&store, r#"{"routes": {"x": {"upstream": "gone"}}}"#).unwrap();
    let text = TestGateway::try_start(&config(&store, &app)).err().expect("does not compile").to_string();
    assert!(text.contains("routes[\"x\"].upstream"), "{text}");
}

#[tokio::test]
async fn invalid_changes_are_refused_with_the_validation_messages_and_change_nothing() {
    let app = Upstream::echo("app");
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("changes.json");
    let gw = TestGateway::start(&config(&store, &app));
    let mut admin = Admin::connect(&gw.gateway).await;
    let generation = gw.gateway.shared().generation();

    // Compiled like the file: an unknown upstream is named with the route's name.
    let reply = admin.call("PUT", "/routes/broken", r#"{"match": {"path": "/b/**"}, "upstream": "nowhere"}"#).await;
    assert_eq!(reply.status, 422, "{}", reply.text());
    let body = reply.json();
    assert_eq!(body["error"]["code"], "invalid_config");
    let errors = body["error"]["errors"].as_array().unwrap();
    assert!(
        errors
            .iter()
            .any(|e| e["path"] == "routes[\"broken\"].upstream" && e["message"].as_str().unwrap().contains("nowhere")),
        "{body}"
    );
    // Deleting an upstream that routes use.
    let reply = admin.call("DELETE", "/upstreams/app", "").await;
    assert_eq!(reply.status, 422, "{}", reply.text());
    assert!(reply.text().contains("routes[0].upstream"), "{}", reply.text());

    // Malformed bodies: every structural error with its path.
    for (body, path, words) in [
        ("", "", "body is required"),
        ("{", "", "not JSON"),
        ("[1]", "", "object"),
        (r#"{"upstream": "app", "math": {}}"#, "math", "unknown field"),
        (r#"{"upstream": "app", "priority": "high"}"#, "priority", ""),
        (r#"{"name": "other", "upstream": "app"}"#, "name", "URL"),
    ] {
        let reply = admin.call("PUT", "/routes/r1", body).await;
        assert_eq!(reply.status, 400, "{body}: {}", reply.text());
        let json = reply.json();
        let errors = json["error"]["errors"].as_array().unwrap();
        assert!(
            errors.iter().any(|e| e["path"] == path && e["message"].as_str().unwrap().contains(words)),
            "{body}: {json}"
        );
    }
    for name in ["a%20b", "a%0Ab", &"x".repeat(129)] {
        let reply = admin.call("PUT", &format!("/routes/{name}"), r#"{"upstream": "app"}"#).await;
        assert_eq!(reply.status, 400, "{name}: {}", reply.text());
    }
    let reply = admin.call("PUT", "/upstreams/u", r#"{"endpoints": ["ftp://x"]}"#).await;
    assert_eq!(reply.status, 422, "{}", reply.text());
    let body = reply.json();
    assert!(
        body["error"]["errors"].as_array().unwrap().iter().any(|e| e["path"] == "upstreams.u.endpoints[0]"
            && e["message"].as_str().unwrap().contains("unsupported scheme")),
        "{body}"
    );
    assert_eq!(admin.call("DELETE", "/upstreams/nothing", "").await.status, 404);
    assert_eq!(admin.call("GET", "/upstreams/nothing", "").await.status, 404);

    // Nothing of it took effect or was written.
    assert_eq!(gw.gateway.shared().generation(), generation);
    assert!(!store.exists(), "no change, no store");
    assert_eq!(admin.call("GET", "/changes", "").await.json()["changes"], serde_json::json!({}));

    // `${…}` in a body is text, never the gateway's environment.
    let route = r#"{"match": {"path": "/lit/**"}, "upstream": "app",
        "policies": [{"request_headers": {"set": {"x-literal": "${HOME}"}}}]}"#;
    let reply = admin.call("PUT", "/routes/literal", route).await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    let stored = std::fs::read_to_string(&store).unwrap();
    assert!(stored.contains("${HOME}"), "{stored}");
    let mut client = Client::connect(gw.addr()).await;
    assert_eq!(client.get("/lit/x").await.status, 200);
    assert_eq!(app.seen().last().unwrap().headers["x-literal"], "${HOME}");

    // A broken config file refuses changes (they would be compiled against it) and says why.
    gw.write_config("listeners: [}");
    let reply = admin.call("PUT", "/routes/r2", r#"{"upstream": "app"}"#).await;
    assert_eq!(reply.status, 409, "{}", reply.text());
    assert_eq!(reply.error_code(), "config_file_invalid");
}

#[tokio::test]
async fn without_a_store_the_admin_api_is_read_only() {
    let app = Upstream::echo("app");
    let gw = TestGateway::start(&format!(
        r#"admin: {{ address: "127.0.0.1:0", token: "{TOKEN}" }}
listeners: [{{ name: public, address: "127.0.0.1:0" }}]
upstreams: {{ app: {{ endpoints: ["{}"] }} }}
routes: [{{ name: app, upstream: app }}]
consumers: [{{ name: alice }}]
"#,
        app.url()
    ));
    let mut admin = Admin::connect(&gw.gateway).await;
    for (method, path, body) in [
        ("PUT", "/routes/x", r#"{"upstream": "app"}"#),
        ("DELETE", "/routes/app", ""),
        ("PUT", "/upstreams/x", r#"{"endpoints": ["http://127.0.0.1:1"]}"#),
        ("PUT", "/consumers/bob", "{}"),
        ("POST", "/consumers/alice/credentials?generate=api_key", ""),
        ("DELETE", "/changes", ""),
    ] {
        let reply = admin.call(method, path, body).await;
        assert_eq!(reply.status, 409, "{method} {path}: {}", reply.text());
        assert_eq!(reply.error_code(), "read_only");
    }
    assert_eq!(admin.call("GET", "/routes/app", "").await.status, 200);
    // Without the token, no change at all.
    let reply = admin.client.request("PUT", "/routes/x", &[], r#"{"upstream": "app"}"#).await;
    assert_eq!(reply.status, 401);
}

#[tokio::test]
async fn consumers_and_credentials_are_managed_and_keys_are_stored_hashed() {
    let app = Upstream::echo("app");
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("changes.json");
    let gw = TestGateway::start(&format!(
        r#"admin: {{ address: "127.0.0.1:0", token: "{TOKEN}", store: "{}" }}
listeners: [{{ name: public, address: "127.0.0.1:0" }}]
upstreams: {{ app: {{ endpoints: ["{}"] }} }}
consumers: [{{ name: alice, groups: [staff], credentials: [{{ api_key: "alice-key-0123456789" }}] }}]
routes:
  - name: api
    upstream: app
    policies: [{{ api_key: {{ key_from: [{{ header: x-api-key }}] }} }}]
"#,
        store.display(),
        app.url()
    ));
    let mut admin = Admin::connect(&gw.gateway).await;
    let mut client = Client::connect(gw.addr()).await;
    let with_key = |key: &str| vec![("x-api-key", key.to_owned())];
    async fn status(client: &mut Client, headers: Vec<(&str, String)>) -> u16 {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        client.request("GET", "/x", &headers, "").await.status.as_u16()
    }

    // A new consumer with a key given in clear: it works at once, and only its hash is stored.
    let bob_key = "bob-key-abcdefghijklmnop";
    let reply = admin
        .call(
            "PUT",
            "/consumers/bob",
            &format!(r#"{{"plan": "pro", "credentials": [{{"api_key": "{bob_key}", "label": "laptop"}}]}}"#),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    assert_eq!(status(&mut client, with_key(bob_key)).await, 200);
    assert_eq!(app.seen().last().unwrap().headers["x-consumer-name"], "bob");
    let stored = std::fs::read_to_string(&store).unwrap();
    assert!(!stored.contains(bob_key), "the store holds no key: {stored}");
    assert!(stored.contains("api_key_sha256"));

    // Short keys are refused before anything is hashed.
    let reply = admin.call("PUT", "/consumers/carol", r#"{"credentials": [{"api_key": "short"}]}"#).await;
    assert_eq!(reply.status, 400);
    assert!(reply.text().contains("credentials[0].api_key"), "{}", reply.text());

    // A generated key for a consumer of the file: answered once, works, listed by id only.
    let reply = admin.call("POST", "/consumers/alice/credentials?generate=api_key", r#"{"label": "ci"}"#).await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    let generated = reply.json()["api_key"].as_str().unwrap().to_owned();
    let id = reply.json()["id"].as_str().unwrap().to_owned();
    assert!(generated.len() >= 40 && id.starts_with("api_key:"), "{generated} {id}");
    assert_eq!(status(&mut client, with_key(&generated)).await, 200);
    assert_eq!(app.seen().last().unwrap().headers["x-consumer-name"], "alice");
    assert_eq!(status(&mut client, with_key("alice-key-0123456789")).await, 200, "the file's key still works");
    let listed = admin.call("GET", "/consumers/alice/credentials", "").await.text();
    assert!(listed.contains(&id) && listed.contains("\"ci\"") && !listed.contains(&generated), "{listed}");
    let consumers = admin.call("GET", "/consumers", "").await.json();
    let names: Vec<_> = consumers["consumers"].as_array().unwrap().iter().map(|c| c["name"].clone()).collect();
    assert_eq!(names, ["alice", "bob"]);
    assert_eq!(consumers["consumers"][0]["source"], "admin");
    let one = admin.call("GET", "/consumers/alice", "").await.text();
    assert!(!one.contains("alice-key-0123456789"), "secrets are not shown: {one}");

    // The same key twice is a conflict; an unknown consumer is not found.
    let reply = admin.call("POST", "/consumers/bob/credentials", &format!(r#"{{"api_key": "{bob_key}"}}"#)).await;
    assert_eq!(reply.status, 409, "{}", reply.text());
    let reply = admin.call("POST", "/consumers/nobody/credentials?generate=api_key", "").await;
    assert_eq!(reply.status, 404);
    // A key that already belongs to someone else is refused by validation.
    let reply = admin.call("POST", "/consumers/bob/credentials", r#"{"api_key": "alice-key-0123456789"}"#).await;
    assert_eq!(reply.status, 422, "{}", reply.text());

    // Revoking: delete the credential by id, the key stops at once.
    let path = format!("/consumers/alice/credentials/{id}");
    assert_eq!(admin.call("DELETE", &path, "").await.status, 200);
    assert_eq!(status(&mut client, with_key(&generated)).await, 401);
    assert_eq!(admin.call("DELETE", &path, "").await.status, 404);
    // Deleting a consumer: its key stops too.
    assert_eq!(admin.call("DELETE", "/consumers/bob", "").await.status, 200);
    assert_eq!(status(&mut client, with_key(bob_key)).await, 401);
    assert_eq!(admin.call("GET", "/consumers/bob", "").await.status, 404);
}
