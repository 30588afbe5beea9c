//! What users write: the config file's types (serde + JSON Schema), and nothing else.
//!
//! These types mirror the YAML one to one; they are never used on the request path. `validate` checks
//! them (collecting every problem) and `compile` turns them into the runtime `Snapshot`.
//! Every struct denies unknown fields, so a typo is an error with a location, not a silent default.

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

use super::policies::PolicyConfig;
use super::units::{ByteSize, DurationValue};

/// The whole configuration of one gatehouse node.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LocalConfig {
    /// Process-wide settings: workers, limits, timeouts, client-address trust, request ids.
    #[serde(default)]
    pub server: ServerConfig,
    /// The admin listener (health, readiness, the running config and routes).
    #[serde(default)]
    pub admin: AdminConfig,
    /// One JSON line per request.
    #[serde(default)]
    pub access_log: AccessLogConfig,
    /// Where clients connect. At least one.
    pub listeners: Vec<ListenerConfig>,
    /// Named groups of endpoints that routes send traffic to.
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// Which requests go where, in any order: precedence decides (see docs/routing.md).
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Policies that apply to every route; a route's own policy of the same kind replaces the global one.
    #[serde(default)]
    pub policies: Vec<PolicyConfig>,
    /// Known callers: applications and partners with their groups, plan and credentials.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub consumers: Vec<ConsumerConfig>,
    /// The Redis (or Redis Cluster) that a fleet of gatehouse nodes shares counters through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisConfig>,
    /// How upstream `discovery` resolves DNS names.
    #[serde(default, skip_serializing_if = "is_default_resolver")]
    pub resolver: ResolverConfig,
    /// Prometheus metrics at the admin listener's `/metrics`.
    #[serde(default, skip_serializing_if = "is_default_metrics")]
    pub metrics: MetricsConfig,
    /// W3C trace context: continued or started, and passed to upstreams.
    #[serde(default, skip_serializing_if = "is_default_tracing")]
    pub tracing: TracingConfig,
}

/// Distributed tracing (W3C Trace Context).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TracingConfig {
    /// Continue the client's trace (or start one) and pass it to the upstream in `traceparent`;
    /// the trace id goes into the access log. Off by default: then `traceparent` passes through
    /// untouched.
    pub enabled: bool,
    /// The share of new traces (no sampled parent) marked sampled, 0.0–1.0. A client's sampled
    /// flag is followed as it is.
    pub sampling: f64,
    /// Send the spans of sampled requests to an OpenTelemetry collector (OTLP over HTTP, protobuf).
    /// Without it, trace context is propagated but no span is exported.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp: Option<OtlpConfig>,
}

impl Default for TracingConfig {
    fn default() -> Self {
        TracingConfig { enabled: false, sampling: 0.01, otlp: None }
    }
}

/// Where and how spans are exported.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OtlpConfig {
    /// The collector's traces URL, e.g. `http://127.0.0.1:4318/v1/traces` (plain HTTP: run the
    /// collector as a local agent).
    pub endpoint: String,
    /// Headers sent with every export (e.g. an API key of a tracing vendor).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// `service.name` of the spans.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// Spans are sent in batches at least this often (`5s`).
    #[serde(default = "default_export_interval")]
    pub interval: DurationValue,
    /// How long one export may take.
    #[serde(default = "default_export_timeout")]
    pub timeout: DurationValue,
    /// Spans waiting for export beyond this many are dropped (and counted), never queued without bound.
    #[serde(default = "default_export_queue")]
    pub max_queue: usize,
}

fn default_service_name() -> String {
    "gatehouse".into()
}

fn default_export_interval() -> DurationValue {
    DurationValue(std::time::Duration::from_secs(5))
}

fn default_export_timeout() -> DurationValue {
    DurationValue(std::time::Duration::from_secs(10))
}

fn default_export_queue() -> usize {
    2048
}

fn is_default_tracing(t: &TracingConfig) -> bool {
    *t == TracingConfig::default()
}

/// Prometheus metrics.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Count requests per route (on by default). Off: `/metrics` still shows what the gateway
    /// tracks anyway (endpoints, breakers, connections, reloads).
    pub enabled: bool,
    /// Also count requests per identified consumer (`gatehouse_consumer_requests_total`).
    pub consumers: bool,
    /// With `consumers`: the first this many consumers of the config's `consumers` list have
    /// series of their own; the others are counted as `consumer="other"`.
    pub max_consumers: u32,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { enabled: true, consumers: false, max_consumers: 100 }
    }
}

fn is_default_metrics(m: &MetricsConfig) -> bool {
    *m == MetricsConfig::default()
}

fn is_default_resolver(r: &ResolverConfig) -> bool {
    *r == ResolverConfig::default()
}

/// Where the shared counters live.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// One Redis server: `redis://[user:password@]host:port[/db]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// A Redis Cluster: some of its nodes (`redis://host:port`); the others are discovered.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cluster: Vec<String>,
    /// The longest a request waits for Redis before the policy's failure mode applies. Default 50ms.
    #[serde(default = "default_redis_timeout")]
    pub timeout: DurationValue,
    /// The longest a connection attempt takes. Default 1s.
    #[serde(default = "default_redis_connect_timeout")]
    pub connect_timeout: DurationValue,
    /// After a failure, how long requests skip Redis (using the failure mode straight away)
    /// before trying it again. Default 1s.
    #[serde(default = "default_redis_retry")]
    pub retry_after: DurationValue,
    /// Prepended to every key gatehouse writes. Default `gatehouse:`.
    #[serde(default = "default_redis_prefix")]
    pub key_prefix: String,
}

fn default_redis_timeout() -> DurationValue {
    DurationValue::millis(50)
}

fn default_redis_connect_timeout() -> DurationValue {
    DurationValue::secs(1)
}

fn default_redis_retry() -> DurationValue {
    DurationValue::secs(1)
}

fn default_redis_prefix() -> String {
    "gatehouse:".into()
}

/// A known caller.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsumerConfig {
    /// Unique; sent upstream as `X-Consumer-Name` and written to the access log.
    pub name: String,
    /// Groups for `acl` policies; sent upstream as `X-Consumer-Groups`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// The consumer's plan (e.g. `free`, `pro`), for limits and quotas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    /// Free-form labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// How the consumer is recognised.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub credentials: Vec<CredentialConfig>,
}

/// One credential of a consumer: an API key (its SHA-256, or the key itself from `${VAR}`), the
/// value of a verified JWT claim, a user name and password hash for HTTP Basic authentication, or
/// a key id and secret for HMAC request signatures.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CredentialConfig {
    /// The SHA-256 of an API key, in hex (what `gatehouse keygen` prints). Preferred: the key
    /// itself is then never stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_sha256: Option<String>,
    /// An API key in clear (use `${VAR}`); it is hashed when the config is loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    /// A verified JWT whose `consumer_claim` (see the `jwt` policy) has this value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_subject: Option<String>,
    /// The user name for HTTP Basic authentication (with `password_hash`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The password's hash: argon2id (`$argon2id$…`, what `gatehouse hash-password` prints) or
    /// bcrypt (`$2b$…`, as `htpasswd -B` makes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_hash: Option<String>,
    /// The shared secret for HMAC request signatures (with `username` as the key id). Use
    /// `${VAR}`: HMAC needs the secret itself, so it cannot be stored hashed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// The credential stops working after this time (RFC 3339, e.g. `2027-01-01T00:00:00Z`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    /// The credential no longer works.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub revoked: bool,
    /// A name for the credential, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

// === server ===

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Worker threads, each with its own listening sockets and upstream connection pools.
    /// `auto` (the default) is one per CPU core.
    pub workers: Workers,
    /// Addresses (IPs or CIDRs) of proxies in front of gatehouse whose `X-Forwarded-For` and
    /// `Forwarded` headers are believed. From anyone else these headers are replaced.
    pub trusted_proxies: Vec<String>,
    /// Which forwarding headers gatehouse adds to upstream requests.
    pub forwarded_headers: ForwardedHeadersConfig,
    pub request_id: RequestIdConfig,
    pub limits: LimitsConfig,
    pub timeouts: ServerTimeoutsConfig,
    /// How request paths are normalised before routing.
    pub path: PathConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            workers: Workers::Auto,
            trusted_proxies: Vec::new(),
            forwarded_headers: ForwardedHeadersConfig::default(),
            request_id: RequestIdConfig::default(),
            limits: LimitsConfig::default(),
            timeouts: ServerTimeoutsConfig::default(),
            path: PathConfig::default(),
        }
    }
}

/// `auto` or a number of worker threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, JsonSchema)]
#[schemars(untagged)]
pub enum Workers {
    #[default]
    #[schemars(with = "AutoKeyword")]
    Auto,
    Count(#[schemars(range(min = 1, max = 1024))] u32),
}

#[derive(JsonSchema)]
#[allow(dead_code)]
enum AutoKeyword {
    #[serde(rename = "auto")]
    Auto,
}

impl<'de> Deserialize<'de> for Workers {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Workers;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`auto` or a number of workers")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Workers, E> {
                u32::try_from(v).map(Workers::Count).map_err(|_| E::custom("too many workers"))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Workers, E> {
                u32::try_from(v)
                    .map(Workers::Count)
                    .map_err(|_| E::custom("workers must be `auto` or a positive number"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Workers, E> {
                if v == "auto" {
                    Ok(Workers::Auto)
                } else {
                    v.parse::<u32>()
                        .map(Workers::Count)
                        .map_err(|_| E::custom(format!("workers must be `auto` or a positive number, got \"{v}\"")))
                }
            }
        }
        deserializer.deserialize_any(V)
    }
}

impl Serialize for Workers {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Workers::Auto => s.serialize_str("auto"),
            Workers::Count(n) => s.serialize_u32(*n),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ForwardedHeadersConfig {
    /// `X-Forwarded-For`, `X-Forwarded-Proto`, `X-Forwarded-Host`.
    pub x_forwarded: bool,
    /// RFC 7239 `Forwarded: for=…;proto=…;host=…`.
    pub forwarded: bool,
}

impl Default for ForwardedHeadersConfig {
    fn default() -> Self {
        ForwardedHeadersConfig { x_forwarded: true, forwarded: true }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RequestIdConfig {
    /// The header that carries the request id, to the upstream and back to the client.
    pub header: String,
    /// Keep a well-formed id sent by the client (up to 128 visible ASCII characters) instead of
    /// generating a new one.
    pub trust_incoming: bool,
}

impl Default for RequestIdConfig {
    fn default() -> Self {
        RequestIdConfig { header: "x-request-id".into(), trust_incoming: true }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Longest request target (path and query) accepted; longer gets 414.
    pub max_uri_length: ByteSize,
    /// Largest total size of request header names and values; larger gets 431.
    pub max_header_bytes: ByteSize,
    /// Most request header fields; more gets 431.
    pub max_headers: u32,
    /// Most HTTP/2 streams (requests) a client may have open at once on one connection.
    pub max_concurrent_streams: u32,
    /// Largest request body accepted; larger gets 413: at once when Content-Length says so, or as
    /// soon as a streamed body goes past it (the body is never buffered to find out). No limit by
    /// default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_size: Option<ByteSize>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_uri_length: ByteSize::kib(8),
            max_header_bytes: ByteSize::kib(32),
            max_headers: 100,
            max_concurrent_streams: 128,
            max_body_size: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ServerTimeoutsConfig {
    /// Time a client has to send a complete request head, counted from its first byte (or from
    /// connect). A slow client is cut off with 408 and cannot hold a worker.
    pub header_read: DurationValue,
    /// How long an idle keep-alive client connection stays open between requests.
    pub idle: DurationValue,
    /// On shutdown, how long in-flight requests may take to finish before connections are closed.
    pub shutdown_grace: DurationValue,
    /// A WebSocket tunnel with no frame either way for this long is closed.
    pub websocket_idle: DurationValue,
}

impl Default for ServerTimeoutsConfig {
    fn default() -> Self {
        ServerTimeoutsConfig {
            header_read: DurationValue::secs(10),
            idle: DurationValue::secs(60),
            shutdown_grace: DurationValue::secs(30),
            websocket_idle: DurationValue::secs(300),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PathConfig {
    /// What to do with `%2F`, `%5C` and `\` in a path: `reject` (400, the default), `decode`
    /// (treat them as `/`), or `keep` (route on them as opaque text and forward them encoded).
    pub escaped_slashes: EscapedSlashesConfig,
    /// Collapse `//` into `/`.
    pub merge_slashes: bool,
}

impl Default for PathConfig {
    fn default() -> Self {
        PathConfig { escaped_slashes: EscapedSlashesConfig::Reject, merge_slashes: true }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EscapedSlashesConfig {
    #[default]
    Reject,
    Decode,
    Keep,
}

// === admin, access log ===

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub enabled: bool,
    /// Loopback by default: the admin API is not for the public.
    pub address: String,
    /// Every call but `GET /health` must then send `Authorization: Bearer <token>`. Required
    /// when `address` is not a loopback address. Write it as `${ADMIN_TOKEN}`, not in the file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// A file where routes, upstreams and consumers changed through the admin API are kept (JSON,
    /// written atomically, read at startup and applied over this file). Without it the admin API
    /// is read-only. Relative paths are from the working directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig { enabled: true, address: "127.0.0.1:9901".into(), token: None, store: None }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AccessLogConfig {
    pub enabled: bool,
    /// `stdout`, `stderr`, or a file path (appended to).
    pub path: String,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        AccessLogConfig { enabled: false, path: "stdout".into() }
    }
}

// === listeners ===

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// A name for logs, metrics and route `listeners:` lists.
    pub name: String,
    /// `ip:port`, e.g. `0.0.0.0:8080` or `[::]:8080`.
    pub address: String,
    /// Policies for every route on this listener: they replace global policies of the same kind,
    /// and a route's own replace them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<PolicyConfig>,
    /// The most client connections open at once on this listener (over all workers); further
    /// connections are closed as soon as they are accepted. Default: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u64>,
    /// Terminate TLS on this listener (HTTPS): certificates chosen by SNI, TLS 1.2/1.3, ALPN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// Serve HTTP/2 as well as HTTP/1.1: over TLS when the client offers `h2` in ALPN, in clear
    /// text when the client starts with the HTTP/2 preface (h2c with prior knowledge).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub http2: bool,
    /// Answer every request with a redirect to the same URL over HTTPS (a clear-text listener in
    /// front of a TLS one, like port 80 in front of 443).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https_redirect: Option<HttpsRedirectConfig>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct HttpsRedirectConfig {
    /// The HTTPS port to send clients to (left out of the URL when 443).
    pub port: u16,
    /// `301`, `302`, `307` or `308` (the default: permanent, and the method and body are kept).
    pub status: u16,
}

impl Default for HttpsRedirectConfig {
    fn default() -> Self {
        HttpsRedirectConfig { port: 443, status: 308 }
    }
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

/// TLS termination on a listener.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate and key files (PEM). A client's SNI name picks the certificate that names it
    /// (exactly, else by a `*.` wildcard); without a match, or without SNI, the default one
    /// answers (the one marked `default`, else the first).
    pub certificates: Vec<CertificateConfig>,
    /// The oldest TLS version accepted: `"1.2"` (the default) or `"1.3"`.
    #[serde(default)]
    pub min_version: TlsVersion,
    /// The application protocols offered in ALPN, most preferred first. Default `[h2, http/1.1]`
    /// (`[http/1.1]` when the listener has `http2: false`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpn: Option<Vec<String>>,
    /// How often the files are checked for changes (renewed certificates are used without a
    /// restart).
    #[serde(default = "default_tls_watch")]
    pub watch_interval: DurationValue,
    /// The time a client has to complete the handshake.
    #[serde(default = "default_tls_handshake")]
    pub handshake_timeout: DurationValue,
    /// Ask clients for a certificate (mTLS) and verify it against a CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_auth: Option<ClientAuthConfig>,
}

/// Client certificates on a TLS listener.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientAuthConfig {
    /// CA certificates (PEM) that client certificates must chain to.
    pub ca: String,
    /// Refuse clients without a certificate (the default). With `false`, a client may present
    /// none, but one it presents must verify.
    #[serde(default = "yes")]
    pub required: bool,
    /// Send the verified certificate's subject (RFC 4514, `CN=…,O=…`) upstream in this header.
    /// The same header from the client is always removed; policies and routes see the verified
    /// value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_header: Option<String>,
    /// Likewise its subjectAltName DNS names and URIs, comma-separated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub san_header: Option<String>,
}

fn default_tls_watch() -> DurationValue {
    DurationValue(std::time::Duration::from_secs(5))
}

fn default_tls_handshake() -> DurationValue {
    DurationValue(std::time::Duration::from_secs(10))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
pub enum TlsVersion {
    #[default]
    #[serde(rename = "1.2")]
    V1_2,
    #[serde(rename = "1.3")]
    V1_3,
}

/// One certificate (with its chain) and its private key.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    /// The certificate, then its intermediates (PEM).
    pub cert: String,
    /// Its private key (PEM: PKCS#8, PKCS#1 RSA or SEC1 EC).
    pub key: String,
    /// The names it answers for (`api.example.com`, `*.example.com`). Default: the DNS names in
    /// the certificate's subjectAltName.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// Answer clients whose SNI matches no certificate (or who send none) with this one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub default: bool,
}

// === upstreams ===

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    #[default]
    Http1,
    Http2,
}

fn is_default_protocol(p: &UpstreamProtocol) -> bool {
    *p == UpstreamProtocol::Http1
}

/// TLS to an upstream's endpoints (`https://` URLs, or any endpoints found by `discovery`).
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// CA certificates (PEM) that the upstream's certificates must chain to. Default: the system's
    /// trusted roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// The name sent in SNI and checked against the certificate. Default: each endpoint's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// A client certificate to present (mTLS to the upstream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<ClientCertificateConfig>,
    /// Do not verify the upstream's certificate. For development against self-signed
    /// certificates only: anyone on the path can then impersonate the upstream.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_skip_verify: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientCertificateConfig {
    /// The certificate and its chain (PEM).
    pub cert: String,
    /// Its private key (PEM).
    pub key: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// The endpoints: `http://host:port` URLs, optionally with a weight. Either these or
    /// `discovery`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<EndpointConfig>,
    /// TLS settings for `https://` endpoints (and for endpoints found by `discovery`, which then
    /// are reached over TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTlsConfig>,
    /// `http1` (the default) or `http2`: HTTP/2 over TLS (ALPN `h2`) for `https://` endpoints,
    /// with prior knowledge (h2c) for `http://` ones. gRPC services need `http2`.
    #[serde(default, skip_serializing_if = "is_default_protocol")]
    pub protocol: UpstreamProtocol,
    /// Where the endpoints are found instead of listing them: DNS A/AAAA or SRV records
    /// (re-resolved as their TTLs run out) or a file watched for changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery: Option<DiscoveryConfig>,
    /// A newly healthy endpoint's share of traffic grows from a tenth to all of it over this time
    /// (after it is added, comes back from ejection or passes its health check again). Not with
    /// `consistent_hash`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_start: Option<DurationValue>,
    /// How a request picks an endpoint.
    #[serde(default)]
    pub balance: BalanceConfig,
    /// With `balance: consistent_hash`: what requests are hashed by, as a rate-limit key:
    /// `client_ip`, `header:NAME`, `cookie:NAME`, `consumer`, `claim:NAME`, `param:NAME`, …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on: Option<String>,
    #[serde(default)]
    pub timeouts: UpstreamTimeoutsConfig,
    #[serde(default)]
    pub pool: PoolConfig,
    /// Endpoints that keep failing are taken out of rotation for a while.
    #[serde(default)]
    pub passive_health: PassiveHealthConfig,
    /// Which failed tries are tried again, on another endpoint when there is one.
    #[serde(default)]
    pub retries: RetriesConfig,
    /// Stop sending to an upstream that mostly fails, and cap its requests in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreakerConfig>,
    /// Ask each endpoint regularly whether it is well.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckConfig>,
    /// When no endpoint is healthy: `spread` (default) sends to all of them anyway (panic mode);
    /// `fail` answers 503 `no_endpoint`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_all_unhealthy: Option<AllUnhealthyConfig>,
}

/// How an upstream finds its endpoints.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryConfig {
    /// `dns`: every A/AAAA address of `name` is an endpoint at `port`. `srv`: the SRV records of
    /// `name` (e.g. `_http._tcp.users.internal`) give hosts, ports and weights. `file`: a YAML
    /// file at `path` holds the endpoint list, written as `endpoints` is.
    #[serde(rename = "type")]
    pub kind: DiscoveryKind,
    /// `dns`, `srv`: the name to resolve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `dns`: the endpoints' port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// `dns`: every endpoint's weight. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// `file`: the file's path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `file`: how often the file is read for changes. Default 1s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<DurationValue>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DiscoveryKind {
    Dns,
    Srv,
    File,
}

/// The DNS resolver that `discovery` uses.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ResolverConfig {
    /// Name servers as `ip:port` (`ip` alone means port 53), asked over UDP and TCP. Default:
    /// those of /etc/resolv.conf.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// How long one query may take.
    pub timeout: DurationValue,
    /// Answers are used at least this long, even with a shorter TTL.
    pub min_ttl: DurationValue,
    /// … and at most this long, even with a longer TTL.
    pub max_ttl: DurationValue,
}

impl Default for ResolverConfig {
    fn default() -> Self {
        ResolverConfig {
            nameservers: Vec::new(),
            timeout: DurationValue::secs(2),
            min_ttl: DurationValue::secs(1),
            max_ttl: DurationValue::secs(300),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AllUnhealthyConfig {
    Spread,
    Fail,
}

/// An active health check.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheckConfig {
    /// `http` (default), `grpc` (the gRPC health protocol over cleartext HTTP/2) or `tcp` (a
    /// connection is enough).
    #[serde(rename = "type")]
    pub kind: HealthCheckKind,
    /// Probe this port instead of the endpoint's (a separate health or admin port).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub port: Option<u16>,
    /// `http`: the path asked for.
    pub path: String,
    /// `http`: the Host header; `grpc`: the `:authority`. Default: the host and port probed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// `grpc`: the service asked about (`grpc.health.v1`). Default (empty): the whole server.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub service: String,
    /// `http`: accepted statuses: `200`, `200-399`, `2xx`. Default `[200-399]`.
    pub expect_status: Vec<String>,
    /// `http`: the body must contain this text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_contains: Option<String>,
    pub interval: DurationValue,
    pub timeout: DurationValue,
    /// Successes in a row that bring an endpoint back.
    pub healthy_threshold: u32,
    /// Failures in a row that take it out.
    pub unhealthy_threshold: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HealthCheckKind {
    #[default]
    Http,
    Grpc,
    Tcp,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig {
            kind: HealthCheckKind::Http,
            port: None,
            path: "/health".into(),
            host: None,
            service: String::new(),
            expect_status: vec!["200-399".into()],
            body_contains: None,
            interval: DurationValue::secs(5),
            timeout: DurationValue::secs(1),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
        }
    }
}

/// A circuit breaker per upstream.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CircuitBreakerConfig {
    /// Open when at least this share of the requests over `window` failed (0.0–1.0).
    pub failure_ratio: f64,
    /// … and at least this many requests were seen over `window`.
    pub min_requests: u64,
    pub window: DurationValue,
    /// How long the breaker stays open (every request answered 503 at once).
    pub open_for: DurationValue,
    /// Then this many probe requests go through; all succeed → closed, one fails → open again.
    pub half_open_requests: u64,
    /// The most requests in flight to the upstream at once, response bodies included (0: no cap).
    pub max_requests: u64,
    /// The most connections being opened to the upstream at once (0: no cap): when its endpoints
    /// are slow to accept, requests that would wait for yet another connection are refused.
    pub max_pending: u64,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        CircuitBreakerConfig {
            failure_ratio: 0.5,
            min_requests: 20,
            window: DurationValue::secs(10),
            open_for: DurationValue::secs(30),
            half_open_requests: 5,
            max_requests: 0,
            max_pending: 0,
        }
    }
}

/// Passive health checks (outlier ejection).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PassiveHealthConfig {
    /// Failures in a row (no response, or a 5xx) that eject an endpoint. 0 turns ejection off.
    pub consecutive_failures: u32,
    /// How long the first ejection lasts; each further one lasts this much longer.
    pub ejection_time: DurationValue,
    /// The longest an ejection lasts.
    pub max_ejection_time: DurationValue,
    /// The most endpoints ejected at once, in percent; at least one endpoint always stays.
    pub max_ejected_percent: u32,
}

impl Default for PassiveHealthConfig {
    fn default() -> Self {
        PassiveHealthConfig {
            consecutive_failures: 5,
            ejection_time: DurationValue::secs(10),
            max_ejection_time: DurationValue::secs(300),
            max_ejected_percent: 50,
        }
    }
}

/// Retries of failed tries.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RetriesConfig {
    /// Tries after the first. 0 turns retries off.
    pub attempts: u32,
    /// What is tried again: `connect_failure` (always safe: nothing was sent), `reset` and
    /// `timeout` (idempotent methods only), and statuses such as `502`, `503`, `504`.
    pub on: Vec<String>,
    /// Also retry POST and PATCH (only for services that de-duplicate).
    pub non_idempotent: bool,
    /// The first retry waits up to this long (with jitter), each further one twice as long.
    pub backoff: DurationValue,
    pub max_backoff: DurationValue,
    /// Retries are at most this share of the upstream's requests (over 10 s), so that retries
    /// cannot multiply an outage.
    pub budget_percent: u32,
    /// … but at least this many per second.
    pub min_per_second: u32,
    /// The largest request body kept in memory to be sent again; larger ones are not retried
    /// once sent.
    pub max_body: ByteSize,
}

impl Default for RetriesConfig {
    fn default() -> Self {
        RetriesConfig {
            attempts: 1,
            on: vec!["connect_failure".into()],
            non_idempotent: false,
            backoff: DurationValue::millis(25),
            max_backoff: DurationValue::millis(250),
            budget_percent: 20,
            min_per_second: 10,
            max_body: ByteSize::kib(64),
        }
    }
}

/// An endpoint: a URL string, or `{url, weight}`.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum EndpointConfig {
    Url(String),
    Weighted {
        url: String,
        #[serde(default = "default_weight")]
        weight: u32,
    },
}

fn default_weight() -> u32 {
    1
}

impl EndpointConfig {
    pub fn url(&self) -> &str {
        match self {
            EndpointConfig::Url(u) | EndpointConfig::Weighted { url: u, .. } => u,
        }
    }
    pub fn weight(&self) -> u32 {
        match self {
            EndpointConfig::Url(_) => 1,
            EndpointConfig::Weighted { weight, .. } => *weight,
        }
    }
}

impl<'de> Deserialize<'de> for EndpointConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Weighted {
            url: String,
            #[serde(default = "default_weight")]
            weight: u32,
        }
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = EndpointConfig;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an endpoint URL such as http://10.0.0.1:8080, or {url, weight}")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<EndpointConfig, E> {
                Ok(EndpointConfig::Url(v.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<EndpointConfig, A::Error> {
                let w = Weighted::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(EndpointConfig::Weighted { url: w.url, weight: w.weight })
            }
        }
        deserializer.deserialize_any(V)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BalanceConfig {
    /// Weighted round-robin (smooth): endpoints take turns in proportion to their weights.
    #[default]
    RoundRobin,
    /// Weighted random choice.
    Random,
    /// The less busy of two endpoints drawn at random (fewest requests in flight, by weight).
    LeastRequest,
    /// The cheaper of two drawn at random, by peak-EWMA response time × requests in flight.
    Ewma,
    /// The same key (see `hash_on`) to the same endpoint; removing an endpoint moves only its keys.
    ConsistentHash,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamTimeoutsConfig {
    /// TCP connect to an endpoint.
    pub connect: DurationValue,
    /// From the request being sent to the response head arriving.
    pub response_header: DurationValue,
}

impl Default for UpstreamTimeoutsConfig {
    fn default() -> Self {
        UpstreamTimeoutsConfig { connect: DurationValue::secs(5), response_header: DurationValue::secs(60) }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    /// Idle keep-alive connections kept per endpoint and worker. When more requests run at once
    /// than this, the surplus connections are closed as they finish and opened again at the next
    /// peak: keep it at or above the concurrency an endpoint sees.
    pub max_idle_per_endpoint: u32,
    /// An idle pooled connection older than this is closed. Keep it below the upstream's own
    /// keep-alive timeout, so that gatehouse, not the upstream, closes idle connections.
    pub idle_timeout: DurationValue,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig { max_idle_per_endpoint: 1024, idle_timeout: DurationValue::secs(30) }
    }
}

// === routes ===

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// A unique name for logs, metrics and `explain`. Defaults to `route-N` (N = position, from 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Only on these listeners (by name). Default: all listeners.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listeners: Option<Vec<String>>,
    /// Higher wins over everything else in route precedence. Default 0; may be negative.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: i32,
    #[serde(rename = "match", default)]
    pub matcher: MatchConfig,
    /// The upstream that serves this route. A route without upstream must answer by itself
    /// (a `direct_response` or `redirect` policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// Remove a leading part of the path before forwarding: a literal prefix (`/api`, at a segment
    /// boundary) or a number of segments (`1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strip_prefix: Option<StripPrefixConfig>,
    /// Replace the path with a template that uses the pattern's params: `/v2/users/{id}`;
    /// `{**}` is the part matched by a `**` tail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<String>,
    /// Send the client's Host header upstream instead of the endpoint's host.
    #[serde(default, skip_serializing_if = "is_false")]
    pub preserve_host: bool,
    /// Accept WebSocket upgrades: the handshake goes through the route's policies to the upstream,
    /// and after its `101` frames are relayed both ways. Without it an upgrade is refused with
    /// `400 upgrade_not_allowed`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub websocket: bool,
    /// Send this Host header upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_rewrite: Option<String>,
    /// Total time from the request's arrival to the upstream's response head (`30s`), or
    /// `{total, connect, per_try}`: connect and per-try replace the upstream's for this route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<RouteTimeoutConfig>,
    /// Policies for this route (they replace global policies of the same kind).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<PolicyConfig>,
    /// Instead of `upstream`: a weighted choice between upstreams (a canary: `[{upstream: v1,
    /// weight: 90}, {upstream: v2, weight: 10}]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub split: Vec<SplitConfig>,
    /// With `split`: requests with the same key (`client_ip`, `header:NAME`, `cookie:NAME`,
    /// `claim:sub`, … as for rate limits) always go to the same side. Default: drawn at random.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_on: Option<String>,
    /// Send a copy of (a share of) the requests to another upstream; its answers are discarded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<MirrorConfig>,
}

/// A route's timeouts: one duration (the total), or each of them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum RouteTimeoutConfig {
    Total(DurationValue),
    Each(RouteTimeouts),
}

#[derive(Debug, Clone, Copy, PartialEq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteTimeouts {
    /// From the request's arrival to the response head, all tries together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<DurationValue>,
    /// Connecting to an endpoint (instead of the upstream's `timeouts.connect`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<DurationValue>,
    /// One try, from sending the request to the response head (instead of the upstream's
    /// `timeouts.response_header`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try: Option<DurationValue>,
}

impl RouteTimeoutConfig {
    pub fn each(&self) -> RouteTimeouts {
        match *self {
            RouteTimeoutConfig::Total(total) => RouteTimeouts { total: Some(total), ..RouteTimeouts::default() },
            RouteTimeoutConfig::Each(each) => each,
        }
    }
}

impl<'de> Deserialize<'de> for RouteTimeoutConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RouteTimeoutConfig;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as 30s, or {total, connect, per_try}")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RouteTimeoutConfig, E> {
                DurationValue::deserialize(de::value::StrDeserializer::<E>::new(v)).map(RouteTimeoutConfig::Total)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RouteTimeoutConfig, E> {
                DurationValue::deserialize(de::value::U64Deserializer::<E>::new(v)).map(RouteTimeoutConfig::Total)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RouteTimeoutConfig, E> {
                DurationValue::deserialize(de::value::I64Deserializer::<E>::new(v)).map(RouteTimeoutConfig::Total)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RouteTimeoutConfig, A::Error> {
                RouteTimeouts::deserialize(de::value::MapAccessDeserializer::new(map)).map(RouteTimeoutConfig::Each)
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// One side of a `split`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SplitConfig {
    pub upstream: String,
    pub weight: u32,
}

/// Traffic mirroring (shadowing).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MirrorConfig {
    pub upstream: String,
    /// The share of requests copied, in percent. Default 100.
    #[serde(default = "default_mirror_percent")]
    pub percent: f64,
}

fn default_mirror_percent() -> f64 {
    100.0
}

fn is_zero(v: &i32) -> bool {
    *v == 0
}

fn is_false(v: &bool) -> bool {
    !*v
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    /// Host names: `api.example.com` or `*.example.com`. Default: any host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<OneOrMany<String>>,
    /// Path patterns (see docs/routing.md): `/users`, `/users/**`, `/users/{id}`, `/files/{*rest}`,
    /// or `{regex: "^/v[0-9]+/.*"}`. Default: `/**`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<OneOrMany<PathMatchConfig>>,
    /// HTTP methods. Default: any method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
    /// Request headers that must match: `name: value` for an exact value, or `{prefix|regex: …}`,
    /// `{present: true}`, `{present: false}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, ValueMatchConfig>,
    /// Query parameters that must match, same forms as headers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub query: BTreeMap<String, ValueMatchConfig>,
}

/// One value or a list of values.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(untagged)]
#[schemars(rename = "OneOrMany_{T}")]
pub enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T> OneOrMany<T> {
    pub fn as_slice(&self) -> &[T] {
        match self {
            OneOrMany::One(v) => std::slice::from_ref(v),
            OneOrMany::Many(v) => v,
        }
    }
    /// The YAML path of element `i` under `base` (a single value has no index).
    pub fn element_path(&self, base: &str, i: usize) -> String {
        match self {
            OneOrMany::One(_) => base.to_owned(),
            OneOrMany::Many(_) => format!("{base}[{i}]"),
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for OneOrMany<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = OneOrMany<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a value or a list of values")
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                Vec::<T>::deserialize(de::value::SeqAccessDeserializer::new(seq)).map(OneOrMany::Many)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(OneOrMany::One)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                T::deserialize(de::value::StrDeserializer::new(v)).map(OneOrMany::One)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                self.visit_string(v.to_string())
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                self.visit_string(v.to_string())
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                T::deserialize(de::value::StringDeserializer::new(v)).map(OneOrMany::One)
            }
        }
        deserializer.deserialize_any(V(std::marker::PhantomData))
    }
}

/// A path pattern string, or an explicit `{exact}`, `{prefix}` or `{regex}` map.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum PathMatchConfig {
    Pattern(String),
    Explicit(PathMatchExplicit),
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum PathMatchExplicit {
    /// Exactly this path.
    Exact(String),
    /// This path and everything below it, at a segment boundary (`/api` matches `/api/x`, not `/apix`).
    Prefix(String),
    /// A regular expression over the whole normalised path; named groups become params.
    Regex(String),
}

impl<'de> Deserialize<'de> for PathMatchConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = PathMatchConfig;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a path pattern such as /users/{id}, or {exact|prefix|regex: …}")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PathMatchConfig, E> {
                Ok(PathMatchConfig::Pattern(v.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<PathMatchConfig, A::Error> {
                PathMatchExplicit::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(PathMatchConfig::Explicit)
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// How a header or query value must match: a plain string is an exact match.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum ValueMatchConfig {
    Exact(String),
    Rule(ValueMatchRule),
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ValueMatchRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// A regular expression that must match the whole value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// `true`: the header/parameter must be there (any value); `false`: it must be absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
}

impl<'de> Deserialize<'de> for ValueMatchConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ValueMatchConfig;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a value to match exactly, or {exact|prefix|regex: …} or {present: true|false}")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ValueMatchConfig, E> {
                Ok(ValueMatchConfig::Exact(v.to_owned()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ValueMatchConfig, E> {
                Ok(ValueMatchConfig::Exact(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ValueMatchConfig, E> {
                Ok(ValueMatchConfig::Exact(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<ValueMatchConfig, E> {
                Ok(ValueMatchConfig::Exact(v.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ValueMatchConfig, A::Error> {
                ValueMatchRule::deserialize(de::value::MapAccessDeserializer::new(map)).map(ValueMatchConfig::Rule)
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// `/prefix` to remove, or a number of leading segments.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum StripPrefixConfig {
    Segments(u32),
    Prefix(String),
}

impl<'de> Deserialize<'de> for StripPrefixConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = StripPrefixConfig;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a path prefix such as /api, or a number of segments")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<StripPrefixConfig, E> {
                u32::try_from(v).map(StripPrefixConfig::Segments).map_err(|_| E::custom("too many segments"))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<StripPrefixConfig, E> {
                u32::try_from(v)
                    .map(StripPrefixConfig::Segments)
                    .map_err(|_| E::custom("segments must be a positive number"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<StripPrefixConfig, E> {
                Ok(StripPrefixConfig::Prefix(v.to_owned()))
            }
        }
        deserializer.deserialize_any(V)
    }
}
