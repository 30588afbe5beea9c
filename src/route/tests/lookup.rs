//! Table-level behaviour of `find`, `explain`, `entries` and `spec`: hosts, predicates, params,
//! 405 and diagnostics, each on small hand-written tables.

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use regex::Regex;

use super::{get, pattern, route, table};
use crate::route::{
    HeaderMatcher, HostPattern, Lookup, QueryMatcher, RequestView, RouteSpec, RouteTable, ValueMatch, Verdict,
};

fn host(s: &str) -> HostPattern {
    HostPattern::parse(s).unwrap()
}

fn with_hosts(mut spec: RouteSpec, hosts: &[&str]) -> RouteSpec {
    spec.hosts = hosts.iter().map(|h| host(h)).collect();
    spec
}

fn with_methods(mut spec: RouteSpec, methods: &[Method]) -> RouteSpec {
    spec.methods = Some(methods.to_vec());
    spec
}

fn name_of(t: &RouteTable, req: &RequestView<'_>) -> Option<String> {
    let found = match t.find(req) {
        Lookup::Matched(m) => Some(t.spec(m.route).name.to_string()),
        _ => None,
    };
    // Every lookup in this file doubles as an explain consistency check.
    let explained = t.explain(req).winner.map(|(id, _)| t.spec(id).name.to_string());
    assert_eq!(found, explained, "find and explain disagree for {}", req.path);
    found
}

fn at<'a>(path: &'a str, host: Option<&'a str>) -> RequestView<'a> {
    RequestView { host, ..get(path) }
}

#[test]
fn hosts_pick_the_most_specific_group() {
    let t = table(vec![
        with_hosts(route(0, "wild", &["/x"]), &["*.example.com"]),
        route(1, "any", &["/x"]),
        with_hosts(route(2, "exact", &["/x"]), &["api.example.com"]),
        with_hosts(route(3, "deep", &["/x"]), &["*.b.example.com"]),
    ]);
    assert_eq!(name_of(&t, &at("/x", Some("api.example.com"))).as_deref(), Some("exact"));
    assert_eq!(name_of(&t, &at("/x", Some("a.b.example.com"))).as_deref(), Some("deep"));
    assert_eq!(name_of(&t, &at("/x", Some("b.example.com"))).as_deref(), Some("wild"));
    assert_eq!(name_of(&t, &at("/x", Some("z.y.example.com"))).as_deref(), Some("wild"));
    assert_eq!(name_of(&t, &at("/x", Some("example.com"))).as_deref(), Some("any"));
    assert_eq!(name_of(&t, &at("/x", Some("other.org"))).as_deref(), Some("any"));
    assert_eq!(name_of(&t, &at("/x", None)).as_deref(), Some("any"));
}

#[test]
fn a_request_without_host_matches_only_hostless_routes() {
    let t = table(vec![with_hosts(route(0, "h", &["/**"]), &["example.com", "*.example.org"])]);
    assert_eq!(name_of(&t, &at("/a", None)), None);
    assert!(matches!(t.find(&at("/a", None)), Lookup::NotFound));
    assert_eq!(name_of(&t, &at("/a", Some("example.com"))).as_deref(), Some("h"));
    assert_eq!(name_of(&t, &at("/a", Some("x.example.org"))).as_deref(), Some("h"));
    assert_eq!(name_of(&t, &at("/a", Some("example.org"))), None);
}

#[test]
fn host_beats_path_specificity() {
    let t = table(vec![route(0, "exact-path", &["/users/42"]), with_hosts(route(1, "host", &["/**"]), &["a.com"])]);
    assert_eq!(name_of(&t, &at("/users/42", Some("a.com"))).as_deref(), Some("host"));
    assert_eq!(name_of(&t, &at("/users/42", Some("b.com"))).as_deref(), Some("exact-path"));
}

#[test]
fn params_are_ranges_into_the_path() {
    let t = table(vec![
        route(0, "user", &["/users/{id}/posts/{post}"]),
        route(1, "files", &["/files/{*rest}"]),
        route(2, "re", &[r"regex:/re/(?<year>\d{4})/(?<slug>[a-z-]+)"]),
        route(3, "many", &["/m/{a}/{b}/{c}/{d}/{e}/{f}/{g}/{h}/{i}/{j}"]),
        route(4, "plain", &["/plain"]),
    ]);
    let m = |path: &str| match t.find(&get(path)) {
        Lookup::Matched(m) => m,
        other => panic!("{path}: {other:?}"),
    };
    let path = "/users/7/posts/99";
    let found = m(path);
    assert_eq!((found.route, found.pattern), (0, 0));
    assert_eq!(found.param(path, "id"), Some("7"));
    assert_eq!(found.param(path, "post"), Some("99"));
    assert_eq!(found.param(path, "nope"), None);
    assert_eq!(found.params(path).collect::<Vec<_>>(), [("id", "7"), ("post", "99")]);

    let path = "/files/a/b.txt";
    assert_eq!(m(path).param(path, "rest"), Some("a/b.txt"));
    assert_eq!(m(path).tail(path), Some("a/b.txt"));
    assert_eq!(m("/files").param("/files", "rest"), Some(""));

    let path = "/re/2024/hello-world";
    assert_eq!(m(path).params(path).collect::<Vec<_>>(), [("year", "2024"), ("slug", "hello-world")]);

    let path = "/m/1/2/3/4/5/6/7/8/9/10";
    let values: Vec<&str> = m(path).params(path).map(|(_, v)| v).collect();
    assert_eq!(values, ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10"]);
    assert_eq!(m(path).param(path, "j"), Some("10"));

    let plain = m("/plain");
    assert_eq!(plain.params("/plain").count(), 0);
    assert_eq!(plain.tail("/plain"), None);
    assert!(plain.params.names.is_none());
}

#[test]
fn paths_outside_the_segment_syntax() {
    let t = table(vec![route(0, "all", &["/**"]), route(1, "star", &[r"regex:\*"])]);
    assert_eq!(name_of(&t, &get("*")).as_deref(), Some("star"));
    assert_eq!(name_of(&t, &get("")), None);
    assert_eq!(name_of(&t, &get("/")).as_deref(), Some("all"));
}

fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (k, v) in pairs {
        map.append(HeaderName::from_static(k), HeaderValue::from_static(v));
    }
    map
}

#[test]
fn header_and_query_matchers_through_the_table() {
    let mut canary = route(0, "canary", &["/api/**"]);
    canary.headers = vec![HeaderMatcher { name: HeaderName::from_static("x-canary"), kind: ValueMatch::Present }];
    let mut beta = route(1, "beta", &["/api/**"]);
    beta.query = vec![QueryMatcher { name: "beta".into(), kind: ValueMatch::Exact("1".into()) }];
    let mut tenant = route(2, "tenant", &["/api/**"]);
    tenant.headers = vec![HeaderMatcher {
        name: HeaderName::from_static("x-tenant"),
        kind: ValueMatch::Regex(Regex::new("acme|globex").unwrap()),
    }];
    let t = table(vec![canary, beta, tenant, route(3, "api", &["/api/**"])]);

    let none = HeaderMap::new();
    let req = |h: &HeaderMap, q: Option<&'static str>| -> Option<String> {
        let mut r = get("/api/x");
        r.headers = h;
        r.query = q;
        name_of(&t, &r)
    };
    assert_eq!(req(&none, None).as_deref(), Some("api"));
    assert_eq!(req(&headers(&[("x-canary", "")]), Some("beta=1")).as_deref(), Some("canary"));
    assert_eq!(req(&none, Some("a=2&beta=0&beta=1")).as_deref(), Some("beta"));
    assert_eq!(req(&none, Some("beta=10")).as_deref(), Some("api"));
    assert_eq!(req(&headers(&[("x-tenant", "initech"), ("x-tenant", "globex")]), None).as_deref(), Some("tenant"));
    assert_eq!(req(&headers(&[("x-tenant", "globex-2")]), None).as_deref(), Some("api"));
}

#[test]
fn method_not_allowed_is_the_union() {
    let mut needs_header = with_methods(route(3, "hdr", &["/users"]), &[Method::PATCH]);
    needs_header.headers = vec![HeaderMatcher { name: HeaderName::from_static("x-admin"), kind: ValueMatch::Present }];
    let purge = Method::from_bytes(b"PURGE").unwrap();
    let t = table(vec![
        with_methods(route(0, "list", &["/users"]), &[Method::GET, Method::HEAD]),
        with_methods(route(1, "create", &["/users", "/people"]), &[Method::POST, Method::GET]),
        with_methods(route(2, "delete", &["/users/{id}"]), &[Method::DELETE, purge.clone()]),
        needs_header,
        with_hosts(with_methods(route(4, "other-host", &["/users"]), &[Method::PUT]), &["a.com"]),
    ]);
    let with = |method: &'static Method, path: &'static str| {
        let mut r = get(path);
        r.method = method;
        t.find(&r)
    };
    static PUT: Method = Method::PUT;
    static GET: Method = Method::GET;
    static OPTIONS: Method = Method::OPTIONS;
    match with(&PUT, "/users") {
        Lookup::MethodNotAllowed { allow } => {
            assert_eq!(allow, [Method::GET, Method::HEAD, Method::POST])
        }
        other => panic!("{other:?}"),
    }
    match with(&GET, "/users/1") {
        Lookup::MethodNotAllowed { allow } => assert_eq!(allow, [Method::DELETE, purge]),
        other => panic!("{other:?}"),
    }
    assert!(matches!(with(&OPTIONS, "/nothing"), Lookup::NotFound));
    assert!(matches!(with(&GET, "/people"), Lookup::Matched(_)));
}

#[test]
fn a_route_without_methods_prevents_405() {
    let mut fallback = route(1, "any", &["/users"]);
    fallback.query = vec![QueryMatcher { name: "x".into(), kind: ValueMatch::Present }];
    let t = table(vec![with_methods(route(0, "get", &["/users"]), &[Method::GET]), fallback]);
    static POST: Method = Method::POST;
    let mut r = get("/users");
    r.method = &POST;
    assert!(matches!(t.find(&r), Lookup::MethodNotAllowed { .. }));
    r.query = Some("x");
    assert!(matches!(t.find(&r), Lookup::Matched(ref m) if m.route == 1));
}

#[test]
fn explain_gives_every_verdict() {
    let mut hdr = route(3, "hdr", &["/a/{x}"]);
    hdr.headers =
        vec![HeaderMatcher { name: HeaderName::from_static("x-env"), kind: ValueMatch::Exact("prod".into()) }];
    let mut qry = route(4, "qry", &["/a/{x}"]);
    qry.query = vec![QueryMatcher { name: "v".into(), kind: ValueMatch::Prefix("2".into()) }];
    let t = table(vec![
        with_hosts(route(0, "host", &["/a/b"]), &["x.com"]),
        route(1, "path", &["/b/**"]),
        with_methods(route(2, "method", &["/a/{x}"]), &[Method::POST]),
        hdr,
        qry,
        route(5, "winner", &["/a/{x}"]),
        route(6, "shadowed", &["/a/**"]),
    ]);
    let h = headers(&[("x-env", "dev"), ("x-env", "qa")]);
    let mut req = get("/a/b");
    req.headers = &h;
    req.query = Some("v=1+0");
    let e = t.explain(&req);
    assert_eq!(e.winner, Some((5, 0)));
    let by_route = |id: u32| e.entries.iter().find(|v| v.route == id).unwrap();
    assert_eq!(by_route(0).verdict, Verdict::HostMismatch);
    assert_eq!(by_route(0).host.as_deref(), Some("x.com"));
    assert_eq!(by_route(1).verdict, Verdict::PathMismatch);
    assert!(by_route(1).params.is_empty());
    assert_eq!(by_route(2).verdict, Verdict::MethodMismatch { allowed: vec![Method::POST] });
    assert_eq!(by_route(2).params, [("x".to_string(), "b".to_string())]);
    assert_eq!(
        by_route(3).verdict,
        Verdict::HeaderMismatch {
            name: "x-env".into(),
            expected: "exactly `prod`".into(),
            actual: Some("dev, qa".into())
        }
    );
    assert_eq!(
        by_route(4).verdict,
        Verdict::QueryMismatch { name: "v".into(), expected: "starting with `2`".into(), actual: Some("1 0".into()) }
    );
    assert_eq!(by_route(5).verdict, Verdict::Selected);
    assert_eq!(by_route(6).verdict, Verdict::Shadowed);
    assert_eq!(by_route(6).pattern, "/a/**");
    let ranks: Vec<u32> = e.entries.iter().map(|v| v.rank).collect();
    assert_eq!(ranks, (0..7).collect::<Vec<_>>());
    assert_eq!(by_route(3).verdict.to_string(), "header `x-env` should be exactly `prod` but is `dev, qa`");
    assert_eq!(by_route(2).verdict.to_string(), "method not allowed; allowed: POST");

    req.headers = &super::NO_HEADERS;
    let e = t.explain(&req);
    assert_eq!(
        e.entries.iter().find(|v| v.route == 3).unwrap().verdict.to_string(),
        "header `x-env` should be exactly `prod` but is missing"
    );
}

#[test]
fn entries_in_precedence_order() {
    let mut specs = vec![
        route(0, "fallback", &["/**"]),
        route(1, "users", &["/users/**", "/users/{id}"]),
        with_methods(route(2, "create", &["/users"]), &[Method::POST]),
        with_hosts(route(3, "admin", &["/**"]), &["admin.example.com", "*.admin.example.com"]),
        route(4, "re", &[r"regex:/u/\d+"]),
    ];
    specs[0].priority = -1;
    let t = table(specs);
    let listed: Vec<(String, Option<String>, &str, u16)> = t
        .entries()
        .map(|e| (e.name.to_string(), e.host.map(|h| h.to_string()), e.pattern.as_str(), e.pattern_index))
        .collect();
    let expected = [
        ("admin", Some("admin.example.com"), "/**", 0),
        ("admin", Some("*.admin.example.com"), "/**", 0),
        ("create", None, "/users", 0),
        ("users", None, "/users/{id}", 1),
        ("users", None, "/users/**", 0),
        ("re", None, r"regex:^/u/\d+$", 0),
        ("fallback", None, "/**", 0),
    ];
    let expected: Vec<(String, Option<String>, &str, u16)> =
        expected.iter().map(|(n, h, p, i)| (n.to_string(), h.map(String::from), *p, *i)).collect();
    assert_eq!(listed, expected);
    let info = t.entries().nth(2).unwrap();
    assert_eq!((info.rank, info.route, info.priority, info.headers, info.query), (2, 2, 0, 0, 0));
    assert_eq!(info.methods, Some(&[Method::POST][..]));
}

#[test]
fn spec_by_id_with_sparse_ids() {
    let t = table(vec![route(10, "ten", &["/ten"]), route(3, "three", &["/three"]), route(1, "one", &["/one"])]);
    assert_eq!(&*t.spec(10).name, "ten");
    assert_eq!(&*t.spec(1).name, "one");
    assert!(t.get(2).is_none());
    assert_eq!(t.routes().iter().map(|r| r.id).collect::<Vec<_>>(), [1, 3, 10]);
    match t.find(&get("/ten")) {
        Lookup::Matched(m) => assert_eq!(m.route, 10),
        other => panic!("{other:?}"),
    }
    // Lower id wins ties even when declared later in the list.
    let t = table(vec![route(5, "five", &["/x"]), route(2, "two", &["/x"])]);
    assert_eq!(name_of(&t, &get("/x")).as_deref(), Some("two"));
}

#[test]
#[should_panic(expected = "route id 7 is not in this table")]
fn spec_panics_on_unknown_id() {
    table(vec![route(0, "a", &["/"])]).spec(7);
}

#[test]
fn empty_table() {
    let t = table(Vec::new());
    assert!(matches!(t.find(&get("/")), Lookup::NotFound));
    assert_eq!(t.explain(&get("/")).entries.len(), 0);
    assert_eq!(t.entries().count(), 0);
    assert_eq!(pattern("/").as_str(), "/");
}
