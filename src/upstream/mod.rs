//! Upstreams (named groups of endpoints) and how a request picks one endpoint.
//!
//! Request path step 6: `Upstream::select` → `Endpoint`, then `client::send` (step 7) takes a pooled
//! connection to it. Runtime types only; built by `config::compile`.

pub mod active;
pub mod balance;
pub mod breaker;
pub mod client;
pub mod fetch;
pub mod health;
pub mod pool;
pub mod retry;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::HeaderValue;

pub use balance::{Balancer, Pick};

/// A named group of endpoints with its balancing, timeouts and pool settings.
pub struct Upstream {
    pub name: Arc<str>,
    pub endpoints: Vec<Arc<Endpoint>>,
    pub balancer: Balancer,
    pub connect_timeout: Duration,
    pub response_header_timeout: Duration,
    pub pool: PoolSettings,
    /// With consistent hashing: what a request is hashed by.
    pub hash_on: Option<Box<[crate::policy::rate_limit::KeyPart]>>,
    pub outlier: health::OutlierSettings,
    pub retry: retry::RetryPolicy,
    pub budget: retry::RetryBudget,
    /// `circuit_breaker`, when configured (kept across reloads by the registry).
    pub breaker: Option<Arc<breaker::Breaker>>,
    /// With no endpoint available: refuse (true) instead of using them all (panic mode).
    pub fail_when_all_down: bool,
    /// The endpoints' active health checks, running while this upstream (or a later one with the
    /// same checks) lives.
    pub probers: Vec<Arc<active::Prober>>,
}

impl Upstream {
    /// A single-endpoint upstream with default settings and no retries (for gatehouse's own calls:
    /// JWKS, introspection, forward auth).
    pub fn single(
        name: &str,
        endpoint: Arc<Endpoint>,
        connect_timeout: Duration,
        response_header_timeout: Duration,
        pool: PoolSettings,
    ) -> Upstream {
        Upstream {
            name: Arc::from(name),
            endpoints: vec![endpoint],
            balancer: Balancer::random(&[1]),
            connect_timeout,
            response_header_timeout,
            pool,
            hash_on: None,
            outlier: health::OutlierSettings {
                consecutive_failures: 0,
                base_ejection_ms: 0,
                max_ejection_ms: 0,
                max_ejected_percent: 0,
            },
            retry: retry::RetryPolicy::none(),
            budget: retry::RetryBudget::new(0, 0),
            breaker: None,
            fail_when_all_down: false,
            probers: Vec::new(),
        }
    }

    /// Picks the endpoint for one try of a request.
    pub fn select(&self, pick: Pick<'_>) -> Option<&Arc<Endpoint>> {
        if self.fail_when_all_down && !self.endpoints.iter().any(|e| e.state.is_available(pick.now_ms)) {
            return None;
        }
        self.balancer.pick(&self.endpoints, pick)
    }

    /// Records how a try went for the endpoint's passive health. `failed`: no response, or a 5xx.
    pub fn record(&self, endpoint: &Endpoint, failed: bool, now_ms: u64) {
        let health = &endpoint.state.health;
        health.end_ejection_if_over(now_ms);
        if !failed {
            health.success();
            return;
        }
        let ejected = health.failure(&self.outlier, now_ms, || {
            // Never the whole upstream, and at most the configured share of it.
            let n = self.endpoints.len();
            let out = self.endpoints.iter().filter(|e| !e.state.is_available(now_ms)).count();
            let cap = (n * self.outlier.max_ejected_percent as usize / 100).max(1);
            out + 1 < n && out < cap
        });
        if ejected {
            tracing::warn!(
                upstream = %self.name,
                endpoint = %endpoint.url,
                "endpoint ejected after {} failures in a row",
                self.outlier.consecutive_failures
            );
        }
    }
}

/// One request in flight at an endpoint: counted while this lives.
pub struct InFlight(Arc<EndpointState>);

impl InFlight {
    pub fn new(state: &Arc<EndpointState>) -> InFlight {
        state.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(state.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A request's hash for consistent hashing and sticky splits: its key (as `rate_limit` keys
/// are written, a missing part replaced by the client's address) hashed the same way on every node.
pub fn hash_of(key: &[crate::policy::rate_limit::KeyPart], source: &crate::policy::rate_limit::KeySource<'_>) -> u64 {
    use std::hash::Hasher;
    let mut hasher = balance::stable_hasher();
    crate::policy::rate_limit::key::write_key(key, source, &mut hasher);
    hasher.finish()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSettings {
    pub max_idle_per_endpoint: usize,
    pub idle_timeout: Duration,
}

/// One address of an upstream.
pub struct Endpoint {
    /// As written in the config, for logs.
    pub url: Arc<str>,
    pub host: Arc<str>,
    pub port: u16,
    /// `host[:port]` as the default upstream Host header.
    pub authority: HeaderValue,
    pub weight: u32,
    pub state: Arc<EndpointState>,
}

impl Endpoint {
    /// An endpoint at `host` (IPv6 in brackets) and `port`; `url` is kept for logs.
    pub fn new(url: &str, host: &str, port: u16, weight: u32, state: Arc<EndpointState>) -> Endpoint {
        let authority = if port == 80 { host.to_owned() } else { format!("{host}:{port}") };
        Endpoint {
            url: Arc::from(url),
            host: Arc::from(host.trim_start_matches('[').trim_end_matches(']')),
            port,
            authority: HeaderValue::from_str(&authority).unwrap_or_else(|_| HeaderValue::from_static("invalid")),
            weight,
            state,
        }
    }

    /// The socket addresses to try, from the literal IP or the (cached) DNS answer.
    pub async fn addresses(&self) -> std::io::Result<Vec<SocketAddr>> {
        if let Ok(ip) = self.host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, self.port)]);
        }
        self.state.resolve(&self.host, self.port).await
    }
}

/// An `http://` URL taken apart, as the config names upstream services.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// Lowercase; bracketed IPv6 hosts keep their brackets.
    pub host: String,
    pub port: u16,
    /// None for an empty path or `/` without a query.
    pub path_and_query: Option<http::uri::PathAndQuery>,
}

impl HttpUrl {
    pub fn parse(url: &str) -> Result<HttpUrl, String> {
        let uri: http::Uri = url.parse().map_err(|_| format!("\"{url}\" is not a URL such as http://10.0.0.1:8080"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => return Err(format!("\"{url}\": https is not supported yet; use http://")),
            Some(other) => return Err(format!("\"{url}\": unsupported scheme \"{other}\"; use http://")),
            None => return Err(format!("\"{url}\" needs a scheme, e.g. http://{url}")),
        }
        let authority = uri.authority().ok_or_else(|| format!("\"{url}\" has no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!("\"{url}\": credentials in URLs are not supported"));
        }
        let host = authority.host().to_ascii_lowercase();
        if host.is_empty() {
            return Err(format!("\"{url}\" has no host"));
        }
        let path_and_query =
            uri.path_and_query().filter(|pq| !(matches!(pq.path(), "" | "/") && pq.query().is_none())).cloned();
        Ok(HttpUrl { host, port: authority.port_u16().unwrap_or(80), path_and_query })
    }
}

/// What an endpoint keeps across reloads: its identity (the key of its connection pools) and its
/// DNS answer.
pub struct EndpointState {
    pub id: u64,
    dns: Mutex<Option<(Vec<SocketAddr>, Instant)>>,
    /// Requests sent to this endpoint (all workers), for the admin view.
    pub requests: AtomicU64,
    /// Requests sent and not finished yet (for least-request and peak-EWMA).
    pub in_flight: AtomicU32,
    pub latency: health::Latency,
    pub health: health::Health,
    /// Held down by a failing active health check.
    pub active_down: std::sync::atomic::AtomicBool,
}

/// How long a DNS answer is reused. The system resolver does not tell us TTLs.
const DNS_CACHE_TTL: Duration = Duration::from_secs(30);

impl EndpointState {
    pub fn new(id: u64) -> Self {
        EndpointState {
            id,
            dns: Mutex::new(None),
            requests: AtomicU64::new(0),
            in_flight: AtomicU32::new(0),
            latency: health::Latency::default(),
            health: health::Health::default(),
            active_down: std::sync::atomic::AtomicBool::new(false),
        }
    }

    async fn resolve(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        {
            let cached = self.dns.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((addrs, at)) = cached.as_ref() {
                if at.elapsed() < DNS_CACHE_TTL {
                    return Ok(addrs.clone());
                }
            }
        }
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port)).await?.collect();
        if addrs.is_empty() {
            return Err(std::io::Error::new(std::io::ErrorKind::NotFound, format!("{host} has no addresses")));
        }
        *self.dns.lock().unwrap_or_else(|e| e.into_inner()) = Some((addrs.clone(), Instant::now()));
        Ok(addrs)
    }

    /// Whether requests may go here: not ejected by passive health, not down by active checks.
    pub fn is_available(&self, now_ms: u64) -> bool {
        self.health.is_available(now_ms) && !self.active_down.load(Ordering::Relaxed)
    }

    pub fn count_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }
}
