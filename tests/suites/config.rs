//! Config files: the committed JSON Schema and every example stay valid.

use std::path::Path;

#[test]
fn committed_json_schema_is_current() {
    let generated = gatehouse::config::schema::json_schema();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/gatehouse.schema.json");
    if std::env::var_os("UPDATE_SCHEMA").is_some() {
        std::fs::write(&path, &generated).expect("write schema");
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/gatehouse.schema.json is out of date: run `UPDATE_SCHEMA=1 cargo test --test integration committed_json_schema_is_current`"
    );
}

#[test]
fn every_example_config_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("examples dir") {
        let path = entry.expect("entry").path();
        if !matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json")) {
            continue;
        }
        if let Err(errors) = gatehouse::cli::check(&path, &gatehouse::config::Vars::default()) {
            panic!("{} is invalid:\n{errors}", path.display());
        }
        checked += 1;
    }
    assert!(checked >= 1, "no examples found in {}", dir.display());
}

use gatehouse::config::{self, ConfigSource, Vars};

fn compile_text(text: &str, vars: Vars) -> Result<gatehouse::state::Snapshot, config::ConfigErrors> {
    let loaded = config::load(&ConfigSource::Text { name: "test.yaml".into(), text: text.into() }, &vars)?;
    let registry = gatehouse::state::registry::Registry::new();
    let ctx = config::compile::Context { registry: &registry, bound: None, generation: 1, dry_run: true };
    config::compile::compile(&loaded.config, &ctx).map_err(|d| loaded.locate(d))
}

#[test]
fn variables_are_interpolated_with_defaults() {
    let text = r#"
server: { workers: "${WORKERS:-3}" }
listeners: [{ name: public, address: "${LISTEN}" }]
upstreams:
  u: { endpoints: ["http://${UPSTREAM_HOST:-10.0.0.1}:8080"] }
routes: [{ name: r, upstream: u, policies: [{ request_headers: { set: { x-literal: "$${NOT_A_VAR}" } } }] }]
"#;
    let vars = Vars::with(vec![("LISTEN".into(), "127.0.0.1:8081".into())]);
    let snap = compile_text(text, vars).unwrap();
    assert_eq!(snap.server.workers, 3);
    assert_eq!(snap.listeners[0].address.port(), 8081);
    assert_eq!(&*snap.upstreams["u"].members().endpoints[0].host, "10.0.0.1");
    assert_eq!(snap.config.routes[0].policies.len(), 1);
    let errors = compile_text(text, Vars::default()).unwrap_err();
    assert_eq!(errors.diagnostics.len(), 1, "{errors}");
    assert!(errors.to_string().contains("LISTEN"), "{errors}");
}

#[test]
fn all_structural_errors_are_reported_together() {
    let text = r#"
listeners: [{ name: public, adress: "127.0.0.1:1" }]
upstreams:
  u: { endpoints: ["http://a:1"], balance: fastest }
routes:
  - { name: r, upstream: u, timeout: 30 }
  - { name: s, upstream: u, policies: [{ rate_limiter: {} }] }
"#;
    let errors = compile_text(text, Vars::default()).unwrap_err();
    let text = errors.to_string();
    for expected in ["listeners[0].adress", "upstreams.u.balance", "routes[0].timeout", "routes[1].policies[0]"] {
        assert!(text.contains(expected), "{expected} missing from:\n{text}");
    }
    assert!(text.contains("add a unit, e.g. 30s or 30ms"), "{text}");
    assert!(errors.diagnostics.iter().all(|d| d.span.is_some()), "every error has a position:\n{text}");
}

#[test]
fn semantic_errors_name_what_is_wrong() {
    let text = r#"
listeners:
  - { name: public, address: "127.0.0.1:1" }
  - { name: public, address: "127.0.0.1:1" }
upstreams:
  u: { endpoints: ["http://a:1", "http://a:1", "https://b"] }
routes:
  - { name: r, match: { path: "/a/{x}", methods: ["G ET"], headers: { "bad header": y } }, upstream: u, rewrite: "/b/{y}" }
  - { name: r, listeners: [private], strip_prefix: /a, rewrite: /b, preserve_host: true, host_rewrite: h, upstream: u }
  - { name: lonely }
  - { name: q, match: { query: { v: { prefix: a, regex: b } } }, upstream: u }
"#;
    let errors = compile_text(text, Vars::default()).unwrap_err();
    let text = errors.to_string();
    for expected in [
        "listeners[1].name: listener \"public\" is defined twice",
        "listeners[1].address: 127.0.0.1:1 is already used",
        "upstreams.u.endpoints[1]: endpoint http://a:1 is listed twice",
        "upstreams.u.endpoints: mix of http:// and https:// endpoints",
        "routes[0].match.methods[0]",
        "routes[0].match.headers.bad header",
        "routes[1].name: route \"r\" is already defined at routes[0]",
        "routes[1].listeners[0]: no listener is named \"private\"",
        "routes[1].rewrite: use either strip_prefix or rewrite",
        "routes[1].host_rewrite: use either preserve_host or host_rewrite",
        "routes[2]: a route needs an upstream",
        "routes[3].match.query.v: use exactly one of exact, prefix, regex or present",
    ] {
        assert!(text.contains(expected), "{expected:?} missing from:\n{text}");
    }
}

#[test]
fn hostile_config_text_is_rejected_cleanly() {
    let bomb = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n";
    assert!(compile_text(bomb, Vars::default()).is_err());
    let deep = format!("listeners: {}{}", "[".repeat(200), "]".repeat(200));
    assert!(compile_text(&deep, Vars::default()).is_err());
    assert!(
        compile_text("listeners: [{ name: a, address: \"1.2.3.4:1\" }]\n---\nlisteners: []\n", Vars::default())
            .is_err()
    );
    assert!(compile_text(&"x".repeat(config::MAX_CONFIG_BYTES + 1), Vars::default()).is_err());
    assert!(compile_text("\u{0}\u{1}\u{2}", Vars::default()).is_err());
}

#[test]
fn patterns_that_could_never_match_a_normalised_path_are_errors() {
    let text = r#"
listeners: [{ name: public, address: "127.0.0.1:1" }]
upstreams: { u: { endpoints: ["http://a:1"] } }
routes:
  - { name: a, match: { path: "/%7Euser/**" }, upstream: u }
  - { name: b, match: { path: "/a//b" }, upstream: u }
  - { name: c, match: { path: { prefix: "/x/./y" } }, upstream: u }
  - { name: d, match: { path: "/caf%c3%a9" }, upstream: u }
  - { name: e, strip_prefix: "/", upstream: u }
  - { name: f, strip_prefix: "2", upstream: u }
  - { name: g, strip_prefix: 0, upstream: u }
"#;
    let text = compile_text(text, Vars::default()).unwrap_err().to_string();
    for expected in [
        "routes[0].match.path: \"/%7Euser/**\" never matches: requests are normalised first; write \"/~user/**\"",
        "routes[1].match.path: \"/a//b\" never matches",
        "routes[2].match.path: \"/x/./y\" never matches",
        "write \"/caf%C3%A9\"",
        "routes[4].strip_prefix: stripping \"/\" changes nothing",
        "routes[5].strip_prefix: \"2\" is a string; to strip 2 segments write the number without quotes",
        "routes[6].strip_prefix: strip at least 1 segment",
    ] {
        assert!(text.contains(expected), "{expected:?} missing from:\n{text}");
    }
}

#[test]
fn empty_configs_extension_keys_and_conflicting_answers() {
    let errors = compile_text("# nothing here\n", Vars::default()).unwrap_err().to_string();
    assert!(errors.contains("the config is empty"), "{errors}");
    let text = r#"
x-common: &timeouts { connect: 1s, response_header: 5s }
listeners: [{ name: public, address: "127.0.0.1:1" }]
upstreams:
  u: { endpoints: ["http://a:1"], timeouts: *timeouts }
routes:
  - { name: a, upstream: u }
"#;
    let snap = compile_text(text, Vars::default()).unwrap();
    assert_eq!(snap.upstreams["u"].connect_timeout, std::time::Duration::from_secs(1), "x- keys hold anchors");
    let text = r#"
listeners: [{ name: public, address: "127.0.0.1:1" }]
upstreams: { u: { endpoints: ["http://a:1"] } }
policies: [{ redirect: { location: "https://elsewhere.example/" } }]
routes:
  - { name: both, upstream: u, policies: [{ direct_response: { status: 200 } }] }
  - { name: two-answers, policies: [{ direct_response: { status: 200 } }, { redirect: { location: /x } }] }
  - { name: bad-status, policies: [{ direct_response: { status: 600 } }] }
  - { name: two-types, policies: [{ direct_response: { status: 200, content_type: text/plain, headers: { Content-Type: a/b } } }] }
"#;
    let errors = compile_text(text, Vars::default()).unwrap_err().to_string();
    for expected in [
        "routes[0].upstream: this route answers by itself",
        "routes[1].policies: a route answers with a redirect or a direct_response, not both",
        "routes[2].policies[0].direct_response.status: 600 is not a valid final status code",
        "routes[3].policies[0].direct_response.content_type: set the content type either here or in headers",
    ] {
        assert!(errors.contains(expected), "{expected:?} missing from:\n{errors}");
    }
    let lines: Vec<&str> = errors.lines().skip(1).collect();
    let mut sorted = lines.clone();
    sorted.sort_by_key(|l| l.split(':').nth(1).and_then(|n| n.parse::<u32>().ok()));
    assert_eq!(lines, sorted, "errors are listed in file order");
}

#[test]
fn discovery_and_slow_start_settings_are_checked() {
    let text = r#"
listeners: [{ name: public, address: "127.0.0.1:1" }]
resolver: { nameservers: ["10.0.0.1", "10.0.0.2:5353", "nameserver"] }
tracing: { enabled: true, sampling: 1.5 }
upstreams:
  both: { endpoints: ["http://a:1"], discovery: { type: file, path: /x } }
  none: {}
  no_port: { discovery: { type: dns, name: svc.internal } }
  bad_name: { discovery: { type: dns, name: "http://x", port: 80 } }
  srv_port: { discovery: { type: srv, name: _http._tcp.x, port: 80 } }
  no_path: { discovery: { type: file } }
  fast: { discovery: { type: file, path: /x, interval: 1ms } }
  hashed: { endpoints: ["http://a:1"], balance: consistent_hash, hash_on: client_ip, slow_start: 10s }
routes:
  - { name: r, upstream: both }
  - { name: t, upstream: hashed, timeout: { per_try: 0ms } }
  - { name: v, upstream: hashed, timeout: 0s }
"#;
    let errors = compile_text(text, Vars::default()).unwrap_err();
    let text = errors.to_string();
    for expected in [
        "resolver.nameservers[2]: `nameserver` is not ip or ip:port",
        "upstreams.both.discovery: list `endpoints` or use `discovery`, not both",
        "upstreams.none.endpoints: an upstream needs at least one endpoint, or `discovery`",
        "upstreams.no_port.discovery.port",
        "upstreams.bad_name.discovery.name: `http://x` is not a DNS name",
        "upstreams.srv_port.discovery.port: does not apply to `type: srv`",
        "upstreams.no_path.discovery.path",
        "upstreams.fast.discovery.interval: at least 100ms",
        "upstreams.hashed.slow_start: does not apply to consistent_hash",
        "routes[1].timeout.per_try: must be at least 1ms",
        "routes[2].timeout: must be at least 1ms",
        "tracing.sampling: a share between 0.0 and 1.0",
    ] {
        assert!(text.contains(expected), "{expected:?} missing from:\n{text}");
    }
    let text = r#"
listeners: [{ name: public, address: "127.0.0.1:1" }]
upstreams: { u: { endpoints: ["http://a:1"] } }
routes: [{ name: r, upstream: u, timeout: { total: 1s, retry: 2 } }, { name: s, upstream: u, timeout: [1s] }]
"#;
    let text = compile_text(text, Vars::default()).unwrap_err().to_string();
    assert!(text.contains("routes[0].timeout.retry: unknown field"), "{text}");
    assert!(text.contains("routes[1].timeout"), "{text}");
}
