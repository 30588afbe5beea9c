//! Test harness: gateways from YAML, upstream servers, and HTTP clients (hyper and raw TCP).

#![allow(dead_code)]

pub mod client;
pub mod dns;
pub mod grpc_echo;
pub mod grpc_health;
pub mod redis;
pub mod tls;
pub mod upstream;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use gatehouse::config::ConfigSource;
use gatehouse::{Gateway, StartOptions};

#[allow(unused_imports)]
pub use client::{Client, RawConn, Reply, get};
#[allow(unused_imports)]
pub use grpc_health::GrpcHealth;
#[allow(unused_imports)]
pub use upstream::{Upstream, UpstreamBehaviour};

/// A gateway started from YAML written to a temp file (so reloads can rewrite it).
pub struct TestGateway {
    pub gateway: Gateway,
    pub config_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestGateway {
    /// Starts a gateway; the YAML's listeners should use port 0 and the admin is disabled unless
    /// the YAML enables it.
    pub fn start(yaml: &str) -> TestGateway {
        Self::try_start(yaml).unwrap_or_else(|e| panic!("gateway did not start: {e}"))
    }

    pub fn try_start(yaml: &str) -> Result<TestGateway, gatehouse::app::StartError> {
        Self::start_with(yaml, None)
    }

    /// Starts a gateway that polls its config file for changes every `interval`.
    pub fn start_watching(yaml: &str, interval: std::time::Duration) -> TestGateway {
        Self::start_with(yaml, Some(interval)).unwrap_or_else(|e| panic!("gateway did not start: {e}"))
    }

    fn start_with(yaml: &str, watch: Option<std::time::Duration>) -> Result<TestGateway, gatehouse::app::StartError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("gatehouse.yaml");
        std::fs::write(&path, with_test_defaults(yaml)).expect("write config");
        let mut options = StartOptions::new(ConfigSource::File(path.clone()));
        options.watch = watch;
        let gateway = Gateway::start(options)?;
        Ok(TestGateway { gateway, config_path: path, _dir: dir })
    }

    /// The address of the first (or only) listener.
    pub fn addr(&self) -> SocketAddr {
        self.gateway.shared().listeners()[0].1
    }

    pub fn listener(&self, name: &str) -> SocketAddr {
        self.gateway.listener_addr(name).expect("listener")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr(), path)
    }

    /// Rewrites the config file and reloads; panics if the reload fails.
    pub fn reload_with(&self, yaml: &str) -> u64 {
        self.write_config(yaml);
        self.gateway.reload().unwrap_or_else(|e| panic!("reload failed: {e}"))
    }

    /// Stops the gateway and starts a new process's worth from the same config file.
    pub fn restart(self) -> TestGateway {
        let TestGateway { gateway, config_path, _dir } = self;
        drop(gateway);
        let gateway = Gateway::start(StartOptions::new(ConfigSource::File(config_path.clone())))
            .unwrap_or_else(|e| panic!("gateway did not restart: {e}"));
        TestGateway { gateway, config_path, _dir }
    }

    pub fn write_config(&self, yaml: &str) {
        let tmp = self.config_path.with_extension("tmp");
        std::fs::write(&tmp, with_test_defaults(yaml)).expect("write config");
        std::fs::rename(&tmp, &self.config_path).expect("replace config");
    }
}

/// Tests run many gateways side by side: unless the YAML says otherwise, one worker and no admin.
fn with_test_defaults(yaml: &str) -> String {
    let mut out = String::new();
    if !yaml.contains("admin:") {
        out.push_str("admin: { enabled: false }\n");
    }
    if !yaml.contains("server:") {
        out.push_str("server: { workers: 1 }\n");
    }
    out.push_str(yaml);
    out
}

/// A unique name for temp artefacts.
pub fn unique(prefix: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("{prefix}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// Indents YAML so it can be nested under a key in a format! string.
pub fn indent(text: &str, spaces: usize) -> String {
    let pad = " ".repeat(spaces);
    text.lines().map(|l| format!("{pad}{l}\n")).collect()
}

/// The inodes of the sockets listening on `port` (from /proc/net/tcp): the same sockets keep the
/// same inodes, fresh ones get new ones.
pub fn listening_sockets(port: u16) -> std::collections::BTreeSet<String> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields.get(1)?.rsplit(':').next()?;
            (u16::from_str_radix(local_port, 16).ok()? == port && *fields.get(3)? == "0A")
                .then(|| fields.get(9).map(|inode| inode.to_string()))
                .flatten()
        })
        .collect()
}
