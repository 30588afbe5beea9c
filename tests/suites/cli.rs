//! The `gatehouse` command: validate, routes, explain, schema, and run with signals.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::Upstream;

fn gatehouse(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gatehouse")).args(args).output().expect("run gatehouse")
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

const BROKEN: &str = r#"listeners:
  - name: public
    address: "not-an-address"
upstreams:
  users:
    endpoints: ["http://127.0.0.1:9000"]
    balanse: round_robin
routes:
  - name: a
    match: { path: "/users/{id" }
    upstream: users
  - name: b
    match: { path: /x, methods: [GET] }
    upstream: nowhere
"#;

#[test]
fn validate_reports_every_error_with_line_column_and_path() {
    let dir = tempfile::tempdir().unwrap();
    // Structure errors first: a typo'd key.
    let file = write(dir.path(), "broken.yaml", BROKEN);
    let out = gatehouse(&["validate", "--config", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("broken.yaml:7:5: upstreams.users.balanse: unknown field"), "{err}");
    // With the structure fixed, every semantic error at once, each located.
    let file = write(dir.path(), "semantic.yaml", &BROKEN.replace("balanse", "balance"));
    let out = gatehouse(&["validate", "--config", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("3 errors"), "{err}");
    assert!(err.contains("semantic.yaml:3:14: listeners[0].address:"), "{err}");
    assert!(err.contains("semantic.yaml:10:20: routes[0].match.path:"), "{err}");
    assert!(err.contains("semantic.yaml:14:15: routes[1].upstream: no upstream is named \"nowhere\""), "{err}");
}

#[test]
fn validate_accepts_a_good_config_and_reports_syntax_errors() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(dir.path(), "good.yaml", "listeners: [{ name: public, address: \"127.0.0.1:8080\" }]\n");
    let out = gatehouse(&["validate", "-c", good.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("ok (1 listener, 0 routes, 0 upstreams)"));
    let bad = write(dir.path(), "bad.yaml", "listeners:\n  - name: [unclosed\n");
    let out = gatehouse(&["validate", "-c", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("bad.yaml:"), "{}", text(&out.stderr));
    let out = gatehouse(&["validate", "-c", "/nonexistent/gatehouse.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("cannot read the config file"));
}

#[test]
fn json_configs_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let json = write(
        dir.path(),
        "gatehouse.json",
        r#"{"listeners":[{"name":"public","address":"127.0.0.1:8080"}],"upstreams":{"u":{"endpoints":["http://127.0.0.1:1"]}},"routes":[{"name":"r","match":{"path":"/x/**"},"upstream":"u"}]}"#,
    );
    let out = gatehouse(&["validate", "-c", json.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

fn demo_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/demo.yaml")
}

#[test]
fn routes_prints_the_table_in_precedence_order() {
    let out = gatehouse(&["routes", "-c", demo_config().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    assert!(table.contains("listener public"), "{table}");
    let health = table.find(" health ").expect("health row");
    let users = table.find(" users ").expect("users row");
    assert!(health < users, "exact /health ranks before the /users/** prefix:\n{table}");
    assert!(table.contains("-> auth, strip_prefix /auth"), "{table}");
    assert!(table.contains("(answers itself); policies: direct_response"), "{table}");
}

#[test]
fn explain_says_which_route_matches_why_and_what_goes_upstream() {
    let config = demo_config();
    let out = gatehouse(&[
        "explain",
        "-c",
        config.to_str().unwrap(),
        "GET",
        "http://localhost:8080/auth//login/../login?x=1",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let text = text(&out.stdout);
    assert!(text.contains("path  /auth/login   (normalised from /auth//login/../login)"), "{text}");
    assert!(text.contains("=> route \"auth\""), "{text}");
    assert!(text.contains("sent as     GET /login?x=1   (by strip_prefix /auth)"), "{text}");
    assert!(text.contains("upstream    auth [http://127.0.0.1:9101]"), "{text}");

    let out = gatehouse(&["explain", "-c", config.to_str().unwrap(), "DELETE", "/tasks/7"]);
    let text2 = String::from_utf8_lossy(&out.stdout);
    assert!(text2.contains("=> 405 method_not_allowed, Allow: GET, POST"), "{text2}");
    assert!(text2.contains("tasks  (/tasks/**)  method not allowed"), "{text2}");

    let out = gatehouse(&["explain", "-c", config.to_str().unwrap(), "GET", "/nothing/here"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("=> 404 route_not_found"));
    let out = gatehouse(&["explain", "-c", config.to_str().unwrap(), "GET", "/a%2Fb"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("=> 400 bad_request"));
}

#[test]
fn schema_prints_the_committed_schema() {
    let out = gatehouse(&["schema"]);
    assert_eq!(out.status.code(), Some(0));
    let committed =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/gatehouse.schema.json")).unwrap();
    assert!(text(&out.stdout) == committed, "`gatehouse schema` differs from docs/gatehouse.schema.json");
}

/// A `gatehouse run` process, killed on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill").args([sig, &child.id().to_string()]).status().unwrap();
    assert!(status.success());
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn run_config(port: u16, upstream: &Upstream, path: &str) -> String {
    format!(
        "admin: {{ enabled: false }}\nserver: {{ workers: 1 }}\nlisteners: [{{ name: public, address: \"127.0.0.1:{port}\" }}]\n\
         upstreams:\n  app: {{ endpoints: [\"{}\"] }}\nroutes:\n  - {{ name: app, match: {{ path: \"{path}\" }}, upstream: app }}\n",
        upstream.url()
    )
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn status_of(port: u16, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    buf.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn run_reloads_on_sighup_and_drains_on_sigterm() {
    let upstream = Upstream::echo("app");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write(dir.path(), "gatehouse.yaml", &run_config(port, &upstream, "/v1/**"));
    let child = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["run", "--no-watch", "-c", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut running = Running(child);
    wait_until("the gateway to serve", || status_of(port, "/v1/x") == Some(200));
    assert_eq!(status_of(port, "/v2/x"), Some(404));

    write(dir.path(), "gatehouse.yaml", &run_config(port, &upstream, "/v2/**"));
    assert_eq!(status_of(port, "/v2/x"), Some(404), "--no-watch: the file alone does not reload");
    signal(&running.0, "-HUP");
    wait_until("SIGHUP to reload", || status_of(port, "/v2/x") == Some(200));

    signal(&running.0, "-TERM");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = running.0.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success());
    let stderr =
        BufReader::new(running.0.stderr.take().unwrap()).lines().map_while(Result::ok).collect::<Vec<_>>().join("\n");
    assert!(stderr.contains("config reloaded"), "{stderr}");
    assert!(stderr.contains("shutting down"), "{stderr}");
}

#[test]
fn run_refuses_an_invalid_config_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), "gatehouse.yaml", "listeners: []\n");
    let out =
        Command::new(env!("CARGO_BIN_EXE_gatehouse")).args(["run", "-c", config.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("at least one listener"), "{}", text(&out.stderr));
}
