//! `jwt`: the request must carry a valid JSON Web Token (authentication, in the request policies
//! phase, before authorization and rate limits).
//!
//! The token is taken from the configured places (default `Authorization: Bearer`), its signature
//! checked against the policy's keys with the algorithm its key allows (never `none`, never an HMAC
//! over a public key), and its claims checked: `exp` (required), `nbf` and `iat` with leeway,
//! `iss`, `aud`, required claims. The claims become the request's `Identity`; configured claims are
//! forwarded upstream as headers, after removing any headers of those names the client sent.

pub mod crypto;
pub mod keys;
pub mod sign;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};

use crate::config::JwtConfig;
use crate::policy::cache::LocalCache;
use crate::proxy::error::ProxyError;
use crate::state::registry::Registry;

use super::consumers::ConsumerIndex;
use super::identity::Identity;
use super::token::{Bearer, ClaimHeaders, QueryEdit, TokenSources};
use keys::{JwksSource, KeySet};

/// Tokens longer than this are refused before any parsing.
const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// A token is tried against at most this many keys (a JWKS without `kid`s).
const MAX_KEYS_TRIED: usize = 8;

thread_local! {
    /// Tokens verified by this worker, until they expire (Unix seconds): a client presenting the
    /// same token again costs a lookup instead of a signature check, which costs more than proxying
    /// the request. Keyed by the whole token, under the policy's settings and the keys' generation.
    static VERIFIED: std::cell::RefCell<LocalCache<Identity>> = std::cell::RefCell::new(LocalCache::new(8192, &crate::policy::cache::JWT));
}

enum Keys {
    Static(Arc<KeySet>),
    Remote(Arc<JwksSource>),
}

pub struct JwtPolicy {
    keys: Keys,
    /// One validation per accepted algorithm (jsonwebtoken checks the header's `alg` against it).
    validations: Vec<(Algorithm, Validation)>,
    leeway: u64,
    bearer: Bearer,
    /// Identifies these settings for the verified-token cache (stable across reloads).
    scope: u64,
}

impl JwtPolicy {
    /// Builds the policy; errors are (field, message) pairs.
    pub fn compile(
        config: &JwtConfig,
        registry: &Registry,
        consumers: &Arc<ConsumerIndex>,
    ) -> Result<JwtPolicy, Vec<(String, String)>> {
        crypto::install();
        let mut errors = Vec::new();
        let allowed: Option<Vec<Algorithm>> = config.algorithms.as_ref().map(|list| {
            list.iter()
                .enumerate()
                .filter_map(|(i, name)| match name.parse::<Algorithm>() {
                    Ok(a) => Some(a),
                    Err(_) => {
                        errors.push((
                            format!("algorithms[{i}]"),
                            format!("\"{name}\" is not a supported algorithm (HS256/384/512, RS256/384/512, PS256/384/512, ES256/384, EdDSA)"),
                        ));
                        None
                    }
                })
                .collect()
        });
        let sources_given = [
            config.jwks_url.is_some(),
            config.jwks_file.is_some(),
            config.secret.is_some(),
            config.public_key_file.is_some(),
        ];
        if sources_given.iter().filter(|s| **s).count() != 1 {
            errors.push((String::new(), "give exactly one of jwks_url, jwks_file, secret or public_key_file".into()));
        }
        let refresh = config.jwks_refresh.map_or(Duration::from_secs(300), |d| d.get());
        let min_refetch = config.jwks_min_refetch.map_or(keys::MIN_REFETCH, |d| d.get());
        let mut keys = None;
        if let Some(url) = &config.jwks_url {
            match url.parse::<http::Uri>() {
                Ok(uri) if uri.scheme_str() == Some("http") && uri.authority().is_some() => {
                    keys = Some(Keys::Remote(registry.jwks(url, allowed.clone(), refresh, min_refetch)));
                }
                Ok(uri) if uri.scheme_str() == Some("https") => errors.push((
                    "jwks_url".into(),
                    "https JWKS URLs are not supported yet; use http:// or jwks_file".into(),
                )),
                _ => errors.push(("jwks_url".into(), format!("\"{url}\" is not an http:// URL"))),
            }
        }
        if let Some(path) = &config.jwks_file {
            match std::fs::read(path).map_err(|e| e.to_string()).and_then(|b| keys::parse_jwks(&b, allowed.as_deref()))
            {
                Ok((list, _)) => keys = Some(Keys::Static(Arc::new(KeySet { keys: list, generation: 0 }))),
                Err(e) => errors.push(("jwks_file".into(), format!("{path}: {e}"))),
            }
        }
        if let Some(secret) = &config.secret {
            match keys::secret_key(secret.as_bytes(), allowed.as_deref()) {
                Ok(k) => keys = Some(Keys::Static(Arc::new(KeySet { keys: vec![k], generation: 0 }))),
                Err(e) => errors.push(("secret".into(), e)),
            }
        }
        if let Some(path) = &config.public_key_file {
            match std::fs::read(path).map_err(|e| e.to_string()).and_then(|b| keys::pem_key(&b, allowed.as_deref())) {
                Ok(k) => keys = Some(Keys::Static(Arc::new(KeySet { keys: vec![k], generation: 0 }))),
                Err(e) => errors.push(("public_key_file".into(), format!("{path}: {e}"))),
            }
        }
        let leeway = config.leeway.map_or(30, |d| d.get().as_secs());
        let mut required: Vec<String> = config.required_claims.clone();
        if !required.iter().any(|c| c == "exp") {
            required.push("exp".into());
        }
        let template = {
            let mut v = Validation::new(Algorithm::RS256);
            v.leeway = leeway;
            v.validate_exp = true;
            v.validate_nbf = true;
            v.set_required_spec_claims(&required);
            match &config.issuer {
                Some(iss) => v.set_issuer(iss.as_slice()),
                None => v.iss = None,
            }
            match &config.audience {
                Some(aud) => v.set_audience(aud.as_slice()),
                None => v.validate_aud = false,
            }
            v
        };
        let all = [
            Algorithm::HS256,
            Algorithm::HS384,
            Algorithm::HS512,
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
            Algorithm::ES256,
            Algorithm::ES384,
            Algorithm::EdDSA,
        ];
        let validations = all
            .iter()
            .filter(|a| allowed.as_ref().is_none_or(|list| list.contains(a)))
            .map(|a| {
                let mut v = template.clone();
                v.algorithms = vec![*a];
                (*a, v)
            })
            .collect();

        let sources = TokenSources::compile(&config.token_from, &mut errors);
        let claims =
            ClaimHeaders::compile(&config.forward_claims, config.consumer_claim.as_ref(), consumers, &mut errors);
        let scope = crate::policy::cache::scope_of(config);
        match keys {
            Some(keys) if errors.is_empty() => Ok(JwtPolicy {
                keys,
                validations,
                leeway,
                bearer: Bearer { sources, claims, strip: config.strip_token, optional: config.optional },
                scope,
            }),
            _ => Err(errors),
        }
    }

    /// The headers this policy forwards (removed from client requests first).
    pub fn forwarded_headers(&self) -> impl Iterator<Item = &HeaderName> {
        self.bearer.claims.names()
    }

    /// Whether the request carries a token where this policy looks that has the shape of a JWT
    /// (to choose between `jwt` and `introspection` on one route).
    pub fn presented(&self, headers: &HeaderMap, query: Option<&str>) -> bool {
        self.bearer
            .sources
            .find(headers, query)
            .is_some_and(|(token, _)| token.bytes().filter(|b| *b == b'.').count() == 2)
    }

    /// Removes the headers this policy sets from the client's request.
    pub fn remove_identity_headers(&self, headers: &mut HeaderMap) {
        self.bearer.claims.remove_from(headers);
    }

    /// Authenticates the request. `Ok(None)`: no token, and the policy is optional.
    ///
    /// The common case needs no I/O (static keys, or remote keys already fetched, and a known
    /// `kid`): see `authenticate_now`, which callers try first so that their own futures stay small.
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
        let mut step = self.verify_with(token, self.current_keys(), false);
        let identity = loop {
            step = match step {
                Step::Done(result) => break result?,
                Step::FetchKeys(source) => {
                    let keys = source.keys().await;
                    self.verify_with(token, Some(keys.ok_or_else(keys_unavailable)?), false)
                }
                Step::RefreshForKid(source, keys) => {
                    let keys = source.refresh_for_unknown_kid().await.unwrap_or(keys);
                    self.verify_with(token, Some(keys), true)
                }
            };
        };
        self.bearer.accept(identity, at, headers, query, edit)
    }

    /// `authenticate` without waiting: `None` when the keys must be fetched first.
    pub fn authenticate_now(
        &self,
        headers: &mut HeaderMap,
        query: Option<&str>,
        edit: &mut QueryEdit,
    ) -> Option<Result<Option<Identity>, ProxyError>> {
        let (token, at) = match self.bearer.take(headers, query) {
            Ok(found) => found,
            Err(outcome) => return Some(outcome),
        };
        let identity = match self.verify_with(token, self.current_keys(), false) {
            Step::Done(result) => result,
            Step::FetchKeys(_) | Step::RefreshForKid(..) => return None,
        };
        Some(identity.and_then(|identity| self.bearer.accept(identity, at, headers, query, edit)))
    }

    /// The keys to verify with now: `None` when remote keys were never fetched.
    fn current_keys(&self) -> Option<Arc<KeySet>> {
        match &self.keys {
            Keys::Static(k) => Some(k.clone()),
            Keys::Remote(source) => source.current(),
        }
    }

    /// Verifies `token` with `keys`, or says which fetch must come first. `refreshed`: the keys
    /// were just fetched again for an unknown `kid`, so an unknown `kid` now fails.
    fn verify_with(&self, token: &str, keys: Option<Arc<KeySet>>, refreshed: bool) -> Step<'_> {
        let invalid = |why: &str| ProxyError::unauthorized(Some("invalid_token"), why);
        if token.len() > MAX_TOKEN_BYTES {
            return Step::Done(Err(invalid("the token is too long")));
        }
        if token.bytes().filter(|b| *b == b'.').count() != 2
            || !token.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Step::Done(Err(invalid("the token is not a compact JWS (three base64url parts)")));
        }
        let Some(keys) = keys else {
            return match &self.keys {
                Keys::Remote(source) => Step::FetchKeys(source),
                Keys::Static(_) => Step::Done(Err(keys_unavailable())),
            };
        };
        let now = unix_now();
        if let Some(identity) = VERIFIED.with(|c| c.borrow().get(self.scope, keys.generation, token.as_bytes(), now)) {
            return Step::Done(Ok(identity));
        }
        let header = match jsonwebtoken::decode_header(token) {
            Ok(header) => header,
            Err(_) => {
                return Step::Done(Err(invalid("the token header is malformed or names an unsupported algorithm")));
            }
        };
        let Some((_, validation)) = self.validations.iter().find(|(a, _)| *a == header.alg) else {
            return Step::Done(Err(invalid("the token's algorithm is not accepted")));
        };
        if let (Keys::Remote(source), Some(kid), false) = (&self.keys, header.kid.as_deref(), refreshed) {
            if !keys.has_kid(kid) {
                return Step::RefreshForKid(source, keys);
            }
        }
        let mut last = invalid("no key can verify this token (unknown kid or algorithm)");
        for key in keys.candidates(header.kid.as_deref(), header.alg).take(MAX_KEYS_TRIED) {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.decoding, validation) {
                Ok(data) => {
                    let claims = data.claims;
                    if let Some(iat) = claims.get("iat").and_then(Value::as_u64) {
                        if iat > now + self.leeway {
                            return Step::Done(Err(invalid("the token is issued in the future")));
                        }
                    }
                    let expires = claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
                    let identity = Identity::of_claims(claims);
                    VERIFIED.with(|c| {
                        let expires = expires + self.leeway;
                        c.borrow_mut().put(self.scope, keys.generation, token.as_bytes(), expires, identity.clone());
                    });
                    return Step::Done(Ok(identity));
                }
                Err(e) => {
                    last = match e.kind() {
                        ErrorKind::InvalidSignature
                        | ErrorKind::InvalidKeyFormat
                        | ErrorKind::InvalidRsaKey(_)
                        | ErrorKind::InvalidEcdsaKey => invalid("the token's signature is not valid"),
                        ErrorKind::ExpiredSignature => return Step::Done(Err(invalid("the token has expired"))),
                        ErrorKind::ImmatureSignature => return Step::Done(Err(invalid("the token is not valid yet"))),
                        ErrorKind::InvalidIssuer => {
                            return Step::Done(Err(invalid("the token's issuer is not accepted")));
                        }
                        ErrorKind::InvalidAudience => {
                            return Step::Done(Err(invalid("the token's audience is not accepted")));
                        }
                        ErrorKind::MissingRequiredClaim(c) => {
                            return Step::Done(Err(invalid(&format!("the token lacks the required claim `{c}`"))));
                        }
                        _ => invalid("the token is malformed"),
                    };
                }
            }
        }
        Step::Done(Err(last))
    }
}

/// Where verifying a token got to.
enum Step<'a> {
    Done(Result<Identity, ProxyError>),
    /// Remote keys were never fetched.
    FetchKeys(&'a Arc<JwksSource>),
    /// The token names a `kid` the keys do not have: they may have rotated.
    RefreshForKid(&'a Arc<JwksSource>, Arc<KeySet>),
}

fn keys_unavailable() -> ProxyError {
    ProxyError::AuthUnavailable("the token's signing keys could not be fetched".into())
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
