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
