//! The subcommands behind `src/main.rs`: run, validate, routes, explain, demo.

mod demo;
mod explain;
mod notify;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use crate::app::{Gateway, Shared, StartError, StartOptions};
use crate::config::compile::{Context, compile};
use crate::config::{self, ConfigSource, Vars};
use crate::state::Snapshot;
use crate::state::registry::Registry;

pub use demo::{Demo, DemoOptions, demo};
pub use explain::{explain, explain_request, routes, routes_text};

/// Exit code for an invalid config (`validate`, and `run` refusing to start).
pub const EXIT_INVALID_CONFIG: u8 = 2;

/// `gatehouse run`: serve until SIGTERM/SIGINT; SIGHUP and file changes reload.
pub fn run(config: PathBuf, workers: Option<usize>, watch: bool) -> anyhow::Result<ExitCode> {
    let mut options = StartOptions::new(ConfigSource::File(config));
    options.workers = workers;
    options.watch = watch.then_some(Duration::from_secs(1));
    options.inherited = Some(crate::transport::inherit::Inherited::from_env()?);
    let gateway = match Gateway::start(options) {
        Ok(g) => g,
        Err(StartError::Config(errors)) => {
            eprint!("{errors}");
            return Ok(ExitCode::from(EXIT_INVALID_CONFIG));
        }
        Err(e) => return Err(e.into()),
    };
    // The process that serves is the service's main process (after an upgrade, this one).
    notify::notify(&format!("READY=1\nMAINPID={}\nSTATUS=serving", std::process::id()));
    let upgrade = || {
        // The binary as it was invoked: after an upgrade the path holds the new one (while
        // /proc/self/exe still names the old, deleted file).
        let mut args = std::env::args_os();
        let program = args.next().map(PathBuf::from).unwrap_or_default();
        let args: Vec<_> = args.collect();
        match gateway.hand_over(&program, &args) {
            Ok(pid) => {
                // Said by the main process itself too: with NotifyAccess=main (the default) systemd
                // hears only this one, and would otherwise stop the unit when it exits.
                notify::notify(&format!("MAINPID={pid}"));
                tracing::info!(new_pid = pid, "SIGUSR2: the new process serves; draining this one");
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "SIGUSR2: upgrade failed; this process keeps serving");
                false
            }
        }
    };
    let upgraded = wait_for_signals(gateway.shared(), &upgrade)?;
    if !upgraded {
        // After an upgrade the new process is the service: this one only drains.
        notify::notify("STOPPING=1");
    }
    tracing::info!("shutting down: draining in-flight requests");
    gateway.shutdown();
    Ok(ExitCode::SUCCESS)
}

/// Blocks until SIGTERM or SIGINT (false), or until SIGUSR2's `upgrade` succeeds (true); reloads
/// on SIGHUP.
pub fn wait_for_signals(shared: &Arc<Shared>, upgrade: &(dyn Fn() -> bool + Sync)) -> anyhow::Result<bool> {
    use tokio::signal::unix::{SignalKind, signal};
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let mut hangup = signal(SignalKind::hangup())?;
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut user2 = signal(SignalKind::user_defined2())?;
        loop {
            tokio::select! {
                _ = hangup.recv() => {
                    tracing::info!("SIGHUP: reloading the config");
                    notify::notify("RELOADING=1");
                    let shared = shared.clone();
                    let _ = tokio::task::spawn_blocking(move || shared.reload()).await;
                    notify::notify("READY=1");
                }
                _ = user2.recv() => {
                    tracing::info!("SIGUSR2: starting a new process with the listening sockets");
                    // Blocking this signal-only runtime while the new process starts is fine.
                    if upgrade() {
                        return Ok(true);
                    }
                }
                _ = terminate.recv() => return Ok(false),
                _ = interrupt.recv() => return Ok(false),
            }
        }
    })
}

/// Loads and compiles a config file without starting anything.
pub fn check(path: &Path, vars: &Vars) -> Result<Snapshot, config::ConfigErrors> {
    let loaded = config::load(&ConfigSource::File(path.to_owned()), vars)?;
    let registry = Registry::new();
    let ctx = Context { registry: &registry, bound: None, generation: 0, dry_run: true };
    compile(&loaded.config, &ctx).map_err(|d| loaded.locate(d))
}

/// `gatehouse validate`.
pub fn validate(path: &Path) -> anyhow::Result<ExitCode> {
    match check(path, &Vars::default()) {
        Ok(snap) => {
            println!(
                "{}: ok ({} listener{}, {} route{}, {} upstream{})",
                path.display(),
                snap.listeners.len(),
                plural(snap.listeners.len()),
                snap.routes.len(),
                plural(snap.routes.len()),
                snap.upstreams.len(),
                plural(snap.upstreams.len()),
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            eprint!("{errors}");
            Ok(ExitCode::from(EXIT_INVALID_CONFIG))
        }
    }
}

/// `gatehouse keygen`: a new API key, shown once, and the digest that goes into the config.
pub fn keygen(consumer: &str) -> anyhow::Result<ExitCode> {
    let (key, digest) = crate::policy::consumers::generate_key().map_err(anyhow::Error::msg)?;
    println!("API key (give it to the consumer; it is not stored anywhere):\n\n  {key}\n");
    println!("Add its SHA-256 to the config:\n");
    println!("consumers:\n  - name: {consumer}\n    credentials:\n      - api_key_sha256: \"{digest}\"");
    Ok(ExitCode::SUCCESS)
}

/// `gatehouse hash-password`: the argon2id hash of the password on standard input (one line; the
/// line ending is not part of it), as a credential for the config.
pub fn hash_password(username: &str) -> anyhow::Result<ExitCode> {
    use std::io::BufRead;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let password = line.strip_suffix('\n').map_or(line.as_str(), |l| l.strip_suffix('\r').unwrap_or(l));
    if password.is_empty() {
        anyhow::bail!("no password on standard input (e.g. `printf %s \"$PASSWORD\" | gatehouse hash-password`)");
    }
    let hash = crate::policy::consumers::hash_password(password.as_bytes()).map_err(anyhow::Error::msg)?;
    println!("credentials:\n  - username: {username}\n    password_hash: \"{hash}\"");
    Ok(ExitCode::SUCCESS)
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}
