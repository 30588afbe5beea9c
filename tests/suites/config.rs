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
    assert_eq!(&*snap.upstreams["u"].endpoints[0].host, "10.0.0.1");
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
        "upstreams.u.endpoints[2]: \"https://b\": https endpoints are not supported yet",
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
