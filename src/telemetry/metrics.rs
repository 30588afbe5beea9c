//! Prometheus metrics, served by the admin listener at `/metrics`.
//!
//! The request path records into handles resolved ahead of time, never by looking up label
//! strings: each route keeps, per listener, a table of cells indexed by (upstream side, method
//! class, status class), each cell a counter and a histogram created on first use. A cell is one
//! atomic load to find, then an atomic add and a histogram observation. The families behind the
//! handles live as long as the process (in the registry), so counts continue across reloads.
//!
//! Every label value comes from the config or a fixed list: listener, route and upstream names,
//! endpoint URLs, eight method classes, five status classes. No path, id or header value is ever
//! a label, so the number of series is bounded by the config, whatever clients send.
//!
//! What the gateway already counts for itself (endpoint health and load, breaker state, open
//! connections, the config generation) is read when scraped, at no cost to requests.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Request methods as labels: the seven common ones, and everything else.
const METHODS: [&str; 8] = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "OTHER"];
/// Status classes as labels.
const STATUSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Request durations, in seconds: 1 ms to 30 s.
const DURATION_BUCKETS: [f64; 14] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    listener: String,
    route: String,
    upstream: String,
    method: &'static str,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    listener: String,
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RejectionLabels {
    listener: String,
    route: String,
    /// The stable error code of the answer (`rate_limited`, `unauthorized`, `upstream_timeout` …).
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    /// `rate_limit` or `quota`.
    policy: &'static str,
    /// Where it is configured: `global`, `listener:NAME`, `route:NAME`.
    scope: String,
    /// The limit that refused (`""` when the request passed every limit).
    limit: String,
    /// `allowed`, `limited`, or `unavailable` (Redis down with `on_redis_failure: deny`).
    decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConsumerLabels {
    consumer: String,
    route: String,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamOutcomeLabels {
    upstream: String,
    /// A status class, or `error` when no response head came (no connection, reset, timeout).
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// The process's metric families.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: Histograms<RequestLabels>,
    received: Family<RouteLabels, Counter>,
    sent: Family<RouteLabels, Counter>,
    errors: Family<RejectionLabels, Counter>,
    decisions: Family<DecisionLabels, Counter>,
    consumer_requests: Family<ConsumerLabels, Counter>,
    upstream_outcomes: Family<UpstreamOutcomeLabels, Counter>,
    upstream_durations: Histograms<UpstreamLabels>,
    retries: Family<UpstreamLabels, Counter>,
    reloads: Family<ResultLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("gatehouse");
        let requests = Family::<RequestLabels, Counter>::default();
        let durations = Histograms::<RequestLabels>::new_with_constructor(duration_histogram as fn() -> Histogram);
        let received = Family::<RouteLabels, Counter>::default();
        let sent = Family::<RouteLabels, Counter>::default();
        let errors = Family::<RejectionLabels, Counter>::default();
        let decisions = Family::<DecisionLabels, Counter>::default();
        let consumer_requests = Family::<ConsumerLabels, Counter>::default();
        let upstream_outcomes = Family::<UpstreamOutcomeLabels, Counter>::default();
        let upstream_durations =
            Histograms::<UpstreamLabels>::new_with_constructor(duration_histogram as fn() -> Histogram);
        let retries = Family::<UpstreamLabels, Counter>::default();
        let reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by listener, route, upstream, method and status class",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "From the request head's arrival to the end of the response body",
            durations.clone(),
        );
        registry.register("request_body_bytes", "Request body bytes received, by route", received.clone());
        registry.register("response_body_bytes", "Response body bytes sent, by route", sent.clone());
        registry.register(
            "errors",
            "Requests the gateway refused or failed itself, by route and error code (rate_limited, quota_exceeded, unauthorized, upstream_timeout, …)",
            errors.clone(),
        );
        registry.register(
            "rate_limit_decisions",
            "Decisions of rate_limit and quota policies, by policy, scope, refusing limit and decision",
            decisions.clone(),
        );
        registry.register(
            "consumer_requests",
            "Requests of identified consumers, by consumer, route and status class (metrics.consumers)",
            consumer_requests.clone(),
        );
        registry.register(
            "upstream_responses",
            "Tries sent to an upstream, by outcome: the status class, or error (no response head)",
            upstream_outcomes.clone(),
        );
        registry.register(
            "upstream_response_header_seconds",
            "From sending a try to its response head",
            upstream_durations.clone(),
        );
        registry.register("upstream_retries", "Tries sent again after a failed one", retries.clone());
        registry.register("config_reloads", "Config reloads, by result (ok, error)", reloads.clone());
        Metrics {
            registry,
            requests,
            durations,
            received,
            sent,
            errors,
            decisions,
            consumer_requests,
            upstream_outcomes,
            upstream_durations,
            retries,
            reloads,
        }
    }

    /// The handles of a route (`route` "" for requests that matched none) on one listener, with
    /// the upstreams a request of the route can go to.
    pub fn route(self: &Arc<Self>, listener: &str, route: &str, upstreams: Vec<Arc<str>>) -> Arc<RouteMetrics> {
        self.route_with(listener, route, upstreams, None)
    }

    /// `route`, also counting identified consumers (at most `max_consumers` by name).
    pub fn route_with(
        self: &Arc<Self>,
        listener: &str,
        route: &str,
        upstreams: Vec<Arc<str>>,
        max_consumers: Option<usize>,
    ) -> Arc<RouteMetrics> {
        Arc::new(RouteMetrics {
            max_consumers,
            metrics: self.clone(),
            listener: Arc::from(listener),
            route: Arc::from(route),
            upstreams,
            cells: OnceLock::new(),
            bytes: OnceLock::new(),
        })
    }

    /// The decision counters of a `rate_limit` (or `quota`, with `quota`) policy configured at
    /// `scope`, with these limits in order.
    pub fn rate_limit<'a>(&self, quota: bool, scope: &str, limits: impl Iterator<Item = &'a str>) -> RateLimitCounters {
        let policy = if quota { "quota" } else { "rate_limit" };
        let counter = |limit: &str, decision| {
            self.decisions.get_or_create_owned(&DecisionLabels {
                policy,
                scope: scope.to_owned(),
                limit: limit.to_owned(),
                decision,
            })
        };
        RateLimitCounters {
            allowed: counter("", "allowed"),
            limited: limits.map(|l| counter(l, "limited")).collect(),
            unavailable: counter("", "unavailable"),
        }
    }

    /// The handles of an upstream.
    pub fn upstream(self: &Arc<Self>, name: &str) -> UpstreamMetrics {
        let labels = UpstreamLabels { upstream: name.to_owned() };
        UpstreamMetrics {
            metrics: self.clone(),
            name: Arc::from(name),
            outcomes: std::array::from_fn(|_| OnceLock::new()),
            head: self.upstream_durations.get_or_create_owned(&labels),
            retries: self.retries.get_or_create_owned(&labels),
        }
    }

    pub fn reloaded(&self, ok: bool) {
        self.reloads.get_or_create(&ResultLabels { result: if ok { "ok" } else { "error" } }).inc();
    }

    /// The exposition: OpenMetrics text when `openmetrics`, else the Prometheus text format.
    pub fn render(&self, live: &Registry, openmetrics: bool) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode_registry(&mut out, &self.registry);
        let _ = prometheus_client::encoding::text::encode_registry(&mut out, live);
        if openmetrics {
            let _ = prometheus_client::encoding::text::encode_eof(&mut out);
            out
        } else {
            to_prometheus_text(&out)
        }
    }
}

/// Prometheus text format 0.0.4 from OpenMetrics text: a counter family is named with its `_total`
/// suffix in `# HELP` and `# TYPE`, and there are no `# UNIT` or `# EOF` lines.
fn to_prometheus_text(openmetrics: &str) -> String {
    let mut counters = std::collections::HashSet::new();
    for line in openmetrics.lines() {
        if let Some(name) = line.strip_prefix("# TYPE ").and_then(|rest| rest.strip_suffix(" counter")) {
            counters.insert(name.to_owned());
        }
    }
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters.contains(name).then(|| format!("{prefix}{name}_total {tail}"))
        });
        let _ = writeln!(out, "{}", renamed.as_deref().unwrap_or(line));
    }
    out
}

/// Method class index of `method`.
pub fn method_class(method: &http::Method) -> u8 {
    match *method {
        http::Method::GET => 0,
        http::Method::HEAD => 1,
        http::Method::POST => 2,
        http::Method::PUT => 3,
        http::Method::DELETE => 4,
        http::Method::PATCH => 5,
        http::Method::OPTIONS => 6,
        _ => 7,
    }
}

fn status_class(status: u16) -> usize {
    usize::from((status / 100).clamp(1, 5) - 1)
}

struct Cell {
    requests: Counter,
    duration: Histogram,
}

/// A route's handles on one listener.
pub struct RouteMetrics {
    metrics: Arc<Metrics>,
    listener: Arc<str>,
    route: Arc<str>,
    /// The upstreams a request may go to, in the order of the route's split (or its one
    /// upstream); a request of no side was answered by the gateway itself.
    upstreams: Vec<Arc<str>>,
    /// Allocated at the route's first request (a config of 10,000 routes pays only for those
    /// that see traffic); each cell is created at its first request.
    cells: OnceLock<Box<[OnceLock<Cell>]>>,
    /// Request and response body bytes.
    bytes: OnceLock<(Counter, Counter)>,
    /// Count consumers, at most this many by name (None: consumers are not counted).
    max_consumers: Option<usize>,
}

impl RouteMetrics {
    /// Counts an answer the gateway gave with an error code (a rejection by a policy, or a
    /// failure to get an upstream's answer). Only on that path: the labels are looked up here.
    pub fn errored(&self, code: &'static str) {
        let labels = RejectionLabels { listener: self.listener.to_string(), route: self.route.to_string(), code };
        self.metrics.errors.get_or_create(&labels).inc();
    }

    /// Whether identified consumers are counted on this route.
    pub fn counts_consumers(&self) -> bool {
        self.max_consumers.is_some()
    }

    /// Counts a finished request of an identified consumer (opt-in: it looks labels up). The
    /// first `max_consumers` consumers of the config have series of their own; the others count
    /// as `other`, so the series are bounded by the config, not by who calls.
    pub fn record_consumer(&self, consumer: &crate::policy::Consumer, status: u16) {
        let Some(max) = self.max_consumers else { return };
        let name = if consumer.position < max { consumer.name.to_string() } else { "other".to_owned() };
        let labels =
            ConsumerLabels { consumer: name, route: self.route.to_string(), status: STATUSES[status_class(status)] };
        self.metrics.consumer_requests.get_or_create(&labels).inc();
    }

    /// Counts one finished request.
    pub fn record(&self, side: Option<usize>, method: u8, status: u16, seconds: f64, bytes_in: u64, bytes_out: u64) {
        let side = side.map_or(self.upstreams.len(), |s| s.min(self.upstreams.len()));
        let (m, s) = (usize::from(method).min(METHODS.len() - 1), status_class(status));
        let index = (side * METHODS.len() + m) * STATUSES.len() + s;
        let cells = self.cells.get_or_init(|| {
            (0..(self.upstreams.len() + 1) * METHODS.len() * STATUSES.len()).map(|_| OnceLock::new()).collect()
        });
        let Some(slot) = cells.get(index) else { return };
        let cell = slot.get_or_init(|| {
            let labels = RequestLabels {
                listener: self.listener.to_string(),
                route: self.route.to_string(),
                upstream: self.upstreams.get(side).map(|u| u.to_string()).unwrap_or_default(),
                method: METHODS[m],
                status: STATUSES[s],
            };
            Cell {
                requests: self.metrics.requests.get_or_create_owned(&labels),
                duration: self.metrics.durations.get_or_create_owned(&labels),
            }
        });
        cell.requests.inc();
        cell.duration.observe(seconds);
        let (received, sent) = self.bytes.get_or_init(|| {
            let labels = RouteLabels { listener: self.listener.to_string(), route: self.route.to_string() };
            (self.metrics.received.get_or_create_owned(&labels), self.metrics.sent.get_or_create_owned(&labels))
        });
        if bytes_in > 0 {
            received.inc_by(bytes_in);
        }
        if bytes_out > 0 {
            sent.inc_by(bytes_out);
        }
    }
}

/// A rate-limit policy's decision counters, resolved when it is compiled.
pub struct RateLimitCounters {
    pub allowed: Counter,
    /// By limit, in the policy's order.
    pub limited: Box<[Counter]>,
    pub unavailable: Counter,
}

/// An upstream's handles.
pub struct UpstreamMetrics {
    metrics: Arc<Metrics>,
    name: Arc<str>,
    /// By status class, then `error`.
    outcomes: [OnceLock<Counter>; 6],
    head: Histogram,
    retries: Counter,
}

impl UpstreamMetrics {
    /// A try ended: with a response head of `status` after `seconds`, or with no response (`None`).
    pub fn tried(&self, status: Option<u16>, seconds: f64) {
        let index = status.map_or(5, status_class);
        let counter = self.outcomes[index].get_or_init(|| {
            let outcome = if index == 5 { "error" } else { STATUSES[index] };
            self.metrics
                .upstream_outcomes
                .get_or_create_owned(&UpstreamOutcomeLabels { upstream: self.name.to_string(), outcome })
        });
        counter.inc();
        if status.is_some() {
            self.head.observe(seconds);
        }
    }

    pub fn retried(&self) {
        self.retries.inc();
    }
}

/// What is read at scrape time from the running gateway.
pub struct Live<'a> {
    pub generation: u64,
    pub snapshot: &'a crate::state::Snapshot,
    /// Connections and requests in flight per listener (by listener id).
    pub counts: &'a [Arc<crate::transport::conn::ListenerCounts>],
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    upstream: String,
    endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    cache: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BreakerLabels {
    upstream: String,
    state: &'static str,
}

/// The scrape-time families, filled from the running gateway.
pub fn live_registry(live: &Live<'_>) -> Registry {
    let mut registry = Registry::with_prefix("gatehouse");
    let now = crate::transport::clock::now_ms();
    let info = Family::<VersionLabels, Gauge>::default();
    info.get_or_create(&VersionLabels { version: env!("CARGO_PKG_VERSION") }).set(1);
    registry.register("build_info", "1, labelled with the running gatehouse's version", info);
    let generation = Gauge::<i64>::default();
    generation.set(i64::try_from(live.generation).unwrap_or(i64::MAX));
    registry.register(
        "config_generation",
        "The generation of the running config (1 at start, +1 per reload)",
        generation,
    );

    // A gauge per listener, from a count per listener id.
    let per_listener = |count: &dyn Fn(usize) -> usize| {
        let family = Family::<ListenerLabels, Gauge>::default();
        // A removed listener's place (an empty name) is not a listener any more.
        for (id, listener) in live.snapshot.serving() {
            family
                .get_or_create(&ListenerLabels { listener: listener.name.to_string() })
                .set(i64::try_from(count(id)).unwrap_or(i64::MAX));
        }
        family
    };
    let open = per_listener(&|id| live.counts.get(id).map_or(0, |c| c.connections.load(Ordering::Relaxed)));
    registry.register("connections_open", "Client connections open, by listener", open);
    let requests = per_listener(&|id| live.counts.get(id).map_or(0, |c| c.requests.load(Ordering::Relaxed)));
    registry.register("requests_in_flight", "Requests received and not yet answered in full, by listener", requests);

    let healthy = Family::<EndpointLabels, Gauge>::default();
    let in_flight = Family::<EndpointLabels, Gauge>::default();
    let requests = Family::<EndpointLabels, Counter>::default();
    let breakers = Family::<BreakerLabels, Gauge>::default();
    let mut names: Vec<_> = live.snapshot.upstreams.keys().collect();
    names.sort();
    for name in names {
        let Some(upstream) = live.snapshot.upstreams.get(name) else { continue };
        for endpoint in &upstream.members().endpoints {
            let labels = EndpointLabels { upstream: name.to_string(), endpoint: endpoint.url.to_string() };
            let state = &endpoint.state;
            healthy.get_or_create(&labels).set(i64::from(state.is_available(now)));
            in_flight.get_or_create(&labels).set(i64::from(state.in_flight.load(Ordering::Relaxed)));
            requests.get_or_create(&labels).inc_by(state.requests.load(Ordering::Relaxed));
        }
        if let Some(breaker) = &upstream.breaker {
            let current = breaker.state(now).as_str();
            for state in ["closed", "open", "half_open"] {
                breakers
                    .get_or_create(&BreakerLabels { upstream: name.to_string(), state })
                    .set(i64::from(state == current));
            }
        }
    }
    registry.register(
        "upstream_endpoint_healthy",
        "1 when the endpoint takes requests (not ejected, health check passing)",
        healthy,
    );
    registry.register("upstream_endpoint_in_flight", "Requests in flight at the endpoint", in_flight);
    registry.register("upstream_endpoint_requests", "Tries sent to the endpoint", requests);
    registry.register("circuit_breaker_state", "1 for the circuit breaker's current state", breakers);

    let caches = Family::<CacheLabels, Counter>::default();
    for stats in crate::policy::cache::ALL {
        let (hits, misses) = stats.counts();
        caches.get_or_create(&CacheLabels { cache: stats.name, result: "hit" }).inc_by(hits);
        caches.get_or_create(&CacheLabels { cache: stats.name, result: "miss" }).inc_by(misses);
    }
    registry.register(
        "policy_cache_lookups",
        "Lookups in the policies' caches of decisions (verified tokens, authorization answers, checked passwords)",
        caches,
    );
    registry
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_renames_counters_and_drops_openmetrics_lines() {
        let om = "# HELP gatehouse_requests Requests.\n# TYPE gatehouse_requests counter\ngatehouse_requests_total{a=\"b\"} 3\n# HELP x Gauge.\n# TYPE x gauge\n# UNIT x seconds\nx 1\n# EOF\n";
        assert_eq!(
            to_prometheus_text(om),
            "# HELP gatehouse_requests_total Requests.\n# TYPE gatehouse_requests_total counter\ngatehouse_requests_total{a=\"b\"} 3\n# HELP x Gauge.\n# TYPE x gauge\nx 1\n"
        );
    }

    #[test]
    fn cells_are_indexed_by_side_method_and_status() {
        let metrics = Arc::new(Metrics::new());
        let route = metrics.route("public", "r", vec![Arc::from("a"), Arc::from("b")]);
        route.record(Some(1), method_class(&http::Method::POST), 503, 0.01, 10, 20);
        route.record(Some(1), method_class(&http::Method::POST), 500, 0.01, 0, 0);
        route.record(None, 99, 99, 0.01, 0, 0);
        let text = metrics.render(&Registry::default(), true);
        assert!(text.contains(
            "gatehouse_requests_total{listener=\"public\",route=\"r\",upstream=\"b\",method=\"POST\",status=\"5xx\"} 2"
        ), "{text}");
        // Out-of-range method and status classes are clamped, not out of bounds.
        assert!(text.contains("upstream=\"\",method=\"OTHER\",status=\"1xx\"} 1"), "{text}");
        assert!(text.contains("gatehouse_request_body_bytes_total{listener=\"public\",route=\"r\"} 10"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }
}
