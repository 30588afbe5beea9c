//! The cost of the `rate_limit` policy per request with the local backend: hashing the key,
//! deciding in the sharded store, and writing the `RateLimit` headers. The target is that a
//! limiter costs under 3% of a proxied request (about 20 µs of CPU here, see docs/PERFORMANCE.md).
//!
//! Run: `cargo bench --bench rate_limit`.
#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use divan::Bencher;
use gatehouse::config::RateLimitConfig;
use gatehouse::policy::rate_limit::{KeySource, RateLimitPolicy};
use gatehouse::route::{Lookup, PathPattern, RequestView, RouteSpec, RouteTable};
use gatehouse::state::registry::Registry;
use http::{HeaderMap, HeaderValue, Method};

fn main() {
    divan::main();
}

fn policy(yaml: &str) -> Arc<RateLimitPolicy> {
    let config: RateLimitConfig = serde_json::from_str(yaml).unwrap();
    Arc::new(RateLimitPolicy::compile(&config, "route:bench", &Registry::new(), None).unwrap())
}

fn table() -> RouteTable {
    RouteTable::build(vec![RouteSpec {
        id: 0,
        name: Arc::from("bench"),
        priority: 0,
        hosts: Vec::new(),
        paths: vec![PathPattern::parse("/orgs/{org}/**").unwrap()],
        methods: None,
        headers: Vec::new(),
        query: Vec::new(),
    }])
}

fn run(bencher: Bencher, yaml: &str, clients: u32) {
    let policy = policy(yaml);
    let table = table();
    let mut headers = HeaderMap::new();
    headers.insert("x-tenant", HeaderValue::from_static("tenant-42"));
    let path = "/orgs/acme/repos";
    let view = RequestView { method: &Method::GET, host: None, path, query: None, headers: &headers };
    let Lookup::Matched(route_match) = table.find(&view) else { panic!("no match") };
    let mut n = 0u32;
    bencher.bench_local(|| {
        n = n.wrapping_add(1);
        let source = KeySource {
            client: IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n % clients)),
            identity: None,
            route: "bench",
            headers: &headers,
            path,
            query: None,
            route_match: &route_match,
        };
        let mut report = None;
        black_box(policy.check(&source, &mut report)).unwrap();
        let mut response = HeaderMap::new();
        report.unwrap().apply(&mut response);
        response
    });
}

/// A token bucket per client address, among 1 and 10,000 clients.
#[divan::bench(args = [1, 10_000])]
fn token_bucket_per_address(bencher: Bencher, clients: u32) {
    run(bencher, r#"{"rate": "1000000/s"}"#, clients);
}

/// The same with `X-RateLimit-*` as well as the IETF fields.
#[divan::bench]
fn token_bucket_both_headers(bencher: Bencher) {
    run(bencher, r#"{"rate": "1000000/s", "headers": "both"}"#, 1000);
}

/// Two limits, one by a composite key (address and tenant header).
#[divan::bench]
fn two_limits(bencher: Bencher) {
    let yaml = r#"{"limits": [{"rate": "1000000/s"}, {"rate": "100000000/day", "algorithm": "sliding_window", "key": ["client_ip", "header:x-tenant"], "name": "daily"}]}"#;
    run(bencher, yaml, 1000);
}
