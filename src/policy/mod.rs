//! Policies: configured behaviour on a route, and the fixed order they run in.
//!
//! Request path step 5 (request policies) and step 8 (response policies, in reverse). The order is
//! code, not data: `apply_request_policies` below IS the order, with the reason for each position.
//! A policy ends in a `PolicyOutcome` (or an error that becomes the response), never a bool.
//!
//! Config: a route's policy list is merged with the global list; a route's policy of a kind replaces
//! the global policy of the same kind.

pub mod acl;
pub mod api_key;
pub mod authorize;
pub mod basic_auth;
pub mod cache;
pub mod concurrency;
pub mod consumers;
pub mod cors;
pub mod direct;
pub mod forward_auth;
pub mod headers;
pub mod hmac_auth;
pub mod identity;
pub mod introspection;
pub mod ip;
pub mod jwt;
pub mod rate_limit;
pub mod service;
pub mod token;

use std::sync::Arc;

use http::Response;

use crate::proxy::body::ProxyBody;
use crate::proxy::error::ProxyError;

pub use acl::AclPolicy;
pub use api_key::ApiKeyPolicy;
pub use authorize::AuthorizePolicy;
pub use basic_auth::BasicAuthPolicy;
pub use concurrency::ConcurrencyPolicy;
pub use consumers::{Consumer, ConsumerIndex};
pub use cors::CorsPolicy;
pub use direct::{DirectResponse, Redirect};
pub use forward_auth::ForwardAuthPolicy;
pub use headers::HeaderFilter;
pub use hmac_auth::HmacAuthPolicy;
pub use identity::Identity;
pub use introspection::IntrospectionPolicy;
pub use ip::IpRestriction;
pub use jwt::JwtPolicy;
pub use rate_limit::RateLimitPolicy;
pub use token::QueryEdit;

/// The compiled policies of one route, one slot per kind.
#[derive(Default, Clone)]
pub struct RoutePolicies {
    pub ip_restriction: Option<Arc<IpRestriction>>,
    pub cors: Option<Arc<CorsPolicy>>,
    pub jwt: Option<Arc<JwtPolicy>>,
    pub api_key: Option<Arc<ApiKeyPolicy>>,
    pub basic_auth: Option<Arc<BasicAuthPolicy>>,
    pub hmac_auth: Option<Arc<HmacAuthPolicy>>,
    pub introspection: Option<Arc<IntrospectionPolicy>>,
    pub forward_auth: Option<Arc<ForwardAuthPolicy>>,
    pub authorize: Option<Arc<AuthorizePolicy>>,
    pub acl: Option<Arc<AclPolicy>>,
    pub rate_limit: Option<Arc<RateLimitPolicy>>,
    pub quota: Option<Arc<RateLimitPolicy>>,
    pub concurrency: Option<Arc<ConcurrencyPolicy>>,
    /// `body_limit`: the route's largest request body.
    pub max_body_size: Option<u64>,
    pub request_headers: Option<Arc<HeaderFilter>>,
    pub response_headers: Option<Arc<HeaderFilter>>,
    pub direct_response: Option<Arc<DirectResponse>>,
    pub redirect: Option<Arc<Redirect>>,
}

impl RoutePolicies {
    /// The kinds configured, in the order they run: for `explain` and `routes`.
    pub fn names_in_order(&self) -> Vec<&'static str> {
        let mut names = Vec::new();
        if self.ip_restriction.is_some() {
            names.push("ip_restriction");
        }
        if self.cors.is_some() {
            names.push("cors");
        }
        if self.jwt.is_some() {
            names.push("jwt");
        }
        if self.api_key.is_some() {
            names.push("api_key");
        }
        if self.basic_auth.is_some() {
            names.push("basic_auth");
        }
        if self.hmac_auth.is_some() {
            names.push("hmac_auth");
        }
        if self.introspection.is_some() {
            names.push("introspection");
        }
        if self.forward_auth.is_some() {
            names.push("forward_auth");
        }
        if self.authorize.is_some() {
            names.push("authorize");
        }
        if self.acl.is_some() {
            names.push("acl");
        }
        if self.rate_limit.is_some() {
            names.push("rate_limit");
        }
        if self.quota.is_some() {
            names.push("quota");
        }
        if self.concurrency.is_some() {
            names.push("concurrency");
        }
        if self.max_body_size.is_some() {
            names.push("body_limit");
        }
        if self.request_headers.is_some() {
            names.push("request_headers");
        }
        if self.redirect.is_some() {
            names.push("redirect");
        }
        if self.direct_response.is_some() {
            names.push("direct_response");
        }
        if self.response_headers.is_some() {
            names.push("response_headers (on the response)");
        }
        names
    }

    /// Whether a policy establishes who the caller is.
    pub fn authenticates(&self) -> bool {
        self.api_key.is_some()
            || self.basic_auth.is_some()
            || self.hmac_auth.is_some()
            || self.jwt.is_some()
            || self.introspection.is_some()
    }

    /// Whether the caller's identity has claims (roles, scopes) for `authorize`.
    pub fn has_claims(&self) -> bool {
        self.jwt.is_some() || self.introspection.is_some()
    }

    /// Whether the route answers by itself, so it needs no upstream.
    pub fn responds(&self) -> bool {
        self.direct_response.is_some() || self.redirect.is_some()
    }
}

/// The result of the request policies.
pub enum PolicyOutcome {
    Continue,
    // Boxed: responding early is the rare path, and `Continue` should stay small.
    Respond(Box<Response<ProxyBody>>),
}

/// What request policies may look at besides the headers they change.
pub struct RequestFacts<'a> {
    /// The normalised request path (before any rewrite).
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub route_match: &'a crate::route::RouteMatch,
    pub spec: &'a crate::route::RouteSpec,
    pub route_name: &'a str,
    pub method: &'a http::Method,
    /// The request target as received (what a signature covers).
    pub uri: &'a http::Uri,
    pub version: http::Version,
    /// The request's Host (or HTTP/2 authority), as the client sent it.
    pub host: Option<&'a http::HeaderValue>,
    /// `http` or `https`: how the client reached gatehouse.
    pub scheme: &'static str,
    /// The client's address, resolved through trusted proxies.
    pub client: std::net::IpAddr,
    /// The request id header and this request's id.
    pub request_id: (&'a http::HeaderName, &'a http::HeaderValue),
    /// For a CORS preflight: the request's `Origin` and the method it announces.
    pub preflight: Option<(&'a http::HeaderValue, &'a http::Method)>,
}

/// What the request policies established or changed, for the later steps.
#[derive(Default)]
pub struct RequestState {
    pub identity: Option<Identity>,
    pub query_edit: QueryEdit,
    /// The body must match a signed digest before it is forwarded (`hmac_auth`).
    pub body_check: Option<hmac_auth::BodyCheck>,
    /// What `rate_limit` and `quota` tell the client, on whatever response the request gets.
    pub rate_report: Option<rate_limit::RateReport>,
    pub quota_report: Option<rate_limit::RateReport>,
    /// The `concurrency` slot, held until the response is sent.
    pub slot: Option<concurrency::Slot>,
    /// With the request's span exported: the policies that waited on I/O, and how long.
    pub timings: Option<Vec<Timing>>,
}

/// One policy's wait on I/O (a child span of the request's).
pub struct Timing {
    pub name: &'static str,
    pub start: std::time::SystemTime,
    pub end: std::time::SystemTime,
    pub error: Option<&'static str>,
}

/// Runs a policy step that may wait on I/O, timing it when the request is traced.
async fn timed<T>(
    timings: &mut Option<Vec<Timing>>,
    name: &'static str,
    work: impl Future<Output = Result<T, ProxyError>>,
) -> Result<T, ProxyError> {
    let Some(list) = timings else { return work.await };
    let start = std::time::SystemTime::now();
    let result = work.await;
    let error = result.as_ref().err().map(ProxyError::code);
    list.push(Timing { name, start, end: std::time::SystemTime::now(), error });
    result
}

/// Runs the route's request policies in their fixed order.
///
/// The order, and why:
/// 1. `ip_restriction`: a refused address gets nothing else, not even a preflight answer.
/// 2. `cors`: answers preflights, before authentication: a preflight carries no credentials. The
///    CORS headers of other responses (later rejections included) are added as the response is built.
/// 3. `api_key`, `jwt` or `introspection` (authentication; see `authenticator` for which):
///    establishes who the caller is, and which consumer; the identity headers a client sent were
///    removed before (consumer headers by the proxy, claim headers here), so nothing later sees a
///    forged identity.
/// 4. `forward_auth`: the authorization service sees the request as authenticated by 3 (with the
///    headers 3 set), and its verdict comes before the local authorization rules.
/// 5. `authorize`, `acl`: need the identity from 3.
/// 6. `rate_limit`, then `quota`: after authentication, so limits can be per caller, and so that
///    unauthenticated floods are refused before they use up anyone's allowance; after
///    authorization, so requests that would be refused anyway cost no allowance either. The
///    short-term rate limit comes before the quota, so a burst it refuses uses no quota.
///    `concurrency` last of the three: a request the limits refuse never takes a slot.
/// 7. request filters (`request_headers`): after authentication, so a filter cannot forge what
///    authentication checks, and before answering locally, so a `direct_response` sees the same
///    request an upstream would.
/// 8. `redirect`, then `direct_response`: they end the request, so they run last — answering
///    locally never bypasses authentication or authorization.
pub async fn apply_request_policies(
    policies: &RoutePolicies,
    headers: &mut http::HeaderMap,
    facts: &RequestFacts<'_>,
    state: &mut RequestState,
) -> Result<PolicyOutcome, ProxyError> {
    if let Some(ip) = &policies.ip_restriction {
        ip.check(facts.client)?;
    }
    if let (Some(cors), Some((origin, method))) = (&policies.cors, facts.preflight) {
        return Ok(PolicyOutcome::Respond(Box::new(cors.preflight(headers, origin, method))));
    }
    // Authentication. Identity headers are the gateway's to set: whichever policy checks this
    // request, the headers any of them would set are removed from the client's first.
    if let Some(jwt) = &policies.jwt {
        jwt.remove_identity_headers(headers);
    }
    if let Some(introspection) = &policies.introspection {
        introspection.remove_identity_headers(headers);
    }
    // The policies that may wait on I/O are boxed: their futures are large, and unboxed they would
    // grow the future of every request and connection, authenticated or not.
    let edit = &mut state.query_edit;
    let timings = &mut state.timings;
    state.identity = match authenticator(policies, headers, facts.query) {
        Some(Authenticator::ApiKey(p)) => p.authenticate(headers, facts.query, edit)?,
        Some(Authenticator::Basic(p)) => timed(timings, "basic_auth", Box::pin(p.authenticate(headers))).await?,
        Some(Authenticator::Hmac(p)) => p.authenticate(headers, facts, &mut state.body_check)?,
        Some(Authenticator::Jwt(p)) => match p.authenticate_now(headers, facts.query, edit) {
            Some(done) => done?,
            None => timed(timings, "jwt", Box::pin(p.authenticate(headers, facts.query, edit))).await?,
        },
        Some(Authenticator::Introspection(p)) => {
            timed(timings, "introspection", Box::pin(p.authenticate(headers, facts.query, edit))).await?
        }
        None => None,
    };
    if let Some(consumer) = state.identity.as_ref().and_then(|i| i.consumer.as_ref()) {
        headers.insert(consumers::CONSUMER_NAME.clone(), consumer.name_value.clone());
        if let Some(groups) = &consumer.groups_value {
            headers.insert(consumers::CONSUMER_GROUPS.clone(), groups.clone());
        }
    }
    if let Some(forward_auth) = &policies.forward_auth {
        let checked = timed(&mut state.timings, "forward_auth", Box::pin(forward_auth.check(headers, facts))).await?;
        if let PolicyOutcome::Respond(denied) = checked {
            return Ok(PolicyOutcome::Respond(denied));
        }
    }
    if let Some(authorize) = &policies.authorize {
        authorize.check(state.identity.as_ref())?;
    }
    if let Some(acl) = &policies.acl {
        acl.check(state.identity.as_ref())?;
    }
    if let Some(limit) = &policies.rate_limit {
        let source = key_source(facts, state.identity.as_ref(), headers);
        if limit.is_shared() {
            let report = &mut state.rate_report;
            timed(&mut state.timings, "rate_limit", Box::pin(limit.check_shared(&source, report))).await?;
        } else {
            limit.check(&source, &mut state.rate_report)?;
        }
    }
    if let Some(quota) = &policies.quota {
        let source = key_source(facts, state.identity.as_ref(), headers);
        if quota.is_shared() {
            let report = &mut state.quota_report;
            timed(&mut state.timings, "quota", Box::pin(quota.check_shared(&source, report))).await?;
        } else {
            quota.check(&source, &mut state.quota_report)?;
        }
    }
    if let Some(concurrency) = &policies.concurrency {
        let source = key_source(facts, state.identity.as_ref(), headers);
        state.slot = Some(match concurrency.try_enter(&source) {
            Some(entered) => entered?,
            None => timed(&mut state.timings, "concurrency", Box::pin(concurrency.enter(&source))).await?,
        });
    }
    if let Some(filter) = &policies.request_headers {
        filter.apply(headers);
    }
    if let Some(redirect) = &policies.redirect {
        return Ok(PolicyOutcome::Respond(Box::new(redirect.respond(facts))));
    }
    if let Some(direct) = &policies.direct_response {
        return Ok(PolicyOutcome::Respond(Box::new(direct.respond())));
    }
    Ok(PolicyOutcome::Continue)
}

/// What a rate limit, quota or concurrency key is taken from.
fn key_source<'a>(
    facts: &'a RequestFacts<'_>,
    identity: Option<&'a Identity>,
    headers: &'a http::HeaderMap,
) -> rate_limit::KeySource<'a> {
    rate_limit::KeySource {
        client: facts.client,
        identity,
        route: facts.route_name,
        headers,
        path: facts.path,
        query: facts.query,
        route_match: facts.route_match,
    }
}

enum Authenticator<'a> {
    ApiKey(&'a ApiKeyPolicy),
    Basic(&'a BasicAuthPolicy),
    Hmac(&'a HmacAuthPolicy),
    Jwt(&'a JwtPolicy),
    Introspection(&'a IntrospectionPolicy),
}

/// Which authentication policy checks this request. With several on a route, the credential the
/// request presents decides, so that exactly one checks it: an API key goes to `api_key`, Basic
/// credentials to `basic_auth`, a signature to `hmac_auth`, a token shaped like a JWT to `jwt`,
/// another bearer token to `introspection`. A request presenting none goes to the first
/// configured of `jwt`, `introspection`, `basic_auth`, `hmac_auth`, `api_key`, which refuses it
/// (or lets it through without identity when optional).
fn authenticator<'a>(
    policies: &'a RoutePolicies,
    headers: &http::HeaderMap,
    query: Option<&str>,
) -> Option<Authenticator<'a>> {
    let api_key = policies.api_key.as_deref();
    let jwt = policies.jwt.as_deref();
    let introspection = policies.introspection.as_deref();
    let basic = policies.basic_auth.as_deref();
    let hmac = policies.hmac_auth.as_deref();
    if let Some(p) = api_key.filter(|p| p.presented(headers, query)) {
        return Some(Authenticator::ApiKey(p));
    }
    if let Some(p) = basic.filter(|p| p.presented(headers)) {
        return Some(Authenticator::Basic(p));
    }
    if let Some(p) = hmac.filter(|p| p.presented(headers)) {
        return Some(Authenticator::Hmac(p));
    }
    if let Some(p) = jwt.filter(|p| introspection.is_none() || p.presented(headers, query)) {
        return Some(Authenticator::Jwt(p));
    }
    if let Some(p) = introspection {
        return Some(Authenticator::Introspection(p));
    }
    if let Some(p) = basic {
        return Some(Authenticator::Basic(p));
    }
    if let Some(p) = hmac {
        return Some(Authenticator::Hmac(p));
    }
    api_key.map(Authenticator::ApiKey)
}

/// Runs the route's response policies, in reverse order of the request policies.
pub fn apply_response_policies(policies: &RoutePolicies, headers: &mut http::HeaderMap) {
    if let Some(filter) = &policies.response_headers {
        filter.apply(headers);
    }
}
