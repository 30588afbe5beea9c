//! `rate_limit`: how many requests a key may make, by one or several limits.
//!
//! A request passes when every limit of the policy admits it; when one refuses, what the limits
//! before it took is given back, so a refused request costs the caller nothing. The counters live
//! in the registry, keyed by the policy's scope and settings: a reload that keeps a limit keeps
//! its counts, a changed limit starts afresh.

pub mod algorithm;
pub mod batch;
pub mod key;
pub mod local;
pub mod redis;

use std::fmt::Write as _;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::config::units::DurationValue;
use crate::config::{
    LimitConfig, QuotaConfig, RateAlgorithmConfig, RateBackendConfig, RateHeadersConfig, RateLimitConfig,
    RedisFailureConfig, RedisSyncConfig,
};
use crate::proxy::error::ProxyError;
use crate::state::registry::Registry;

pub use algorithm::{Algorithm, Decision};
pub use key::{KeyPart, KeySource};
use local::LocalStore;
use redis::RedisBackend;

const DEFAULT_MAX_KEYS: u64 = 100_000;
const MAX_LIMITS: usize = 16;

pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
pub static X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
pub static X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
pub static X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

pub struct RateLimitPolicy {
    limits: Box<[Limit]>,
    headers: HeaderStyle,
    /// `RateLimit-Policy`, the same on every response.
    policy_header: HeaderValue,
    /// With `backend: redis`; the local stores then serve as the fallback.
    shared: Option<Shared>,
    /// A `quota` (its refusals say `quota_exceeded`).
    quota: bool,
    /// Where it is configured (`global`, `listener:NAME`, `route:NAME`).
    scope: Box<str>,
    /// Decision counters, when metrics are on.
    counted: Option<Box<crate::telemetry::metrics::RateLimitCounters>>,
}

/// One limit's use by one consumer (the admin API's usage read-out).
#[derive(Debug, serde::Serialize)]
pub struct Usage {
    pub policy: &'static str,
    pub scope: Box<str>,
    pub name: Box<str>,
    pub backend: &'static str,
    pub limit: u64,
    pub window_seconds: u64,
    pub used: u64,
    pub remaining: u64,
    pub resets_in_seconds: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The Redis side of a policy: its limits grouped by key, one script call per group.
struct Shared {
    backend: Arc<RedisBackend>,
    deny_on_failure: bool,
    groups: Box<[Group]>,
    /// Per limit: its group and its position in it.
    place: Box<[(usize, usize)]>,
    /// `sync: batch`: decided locally, counts exchanged with Redis in the background.
    batch: Option<Arc<batch::Batch>>,
}

/// Limits that count by the same key: their Redis keys share a hash tag (one slot, one call).
struct Group {
    key: Box<[KeyPart]>,
    limits: Box<[usize]>,
    /// The hash tag's first half: which policy and key this is.
    tag: String,
    /// Per limit: what follows the hash tag (which limit, with which settings).
    suffixes: Box<[String]>,
    algorithms: Box<[Algorithm]>,
}

struct Limit {
    /// The policy name clients see (a structured-field string, quoted).
    name: Box<str>,
    key: Box<[KeyPart]>,
    store: Arc<LocalStore>,
    /// A quota's limit applies to consumers of one plan, or of the plans not listed.
    plan: Option<PlanFilter>,
}

enum PlanFilter {
    Only(Box<str>),
    Others(Box<[Box<str>]>),
}

impl Limit {
    fn applies(&self, plan: Option<&str>) -> bool {
        match &self.plan {
            None => true,
            Some(PlanFilter::Only(p)) => plan == Some(&**p),
            Some(PlanFilter::Others(listed)) => plan.is_none_or(|plan| !listed.iter().any(|p| &**p == plan)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HeaderStyle {
    Ietf,
    XRateLimit,
    Both,
    None,
}

/// What the limits said about an admitted request, for its response headers.
pub struct RateReport {
    policy: Arc<RateLimitPolicy>,
    /// Per limit; `None` for a limit not asked (an earlier one already refused).
    decisions: Decisions,
}

/// A report's decisions: inline for the usual one or two limits (no allocation per request).
enum Decisions {
    Inline(usize, [Option<Decision>; 2]),
    Heap(Box<[Option<Decision>]>),
}

impl Decisions {
    fn from_slice(list: &[Option<Decision>]) -> Decisions {
        match list.len() {
            n @ 0..=2 => {
                let mut inline = [None; 2];
                inline[..n].copy_from_slice(list);
                Decisions::Inline(n, inline)
            }
            _ => Decisions::Heap(list.into()),
        }
    }

    fn as_slice(&self) -> &[Option<Decision>] {
        match self {
            Decisions::Inline(n, inline) => &inline[..*n],
            Decisions::Heap(list) => list,
        }
    }
}

impl RateLimitPolicy {
    /// `scope` names where the policy is configured (`global`, `listener:NAME`, `route:NAME`): with
    /// the settings it decides which counters a reload keeps.
    pub fn compile(
        config: &RateLimitConfig,
        scope: &str,
        registry: &Registry,
        redis: Option<&Arc<RedisBackend>>,
    ) -> Result<RateLimitPolicy, Vec<(String, String)>> {
        let mut errors = Vec::new();
        let default_key = match &config.key {
            Some(k) => parse_key(k.as_slice(), "key", &mut errors),
            None => vec![KeyPart::ClientIp],
        };
        let default_algorithm = config.algorithm.unwrap_or(RateAlgorithmConfig::TokenBucket);
        let mut configs: Vec<(String, LimitConfig)> = Vec::new();
        match (&config.rate, config.limits.is_empty()) {
            (Some(rate), true) => configs.push((
                String::new(),
                LimitConfig { rate: *rate, burst: config.burst, key: None, algorithm: None, name: None },
            )),
            (None, false) => {
                if config.burst.is_some() {
                    errors.push(("burst".into(), "with `limits`, give each limit its own burst".into()));
                }
                configs.extend(config.limits.iter().enumerate().map(|(i, l)| (format!("limits[{i}]."), l.clone())));
            }
            (Some(_), false) => errors.push(("rate".into(), "give either `rate` or `limits`, not both".into())),
            (None, true) => errors.push(("rate".into(), "a rate_limit needs a `rate` (e.g. 10/s) or `limits`".into())),
        }
        let mut specs = Vec::new();
        for (path, limit) in configs {
            let key = match &limit.key {
                Some(k) => parse_key(k.as_slice(), &format!("{path}key"), &mut errors),
                None => default_key.clone(),
            };
            match algorithm_of(&limit, limit.algorithm.unwrap_or(default_algorithm)) {
                Ok(algorithm) => specs.push(Spec {
                    name: limit.name.clone().unwrap_or_else(|| limit.rate.to_string()),
                    path,
                    key,
                    algorithm,
                    plan: None,
                }),
                Err(message) => errors.push((format!("{path}burst"), message)),
            }
        }
        let common = Common {
            headers: config.headers,
            max_keys: config.max_keys,
            backend: config.backend,
            on_redis_failure: config.on_redis_failure,
            sync: config.sync,
            sync_interval: config.sync_interval,
            quota: false,
        };
        build(specs, &common, scope, registry, redis, errors)
    }

    /// A `quota`: one limit per plan (and one for the others), counting per consumer by default.
    pub fn compile_quota(
        config: &QuotaConfig,
        scope: &str,
        registry: &Registry,
        redis: Option<&Arc<RedisBackend>>,
    ) -> Result<RateLimitPolicy, Vec<(String, String)>> {
        let mut errors = Vec::new();
        let key = match &config.key {
            Some(k) => parse_key(k.as_slice(), "key", &mut errors),
            None => vec![KeyPart::Consumer],
        };
        let period = config.period.trim();
        let algorithm = |limit: u64| -> Option<Algorithm> {
            Some(match period {
                "day" | "daily" => Algorithm::FixedWindow { window_ns: 86_400_000_000_000, limit },
                "month" | "monthly" => Algorithm::CalendarMonth { limit },
                other => {
                    let window = other.parse::<DurationValue>().ok()?.get();
                    let window_ns = u64::try_from(window.as_nanos()).ok()?;
                    Algorithm::SlidingWindow { window_ns, limit }
                }
            })
        };
        match algorithm(1) {
            None => errors.push((
                "period".into(),
                format!("\"{period}\" is not a period: day, month, or a duration for a rolling period (30d, 7d)"),
            )),
            Some(Algorithm::SlidingWindow { window_ns, .. }) if window_ns < 60_000_000_000 => {
                errors.push(("period".into(), "a rolling period is at least 1m (use rate_limit below that)".into()));
            }
            Some(_) => {}
        }
        if config.limit.is_none() && config.plans.is_empty() {
            errors.push(("limit".into(), "a quota needs a `limit`, or `plans` with a limit each".into()));
        }
        let mut specs = Vec::new();
        for (plan, &limit) in &config.plans {
            if let Some(algorithm) = algorithm(limit) {
                let plan_filter = Some(PlanFilter::Only(plan.as_str().into()));
                specs.push(Spec {
                    path: format!("plans.{plan}"),
                    name: plan.clone(),
                    key: key.clone(),
                    algorithm,
                    plan: plan_filter,
                });
            }
        }
        if let Some(algorithm) = config.limit.and_then(algorithm) {
            let others = config.plans.keys().map(|p| Box::from(p.as_str())).collect();
            specs.push(Spec {
                path: "limit".into(),
                name: "default".into(),
                key: key.clone(),
                algorithm,
                plan: Some(PlanFilter::Others(others)),
            });
        }
        for spec in &specs {
            if let Algorithm::FixedWindow { limit: 0, .. }
            | Algorithm::CalendarMonth { limit: 0 }
            | Algorithm::SlidingWindow { limit: 0, .. } = spec.algorithm
            {
                errors.push((spec.path.clone(), "a quota of 0 admits nothing: it must be at least 1".into()));
            }
        }
        let common = Common {
            headers: config.headers,
            max_keys: config.max_keys,
            backend: config.backend,
            on_redis_failure: config.on_redis_failure,
            sync: config.sync,
            sync_interval: config.sync_interval,
            quota: true,
        };
        build(specs, &common, scope, registry, redis, errors)
    }

    /// What `consumer` has used of each limit that counts per consumer (`key: consumer`) and
    /// applies to its plan, without using any of it.
    pub async fn usage(&self, consumer: &crate::policy::Consumer) -> Vec<Usage> {
        let now = now_ns();
        let mut out = Vec::new();
        for (i, limit) in self.limits.iter().enumerate() {
            if *limit.key != [KeyPart::Consumer] || !limit.applies(consumer.plan.as_deref()) {
                continue;
            }
            let algorithm = limit.store.algorithm();
            let (quota, window_ns) = algorithm.quota();
            let mut usage = Usage {
                policy: if self.quota { "quota" } else { "rate_limit" },
                scope: self.scope.clone(),
                name: limit.name.clone(),
                backend: if self.shared.is_some() { "redis" } else { "local" },
                limit: quota,
                window_seconds: ceil_secs(window_ns),
                used: 0,
                remaining: 0,
                resets_in_seconds: 0,
                error: None,
            };
            let decision = match &self.shared {
                None => {
                    let mut hasher = hasher();
                    key::write_value(&mut hasher, &consumer.name);
                    Ok(limit.store.peek(hasher.finish(), now))
                }
                Some(shared) => shared.peek(i, &consumer.name, algorithm, now).await,
            };
            match decision {
                Ok(d) => {
                    usage.remaining = d.remaining;
                    usage.used = quota.saturating_sub(d.remaining);
                    usage.resets_in_seconds = ceil_secs(d.reset_ns);
                }
                Err(e) => usage.error = Some(e),
            }
            out.push(usage);
        }
        out
    }

    /// Counts this policy's decisions in `metrics`.
    pub fn count_decisions(&mut self, metrics: &crate::telemetry::metrics::Metrics) {
        let counters = metrics.rate_limit(self.quota, &self.scope, self.limits.iter().map(|l| &*l.name));
        self.counted = Some(Box::new(counters));
    }

    fn count(&self, outcome: &Result<(), ProxyError>, refused: Option<usize>) {
        let Some(counted) = &self.counted else { return };
        match (outcome, refused) {
            (Ok(()), _) => {
                counted.allowed.inc();
            }
            (Err(ProxyError::RateLimitUnavailable), _) => {
                counted.unavailable.inc();
            }
            (Err(_), Some(i)) => {
                if let Some(c) = counted.limited.get(i) {
                    c.inc();
                }
            }
            (Err(_), None) => {}
        }
    }

    /// Whether deciding needs a round trip (`backend: redis`, `sync: strict`): then call
    /// `check_shared`.
    pub fn is_shared(&self) -> bool {
        self.shared.as_ref().is_some_and(|s| s.batch.is_none())
    }

    /// Decides the request with this node's counters: `Err` (429) when a limit refuses it. Either
    /// way `report` receives what the client is told in the response headers.
    pub fn check(self: &Arc<Self>, source: &KeySource<'_>, report: &mut Option<RateReport>) -> Result<(), ProxyError> {
        let (outcome, refused) = self.check_local(source, report);
        self.count(&outcome, refused);
        outcome
    }

    /// `check`, saying which limit refused.
    fn check_local(
        self: &Arc<Self>,
        source: &KeySource<'_>,
        report: &mut Option<RateReport>,
    ) -> (Result<(), ProxyError>, Option<usize>) {
        let batch = self.shared.as_ref().and_then(|s| s.batch.as_ref().map(|b| (s, b)));
        if let Some((shared, _)) = batch {
            if shared.deny_on_failure && !shared.backend.available() {
                return (Err(ProxyError::RateLimitUnavailable), None);
            }
        }
        let now = now_ns();
        let plan = plan_of(source);
        // On the stack: no allocation on the request path.
        let mut decisions = [None; MAX_LIMITS];
        let decisions = &mut decisions[..self.limits.len()];
        let mut keys = [0u64; MAX_LIMITS];
        for (i, limit) in self.limits.iter().enumerate() {
            if !limit.applies(plan) {
                continue;
            }
            let mut hasher = hasher();
            key::write_key(&limit.key, source, &mut hasher);
            keys[i] = hasher.finish();
            let decision = limit.store.decide(keys[i], now);
            decisions[i] = Some(decision);
            if !decision.allowed {
                for ((earlier, key), d) in self.limits[..i].iter().zip(keys).zip(decisions.iter_mut()) {
                    if d.is_some() {
                        earlier.store.refund(key, now);
                        *d = d.map(|d| earlier.store.algorithm().refunded(d));
                    }
                }
                if let Some((shared, batch)) = batch {
                    // Keep the refusing key in sync: it may be the others' counts that fill it.
                    let (g, position) = shared.place[i];
                    let group = &shared.groups[g];
                    batch.record(i, keys[i], false, || {
                        group.redis_keys(shared.backend.prefix(), source, &[position]).remove(0)
                    });
                }
                *report = self.report(decisions);
                return (Err(self.refusal(i, &decision)), Some(i));
            }
        }
        if let Some((shared, batch)) = batch {
            for (i, decided) in decisions.iter().enumerate() {
                if decided.is_some() {
                    let (g, position) = shared.place[i];
                    let group = &shared.groups[g];
                    batch.record(i, keys[i], true, || {
                        group.redis_keys(shared.backend.prefix(), source, &[position]).remove(0)
                    });
                }
            }
        }
        *report = self.report(decisions);
        (Ok(()), None)
    }

    /// Decides the request with the counters in Redis, one round trip per group of limits that
    /// share a key (usually one). When Redis fails, the policy's failure mode decides.
    pub async fn check_shared(
        self: &Arc<Self>,
        source: &KeySource<'_>,
        report: &mut Option<RateReport>,
    ) -> Result<(), ProxyError> {
        let Some(shared) = &self.shared else { return self.check(source, report) };
        if !shared.backend.available() {
            return self.fail_over(shared, source, report);
        }
        let mut decisions: Vec<Option<Decision>> = vec![None; self.limits.len()];
        let now = now_ns();
        let mut taken: Vec<(Vec<String>, Vec<u64>)> = Vec::new();
        let plan = plan_of(source);
        for group in shared.groups.iter() {
            // The group's limits that apply to this caller (a quota's plans), by position.
            let active: Vec<usize> =
                (0..group.limits.len()).filter(|&j| self.limits[group.limits[j]].applies(plan)).collect();
            if active.is_empty() {
                continue;
            }
            let keys = group.redis_keys(shared.backend.prefix(), source, &active);
            let args: Vec<u64> = active.iter().flat_map(|&j| redis::script_args(&group.algorithms[j], now)).collect();
            let answer = match shared.backend.decide(&keys, &args).await {
                Ok(reply) => redis::parse_reply(&reply, active.len())
                    .ok_or_else(|| format!("unexpected answer from the rate-limit script: {reply:?}")),
                Err(e) => Err(e),
            };
            let (refused, group_decisions) = match answer {
                Ok(answer) => answer,
                Err(e) => {
                    tracing::debug!("rate limit: {e}");
                    self.give_back(shared, taken);
                    return self.fail_over(shared, source, report);
                }
            };
            for (&j, d) in active.iter().zip(group_decisions) {
                decisions[group.limits[j]] = Some(d);
            }
            if let Some(r) = refused {
                let index = group.limits[active[r]];
                // Nothing of this group was written; what earlier groups took is given back.
                for (i, d) in decisions.iter_mut().enumerate() {
                    if i != index {
                        let algorithm = self.limits[i].store.algorithm();
                        *d = d.map(|d| if d.allowed { algorithm.refunded(d) } else { d });
                    }
                }
                self.give_back(shared, taken);
                let refusal = decisions[index].unwrap_or(Decision {
                    allowed: false,
                    remaining: 0,
                    reset_ns: 0,
                    retry_after_ns: 0,
                });
                *report = self.report(&decisions);
                let refused = Err(self.refusal(index, &refusal));
                self.count(&refused, Some(index));
                return refused;
            }
            taken.push((keys, args));
        }
        *report = self.report(&decisions);
        self.count(&Ok(()), None);
        Ok(())
    }

    fn fail_over(
        self: &Arc<Self>,
        shared: &Shared,
        source: &KeySource<'_>,
        report: &mut Option<RateReport>,
    ) -> Result<(), ProxyError> {
        if shared.deny_on_failure {
            let unavailable = Err(ProxyError::RateLimitUnavailable);
            self.count(&unavailable, None);
            return unavailable;
        }
        self.check(source, report)
    }

    /// Refunds, in the background, what earlier groups took in Redis.
    fn give_back(&self, shared: &Shared, taken: Vec<(Vec<String>, Vec<u64>)>) {
        for (keys, args) in taken {
            let backend = shared.backend.clone();
            tokio::spawn(async move {
                let _ = backend.refund(&keys, &args).await;
            });
        }
    }

    fn refusal(&self, index: usize, decision: &Decision) -> ProxyError {
        let retry_after = ceil_secs(decision.retry_after_ns).max(1);
        ProxyError::RateLimited { retry_after, limit: self.limits[index].name.clone(), quota: self.quota }
    }

    fn report(self: &Arc<Self>, decisions: &[Option<Decision>]) -> Option<RateReport> {
        (self.headers != HeaderStyle::None)
            .then(|| RateReport { policy: self.clone(), decisions: Decisions::from_slice(decisions) })
    }
}

impl Shared {
    /// What the consumer named `consumer` has left of limit `index` in Redis.
    async fn peek(&self, index: usize, consumer: &str, algorithm: &Algorithm, now: u64) -> Result<Decision, String> {
        let Some((group, j)) =
            self.groups.iter().find_map(|g| g.limits.iter().position(|&l| l == index).map(|j| (g, j)))
        else {
            return Err("not in Redis".into());
        };
        let mut bytes = key::KeyBytes::default();
        key::write_value(&mut bytes, consumer);
        let key = group.redis_key(self.backend.prefix(), &bytes.0, j);
        let reply = self.backend.peek(&[key], &redis::script_args(algorithm, now)).await?;
        let (_, decisions) = redis::parse_reply(&reply, 1).ok_or("unexpected answer from Redis")?;
        let d = decisions[0];
        Ok(if d.allowed { algorithm.refunded(d) } else { d })
    }
}

impl Group {
    fn redis_key(&self, prefix: &str, key_bytes: &[u8], position: usize) -> String {
        let digest = ring::digest::digest(&ring::digest::SHA256, key_bytes);
        format!(
            "{prefix}rl:{{{}:{}}}:{}",
            self.tag,
            crate::text::hex_encode(&digest.as_ref()[..12]),
            self.suffixes[position]
        )
    }

    /// The Redis keys of the limits at positions `active`.
    fn redis_keys(&self, prefix: &str, source: &KeySource<'_>, active: &[usize]) -> Vec<String> {
        let mut bytes = key::KeyBytes::default();
        key::write_key(&self.key, source, &mut bytes);
        active.iter().map(|&j| self.redis_key(prefix, &bytes.0, j)).collect()
    }
}

/// The plan of the request's consumer, for quotas by plan.
fn plan_of<'a>(source: &KeySource<'a>) -> Option<&'a str> {
    source.identity?.consumer.as_ref()?.plan.as_deref()
}

/// Groups the limits by key, and names their Redis keys from the scope and settings only, so
/// every node with the same config uses the same keys.
fn groups(scope: &str, limits: &[Limit]) -> Box<[Group]> {
    let mut out: Vec<Group> = Vec::new();
    for (i, limit) in limits.iter().enumerate() {
        let algorithm = *limit.store.algorithm();
        let suffix = short_hash(&format!("{}|{algorithm:?}", limit.name), 4);
        if let Some(group) = out.iter_mut().find(|g| g.key == limit.key) {
            group.limits = group.limits.iter().copied().chain([i]).collect();
            group.suffixes = group.suffixes.iter().cloned().chain([suffix]).collect();
            group.algorithms = group.algorithms.iter().copied().chain([algorithm]).collect();
        } else {
            let keys = limit.key.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
            out.push(Group {
                key: limit.key.clone(),
                limits: [i].into(),
                tag: short_hash(&format!("{scope}|{keys}"), 6),
                suffixes: [suffix].into(),
                algorithms: [algorithm].into(),
            });
        }
    }
    out.into()
}

fn short_hash(text: &str, bytes: usize) -> String {
    crate::text::hex_encode(&ring::digest::digest(&ring::digest::SHA256, text.as_bytes()).as_ref()[..bytes])
}

impl RateReport {
    /// Writes the rate-limit headers into a response.
    pub fn apply(&self, headers: &mut HeaderMap) {
        let policy = &self.policy;
        if matches!(policy.headers, HeaderStyle::Ietf | HeaderStyle::Both) {
            // Several policies (a rate limit and a quota) each add their items: the fields are lists.
            if self.decisions.as_slice().iter().all(Option::is_some) {
                headers.append(RATELIMIT_POLICY.clone(), policy.policy_header.clone());
            } else {
                let decided = policy.limits.iter().zip(self.decisions.as_slice().iter()).filter(|(_, d)| d.is_some());
                if let Some(value) = policy_header(decided.map(|(l, _)| l)) {
                    headers.append(RATELIMIT_POLICY.clone(), value);
                }
            }
            // Written on the stack (one allocation: the header value's own), or in a String when
            // many limits make it long.
            let mut buf = [0u8; 256];
            let mut cursor = std::io::Cursor::new(&mut buf[..]);
            let mut fits = true;
            for (limit, d) in policy.limits.iter().zip(self.decisions.as_slice().iter()) {
                let Some(d) = d else { continue };
                let sep = if cursor.position() == 0 { "" } else { ", " };
                let item = (limit.name.as_ref(), d.remaining, ceil_secs(d.reset_ns));
                if std::io::Write::write_fmt(&mut cursor, format_args!("{sep}\"{}\";r={};t={}", item.0, item.1, item.2))
                    .is_err()
                {
                    fits = false;
                    break;
                }
            }
            let value = if fits {
                let len = cursor.position() as usize;
                HeaderValue::from_bytes(&buf[..len]).ok().filter(|_| len > 0)
            } else {
                let mut long = String::new();
                for (limit, d) in policy.limits.iter().zip(self.decisions.as_slice().iter()) {
                    let Some(d) = d else { continue };
                    let sep = if long.is_empty() { "" } else { ", " };
                    let _ = write!(long, "{sep}\"{}\";r={};t={}", limit.name, d.remaining, ceil_secs(d.reset_ns));
                }
                HeaderValue::from_str(&long).ok()
            };
            if let Some(v) = value {
                headers.append(RATELIMIT.clone(), v);
            }
        }
        if matches!(policy.headers, HeaderStyle::XRateLimit | HeaderStyle::Both) {
            // The limit closest to refusing: the fewest requests left (the later reset on a tie).
            let Some((limit, d)) = policy
                .limits
                .iter()
                .zip(self.decisions.as_slice().iter())
                .filter_map(|(limit, d)| Some((limit, d.as_ref()?)))
                .min_by(|(_, a), (_, b)| a.remaining.cmp(&b.remaining).then(b.reset_ns.cmp(&a.reset_ns)))
            else {
                return;
            };
            // Another policy's report (a quota beside a rate limit) may have written them already:
            // the one with fewer requests left stays.
            let written = headers.get(&X_RATELIMIT_REMAINING).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            if written.is_some_and(|left| left <= d.remaining) {
                return;
            }
            let (quota, _) = limit.store.algorithm().quota();
            headers.insert(X_RATELIMIT_LIMIT.clone(), HeaderValue::from(quota));
            headers.insert(X_RATELIMIT_REMAINING.clone(), HeaderValue::from(d.remaining));
            headers.insert(X_RATELIMIT_RESET.clone(), HeaderValue::from(ceil_secs(d.reset_ns)));
        }
    }
}

/// One limit as configured, before its counters are found.
struct Spec {
    path: String,
    name: String,
    key: Vec<KeyPart>,
    algorithm: Algorithm,
    plan: Option<PlanFilter>,
}

/// What `rate_limit` and `quota` configure alike.
struct Common {
    headers: Option<RateHeadersConfig>,
    max_keys: Option<u64>,
    backend: Option<RateBackendConfig>,
    on_redis_failure: Option<RedisFailureConfig>,
    sync: Option<RedisSyncConfig>,
    sync_interval: Option<DurationValue>,
    quota: bool,
}

fn build(
    specs: Vec<Spec>,
    common: &Common,
    scope: &str,
    registry: &Registry,
    redis: Option<&Arc<RedisBackend>>,
    mut errors: Vec<(String, String)>,
) -> Result<RateLimitPolicy, Vec<(String, String)>> {
    if specs.len() > MAX_LIMITS {
        errors.push(("limits".into(), format!("at most {MAX_LIMITS} limits per policy")));
    }
    let max_keys = common.max_keys.unwrap_or(DEFAULT_MAX_KEYS);
    if !(100..=100_000_000).contains(&max_keys) {
        errors.push(("max_keys".into(), "must be between 100 and 100000000".into()));
    }
    let kind = if common.quota { "quota" } else { "rate" };
    let mut limits = Vec::new();
    let mut names = std::collections::HashSet::new();
    for spec in specs {
        let Spec { path, name, key, algorithm, plan } = spec;
        let name_path = if path.is_empty() || path.ends_with('.') { format!("{path}name") } else { path.clone() };
        if name.is_empty() || !name.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\') {
            errors.push((name_path, "must be printable ASCII without quotes or backslashes".into()));
            continue;
        }
        if !names.insert(name.clone()) {
            errors.push((name_path, format!("two limits are named \"{name}\": name them apart")));
            continue;
        }
        let fingerprint = format!(
            "{kind}|{scope}|{name}|{}|{algorithm:?}|{max_keys}",
            key.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
        );
        let store = registry.rate_limit_store(&fingerprint, || LocalStore::new(algorithm, max_keys as usize));
        limits.push(Limit { name: name.into(), key: key.into(), store, plan });
    }
    let shared = match (common.backend.unwrap_or(RateBackendConfig::Local), redis) {
        (RateBackendConfig::Local, _) => {
            for (set, field) in [
                (common.on_redis_failure.is_some(), "on_redis_failure"),
                (common.sync.is_some(), "sync"),
                (common.sync_interval.is_some(), "sync_interval"),
            ] {
                if set {
                    errors.push((field.into(), "applies to `backend: redis` only".into()));
                }
            }
            None
        }
        (RateBackendConfig::Redis, None) => {
            errors.push(("backend".into(), "`backend: redis` needs a top-level `redis` (url or cluster)".into()));
            None
        }
        (RateBackendConfig::Redis, Some(backend)) => {
            let groups = groups(&format!("{kind}|{scope}"), &limits);
            let place = (0..limits.len())
                .map(|i| {
                    groups
                        .iter()
                        .enumerate()
                        .find_map(|(g, group)| group.limits.iter().position(|&l| l == i).map(|p| (g, p)))
                        .unwrap_or((0, 0))
                })
                .collect();
            let interval = common.sync_interval.map_or(Duration::from_millis(100), DurationValue::get);
            if !(Duration::from_millis(10)..=Duration::from_secs(60)).contains(&interval) {
                errors.push(("sync_interval".into(), "must be between 10ms and 60s".into()));
            }
            if common.sync_interval.is_some() && common.sync != Some(RedisSyncConfig::Batch) {
                errors.push(("sync_interval".into(), "applies to `sync: batch` only".into()));
            }
            let windows = limits.iter().any(|l| !matches!(l.store.algorithm(), Algorithm::TokenBucket { .. }));
            if common.sync == Some(RedisSyncConfig::Batch) && windows {
                // At a window's start every node would admit its whole allowance before the
                // others' counts arrive: measured +37% (2 nodes) to +62% (4) over the limit.
                errors.push((
                    "sync".into(),
                    "`sync: batch` works with token_bucket limits only: when a window starts, every node would admit the whole window's allowance before the others' counts arrive; use `sync: strict` for windows and quotas".into(),
                ));
            }
            let batch = match common.sync {
                Some(RedisSyncConfig::Batch) if errors.is_empty() => {
                    let fingerprint = format!(
                        "{kind}|{scope}|{interval:?}|{}|{}",
                        redis::fingerprint_of(backend),
                        limits
                            .iter()
                            .map(|l| format!("{}:{:?}", l.name, l.store.algorithm()))
                            .collect::<Vec<_>>()
                            .join(",")
                    );
                    let stores = limits.iter().map(|l| (l.store.clone(), *l.store.algorithm())).collect();
                    match registry.redis_batch(&fingerprint, || batch::Batch::start(backend.clone(), stores, interval))
                    {
                        Ok(batch) => Some(batch),
                        Err(e) => {
                            errors.push(("sync".into(), format!("cannot start the sync thread: {e}")));
                            None
                        }
                    }
                }
                _ => None,
            };
            Some(Shared {
                backend: backend.clone(),
                deny_on_failure: common.on_redis_failure == Some(RedisFailureConfig::Deny),
                groups,
                place,
                batch,
            })
        }
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    let headers = match common.headers.unwrap_or(RateHeadersConfig::Ietf) {
        RateHeadersConfig::Ietf => HeaderStyle::Ietf,
        RateHeadersConfig::XRatelimit => HeaderStyle::XRateLimit,
        RateHeadersConfig::Both => HeaderStyle::Both,
        RateHeadersConfig::None => HeaderStyle::None,
    };
    let policy_header = policy_header(limits.iter())
        .ok_or_else(|| vec![(String::new(), "the limits' names make an invalid header".into())])?;
    Ok(RateLimitPolicy {
        limits: limits.into(),
        headers,
        policy_header,
        shared,
        quota: common.quota,
        scope: scope.into(),
        counted: None,
    })
}

/// `RateLimit-Policy` for these limits.
fn policy_header<'a>(limits: impl Iterator<Item = &'a Limit>) -> Option<HeaderValue> {
    let mut value = String::new();
    for limit in limits {
        let (quota, window_ns) = limit.store.algorithm().quota();
        let sep = if value.is_empty() { "" } else { ", " };
        let _ = write!(value, "{sep}\"{}\";q={quota};w={}", limit.name, ceil_secs(window_ns));
    }
    HeaderValue::from_str(&value).ok()
}

fn parse_key(parts: &[String], path: &str, errors: &mut Vec<(String, String)>) -> Vec<KeyPart> {
    if parts.is_empty() {
        errors.push((path.into(), "an empty key: use `global` to count all requests together".into()));
    }
    let mut out = Vec::new();
    for (i, text) in parts.iter().enumerate() {
        match KeyPart::parse(text) {
            Ok(p) => out.push(p),
            Err(message) => {
                let at = if parts.len() == 1 { path.to_owned() } else { format!("{path}[{i}]") };
                errors.push((at, message));
            }
        }
    }
    out
}

fn algorithm_of(spec: &LimitConfig, kind: RateAlgorithmConfig) -> Result<Algorithm, String> {
    let period_ns = u64::try_from(spec.rate.period.as_nanos()).unwrap_or(u64::MAX);
    let count = spec.rate.count;
    match kind {
        RateAlgorithmConfig::TokenBucket => {
            let burst = spec.burst.unwrap_or(count);
            if burst == 0 {
                return Err("a burst of 0 admits nothing: it must be at least 1".into());
            }
            let interval_ns = period_ns / count;
            if interval_ns == 0 {
                return Err(format!("{} is more than one request per nanosecond", spec.rate));
            }
            if interval_ns.checked_mul(burst).is_none() {
                return Err("this burst takes centuries to refill: lower it".into());
            }
            Ok(Algorithm::TokenBucket { interval_ns, burst })
        }
        RateAlgorithmConfig::FixedWindow | RateAlgorithmConfig::SlidingWindow if spec.burst.is_some() => {
            Err("`burst` belongs to token_bucket; a window admits its whole count at any time".into())
        }
        RateAlgorithmConfig::FixedWindow => Ok(Algorithm::FixedWindow { window_ns: period_ns, limit: count }),
        RateAlgorithmConfig::SlidingWindow => Ok(Algorithm::SlidingWindow { window_ns: period_ns, limit: count }),
    }
}

fn ceil_secs(ns: u64) -> u64 {
    ns.div_ceil(1_000_000_000)
}

/// The keyed hash of local keys: random per process, so nobody can aim collisions at a key.
fn hasher() -> impl Hasher {
    static STATE: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
    STATE.get_or_init(Default::default).build_hasher()
}

/// Nanoseconds since the Unix epoch, read from the monotonic clock: wall-clock aligned (so windows
/// are calendar windows) but never going back when the system clock is stepped.
pub fn now_ns() -> u64 {
    static ANCHOR: OnceLock<(Instant, u64)> = OnceLock::new();
    let (instant, unix) = *ANCHOR.get_or_init(|| {
        let unix = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        (Instant::now(), unix)
    });
    unix.saturating_add(instant.elapsed().as_nanos() as u64)
}
