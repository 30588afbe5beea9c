//! A binary upgrade under load: SIGUSR2 makes the running gatehouse start a new one with its
//! listening sockets, which serves while the old one drains and exits. No request fails.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::common::Upstream;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One request on a connection of its own; true for a complete 200.
fn one_request(port: u16) -> bool {
    let Ok(mut tcp) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(5)));
    if tcp.write_all(b"GET /up HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").is_err() {
        return false;
    }
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer);
    answer.starts_with(b"HTTP/1.1 200") && answer.ends_with(b"}")
}

fn wait_until(limit: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if ready() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn a_binary_upgrade_under_load_fails_no_request() {
    let app = Upstream::echo("app");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("gatehouse.yaml");
    std::fs::write(
        &config,
        format!(
            "server: {{ workers: 2 }}\nadmin: {{ enabled: false }}\nlisteners: [{{ name: public, address: \"127.0.0.1:{port}\" }}]\nupstreams: {{ app: {{ endpoints: [\"{}\"] }} }}\nroutes: [{{ name: all, upstream: app }}]\n",
            app.url()
        ),
    )
    .unwrap();
    let log = dir.path().join("old.log");
    // A service manager's notification socket, as systemd gives a Type=notify service.
    let notify_path = dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let next_notice = || {
        let mut buf = [0u8; 512];
        let n = notify.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let mut old = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["run", "--config", config.to_str().unwrap(), "--no-watch"])
        .env("NOTIFY_SOCKET", &notify_path)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(10), || one_request(port)), "gatehouse did not start");
    assert!(next_notice().starts_with(&format!("READY=1\nMAINPID={}\n", old.id())));

    // Load: four clients, a new connection per request, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let counter = if one_request(port) { &ok } else { &failed };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let before = ok.load(Ordering::Relaxed);
    let sockets = crate::common::listening_sockets(port);
    assert_eq!(sockets.len(), 2, "one listening socket per worker: {sockets:?}");

    let signal = Command::new("kill").args(["-USR2", &old.id().to_string()]).status().unwrap();
    assert!(signal.success());
    assert!(
        wait_until(Duration::from_secs(20), || old.try_wait().unwrap().is_some()),
        "the old process did not hand over and exit"
    );
    assert!(old.wait().unwrap().success());
    std::thread::sleep(Duration::from_millis(700));
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().unwrap();
    }

    let text = std::fs::read_to_string(&log).unwrap();
    let new_pid: u32 = text
        .lines()
        .find_map(|l| l.split("new_pid=").nth(1))
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no new_pid in the old process's log:\n{text}"));
    // The service manager was told the new main process by the new process (READY) and by the
    // old one, which systemd listens to by default — in either order — and not that it stops.
    let notices = [next_notice(), next_notice()];
    assert!(notices.iter().any(|n| n.starts_with(&format!("READY=1\nMAINPID={new_pid}\n"))), "{notices:?}");
    assert!(notices.contains(&format!("MAINPID={new_pid}")), "{notices:?}");
    // It serves on the very sockets the old one listened on (their accept queues with them).
    assert_eq!(crate::common::listening_sockets(port), sockets, "the new process listens on sockets of its own");
    // The new process serves on its own now, and is stopped the usual way.
    assert!(one_request(port));
    let _ = Command::new("kill").args(["-TERM", &new_pid.to_string()]).status();
    assert_eq!(next_notice(), "STOPPING=1");
    assert!(wait_until(Duration::from_secs(15), || !std::path::Path::new(&format!("/proc/{new_pid}")).exists()));

    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(failed, 0, "{failed} of {} requests failed across the upgrade", ok + failed);
    assert!(ok > before + 50, "the load went on across the upgrade ({before} → {ok})");
}

#[test]
fn sockets_handed_over_are_checked_before_they_are_used() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gatehouse.yaml");
    std::fs::write(&config, "admin: { enabled: false }\nlisteners: [{ name: public, address: \"127.0.0.1:0\" }]\n")
        .unwrap();
    // stdin (a file, not a socket), a descriptor that is not open, and malformed lists.
    for (spec, words) in [
        ("public@127.0.0.1:0=0", "not a socket"),
        ("public@127.0.0.1:0=999", "not a socket"),
        ("public=3", "malformed"),
        ("public@nowhere=3", "malformed"),
        ("public@127.0.0.1:0=x", "malformed"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
            .args(["run", "--config", config.to_str().unwrap(), "--no-watch"])
            .env("GATEHOUSE_LISTENERS", spec)
            .stdin(std::fs::File::open(&config).unwrap())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{spec}: started anyway");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(words) && stderr.contains("GATEHOUSE_LISTENERS"), "{spec}: {stderr}");
        assert!(!stderr.contains("panicked"), "{spec}: {stderr}");
    }
}
