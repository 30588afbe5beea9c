//! `compile`: a `LocalConfig` becomes a runtime `Snapshot`, or the complete list of what is wrong.
//!
//! Every check on the meaning of a config lives here (names resolve, patterns parse, values are in
//! range), and every problem is collected with its YAML path, so that `gatehouse validate`, a hot
//! reload and the admin API report the same errors. Long-lived state (endpoint identity, balancer
//! positions) is taken from the `Registry`, so an unchanged upstream keeps its pools across reloads.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use ipnet::IpNet;

use crate::policy::rate_limit::KeyPart;
use crate::policy::rate_limit::redis::RedisBackend;
use crate::policy::{
    AclPolicy, ApiKeyPolicy, AuthorizePolicy, BasicAuthPolicy, ConcurrencyPolicy, ConsumerIndex, CorsPolicy,
    DirectResponse, ForwardAuthPolicy, HeaderFilter, HmacAuthPolicy, IntrospectionPolicy, IpRestriction, JwtPolicy,
    RateLimitPolicy, Redirect, RoutePolicies,
};
use crate::proxy::normalize::{EscapedSlashes, PathOptions, normalize_path};
use crate::route::{
    HeaderMatcher, HostPattern, PathPattern, PathRewrite, QueryMatcher, RewriteTemplate, RouteId, RouteSpec,
    RouteTable, ValueMatch,
};
use crate::state::registry::Registry;
use crate::state::{ListenerSettings, Route, ServerSettings, Snapshot, UpstreamHost};
use crate::telemetry::AccessLogWriter;
use crate::upstream::{PoolSettings, Upstream};

use super::error::Diagnostic;
use super::policies::*;
use super::types::*;

/// What compile needs besides the config.
pub struct Context<'a> {
    pub registry: &'a Arc<Registry>,
    /// The listeners the transport has bound, by name and address; a listener's id is its position.
    /// A removed listener keeps its place with an empty name (its connections drain). `None` when
    /// only validating: ids follow the config order.
    pub bound: Option<&'a [(String, SocketAddr)]>,
    pub generation: u64,
    /// Validate only: open no files and start no threads.
    pub dry_run: bool,
}

/// Collected problems, each at a YAML path.
#[derive(Default)]
struct Problems(Vec<Diagnostic>);

impl Problems {
    fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Diagnostic::new(path, message));
    }
}

/// The server settings of an empty config (the documented defaults).
pub fn default_server_settings() -> ServerSettings {
    let mut problems = Problems::default();
    server_settings(&ServerConfig::default(), &mut problems)
}

pub fn compile(config: &LocalConfig, ctx: &Context<'_>) -> Result<Snapshot, Vec<Diagnostic>> {
    let mut problems = Problems::default();
    let mut server = server_settings(&config.server, &mut problems);
    if config.tracing.enabled {
        server.trace_sampling = Some(config.tracing.sampling);
    }
    if config.metrics.max_consumers > 10_000 {
        problems.add("metrics.max_consumers", "at most 10000: every consumer is a series of its own");
    }
    if !(0.0..=1.0).contains(&config.tracing.sampling) {
        problems.add("tracing.sampling", "a share between 0.0 and 1.0");
    }
    if let Some(otlp) = config.tracing.otlp.as_ref().filter(|_| config.tracing.enabled) {
        let mut valid = true;
        let endpoint_ok = otlp
            .endpoint
            .parse::<http::Uri>()
            .is_ok_and(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some());
        if !endpoint_ok {
            valid = false;
            problems.add(
                "tracing.otlp.endpoint",
                "an http:// or https:// URL with a host, e.g. http://127.0.0.1:4318/v1/traces",
            );
        }
        for (name, value) in &otlp.headers {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() || http::HeaderValue::from_str(value).is_err() {
                valid = false;
                problems.add(format!("tracing.otlp.headers.{name}"), "not a valid header name and value");
            }
        }
        if otlp.interval.0.is_zero() || otlp.timeout.0.is_zero() {
            valid = false;
            problems.add("tracing.otlp", "interval and timeout must be longer than 0");
        }
        // Only a whole, checked setting starts an exporter; a check run (validate, the pre-bind
        // check) starts none.
        if valid && !ctx.dry_run {
            match ctx.registry.span_sink(otlp) {
                Ok(sink) => server.trace_export = Some(sink),
                Err(e) => problems.add("tracing.otlp", e),
            }
        }
    }
    let listeners = listener_names(config, ctx, &mut problems);
    let upstreams = upstreams(config, ctx.registry, ctx.dry_run, &mut problems);
    let consumers = match ConsumerIndex::compile(&config.consumers) {
        Ok(index) => Arc::new(index),
        Err(errors) => {
            for (path, message) in errors {
                problems.add(path, message);
            }
            Arc::new(ConsumerIndex::default())
        }
    };
    let redis = config.redis.as_ref().and_then(|r| match ctx.registry.redis(r) {
        Ok(backend) => Some(backend),
        Err((field, message)) => {
            problems.add(format!("redis.{field}"), message);
            None
        }
    });
    let env = PolicyEnv {
        registry: ctx.registry,
        consumers: &consumers,
        redis: redis.as_ref(),
        metrics: config.metrics.enabled.then_some(&*ctx.registry.metrics),
    };
    let global = policies(&config.policies, "policies", "global", &env, &mut problems);
    if global.redirect.is_some() && global.direct_response.is_some() {
        problems.add("policies", "the global policies answer with a redirect or a direct_response, not both");
    }
    // Each listener's policies over the global ones: the base of every route on that listener (in
    // listener-id order; a removed listener's place has none).
    let scopes: Vec<RoutePolicies> = listeners
        .iter()
        .map(|(name, _)| match config.listeners.iter().enumerate().find(|(_, l)| *l.name == **name) {
            Some((i, l)) => merge(
                &global,
                policies(
                    &l.policies,
                    &format!("listeners[{i}].policies"),
                    &format!("listener:{}", l.name),
                    &env,
                    &mut problems,
                ),
            ),
            None => RoutePolicies::default(),
        })
        .collect();
    let (routes, specs) = routes(config, &env, &server.path, &upstreams, &scopes, &listeners, &mut problems);

    let access_log = if config.access_log.enabled && !ctx.dry_run {
        match AccessLogWriter::open(&config.access_log.path) {
            Ok(writer) => Some(writer),
            Err(e) => {
                problems.add("access_log.path", format!("cannot open the access log: {e}"));
                None
            }
        }
    } else {
        None
    };
    if config.admin.enabled {
        match config.admin.address.parse::<SocketAddr>() {
            Err(_) => problems.add("admin.address", format!("\"{}\" is not an ip:port address", config.admin.address)),
            Ok(address) if !address.ip().is_loopback() && config.admin.token.is_none() => problems.add(
                "admin.token",
                format!(
                    "the admin listener at {address} is reachable from other hosts: set a token (admin.token: \"${{ADMIN_TOKEN}}\"), or bind it to 127.0.0.1"
                ),
            ),
            Ok(_) => {}
        }
        if let Some(token) = &config.admin.token {
            if token.len() < 16 || token.bytes().any(|b| !b.is_ascii_graphic()) {
                problems.add("admin.token", "at least 16 visible ASCII characters (no spaces)");
            }
        }
    }

    // TLS: every certificate loaded now, so a bad file is a config error with its place.
    let mut tls = HashMap::new();
    for (i, listener) in config.listeners.iter().enumerate() {
        if let Some(redirect) = &listener.https_redirect {
            if !matches!(redirect.status, 301 | 302 | 307 | 308) {
                problems.add(format!("listeners[{i}].https_redirect.status"), "301, 302, 307 or 308");
            }
            if redirect.port == 0 {
                problems.add(format!("listeners[{i}].https_redirect.port"), "a port from 1 to 65535");
            }
            if listener.tls.is_some() {
                problems.add(format!("listeners[{i}].https_redirect"), "the listener is HTTPS already");
            }
        }
        let Some(settings) = &listener.tls else { continue };
        if settings.certificates.is_empty() {
            problems.add(format!("listeners[{i}].tls.certificates"), "at least one certificate");
            continue;
        }
        let mut settings = settings.clone();
        let alpn = settings.alpn.get_or_insert_with(|| {
            let mut alpn = vec!["http/1.1".to_owned()];
            if listener.http2 {
                alpn.insert(0, "h2".to_owned());
            }
            alpn
        });
        if let Some(bad) = alpn.iter().find(|p| !matches!(p.as_str(), "h2" | "http/1.1")) {
            problems.add(format!("listeners[{i}].tls.alpn"), format!("{bad:?}: the protocols are h2 and http/1.1"));
            continue;
        }
        if alpn.iter().any(|p| p == "h2") && !listener.http2 {
            problems.add(format!("listeners[{i}].tls.alpn"), "h2 is offered, but the listener has http2: false");
            continue;
        }
        match ctx.registry.listener_tls(&settings, ctx.dry_run) {
            Ok(built) => {
                tls.insert(listener.name.clone(), built);
            }
            Err((path, message)) => {
                let path = path.strip_prefix("tls").unwrap_or(&path);
                problems.add(format!("listeners[{i}].tls{path}"), message);
            }
        }
    }

    if !problems.0.is_empty() {
        return Err(problems.0);
    }

    let listeners = listeners
        .into_iter()
        .map(|(name, address)| {
            let own = config.listeners.iter().find(|l| *l.name == *name);
            // A removed listener routes nothing: its draining connections get 404 until closed.
            let table_specs: Vec<RouteSpec> = specs
                .iter()
                .filter(|_| own.is_some())
                .filter(|(_, on)| on.as_ref().is_none_or(|names| names.contains(&*name)))
                .map(|(spec, _)| spec.clone())
                .collect();
            let max_connections = config
                .listeners
                .iter()
                .find(|l| *l.name == *name)
                .and_then(|l| l.max_connections)
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX));
            let unrouted =
                (config.metrics.enabled && own.is_some()).then(|| ctx.registry.metrics.route(&name, "", Vec::new()));
            ListenerSettings {
                tls: tls.get(&*name).cloned(),
                http2: own.is_none_or(|l| l.http2),
                https_redirect: own
                    .and_then(|l| l.https_redirect.as_ref())
                    .and_then(|r| Some((r.port, http::StatusCode::from_u16(r.status).ok()?))),
                name,
                address,
                table: RouteTable::build(table_specs),
                max_connections,
                unrouted,
            }
        })
        .collect();

    Ok(Snapshot {
        generation: ctx.generation,
        config: Arc::new(config.clone()),
        server,
        listeners,
        routes,
        upstreams,
        access_log,
        consumers,
    })
}

// === server ===

fn server_settings(config: &ServerConfig, problems: &mut Problems) -> ServerSettings {
    let workers = match config.workers {
        Workers::Auto => std::thread::available_parallelism().map_or(1, usize::from),
        Workers::Count(0) => {
            problems.add("server.workers", "workers must be at least 1");
            1
        }
        Workers::Count(n) if n > 1024 => {
            problems.add("server.workers", "workers must be at most 1024");
            1
        }
        Workers::Count(n) => n as usize,
    };
    let mut trusted_proxies = Vec::new();
    for (i, text) in config.trusted_proxies.iter().enumerate() {
        let parsed = text.parse::<IpNet>().or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from));
        match parsed {
            Ok(net) => trusted_proxies.push(net.trunc()),
            Err(_) => problems.add(
                format!("server.trusted_proxies[{i}]"),
                format!("\"{text}\" is not an IP address or CIDR block (e.g. 10.0.0.0/8)"),
            ),
        }
    }
    let request_id_header = HeaderName::from_bytes(config.request_id.header.as_bytes()).unwrap_or_else(|_| {
        problems
            .add("server.request_id.header", format!("\"{}\" is not a valid header name", config.request_id.header));
        HeaderName::from_static("x-request-id")
    });
    let limits = &config.limits;
    if limits.max_uri_length.get() < 64 {
        problems.add("server.limits.max_uri_length", "must be at least 64 bytes");
    }
    if limits.max_header_bytes.get() < 1024 {
        problems.add("server.limits.max_header_bytes", "must be at least 1KiB");
    }
    if limits.max_concurrent_streams == 0 {
        problems.add("server.limits.max_concurrent_streams", "at least 1");
    }
    if limits.max_headers == 0 || limits.max_headers > 10_000 {
        problems.add("server.limits.max_headers", "must be between 1 and 10000");
    }
    let timeouts = &config.timeouts;
    for (name, value) in
        [("header_read", timeouts.header_read), ("idle", timeouts.idle), ("websocket_idle", timeouts.websocket_idle)]
    {
        if value.get() < Duration::from_millis(10) {
            problems.add(format!("server.timeouts.{name}"), "must be at least 10ms");
        }
    }
    ServerSettings {
        workers,
        trusted_proxies,
        x_forwarded: config.forwarded_headers.x_forwarded,
        forwarded: config.forwarded_headers.forwarded,
        request_id_header,
        request_id_trust_incoming: config.request_id.trust_incoming,
        max_uri_length: limits.max_uri_length.as_usize(),
        max_header_bytes: limits.max_header_bytes.as_usize(),
        max_headers: limits.max_headers as usize,
        max_concurrent_streams: limits.max_concurrent_streams,
        max_body_size: limits.max_body_size.map(|s| s.get()),
        trace_sampling: None,
        trace_export: None,
        header_read_timeout: timeouts.header_read.get(),
        idle_timeout: timeouts.idle.get(),
        websocket_idle: timeouts.websocket_idle.get(),
        shutdown_grace: timeouts.shutdown_grace.get(),
        path: PathOptions {
            escaped_slashes: match config.path.escaped_slashes {
                EscapedSlashesConfig::Reject => EscapedSlashes::Reject,
                EscapedSlashesConfig::Decode => EscapedSlashes::Decode,
                EscapedSlashesConfig::Keep => EscapedSlashes::Keep,
            },
            merge_slashes: config.path.merge_slashes,
        },
    }
}

// === listeners ===

fn listener_names(config: &LocalConfig, ctx: &Context<'_>, problems: &mut Problems) -> Vec<(Arc<str>, SocketAddr)> {
    if config.listeners.is_empty() {
        problems.add("listeners", "at least one listener is needed");
    }
    let mut seen_names = HashSet::new();
    let mut seen_addrs = HashMap::new();
    let mut out = Vec::new();
    for (i, l) in config.listeners.iter().enumerate() {
        if !valid_name(&l.name) {
            problems.add(format!("listeners[{i}].name"), name_rule(&l.name));
        } else if !seen_names.insert(l.name.as_str()) {
            problems.add(format!("listeners[{i}].name"), format!("listener \"{}\" is defined twice", l.name));
        }
        match l.address.parse::<SocketAddr>() {
            Ok(addr) => {
                if addr.port() != 0 {
                    if let Some(other) = seen_addrs.insert(addr, l.name.as_str()) {
                        problems.add(
                            format!("listeners[{i}].address"),
                            format!("{addr} is already used by listener \"{other}\""),
                        );
                    }
                }
                out.push((Arc::from(l.name.as_str()), addr));
            }
            Err(_) => problems.add(
                format!("listeners[{i}].address"),
                format!("\"{}\" is not an ip:port address (e.g. 0.0.0.0:8080 or [::]:8080)", l.address),
            ),
        }
    }
    let Some(bound) = ctx.bound else { return out };
    // In the transport's order; a listener keeps its bound address (port 0 was resolved at bind).
    let mut slots = Vec::with_capacity(bound.len());
    for (name, address) in bound {
        if name.is_empty() {
            slots.push((Arc::from(""), *address));
            continue;
        }
        match out.iter().find(|(n, _)| **n == **name) {
            Some((n, configured)) if same_listener(configured, address) => slots.push((n.clone(), *address)),
            _ => problems.add("listeners", format!("listener \"{name}\" at {address} is bound but not configured so")),
        }
    }
    for (name, _) in &out {
        if !slots.iter().any(|(n, _)| n == name) {
            problems.add("listeners", format!("listener \"{name}\" is configured but not bound"));
        }
    }
    slots
}

/// Whether a configured listener address is the one bound: equal, or port 0 (chosen at bind) on
/// the same IP.
pub fn same_listener(configured: &SocketAddr, bound: &SocketAddr) -> bool {
    configured == bound || (configured.port() == 0 && configured.ip() == bound.ip())
}

pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

pub(crate) fn name_rule(name: &str) -> String {
    format!("\"{name}\" is not a valid name: use 1-128 letters, digits, '-', '_' or '.'")
}

// === upstreams ===

/// How long a compile waits for a new discovery's first answer, so the config starts with
/// endpoints.
const FIRST_LOOK_WAIT: Duration = Duration::from_secs(5);

fn upstreams(
    config: &LocalConfig,
    registry: &Arc<Registry>,
    ctx_dry_run: bool,
    problems: &mut Problems,
) -> HashMap<Arc<str>, Arc<Upstream>> {
    let mut out = HashMap::new();
    let resolver = crate::upstream::discovery::dns::ResolverSettings::from_config(&config.resolver)
        .map_err(|(field, message)| problems.add(format!("resolver.{field}"), message))
        .ok();
    for (name, u) in &config.upstreams {
        let base = format!("upstreams.{name}");
        if !valid_name(name) {
            problems.add(base.clone(), name_rule(name));
        }
        let mut targets = Vec::new();
        let mut seen = HashSet::new();
        for (i, e) in u.endpoints.iter().enumerate() {
            let path = format!("{base}.endpoints[{i}]");
            if e.weight() == 0 || e.weight() > 10_000 {
                problems.add(format!("{path}.weight"), "weight must be between 1 and 10000");
                continue;
            }
            match crate::upstream::target_of(e.url(), e.weight()) {
                Ok(target) => {
                    if !seen.insert(target.url.clone()) {
                        problems.add(path, format!("endpoint {} is listed twice", target.url));
                        continue;
                    }
                    targets.push(target);
                }
                Err(message) => problems.add(path, message),
            }
        }
        let source = match (&u.discovery, u.endpoints.is_empty()) {
            (None, true) => {
                problems.add(format!("{base}.endpoints"), "an upstream needs at least one endpoint, or `discovery`");
                None
            }
            (Some(_), false) => {
                problems.add(format!("{base}.discovery"), "list `endpoints` or use `discovery`, not both");
                None
            }
            (Some(d), true) => discovery_source(d, resolver.as_ref(), registry)
                .map_err(|(f, m)| problems.add(format!("{base}.discovery{f}"), m))
                .ok(),
            (None, false) => None,
        };
        if u.pool.idle_timeout.get() < Duration::from_millis(100) {
            problems.add(format!("{base}.pool.idle_timeout"), "must be at least 100ms");
        }
        for (field, value) in [("connect", u.timeouts.connect), ("response_header", u.timeouts.response_header)] {
            if value.get() < Duration::from_millis(1) {
                problems.add(format!("{base}.timeouts.{field}"), "must be at least 1ms");
            }
        }
        let slow_start_ms = match u.slow_start {
            Some(_) if u.balance == BalanceConfig::ConsistentHash => {
                problems
                    .add(format!("{base}.slow_start"), "does not apply to consistent_hash: a key's endpoint is fixed");
                0
            }
            Some(d) if d.get() > Duration::from_secs(3600) => {
                problems.add(format!("{base}.slow_start"), "at most 1h");
                0
            }
            Some(d) => d.get().as_millis() as u64,
            None => 0,
        };
        let check = match &u.health_check {
            Some(check) => match check_settings(check) {
                Ok(settings) => Some(settings),
                Err((field, message)) => {
                    problems.add(format!("{base}.health_check.{field}"), message);
                    None
                }
            },
            None => None,
        };
        // TLS: `https://` endpoints (all of them: an upstream is one or the other), or `tls` with
        // discovery.
        let secure = match (u.endpoints.is_empty(), &u.tls) {
            (true, tls) => tls.is_some(),
            (false, tls) => {
                let https = u
                    .endpoints
                    .iter()
                    .filter(|e| e.url().trim_start().to_ascii_lowercase().starts_with("https://"))
                    .count();
                if https != 0 && https != u.endpoints.len() {
                    problems.add(
                        format!("{base}.endpoints"),
                        "mix of http:// and https:// endpoints: an upstream is reached one way",
                    );
                } else if https == 0 && tls.is_some() {
                    problems
                        .add(format!("{base}.tls"), "the endpoints are http://: write https:// to reach them over TLS");
                }
                https != 0
            }
        };
        let tls = if secure {
            let settings = u.tls.clone().unwrap_or_default();
            match crate::upstream::tls::UpstreamTls::build(
                &settings,
                u.protocol == crate::config::UpstreamProtocol::Http2,
            ) {
                Ok(built) => {
                    if built.insecure && !ctx_dry_run {
                        tracing::warn!(upstream = %name, "TLS certificates of this upstream are NOT verified (insecure_skip_verify): for development only");
                    }
                    Some(Arc::new(built))
                }
                Err((field, message)) => {
                    let path = if field.is_empty() { format!("{base}.tls") } else { format!("{base}.tls.{field}") };
                    problems.add(path, message);
                    None
                }
            }
        } else {
            None
        };
        // Health checks speak their own protocol (HTTP/1.1, or HTTP/2 for gRPC), whatever the
        // upstream's: over TLS they offer that one in ALPN.
        let check = check.map(|mut c| {
            if let Some(tls) = &tls {
                let grpc = matches!(c.kind, crate::upstream::active::CheckKind::Grpc { .. });
                let http2 = u.protocol == crate::config::UpstreamProtocol::Http2;
                c.tls = Some(if grpc == http2 { tls.clone() } else { Arc::new(tls.with_alpn(grpc)) });
            }
            c
        });
        let spec =
            crate::upstream::MemberSpec { upstream: Arc::from(name.as_str()), balance: u.balance, check, tls: secure };
        let hash_on = match (&u.hash_on, u.balance) {
            (Some(text), BalanceConfig::ConsistentHash) => match KeyPart::parse(text) {
                Ok(part) => Some(Box::from([part])),
                Err(message) => {
                    problems.add(format!("{base}.hash_on"), message);
                    None
                }
            },
            (None, BalanceConfig::ConsistentHash) => {
                problems.add(
                    format!("{base}.hash_on"),
                    "consistent_hash needs `hash_on` (client_ip, header:NAME, cookie:NAME, …)",
                );
                None
            }
            (Some(_), _) => {
                problems.add(format!("{base}.hash_on"), "applies to `balance: consistent_hash` only");
                None
            }
            (None, _) => None,
        };
        let ph = &u.passive_health;
        if ph.max_ejected_percent > 100 {
            problems.add(format!("{base}.passive_health.max_ejected_percent"), "at most 100");
        }
        if ph.ejection_time.get() > ph.max_ejection_time.get() {
            problems.add(format!("{base}.passive_health.ejection_time"), "longer than max_ejection_time");
        }
        let outlier = crate::upstream::health::OutlierSettings {
            consecutive_failures: ph.consecutive_failures,
            base_ejection_ms: ph.ejection_time.get().as_millis() as u64,
            max_ejection_ms: ph.max_ejection_time.get().as_millis() as u64,
            max_ejected_percent: ph.max_ejected_percent,
        };
        let retry = match retry_policy(&u.retries) {
            Ok(r) => r,
            Err((field, message)) => {
                problems.add(format!("{base}.retries.{field}"), message);
                crate::upstream::retry::RetryPolicy::none()
            }
        };
        let (members, discovery) = match source {
            Some(source) if !ctx_dry_run => {
                let key = format!("{name}|{}|{spec:?}", source.describe());
                let discovery = registry.discovery(&key, || {
                    crate::upstream::discovery::Discovery::start(source, spec.clone(), registry.clone(), true)
                });
                if !discovery.wait_first_look(FIRST_LOOK_WAIT) {
                    tracing::warn!(upstream = %name, source = %discovery.source, "no answer from discovery yet; the upstream has no endpoints until one comes");
                }
                (discovery.members.clone(), Some(discovery))
            }
            _ => {
                let members = crate::upstream::Members::build(&spec, &targets, registry, !ctx_dry_run);
                (Arc::new(arc_swap::ArcSwap::from_pointee(members)), None)
            }
        };
        let upstream = Upstream {
            name: Arc::from(name.as_str()),
            members,
            discovery,
            slow_start_ms,
            connect_timeout: u.timeouts.connect.get(),
            response_header_timeout: u.timeouts.response_header.get(),
            pool: PoolSettings {
                max_idle_per_endpoint: u.pool.max_idle_per_endpoint as usize,
                idle_timeout: u.pool.idle_timeout.get(),
            },
            hash_on,
            outlier,
            retry,
            budget: crate::upstream::retry::RetryBudget::new(u.retries.budget_percent, u.retries.min_per_second),
            breaker: u.circuit_breaker.as_ref().and_then(|c| {
                if !(0.0..=1.0).contains(&c.failure_ratio) || c.failure_ratio == 0.0 {
                    problems.add(format!("{base}.circuit_breaker.failure_ratio"), "must be above 0 and at most 1");
                    return None;
                }
                if c.half_open_requests == 0 || c.min_requests == 0 {
                    problems.add(
                        format!("{base}.circuit_breaker"),
                        "min_requests and half_open_requests must be at least 1",
                    );
                    return None;
                }
                let settings = crate::upstream::breaker::BreakerSettings {
                    failure_ratio: c.failure_ratio,
                    min_requests: c.min_requests,
                    window_ms: c.window.get().as_millis().max(2) as u64,
                    open_ms: c.open_for.get().as_millis() as u64,
                    half_open_requests: c.half_open_requests,
                    max_requests: c.max_requests,
                    max_pending: c.max_pending,
                };
                Some(registry.breaker(&format!("{name}|{settings:?}"), settings))
            }),
            fail_when_all_down: u.on_all_unhealthy == Some(crate::config::AllUnhealthyConfig::Fail),
            metrics: config.metrics.enabled.then(|| registry.metrics.upstream(name)),
            tls,
            http2: u.protocol == crate::config::UpstreamProtocol::Http2,
        };
        out.insert(upstream.name.clone(), Arc::new(upstream));
    }
    out
}

fn check_settings(
    c: &crate::config::HealthCheckConfig,
) -> Result<crate::upstream::active::CheckSettings, (String, String)> {
    use crate::config::HealthCheckKind;
    use crate::upstream::active::{CheckKind, CheckSettings, parse_status_range};
    if c.port == Some(0) {
        return Err(("port".into(), "a port from 1 to 65535".into()));
    }
    if !c.service.is_empty() && c.kind != HealthCheckKind::Grpc {
        return Err(("service".into(), "applies to `type: grpc` only".into()));
    }
    // The HTTP check's fields mean nothing to a TCP or gRPC check: say so rather than ignore them.
    let defaults = crate::config::HealthCheckConfig::default();
    let http_only = [
        ("path", c.path != defaults.path),
        ("expect_status", c.expect_status != defaults.expect_status),
        ("body_contains", c.body_contains.is_some()),
        ("host", c.host.is_some() && c.kind == HealthCheckKind::Tcp),
    ];
    if c.kind != HealthCheckKind::Http {
        if let Some((field, _)) = http_only.iter().find(|(_, set)| *set) {
            let applies = if *field == "host" { "`type: http` and `type: grpc`" } else { "`type: http`" };
            return Err(((*field).into(), format!("applies to {applies} only")));
        }
    }
    let kind = match c.kind {
        HealthCheckKind::Tcp => CheckKind::Tcp,
        HealthCheckKind::Grpc => {
            if let Some(authority) = c.host.as_ref().filter(|h| h.parse::<http::uri::Authority>().is_err()) {
                return Err(("host".into(), format!("\"{authority}\" is not a host[:port]")));
            }
            CheckKind::Grpc { service: c.service.clone(), authority: c.host.clone() }
        }
        HealthCheckKind::Http => {
            if !c.path.starts_with('/') || c.path.parse::<http::Uri>().is_err() {
                return Err(("path".into(), format!("\"{}\" is not a path starting with /", c.path)));
            }
            let mut statuses = Vec::new();
            for (i, s) in c.expect_status.iter().enumerate() {
                statuses.push(parse_status_range(s).map_err(|m| (format!("expect_status[{i}]"), m))?);
            }
            if statuses.is_empty() {
                return Err(("expect_status".into(), "list at least one status".into()));
            }
            CheckKind::Http {
                path: c.path.clone(),
                host: c.host.clone(),
                statuses,
                body_contains: c.body_contains.clone(),
            }
        }
    };
    let interval = c.interval.get();
    let timeout = c.timeout.get();
    if interval < Duration::from_millis(10) {
        return Err(("interval".into(), "at least 10ms".into()));
    }
    if timeout < Duration::from_millis(1) || timeout > interval {
        return Err(("timeout".into(), "at least 1ms and at most the interval".into()));
    }
    if c.healthy_threshold == 0 || c.unhealthy_threshold == 0 {
        return Err(("healthy_threshold".into(), "thresholds are at least 1".into()));
    }
    Ok(CheckSettings {
        tls: None,
        kind,
        port: c.port,
        interval,
        timeout,
        healthy_threshold: c.healthy_threshold,
        unhealthy_threshold: c.unhealthy_threshold,
    })
}

fn retry_policy(c: &crate::config::RetriesConfig) -> Result<crate::upstream::retry::RetryPolicy, (String, String)> {
    let mut policy = crate::upstream::retry::RetryPolicy::none();
    if c.attempts > 10 {
        return Err(("attempts".into(), "at most 10".into()));
    }
    policy.attempts = c.attempts;
    for (i, what) in c.on.iter().enumerate() {
        match what.trim() {
            "connect_failure" => policy.on_connect_failure = true,
            "reset" => policy.on_reset = true,
            "timeout" => policy.on_timeout = true,
            status => match status.parse::<u16>().ok().and_then(|s| http::StatusCode::from_u16(s).ok()) {
                Some(s) if s.is_server_error() || s == http::StatusCode::TOO_MANY_REQUESTS => {
                    policy.on_statuses.push(s)
                }
                _ => {
                    return Err((
                        format!("on[{i}]"),
                        format!("`{status}`: expected connect_failure, reset, timeout or a 5xx status (or 429)"),
                    ));
                }
            },
        }
    }
    policy.non_idempotent = c.non_idempotent;
    policy.backoff_base = c.backoff.get();
    policy.backoff_max = c.max_backoff.get().max(c.backoff.get());
    if c.budget_percent > 100 {
        return Err(("budget_percent".into(), "at most 100".into()));
    }
    policy.max_body = c.max_body.get();
    Ok(policy)
}

/// The source of `discovery`; errors name the field under `discovery` (with its leading dot).
fn discovery_source(
    d: &crate::config::DiscoveryConfig,
    resolver: Option<&crate::upstream::discovery::dns::ResolverSettings>,
    registry: &Registry,
) -> Result<Box<dyn crate::upstream::discovery::Discover>, (String, String)> {
    use crate::config::DiscoveryKind;
    use crate::upstream::discovery::{dns, file};
    let unused = |field: &str, set: bool| {
        if set {
            Err((format!(".{field}"), format!("does not apply to `type: {:?}`", d.kind).to_lowercase()))
        } else {
            Ok(())
        }
    };
    let name = || match d.name.as_deref().map(str::trim) {
        Some(n) if !n.is_empty() && n.len() <= 253 && !n.contains(['/', ' ', ':']) => Ok(n.to_owned()),
        Some(n) => Err((".name".to_owned(), format!("`{n}` is not a DNS name"))),
        None => Err((".name".to_owned(), "the DNS name to resolve".to_owned())),
    };
    // A bad `resolver` section is reported there; the source is not built.
    let resolver = |registry: &Registry| {
        let settings = resolver.ok_or_else(|| (String::new(), "see the error in `resolver`".to_owned()))?;
        let built = registry.resolver(settings).map_err(|m| (String::new(), m))?;
        Ok::<_, (String, String)>((built, settings.clone()))
    };
    match d.kind {
        DiscoveryKind::Dns => {
            unused("path", d.path.is_some())?;
            unused("interval", d.interval.is_some())?;
            let name = name()?;
            let port =
                d.port.filter(|p| *p != 0).ok_or_else(|| (".port".to_owned(), "the endpoints' port".to_owned()))?;
            let weight = d.weight.unwrap_or(1);
            if weight == 0 || weight > 10_000 {
                return Err((".weight".into(), "weight must be between 1 and 10000".into()));
            }
            let (resolver, settings) = resolver(registry)?;
            Ok(Box::new(dns::Dns { resolver, settings, name, port, weight }))
        }
        DiscoveryKind::Srv => {
            for (field, set) in [
                ("path", d.path.is_some()),
                ("interval", d.interval.is_some()),
                ("port", d.port.is_some()),
                ("weight", d.weight.is_some()),
            ] {
                unused(field, set)?;
            }
            let name = name()?;
            let (resolver, settings) = resolver(registry)?;
            Ok(Box::new(dns::Srv { resolver, settings, name }))
        }
        DiscoveryKind::File => {
            for (field, set) in [("name", d.name.is_some()), ("port", d.port.is_some()), ("weight", d.weight.is_some())]
            {
                unused(field, set)?;
            }
            let path = d
                .path
                .as_deref()
                .filter(|p| !p.trim().is_empty())
                .ok_or_else(|| (".path".to_owned(), "the file's path".to_owned()))?;
            let interval = d.interval.map_or(Duration::from_secs(1), |i| i.get());
            if interval < Duration::from_millis(100) {
                return Err((".interval".into(), "at least 100ms".into()));
            }
            Ok(Box::new(file::File { path: path.into(), interval }))
        }
    }
}

// === policies ===

/// What compiling a policy may need besides its own config.
struct PolicyEnv<'a> {
    registry: &'a Registry,
    consumers: &'a Arc<ConsumerIndex>,
    redis: Option<&'a Arc<RedisBackend>>,
    /// Where policies count their decisions (None: metrics off).
    metrics: Option<&'a crate::telemetry::metrics::Metrics>,
}

fn policies(
    list: &[PolicyConfig],
    base: &str,
    scope: &str,
    env: &PolicyEnv<'_>,
    problems: &mut Problems,
) -> RoutePolicies {
    let (registry, consumers) = (env.registry, env.consumers);
    let mut out = RoutePolicies::default();
    let mut kinds = HashSet::new();
    for (i, policy) in list.iter().enumerate() {
        let path = format!("{base}[{i}].{}", policy.kind());
        if !kinds.insert(policy.kind()) {
            problems.add(format!("{base}[{i}]"), format!("{} appears twice in one policy list", policy.kind()));
            continue;
        }
        let mut report = |errors: Vec<(String, String)>| {
            for (field, message) in errors {
                problems.add(format!("{path}.{field}"), message);
            }
        };
        match policy {
            PolicyConfig::ApiKey(c) => match ApiKeyPolicy::compile(c, consumers.clone()) {
                Ok(p) => out.api_key = Some(Arc::new(p)),
                Err(e) => report(e),
            },
            PolicyConfig::Acl(c) => match AclPolicy::compile(c) {
                Ok(p) => out.acl = Some(Arc::new(p)),
                Err(e) => report(e),
            },
            PolicyConfig::IpRestriction(c) => match IpRestriction::compile(c) {
                Ok(p) => out.ip_restriction = Some(Arc::new(p)),
                Err(e) => report(e),
            },
            PolicyConfig::Cors(c) => match CorsPolicy::compile(c) {
                Ok(p) => out.cors = Some(Arc::new(p)),
                Err(e) => report(e),
            },
            PolicyConfig::Jwt(c) => match JwtPolicy::compile(c, registry, consumers) {
                Ok(p) => out.jwt = Some(Arc::new(p)),
                Err(e) => report(e),
            },
            PolicyConfig::BasicAuth(c) => match BasicAuthPolicy::compile(c, consumers.clone()) {
                Ok(p) => out.basic_auth = Some(Arc::new(p)),
                Err(e) => report(e),
            },
            PolicyConfig::HmacAuth(c) => match HmacAuthPolicy::compile(c, consumers.clone()) {
                Ok(p) => out.hmac_auth = Some(Arc::new(p)),
                Err(e) => report(e),
            },
            PolicyConfig::Introspection(c) => match IntrospectionPolicy::compile(c, registry, consumers) {
                Ok(p) => out.introspection = Some(Arc::new(p)),
                Err(e) => report(e),
            },
            PolicyConfig::ForwardAuth(c) => match ForwardAuthPolicy::compile(c, registry) {
                Ok(p) => out.forward_auth = Some(Arc::new(p)),
                Err(e) => report(e),
            },
            PolicyConfig::RateLimit(c) => match RateLimitPolicy::compile(c, scope, registry, env.redis) {
                Ok(p) => out.rate_limit = Some(Arc::new(counted(p, env.metrics))),
                Err(e) => report(e),
            },
            PolicyConfig::Quota(c) => match RateLimitPolicy::compile_quota(c, scope, registry, env.redis) {
                Ok(p) => out.quota = Some(Arc::new(counted(p, env.metrics))),
                Err(e) => report(e),
            },
            PolicyConfig::Concurrency(c) => match ConcurrencyPolicy::compile(c, scope, registry) {
                Ok(p) => out.concurrency = Some(Arc::new(p)),
                Err(e) => report(e),
            },
            PolicyConfig::BodyLimit(c) => {
                if c.max.get() == 0 {
                    report(vec![(
                        "max".into(),
                        "must be at least 1 byte (a route without bodies: limit its methods)".into(),
                    )]);
                } else {
                    out.max_body_size = Some(c.max.get());
                }
            }
            PolicyConfig::Authorize(c) => match AuthorizePolicy::compile(c) {
                Ok(p) => out.authorize = Some(Arc::new(p)),
                Err(e) => report(e),
            },
            PolicyConfig::RequestHeaders(c) => match HeaderFilter::compile(c) {
                Ok(f) => out.request_headers = Some(Arc::new(f)),
                Err(e) => report(e),
            },
            PolicyConfig::ResponseHeaders(c) => match HeaderFilter::compile(c) {
                Ok(f) => out.response_headers = Some(Arc::new(f)),
                Err(e) => report(e),
            },
            PolicyConfig::DirectResponse(c) => match DirectResponse::compile(c) {
                Ok(d) => out.direct_response = Some(Arc::new(d)),
                Err(e) => report(e),
            },
            PolicyConfig::Redirect(c) => match Redirect::compile(c) {
                Ok(r) => out.redirect = Some(Arc::new(r)),
                Err(e) => report(e),
            },
        }
    }
    out
}

/// More specific policies over less specific ones (a route's over its listener's over the global
/// ones): a policy of a kind replaces the one of the same kind below it.
/// A rate-limit policy that counts its decisions when metrics are on.
fn counted(mut policy: RateLimitPolicy, metrics: Option<&crate::telemetry::metrics::Metrics>) -> RateLimitPolicy {
    if let Some(metrics) = metrics {
        policy.count_decisions(metrics);
    }
    policy
}

fn merge(global: &RoutePolicies, route: RoutePolicies) -> RoutePolicies {
    RoutePolicies {
        ip_restriction: route.ip_restriction.or_else(|| global.ip_restriction.clone()),
        cors: route.cors.or_else(|| global.cors.clone()),
        jwt: route.jwt.or_else(|| global.jwt.clone()),
        api_key: route.api_key.or_else(|| global.api_key.clone()),
        basic_auth: route.basic_auth.or_else(|| global.basic_auth.clone()),
        hmac_auth: route.hmac_auth.or_else(|| global.hmac_auth.clone()),
        introspection: route.introspection.or_else(|| global.introspection.clone()),
        forward_auth: route.forward_auth.or_else(|| global.forward_auth.clone()),
        authorize: route.authorize.or_else(|| global.authorize.clone()),
        acl: route.acl.or_else(|| global.acl.clone()),
        rate_limit: route.rate_limit.or_else(|| global.rate_limit.clone()),
        quota: route.quota.or_else(|| global.quota.clone()),
        concurrency: route.concurrency.or_else(|| global.concurrency.clone()),
        max_body_size: route.max_body_size.or(global.max_body_size),
        request_headers: route.request_headers.or_else(|| global.request_headers.clone()),
        response_headers: route.response_headers.or_else(|| global.response_headers.clone()),
        direct_response: route.direct_response.or_else(|| global.direct_response.clone()),
        redirect: route.redirect.or_else(|| global.redirect.clone()),
    }
}

// === routes ===

type RouteSpecs = Vec<(RouteSpec, Option<BTreeSet<String>>)>;

#[allow(clippy::too_many_arguments)]
fn routes(
    config: &LocalConfig,
    env: &PolicyEnv<'_>,
    path_options: &PathOptions,
    upstreams: &HashMap<Arc<str>, Arc<Upstream>>,
    scopes: &[RoutePolicies],
    listeners: &[(Arc<str>, SocketAddr)],
    problems: &mut Problems,
) -> (Vec<Route>, RouteSpecs) {
    let mut routes = Vec::new();
    let mut specs = Vec::new();
    let mut names = HashMap::new();
    for (i, r) in config.routes.iter().enumerate() {
        let base = format!("routes[{i}]");
        let name = r.name.clone().unwrap_or_else(|| format!("route-{i}"));
        if !valid_name(&name) {
            problems.add(format!("{base}.name"), name_rule(&name));
        } else if let Some(first) = names.insert(name.clone(), i) {
            problems.add(format!("{base}.name"), format!("route \"{name}\" is already defined at routes[{first}]"));
        }
        let on = r.listeners.as_ref().map(|list| {
            for (j, l) in list.iter().enumerate() {
                if !listeners.iter().any(|(n, _)| &**n == l) {
                    problems.add(format!("{base}.listeners[{j}]"), format!("no listener is named \"{l}\""));
                }
            }
            list.iter().cloned().collect::<BTreeSet<_>>()
        });

        let id = i as RouteId;
        let spec = route_spec(id, &name, r, &base, path_options, problems);
        let own = policies(&r.policies, &format!("{base}.policies"), &format!("route:{name}"), env, problems);
        if own.responds() && (r.upstream.is_some() || !r.split.is_empty()) {
            problems.add(
                format!("{base}.upstream"),
                "this route answers by itself (direct_response or redirect), so its upstream would never be used; remove one",
            );
        }
        if own.redirect.is_some() && own.direct_response.is_some() {
            problems.add(format!("{base}.policies"), "a route answers with a redirect or a direct_response, not both");
        }
        // The route's policies on each listener it serves; the checks hold on every one of them.
        let mut route_policies = Vec::with_capacity(scopes.len());
        let mut seen = HashSet::new();
        for (li, scope) in scopes.iter().enumerate() {
            let on_listener =
                on.as_ref().is_none_or(|names| listeners.get(li).is_some_and(|(n, _)| names.contains(&**n)));
            if !on_listener {
                route_policies.push(RoutePolicies::default());
                continue;
            }
            let effective = merge(scope, own.clone());
            let mut check = |ok: bool, path: String, message: &str| {
                if !ok && seen.insert((path.clone(), message.to_owned())) {
                    problems.add(path, message);
                }
            };
            check(
                effective.authorize.is_none() || effective.has_claims(),
                format!("{base}.policies"),
                "authorize needs a jwt or introspection policy on the route, its listener or in the global policies",
            );
            check(
                effective.acl.is_none() || effective.authenticates(),
                format!("{base}.policies"),
                "acl needs an authentication policy (api_key, basic_auth, hmac_auth, jwt or introspection) on the route, its listener or in the global policies",
            );
            check(
                r.upstream.is_some() || !r.split.is_empty() || effective.responds(),
                base.clone(),
                "a route needs an upstream, or a direct_response or redirect policy to answer by itself",
            );
            if let (Some(redirect), Some(spec)) = (&effective.redirect, &spec) {
                if let Err(message) = redirect.template().check_against(&spec.paths) {
                    check(false, format!("{base}.policies"), &format!("redirect location: {message}"));
                }
            }
            route_policies.push(effective);
        }

        let upstream = match &r.upstream {
            Some(u) => match upstreams.get(u.as_str()) {
                Some(up) => Some(up.clone()),
                None => {
                    let known: Vec<&str> = upstreams.keys().map(|k| &**k).collect();
                    problems.add(
                        format!("{base}.upstream"),
                        format!("no upstream is named \"{u}\" (defined: {})", list_or_none(&known)),
                    );
                    None
                }
            },
            None => None,
        };
        let lookup = |field: String, name: &str, problems: &mut Problems| -> Option<Arc<Upstream>> {
            let found = upstreams.get(name).cloned();
            if found.is_none() {
                problems.add(field, format!("no upstream is named \"{name}\""));
            }
            found
        };
        let split = if r.split.is_empty() {
            if r.split_on.is_some() {
                problems.add(format!("{base}.split_on"), "applies to `split` only");
            }
            None
        } else {
            if r.upstream.is_some() {
                problems.add(format!("{base}.split"), "a route has either an `upstream` or a `split`, not both");
            }
            let mut choices = Vec::new();
            let mut total = 0u64;
            for (j, side) in r.split.iter().enumerate() {
                if side.weight == 0 && r.split.len() == 1 {
                    problems.add(format!("{base}.split[{j}].weight"), "the only side needs a weight above 0");
                }
                if let Some(u) = lookup(format!("{base}.split[{j}].upstream"), &side.upstream, problems) {
                    total += u64::from(side.weight);
                    choices.push((u, total));
                }
            }
            if total == 0 && !choices.is_empty() {
                problems.add(format!("{base}.split"), "the weights add up to 0");
            }
            let on = r.split_on.as_deref().and_then(|text| match KeyPart::parse(text) {
                Ok(part) => Some(Box::from([part])),
                Err(message) => {
                    problems.add(format!("{base}.split_on"), message);
                    None
                }
            });
            Some(crate::state::Split { choices, total, on })
        };
        let mirror = r.mirror.as_ref().and_then(|m| {
            if !(0.0..=100.0).contains(&m.percent) || m.percent.is_nan() {
                problems.add(format!("{base}.mirror.percent"), "between 0 and 100");
            }
            let upstream = lookup(format!("{base}.mirror.upstream"), &m.upstream, problems)?;
            Some(crate::state::Mirror {
                upstream,
                share: (m.percent.clamp(0.0, 100.0) * 10_000.0).round() as u32,
                in_flight: Arc::default(),
            })
        });

        let rewrite = match (&r.strip_prefix, &r.rewrite) {
            (Some(_), Some(_)) => {
                problems.add(format!("{base}.rewrite"), "use either strip_prefix or rewrite, not both");
                PathRewrite::None
            }
            (Some(StripPrefixConfig::Segments(n)), None) => {
                if *n == 0 {
                    problems.add(format!("{base}.strip_prefix"), "strip at least 1 segment, or leave strip_prefix out");
                }
                PathRewrite::StripSegments(*n as usize)
            }
            (Some(StripPrefixConfig::Prefix(raw)), None) => {
                let p = raw.trim_end_matches('/');
                if raw.parse::<u32>().is_ok() {
                    problems.add(
                        format!("{base}.strip_prefix"),
                        format!("\"{raw}\" is a string; to strip {raw} segments write the number without quotes"),
                    );
                } else if p.is_empty() && raw.starts_with('/') {
                    problems
                        .add(format!("{base}.strip_prefix"), "stripping \"/\" changes nothing; leave strip_prefix out");
                } else if !p.starts_with('/') || p.contains("//") {
                    problems.add(format!("{base}.strip_prefix"), format!("\"{raw}\" must be a path starting with /"));
                }
                PathRewrite::StripPrefix(p.to_owned())
            }
            (None, Some(template)) => match RewriteTemplate::parse(template) {
                Ok(t) => {
                    if let Some(spec) = &spec {
                        if let Err(message) =
                            crate::route::validate_rewrite(&PathRewrite::Template(t.clone()), &spec.paths)
                        {
                            problems.add(format!("{base}.rewrite"), message);
                        }
                    }
                    PathRewrite::Template(t)
                }
                Err(e) => {
                    problems.add(format!("{base}.rewrite"), e.to_string());
                    PathRewrite::None
                }
            },
            (None, None) => PathRewrite::None,
        };

        let host = match (r.preserve_host, &r.host_rewrite) {
            (true, Some(_)) => {
                problems.add(format!("{base}.host_rewrite"), "use either preserve_host or host_rewrite, not both");
                UpstreamHost::Endpoint
            }
            (true, None) => UpstreamHost::Preserve,
            (false, Some(h)) => match HeaderValue::from_str(h) {
                Ok(v) if !h.is_empty() => UpstreamHost::Rewrite(v),
                _ => {
                    problems.add(format!("{base}.host_rewrite"), format!("\"{h}\" is not a valid Host value"));
                    UpstreamHost::Endpoint
                }
            },
            (false, None) => UpstreamHost::Endpoint,
        };
        let timeouts = r.timeout.map(|t| t.each()).unwrap_or_default();
        for (field, value) in [("total", timeouts.total), ("connect", timeouts.connect), ("per_try", timeouts.per_try)]
        {
            if value.is_some_and(|t| t.get() < Duration::from_millis(1)) {
                let at = if matches!(r.timeout, Some(crate::config::RouteTimeoutConfig::Total(_))) {
                    format!("{base}.timeout")
                } else {
                    format!("{base}.timeout.{field}")
                };
                problems.add(at, "must be at least 1ms");
            }
        }

        let sides: Vec<Arc<str>> = match (&split, &upstream) {
            (Some(split), _) => split.choices.iter().map(|(u, _)| u.name.clone()).collect(),
            (None, Some(u)) => vec![u.name.clone()],
            (None, None) => Vec::new(),
        };
        let route_metrics = if config.metrics.enabled {
            let max_consumers = config.metrics.consumers.then_some(config.metrics.max_consumers as usize);
            listeners
                .iter()
                .map(|(l, _)| env.registry.metrics.route_with(l, &name, sides.clone(), max_consumers))
                .collect()
        } else {
            Vec::new()
        };
        routes.push(Route {
            id,
            name: Arc::from(name.as_str()),
            upstream,
            split,
            mirror,
            rewrite,
            host,
            websocket: r.websocket,
            timeout: timeouts.total.map(|t| t.get()),
            try_timeouts: crate::upstream::client::TryTimeouts {
                connect: timeouts.connect.map(|t| t.get()),
                response_header: timeouts.per_try.map(|t| t.get()),
            },
            policies: route_policies,
            metrics: route_metrics,
        });
        if let Some(spec) = spec {
            specs.push((spec, on));
        }
    }
    (routes, specs)
}

/// Error texts of some libraries span several lines; a diagnostic is one line.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn list_or_none(names: &[&str]) -> String {
    if names.is_empty() {
        "none".to_owned()
    } else {
        let mut sorted = names.to_vec();
        sorted.sort_unstable();
        sorted.join(", ")
    }
}

/// The route's match block as a `RouteSpec`, or `None` if any part of it is invalid.
fn route_spec(
    id: RouteId,
    name: &str,
    r: &RouteConfig,
    base: &str,
    path_options: &PathOptions,
    problems: &mut Problems,
) -> Option<RouteSpec> {
    let before = problems.0.len();
    let m = &r.matcher;
    let mut hosts = Vec::new();
    if let Some(list) = &m.host {
        for (i, h) in list.as_slice().iter().enumerate() {
            match HostPattern::parse(h) {
                Ok(p) => hosts.push(p),
                Err(e) => problems.add(list.element_path(&format!("{base}.match.host"), i), e.to_string()),
            }
        }
    }
    let mut paths = Vec::new();
    match &m.path {
        None => match PathPattern::parse("/**") {
            Ok(p) => paths.push(p),
            Err(e) => problems.add(format!("{base}.match.path"), e.to_string()),
        },
        Some(list) => {
            if list.as_slice().is_empty() {
                problems.add(
                    format!("{base}.match.path"),
                    "give at least one path pattern, or leave path out to match all paths",
                );
            }
            for (i, p) in list.as_slice().iter().enumerate() {
                let at = list.element_path(&format!("{base}.match.path"), i);
                match path_pattern(p, path_options) {
                    Ok(p) => paths.push(p),
                    Err(message) => problems.add(at, message),
                }
            }
        }
    }
    let methods = m.methods.as_ref().map(|list| {
        let mut out = Vec::new();
        for (i, text) in list.iter().enumerate() {
            let upper = text.to_ascii_uppercase();
            match Method::from_bytes(upper.as_bytes()) {
                Ok(method) if !upper.is_empty() => out.push(method),
                _ => problems.add(format!("{base}.match.methods[{i}]"), format!("\"{text}\" is not an HTTP method")),
            }
        }
        if list.is_empty() {
            problems.add(
                format!("{base}.match.methods"),
                "an empty method list matches nothing; leave methods out to allow all",
            );
        }
        out
    });
    let mut headers = Vec::new();
    for (header, rule) in &m.headers {
        let at = format!("{base}.match.headers.{header}");
        let name = match HeaderName::from_bytes(header.as_bytes()) {
            Ok(n) => n,
            Err(_) => {
                problems.add(at, format!("\"{header}\" is not a valid header name"));
                continue;
            }
        };
        if let Some(kind) = value_match(rule, &at, problems) {
            headers.push(HeaderMatcher { name, kind });
        }
    }
    let mut query = Vec::new();
    for (param, rule) in &m.query {
        let at = format!("{base}.match.query.{param}");
        if param.is_empty() {
            problems.add(at, "a query parameter name cannot be empty");
            continue;
        }
        if let Some(kind) = value_match(rule, &at, problems) {
            query.push(QueryMatcher { name: param.clone(), kind });
        }
    }
    if problems.0.len() != before {
        return None;
    }
    Some(RouteSpec { id, name: Arc::from(name), priority: r.priority, hosts, paths, methods, headers, query })
}

fn path_pattern(p: &PathMatchConfig, path_options: &PathOptions) -> Result<PathPattern, String> {
    // Requests are normalised before routing, so a literal a normalised path can never contain
    // (`//`, `/./`, `%7E`, lowercase escapes) would make a route that silently never matches.
    let literal = match p {
        PathMatchConfig::Pattern(s)
        | PathMatchConfig::Explicit(PathMatchExplicit::Exact(s))
        | PathMatchConfig::Explicit(PathMatchExplicit::Prefix(s)) => Some(s),
        PathMatchConfig::Explicit(PathMatchExplicit::Regex(_)) => None,
    };
    if let Some(s) = literal {
        match normalize_path(s, path_options) {
            Ok(normal) if normal != s.as_str() => {
                return Err(format!("\"{s}\" never matches: requests are normalised first; write \"{normal}\""));
            }
            Err(e) if s.starts_with('/') => return Err(format!("\"{s}\" never matches: {}", e.reason())),
            _ => {}
        }
    }
    match p {
        PathMatchConfig::Pattern(s) => PathPattern::parse(s).map_err(|e| e.to_string()),
        PathMatchConfig::Explicit(PathMatchExplicit::Regex(r)) => {
            PathPattern::regex(r).map_err(|e| one_line(&e.to_string()))
        }
        PathMatchConfig::Explicit(PathMatchExplicit::Exact(s)) => {
            if s.contains(['{', '}', '*']) {
                return Err(format!("\"{s}\": an exact path cannot contain {{, }} or *"));
            }
            PathPattern::parse(s).map_err(|e| e.to_string())
        }
        PathMatchConfig::Explicit(PathMatchExplicit::Prefix(s)) => {
            if s.contains(['{', '}', '*']) {
                return Err(format!("\"{s}\": a prefix cannot contain {{, }} or *"));
            }
            let trimmed = s.trim_end_matches('/');
            PathPattern::parse(&format!("{trimmed}/**")).map_err(|e| e.to_string())
        }
    }
}

fn value_match(rule: &ValueMatchConfig, at: &str, problems: &mut Problems) -> Option<ValueMatch> {
    match rule {
        ValueMatchConfig::Exact(v) => Some(ValueMatch::Exact(v.clone())),
        ValueMatchConfig::Rule(r) => {
            let set = [r.exact.is_some(), r.prefix.is_some(), r.regex.is_some(), r.present.is_some()];
            if set.iter().filter(|s| **s).count() != 1 {
                problems.add(at, "use exactly one of exact, prefix, regex or present");
                return None;
            }
            if let Some(v) = &r.exact {
                return Some(ValueMatch::Exact(v.clone()));
            }
            if let Some(v) = &r.prefix {
                return Some(ValueMatch::Prefix(v.clone()));
            }
            if let Some(v) = &r.regex {
                return match regex::Regex::new(&format!("^(?:{v})$")) {
                    Ok(re) => Some(ValueMatch::Regex(re)),
                    Err(e) => {
                        problems.add(
                            format!("{at}.regex"),
                            format!("invalid regular expression: {}", one_line(&e.to_string())),
                        );
                        None
                    }
                };
            }
            match r.present {
                Some(true) => Some(ValueMatch::Present),
                _ => Some(ValueMatch::Absent),
            }
        }
    }
}
