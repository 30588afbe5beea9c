//! A service a policy consults on the request path (an authorization service, an OAuth2
//! introspection endpoint): one URL, reached through the upstream client so its connections are
//! pooled per worker, with one timeout for the whole exchange and a cap on the answer's size.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{Request, Uri, header};
use http_body_util::{BodyExt, Limited};

use crate::proxy::body::UpstreamBody;
use crate::state::registry::Registry;
use crate::upstream::{Endpoint, HttpUrl, PoolSettings, Upstream, client};

pub struct Service {
    /// A one-endpoint upstream, and its endpoint.
    upstream: Upstream,
    endpoint: Arc<Endpoint>,
    target: Uri,
    timeout: Duration,
}

/// The service's answer: its head, and its body unless it was larger than the cap.
pub struct Answer {
    pub parts: http::response::Parts,
    pub body: Option<Bytes>,
}

impl Service {
    /// `url` is `http://host[:port][/path][?query]`; `kind` names the pool (e.g. `forward_auth`).
    pub fn new(kind: &str, url: &str, timeout: Duration, registry: &Registry) -> Result<Service, String> {
        let parsed = HttpUrl::parse(url)?;
        let scheme = if parsed.tls { "https" } else { "http" };
        let key = format!("{kind}:{scheme}://{}:{}", parsed.host, parsed.port);
        let endpoint = Endpoint::new(url, &parsed.host, parsed.port, 1, registry.endpoint(&key));
        let target = Uri::from(parsed.path_and_query.unwrap_or_else(|| PathAndQuery::from_static("/")));
        let pool = PoolSettings { max_idle_per_endpoint: 256, idle_timeout: Duration::from_secs(30) };
        let endpoint = Arc::new(endpoint);
        let tls = if parsed.tls { Some(crate::upstream::tls::UpstreamTls::system()?) } else { None };
        let upstream = Upstream::single(kind, endpoint.clone(), timeout, timeout, pool, tls);
        Ok(Service { upstream, endpoint, target, timeout })
    }

    /// The URL as configured, for logs.
    pub fn url(&self) -> &str {
        &self.endpoint.url
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    #[cfg(test)]
    pub fn target(&self) -> &Uri {
        &self.target
    }

    #[cfg(test)]
    pub fn authority(&self) -> &http::HeaderValue {
        &self.endpoint.authority
    }

    /// A request to the service's URL with its `Host`; the caller adds headers and the method.
    pub fn request(&self, body: UpstreamBody) -> Request<UpstreamBody> {
        let mut request = Request::new(body);
        *request.uri_mut() = self.target.clone();
        request.headers_mut().insert(header::HOST, self.endpoint.authority.clone());
        request
    }

    /// One exchange, within the timeout. `Err` says why there is no answer (for the log).
    pub async fn call(&self, request: Request<UpstreamBody>, max_body: usize) -> Result<Answer, String> {
        match tokio::time::timeout(self.timeout, self.exchange(request, max_body)).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        }
    }

    async fn exchange(&self, request: Request<UpstreamBody>, max_body: usize) -> Result<Answer, String> {
        let response = client::send(&self.upstream, &self.endpoint, request).await.map_err(|e| e.to_string())?;
        let (parts, body) = response.into_parts();
        let body = match Limited::new(body, max_body).collect().await {
            // Read to the end: the connection serves the next call.
            Ok(collected) => Some(collected.to_bytes()),
            Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => None,
            Err(e) => return Err(format!("reading the answer failed: {e}")),
        };
        Ok(Answer { parts, body })
    }
}
