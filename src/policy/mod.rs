//! Policies: configured behaviour on a route, and the fixed order they run in.
//!
//! Request path step 5 (request policies) and step 8 (response policies, in reverse). The order is
//! code, not data: `apply_request_policies` below IS the order, with the reason for each position.
//! A policy returns a `PolicyOutcome`, never a bool: either the request continues, or the policy has
//! produced the response.
//!
//! Config: a route's policy list is merged with the global list; a route's policy of a kind replaces
//! the global policy of the same kind.

pub mod direct;
pub mod headers;

use std::sync::Arc;

use http::Response;

use crate::proxy::body::ProxyBody;

pub use direct::{DirectResponse, Redirect};
pub use headers::HeaderFilter;

/// The compiled policies of one route, one slot per kind.
#[derive(Default, Clone)]
pub struct RoutePolicies {
    pub request_headers: Option<Arc<HeaderFilter>>,
    pub response_headers: Option<Arc<HeaderFilter>>,
    pub direct_response: Option<Arc<DirectResponse>>,
    pub redirect: Option<Arc<Redirect>>,
}

impl RoutePolicies {
    /// The kinds configured, in the order they run: for `explain` and `routes`.
    pub fn names_in_order(&self) -> Vec<&'static str> {
        let mut names = Vec::new();
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

    /// Whether the route answers by itself, so it needs no upstream.
    pub fn responds(&self) -> bool {
        self.direct_response.is_some() || self.redirect.is_some()
    }
}

/// The result of a request policy.
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
}

/// Runs the route's request policies in their fixed order.
///
/// The order, and why:
/// 1. (later issues) timeout, ip_restriction, cors, authentication, authorization, rate limits, size
///    limits: answering without an upstream must not bypass them, so they come first.
/// 2. request filters (`request_headers`): after auth, so a filter cannot forge what auth checks,
///    and before answering locally, so a `direct_response` sees the same request an upstream would.
/// 3. `redirect`, then `direct_response`: they end the request, so they run last.
pub fn apply_request_policies(
    policies: &RoutePolicies,
    headers: &mut http::HeaderMap,
    facts: &RequestFacts<'_>,
) -> PolicyOutcome {
    if let Some(filter) = &policies.request_headers {
        filter.apply(headers);
    }
    if let Some(redirect) = &policies.redirect {
        return PolicyOutcome::Respond(Box::new(redirect.respond(facts)));
    }
    if let Some(direct) = &policies.direct_response {
        return PolicyOutcome::Respond(Box::new(direct.respond()));
    }
    PolicyOutcome::Continue
}

/// Runs the route's response policies, in reverse order of the request policies.
pub fn apply_response_policies(policies: &RoutePolicies, headers: &mut http::HeaderMap) {
    if let Some(filter) = &policies.response_headers {
        filter.apply(headers);
    }
}
