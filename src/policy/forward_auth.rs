//! `forward_auth`: an authorization service decides whether a request may pass (external
//! authorization, as Traefik's ForwardAuth, nginx's `auth_request` and Envoy's `ext_authz` do it).
//!
//! For each request gatehouse sends the service a `GET` to the configured URL with the request's
//! headers (all end-to-end headers, or the configured list) and `X-Forwarded-Method`, `-Proto`,
//! `-Host`, `-Uri` (the normalised path and the query) and `-For` (the client address), always set
//! by gatehouse so a client cannot choose what the service sees. No request body is sent.
//!
//! - A 2xx answer lets the request through; the configured `upstream_headers` of the answer are
//!   copied into the upstream request, after removing whatever the client sent under those names.
//! - Any other answer below 500 (401, 403, a 302 to a login page …) is the client's response:
//!   status, end-to-end headers and body (at most 64 KiB).
//! - No answer in time, a 5xx, or a malformed answer is a failure: by default the request is refused
//!   with 503 `auth_unavailable` (failing closed); `on_failure: allow` lets it through instead,
//!   without any `upstream_headers`.
//!
//! Connections to the service are pooled per worker like upstream connections. Allow decisions can
//! be cached per worker for a `ttl`, keyed by the values of chosen request headers (and, when
//! listed, `:method`, `:path`, `:host`); denials are never cached, so a caller who just logged in is
//! asked about again at once.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, header};

use crate::config::{FailureMode, ForwardAuthConfig};
use crate::proxy::body::{ProxyBody, UpstreamBody};
use crate::proxy::error::ProxyError;
use crate::proxy::headers::strip_response_hop_by_hop;
use crate::state::registry::Registry;
use crate::transport::clock;

use super::cache::LocalCache;
use super::service::Service;
use super::{PolicyOutcome, RequestFacts};

/// The largest answer body read from the service.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// Decisions kept per worker.
const CACHE_CAPACITY: usize = 8192;
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

static X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
static X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The headers an allow decision adds to the upstream request.
type Grant = Arc<[(HeaderName, HeaderValue)]>;

thread_local! {
    static DECISIONS: std::cell::RefCell<LocalCache<Grant>> =
        std::cell::RefCell::new(LocalCache::new(CACHE_CAPACITY, &super::cache::FORWARD_AUTH));
}

pub struct ForwardAuthPolicy {
    service: Service,
    /// None: every end-to-end header of the request.
    forward: Option<Vec<HeaderName>>,
    upstream_headers: Vec<HeaderName>,
    on_failure: FailureMode,
    cache: Option<DecisionCache>,
}

struct DecisionCache {
    ttl_ms: u64,
    key: Vec<KeyPart>,
    scope: u64,
}

enum KeyPart {
    Header(HeaderName),
    Method,
    Path,
    Host,
}

/// What the service answered.
enum Answer {
    Allow(Grant),
    Deny(Box<Response<ProxyBody>>),
}

impl ForwardAuthPolicy {
    pub fn compile(
        config: &ForwardAuthConfig,
        registry: &Registry,
    ) -> Result<ForwardAuthPolicy, Vec<(String, String)>> {
        let mut errors = Vec::new();
        let timeout = config.timeout.map_or(DEFAULT_TIMEOUT, |t| t.get());
        if timeout < Duration::from_millis(1) {
            errors.push(("timeout".to_owned(), "must be at least 1ms".to_owned()));
        }
        let service = Service::new("forward_auth", &config.url, timeout, registry)
            .map_err(|e| errors.push(("url".to_owned(), e)))
            .ok();
        let mut names = |field: &str, list: &[String]| -> Vec<HeaderName> {
            let mut out = Vec::new();
            for (i, name) in list.iter().enumerate() {
                match HeaderName::from_bytes(name.as_bytes()) {
                    Ok(h) => out.push(h),
                    Err(_) => errors.push((format!("{field}[{i}]"), format!("\"{name}\" is not a header name"))),
                }
            }
            out
        };
        let forward = config.forward_headers.as_ref().map(|list| names("forward_headers", list));
        let upstream_headers = names("upstream_headers", &config.upstream_headers);
        let cache = config.cache.as_ref().map(|c| {
            let mut key = Vec::new();
            for (i, part) in c.key.iter().enumerate() {
                key.push(match part.as_str() {
                    ":method" => KeyPart::Method,
                    ":path" => KeyPart::Path,
                    ":host" => KeyPart::Host,
                    name => match HeaderName::from_bytes(name.as_bytes()) {
                        Ok(h) => KeyPart::Header(h),
                        Err(_) => {
                            errors.push((
                                format!("cache.key[{i}]"),
                                format!("\"{name}\" is not a header name (or :method, :path, :host)"),
                            ));
                            continue;
                        }
                    },
                });
            }
            if !key.iter().any(|k| matches!(k, KeyPart::Header(_))) {
                errors.push((
                    "cache.key".to_owned(),
                    "list the request headers that identify the caller, e.g. [authorization]".to_owned(),
                ));
            }
            let ttl = c.ttl.get();
            if ttl < Duration::from_millis(1) {
                errors.push(("cache.ttl".to_owned(), "must be at least 1ms".to_owned()));
            }
            let scope = crate::policy::cache::scope_of(config);
            DecisionCache { ttl_ms: ttl.as_millis().min(u128::from(u64::MAX)) as u64, key, scope }
        });
        let Some(service) = service else { return Err(errors) };
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(ForwardAuthPolicy { service, forward, upstream_headers, on_failure: config.on_failure, cache })
    }

    /// Asks the service about this request (or remembers its answer), and either lets the request
    /// through with the granted headers or answers it with the service's denial.
    pub async fn check(&self, headers: &mut HeaderMap, facts: &RequestFacts<'_>) -> Result<PolicyOutcome, ProxyError> {
        let cache_key = self.cache.as_ref().and_then(|c| c.key_of(headers, facts).map(|k| (c, k)));
        if let Some((cache, key)) = &cache_key {
            let now = clock::now_ms();
            if let Some(grant) = DECISIONS.with(|d| d.borrow().get(cache.scope, 0, key, now)) {
                self.apply(headers, &grant);
                return Ok(PolicyOutcome::Continue);
            }
        }
        let request = self.request(headers, facts);
        let answer = match self.ask(request).await {
            Ok(answer) => answer,
            Err(reason) => return self.failed(headers, &reason),
        };
        match answer {
            Answer::Allow(grant) => {
                if let Some((cache, key)) = &cache_key {
                    // A fresh reading: the coarse clock may be a tick behind.
                    let expires = clock::tick().saturating_add(cache.ttl_ms);
                    DECISIONS.with(|d| d.borrow_mut().put(cache.scope, 0, key, expires, grant.clone()));
                }
                self.apply(headers, &grant);
                Ok(PolicyOutcome::Continue)
            }
            Answer::Deny(response) => Ok(PolicyOutcome::Respond(response)),
        }
    }

    /// The request to the service: its headers from the client's, and the facts it decides on.
    fn request(&self, headers: &HeaderMap, facts: &RequestFacts<'_>) -> Request<UpstreamBody> {
        let mut out = match &self.forward {
            None => {
                let mut all = headers.clone();
                strip_response_hop_by_hop(&mut all);
                for name in [header::CONTENT_LENGTH, header::EXPECT] {
                    all.remove(name);
                }
                all
            }
            Some(names) => {
                let mut some = HeaderMap::with_capacity(names.len() + 8);
                for name in names {
                    for value in headers.get_all(name) {
                        some.append(name.clone(), value.clone());
                    }
                }
                let (id_name, id) = facts.request_id;
                some.insert(id_name.clone(), id.clone());
                some
            }
        };
        // What the service decides on is gatehouse's to say: the client's claims go first.
        for name in [&X_FORWARDED_METHOD, &X_FORWARDED_PROTO, &X_FORWARDED_HOST, &X_FORWARDED_URI, &X_FORWARDED_FOR] {
            out.remove(name);
        }
        // The service's own Host (set by `Service::request`); the client's goes as X-Forwarded-Host.
        out.remove(header::HOST);
        out.insert(X_FORWARDED_METHOD.clone(), method_value(facts.method));
        out.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(facts.scheme));
        if let Some(host) = facts.host {
            out.insert(X_FORWARDED_HOST.clone(), host.clone());
        }
        let uri = match facts.query {
            Some(q) => format!("{}?{q}", facts.path),
            None => facts.path.to_owned(),
        };
        // The normalised path is visible ASCII and the query was part of a valid request target.
        if let Ok(uri) = HeaderValue::from_str(&uri) {
            out.insert(X_FORWARDED_URI.clone(), uri);
        }
        if let Ok(client) = HeaderValue::from_str(&facts.client.to_string()) {
            out.insert(X_FORWARDED_FOR.clone(), client);
        }
        let mut request = self.service.request(UpstreamBody::Empty);
        request.headers_mut().extend(out);
        request
    }

    /// One exchange with the service; `Err` is a failure (not a decision).
    async fn ask(&self, request: Request<UpstreamBody>) -> Result<Answer, String> {
        let super::service::Answer { mut parts, body } = self.service.call(request, MAX_ANSWER_BYTES).await?;
        if parts.status.is_server_error() || parts.status.is_informational() {
            return Err(format!("the service answered {}", parts.status));
        }
        if parts.status.is_success() {
            let mut grant = Vec::new();
            for name in &self.upstream_headers {
                for value in parts.headers.get_all(name) {
                    // Grants are cached, and the answer's values are slices of the connection's
                    // read buffer: a copy keeps the few bytes, not the buffer.
                    let kept = HeaderValue::from_bytes(value.as_bytes()).unwrap_or_else(|_| value.clone());
                    grant.push((name.clone(), kept));
                }
            }
            return Ok(Answer::Allow(grant.into()));
        }
        let Some(body) = body else {
            return Err(format!("the service's {} answer is larger than {MAX_ANSWER_BYTES} bytes", parts.status));
        };
        strip_response_hop_by_hop(&mut parts.headers);
        parts.headers.remove(header::CONTENT_LENGTH);
        let mut response = Response::new(if body.is_empty() { ProxyBody::empty() } else { ProxyBody::full(body) });
        *response.status_mut() = parts.status;
        *response.headers_mut() = parts.headers;
        Ok(Answer::Deny(Box::new(response)))
    }

    /// The service could not decide.
    fn failed(&self, headers: &mut HeaderMap, reason: &str) -> Result<PolicyOutcome, ProxyError> {
        tracing::warn!(service = self.service.url(), reason, "forward_auth: the authorization service failed");
        match self.on_failure {
            FailureMode::Deny => Err(ProxyError::AuthUnavailable("the authorization service is unavailable".into())),
            FailureMode::Allow => {
                self.apply(headers, &[]);
                Ok(PolicyOutcome::Continue)
            }
        }
    }

    /// Replaces the client's headers of the granted names with the granted values.
    fn apply(&self, headers: &mut HeaderMap, grant: &[(HeaderName, HeaderValue)]) {
        for name in &self.upstream_headers {
            headers.remove(name);
        }
        for (name, value) in grant {
            headers.append(name.clone(), value.clone());
        }
    }
}

impl DecisionCache {
    /// The bytes that identify a decision: each part length-prefixed, so values cannot run into
    /// each other. None when the request carries none of the key headers: it is not cached.
    fn key_of(&self, headers: &HeaderMap, facts: &RequestFacts<'_>) -> Option<Vec<u8>> {
        let mut key = Vec::with_capacity(128);
        let mut identified = false;
        fn part(bytes: &[u8], key: &mut Vec<u8>) {
            key.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
            key.extend_from_slice(bytes);
        }
        for k in &self.key {
            match k {
                KeyPart::Header(name) => {
                    let mut values = headers.get_all(name).iter().peekable();
                    identified |= values.peek().is_some();
                    key.push(b'h');
                    for value in values {
                        part(value.as_bytes(), &mut key);
                    }
                    key.push(b';');
                }
                KeyPart::Method => part(facts.method.as_str().as_bytes(), &mut key),
                KeyPart::Path => {
                    part(facts.path.as_bytes(), &mut key);
                    part(facts.query.unwrap_or("").as_bytes(), &mut key);
                    key.push(u8::from(facts.query.is_some()));
                }
                KeyPart::Host => part(facts.host.map_or(&b""[..], HeaderValue::as_bytes), &mut key),
            }
        }
        identified.then_some(key)
    }
}

fn method_value(method: &Method) -> HeaderValue {
    HeaderValue::from_str(method.as_str()).unwrap_or_else(|_| HeaderValue::from_static("GET"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DecisionCacheConfig;
    use crate::config::units::DurationValue;

    fn config(url: &str) -> ForwardAuthConfig {
        ForwardAuthConfig { url: url.to_owned(), ..Default::default() }
    }

    fn compile(c: &ForwardAuthConfig) -> Result<ForwardAuthPolicy, Vec<(String, String)>> {
        ForwardAuthPolicy::compile(c, &Registry::new())
    }

    #[test]
    fn bad_settings_are_reported_by_field() {
        let mut c = config("ftp://auth.internal/check");
        c.upstream_headers = vec!["x-user".into(), "bad header".into()];
        c.forward_headers = Some(vec!["authorization".into(), "(".into()]);
        c.cache = Some(DecisionCacheConfig { ttl: DurationValue::secs(0), key: vec![":path".into()] });
        let errors = compile(&c).err().unwrap();
        let fields: Vec<&str> = errors.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, ["url", "forward_headers[1]", "upstream_headers[1]", "cache.key", "cache.ttl"]);
        assert!(compile(&config("auth:9000")).is_err(), "a URL needs a scheme");
        assert!(compile(&config("http://user:pw@auth/")).is_err(), "no credentials in URLs");
    }

    #[test]
    fn the_target_is_the_urls_path_and_query() {
        let p = compile(&config("http://127.0.0.1:9000/verify?realm=api")).unwrap();
        assert_eq!(p.service.target(), "/verify?realm=api");
        assert_eq!(p.service.authority(), "127.0.0.1:9000");
        let p = compile(&config("http://auth")).unwrap();
        assert_eq!(p.service.target(), "/");
        assert_eq!(p.service.authority(), "auth");
    }
}
