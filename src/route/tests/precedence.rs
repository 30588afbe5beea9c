//! The precedence rules of the module docs as ordered pairs: for each, both routes match the
//! request and the first must win whichever is declared first (except where declaration order is
//! the rule under test).

use http::{HeaderMap, HeaderName, HeaderValue, Method};

use super::{get, route};
use crate::route::{
    HeaderMatcher, HostPattern, Lookup, QueryMatcher, RequestView, RouteSpec, RouteTable, ValueMatch, Verdict,
};

trait Tweak {
    fn prio(self, p: i32) -> Self;
    fn host(self, h: &str) -> Self;
    fn methods(self) -> Self;
    fn headers(self, n: usize) -> Self;
    fn query(self, n: usize) -> Self;
}

const HEADER_NAMES: [&str; 3] = ["x-a", "x-b", "x-c"];
const QUERY_NAMES: [&str; 3] = ["qa", "qb", "qc"];

impl Tweak for RouteSpec {
    fn prio(mut self, p: i32) -> Self {
        self.priority = p;
        self
    }
    fn host(mut self, h: &str) -> Self {
        self.hosts.push(HostPattern::parse(h).unwrap());
        self
    }
    fn methods(mut self) -> Self {
        self.methods = Some(vec![Method::GET, Method::POST]);
        self
    }
    fn headers(mut self, n: usize) -> Self {
        self.headers = HEADER_NAMES[..n]
            .iter()
            .map(|h| HeaderMatcher { name: HeaderName::from_static(h), kind: ValueMatch::Present })
            .collect();
        self
    }
    fn query(mut self, n: usize) -> Self {
        self.query =
            QUERY_NAMES[..n].iter().map(|q| QueryMatcher { name: q.to_string(), kind: ValueMatch::Present }).collect();
        self
    }
}

fn r(path: &str) -> RouteSpec {
    route(0, "", &[path])
}

fn request<'a>(path: &'a str, host: Option<&'a str>, headers: &'a HeaderMap) -> RequestView<'a> {
    RequestView { host, headers, query: Some("qa=1&qb=1&qc=1"), ..get(path) }
}

fn winner_of(t: &RouteTable, req: &RequestView<'_>) -> String {
    let explanation = t.explain(req);
    for verdict in &explanation.entries {
        assert!(
            matches!(verdict.verdict, Verdict::Selected | Verdict::Shadowed),
            "both routes must match {}: {verdict:?}",
            req.path
        );
    }
    match t.find(req) {
        Lookup::Matched(m) => {
            assert_eq!(explanation.winner, Some((m.route, m.pattern)));
            t.spec(m.route).name.to_string()
        }
        other => panic!("{}: {other:?}", req.path),
    }
}

/// `winner` beats `loser` for the request, in both declaration orders.
fn beats(winner: RouteSpec, loser: RouteSpec, path: &str, host: Option<&str>) {
    let mut headers = HeaderMap::new();
    for h in HEADER_NAMES {
        headers.insert(HeaderName::from_static(h), HeaderValue::from_static("1"));
    }
    let req = request(path, host, &headers);
    for winner_first in [true, false] {
        let mut w = winner.clone();
        let mut l = loser.clone();
        w.name = "winner".into();
        l.name = "loser".into();
        (w.id, l.id) = if winner_first { (0, 1) } else { (1, 0) };
        let t = RouteTable::build(vec![w, l]);
        assert_eq!(
            winner_of(&t, &req),
            "winner",
            "{} should beat {} for {path} (winner declared first: {winner_first})",
            winner.paths[0],
            loser.paths[0]
        );
    }
}

#[test]
fn rule_1_priority_first() {
    beats(r("/**").prio(10), r("/x"), "/x", None);
    beats(r("/x").prio(1), r("/x").host("a.com"), "/x", Some("a.com"));
    beats(r("/**"), r("/x").prio(-1), "/x", None);
    beats(r("/{*rest}").prio(1), r("/x").methods().headers(3).query(3), "/x", None);
}

#[test]
fn rule_2_host() {
    beats(r("/x").host("a.example.com"), r("/x").host("*.example.com"), "/x", Some("a.example.com"));
    beats(r("/x").host("*.example.com"), r("/x"), "/x", Some("a.example.com"));
    beats(r("/x").host("a.example.com"), r("/x"), "/x", Some("a.example.com"));
    beats(r("/x").host("*.b.example.com"), r("/x").host("*.example.com"), "/x", Some("a.b.example.com"));
    // Host comes before path: a host-specific catch-all beats a host-less exact path.
    beats(r("/**").host("a.com"), r("/x"), "/x", Some("a.com"));
}

#[test]
fn rule_3_path_literal_param_tail() {
    beats(r("/users/{id}"), r("/users/**"), "/users/42", None);
    beats(r("/users/{id}"), r("/users/{*rest}"), "/users/42", None);
    beats(r("/a/b/**"), r("/a/**"), "/a/b/c", None);
    beats(r("/a/b/**"), r("/a/{x}/c"), "/a/b/c", None);
    beats(r("/api/v1/**"), r("/api/{v}/users"), "/api/v1/users", None);
    beats(r("/a/b/{c}"), r("/a/{b}/c"), "/a/b/c", None);
    beats(r("/users/*/orders"), r("/users/**"), "/users/1/orders", None);
    beats(r("/{a}/{b}"), r("/{a}/**"), "/1/2", None);
    beats(r("/{tenant}/**"), r("/**"), "/acme/x", None);
}

#[test]
fn rule_3_exact_end_beats_tail() {
    beats(r("/users"), r("/users/**"), "/users", None);
    beats(r("/users/"), r("/users/**"), "/users/", None);
    beats(r("/a/{x}"), r("/a/{x}/**"), "/a/1", None);
    beats(r("/"), r("/**"), "/", None);
    beats(r("/files"), r("/files/{*rest}"), "/files", None);
}

#[test]
fn rule_3_regex_between_classes() {
    beats(r("regex:/.*"), r("/**"), "/x", None);
    beats(r("regex:/.*"), r("/{tenant}/**"), "/acme/x", None);
    beats(r("regex:/.*"), r("/{*rest}"), "/a", None);
    beats(r("regex:/.*"), r("/{a}/{b}"), "/a/b", None);
    beats(r("/x/**"), r("regex:/x/.*"), "/x/y", None);
    beats(r("/{a}/b"), r("regex:/.*"), "/x/b", None);
    beats(r("/{id}/"), r("regex:/.*"), "/x/", None);
    beats(r("/"), r("regex:/"), "/", None);
}

#[test]
fn rule_3_before_rule_4() {
    beats(r("/x"), r("/{p}").methods().headers(3).query(3), "/x", None);
    beats(r("/x/**"), r("regex:/x/.*").methods(), "/x/y", None);
}

#[test]
fn rule_4_methods_headers_query() {
    beats(r("/x").methods(), r("/x"), "/x", None);
    beats(r("/x").headers(2), r("/x").headers(1), "/x", None);
    beats(r("/x").headers(1), r("/x"), "/x", None);
    beats(r("/x").query(1), r("/x"), "/x", None);
    beats(r("/x").methods(), r("/x").headers(3), "/x", None);
    beats(r("/x").headers(1), r("/x").query(3), "/x", None);
    beats(r("regex:/x").methods(), r("regex:/x"), "/x", None);
    beats(r("/**").methods(), r("/**"), "/anything", None);
}

#[test]
fn rule_5_declaration_order() {
    let headers = HeaderMap::new();
    for (path, patterns) in [("/x", ["/x", "/x"]), ("/x/1", ["regex:/x/\\d", "regex:/x/.*"]), ("/a", ["/{p}", "/{q}"])]
    {
        let t = RouteTable::build(vec![route(0, "first", &[patterns[0]]), route(1, "second", &[patterns[1]])]);
        assert_eq!(winner_of(&t, &request(path, None, &headers)), "first", "{patterns:?}");
        let t = RouteTable::build(vec![route(0, "first", &[patterns[1]]), route(1, "second", &[patterns[0]])]);
        assert_eq!(winner_of(&t, &request(path, None, &headers)), "first", "{patterns:?} swapped");
    }
    // Within one route, its earlier pattern is reported.
    let t = RouteTable::build(vec![route(0, "one", &["/{a}", "/{b}"])]);
    match t.find(&get("/z")) {
        Lookup::Matched(m) => assert_eq!((m.pattern, m.param("/z", "a")), (0, Some("z"))),
        other => panic!("{other:?}"),
    }
}
