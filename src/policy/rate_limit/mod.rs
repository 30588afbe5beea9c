//! `rate_limit`: how many requests a key may make, by one or several limits.
//!
//! A request passes when every limit of the policy admits it; when one refuses, what the limits
//! before it took is given back, so a refused request costs the caller nothing. The counters live
//! in the registry, keyed by the policy's scope and settings: a reload that keeps a limit keeps
//! its counts, a changed limit starts afresh.

pub mod algorithm;
pub mod key;
pub mod local;
pub mod redis;

use std::fmt::Write as _;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::config::{
    LimitConfig, RateAlgorithmConfig, RateBackendConfig, RateHeadersConfig, RateLimitConfig, RedisFailureConfig,
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
}

/// The Redis side of a policy: its limits grouped by key, one script call per group.
struct Shared {
    backend: Arc<RedisBackend>,
    deny_on_failure: bool,
    groups: Box<[Group]>,
}

/// Limits that count by the same key: their Redis keys share a hash tag (one slot, one call).
struct Group {
    key: Box<[KeyPart]>,
    limits: Box<[usize]>,
    /// The hash tag's first half: which policy and key this is.
    tag: String,
    /// Per limit: what follows the hash tag (which limit, with which settings).
    suffixes: Box<[String]>,
    /// The script's arguments: three per limit.
    args: Box<[u64]>,
}

struct Limit {
    /// The policy name clients see (a structured-field string, quoted).
    name: Box<str>,
    key: Box<[KeyPart]>,
    store: Arc<LocalStore>,
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
    decisions: Box<[Option<Decision>]>,
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
        let mut specs: Vec<(String, LimitConfig)> = Vec::new();
        match (&config.rate, config.limits.is_empty()) {
            (Some(rate), true) => specs.push((
                String::new(),
                LimitConfig { rate: *rate, burst: config.burst, key: None, algorithm: None, name: None },
            )),
            (None, false) => {
                if config.burst.is_some() {
                    errors.push(("burst".into(), "with `limits`, give each limit its own burst".into()));
                }
                specs.extend(config.limits.iter().enumerate().map(|(i, l)| (format!("limits[{i}]."), l.clone())));
            }
            (Some(_), false) => errors.push(("rate".into(), "give either `rate` or `limits`, not both".into())),
            (None, true) => errors.push(("rate".into(), "a rate_limit needs a `rate` (e.g. 10/s) or `limits`".into())),
        }
        if specs.len() > MAX_LIMITS {
            errors.push(("limits".into(), format!("at most {MAX_LIMITS} limits per policy")));
        }
        let max_keys = config.max_keys.unwrap_or(DEFAULT_MAX_KEYS);
        if !(100..=100_000_000).contains(&max_keys) {
            errors.push(("max_keys".into(), "must be between 100 and 100000000".into()));
        }
        let mut limits = Vec::new();
        let mut names = std::collections::HashSet::new();
        for (path, spec) in &specs {
            let key = match &spec.key {
                Some(k) => parse_key(k.as_slice(), &format!("{path}key"), &mut errors),
                None => default_key.clone(),
            };
            let algorithm = match algorithm_of(spec, spec.algorithm.unwrap_or(default_algorithm)) {
                Ok(a) => a,
                Err(message) => {
                    errors.push((format!("{path}burst"), message));
                    continue;
                }
            };
            let name = spec.name.clone().unwrap_or_else(|| spec.rate.to_string());
            if name.is_empty() || !name.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\') {
                errors.push((format!("{path}name"), "must be printable ASCII without quotes or backslashes".into()));
                continue;
            }
            if !names.insert(name.clone()) {
                errors.push((format!("{path}name"), format!("two limits are named \"{name}\": name them apart")));
                continue;
            }
            let fingerprint = format!(
                "{scope}|{}|{algorithm:?}|{max_keys}",
                key.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
            );
            let store = registry.rate_limit_store(&fingerprint, || LocalStore::new(algorithm, max_keys as usize));
            limits.push(Limit { name: name.into(), key: key.into(), store });
        }
        let shared = match (config.backend.unwrap_or(RateBackendConfig::Local), redis) {
            (RateBackendConfig::Local, _) => {
                if config.on_redis_failure.is_some() {
                    errors.push(("on_redis_failure".into(), "applies to `backend: redis` only".into()));
                }
                None
            }
            (RateBackendConfig::Redis, None) => {
                errors.push(("backend".into(), "`backend: redis` needs a top-level `redis` (url or cluster)".into()));
                None
            }
            (RateBackendConfig::Redis, Some(backend)) => Some(Shared {
                backend: backend.clone(),
                deny_on_failure: config.on_redis_failure == Some(RedisFailureConfig::Deny),
                groups: groups(scope, &limits),
            }),
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        let headers = match config.headers.unwrap_or(RateHeadersConfig::Ietf) {
            RateHeadersConfig::Ietf => HeaderStyle::Ietf,
            RateHeadersConfig::XRatelimit => HeaderStyle::XRateLimit,
            RateHeadersConfig::Both => HeaderStyle::Both,
            RateHeadersConfig::None => HeaderStyle::None,
        };
        let mut policy_header = String::new();
        for (i, limit) in limits.iter().enumerate() {
            let (quota, window_ns) = limit.store.algorithm().quota();
            let sep = if i == 0 { "" } else { ", " };
            let _ = write!(policy_header, "{sep}\"{}\";q={quota};w={}", limit.name, ceil_secs(window_ns));
        }
        let policy_header = HeaderValue::from_str(&policy_header).map_err(|_| vec![("".into(), "bad names".into())])?;
        Ok(RateLimitPolicy { limits: limits.into(), headers, policy_header, shared })
    }

    /// Whether deciding needs a round trip (`backend: redis`): then call `check_shared`.
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// Decides the request with this node's counters: `Err` (429) when a limit refuses it. Either
    /// way `report` receives what the client is told in the response headers.
    pub fn check(self: &Arc<Self>, source: &KeySource<'_>, report: &mut Option<RateReport>) -> Result<(), ProxyError> {
        let now = now_ns();
        let mut decisions = Vec::with_capacity(self.limits.len());
        let mut keys = [0u64; MAX_LIMITS];
        for (i, limit) in self.limits.iter().enumerate() {
            let mut hasher = hasher();
            key::write_key(&limit.key, source, &mut hasher);
            keys[i] = hasher.finish();
            let decision = limit.store.decide(keys[i], now);
            decisions.push(Some(decision));
            if !decision.allowed {
                for ((earlier, key), d) in self.limits[..i].iter().zip(keys).zip(decisions.iter_mut()) {
                    earlier.store.refund(key, now);
                    *d = d.map(|d| earlier.store.algorithm().refunded(d));
                }
                *report = self.report(decisions);
                return Err(self.refusal(i, &decision));
            }
        }
        *report = self.report(decisions);
        Ok(())
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
        let mut taken: Vec<(Vec<String>, &[u64])> = Vec::new();
        for group in shared.groups.iter() {
            let keys = group.redis_keys(shared.backend.prefix(), source);
            let answer = match shared.backend.decide(&keys, &group.args).await {
                Ok(reply) => redis::parse_reply(&reply, group.limits.len())
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
            for (&i, d) in group.limits.iter().zip(group_decisions) {
                decisions[i] = Some(d);
            }
            if let Some(r) = refused {
                // Nothing of this group was written; what earlier groups took is given back.
                for (i, d) in decisions.iter_mut().enumerate() {
                    if i != group.limits[r] {
                        let algorithm = self.limits[i].store.algorithm();
                        *d = d.map(|d| if d.allowed { algorithm.refunded(d) } else { d });
                    }
                }
                self.give_back(shared, taken);
                let index = group.limits[r];
                let refusal = decisions[index].unwrap_or(Decision {
                    allowed: false,
                    remaining: 0,
                    reset_ns: 0,
                    retry_after_ns: 0,
                });
                *report = self.report(decisions);
                return Err(self.refusal(index, &refusal));
            }
            taken.push((keys, &group.args));
        }
        *report = self.report(decisions);
        Ok(())
    }

    fn fail_over(
        self: &Arc<Self>,
        shared: &Shared,
        source: &KeySource<'_>,
        report: &mut Option<RateReport>,
    ) -> Result<(), ProxyError> {
        if shared.deny_on_failure {
            return Err(ProxyError::RateLimitUnavailable);
        }
        self.check(source, report)
    }

    /// Refunds, in the background, what earlier groups took in Redis.
    fn give_back(&self, shared: &Shared, taken: Vec<(Vec<String>, &[u64])>) {
        for (keys, args) in taken {
            let backend = shared.backend.clone();
            let args = args.to_vec();
            tokio::spawn(async move {
                let _ = backend.refund(&keys, &args).await;
            });
        }
    }

    fn refusal(&self, index: usize, decision: &Decision) -> ProxyError {
        let retry_after = ceil_secs(decision.retry_after_ns).max(1);
        ProxyError::RateLimited { retry_after, limit: self.limits[index].name.clone() }
    }

    fn report(self: &Arc<Self>, decisions: Vec<Option<Decision>>) -> Option<RateReport> {
        (self.headers != HeaderStyle::None)
            .then(|| RateReport { policy: self.clone(), decisions: decisions.into_boxed_slice() })
    }
}

impl Group {
    fn redis_keys(&self, prefix: &str, source: &KeySource<'_>) -> Vec<String> {
        let mut bytes = key::KeyBytes::default();
        key::write_key(&self.key, source, &mut bytes);
        let digest = ring::digest::digest(&ring::digest::SHA256, &bytes.0);
        let key = hex(&digest.as_ref()[..12]);
        self.suffixes.iter().map(|suffix| format!("{prefix}rl:{{{}:{key}}}:{suffix}", self.tag)).collect()
    }
}

/// Groups the limits by key, and names their Redis keys from the scope and settings only, so
/// every node with the same config uses the same keys.
fn groups(scope: &str, limits: &[Limit]) -> Box<[Group]> {
    let mut out: Vec<Group> = Vec::new();
    for (i, limit) in limits.iter().enumerate() {
        let args = redis::script_args(limit.store.algorithm());
        let suffix = short_hash(&format!("{}|{args:?}", limit.name), 4);
        if let Some(group) = out.iter_mut().find(|g| g.key == limit.key) {
            let mut list = group.limits.to_vec();
            list.push(i);
            group.limits = list.into();
            group.suffixes = group.suffixes.iter().cloned().chain([suffix]).collect();
            group.args = group.args.iter().copied().chain(args).collect();
        } else {
            let keys = limit.key.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
            out.push(Group {
                key: limit.key.clone(),
                limits: [i].into(),
                tag: short_hash(&format!("{scope}|{keys}"), 6),
                suffixes: [suffix].into(),
                args: args.into(),
            });
        }
    }
    out.into()
}

fn short_hash(text: &str, bytes: usize) -> String {
    hex(&ring::digest::digest(&ring::digest::SHA256, text.as_bytes()).as_ref()[..bytes])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

impl RateReport {
    /// Writes the rate-limit headers into a response.
    pub fn apply(&self, headers: &mut HeaderMap) {
        let policy = &self.policy;
        if matches!(policy.headers, HeaderStyle::Ietf | HeaderStyle::Both) {
            headers.insert(RATELIMIT_POLICY.clone(), policy.policy_header.clone());
            let mut value = String::with_capacity(32 * self.decisions.len());
            for (limit, d) in policy.limits.iter().zip(self.decisions.iter()) {
                let Some(d) = d else { continue };
                let sep = if value.is_empty() { "" } else { ", " };
                let _ = write!(value, "{sep}\"{}\";r={};t={}", limit.name, d.remaining, ceil_secs(d.reset_ns));
            }
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(RATELIMIT.clone(), v);
            }
        }
        if matches!(policy.headers, HeaderStyle::XRateLimit | HeaderStyle::Both) {
            // The limit closest to refusing: the fewest requests left (the later reset on a tie).
            let Some((limit, d)) = policy
                .limits
                .iter()
                .zip(self.decisions.iter())
                .filter_map(|(limit, d)| Some((limit, d.as_ref()?)))
                .min_by(|(_, a), (_, b)| a.remaining.cmp(&b.remaining).then(b.reset_ns.cmp(&a.reset_ns)))
            else {
                return;
            };
            let (quota, _) = limit.store.algorithm().quota();
            headers.insert(X_RATELIMIT_LIMIT.clone(), HeaderValue::from(quota));
            headers.insert(X_RATELIMIT_REMAINING.clone(), HeaderValue::from(d.remaining));
            headers.insert(X_RATELIMIT_RESET.clone(), HeaderValue::from(ceil_secs(d.reset_ns)));
        }
    }
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
