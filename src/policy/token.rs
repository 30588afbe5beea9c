//! What the bearer-token policies (`jwt`, `introspection`) share: where a token is read from and
//! how it is removed, and how an identity's claims become upstream headers and a consumer.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, header};
use serde_json::Value;

use crate::config::TokenSourceConfig;
use crate::proxy::error::ProxyError;

use super::consumers::ConsumerIndex;
use super::identity::{Identity, claim_header_value};

/// What a policy changes in the request besides headers: a credential removed from the query.
#[derive(Default)]
pub struct QueryEdit {
    pub query: Option<Option<String>>,
}

enum TokenSource {
    Header { name: HeaderName, scheme: Option<String> },
    Cookie(String),
    Query(String),
}

/// The places a token is looked for, in order. Default: `Authorization: Bearer …`.
pub struct TokenSources(Vec<TokenSource>);

impl TokenSources {
    pub fn compile(configs: &[TokenSourceConfig], errors: &mut Vec<(String, String)>) -> TokenSources {
        let mut sources = Vec::new();
        for (i, source) in configs.iter().enumerate() {
            match source {
                TokenSourceConfig::Header { name, scheme } => match HeaderName::from_bytes(name.as_bytes()) {
                    Ok(name) => sources.push(TokenSource::Header { name, scheme: scheme.clone() }),
                    Err(_) => errors
                        .push((format!("token_from[{i}].header.name"), format!("\"{name}\" is not a header name"))),
                },
                TokenSourceConfig::Cookie(name) => sources.push(TokenSource::Cookie(name.clone())),
                TokenSourceConfig::Query(name) => sources.push(TokenSource::Query(name.clone())),
            }
        }
        if sources.is_empty() {
            sources.push(TokenSource::Header { name: header::AUTHORIZATION, scheme: Some("Bearer".into()) });
        }
        TokenSources(sources)
    }

    /// The first token found, borrowed from the request, and the index of the place it was in
    /// (for `strip`).
    pub fn find<'a>(&self, headers: &'a HeaderMap, query: Option<&'a str>) -> Option<(&'a str, usize)> {
        self.0.iter().enumerate().find_map(|(at, source)| {
            let token = match source {
                TokenSource::Header { name, scheme } => {
                    let value = headers.get(name)?.to_str().ok()?;
                    match scheme {
                        Some(scheme) => {
                            let (given, rest) = value.split_once(' ').unwrap_or((value, ""));
                            given.eq_ignore_ascii_case(scheme).then(|| rest.trim())?
                        }
                        None => value.trim(),
                    }
                }
                TokenSource::Cookie(name) => {
                    let lines = headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok());
                    crate::text::cookie(lines, name)?
                }
                // Tokens are base64url or opaque printable strings: percent-encoding is not
                // decoded, so a needlessly encoded token is refused as invalid.
                TokenSource::Query(name) => crate::text::query_param(query?, name)?,
            };
            (!token.is_empty()).then_some((token, at))
        })
    }

    /// Whether the request carries a token in one of the places.
    pub fn presented(&self, headers: &HeaderMap, query: Option<&str>) -> bool {
        self.find(headers, query).is_some()
    }

    /// Removes the token from the place `at` (as `find` returned it).
    pub fn strip(&self, at: usize, headers: &mut HeaderMap, query: Option<&str>, edit: &mut QueryEdit) {
        match self.0.get(at) {
            Some(TokenSource::Header { name, .. }) => {
                headers.remove(name);
            }
            Some(TokenSource::Cookie(name)) => {
                let kept: Vec<String> = headers
                    .get_all(header::COOKIE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(|v| v.split(';'))
                    .map(str::trim)
                    .filter(|pair| !pair.is_empty() && pair.split_once('=').is_none_or(|(k, _)| k != name))
                    .map(str::to_owned)
                    .collect();
                headers.remove(header::COOKIE);
                if !kept.is_empty() {
                    if let Ok(v) = HeaderValue::from_str(&kept.join("; ")) {
                        headers.insert(header::COOKIE, v);
                    }
                }
            }
            Some(TokenSource::Query(name)) => {
                edit.query = Some(crate::text::query_without(query.unwrap_or_default(), name));
            }
            None => {}
        }
    }
}

/// What the bearer-token policies (`jwt`, `introspection`) share around checking a token: where
/// it is, whether it may be missing, whether it is removed, and what its claims become upstream.
pub struct Bearer {
    pub sources: TokenSources,
    pub claims: ClaimHeaders,
    pub strip: bool,
    pub optional: bool,
}

impl Bearer {
    /// Removes the client's own identity headers and finds the token. `Err(outcome)` ends the
    /// authentication: `Ok(None)` (no token, optional) or a 401.
    pub fn take<'a>(
        &self,
        headers: &'a mut HeaderMap,
        query: Option<&'a str>,
    ) -> Result<(&'a str, usize), Result<Option<Identity>, ProxyError>> {
        self.claims.remove_from(headers);
        self.sources.find(headers, query).ok_or_else(|| {
            if self.optional { Ok(None) } else { Err(ProxyError::unauthorized(None, "a bearer token is required")) }
        })
    }

    /// A verified identity: strips the token if configured, attaches the consumer and sets the
    /// claim headers.
    pub fn accept(
        &self,
        mut identity: Identity,
        at: usize,
        headers: &mut HeaderMap,
        query: Option<&str>,
        edit: &mut QueryEdit,
    ) -> Result<Option<Identity>, ProxyError> {
        if self.strip {
            self.sources.strip(at, headers, query, edit);
        }
        self.claims.apply(&mut identity, headers);
        Ok(Some(identity))
    }
}

/// Claims sent upstream as headers, and the claim that names a consumer.
pub struct ClaimHeaders {
    forward: Vec<(String, HeaderName)>,
    consumer_claim: Option<(String, Arc<ConsumerIndex>)>,
}

impl ClaimHeaders {
    pub fn compile(
        forward_claims: &BTreeMap<String, String>,
        consumer_claim: Option<&String>,
        consumers: &Arc<ConsumerIndex>,
        errors: &mut Vec<(String, String)>,
    ) -> ClaimHeaders {
        let mut forward = Vec::new();
        for (claim, name) in forward_claims {
            match HeaderName::from_bytes(name.as_bytes()) {
                Ok(h) => forward.push((claim.clone(), h)),
                Err(_) => errors.push((format!("forward_claims.{claim}"), format!("\"{name}\" is not a header name"))),
            }
        }
        ClaimHeaders { forward, consumer_claim: consumer_claim.map(|c| (c.clone(), consumers.clone())) }
    }

    /// The headers set from claims (removed from client requests first).
    pub fn names(&self) -> impl Iterator<Item = &HeaderName> {
        self.forward.iter().map(|(_, h)| h)
    }

    /// Identity headers are the gateway's to set: a client's own are never passed on.
    pub fn remove_from(&self, headers: &mut HeaderMap) {
        for (_, name) in &self.forward {
            headers.remove(name);
        }
    }

    /// Attaches the consumer named by the consumer claim, and sets the claim headers.
    pub fn apply(&self, identity: &mut Identity, headers: &mut HeaderMap) {
        if let Some((claim, consumers)) = &self.consumer_claim {
            identity.consumer =
                identity.claim(claim).and_then(Value::as_str).and_then(|v| consumers.by_jwt_subject(v)).cloned();
        }
        for (claim, name) in &self.forward {
            if let Some(value) = identity.claim(claim).and_then(claim_header_value) {
                headers.insert(name.clone(), value);
            }
        }
    }
}
