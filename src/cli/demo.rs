//! `gatehouse demo`: the example services and a gateway in front of them, driven by
//! `examples/demo.yaml` (embedded in the binary, so the demo runs from anywhere).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::app::{Gateway, StartError, StartOptions};
use crate::background::Background;
use crate::config::{ConfigSource, Vars};
use crate::demo::{DemoPorts, DemoServices};

/// The demo config, exactly the file in the repository.
pub const DEMO_CONFIG: &str = include_str!("../../examples/demo.yaml");

pub struct DemoOptions {
    /// The gateway's address.
    pub listen: String,
    /// The admin address.
    pub admin: String,
    pub ports: DemoPorts,
    /// A config file instead of the embedded demo config.
    pub config: Option<PathBuf>,
    /// Where the access log goes (`stdout`, or a file).
    pub access_log: String,
}

/// A running demo: the services (on their own thread) and the gateway.
pub struct Demo {
    pub gateway: Gateway,
    pub services: SocketAddrs,
    thread: Background,
}

/// Where the demo services listen.
#[derive(Debug, Clone)]
pub struct SocketAddrs {
    pub auth: SocketAddr,
    pub users: [SocketAddr; 2],
    pub tasks: SocketAddr,
    pub appointments: SocketAddr,
}

impl Demo {
    pub fn start(options: DemoOptions) -> anyhow::Result<Demo> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let ports = options.ports;
        let thread = Background::spawn("demo-services", move |stop| async move {
            match DemoServices::start(IpAddr::V4(Ipv4Addr::LOCALHOST), ports).await {
                Ok(services) => {
                    let addrs = SocketAddrs {
                        auth: services.auth,
                        users: services.users,
                        tasks: services.tasks,
                        appointments: services.appointments,
                    };
                    let _ = ready_tx.send(Ok((addrs, services.vars())));
                    let _ = stop.await;
                    services.shutdown().await;
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        })?;
        let (services, mut vars) = ready_rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| anyhow::anyhow!("the demo services did not start"))??;
        vars.push(("DEMO_LISTEN".into(), options.listen.clone()));
        vars.push(("DEMO_ADMIN".into(), options.admin.clone()));
        vars.push(("DEMO_ACCESS_LOG".into(), options.access_log.clone()));
        let (source, watch) = match options.config {
            Some(path) => (ConfigSource::File(path), Some(Duration::from_secs(1))),
            None => (ConfigSource::Text { name: "examples/demo.yaml".into(), text: DEMO_CONFIG.into() }, None),
        };
        let mut start = StartOptions::new(source);
        start.vars = Vars::with(vars);
        start.watch = watch;
        let gateway = Gateway::start(start)?;
        Ok(Demo { gateway, services, thread })
    }

    pub fn stop(mut self) {
        self.thread.stop();
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        self.gateway.shutdown_with(Duration::from_secs(1));
        self.thread.stop();
    }
}

/// `gatehouse demo`.
pub fn demo(listen: &str, config: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let options = DemoOptions {
        listen: listen.to_owned(),
        admin: "127.0.0.1:9901".into(),
        ports: DemoPorts::DEFAULT,
        config,
        access_log: "stdout".into(),
    };
    let demo = match Demo::start(options) {
        Ok(d) => d,
        Err(e) => {
            if let Some(StartError::Config(errors)) = e.downcast_ref::<StartError>() {
                eprint!("{errors}");
                return Ok(ExitCode::from(super::EXIT_INVALID_CONFIG));
            }
            return Err(
                e.context("cannot start the demo (is another demo or service using ports 8080, 9901 or 9101-9105?)")
            );
        }
    };
    let gw = demo.gateway.listener_addr("public").map_or_else(|| listen.to_owned(), |a| a.to_string());
    let admin = demo.gateway.admin_addr().map_or_else(|| "off".to_owned(), |a| a.to_string());
    let s = &demo.services;
    println!(
        "\ngatehouse demo is running.\n\n  gateway   http://{gw}\n  admin     http://{admin}\n  config    examples/demo.yaml\n\n\
         services behind it:\n  auth          {}\n  user          {}  {}\n  task          {}\n  appointment   {}\n\n\
         try (accounts: alice/alice-pw, admin/admin-pw):\n\
         \x20 curl -s http://{gw}/health\n\
         \x20 curl -s -i http://{gw}/users                        # 401: a token is needed\n\
         \x20 TOKEN=$(curl -s -X POST http://{gw}/auth/login -d '{{\"username\":\"alice\",\"password\":\"alice-pw\"}}' | sed 's/.*\"access_token\":\"\\([^\"]*\\)\".*/\\1/')\n\
         \x20 curl -s -H \"Authorization: Bearer $TOKEN\" http://{gw}/users/me     # who the gateway says you are\n\
         \x20 curl -s -H \"Authorization: Bearer $TOKEN\" http://{gw}/users        # twice: user-1, then user-2\n\
         \x20 curl -s -H \"Authorization: Bearer $TOKEN\" -d '{{\"title\":\"try gatehouse\"}}' http://{gw}/tasks\n\
         \x20 curl -s -i -X DELETE -H \"Authorization: Bearer $TOKEN\" http://{gw}/appointments/1   # 403: admins only\n\
         \x20 curl -s http://{admin}/routes\n\n\
         \x20 gatehouse explain -c examples/demo.yaml DELETE http://{gw}/appointments/1\n\n\
         The access log is printed below. Stop with Ctrl-C.\n",
        s.auth, s.users[0], s.users[1], s.tasks, s.appointments,
    );
    let no_upgrade = || {
        tracing::warn!("SIGUSR2: binary upgrades are for `gatehouse run`, not the demo");
        false
    };
    super::wait_for_signals(demo.gateway.shared(), &no_upgrade)?;
    demo.stop();
    Ok(ExitCode::SUCCESS)
}
