//! The compiled, immutable configuration (`Snapshot`) and the handle that swaps it atomically.
//!
//! A request loads the snapshot once at its start and uses that one generation to the end, so a
//! reload never mixes two configs in one request. State that must outlive a reload (balancer
//! positions, DNS caches, connection pools) is not in here: it lives in `registry` and is shared
//! by consecutive snapshots.

pub mod registry;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::HeaderName;
use ipnet::IpNet;

use crate::config::LocalConfig;
use crate::policy::RoutePolicies;
use crate::proxy::normalize::PathOptions;
use crate::route::{PathRewrite, RouteId, RouteTable};
use crate::upstream::Upstream;

/// One compiled generation of the configuration.
pub struct Snapshot {
    pub generation: u64,
    /// The config this snapshot was compiled from (for the admin API and persistence).
    pub config: Arc<LocalConfig>,
    pub server: ServerSettings,
    /// Indexed by the transport's listener id (its position at bind time).
    pub listeners: Vec<ListenerSettings>,
    /// Indexed by `RouteId`.
    pub routes: Vec<Route>,
    pub upstreams: HashMap<Arc<str>, Arc<Upstream>>,
    pub access_log: Option<Arc<crate::telemetry::AccessLogWriter>>,
    pub consumers: Arc<crate::policy::ConsumerIndex>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("generation", &self.generation)
            .field("listeners", &self.listeners.len())
            .field("routes", &self.routes.len())
            .field("upstreams", &self.upstreams.len())
            .finish_non_exhaustive()
    }
}

impl Snapshot {
    pub fn route(&self, id: RouteId) -> &Route {
        // Route ids come from the table built together with `routes`, so they are always in range.
        &self.routes[id as usize]
    }

    pub fn listener_by_name(&self, name: &str) -> Option<&ListenerSettings> {
        self.listeners.iter().find(|l| &*l.name == name)
    }

    /// The listeners in service, with their ids (a removed listener keeps its id's slot, unnamed,
    /// while its connections drain).
    pub fn serving(&self) -> impl Iterator<Item = (usize, &ListenerSettings)> {
        self.listeners.iter().enumerate().filter(|(_, l)| !l.is_removed())
    }
}

impl ListenerSettings {
    /// A slot kept for a listener that a reload removed.
    pub fn is_removed(&self) -> bool {
        self.name.is_empty()
    }
}

pub struct ListenerSettings {
    pub name: Arc<str>,
    pub address: SocketAddr,
    pub table: RouteTable,
    pub max_connections: Option<usize>,
    /// The metrics of requests that match no route (None: metrics off).
    pub unrouted: Option<Arc<crate::telemetry::metrics::RouteMetrics>>,
    /// TLS termination, when the listener has `tls`.
    pub tls: Option<Arc<crate::transport::tls::ListenerTls>>,
    /// HTTP/2 served (by ALPN over TLS, by prior knowledge in clear text).
    pub http2: bool,
    /// Every request is redirected to HTTPS: (port, status).
    pub https_redirect: Option<(u16, http::StatusCode)>,
}

/// Process-wide request handling settings, resolved from `server:`.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub workers: usize,
    pub trusted_proxies: Vec<IpNet>,
    pub x_forwarded: bool,
    pub forwarded: bool,
    pub request_id_header: HeaderName,
    pub request_id_trust_incoming: bool,
    pub max_uri_length: usize,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_concurrent_streams: u32,
    pub max_body_size: Option<u64>,
    /// With tracing on: the share of new traces sampled.
    pub trace_sampling: Option<f64>,
    /// With `tracing.otlp`: where sampled requests' spans go.
    pub trace_export: Option<Arc<crate::telemetry::otlp::SpanSink>>,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub websocket_idle: Duration,
    pub shutdown_grace: Duration,
    pub path: PathOptions,
}

impl ServerSettings {
    /// Whether a direct peer is a proxy whose forwarding headers we believe.
    pub fn is_trusted(&self, ip: std::net::IpAddr) -> bool {
        let ip = canonical_ip(ip);
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`) are IPv4 clients on a dual-stack socket.
pub fn canonical_ip(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
        v4 => v4,
    }
}

/// A compiled route: where matched requests go and what happens to them on the way.
pub struct Route {
    pub id: RouteId,
    pub name: Arc<str>,
    pub upstream: Option<Arc<Upstream>>,
    /// `split`: upstreams with cumulative weights, and what makes a caller stick to one.
    pub split: Option<Split>,
    pub mirror: Option<Mirror>,
    pub rewrite: PathRewrite,
    pub host: UpstreamHost,
    /// WebSocket upgrades are accepted.
    pub websocket: bool,
    pub timeout: Option<Duration>,
    /// Connect and per-try timeouts that replace the upstream's for this route.
    pub try_timeouts: crate::upstream::client::TryTimeouts,
    /// Metric handles by listener id (empty: metrics off).
    pub metrics: Vec<Arc<crate::telemetry::metrics::RouteMetrics>>,
    /// The route's policies on each listener (indexed by listener id): global, listener and route
    /// policies merged.
    pub policies: Vec<RoutePolicies>,
}

impl Route {
    /// The route's policies on listener `listener`.
    pub fn policies(&self, listener: usize) -> &RoutePolicies {
        static NONE: std::sync::OnceLock<RoutePolicies> = std::sync::OnceLock::new();
        self.policies.get(listener).unwrap_or_else(|| NONE.get_or_init(RoutePolicies::default))
    }
}

/// The Host header sent upstream.
#[derive(Debug, Clone)]
pub enum UpstreamHost {
    /// The endpoint's `host[:port]` (the default, like nginx's `$proxy_host`).
    Endpoint,
    /// The client's Host header.
    Preserve,
    /// A fixed value.
    Rewrite(http::HeaderValue),
}

/// The current snapshot, swapped atomically on reload.
#[derive(Clone)]
pub struct SnapshotHandle(Arc<ArcSwap<Snapshot>>);

impl SnapshotHandle {
    pub fn new(snapshot: Snapshot) -> Self {
        SnapshotHandle(Arc::new(ArcSwap::from_pointee(snapshot)))
    }

    /// The snapshot for one request: keep the `Arc` for the request's whole life.
    pub fn load(&self) -> Arc<Snapshot> {
        self.0.load_full()
    }

    pub fn store(&self, snapshot: Snapshot) {
        self.0.store(Arc::new(snapshot));
    }
}

/// A weighted choice between upstreams.
pub struct Split {
    pub choices: Vec<(Arc<Upstream>, u64)>,
    pub total: u64,
    pub on: Option<Box<[crate::policy::rate_limit::KeyPart]>>,
}

impl Split {
    /// The upstream for a request, with its position among the choices: by `hash` when sticky,
    /// else at random.
    pub fn pick(&self, hash: Option<u64>) -> (usize, &Arc<Upstream>) {
        let x = match hash {
            Some(h) => h % self.total.max(1),
            None => fastrand::u64(0..self.total.max(1)),
        };
        let i = self.choices.partition_point(|(_, c)| *c <= x).min(self.choices.len() - 1);
        (i, &self.choices[i].0)
    }
}

/// Copies of requests to a shadow upstream.
pub struct Mirror {
    pub upstream: Arc<Upstream>,
    /// Out of 1,000,000.
    pub share: u32,
    /// Copies in flight (bounded: a slow shadow cannot pile up work).
    pub in_flight: Arc<std::sync::atomic::AtomicUsize>,
}
