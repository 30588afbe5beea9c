//! Upstreams (named groups of endpoints) and how a request picks one endpoint.
//!
//! Request path step 6: `Upstream::select` → `Endpoint`, then `client::send` (step 7) takes a pooled
//! connection to it. Runtime types only; built by `config::compile`.

pub mod balance;
pub mod client;
pub mod fetch;
pub mod pool;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::HeaderValue;

pub use balance::Balancer;

/// A named group of endpoints with its balancing, timeouts and pool settings.
pub struct Upstream {
    pub name: Arc<str>,
    pub endpoints: Vec<Arc<Endpoint>>,
    pub balancer: Balancer,
    pub connect_timeout: Duration,
    pub response_header_timeout: Duration,
    pub pool: PoolSettings,
}

impl Upstream {
    /// Picks the endpoint for one request.
    pub fn select(&self) -> Option<&Arc<Endpoint>> {
        self.balancer.pick(&self.endpoints)
    }
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
    /// The socket addresses to try, from the literal IP or the (cached) DNS answer.
    pub async fn addresses(&self) -> std::io::Result<Vec<SocketAddr>> {
        if let Ok(ip) = self.host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, self.port)]);
        }
        self.state.resolve(&self.host, self.port).await
    }
}

/// What an endpoint keeps across reloads: its identity (the key of its connection pools) and its
/// DNS answer.
pub struct EndpointState {
    pub id: u64,
    dns: Mutex<Option<(Vec<SocketAddr>, Instant)>>,
    /// Requests sent to this endpoint (all workers), for the admin view.
    pub requests: AtomicU64,
}

/// How long a DNS answer is reused. The system resolver does not tell us TTLs.
const DNS_CACHE_TTL: Duration = Duration::from_secs(30);

impl EndpointState {
    pub fn new(id: u64) -> Self {
        EndpointState { id, dns: Mutex::new(None), requests: AtomicU64::new(0) }
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

    pub fn count_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }
}
