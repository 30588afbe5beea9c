//! `Gateway`: wires config, listeners, workers, the admin listener and the config watcher together,
//! and owns reloads and shutdown.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::admin::AdminServer;
use crate::config::compile::{Context, compile};
use crate::config::overlay::Overlay;
use crate::config::{self, ConfigErrors, ConfigSource, Vars};
use crate::proxy::HttpProxy;
use crate::state::registry::Registry;
use crate::state::{Snapshot, SnapshotHandle};
use crate::transport::clock;
use crate::transport::listener;
use crate::transport::worker::Workers;

/// How to start a gateway.
pub struct StartOptions {
    pub source: ConfigSource,
    pub vars: Vars,
    /// Overrides `server.workers`.
    pub workers: Option<usize>,
    /// Poll the config file for changes at this interval (file sources only).
    pub watch: Option<Duration>,
    /// Listening sockets handed over by the process this one replaces (a binary upgrade).
    pub inherited: Option<crate::transport::inherit::Inherited>,
}

impl StartOptions {
    pub fn new(source: ConfigSource) -> StartOptions {
        StartOptions { source, vars: Vars::default(), workers: None, watch: None, inherited: None }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// One reload attempt, for the admin API.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadRecord {
    #[serde(with = "humantime_serde_compat")]
    pub at: SystemTime,
    /// What started it: `file` (a reload of the config file) or `admin` (a change through the API).
    pub source: &'static str,
    pub generation: u64,
    pub ok: bool,
    pub errors: Vec<String>,
    /// Settings that changed in the file but take effect only after a restart.
    pub pending_restart: Vec<String>,
}

mod humantime_serde_compat {
    pub fn serialize<S: serde::Serializer>(t: &std::time::SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_millis(*t))
    }
}

/// Why a change through the admin API was not made. Nothing was changed in any case.
#[derive(Debug)]
pub enum ChangeError {
    /// `admin.store` is not set: a change could not survive a restart.
    NoStore,
    /// The config file itself does not load now.
    File(ConfigErrors),
    /// The config with the change does not compile.
    Invalid(ConfigErrors),
    /// The change names something that does not exist.
    NotFound(String),
    /// The change conflicts with what exists.
    Conflict(String),
    /// The request itself is malformed.
    BadRequest(Vec<config::Diagnostic>),
    /// The store could not be written.
    Store(String),
}

/// Listeners a compiled config adds and removes; carried out when it is swapped in.
struct ListenerPlan {
    /// Every listener id's name and address after the change (removed ones with empty names).
    slots: Vec<(String, SocketAddr)>,
    added: Vec<(usize, listener::BoundListener)>,
    removed: Vec<usize>,
}

/// What the admin API, signal handlers and the watcher share with the gateway.
pub struct Shared {
    pub snapshot: SnapshotHandle,
    registry: Arc<Registry>,
    source: ConfigSource,
    vars: Vars,
    /// The transport's listeners by id (position): name and bound address; a removed one keeps
    /// its place with an empty name.
    bound: Mutex<Vec<(String, SocketAddr)>>,
    /// The workers' control channels (set once they run): reloads add and remove listeners.
    controls: std::sync::OnceLock<crate::transport::worker::Controls>,
    /// Copies of the listening sockets, for a binary upgrade.
    handover: Mutex<Vec<(String, SocketAddr, Vec<socket2::Socket>)>>,
    /// `server.workers` as configured at startup (the running count is fixed until restart).
    configured_workers: usize,
    generation: AtomicU64,
    reload_lock: Mutex<()>,
    reloads: Mutex<VecDeque<ReloadRecord>>,
    /// The admin API's changes, applied over the file at every compile.
    changes: Mutex<Overlay>,
    /// `admin.store` as configured at startup.
    store: Option<PathBuf>,
    pub started: SystemTime,
    /// Connections and requests per listener (shared with the proxy and its connections).
    pub counts: crate::transport::conn::Counts,
}

impl Shared {
    /// Reads the config source again and swaps in the new snapshot, with the admin API's changes
    /// on top. On any error the running config stays.
    pub fn reload(&self) -> Result<u64, ConfigErrors> {
        let _serial = self.reload_lock.lock().unwrap_or_else(|e| e.into_inner());
        let changes = self.changes.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let result = config::load(&self.source, &self.vars).and_then(|loaded| self.compile(&loaded, &changes));
        match result {
            Ok((snapshot, plan)) => Ok(self.install(snapshot, plan, "file")),
            Err(errors) => {
                self.registry.metrics.reloaded(false);
                tracing::error!("config reload failed; the running config stays\n{errors}");
                self.record("file", self.generation.load(Ordering::Relaxed), Err(&errors), Vec::new());
                Err(errors)
            }
        }
    }

    /// Applies one change of the admin API: `edit` gets the changes so far and the config file as
    /// it is now, and edits the changes. The file with the new changes is compiled like a reload;
    /// only when it compiles are the changes written to `admin.store`, and only when they are
    /// written is the new config swapped in.
    pub fn change<T>(
        &self,
        edit: impl FnOnce(&mut Overlay, &config::LocalConfig) -> Result<T, ChangeError>,
    ) -> Result<(T, u64), ChangeError> {
        let store = self.store.as_deref().ok_or(ChangeError::NoStore)?;
        let _serial = self.reload_lock.lock().unwrap_or_else(|e| e.into_inner());
        let loaded = config::load(&self.source, &self.vars).map_err(ChangeError::File)?;
        let mut changes = self.changes.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let answer = edit(&mut changes, &loaded.config)?;
        let (snapshot, plan) = self.compile(&loaded, &changes).map_err(ChangeError::Invalid)?;
        changes.save(store).map_err(|e| ChangeError::Store(format!("cannot write {}: {e}", store.display())))?;
        *self.changes.lock().unwrap_or_else(|e| e.into_inner()) = changes;
        Ok((answer, self.install(snapshot, plan, "admin")))
    }

    /// The admin API's changes in effect.
    pub fn changes(&self) -> Overlay {
        self.changes.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Where the admin API's changes are kept, if anywhere.
    pub fn store(&self) -> Option<&std::path::Path> {
        self.store.as_deref()
    }

    fn compile(&self, loaded: &config::Loaded, changes: &Overlay) -> Result<(Snapshot, ListenerPlan), ConfigErrors> {
        let generation = self.generation.load(Ordering::Relaxed) + 1;
        let merged = changes.apply(&loaded.config);
        let plan = self.plan_listeners(&merged.config, &loaded.name)?;
        let ctx = Context { registry: &self.registry, bound: Some(&plan.slots), generation, dry_run: false };
        let mut snapshot = compile(&merged.config, &ctx).map_err(|d| merged.locate(loaded, d))?;
        // A removed listener accepts until its workers hear of it: keep its TLS that long, so a
        // handshake in that moment is not read as HTTP.
        let running = self.snapshot.load();
        for &id in &plan.removed {
            if let (Some(next), Some(now)) = (snapshot.listeners.get_mut(id), running.listeners.get(id)) {
                next.tls = now.tls.clone();
            }
        }
        Ok((snapshot, plan))
    }

    /// Which listeners a config adds (bound here, serving once the config is swapped in) and
    /// removes (draining then). A listener whose address changes is removed and added.
    fn plan_listeners(&self, config: &config::LocalConfig, source: &str) -> Result<ListenerPlan, ConfigErrors> {
        let mut slots = self.bound.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut plan = ListenerPlan { slots: Vec::new(), added: Vec::new(), removed: Vec::new() };
        let Some(controls) = self.controls.get() else {
            plan.slots = slots;
            return Ok(plan);
        };
        let fail = |path: String, message: String| ConfigErrors {
            source: source.to_owned(),
            diagnostics: vec![config::Diagnostic::new(path, message)],
        };
        let wanted: Vec<(usize, &str, SocketAddr)> = config
            .listeners
            .iter()
            .enumerate()
            .filter_map(|(i, l)| l.address.parse().ok().map(|a| (i, l.name.as_str(), a)))
            .collect();
        for (id, (name, address)) in slots.iter_mut().enumerate() {
            if name.is_empty() {
                continue;
            }
            let kept = wanted.iter().any(|(_, n, a)| n == name && crate::config::compile::same_listener(a, address));
            if !kept {
                plan.removed.push(id);
                name.clear();
            }
        }
        for (i, name, address) in wanted {
            if slots.iter().any(|(n, _)| n == name) {
                continue;
            }
            if slots.len() >= crate::transport::conn::MAX_LISTENER_IDS {
                return Err(fail(
                    "listeners".into(),
                    format!(
                        "more than {} listeners over this process's life: restart to add more",
                        crate::transport::conn::MAX_LISTENER_IDS
                    ),
                ));
            }
            let bound = listener::bind(name, address, controls.workers())
                .map_err(|e| fail(format!("listeners[{i}].address"), e.to_string()))?;
            plan.added.push((slots.len(), bound));
            slots.push((name.to_owned(), address));
            if let Some((_, slot_address)) = slots.last_mut() {
                *slot_address = plan.added.last().map_or(address, |(_, b)| b.address);
            }
        }
        plan.slots = slots;
        Ok(plan)
    }

    /// Swaps in a compiled snapshot and starts and stops the listeners it adds and removes (the
    /// caller holds `reload_lock`).
    fn install(&self, snapshot: Snapshot, plan: ListenerPlan, source: &'static str) -> u64 {
        let generation = snapshot.generation;
        self.registry.metrics.reloaded(true);
        let pending = self.pending_restart(&snapshot);
        for setting in &pending {
            tracing::warn!("{setting} changed: it takes effect after a restart");
        }
        self.snapshot.store(snapshot);
        self.generation.store(generation, Ordering::Relaxed);
        *self.bound.lock().unwrap_or_else(|e| e.into_inner()) = plan.slots;
        if let Some(controls) = self.controls.get() {
            let mut handover = self.handover.lock().unwrap_or_else(|e| e.into_inner());
            for (id, bound) in plan.added {
                tracing::info!(listener = %bound.name, address = %bound.address, "listening (added by a reload)");
                let copies =
                    bound.sockets.iter().filter_map(|s| s.try_clone().ok().map(socket2::Socket::from)).collect();
                handover.push((bound.name.clone(), bound.address, copies));
                controls.add(id, bound.sockets);
            }
            for id in plan.removed {
                tracing::info!(
                    listener = id,
                    "listener removed by a reload: no longer accepting, its connections drain"
                );
                if let Some(entry) = handover.get_mut(id) {
                    entry.2.clear();
                }
                controls.remove(id);
            }
        }
        self.record(source, generation, Ok(()), pending);
        tracing::info!(generation, source, "config reloaded");
        generation
    }

    /// What the new snapshot changes that only a restart applies.
    fn pending_restart(&self, next: &Snapshot) -> Vec<String> {
        let running = self.snapshot.load();
        let mut pending = Vec::new();
        if next.config.admin != running.config.admin {
            pending.push("admin".to_owned());
        }
        if next.server.workers != self.configured_workers {
            pending.push("server.workers".to_owned());
        }
        pending
    }

    fn record(
        &self,
        source: &'static str,
        generation: u64,
        result: Result<(), &ConfigErrors>,
        pending_restart: Vec<String>,
    ) {
        let mut reloads = self.reloads.lock().unwrap_or_else(|e| e.into_inner());
        if reloads.len() == 50 {
            reloads.pop_front();
        }
        reloads.push_back(ReloadRecord {
            at: SystemTime::now(),
            source,
            generation,
            ok: result.is_ok(),
            errors: result.err().map(|e| e.diagnostics.iter().map(ToString::to_string).collect()).unwrap_or_default(),
            pending_restart,
        });
    }

    pub fn reloads(&self) -> Vec<ReloadRecord> {
        self.reloads.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect()
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// The listeners serving now, with their bound addresses.
    pub fn listeners(&self) -> Vec<(String, SocketAddr)> {
        let bound = self.bound.lock().unwrap_or_else(|e| e.into_inner());
        bound.iter().filter(|(name, _)| !name.is_empty()).cloned().collect()
    }

    /// The `/metrics` exposition (OpenMetrics text when `openmetrics`).
    pub fn metrics(&self, openmetrics: bool) -> String {
        let snapshot = self.snapshot.load();
        let live = crate::telemetry::metrics::Live {
            generation: self.generation(),
            snapshot: &snapshot,
            counts: &self.counts,
        };
        self.registry.metrics.render(&crate::telemetry::metrics::live_registry(&live), openmetrics)
    }
}

/// A running gateway.
pub struct Gateway {
    shared: Arc<Shared>,
    workers: Option<Workers>,
    admin: Option<AdminServer>,
    _watcher: Option<config::watch::Watcher>,
    _sweeper: crate::background::Background,
}

impl Gateway {
    pub fn start(options: StartOptions) -> Result<Gateway, StartError> {
        clock::tick();
        let loaded = config::load(&options.source, &options.vars)?;
        let store = loaded.config.admin.store.as_ref().map(PathBuf::from);
        let changes = match &store {
            Some(path) => Overlay::load(path)?,
            None => Overlay::default(),
        };
        if !changes.is_empty() {
            tracing::info!(store = %store.as_deref().unwrap_or_else(|| std::path::Path::new("")).display(), "applying the admin API's changes over the config file");
        }
        let merged = changes.apply(&loaded.config);
        let registry = Registry::new();
        // Check everything before binding anything, so a bad config fails without side effects.
        let check = Context { registry: &registry, bound: None, generation: 0, dry_run: true };
        let checked = compile(&merged.config, &check).map_err(|d| merged.locate(&loaded, d))?;
        let configured_workers = checked.server.workers;
        let workers = options.workers.unwrap_or(configured_workers).max(1);
        let mut inherited = options.inherited;
        let mut bound = Vec::new();
        for l in &checked.listeners {
            let handed = inherited.as_mut().and_then(|i| i.take(&l.name, l.address));
            bound.push(match handed {
                Some(sockets) => {
                    tracing::info!(listener = %l.name, sockets = sockets.len(), "serving on the sockets handed over");
                    listener::adopt(&l.name, sockets, workers)?
                }
                None => listener::bind(&l.name, l.address, workers)?,
            });
        }
        // Copies of every listening socket, to hand to a successor (binary upgrade).
        let mut handover = Vec::new();
        for b in &bound {
            let copies = b
                .sockets
                .iter()
                .map(|s| s.try_clone().map(socket2::Socket::from))
                .collect::<std::io::Result<Vec<_>>>()?;
            handover.push((b.name.clone(), b.address, copies));
        }
        drop(checked);
        let names: Vec<(String, SocketAddr)> = bound.iter().map(|b| (b.name.clone(), b.address)).collect();
        let ctx = Context { registry: &registry, bound: Some(&names), generation: 1, dry_run: false };
        let snapshot = compile(&merged.config, &ctx).map_err(|d| merged.locate(&loaded, d))?;
        let admin_config = snapshot.config.admin.clone();
        let counts = crate::transport::conn::counts(crate::transport::conn::MAX_LISTENER_IDS);
        let handle = SnapshotHandle::new(snapshot);
        let shared = Arc::new(Shared {
            snapshot: handle.clone(),
            registry,
            source: options.source.clone(),
            vars: options.vars,
            bound: Mutex::new(names),
            controls: std::sync::OnceLock::new(),
            handover: Mutex::new(handover),
            configured_workers,
            generation: AtomicU64::new(1),
            reload_lock: Mutex::new(()),
            reloads: Mutex::new(VecDeque::new()),
            changes: Mutex::new(changes),
            store,
            started: SystemTime::now(),
            counts: counts.clone(),
        });
        let proxy = Arc::new(HttpProxy::new(handle, counts));
        let admin = if admin_config.enabled {
            let address: SocketAddr = admin_config
                .address
                .parse()
                .map_err(|_| std::io::Error::other(format!("invalid admin address {}", admin_config.address)))?;
            Some(AdminServer::start(address, shared.clone())?)
        } else {
            None
        };
        let workers = Workers::start(workers, &mut bound, proxy)?;
        let _ = shared.controls.set(workers.controls());
        for (name, address) in shared.listeners() {
            tracing::info!(listener = %name, %address, "listening");
        }
        if let Some(mut inherited) = inherited {
            inherited.serving();
        }
        let watcher = match (&options.source, options.watch) {
            (ConfigSource::File(path), Some(interval)) => {
                let weak = Arc::downgrade(&shared);
                Some(config::watch::watch(path.clone(), interval, move || {
                    if let Some(shared) = weak.upgrade() {
                        tracing::info!("config file changed; reloading");
                        let _ = shared.reload();
                    }
                })?)
            }
            _ => None,
        };
        let sweeper = sweep_idle_state(Arc::downgrade(&shared.registry))?;
        Ok(Gateway { shared, workers: Some(workers), admin, _watcher: watcher, _sweeper: sweeper })
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The bound address of a listener (useful with port 0).
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.shared.listeners().into_iter().find(|(n, _)| n == name).map(|(_, a)| a)
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(AdminServer::address)
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.snapshot.load()
    }

    pub fn reload(&self) -> Result<u64, ConfigErrors> {
        self.shared.reload()
    }

    /// Starts `program args` with this gateway's listening sockets and waits until it serves:
    /// the caller then drains this one. Returns the new process's id.
    pub fn hand_over(&self, program: &std::path::Path, args: &[std::ffi::OsString]) -> std::io::Result<u32> {
        let handover = self.shared.handover.lock().unwrap_or_else(|e| e.into_inner());
        let live: Vec<_> = handover
            .iter()
            .filter(|(_, _, sockets)| !sockets.is_empty())
            .map(|(name, address, sockets)| {
                let copies = sockets.iter().filter_map(|s| s.try_clone().ok()).collect();
                (name.clone(), *address, copies)
            })
            .collect();
        drop(handover);
        let child = crate::transport::inherit::hand_over(program, args, &live, Duration::from_secs(30))?;
        Ok(child.id())
    }

    /// Stops accepting, drains in-flight requests (up to `server.timeouts.shutdown_grace`) and stops.
    pub fn shutdown(mut self) {
        let grace = self.shared.snapshot.load().server.shutdown_grace;
        self.shutdown_with(grace);
    }

    pub fn shutdown_with(&mut self, grace: Duration) {
        if let Some(workers) = self.workers.take() {
            workers.shutdown(grace);
        }
        if let Some(admin) = self.admin.take() {
            admin.shutdown();
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.shutdown_with(Duration::ZERO);
    }
}

/// Every 10 s, forgets the rate-limit keys that have been idle long enough to be as good as new,
/// so memory follows the active keys rather than every key ever seen.
fn sweep_idle_state(registry: std::sync::Weak<Registry>) -> std::io::Result<crate::background::Background> {
    crate::background::Background::spawn("gatehouse-sweep", move |mut stop| async move {
        let mut every = tokio::time::interval(Duration::from_secs(10));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = every.tick() => {
                    let Some(registry) = registry.upgrade() else { break };
                    let now = crate::policy::rate_limit::now_ns();
                    for store in registry.rate_limit_stores() {
                        store.sweep(now);
                    }
                    for gates in registry.concurrency_gate_sets() {
                        gates.sweep();
                    }
                }
            }
        }
    })
}
