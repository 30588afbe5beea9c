//! A real DNS server for tests: dnsmasq on a free loopback port, answering only from the records
//! given here (no upstream servers, no /etc/hosts). Its A/AAAA records come from a hosts file
//! that `set_hosts` rewrites (dnsmasq reads it again on SIGHUP); SRV records are fixed per start,
//! so `restart_with_srv` starts it again on the same port.

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Dnsmasq {
    pub addr: SocketAddr,
    hosts: PathBuf,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

/// An SRV record: `(name, target, port, priority, weight)`.
pub type Srv<'a> = (&'a str, &'a str, u16, u16, u16);

impl Dnsmasq {
    /// Starts with `hosts` (lines of `ip name`) and SRV records; every answer has a TTL of 1s.
    pub fn start(hosts: &str, srv: &[Srv<'_>]) -> Dnsmasq {
        let dir = tempfile::tempdir().unwrap();
        let hosts_path = dir.path().join("hosts");
        std::fs::write(&hosts_path, hosts).unwrap();
        let mut server = Dnsmasq { addr: free_port(), hosts: hosts_path, child: None, _dir: dir };
        // A port found free can be taken by another test before dnsmasq binds it: try others.
        for _ in 0..5 {
            if server.try_run(srv) {
                return server;
            }
            server.addr = free_port();
        }
        panic!("dnsmasq did not start (5 ports tried)");
    }

    fn run(&mut self, srv: &[Srv<'_>]) {
        assert!(self.try_run(srv), "dnsmasq did not start again on {}", self.addr);
    }

    /// Starts dnsmasq on `self.addr`; false if it exits (the port was taken) or never answers.
    fn try_run(&mut self, srv: &[Srv<'_>]) -> bool {
        let binary = if std::path::Path::new("/usr/sbin/dnsmasq").exists() { "/usr/sbin/dnsmasq" } else { "dnsmasq" };
        let mut command = Command::new(binary);
        command
            .arg("--keep-in-foreground")
            .arg("--conf-file=/dev/null")
            .arg(format!("--port={}", self.addr.port()))
            .arg("--listen-address=127.0.0.1")
            .arg("--bind-interfaces")
            .arg("--no-resolv")
            .arg("--no-hosts")
            .arg("--no-negcache")
            .arg(format!("--addn-hosts={}", self.hosts.display()))
            .arg("--local-ttl=1")
            .arg("--user=root")
            .arg("--pid-file=");
        for (name, target, port, priority, weight) in srv {
            command.arg(format!("--srv-host={name},{target},{port},{priority},{weight}"));
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq (./scripts/test installs dnsmasq-base)");
        self.child = Some(child);
        // Ready when it answers on TCP.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(self.addr).is_err() {
            let exited = self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_some());
            if exited || Instant::now() > deadline {
                self.kill();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// Replaces the A/AAAA records; dnsmasq reads them again at once.
    pub fn set_hosts(&self, hosts: &str) {
        std::fs::write(&self.hosts, hosts).unwrap();
        let pid = self.child.as_ref().expect("running").id().to_string();
        assert!(Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    }

    /// Starts again on the same port with other SRV records.
    pub fn restart_with_srv(&mut self, srv: &[Srv<'_>]) {
        self.kill();
        self.run(srv);
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A loopback port free for both TCP and UDP at the time of asking.
fn free_port() -> SocketAddr {
    loop {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = tcp.local_addr().unwrap();
        if UdpSocket::bind(addr).is_ok() {
            return addr;
        }
    }
}
