//! Randomized check that the index returns exactly what a linear scan would: random tables and
//! requests, with `find`, `explain` and 405 compared against a reference written independently of
//! the table code (its own path splitting, host, header and query matching, and its own statement
//! of the precedence rules). A fixed-seed xorshift keeps every run identical.

use std::cell::RefCell;
use std::cmp::{Ordering, Reverse};
use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use regex::Regex;

use crate::route::{
    EntryInfo, HeaderMatcher, HostPattern, Lookup, PathPattern, QueryMatcher, RequestView, RouteSpec, RouteTable,
    ValueMatch,
};

thread_local! {
    static ANCHORED: RefCell<HashMap<String, Regex>> = RefCell::new(HashMap::new());
}

/// The reference compiles each regex source once; debug-build regex compilation would otherwise
/// dominate the run time.
fn anchored(source: &str) -> Regex {
    ANCHORED.with_borrow_mut(|cache| {
        cache.entry(source.to_string()).or_insert_with(|| Regex::new(&format!("^(?:{source})$")).unwrap()).clone()
    })
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
    fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())].clone()
    }
}

const REGEXES: [&str; 7] = [
    "/a/.*",
    "/[ab]/[^/]+",
    "/.*",
    "/(?<x>[a-c])/(?<y>[^/]*)",
    "/c(/.*)?",
    "/b/(?<n>[a-z]+)/?",
    "/(?<first>[^/]+)(?:/(?<second>[^/]+))?",
];
const HOST_PATTERNS: [&str; 5] = ["a.com", "b.a.com", "*.a.com", "*.b.a.com", "c.org"];
const REQUEST_HOSTS: [Option<&str>; 7] =
    [None, Some("a.com"), Some("b.a.com"), Some("x.b.a.com"), Some("x.a.com"), Some("c.org"), Some("a.c.org")];
const METHODS: [Method; 5] = [Method::GET, Method::POST, Method::PUT, Method::DELETE, Method::PATCH];
const VALUES: [&str; 3] = ["1", "2", "12"];

#[derive(Debug, Clone)]
enum Kind {
    Exact(&'static str),
    Prefix(&'static str),
    Regex(&'static str),
    Present,
    Absent,
}

impl Kind {
    fn random(rng: &mut Rng) -> Kind {
        match rng.below(5) {
            0 => Kind::Exact(rng.pick(&VALUES)),
            1 => Kind::Prefix(rng.pick(&["1", "2"])),
            2 => Kind::Regex(rng.pick(&["[12]", "1|12", "2.*"])),
            3 => Kind::Present,
            _ => Kind::Absent,
        }
    }

    fn to_value_match(&self) -> ValueMatch {
        match self {
            Kind::Exact(v) => ValueMatch::Exact(v.to_string()),
            Kind::Prefix(v) => ValueMatch::Prefix(v.to_string()),
            Kind::Regex(r) => ValueMatch::Regex(Regex::new(r).unwrap()),
            Kind::Present => ValueMatch::Present,
            Kind::Absent => ValueMatch::Absent,
        }
    }

    fn holds(&self, values: &[String]) -> bool {
        match self {
            Kind::Absent => values.is_empty(),
            Kind::Present => !values.is_empty(),
            Kind::Exact(e) => values.iter().any(|v| v == e),
            Kind::Prefix(p) => values.iter().any(|v| v.starts_with(p)),
            Kind::Regex(r) => {
                let re = anchored(r);
                values.iter().any(|v| re.is_match(v))
            }
        }
    }
}

/// The generator's own record of a route, which the reference reads instead of the table.
#[derive(Debug, Clone)]
struct Gen {
    priority: i32,
    hosts: Vec<&'static str>,
    /// Pattern text; regexes as `regex:<source>`.
    paths: Vec<String>,
    methods: Option<Vec<Method>>,
    headers: Vec<(&'static str, Kind)>,
    query: Vec<(&'static str, Kind)>,
}

fn literal(rng: &mut Rng, alphabet: usize) -> String {
    ((b'a' + rng.below(alphabet) as u8) as char).to_string()
}

fn random_path(rng: &mut Rng, alphabet: usize) -> String {
    if rng.chance(10) {
        return format!("regex:{}", rng.pick(&REGEXES));
    }
    let mut text = String::new();
    for i in 0..rng.below(4) {
        text.push('/');
        match rng.below(20) {
            0..=10 => text.push_str(&literal(rng, alphabet)),
            11..=16 => text.push_str(&format!("{{p{i}}}")),
            _ => text.push('*'),
        }
    }
    match rng.below(4) {
        0 => text.push_str("/**"),
        1 => text.push_str("/{*rest}"),
        _ if rng.chance(15) || text.is_empty() => text.push('/'),
        _ => {}
    }
    text
}

fn random_route(rng: &mut Rng, alphabet: usize) -> Gen {
    let hosts =
        if rng.chance(60) { Vec::new() } else { (0..1 + rng.below(2)).map(|_| rng.pick(&HOST_PATTERNS)).collect() };
    let methods = rng.chance(40).then(|| {
        let mut m: Vec<Method> = METHODS[..4].iter().filter(|_| rng.chance(40)).cloned().collect();
        if m.is_empty() {
            m.push(Method::GET);
        }
        m
    });
    Gen {
        priority: rng.pick(&[-1, 0, 0, 0, 0, 0, 1]),
        hosts,
        paths: (0..1 + rng.below(3)).map(|_| random_path(rng, alphabet)).collect(),
        methods,
        headers: (0..rng.below(3)).map(|_| (rng.pick(&["x-a", "x-b"]), Kind::random(rng))).collect(),
        query: (0..rng.below(3)).map(|_| (rng.pick(&["qa", "qb"]), Kind::random(rng))).collect(),
    }
}

fn to_spec(id: u32, g: &Gen) -> RouteSpec {
    RouteSpec {
        id,
        name: Arc::from(format!("r{id}")),
        priority: g.priority,
        hosts: g.hosts.iter().map(|h| HostPattern::parse(h).unwrap()).collect(),
        paths: g
            .paths
            .iter()
            .map(|p| match p.strip_prefix("regex:") {
                Some(re) => PathPattern::regex(re).unwrap(),
                None => PathPattern::parse(p).unwrap(),
            })
            .collect(),
        methods: g.methods.clone(),
        headers: g
            .headers
            .iter()
            .map(|(n, k)| HeaderMatcher { name: HeaderName::from_static(n), kind: k.to_value_match() })
            .collect(),
        query: g.query.iter().map(|(n, k)| QueryMatcher { name: n.to_string(), kind: k.to_value_match() }).collect(),
    }
}

struct Req {
    method: Method,
    host: Option<&'static str>,
    path: String,
    query: Option<String>,
    headers: HeaderMap,
}

fn random_request(rng: &mut Rng, alphabet: usize) -> Req {
    let mut path = String::new();
    for _ in 0..rng.below(5) {
        path.push('/');
        path.push_str(&if rng.chance(10) { "zz".to_string() } else { literal(rng, alphabet) });
    }
    if path.is_empty() || rng.chance(15) {
        path.push('/');
    }
    let mut headers = HeaderMap::new();
    for name in ["x-a", "x-b"] {
        for _ in 0..rng.below(3) {
            headers.append(HeaderName::from_static(name), HeaderValue::from_static(rng.pick(&VALUES)));
        }
    }
    let pairs: Vec<String> = (0..rng.below(4))
        .map(|_| {
            let name = rng.pick(&["qa", "qb", "q%61", "qc"]);
            let value = rng.pick(&["1", "2", "12", "%31", "%312", "1+"]);
            if rng.chance(15) { name.to_string() } else { format!("{name}={value}") }
        })
        .collect();
    Req {
        method: rng.pick(&METHODS),
        host: rng.pick(&REQUEST_HOSTS),
        path,
        query: (!pairs.is_empty() || rng.chance(50)).then(|| pairs.join("&")),
        headers,
    }
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() && bytes[i + 1..i + 3].iter().all(u8::is_ascii_hexdigit) => {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

fn header_values(req: &Req, name: &str) -> Vec<String> {
    req.headers.get_all(name).iter().map(|v| v.to_str().unwrap().to_string()).collect()
}

fn query_values(req: &Req, name: &str) -> Vec<String> {
    let query = req.query.as_deref().unwrap_or("");
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .filter(|(n, _)| decode(n) == name)
        .map(|(_, v)| decode(v))
        .collect()
}

/// Captured params if `pattern` matches `path`, by splitting both on `/`.
fn path_match(pattern: &str, path: &str) -> Option<Vec<(String, String)>> {
    if let Some(source) = pattern.strip_prefix("regex:") {
        let re = anchored(source);
        let caps = re.captures(path)?;
        return Some(
            re.capture_names()
                .flatten()
                .filter_map(|n| caps.name(n).map(|m| (n.to_string(), m.as_str().to_string())))
                .collect(),
        );
    }
    let request: Vec<&str> = path.strip_prefix('/')?.split('/').collect();
    let mut body: Vec<&str> = pattern[1..].split('/').collect();
    let tail = match body.last() {
        Some(&last) if last == "**" || last.starts_with("{*") => body.pop(),
        _ => None,
    };
    let mut params = Vec::new();
    for (i, p) in body.iter().enumerate() {
        let r = request.get(i)?;
        if *p == "*" || p.starts_with('{') {
            if r.is_empty() {
                return None;
            }
            if p.starts_with('{') {
                params.push((p[1..p.len() - 1].to_string(), r.to_string()));
            }
        } else if p != r {
            return None;
        }
    }
    match tail {
        None => (request.len() == body.len()).then_some(params),
        Some(t) => {
            let rest = if request.len() > body.len() { request[body.len()..].join("/") } else { String::new() };
            if t != "**" {
                params.push((t[2..t.len() - 1].to_string(), rest));
            }
            Some(params)
        }
    }
}

fn host_match(pattern: Option<&str>, host: Option<&str>) -> bool {
    match (pattern, host) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(p), Some(h)) => match p.strip_prefix('*') {
            Some(suffix) => h.len() > suffix.len() && h.ends_with(suffix),
            None => h == p,
        },
    }
}

/// The precedence rules restated over pattern text.
fn reference_order(a: &EntryInfo<'_>, b: &EntryInfo<'_>, gens: &[Gen]) -> Ordering {
    fn host_key(h: Option<&HostPattern>) -> (u8, Reverse<usize>) {
        match h.map(|h| h.to_string()) {
            None => (2, Reverse(0)),
            Some(s) if s.starts_with('*') => (1, Reverse(s.matches('.').count())),
            Some(_) => (0, Reverse(0)),
        }
    }
    /// Regexes all get the same key: they tie on the path rule whatever their text.
    fn path_key(p: &str) -> (u8, Vec<u8>, Reverse<usize>) {
        if p.starts_with("regex:") {
            return (1, Vec::new(), Reverse(0));
        }
        let mut segments: Vec<&str> = p[1..].split('/').collect();
        let tail = segments.last().is_some_and(|l| *l == "**" || l.starts_with("{*"));
        if tail {
            segments.pop();
        }
        let is_literal = |s: &&str| *s != "*" && !s.starts_with('{');
        let class = if segments.iter().any(is_literal) { 0 } else { 2 };
        let mut tokens: Vec<u8> = segments.iter().map(|s| if is_literal(s) { 1 } else { 2 }).collect();
        tokens.push(if tail { 3 } else { 0 });
        let literal_len = segments.iter().filter(|s| is_literal(s)).map(|s| s.len()).sum();
        (class, tokens, Reverse(literal_len))
    }
    let (ga, gb) = (&gens[a.route as usize], &gens[b.route as usize]);
    let key = |e: &EntryInfo<'_>, g: &Gen| {
        (
            Reverse(g.priority),
            host_key(e.host),
            path_key(e.pattern.as_str()),
            Reverse(g.methods.is_some()),
            Reverse(g.headers.len()),
            Reverse(g.query.len()),
            e.route,
        )
    };
    key(a, ga).cmp(&key(b, gb))
}

#[test]
fn index_agrees_with_linear_reference() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut lookups = 0;
    let mut matched = 0;
    let mut not_allowed = 0;
    for round in 0..300 {
        let alphabet = if round % 3 == 0 { 12 } else { 3 };
        let gens: Vec<Gen> = (0..1 + rng.below(40)).map(|_| random_route(&mut rng, alphabet)).collect();
        let specs: Vec<RouteSpec> = gens.iter().enumerate().map(|(i, g)| to_spec(i as u32, g)).collect();
        let table = RouteTable::build(specs);
        let entries: Vec<EntryInfo<'_>> = table.entries().collect();

        for pair in entries.windows(2) {
            assert_ne!(reference_order(&pair[0], &pair[1], &gens), Ordering::Greater, "{pair:#?}");
        }
        for (i, a) in entries.iter().enumerate().step_by(7) {
            for b in &entries[i + 1..] {
                assert_ne!(reference_order(a, b, &gens), Ordering::Greater, "{a:#?} {b:#?}");
            }
        }

        for _ in 0..20 {
            let req = random_request(&mut rng, alphabet);
            let view = RequestView {
                method: &req.method,
                host: req.host,
                path: &req.path,
                query: req.query.as_deref(),
                headers: &req.headers,
            };
            let mut expected = None;
            let mut allow: Vec<Method> = Vec::new();
            for e in &entries {
                let g = &gens[e.route as usize];
                let host = e.host.map(|h| h.to_string());
                let Some(params) = path_match(&g.paths[usize::from(e.pattern_index)], &req.path) else {
                    continue;
                };
                if !host_match(host.as_deref(), req.host) {
                    continue;
                }
                let rest_ok = g.headers.iter().all(|(n, k)| k.holds(&header_values(&req, n)))
                    && g.query.iter().all(|(n, k)| k.holds(&query_values(&req, n)));
                let method_ok = g.methods.as_ref().is_none_or(|m| m.contains(&req.method));
                if rest_ok && method_ok {
                    expected = Some((e.route, e.pattern_index, params));
                    break;
                }
                if rest_ok {
                    allow.extend(g.methods.iter().flatten().cloned());
                }
            }
            lookups += 1;
            let context =
                || format!("round {round}: {} {:?} {} ?{:?}\n{gens:#?}", req.method, req.host, req.path, req.query);
            let explained = table.explain(&view).winner;
            match (table.find(&view), expected) {
                (Lookup::Matched(m), Some((route, pattern, params))) => {
                    matched += 1;
                    assert_eq!((m.route, m.pattern), (route, pattern), "{}", context());
                    let got: Vec<(String, String)> =
                        m.params(&req.path).map(|(n, v)| (n.to_string(), v.to_string())).collect();
                    assert_eq!(got, params, "{}", context());
                    assert_eq!(explained, Some((route, pattern)), "{}", context());
                }
                (Lookup::MethodNotAllowed { allow: got }, None) => {
                    not_allowed += 1;
                    allow.sort_by(|a, b| a.as_str().cmp(b.as_str()));
                    allow.dedup();
                    assert_eq!(got, allow, "{}", context());
                    assert_eq!(explained, None);
                }
                (Lookup::NotFound, None) => {
                    assert!(allow.is_empty(), "expected 405 {allow:?}: {}", context());
                    assert_eq!(explained, None);
                }
                (got, expected) => panic!("got {got:?}, expected {expected:?}: {}", context()),
            }
        }
    }
    assert_eq!(lookups, 6000);
    // The generator must exercise every outcome, not just misses.
    assert!(matched > 1500, "{matched}");
    assert!(not_allowed > 100, "{not_allowed}");
}
