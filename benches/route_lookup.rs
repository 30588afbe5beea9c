//! Route lookup cost against table size: the same requests against tables of 10, 1,000 and
//! 10,000 routes, which must take about the same time (the index is not a linear scan).
//!
//! Measures `RouteTable::find`, the router step between path normalisation and upstream
//! selection. The allocation profiler shows that a plain hit and a miss allocate nothing.
//!
//! Run: `cargo bench --bench route_lookup`.

use std::hint::black_box;
use std::sync::Arc;

use divan::{AllocProfiler, Bencher};
use gatehouse::route::{
    HeaderMatcher, HostPattern, Lookup, PathPattern, QueryMatcher, RequestView, RouteSpec, RouteTable, ValueMatch,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method};

#[global_allocator]
static ALLOC: AllocProfiler = AllocProfiler::system();

const SIZES: [usize; 3] = [10, 1_000, 10_000];

fn path(s: &str) -> PathPattern {
    match PathPattern::parse(s) {
        Ok(p) => p,
        Err(e) => panic!("bench pattern {s}: {e}"),
    }
}

fn host(s: &str) -> HostPattern {
    match HostPattern::parse(s) {
        Ok(h) => h,
        Err(e) => panic!("bench host {s}: {e}"),
    }
}

/// Ten routes per service, in the shapes a real gateway config has: exact health checks,
/// templates split by method, static prefixes, catch-alls, host-bound and header/query-gated
/// routes.
fn routes(count: usize) -> Vec<RouteSpec> {
    (0..count)
        .map(|i| {
            let svc = i / 10;
            let mut spec = RouteSpec {
                id: i as u32,
                name: Arc::from(format!("route-{i}")),
                priority: 0,
                hosts: Vec::new(),
                paths: Vec::new(),
                methods: None,
                headers: Vec::new(),
                query: Vec::new(),
            };
            let (paths, methods): (Vec<String>, Option<Vec<Method>>) = match i % 10 {
                0 => (vec![format!("/svc{svc}/health")], Some(vec![Method::GET, Method::HEAD])),
                1 => (vec![format!("/svc{svc}/users/{{id}}")], Some(vec![Method::GET])),
                2 => (vec![format!("/svc{svc}/users/{{id}}")], Some(vec![Method::PUT, Method::DELETE])),
                3 => (vec![format!("/svc{svc}/static/**")], None),
                4 => (vec![format!("/svc{svc}/users/{{id}}/orders/{{order}}")], None),
                5 => (vec![format!("/api/v{}/svc{svc}/items/{{id}}", svc % 3)], None),
                6 => {
                    spec.hosts = vec![host(&format!("svc{svc}.example.com"))];
                    (vec!["/**".to_string()], None)
                }
                7 => {
                    spec.hosts = vec![host(&format!("*.svc{svc}.example.net"))];
                    (vec!["/v1/{*rest}".to_string()], None)
                }
                8 => {
                    spec.headers = vec![HeaderMatcher {
                        name: HeaderName::from_static("x-canary"),
                        kind: ValueMatch::Exact("1".into()),
                    }];
                    (vec![format!("/svc{svc}/users/**")], None)
                }
                _ => {
                    spec.query = vec![QueryMatcher { name: "debug".into(), kind: ValueMatch::Present }];
                    (vec![format!("/svc{svc}/search"), format!("/svc{svc}/find")], Some(vec![Method::GET]))
                }
            };
            spec.paths = paths.iter().map(|p| path(p)).collect();
            spec.methods = methods;
            spec
        })
        .collect()
}

fn headers() -> HeaderMap {
    let mut map = HeaderMap::new();
    map.insert(HeaderName::from_static("user-agent"), HeaderValue::from_static("bench/1.0"));
    map.insert(HeaderName::from_static("accept"), HeaderValue::from_static("application/json"));
    map
}

fn run(bencher: Bencher, count: usize, path_for: impl Fn(usize) -> String, expect_match: bool) {
    let table = RouteTable::build(routes(count));
    let last_svc = (count - 1) / 10;
    let path = path_for(last_svc);
    let headers = headers();
    let req = RequestView {
        method: &Method::GET,
        host: Some("gateway.example.org"),
        path: &path,
        query: Some("page=2&sort=name"),
        headers: &headers,
    };
    if matches!(table.find(&req), Lookup::Matched(_)) != expect_match {
        panic!("unexpected lookup result for {path} with {count} routes");
    }
    bencher.bench_local(|| table.find(black_box(&req)));
}

/// An exact route of the last service: the deepest point of the declaration order.
#[divan::bench(args = SIZES)]
fn hit_exact(bencher: Bencher, count: usize) {
    run(bencher, count, |svc| format!("/svc{svc}/health"), true);
}

/// A two-param template of the last service, with its captures.
#[divan::bench(args = SIZES)]
fn hit_params(bencher: Bencher, count: usize) {
    run(bencher, count, |svc| format!("/svc{svc}/users/42/orders/7"), true);
}

/// No route matches: the walk ends at the first unknown segment.
#[divan::bench(args = SIZES)]
fn miss(bencher: Bencher, count: usize) {
    run(bencher, count, |_| "/nowhere/users/42".to_string(), false);
}

fn main() {
    divan::main();
}
