//! Upstreams (named groups of endpoints) and how a request picks one endpoint.
//!
//! Request path step 6: `Upstream::select` → `Endpoint`, then `client::send` (step 7) takes a pooled
//! connection to it. Runtime types only; built by `config::compile`.

pub mod active;
pub mod balance;
pub mod breaker;
pub mod client;
pub mod discovery;
pub mod fetch;
pub mod h1;
pub mod health;
pub mod pool;
pub mod retry;
pub mod tls;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, Guard};
use http::HeaderValue;

pub use balance::{Balancer, Pick};

use crate::state::registry::Registry;

/// A named group of endpoints with its balancing, timeouts and pool settings.
pub struct Upstream {
    pub name: Arc<str>,
    /// The endpoints and their balancer: fixed when the config lists the endpoints, swapped by
    /// `discovery` when it finds others.
    pub members: Arc<ArcSwap<Members>>,
    /// The source that keeps `members` current (it runs while this is held).
    pub discovery: Option<Arc<discovery::Discovery>>,
    /// A newly available endpoint's share grows to its full weight over this time (0: at once).
    pub slow_start_ms: u64,
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
    /// Metric handles (None: metrics off, or one of gatehouse's own service calls).
    pub metrics: Option<crate::telemetry::metrics::UpstreamMetrics>,
    /// TLS to the endpoints (`https://`).
    pub tls: Option<Arc<tls::UpstreamTls>>,
    /// HTTP/2 to the endpoints (one multiplexed connection per endpoint and worker).
    pub http2: bool,
}

/// An upstream's endpoints as they are now, with the balancer that picks among them.
pub struct Members {
    pub endpoints: Vec<Arc<Endpoint>>,
    pub balancer: Balancer,
    /// The endpoints' active health checks, running while these members (or later ones with the
    /// same checks) live.
    _probers: Vec<Arc<active::Prober>>,
}

/// What members are built with besides their endpoints: the parts of an upstream's config they
/// depend on.
#[derive(Debug, Clone)]
pub struct MemberSpec {
    pub upstream: Arc<str>,
    pub balance: crate::config::BalanceConfig,
    pub check: Option<active::CheckSettings>,
    /// The endpoints are reached over TLS: their URLs say `https://`, and port 443 is left out of
    /// the Host header.
    pub tls: bool,
}

impl Members {
    pub fn empty(spec: &MemberSpec) -> Members {
        Members { endpoints: Vec::new(), balancer: balancer(spec, &[], None), _probers: Vec::new() }
    }

    /// The endpoints at `targets` (their state taken from the registry, so an address keeps its
    /// pool and health), a balancer over them and, with `start_checks`, their health checks.
    pub fn build(spec: &MemberSpec, targets: &[discovery::Target], registry: &Registry, start_checks: bool) -> Members {
        let endpoints: Vec<Arc<Endpoint>> = targets
            .iter()
            .map(|t| {
                let url = if spec.tls { t.url.replacen("http://", "https://", 1) } else { t.url.clone() };
                let mut endpoint = Endpoint::new(&url, &t.host, t.port, t.weight, registry.endpoint(&url));
                if let Some(authority) = t.authority.as_deref().and_then(|a| HeaderValue::from_str(a).ok()) {
                    endpoint.authority = authority;
                }
                Arc::new(endpoint)
            })
            .collect();
        let probers = match &spec.check {
            Some(settings) if start_checks => endpoints
                .iter()
                .map(|e| {
                    let key = format!("{}|{settings:?}", e.url);
                    registry.prober(&key, || {
                        active::Prober::start(e.state.clone(), e.url.clone(), e.host.clone(), e.port, settings.clone())
                    })
                })
                .collect(),
            _ => Vec::new(),
        };
        Members { balancer: balancer(spec, &endpoints, Some(registry)), endpoints, _probers: probers }
    }
}

/// The balancer of `spec.balance` over `endpoints`; a round-robin's position is kept in the
/// registry, when there is one.
fn balancer(spec: &MemberSpec, endpoints: &[Arc<Endpoint>], registry: Option<&Registry>) -> Balancer {
    use crate::config::BalanceConfig;
    use std::hash::{Hash, Hasher};
    let weights: Vec<u32> = endpoints.iter().map(|e| e.weight).collect();
    match spec.balance {
        BalanceConfig::RoundRobin => {
            // Same endpoints and weights → same rotation: it continues across reloads.
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            for e in endpoints {
                e.url.hash(&mut hasher);
                e.weight.hash(&mut hasher);
            }
            let key = format!("{}#{:x}", spec.upstream, hasher.finish());
            Balancer::round_robin(&weights, registry.map(|r| r.balancer(&key)).unwrap_or_default())
        }
        BalanceConfig::Random => Balancer::random(&weights),
        BalanceConfig::LeastRequest => Balancer::LeastRequest,
        BalanceConfig::Ewma => Balancer::PeakEwma,
        BalanceConfig::ConsistentHash => {
            let names: Vec<&str> = endpoints.iter().map(|e| &*e.url).collect();
            Balancer::ring(&names, &weights)
        }
    }
}

/// `host` as it stands in a URL or a Host header: an IPv6 address in brackets.
pub fn bracketed(host: &str) -> std::borrow::Cow<'_, str> {
    if host.contains(':') && !host.starts_with('[') { format!("[{host}]").into() } else { host.into() }
}

/// The Host header of `host` and `port`: `host:port`, or `host` alone for the scheme's default
/// port (80, or 443 with `tls`).
pub fn authority_of(host: &str, port: u16, tls: bool) -> String {
    let host = bracketed(host);
    if port == if tls { 443 } else { 80 } { host.into_owned() } else { format!("{host}:{port}") }
}

/// An endpoint as the config writes it: an `http://host[:port]` URL without path, and a weight.
pub fn target_of(url: &str, weight: u32) -> Result<discovery::Target, String> {
    if weight == 0 || weight > 10_000 {
        return Err("weight must be between 1 and 10000".into());
    }
    let parsed = HttpUrl::parse(url)?;
    if parsed.path_and_query.is_some() {
        return Err(format!("\"{url}\": an endpoint URL cannot have a path or query; use a route's rewrite"));
    }
    let mut target = discovery::Target::new(&parsed.host, parsed.port, weight, None);
    if parsed.tls {
        target.url = target.url.replacen("http://", "https://", 1);
    }
    Ok(target)
}

/// Redraws at most this often when the balancer picks an endpoint that is still warming up.
const SLOW_START_REDRAWS: u32 = 4;

impl Upstream {
    /// A single-endpoint upstream with default settings and no retries (for gatehouse's own calls:
    /// JWKS, introspection, forward auth).
    pub fn single(
        name: &str,
        endpoint: Arc<Endpoint>,
        connect_timeout: Duration,
        response_header_timeout: Duration,
        pool: PoolSettings,
        tls: Option<Arc<tls::UpstreamTls>>,
    ) -> Upstream {
        let members = Members { endpoints: vec![endpoint], balancer: Balancer::random(&[1]), _probers: Vec::new() };
        Upstream {
            name: Arc::from(name),
            members: Arc::new(ArcSwap::from_pointee(members)),
            discovery: None,
            slow_start_ms: 0,
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
            metrics: None,
            tls,
            http2: false,
        }
    }

    /// The endpoints as they are now.
    pub fn members(&self) -> Guard<Arc<Members>> {
        self.members.load()
    }

    /// Picks the endpoint for one try of a request.
    pub fn select(&self, pick: Pick<'_>) -> Option<Arc<Endpoint>> {
        let members = self.members.load();
        if self.fail_when_all_down && !members.endpoints.iter().any(|e| e.state.is_available(pick.now_ms)) {
            return None;
        }
        let mut chosen = members.balancer.pick(&members.endpoints, pick)?;
        if self.slow_start_ms > 0 {
            // An endpoint warming up keeps a pick with the probability of its warmth and is
            // otherwise drawn again: its share is about its weight scaled by its warmth.
            for _ in 0..SLOW_START_REDRAWS {
                let warmth = chosen.state.warmth(pick.now_ms, self.slow_start_ms);
                if warmth >= 1.0 || fastrand::f64() < warmth {
                    break;
                }
                chosen = members.balancer.pick(&members.endpoints, pick)?;
            }
        }
        Some(chosen.clone())
    }

    /// Records how a try went for the endpoint's passive health. `failed`: no response, or a 5xx.
    pub fn record(&self, endpoint: &Endpoint, failed: bool, now_ms: u64) {
        let health = &endpoint.state.health;
        if let Some(ended) = health.end_ejection_if_over(now_ms) {
            // Slow start counts from the end of the ejection.
            endpoint.state.mark_up(ended);
        }
        if !failed {
            health.success();
            return;
        }
        let ejected = health.failure(&self.outlier, now_ms, || {
            // Never the whole upstream, and at most the configured share of it.
            let members = self.members.load();
            let n = members.endpoints.len();
            let out = members.endpoints.iter().filter(|e| !e.state.is_available(now_ms)).count();
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

/// One request in flight at an endpoint: counted while this lives (until its response body has
/// been sent), by the endpoint and by the upstream's circuit breaker.
pub struct InFlight(Arc<EndpointState>, Option<breaker::Ticket>);

impl InFlight {
    pub fn new(state: &Arc<EndpointState>, ticket: Option<breaker::Ticket>) -> InFlight {
        state.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(state.clone(), ticket)
    }

    /// Reports the outcome to the circuit breaker, if the upstream has one.
    pub fn finish(&mut self, failed: bool, now_ms: u64) {
        if let Some(ticket) = &mut self.1 {
            ticket.finish(failed, now_ms);
        }
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
    /// An endpoint at `host` (IPv6 in brackets) and `port`; `url` is kept for logs, and its
    /// scheme says which port is the default one (left out of the Host header).
    pub fn new(url: &str, host: &str, port: u16, weight: u32, state: Arc<EndpointState>) -> Endpoint {
        let authority = authority_of(host, port, url.starts_with("https://"));
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
    /// `https://`.
    pub tls: bool,
}

impl HttpUrl {
    pub fn parse(url: &str) -> Result<HttpUrl, String> {
        let uri: http::Uri = url.parse().map_err(|_| format!("\"{url}\" is not a URL such as http://10.0.0.1:8080"))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            Some(other) => return Err(format!("\"{url}\": unsupported scheme \"{other}\"; use http:// or https://")),
            None => return Err(format!("\"{url}\" needs a scheme, e.g. http://{url}")),
        };
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
        let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
        Ok(HttpUrl { host, port, path_and_query, tls })
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
    /// When this endpoint last became available (created, or passing its health check again),
    /// on the coarse clock: slow start counts from here or from the end of an ejection.
    up_since_ms: AtomicU64,
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
            up_since_ms: AtomicU64::new(crate::transport::clock::now_ms()),
        }
    }

    /// The endpoint is available again (its health check passes).
    pub fn mark_up(&self, now_ms: u64) {
        self.up_since_ms.store(now_ms, Ordering::Relaxed);
    }

    /// How far along its slow start this endpoint is: from 0.1 just after it became available to
    /// 1.0 once `window_ms` have passed.
    pub fn warmth(&self, now_ms: u64, window_ms: u64) -> f64 {
        let since = self.up_since_ms.load(Ordering::Relaxed).max(self.health.ejected_until_ms());
        let up_for = now_ms.saturating_sub(since);
        if up_for >= window_ms {
            return 1.0;
        }
        0.1 + 0.9 * up_for as f64 / window_ms.max(1) as f64
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_urls_are_checked() {
        let at = |url: &str| target_of(url, 1).map(|t| (t.host, t.port, t.url));
        assert_eq!(at("http://10.0.0.1:8080").unwrap(), ("10.0.0.1".into(), 8080, "http://10.0.0.1:8080".into()));
        assert_eq!(at("http://User.Internal").unwrap(), ("user.internal".into(), 80, "http://user.internal:80".into()));
        assert_eq!(at("http://[::1]:81/").unwrap(), ("[::1]".into(), 81, "http://[::1]:81".into()));
        let secure = target_of("https://x", 1).unwrap();
        assert_eq!((secure.port, secure.url.as_str()), (443, "https://x:443"));
        for bad in
            ["10.0.0.1:80", "ftp://x", "https://x/base", "http://x/base", "http://u:p@x", "http://x?q", "not a url"]
        {
            assert!(at(bad).is_err(), "{bad}");
        }
        assert!(target_of("http://x:1", 0).is_err());
        assert!(target_of("http://x:1", 10_001).is_err());
        // A discovered IPv6 address is bracketed like a written one.
        assert_eq!(discovery::Target::new("::1", 81, 1, None).url, "http://[::1]:81");
    }

    #[test]
    fn authorities_bracket_ipv6_and_leave_out_port_80() {
        assert_eq!(authority_of("users.internal", 80, false), "users.internal");
        assert_eq!(authority_of("users.internal", 443, true), "users.internal");
        assert_eq!(authority_of("users.internal", 443, false), "users.internal:443");
        assert_eq!(authority_of("users.internal", 80, true), "users.internal:80");
        assert_eq!(authority_of("10.0.0.1", 50051, false), "10.0.0.1:50051");
        assert_eq!(authority_of("::1", 8080, false), "[::1]:8080");
        assert_eq!(authority_of("[::1]", 8080, false), "[::1]:8080", "already bracketed");
        // An endpoint's Host header is the same whether its address was written or discovered.
        let written = Endpoint::new("http://[::1]:81", "[::1]", 81, 1, Arc::new(EndpointState::new(1)));
        assert_eq!(written.authority, "[::1]:81");
    }

    #[test]
    fn warmth_grows_from_a_tenth_to_whole_over_the_window() {
        let state = EndpointState::new(1);
        state.mark_up(1_000);
        assert!((state.warmth(1_000, 10_000) - 0.1).abs() < 1e-9);
        assert!((state.warmth(6_000, 10_000) - 0.55).abs() < 1e-9);
        assert_eq!(state.warmth(11_000, 10_000), 1.0);
        // The end of an ejection starts it again.
        state.health.eject_until(20_000);
        assert!((state.warmth(20_000, 10_000) - 0.1).abs() < 1e-9);
        assert_eq!(state.warmth(30_000, 10_000), 1.0);
    }
}
