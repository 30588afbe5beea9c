//! `introspection`: opaque OAuth2 access tokens, checked with the authorization server
//! (authentication, request policies phase; RFC 7662).
//!
//! gatehouse POSTs `token=…&token_type_hint=…` to the introspection endpoint, authenticated as a
//! client with HTTP Basic. An answer `{"active": true, …}` makes its members the request's claims
//! (for `authorize`, `forward_claims`, the consumer); `active: false` is `401 invalid_token`. An
//! endpoint that cannot answer (unreachable, slow, not 200, not JSON) is `503 auth_unavailable`:
//! failing closed, as a token nobody could check is not a checked token.
//!
//! Answers are cached per worker for `cache_ttl`, an active token never beyond its `exp`, keyed by
//! the whole token. Inactive answers are cached too, so a client repeating a dead token costs the
//! authorization server one call per `cache_ttl`.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use serde_json::{Map, Value};

use crate::config::IntrospectionConfig;
use crate::proxy::body::UpstreamBody;
use crate::proxy::error::ProxyError;
use crate::state::registry::Registry;
use crate::transport::clock;

use super::cache::LocalCache;
use super::consumers::ConsumerIndex;
use super::identity::Identity;
use super::service::Service;
use super::token::{Bearer, ClaimHeaders, QueryEdit, TokenSources};

/// Tokens longer than this are refused without asking.
const MAX_TOKEN_BYTES: usize = 4096;
/// The largest introspection answer read.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(30);

thread_local! {
    /// Introspection answers by token: `Some` for an active token, `None` for an inactive one.
    static ANSWERS: std::cell::RefCell<LocalCache<Option<Identity>>> =
        std::cell::RefCell::new(LocalCache::new(8192, &super::cache::INTROSPECTION));
}

pub struct IntrospectionPolicy {
    service: Service,
    /// `Basic base64(client_id:client_secret)`, both form-encoded first (RFC 6749 §2.3.1).
    client_auth: HeaderValue,
    token_type_hint: String,
    audience: Option<Vec<String>>,
    bearer: Bearer,
    cache_ttl_ms: u64,
    /// Identifies these settings in the per-worker cache.
    scope: u64,
}

impl IntrospectionPolicy {
    pub fn compile(
        config: &IntrospectionConfig,
        registry: &Registry,
        consumers: &Arc<ConsumerIndex>,
    ) -> Result<IntrospectionPolicy, Vec<(String, String)>> {
        let mut errors = Vec::new();
        let timeout = config.timeout.map_or(DEFAULT_TIMEOUT, |t| t.get());
        if timeout < Duration::from_millis(1) {
            errors.push(("timeout".to_owned(), "must be at least 1ms".to_owned()));
        }
        let service = Service::new("introspection", &config.url, timeout, registry)
            .map_err(|e| errors.push(("url".to_owned(), e)))
            .ok();
        if config.client_id.is_empty() {
            errors.push(("client_id".to_owned(), "must not be empty".to_owned()));
        }
        let credentials = format!("{}:{}", form_encode(&config.client_id), form_encode(&config.client_secret));
        let client_auth = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(credentials));
        let client_auth = HeaderValue::from_str(&client_auth).unwrap_or_else(|_| HeaderValue::from_static("invalid"));
        let sources = TokenSources::compile(&config.token_from, &mut errors);
        let claims =
            ClaimHeaders::compile(&config.forward_claims, config.consumer_claim.as_ref(), consumers, &mut errors);
        let scope = crate::policy::cache::scope_of(config);
        let Some(service) = service else { return Err(errors) };
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(IntrospectionPolicy {
            service,
            client_auth,
            token_type_hint: config.token_type_hint.clone().unwrap_or_else(|| "access_token".to_owned()),
            audience: config.audience.as_ref().map(|a| a.as_slice().to_vec()),
            bearer: Bearer { sources, claims, strip: config.strip_token, optional: config.optional },
            cache_ttl_ms: config.cache_ttl.map_or(DEFAULT_CACHE_TTL, |t| t.get()).as_millis() as u64,
            scope,
        })
    }

    /// Whether the request carries a token where this policy looks.
    pub fn presented(&self, headers: &HeaderMap, query: Option<&str>) -> bool {
        self.bearer.sources.presented(headers, query)
    }

    /// Removes the headers this policy sets from the client's request.
    pub fn remove_identity_headers(&self, headers: &mut HeaderMap) {
        self.bearer.claims.remove_from(headers);
    }

    /// Authenticates the request. `Ok(None)`: no token, and the policy is optional.
    pub async fn authenticate(
        &self,
        headers: &mut HeaderMap,
        query: Option<&str>,
        edit: &mut QueryEdit,
    ) -> Result<Option<Identity>, ProxyError> {
        let (token, at) = match self.bearer.take(headers, query) {
            Ok(found) => found,
            Err(outcome) => return outcome,
        };
        let identity = self.check(token).await?;
        self.bearer.accept(identity, at, headers, query, edit)
    }

    async fn check(&self, token: &str) -> Result<Identity, ProxyError> {
        let inactive = || ProxyError::unauthorized(Some("invalid_token"), "the token is not active");
        if token.len() > MAX_TOKEN_BYTES || !is_token68(token) {
            return Err(ProxyError::unauthorized(Some("invalid_token"), "the token is malformed"));
        }
        let cached = ANSWERS.with(|a| a.borrow().get(self.scope, 0, token.as_bytes(), clock::now_ms()));
        if let Some(answer) = cached {
            return answer.ok_or_else(inactive);
        }
        let claims = match self.introspect(token).await {
            Ok(claims) => claims,
            Err(reason) => {
                tracing::warn!(endpoint = self.service.url(), reason, "introspection: the endpoint failed");
                return Err(ProxyError::AuthUnavailable("the token could not be checked".into()));
            }
        };
        let now = unix_now();
        let answer = self.accept(claims, now);
        if self.cache_ttl_ms > 0 {
            let mut ttl = self.cache_ttl_ms;
            if let Some(exp) = answer.as_ref().and_then(|i| i.claim("exp")).and_then(Value::as_u64) {
                ttl = ttl.min(exp.saturating_sub(now).saturating_mul(1000));
            }
            let expires = clock::tick().saturating_add(ttl);
            ANSWERS.with(|a| a.borrow_mut().put(self.scope, 0, token.as_bytes(), expires, answer.clone()));
        }
        answer.ok_or_else(inactive)
    }

    /// The identity of an active token that passes the local checks; None when it is not usable.
    fn accept(&self, claims: Map<String, Value>, now: u64) -> Option<Identity> {
        if claims.get("active") != Some(&Value::Bool(true)) {
            return None;
        }
        // The server said active; a token past its own expiry is not, whatever the clocks say.
        if claims.get("exp").and_then(Value::as_u64).is_some_and(|exp| exp <= now) {
            return None;
        }
        if claims.get("nbf").and_then(Value::as_u64).is_some_and(|nbf| nbf > now + 30) {
            return None;
        }
        if let Some(accepted) = &self.audience {
            let names = |a: &str| accepted.iter().any(|x| x == a);
            let ok = match claims.get("aud") {
                Some(Value::String(a)) => names(a),
                Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).any(names),
                _ => false,
            };
            if !ok {
                return None;
            }
        }
        Some(Identity::of_claims(claims))
    }

    /// One call to the endpoint: the answer's members, or why there is no usable answer.
    async fn introspect(&self, token: &str) -> Result<Map<String, Value>, String> {
        let form = format!("token={}&token_type_hint={}", form_encode(token), form_encode(&self.token_type_hint));
        let mut request = self.service.request(UpstreamBody::Full(Some(Bytes::from(form))));
        *request.method_mut() = Method::POST;
        let headers = request.headers_mut();
        headers.insert(header::AUTHORIZATION, self.client_auth.clone());
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-www-form-urlencoded"));
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        let answer = self.service.call(request, MAX_ANSWER_BYTES).await?;
        if answer.parts.status != StatusCode::OK {
            return Err(format!("the endpoint answered {}", answer.parts.status));
        }
        let body = answer.body.ok_or_else(|| format!("the answer is larger than {MAX_ANSWER_BYTES} bytes"))?;
        match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(members)) => Ok(members),
            Ok(_) => Err("the answer is not a JSON object".to_owned()),
            Err(e) => Err(format!("the answer is not JSON: {e}")),
        }
    }
}

/// RFC 6750 `b64token`: the characters a bearer token may have.
fn is_token68(token: &str) -> bool {
    let body = token.trim_end_matches('=');
    !body.is_empty()
        && body.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/'))
}

fn form_encode(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(audience: Option<Vec<&str>>) -> IntrospectionPolicy {
        let config = IntrospectionConfig {
            url: "http://127.0.0.1:9/introspect".into(),
            client_id: "gate way".into(),
            client_secret: "s3cr:t".into(),
            audience: audience.map(|a| crate::config::OneOrMany::Many(a.into_iter().map(String::from).collect())),
            ..Default::default()
        };
        IntrospectionPolicy::compile(&config, &Registry::new(), &Arc::new(ConsumerIndex::default())).unwrap()
    }

    fn claims(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn client_credentials_are_form_encoded_then_base64() {
        let p = policy(None);
        let expected = base64::engine::general_purpose::STANDARD.encode("gate+way:s3cr%3At");
        assert_eq!(p.client_auth, format!("Basic {expected}").as_str());
    }

    #[test]
    fn only_active_unexpired_tokens_for_the_audience_are_accepted() {
        let now = 1_000_000;
        let p = policy(Some(vec!["api"]));
        assert!(p.accept(claims(serde_json::json!({"active": true, "aud": "api"})), now).is_some());
        assert!(p.accept(claims(serde_json::json!({"active": true, "aud": ["x", "api"]})), now).is_some());
        assert!(p.accept(claims(serde_json::json!({"active": true, "aud": "other"})), now).is_none());
        assert!(p.accept(claims(serde_json::json!({"active": true})), now).is_none(), "no aud, audience required");
        let p = policy(None);
        assert!(p.accept(claims(serde_json::json!({"active": false})), now).is_none());
        assert!(p.accept(claims(serde_json::json!({"active": "true"})), now).is_none(), "a string is not true");
        assert!(p.accept(claims(serde_json::json!({})), now).is_none());
        assert!(p.accept(claims(serde_json::json!({"active": true, "exp": now})), now).is_none());
        assert!(p.accept(claims(serde_json::json!({"active": true, "exp": now + 1})), now).is_some());
        assert!(p.accept(claims(serde_json::json!({"active": true, "nbf": now + 600})), now).is_none());
    }

    #[test]
    fn token_characters() {
        assert!(is_token68("abc.DEF-1_2~3+4/5=="));
        assert!(!is_token68("a b"));
        assert!(!is_token68("a,b"));
        assert!(!is_token68("=="));
        assert!(!is_token68("tok\u{e9}n"));
    }
}
