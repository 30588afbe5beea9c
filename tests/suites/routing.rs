//! Routing through a running gateway: hosts, paths, methods, headers, query, precedence,
//! 404/405, rewrites and the upstream Host header.

use crate::common::{Client, TestGateway, Upstream};

/// One echo upstream per name, and a gateway whose routes send to them by name.
struct Setup {
    gw: TestGateway,
    _upstreams: Vec<Upstream>,
}

fn setup(names: &[&str], routes: &str) -> Setup {
    let upstreams: Vec<Upstream> = names.iter().map(|n| Upstream::echo(n)).collect();
    let mut config = String::from("listeners: [{ name: public, address: \"127.0.0.1:0\" }]\nupstreams:\n");
    for u in &upstreams {
        config.push_str(&format!("  {}: {{ endpoints: [\"{}\"] }}\n", u.name, u.url()));
    }
    config.push_str("routes:\n");
    config.push_str(routes);
    Setup { gw: TestGateway::start(&config), _upstreams: upstreams }
}

impl Setup {
    /// Which upstream instance answered (or the gateway's error code).
    async fn who(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> String {
        let mut client = Client::connect(self.gw.addr()).await;
        let reply = client.request(method, path, headers, "").await;
        if reply.status.is_success() {
            reply.json()["instance"].as_str().unwrap_or("?").to_owned()
        } else {
            format!("{} {}", reply.status.as_u16(), reply.error_code())
        }
    }

    async fn uri_seen(&self, path: &str) -> String {
        let mut client = Client::connect(self.gw.addr()).await;
        client.get(path).await.json()["uri"].as_str().unwrap_or("?").to_owned()
    }
}

#[tokio::test]
async fn hosts_route_exact_then_wildcard_then_any() {
    let s = setup(
        &["exact", "wild", "deep", "any"],
        r#"
  - { name: exact, match: { host: api.example.com }, upstream: exact }
  - { name: wild, match: { host: "*.example.com" }, upstream: wild }
  - { name: deep, match: { host: "*.eu.example.com" }, upstream: deep }
  - { name: any, upstream: any }
"#,
    );
    assert_eq!(s.who("GET", "/", &[("host", "api.example.com")]).await, "exact");
    assert_eq!(s.who("GET", "/", &[("host", "API.Example.COM:8080")]).await, "exact", "case and port do not matter");
    assert_eq!(s.who("GET", "/", &[("host", "shop.example.com")]).await, "wild");
    assert_eq!(s.who("GET", "/", &[("host", "shop.eu.example.com")]).await, "deep", "more labels win");
    assert_eq!(s.who("GET", "/", &[("host", "example.com")]).await, "any", "a wildcard needs a label");
    assert_eq!(s.who("GET", "/", &[("host", "other.org")]).await, "any");
}

#[tokio::test]
async fn path_patterns_and_their_precedence() {
    let s = setup(
        &["exact", "template", "prefix", "regex", "catchall", "deep", "files"],
        r#"
  - { name: catchall, match: { path: "/**" }, upstream: catchall }
  - { name: prefix, match: { path: "/users/**" }, upstream: prefix }
  - { name: template, match: { path: "/users/{id}" }, upstream: template }
  - { name: exact, match: { path: /users/me }, upstream: exact }
  - { name: deep, match: { path: "/users/{id}/orders/*" }, upstream: deep }
  - { name: files, match: { path: "/files/{*rest}" }, upstream: files }
  - { name: regex, match: { path: { regex: "/v[0-9]+/status" } }, upstream: regex }
"#,
    );
    assert_eq!(s.who("GET", "/users/me", &[]).await, "exact");
    assert_eq!(s.who("GET", "/users/42", &[]).await, "template");
    assert_eq!(s.who("GET", "/users", &[]).await, "prefix");
    assert_eq!(s.who("GET", "/users/42/profile", &[]).await, "prefix");
    assert_eq!(s.who("GET", "/users/42/orders/7", &[]).await, "deep");
    assert_eq!(s.who("GET", "/usersx", &[]).await, "catchall", "prefixes stop at segment boundaries");
    assert_eq!(s.who("GET", "/files/a/b/c.txt", &[]).await, "files");
    assert_eq!(s.who("GET", "/v2/status", &[]).await, "regex", "a regex beats the catch-all");
    assert_eq!(s.who("GET", "/v2/status/x", &[]).await, "catchall", "regexes are anchored");
}

#[tokio::test]
async fn methods_give_405_with_allow_when_only_the_method_is_wrong() {
    let s = setup(
        &["reader", "writer"],
        r#"
  - { name: read, match: { path: "/items/**", methods: [GET, HEAD] }, upstream: reader }
  - { name: write, match: { path: "/items/**", methods: [post, PUT] }, upstream: writer }
"#,
    );
    assert_eq!(s.who("GET", "/items/1", &[]).await, "reader");
    assert_eq!(s.who("POST", "/items", &[]).await, "writer", "methods are case-insensitive in config");
    let mut client = Client::connect(s.gw.addr()).await;
    let reply = client.request("DELETE", "/items/1", &[], "").await;
    assert_eq!(reply.status, 405);
    assert_eq!(reply.header("allow"), Some("GET, HEAD, POST, PUT"));
    assert_eq!(reply.error_code(), "method_not_allowed");
    let reply = client.get("/elsewhere").await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.error_code(), "route_not_found");
    assert_eq!(reply.json()["error"]["status"], 404);
}

#[tokio::test]
async fn headers_and_query_parameters_select_routes() {
    let s = setup(
        &["canary", "beta", "debug", "v2", "nodebug", "stable"],
        r#"
  - { name: stable, match: { path: "/**" }, upstream: stable }
  - { name: canary, match: { path: "/**", headers: { x-env: canary } }, upstream: canary }
  - { name: beta, match: { path: "/**", headers: { x-version: { regex: "2\\.[0-9]+" } } }, upstream: beta }
  - { name: debug, match: { path: "/**", headers: { x-debug: { present: true } }, query: { trace: { present: true } } }, upstream: debug }
  - { name: v2, match: { path: "/**", query: { version: "2" } }, upstream: v2 }
  - { name: nodebug, match: { path: "/nd", headers: { x-debug: { present: false } } }, upstream: nodebug }
"#,
    );
    assert_eq!(s.who("GET", "/", &[]).await, "stable");
    assert_eq!(s.who("GET", "/", &[("x-env", "canary")]).await, "canary");
    assert_eq!(s.who("GET", "/", &[("x-env", "Canary")]).await, "stable", "values match exactly");
    assert_eq!(s.who("GET", "/", &[("x-version", "2.13")]).await, "beta");
    assert_eq!(s.who("GET", "/", &[("x-version", "12.1")]).await, "stable", "header regexes are anchored");
    assert_eq!(s.who("GET", "/?trace", &[("x-debug", "1")]).await, "debug", "two matchers beat one");
    assert_eq!(s.who("GET", "/", &[("x-debug", "1")]).await, "stable");
    assert_eq!(s.who("GET", "/?a=1&version=2", &[]).await, "v2");
    assert_eq!(s.who("GET", "/?version=%32", &[]).await, "v2", "query values are percent-decoded");
    assert_eq!(s.who("GET", "/?version=3", &[]).await, "stable");
    assert_eq!(s.who("GET", "/nd", &[]).await, "nodebug");
    assert_eq!(s.who("GET", "/nd", &[("x-debug", "1")]).await, "stable");
}

#[tokio::test]
async fn priority_overrides_specificity() {
    let s = setup(
        &["specific", "maintenance"],
        r#"
  - { name: specific, match: { path: /orders/today }, upstream: specific }
  - { name: maintenance, priority: 10, match: { path: "/orders/**" }, upstream: maintenance }
"#,
    );
    assert_eq!(s.who("GET", "/orders/today", &[]).await, "maintenance");
}

#[tokio::test]
async fn paths_are_rewritten_with_strip_prefix_and_templates() {
    let s = setup(
        &["svc"],
        r#"
  - { name: strip, match: { path: "/api/**" }, upstream: svc, strip_prefix: /api }
  - { name: segments, match: { path: "/v1/svc/**" }, upstream: svc, strip_prefix: 2 }
  - { name: template, match: { path: "/users/{id}/avatar" }, upstream: svc, rewrite: "/images/avatars/{id}.png" }
  - { name: tail, match: { path: "/old/**" }, upstream: svc, rewrite: "/new/{**}" }
  - { name: catchall, match: { path: "/files/{*rest}" }, upstream: svc, rewrite: "/storage/{rest}" }
  - { name: regex, match: { path: { regex: "/r/(?P<year>[0-9]{4})/(?P<slug>[a-z-]+)" } }, upstream: svc, rewrite: "/posts/{slug}/{year}" }
"#,
    );
    assert_eq!(s.uri_seen("/api/users?page=2").await, "/users?page=2");
    assert_eq!(s.uri_seen("/api").await, "/");
    assert_eq!(s.uri_seen("/v1/svc/a/b").await, "/a/b");
    assert_eq!(s.uri_seen("/users/42/avatar").await, "/images/avatars/42.png");
    assert_eq!(s.uri_seen("/old/x/y?q=1").await, "/new/x/y?q=1");
    assert_eq!(s.uri_seen("/files/a/b.txt").await, "/storage/a/b.txt");
    assert_eq!(s.uri_seen("/r/2026/hello-world?x=1").await, "/posts/hello-world/2026?x=1");
}

#[tokio::test]
async fn the_upstream_host_header_follows_the_route() {
    let upstream = Upstream::echo("svc");
    let config = format!(
        "listeners: [{{ name: public, address: \"127.0.0.1:0\" }}]\n\
         upstreams:\n  svc: {{ endpoints: [\"{}\"] }}\n\
         routes:\n\
         \x20 - {{ name: default, match: {{ path: /default }}, upstream: svc }}\n\
         \x20 - {{ name: preserve, match: {{ path: /preserve }}, upstream: svc, preserve_host: true }}\n\
         \x20 - {{ name: rewrite, match: {{ path: /rewrite }}, upstream: svc, host_rewrite: internal.svc }}\n",
        upstream.url()
    );
    let gw = TestGateway::start(&config);
    let mut client = Client::connect(gw.addr()).await;
    for path in ["/default", "/preserve", "/rewrite"] {
        client.request("GET", path, &[("host", "public.example.com")], "").await;
    }
    let hosts: Vec<String> = upstream.seen().iter().map(|s| s.headers["host"].to_str().unwrap().to_owned()).collect();
    assert_eq!(hosts, vec![upstream.addr.to_string(), "public.example.com".into(), "internal.svc".into()]);
}

#[tokio::test]
async fn routes_can_be_limited_to_listeners() {
    let upstream = Upstream::echo("svc");
    let config = format!(
        "listeners:\n  - {{ name: public, address: \"127.0.0.1:0\" }}\n  - {{ name: internal, address: \"127.0.0.1:0\" }}\n\
         upstreams:\n  svc: {{ endpoints: [\"{}\"] }}\n\
         routes:\n\
         \x20 - {{ name: everywhere, match: {{ path: /shared }}, upstream: svc }}\n\
         \x20 - {{ name: internal-only, listeners: [internal], match: {{ path: /ops }}, upstream: svc }}\n",
        upstream.url()
    );
    let gw = TestGateway::start(&config);
    let public = gw.listener("public");
    let internal = gw.listener("internal");
    assert_ne!(public, internal);
    assert_eq!(crate::common::get(public, "/shared").await.status, 200);
    assert_eq!(crate::common::get(internal, "/shared").await.status, 200);
    assert_eq!(crate::common::get(public, "/ops").await.status, 404);
    assert_eq!(crate::common::get(internal, "/ops").await.status, 200);
}

#[tokio::test]
async fn direct_responses_redirects_and_header_filters() {
    let upstream = Upstream::echo("svc");
    let config = format!(
        r#"listeners: [{{ name: public, address: "127.0.0.1:0" }}]
upstreams:
  svc: {{ endpoints: ["{}"] }}
policies:
  - response_headers: {{ set: {{ x-served-by: gatehouse }} }}
routes:
  - name: health
    match: {{ path: /health }}
    policies:
      - direct_response: {{ status: 200, body: '{{"ok":true}}', headers: {{ cache-control: no-cache }} }}
  - name: moved
    match: {{ path: "/old-docs/{{*rest}}" }}
    policies:
      - redirect: {{ location: "https://docs.example.com/{{rest}}", status: 301 }}
  - name: api
    match: {{ path: "/api/**" }}
    upstream: svc
    policies:
      - request_headers: {{ set: {{ x-tenant: blue }}, add: {{ x-tag: added }}, remove: [x-remove-me] }}
      - response_headers: {{ set: {{ x-route: api }}, remove: [content-type] }}
"#,
        upstream.url()
    );
    let gw = TestGateway::start(&config);
    let mut client = Client::connect(gw.addr()).await;
    let health = client.get("/health").await;
    assert_eq!(health.status, 200);
    assert_eq!(health.text(), r#"{"ok":true}"#);
    assert_eq!(health.header("content-type"), Some("application/json"));
    assert_eq!(health.header("cache-control"), Some("no-cache"));
    assert_eq!(health.header("x-served-by"), Some("gatehouse"), "global policy applies");
    assert!(health.header("x-request-id").is_some());

    let moved = client.get("/old-docs/guide/intro?lang=en").await;
    assert_eq!(moved.status, 301);
    assert_eq!(moved.header("location"), Some("https://docs.example.com/guide/intro?lang=en"));

    let api =
        client.request("GET", "/api/x", &[("x-tenant", "red"), ("x-remove-me", "1"), ("x-tag", "client")], "").await;
    let seen = &upstream.seen()[0].headers;
    assert_eq!(seen.get_all("x-tenant").iter().collect::<Vec<_>>(), vec!["blue"]);
    assert_eq!(seen.get_all("x-tag").iter().collect::<Vec<_>>(), vec!["client", "added"]);
    assert!(seen.get("x-remove-me").is_none());
    assert_eq!(api.header("x-route"), Some("api"));
    assert!(api.header("content-type").is_none());
    assert_eq!(api.header("x-served-by"), None, "the route's response_headers replaces the global one");
}

#[tokio::test]
async fn hosts_in_fully_qualified_form_and_http_1_0_without_host() {
    let upstream = Upstream::echo("svc");
    let config = format!(
        "listeners: [{{ name: public, address: \"127.0.0.1:0\" }}]\n\
         upstreams:\n  svc: {{ endpoints: [\"{}\"] }}\n\
         routes:\n\
         \x20 - {{ name: api, match: {{ host: api.example.com }}, upstream: svc }}\n\
         \x20 - {{ name: keep, match: {{ path: /keep }}, upstream: svc, preserve_host: true }}\n",
        upstream.url()
    );
    let gw = TestGateway::start(&config);
    let mut client = Client::connect(gw.addr()).await;
    let reply = client.request("GET", "/", &[("host", "api.example.com.")], "").await;
    assert_eq!(reply.status, 200, "a trailing dot names the same host");
    let mut conn = crate::common::RawConn::connect(gw.addr()).await;
    conn.send(b"GET /keep HTTP/1.0\r\n\r\n").await;
    let reply = conn.read_response(std::time::Duration::from_secs(2)).await.expect("response");
    assert_eq!(reply.status, 200);
    let seen = upstream.seen();
    assert_eq!(seen.last().unwrap().headers["host"], upstream.addr.to_string(), "no Host to preserve: the endpoint's");
}
