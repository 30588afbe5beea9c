//! Policy config types: what users write under `policies:` (globally and per route).
//!
//! One variant per policy kind; each kind's fields are its own struct. Like every config type,
//! these are only read by `compile`, which turns them into the runtime policies of `crate::policy`.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::types::OneOrMany;
use super::units::{ByteSize, DurationValue, RateValue};

/// A policy: a configured behaviour on a route (or on every route, when global).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum PolicyConfig {
    /// Allow or deny clients by address (CIDR blocks), as resolved through trusted proxies.
    IpRestriction(IpRestrictionConfig),
    /// Cross-origin resource sharing: answer preflights, add CORS headers for allowed origins.
    Cors(CorsConfig),
    /// Require a valid JSON Web Token; forward chosen claims as headers.
    Jwt(Box<JwtConfig>),
    /// Recognise the caller by an API key.
    ApiKey(ApiKeyConfig),
    /// Recognise the caller by a user name and password (HTTP Basic).
    BasicAuth(BasicAuthConfig),
    /// Recognise the caller by an HMAC signature over the request (partner APIs).
    HmacAuth(HmacAuthConfig),
    /// Ask an authorization service whether to let the request through.
    ForwardAuth(ForwardAuthConfig),
    /// Check opaque OAuth2 tokens with the authorization server (RFC 7662).
    Introspection(Box<IntrospectionConfig>),
    /// Require roles, scopes or claim values of the authenticated caller.
    Authorize(AuthorizeConfig),
    /// Allow or deny by the consumer's groups.
    Acl(AclConfig),
    /// Limit how often a caller (an address, a consumer, a token's subject …) may call.
    RateLimit(Box<RateLimitConfig>),
    /// How many requests a consumer may make per day or month, by plan.
    Quota(Box<QuotaConfig>),
    /// How many requests (of a route, a consumer, an address …) may be in flight at once.
    Concurrency(ConcurrencyConfig),
    /// The largest request body the route accepts (413 beyond it, while the body streams).
    BodyLimit(BodyLimitConfig),
    /// Change the request headers sent upstream.
    RequestHeaders(HeaderFilterConfig),
    /// Change the response headers sent to the client.
    ResponseHeaders(HeaderFilterConfig),
    /// Answer the request at the gateway, without an upstream.
    DirectResponse(DirectResponseConfig),
    /// Answer with a redirect.
    Redirect(RedirectConfig),
}

impl PolicyConfig {
    /// The kind's name as written in config, for messages and `explain`.
    pub fn kind(&self) -> &'static str {
        match self {
            PolicyConfig::IpRestriction(_) => "ip_restriction",
            PolicyConfig::Cors(_) => "cors",
            PolicyConfig::Jwt(_) => "jwt",
            PolicyConfig::ApiKey(_) => "api_key",
            PolicyConfig::BasicAuth(_) => "basic_auth",
            PolicyConfig::HmacAuth(_) => "hmac_auth",
            PolicyConfig::ForwardAuth(_) => "forward_auth",
            PolicyConfig::Introspection(_) => "introspection",
            PolicyConfig::Authorize(_) => "authorize",
            PolicyConfig::Acl(_) => "acl",
            PolicyConfig::RateLimit(_) => "rate_limit",
            PolicyConfig::Quota(_) => "quota",
            PolicyConfig::Concurrency(_) => "concurrency",
            PolicyConfig::BodyLimit(_) => "body_limit",
            PolicyConfig::RequestHeaders(_) => "request_headers",
            PolicyConfig::ResponseHeaders(_) => "response_headers",
            PolicyConfig::DirectResponse(_) => "direct_response",
            PolicyConfig::Redirect(_) => "redirect",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderFilterConfig {
    /// Set (replace) these headers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    /// Append these headers (keeping existing values).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
    /// Remove these headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DirectResponseConfig {
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Defaults to `application/json` when the body starts with `{` or `[`, else `text/plain; charset=utf-8`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedirectConfig {
    /// The `Location`: an absolute URL or a path; may use the route pattern's params (`{id}`, `{**}`).
    pub location: String,
    /// 301, 302 (default), 303, 307 or 308.
    #[serde(default = "default_redirect_status")]
    pub status: u16,
    /// Append the request's query string to the location.
    #[serde(default = "default_true")]
    pub keep_query: bool,
}

fn default_redirect_status() -> u16 {
    302
}

fn default_true() -> bool {
    true
}

/// `jwt`: the request must carry a valid JSON Web Token.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// Where the verification keys are published (a JWKS document), fetched and cached by gatehouse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    /// A JWKS document on disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_file: Option<String>,
    /// A shared secret for HS256/HS384/HS512 (use `${VAR}` to keep it out of the file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// A PEM public key file (RSA, EC P-256/P-384 or Ed25519).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key_file: Option<String>,
    /// Algorithms accepted. Default: every algorithm the key type supports (`none` never is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithms: Option<Vec<String>>,
    /// The accepted `iss` values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<OneOrMany<String>>,
    /// The accepted `aud` values: the token must name at least one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<OneOrMany<String>>,
    /// Clock skew allowed when checking `exp`, `nbf` and `iat`. Default 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leeway: Option<DurationValue>,
    /// Claims that must be present. `exp` is always required.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_claims: Vec<String>,
    /// Where to look for the token, in order. Default: `Authorization: Bearer …`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub token_from: Vec<TokenSourceConfig>,
    /// Claims to send upstream as headers, e.g. `{sub: X-User-Id, roles: X-User-Roles}`. Headers of
    /// these names sent by the client are always removed first.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub forward_claims: BTreeMap<String, String>,
    /// Remove the token from the request before it goes upstream.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub strip_token: bool,
    /// Let requests without a token through (without an identity); a token that is present must
    /// still be valid.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
    /// How often a remote JWKS is fetched again. Default 5m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_refresh: Option<DurationValue>,
    /// Attach the consumer whose `jwt_subject` credential equals this claim's value (e.g. `sub`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer_claim: Option<String>,
    /// A token with an unknown `kid` makes gatehouse fetch the JWKS again (the keys may have
    /// rotated), but not more often than this. Default 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_min_refetch: Option<DurationValue>,
}

/// Where a token is read from.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum TokenSourceConfig {
    /// A request header; with `scheme`, the value must start with it (`Bearer`).
    Header {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scheme: Option<String>,
    },
    /// A cookie of this name.
    Cookie(String),
    /// A query parameter of this name.
    Query(String),
}

/// `authorize`: what the authenticated caller must have.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthorizeConfig {
    /// The caller needs at least one of these roles.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// The claim holding roles: an array of strings, or a space- or comma-separated string.
    /// Default `roles`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles_claim: Option<String>,
    /// The caller needs all of these scopes (from the `scope` or `scp` claim).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// Claims that must have this value (for an array claim: contain it).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub claims: BTreeMap<String, String>,
}

/// `ip_restriction`: which client addresses may use the route.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IpRestrictionConfig {
    /// When given, only these addresses or CIDR blocks are let through.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// These addresses or CIDR blocks are refused (even when also allowed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
}

/// `cors`: cross-origin requests from browsers.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    /// Origins allowed: exact (`https://app.example.com`), `{regex: "…"}`, or `"*"` for any.
    pub allow_origins: Vec<OriginConfig>,
    /// Methods allowed in cross-origin requests. Default: GET, HEAD, POST, PUT, PATCH, DELETE.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_methods: Vec<String>,
    /// Request headers allowed. Default: whatever the preflight asks for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_headers: Option<Vec<String>>,
    /// Response headers the browser may read beyond the simple ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose_headers: Vec<String>,
    /// Allow cookies and credentials (then `*` cannot be used for origins).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_credentials: bool,
    /// How long browsers may cache a preflight answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<DurationValue>,
}

/// An allowed origin: exact text, or a regex over the whole origin.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum OriginConfig {
    Exact(String),
    Regex { regex: String },
}

impl<'de> Deserialize<'de> for OriginConfig {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Regex {
            regex: String,
        }
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = OriginConfig;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an origin such as https://app.example.com, \"*\", or {regex: …}")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<OriginConfig, E> {
                Ok(OriginConfig::Exact(v.to_owned()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<OriginConfig, A::Error> {
                Regex::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(|r| OriginConfig::Regex { regex: r.regex })
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// `api_key`: the caller presents a key that belongs to a consumer.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// Where to look for the key, in order. Default: the `X-API-Key` header.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key_from: Vec<KeySourceConfig>,
    /// Keep the key in the request sent upstream. Default: it is removed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_key: bool,
    /// Let requests without a key through (without a consumer); a key that is present must be valid.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
}

/// Where an API key is read from.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum KeySourceConfig {
    Header(String),
    Query(String),
}

/// `acl`: allow or deny by the consumer's groups.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AclConfig {
    /// When given, the consumer must be in at least one of these groups.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// A consumer in any of these groups is refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
}

/// `forward_auth`: an authorization service decides (external authorization).
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ForwardAuthConfig {
    /// The service's URL (http for now); gatehouse sends it a `GET` for each request to decide.
    pub url: String,
    /// Request headers passed to the service. Default: every end-to-end header of the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward_headers: Option<Vec<String>>,
    /// Headers of the service's 2xx answer copied into the upstream request (the same headers sent
    /// by the client are removed first).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upstream_headers: Vec<String>,
    /// How long to wait for the service. Default 2s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<DurationValue>,
    /// When the service cannot be reached or fails (5xx): `deny` (503, the default) or `allow`.
    #[serde(default)]
    pub on_failure: FailureMode,
    /// Remember allow decisions for a while, by the values of the given request headers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<DecisionCacheConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    #[default]
    Deny,
    Allow,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DecisionCacheConfig {
    /// How long a decision is reused.
    pub ttl: DurationValue,
    /// The request headers whose values identify the caller (e.g. `authorization`): requests with
    /// equal values share a decision; a request without them is not cached. Add `:method`, `:path`
    /// or `:host` when the service's answer depends on them.
    pub key: Vec<String>,
}

/// `introspection`: opaque OAuth2 access tokens, checked with the authorization server's token
/// introspection endpoint (RFC 7662).
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IntrospectionConfig {
    /// The introspection endpoint (http for now).
    pub url: String,
    /// gatehouse's client id at the authorization server.
    pub client_id: String,
    /// gatehouse's client secret (use `${VAR}`). Sent with HTTP Basic authentication.
    pub client_secret: String,
    /// Where to look for the token, in order. Default: `Authorization: Bearer …`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub token_from: Vec<TokenSourceConfig>,
    /// Sent as `token_type_hint`. Default `access_token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_type_hint: Option<String>,
    /// The accepted `aud` values: an active token must name at least one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<OneOrMany<String>>,
    /// Claims of the introspection answer to send upstream as headers, e.g. `{sub: X-User-Id}`.
    /// Headers of these names sent by the client are always removed first.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub forward_claims: BTreeMap<String, String>,
    /// Attach the consumer whose `jwt_subject` credential equals this claim's value (e.g.
    /// `client_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer_claim: Option<String>,
    /// Remove the token from the request before it goes upstream.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub strip_token: bool,
    /// Let requests without a token through (without an identity); a token that is present must
    /// still be active.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
    /// How long to wait for the endpoint. Default 2s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<DurationValue>,
    /// How long an answer is reused (per worker): an active token's never beyond its `exp`.
    /// Default 30s; `0s` asks about every request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_ttl: Option<DurationValue>,
}

/// `basic_auth`: HTTP Basic authentication against the consumers' `username` / `password_hash`
/// credentials.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BasicAuthConfig {
    /// The realm named in the `WWW-Authenticate` challenge. Default `gatehouse`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub realm: Option<String>,
    /// Keep the `Authorization` header in the request sent upstream (by default it is removed, so
    /// services never see passwords).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_credentials: bool,
    /// Let requests without credentials through, without a consumer; credentials that are present
    /// must be valid.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
}

/// `hmac_auth`: requests signed with a consumer's shared secret (HTTP Signatures, as Kong's
/// `hmac-auth` does it).
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HmacAuthConfig {
    /// Accepted algorithms: `hmac-sha256`, `hmac-sha384`, `hmac-sha512` (the default: all three),
    /// and `hmac-sha1` only when listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithms: Option<Vec<String>>,
    /// How far the signed `Date` (or `X-Date`) may be from gatehouse's clock. Default 5m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_skew: Option<DurationValue>,
    /// What must be among the signed headers. Default `[date, "@request-target"]`: a signature
    /// cannot be replayed later or for another request. `date` is met by `x-date` too, and
    /// `@request-target` by `(request-target)` or `request-line`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required_headers: Option<Vec<String>>,
    /// Require a signed `Digest` header (`SHA-256=…` or `SHA-512=…`) and check the body against it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub validate_body: bool,
    /// The largest body `validate_body` reads (it is held until checked). Default 1MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_size: Option<ByteSize>,
    /// Keep the `Authorization` header in the request sent upstream (by default it is removed).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_credentials: bool,
    /// Let unsigned requests through, without a consumer; a signature that is present must be
    /// valid.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
}

/// `rate_limit`: how many requests a key (an address, a consumer, a claim …) may make.
///
/// One limit in short form (`{key: client_ip, rate: 10/s, burst: 20}`), or several under `limits`
/// (e.g. 10/s and 1000/day); a request must pass every limit.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// What to count by: `client_ip` (default), `consumer`, `claim:NAME`, `header:NAME`,
    /// `query:NAME`, `param:NAME`, `route` or `global`; a list makes a composite key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<OneOrMany<String>>,
    /// The rate of the short form, e.g. `10/s`, `100/min`, `1000/day`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<RateValue>,
    /// `token_bucket` only: how many requests may come at once. Default: the rate's count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
    /// `token_bucket` (default), `sliding_window` or `fixed_window`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<RateAlgorithmConfig>,
    /// Several limits, each with its own rate (and optionally its own key and algorithm).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub limits: Vec<LimitConfig>,
    /// Which headers tell clients about their limits: `ietf` (default: `RateLimit-Policy` and
    /// `RateLimit`), `x_ratelimit` (`X-RateLimit-Limit/-Remaining/-Reset`), `both` or `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<RateHeadersConfig>,
    /// The most keys each limit keeps in memory (default 100000); beyond it the least recently
    /// seen keys are forgotten.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_keys: Option<u64>,
    /// `local` (default): counters in this node's memory. `redis`: counters shared by every
    /// node through the top-level `redis`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<RateBackendConfig>,
    /// With `backend: redis`, when Redis fails or is slower than its timeout: `local` (default)
    /// decides with this node's own counters meanwhile; `deny` refuses with 503.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_redis_failure: Option<RedisFailureConfig>,
    /// With `backend: redis`: `strict` (default) asks Redis on every request; `batch` decides on
    /// this node and exchanges counts with Redis every `sync_interval` (no round trip per request,
    /// a bounded overshoot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync: Option<RedisSyncConfig>,
    /// With `sync: batch`: how often counts are exchanged with Redis. Default 100ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_interval: Option<DurationValue>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RateBackendConfig {
    Local,
    Redis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RedisSyncConfig {
    Strict,
    Batch,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RedisFailureConfig {
    Local,
    Deny,
}

/// One limit of a `rate_limit` policy.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    pub rate: RateValue,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
    /// Default: the policy's key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<OneOrMany<String>>,
    /// Default: the policy's algorithm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<RateAlgorithmConfig>,
    /// The name clients see in `RateLimit-Policy`. Default: the rate as written (`10/s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RateAlgorithmConfig {
    /// Smooth: `burst` at once, then the rate (computed as GCRA).
    TokenBucket,
    /// The previous window's count weighted by its overlap, plus the current window's.
    SlidingWindow,
    /// A count per calendar-aligned window (`1000/day` resets at 00:00 UTC).
    FixedWindow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RateHeadersConfig {
    Ietf,
    XRatelimit,
    Both,
    None,
}

/// `quota`: how many requests a consumer may make per period, by the consumer's plan.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfig {
    /// `day` or `month` (calendar periods, UTC: they reset at midnight and on the 1st), or a
    /// duration for a rolling period (`30d`, `7d`, `12h`).
    pub period: String,
    /// The quota of consumers whose plan is not listed under `plans`, and of callers without a
    /// consumer. Without it, they have no quota.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// The quota by the consumer's plan, e.g. `{free: 1000, pro: 100000}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub plans: BTreeMap<String, u64>,
    /// What is counted together. Default `consumer` (callers without one: their address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<OneOrMany<String>>,
    /// As for `rate_limit`. Default `ietf`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<RateHeadersConfig>,
    /// As for `rate_limit`: `local` (default) or `redis`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<RateBackendConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_redis_failure: Option<RedisFailureConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_keys: Option<u64>,
    /// As for `rate_limit`: `strict` (default) or `batch`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync: Option<RedisSyncConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_interval: Option<DurationValue>,
}

/// `concurrency`: how many requests of a key may be in flight at once on this node.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConcurrencyConfig {
    /// Requests in flight at once, per key.
    pub max: u64,
    /// What is counted together: `route` (default), `consumer`, `client_ip`, … as for `rate_limit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<OneOrMany<String>>,
    /// How many requests may wait for a slot when all are taken (default 0: refuse at once).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub queue: u64,
    /// How long a queued request waits for a slot before it is refused. Default 1s.
    #[serde(default = "default_queue_timeout")]
    pub queue_timeout: DurationValue,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn default_queue_timeout() -> DurationValue {
    DurationValue::secs(1)
}

/// `body_limit`: the largest request body of the route.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BodyLimitConfig {
    /// E.g. `1MiB`. Bodies announced larger are refused before they are read; bodies that turn out
    /// larger while streaming are cut off with 413. `server.limits.max_body_size` still applies.
    pub max: ByteSize,
}
