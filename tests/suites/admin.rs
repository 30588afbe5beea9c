//! The admin API's bearer token, and the rule that an admin listener reachable from other hosts
//! must have one.

use crate::common::{Client, TestGateway, Upstream};

const TOKEN: &str = "s3cret-admin-token-0123456789";

/// A gateway whose admin API needs `TOKEN`, with `rest` (upstreams, routes …) after its listener.
fn with_token(rest: &str) -> TestGateway {
    TestGateway::start(&format!(
        "admin: {{ address: \"127.0.0.1:0\", token: \"{TOKEN}\" }}\nlisteners: [{{ name: public, address: \"127.0.0.1:0\" }}]\n{rest}"
    ))
}

#[tokio::test]
async fn with_a_token_every_call_but_health_needs_it() {
    let app = Upstream::echo("app");
    let gw = with_token(&format!(
        "upstreams: {{ app: {{ endpoints: [\"{}\"] }} }}\nroutes: [{{ name: all, upstream: app }}]\n",
        app.url()
    ));
    let mut admin = Client::connect(gw.gateway.admin_addr().unwrap()).await;
    assert_eq!(admin.get("/health").await.status, 200, "liveness stays open");
    let bearer = format!("Bearer {TOKEN}");
    let lowercase = format!("bearer {TOKEN}");
    let almost = format!("Bearer {}x", TOKEN);
    let prefix = format!("Bearer {}", &TOKEN[..10]);
    for path in ["/ready", "/config", "/routes", "/upstreams", "/metrics", "/reloads"] {
        for bad in [
            None,
            Some("Bearer"),
            Some("Bearer "),
            Some("Basic YWRtaW46YWRtaW4="),
            Some(almost.as_str()),
            Some(prefix.as_str()),
            Some(TOKEN),
        ] {
            let headers: Vec<(&str, &str)> = bad.map(|v| vec![("authorization", v)]).unwrap_or_default();
            let reply = admin.request("GET", path, &headers, "").await;
            assert_eq!(reply.status, 401, "{path} with {bad:?}");
            assert_eq!(reply.error_code(), "unauthorized");
            assert!(reply.header("www-authenticate").is_some_and(|h| h.starts_with("Bearer")));
        }
        for good in [&bearer, &lowercase] {
            let reply = admin.request("GET", path, &[("authorization", good.as_str())], "").await;
            assert_eq!(reply.status, 200, "{path}: {}", reply.text());
        }
    }
    // A reload needs the token too.
    assert_eq!(admin.request("POST", "/reload", &[], "").await.status, 401);
    assert_eq!(admin.request("POST", "/reload", &[("authorization", &bearer)], "").await.status, 200);
    // The running config does not echo the token.
    let config = admin.request("GET", "/config", &[("authorization", &bearer)], "").await.text();
    assert!(!config.contains(TOKEN), "{config}");
    assert!(config.contains("<redacted>"));
}

#[test]
fn an_admin_listener_reachable_from_other_hosts_needs_a_token() {
    let check = |admin: &str| {
        let text = format!(
            "admin: {admin}\nlisteners: [{{ name: public, address: \"127.0.0.1:1\" }}]\nupstreams: {{ u: {{ endpoints: [\"http://a:1\"] }} }}\nroutes: [{{ name: r, upstream: u }}]\n"
        );
        let loaded = gatehouse::config::parse("test.yaml", &text, &gatehouse::config::Vars::default()).unwrap();
        let registry = gatehouse::state::registry::Registry::new();
        let ctx =
            gatehouse::config::compile::Context { registry: &registry, bound: None, generation: 1, dry_run: true };
        gatehouse::config::compile::compile(&loaded.config, &ctx).map(|_| ()).map_err(|d| loaded.locate(d).to_string())
    };
    let open = check("{ address: \"0.0.0.0:9901\" }").unwrap_err();
    assert!(open.contains("admin.token") && open.contains("reachable from other hosts"), "{open}");
    assert!(check("{ address: \"[::]:9901\" }").is_err());
    check(&format!("{{ address: \"0.0.0.0:9901\", token: \"{TOKEN}\" }}")).unwrap();
    check("{ address: \"127.0.0.1:9901\" }").unwrap();
    check("{ address: \"[::1]:9901\" }").unwrap();
    let short = check("{ address: \"127.0.0.1:9901\", token: short }").unwrap_err();
    assert!(short.contains("at least 16"), "{short}");
    assert!(check("{ address: \"127.0.0.1:9901\", token: \"has a space in it, sadly\" }").is_err());
    // Off is off, wherever it would have listened.
    check("{ enabled: false, address: \"0.0.0.0:9901\" }").unwrap();
}

/// The required top-level keys of a documented JSON response.
fn required_keys(spec: &serde_json::Value, response: &serde_json::Value) -> Vec<String> {
    let response = match response.get("$ref").and_then(|r| r.as_str()) {
        Some(r) => spec.pointer(r.trim_start_matches('#')).unwrap(),
        None => response,
    };
    let Some(schema) = response.pointer("/content/application~1json/schema") else { return Vec::new() };
    let schema = match schema.get("$ref").and_then(|r| r.as_str()) {
        Some(r) => spec.pointer(r.trim_start_matches('#')).unwrap(),
        None => schema,
    };
    schema["required"]
        .as_array()
        .map(|a| a.iter().map(|k| k.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn the_openapi_description_matches_what_the_admin_api_serves() {
    let spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string("docs/admin-openapi.json").unwrap()).unwrap();
    let mut documented: Vec<(String, String)> = Vec::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.push((method.to_uppercase(), path.clone()));
        }
    }
    documented.sort();
    let endpoints = gatehouse::admin::endpoints();
    let mut served: Vec<(String, String)> = endpoints.iter().map(|(m, p, _)| (m.to_string(), p.to_string())).collect();
    served.sort();
    assert_eq!(documented, served, "docs/admin-openapi.json and the admin router differ");

    let app = Upstream::echo("app");
    // With a store, so that the change endpoints answer as they do in use (not 409 read_only):
    // their successes and errors are checked against the description too.
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("changes.json");
    let gw = TestGateway::start(&format!(
        r#"admin: {{ address: "127.0.0.1:0", token: "{TOKEN}", store: "{}" }}
listeners: [{{ name: public, address: "127.0.0.1:0" }}]
consumers: [{{ name: alice, credentials: [{{ api_key: "alice-key-0123456789" }}] }}]
upstreams: {{ app: {{ endpoints: ["{}"] }} }}
routes: [{{ name: all, upstream: app }}]
"#,
        store.display(),
        app.url()
    ));
    let mut seen_statuses = std::collections::BTreeSet::new();
    let mut admin = Client::connect(gw.gateway.admin_addr().unwrap()).await;
    let bearer = format!("Bearer {TOKEN}");
    for (method, path) in &served {
        let operation = &spec["paths"][path][method.to_lowercase()];
        let responses = operation["responses"].as_object().unwrap();
        for name in ["alice", "nobody"] {
            let url = path.replace("{name}", name).replace("{id}", "api_key:0123456789abcdef");
            let reply = admin.request(method, &url, &[("authorization", &bearer)], "").await;
            let status = reply.status.as_u16().to_string();
            seen_statuses.insert(status.clone());
            let documented =
                responses.get(&status).unwrap_or_else(|| panic!("{method} {url} answered {status}, undocumented"));
            let is_json = reply.header("content-type").is_some_and(|c| c.starts_with("application/json"));
            if is_json {
                let body = reply.json();
                for key in required_keys(&spec, documented) {
                    assert!(body.get(&key).is_some(), "{method} {url}: no `{key}` in {body}");
                }
            } else {
                assert!(documented.pointer("/content/application~1json").is_none(), "{method} {url} is not JSON");
            }
            // The security the description declares is the one the router applies and enforces.
            let open = operation.get("security").is_some_and(|s| s.as_array().is_some_and(|a| a.is_empty()));
            let access = endpoints.iter().find(|(m, p, _)| m == method && p == path).unwrap().2;
            assert_eq!(open, access == gatehouse::admin::Access::Open, "{method} {path}");
            let without = admin.request(method, &url, &[], "").await.status.as_u16();
            assert_eq!(without == 401, !open, "{method} {url} without the token: {without}");
            if !path.contains("{name}") {
                break;
            }
        }
    }
    // Answers of every kind were checked, not only refusals.
    for status in ["200", "400", "404"] {
        assert!(seen_statuses.contains(status), "no {status} among {seen_statuses:?}");
    }
    // And a creation: 201 with the documented keys.
    let body = r#"{"name": "fresh", "upstream": "app"}"#;
    let reply = admin.request("PUT", "/routes/fresh", &[("authorization", &bearer)], body).await;
    assert_eq!(reply.status.as_u16(), 201, "{}", reply.text());
    let documented = &spec["paths"]["/routes/{name}"]["put"]["responses"]["201"];
    for key in required_keys(&spec, documented) {
        assert!(reply.json().get(&key).is_some(), "PUT /routes/fresh: no `{key}` in {}", reply.text());
    }
}

#[tokio::test]
async fn explain_answers_over_http_for_the_running_config() {
    let app = Upstream::echo("app");
    let gw = with_token(&format!(
        r#"upstreams: {{ users: {{ endpoints: ["{}"] }} }}
routes:
  - {{ name: users-v2, match: {{ path: "/users/{{id}}", headers: {{ x-version: "2" }} }}, upstream: users, rewrite: "/v2/users/{{id}}" }}
  - {{ name: users, match: {{ path: "/users/**" }}, upstream: users }}
"#,
        app.url()
    ));
    let mut admin = Client::connect(gw.gateway.admin_addr().unwrap()).await;
    let auth = format!("Bearer {TOKEN}");
    let ask = |query: &str| format!("/explain?{query}");
    let reply = admin.request("GET", &ask("url=/users/7&header=x-version:2"), &[("authorization", &auth)], "").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let text = reply.text();
    assert!(text.contains("users-v2") && text.contains("/v2/users/7"), "{text}");
    let reply = admin.request("GET", &ask("url=/users/7&method=post"), &[("authorization", &auth)], "").await;
    assert!(reply.text().contains("users") && !reply.text().contains("/v2/users/7"), "{}", reply.text());
    for bad in ["", "url=/x&verbose=1", "url=/x&method=G%20T", "url=/x&listener=nope", "url=/x&header=no-colon"] {
        let reply = admin.request("GET", &ask(bad), &[("authorization", &auth)], "").await;
        assert_eq!(reply.status, 400, "{bad}: {}", reply.text());
        assert_eq!(reply.error_code(), "bad_request");
    }
    assert_eq!(admin.request("GET", &ask("url=/users/7"), &[], "").await.status, 401);
}
