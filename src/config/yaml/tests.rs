use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Instant;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use super::{Node, ScalarKind, Value, from_node, from_node_all};
use crate::config::error::{Diagnostic, Span};

fn no_vars(_: &str) -> Option<String> {
    None
}

fn parse(text: &str) -> Node {
    match Node::parse(text, &no_vars) {
        Ok(node) => node,
        Err(diags) => panic!("unexpected parse errors: {diags:#?}"),
    }
}

fn parse_err(text: &str) -> Vec<Diagnostic> {
    match Node::parse(text, &no_vars) {
        Ok(node) => panic!("expected parse errors, got {node:#?}"),
        Err(diags) => diags,
    }
}

fn at(line: u32, col: u32) -> Option<Span> {
    Some(Span { line, col })
}

fn kind(node: &Node, path: &str) -> ScalarKind {
    match node.at_path(path).map(|n| &n.value) {
        Some(Value::Scalar(s)) => s.kind,
        other => panic!("no scalar at {path}: {other:?}"),
    }
}

fn text<'a>(node: &'a Node, path: &str) -> &'a str {
    node.at_path(path).and_then(Node::as_str).unwrap_or_else(|| panic!("no scalar at {path}"))
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct Config {
    listen: Option<String>,
    workers: Option<u32>,
    #[serde(default)]
    routes: Vec<Route>,
    #[serde(default)]
    upstreams: BTreeMap<String, Upstream>,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct Route {
    #[serde(rename = "match")]
    matcher: Match,
    upstream: String,
    #[serde(default)]
    filters: Vec<Filter>,
    timeout: Option<Duration>,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct Match {
    path: String,
    #[serde(default)]
    methods: Vec<String>,
    host: Option<String>,
    #[serde(default)]
    headers: HashMap<String, String>,
    #[serde(default)]
    query: HashMap<String, String>,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
enum Filter {
    RequestHeaders(HeaderOps),
    StripPrefix { prefix: String },
    Compress,
    RateLimit(u32, u32),
}

#[derive(Debug, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
struct HeaderOps {
    set: BTreeMap<String, String>,
    remove: Vec<String>,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct Upstream {
    endpoints: Vec<Endpoint>,
    #[serde(default)]
    balance: Balance,
}

#[derive(Debug, Deserialize, PartialEq, Default)]
#[serde(rename_all = "snake_case")]
enum Balance {
    #[default]
    RoundRobin,
    LeastConn,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(untagged)]
enum Endpoint {
    Addr(String),
    Full { addr: String, weight: u32 },
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum Auth {
    Jwt { secret: String },
    Basic { users: Vec<String> },
    Off,
}

#[derive(Debug, PartialEq)]
struct Duration(u64);

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as 5s")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Duration, E> {
                let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
                let n: Option<u64> = s[..split].parse().ok();
                let scale = match &s[split..] {
                    "ms" => Some(1),
                    "s" => Some(1000),
                    "m" => Some(60_000),
                    "h" => Some(3_600_000),
                    "d" => Some(86_400_000),
                    _ => None,
                };
                match (n, scale) {
                    (Some(n), Some(scale)) => Ok(Duration(n * scale)),
                    _ => Err(E::custom(format!(
                        "invalid duration {s:?}: expected a number followed by ms, s, m, h or d"
                    ))),
                }
            }
        }
        d.deserialize_str(V)
    }
}

/// Validates after a successful `deserialize_str`, so its error leaves the deserializer unlocated.
#[derive(Debug, PartialEq)]
struct Upper(String);

impl<'de> Deserialize<'de> for Upper {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.chars().any(|c| c.is_ascii_lowercase()) {
            return Err(de::Error::custom(format!("{s:?} must be upper case")));
        }
        Ok(Upper(s))
    }
}

/// Accepts a single string or a list of strings, through `deserialize_any`.
#[derive(Debug, PartialEq)]
struct OneOrMany(Vec<String>);

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a list of strings")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany(vec![s.to_owned()]))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<OneOrMany, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element()? {
                    out.push(s);
                }
                Ok(OneOrMany(out))
            }
        }
        d.deserialize_any(V)
    }
}

const CONFIG: &str = r#"
listen: "0.0.0.0:8080"
workers: 4
routes:
  - match:
      path: /users
      methods: [GET, POST]
      headers: {x-tenant: acme}
    upstream: users
    timeout: 5s
    filters:
      - request_headers: {set: {x-a: "1"}, remove: [cookie]}
      - strip_prefix: {prefix: /users}
      - compress
      - rate_limit: [10, 20]
upstreams:
  users:
    endpoints:
      - "10.0.0.1:80"
      - {addr: "10.0.0.2:80", weight: 3}
    balance: least_conn
"#;

fn expected_config() -> Config {
    Config {
        listen: Some("0.0.0.0:8080".into()),
        workers: Some(4),
        routes: vec![Route {
            matcher: Match {
                path: "/users".into(),
                methods: vec!["GET".into(), "POST".into()],
                host: None,
                headers: HashMap::from([("x-tenant".into(), "acme".into())]),
                query: HashMap::new(),
            },
            upstream: "users".into(),
            filters: vec![
                Filter::RequestHeaders(HeaderOps {
                    set: BTreeMap::from([("x-a".into(), "1".into())]),
                    remove: vec!["cookie".into()],
                }),
                Filter::StripPrefix { prefix: "/users".into() },
                Filter::Compress,
                Filter::RateLimit(10, 20),
            ],
            timeout: Some(Duration(5000)),
        }],
        upstreams: BTreeMap::from([(
            "users".into(),
            Upstream {
                endpoints: vec![
                    Endpoint::Addr("10.0.0.1:80".into()),
                    Endpoint::Full { addr: "10.0.0.2:80".into(), weight: 3 },
                ],
                balance: Balance::LeastConn,
            },
        )]),
    }
}

#[test]
fn full_config_deserializes() {
    let node = parse(CONFIG);
    assert_eq!(from_node::<Config>(&node).unwrap(), expected_config());
    assert_eq!(from_node_all::<Config>(&node).unwrap(), expected_config());
}

#[test]
fn json_input_is_accepted() {
    let json = r#"{"listen": "0.0.0.0:8080", "workers": 4, "routes": [{"match": {"path": "/users",
        "methods": ["GET", "POST"], "headers": {"x-tenant": "acme"}}, "upstream": "users", "timeout": "5s",
        "filters": [{"request_headers": {"set": {"x-a": "1"}, "remove": ["cookie"]}},
        {"strip_prefix": {"prefix": "/users"}}, "compress", {"rate_limit": [10, 20]}]}],
        "upstreams": {"users": {"endpoints": ["10.0.0.1:80", {"addr": "10.0.0.2:80", "weight": 3}],
        "balance": "least_conn"}}}"#;
    let node = parse(json);
    assert_eq!(from_node::<Config>(&node).unwrap(), expected_config());
    assert_eq!(text(&node, "routes[0].match.path"), "/users");
}

#[test]
fn deserialize_any_gives_resolved_types() {
    let node = parse("a: 1\nb: [true, null, 1.5, x, \"2\"]\nc: -3\nd: {e: ~}\n");
    let v: serde_json::Value = from_node(&node).unwrap();
    assert_eq!(v, serde_json::json!({"a": 1, "b": [true, null, 1.5, "x", "2"], "c": -3, "d": {"e": null}}));
}

#[test]
fn core_schema_resolution() {
    let node = parse(
        "n1: null\nn2: ~\nn3:\nn4: NULL\nb1: true\nb2: True\nb3: FALSE\ni1: 42\ni2: -7\ni3: 0x1F\n\
         i4: 0o17\ni5: +3\nf1: 1.5\nf2: .inf\nf3: -.Inf\nf4: .nan\nf5: 1e3\nf6: .5\ns1: \"5\"\ns2: '1.0'\n\
         s3: |\n  12\ns4: yes\ns5: 0x\ns6: 1_000\ns7: 99999999999999999999999999999999999999999\n",
    );
    for p in ["n1", "n2", "n3", "n4"] {
        assert_eq!(kind(&node, p), ScalarKind::Null, "{p}");
    }
    assert_eq!(kind(&node, "b1"), ScalarKind::Bool(true));
    assert_eq!(kind(&node, "b2"), ScalarKind::Bool(true));
    assert_eq!(kind(&node, "b3"), ScalarKind::Bool(false));
    assert_eq!(kind(&node, "i1"), ScalarKind::Int(42));
    assert_eq!(kind(&node, "i2"), ScalarKind::Int(-7));
    assert_eq!(kind(&node, "i3"), ScalarKind::Int(31));
    assert_eq!(kind(&node, "i4"), ScalarKind::Int(15));
    assert_eq!(kind(&node, "i5"), ScalarKind::Int(3));
    assert_eq!(kind(&node, "f1"), ScalarKind::Float(1.5));
    assert_eq!(kind(&node, "f2"), ScalarKind::Float(f64::INFINITY));
    assert_eq!(kind(&node, "f3"), ScalarKind::Float(f64::NEG_INFINITY));
    assert!(matches!(kind(&node, "f4"), ScalarKind::Float(f) if f.is_nan()));
    assert_eq!(kind(&node, "f5"), ScalarKind::Float(1000.0));
    assert_eq!(kind(&node, "f6"), ScalarKind::Float(0.5));
    for p in ["s1", "s2", "s3", "s4", "s5", "s6", "s7"] {
        assert_eq!(kind(&node, p), ScalarKind::Str, "{p}");
    }
    assert_eq!(text(&node, "s3"), "12\n");
}

#[test]
fn lenient_scalars() {
    #[derive(Deserialize)]
    struct T {
        version: String,
        port: String,
        count: u32,
        ratio: f64,
        flag: bool,
        hex: String,
        big: i128,
        letter: char,
    }
    let node =
        parse("version: 1.0\nport: 8080\ncount: \"5\"\nratio: '0.25'\nflag: 'true'\nhex: 0x10\nbig: -1\nletter: x\n");
    let t: T = from_node(&node).unwrap();
    assert_eq!((t.version.as_str(), t.port.as_str(), t.count), ("1.0", "8080", 5));
    assert_eq!((t.ratio, t.flag, t.hex.as_str(), t.big, t.letter), (0.25, true, "0x10", -1, 'x'));
}

#[test]
fn wrong_types_and_overflow_are_errors_at_the_value() {
    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct T {
        port: Option<u16>,
        name: Option<String>,
        n: Option<u8>,
    }
    let e = from_node::<T>(&parse("port: 70000\n")).unwrap_err();
    assert_eq!((e.path.as_str(), e.span), ("port", at(1, 7)));
    assert_eq!(e.message, "70000 is out of range for u16 (allowed: 0 to 65535)");
    let e = from_node::<T>(&parse("n: -1\n")).unwrap_err();
    assert!(e.message.contains("out of range for u8"), "{e}");
    let e = from_node::<T>(&parse("n: 99999999999999999999999999999999999999999\n")).unwrap_err();
    assert!(e.message.contains("out of range"), "{e}");
    let e = from_node::<T>(&parse("port: abc\n")).unwrap_err();
    assert_eq!(e.message, "invalid type: string \"abc\", expected u16");
    let e = from_node::<T>(&parse("port: 1.5\n")).unwrap_err();
    assert!(e.message.starts_with("invalid type: floating point"), "{e}");
    let e = from_node::<T>(&parse("name: [a]\n")).unwrap_err();
    assert_eq!((e.message.as_str(), e.span), ("invalid type: sequence, expected a string", at(1, 7)));
    let e = from_node::<Route>(&parse("- a\n")).unwrap_err();
    assert_eq!((e.path.as_str(), e.message.as_str()), ("", "invalid type: sequence, expected struct Route"));
}

#[test]
fn option_null_and_missing_are_none() {
    #[derive(Deserialize)]
    struct T {
        a: Option<u32>,
        b: Option<u32>,
        c: Option<u32>,
    }
    let t: T = from_node(&parse("a: ~\nc: 3\n")).unwrap();
    assert_eq!((t.a, t.b, t.c), (None, None, Some(3)));
}

#[test]
fn unknown_field_is_located_at_the_key() {
    let node = parse("routes:\n  - match:\n      path: /a\n      pth: /b\n    upstream: u\n");
    let e = from_node::<Config>(&node).unwrap_err();
    assert_eq!(e.path, "routes[0].match.pth");
    assert_eq!(e.span, at(4, 7));
    assert_eq!(e.message, r#"unknown field "pth", expected one of "path", "methods", "host", "headers", "query""#);
    assert_eq!(node.key_span("routes"), at(1, 1));
}

#[test]
fn missing_field_is_located_at_the_map() {
    let node = parse("routes:\n  - upstream: u\n    timeout: 1s\n");
    let e = from_node::<Config>(&node).unwrap_err();
    assert_eq!((e.path.as_str(), e.span, e.message.as_str()), ("routes[0]", at(2, 5), "missing field \"match\""));
}

#[test]
fn custom_errors_are_located_at_the_node() {
    let node = parse("routes:\n  - match: {path: /a}\n    upstream: u\n    timeout: 5x\n");
    let e = from_node::<Config>(&node).unwrap_err();
    assert_eq!(e.path, "routes[0].timeout");
    assert_eq!(e.span, at(4, 14));
    assert_eq!(e.message, "invalid duration \"5x\": expected a number followed by ms, s, m, h or d");

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct T {
        codes: Vec<Upper>,
    }
    let e = from_node::<T>(&parse("codes:\n  - AB\n  - cd\n")).unwrap_err();
    assert_eq!((e.path.as_str(), e.span, e.message.as_str()), ("codes[1]", at(3, 5), "\"cd\" must be upper case"));
}

#[test]
fn deserialize_any_custom_impl() {
    #[derive(Deserialize)]
    struct T {
        a: OneOrMany,
        b: OneOrMany,
    }
    let t: T = from_node(&parse("a: x\nb: [y, z]\n")).unwrap();
    assert_eq!((t.a.0, t.b.0), (vec!["x".to_owned()], vec!["y".to_owned(), "z".to_owned()]));
}

#[test]
fn externally_tagged_enums() {
    let filters: Vec<Filter> = from_node(&parse("- compress\n- compress: ~\n- strip_prefix: {prefix: /x}\n")).unwrap();
    assert_eq!(filters, vec![Filter::Compress, Filter::Compress, Filter::StripPrefix { prefix: "/x".into() }]);

    let e = from_node::<Vec<Filter>>(&parse("- compress\n- gzip: {}\n")).unwrap_err();
    assert_eq!((e.path.as_str(), e.span), ("[1].gzip", at(2, 3)));
    assert!(e.message.starts_with("unknown variant \"gzip\", expected one of \"request_headers\""), "{e}");

    let e = from_node::<Vec<Filter>>(&parse("- {compress: ~, strip_prefix: {prefix: /}}\n")).unwrap_err();
    assert!(e.message.contains("exactly one key"), "{e}");
    let e = from_node::<Vec<Filter>>(&parse("- strip_prefix\n")).unwrap_err();
    assert!(e.message.starts_with("invalid type: unit variant"), "{e}");
    let e = from_node::<Vec<Filter>>(&parse("- request_headers: {sett: {}}\n")).unwrap_err();
    assert_eq!((e.path.as_str(), e.span), ("[0].request_headers.sett", at(1, 21)));
    let e = from_node::<Balance>(&parse("fastest")).unwrap_err();
    assert_eq!(e.message, "unknown variant \"fastest\", expected one of \"round_robin\", \"least_conn\"");
}

#[test]
fn untagged_and_internally_tagged_enums() {
    let eps: Vec<Endpoint> = from_node(&parse("- a:1\n- {addr: b, weight: 2}\n")).unwrap();
    assert_eq!(eps, vec![Endpoint::Addr("a:1".into()), Endpoint::Full { addr: "b".into(), weight: 2 }]);
    let e = from_node::<Vec<Endpoint>>(&parse("- a\n- [1]\n")).unwrap_err();
    assert_eq!((e.path.as_str(), e.span), ("[1]", at(2, 3)));
    assert!(e.message.contains("untagged enum Endpoint"), "{e}");

    let auth: Vec<Auth> =
        from_node(&parse("- {type: jwt, secret: s}\n- {type: basic, users: [a]}\n- type: off\n")).unwrap();
    assert_eq!(auth, vec![Auth::Jwt { secret: "s".into() }, Auth::Basic { users: vec!["a".into()] }, Auth::Off]);
    let e = from_node::<Auth>(&parse("type: jwt\nsecret: s\nextra: 1\n")).unwrap_err();
    assert_eq!((e.path.as_str(), e.span), ("extra", at(3, 1)));
    let e = from_node::<Auth>(&parse("type: saml\n")).unwrap_err();
    assert!(e.message.starts_with("unknown variant \"saml\""), "{e}");
}

#[test]
fn newtype_tuple_transparent_and_maps() {
    #[derive(Debug, Deserialize, PartialEq)]
    struct Name(String);
    #[derive(Debug, Deserialize, PartialEq)]
    struct Pair(u8, String);
    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(transparent)]
    struct Port(u16);
    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "kebab-case")]
    struct T {
        name: Name,
        pair: Pair,
        port: Port,
        by_code: HashMap<u16, String>,
        max_body_size: u64,
        unit: (),
    }
    let t: T =
        from_node(&parse("name: n\npair: [1, x]\nport: 80\nby-code: {404: nf}\nmax-body-size: 10\nunit: ~\n")).unwrap();
    assert_eq!(t.name, Name("n".into()));
    assert_eq!(t.pair, Pair(1, "x".into()));
    assert_eq!(t.port, Port(80));
    assert_eq!(t.by_code, HashMap::from([(404, "nf".into())]));
    assert_eq!(t.max_body_size, 10);
    let e = from_node::<Pair>(&parse("[1, x, y]")).unwrap_err();
    assert!(e.message.contains("too many elements"), "{e}");
    let e = from_node::<HashMap<u16, String>>(&parse("a: 1\n")).unwrap_err();
    assert_eq!((e.path.as_str(), e.span), ("a", at(1, 1)));
}

#[test]
fn from_node_all_reports_independent_errors_in_order() {
    let text = "routes:\n  - match: {path: /a, pth: x}\n    upstream: u\n  - match: {path: /b}\n    upstream: u\n\
                \x20 - match: {path: /c}\n    upstream: u\n  - match: {path: /d}\n    upstream: u\n    timeout: 5x\n";
    let node = parse(text);
    let diags = from_node_all::<Config>(&node).unwrap_err();
    let got: Vec<(&str, Option<Span>)> = diags.iter().map(|d| (d.path.as_str(), d.span)).collect();
    assert_eq!(got, vec![("routes[0].match.pth", at(2, 23)), ("routes[3].timeout", at(10, 14))]);
    // from_node stops at the first one.
    assert_eq!(from_node::<Config>(&node).unwrap_err(), diags[0]);
}

#[test]
fn from_node_all_many_kinds() {
    let text = r#"
routes:
  - match: {path: /a}
    upstream: users
  - match:
      pth: /b
    upstream: users
  - match: {path: /c}
    upstream: users
    timeout: 5x
  - match: {path: /d}
  - match: {path: /e}
    upstream: users
    filters:
      - request_headers: {set: {x-a: "1"}, bogus: 1}
upstreams:
  users:
    endpoints: ["10.0.0.1:80", {addr: "10.0.0.2:80", weight: x}]
    balance: fastest
bogus_top: 1
"#;
    let diags = from_node_all::<Config>(&parse(text)).unwrap_err();
    let got: Vec<&str> = diags.iter().map(|d| d.path.as_str()).collect();
    assert_eq!(
        got,
        vec![
            "routes[1].match.pth",
            "routes[1].match",
            "routes[2].timeout",
            "routes[3]",
            "routes[4].filters[0].request_headers.bogus",
            "upstreams.users.endpoints[1]",
            "upstreams.users.balance",
            "bogus_top",
        ],
        "{diags:#?}"
    );
    assert_eq!(diags[1].message, "missing field \"path\"");
    assert_eq!(diags[3].message, "missing field \"upstream\"");
}

#[test]
fn from_node_all_suppresses_consequences_of_removal() {
    let text = "routes:\n  - match: {path: [1]}\n    upstream: u\n  - match: {path: /b}\n";
    let diags = from_node_all::<Config>(&parse(text)).unwrap_err();
    let got: Vec<(&str, &str)> = diags.iter().map(|d| (d.path.as_str(), d.message.as_str())).collect();
    assert_eq!(
        got,
        vec![
            ("routes[0].match.path", "invalid type: sequence, expected a string"),
            ("routes[1]", "missing field \"upstream\""),
        ]
    );
    // An error at the root cannot be recovered from, but is still reported once.
    let diags = from_node_all::<Config>(&parse("[1, 2]")).unwrap_err();
    assert_eq!(diags.len(), 1);
}

#[test]
fn interpolation() {
    let vars = |name: &str| match name {
        "WORKERS" => Some("8".to_owned()),
        "PORT" => Some("9090".to_owned()),
        "EMPTY" => Some(String::new()),
        "FLAG" => Some("true".to_owned()),
        _ => None,
    };
    let node = Node::parse(
        "workers: ${WORKERS:-2}\ndef: ${NOPE:-2}\nlisten: \"${HOST:-0.0.0.0}:${PORT}\"\nq: \"${WORKERS}\"\n\
         esc: $${HOME} costs $5 $$\nempty: ${EMPTY}\nempty_def: ${EMPTY:-d}\nflag: ${FLAG}\n${KEY}: k\n\
         block: |\n  port=${PORT}\n",
        &vars,
    )
    .unwrap();
    assert_eq!(kind(&node, "workers"), ScalarKind::Int(8));
    assert_eq!(kind(&node, "def"), ScalarKind::Int(2));
    assert_eq!(text(&node, "listen"), "0.0.0.0:9090");
    assert_eq!((text(&node, "q"), kind(&node, "q")), ("8", ScalarKind::Str));
    assert_eq!(text(&node, "esc"), "${HOME} costs $5 $$");
    assert_eq!(kind(&node, "empty"), ScalarKind::Null);
    assert_eq!(text(&node, "empty_def"), "d");
    assert_eq!(kind(&node, "flag"), ScalarKind::Bool(true));
    assert_eq!(text(&node, "${KEY}"), "k");
    assert_eq!(text(&node, "block"), "port=9090\n");
    #[derive(Deserialize)]
    struct W {
        workers: u32,
    }
    let w: W = from_node(&Node::parse("workers: ${WORKERS:-2}\n", &vars).unwrap()).unwrap();
    assert_eq!(w.workers, 8);
}

#[test]
fn interpolation_errors_are_all_reported() {
    let diags = parse_err("a: ${MISSING}\nb:\n  - \"x ${ALSO} ${AND_THIS}\"\nc: ${bad-name}\nd: ${OPEN\n");
    let got: Vec<(&str, Option<Span>)> = diags.iter().map(|d| (d.path.as_str(), d.span)).collect();
    assert_eq!(got, vec![("a", at(1, 4)), ("b[0]", at(3, 5)), ("b[0]", at(3, 5)), ("c", at(4, 4)), ("d", at(5, 4))]);
    assert_eq!(
        diags[0].message,
        "environment variable MISSING is not set (write ${MISSING:-default} to give a default)"
    );
    assert!(diags[2].message.contains("AND_THIS"));
    assert!(diags[3].message.starts_with("invalid variable name"));
    assert!(diags[4].message.starts_with("unterminated"));
    // A syntax error wins: it is reported alone.
    let diags = parse_err("a: ${MISSING}\nb: [1\n");
    assert_eq!(diags.len(), 1);
    assert!(diags[0].message.starts_with("invalid YAML"));
}

#[test]
fn syntax_error_has_position() {
    let diags = parse_err("listen: x\nroutes: [1, 2\n");
    assert_eq!(diags.len(), 1);
    assert_eq!(diags[0].span, at(3, 1));
    assert_eq!(diags[0].path, "routes");
    assert!(diags[0].message.contains("expected ',' or ']'"), "{}", diags[0]);
    let diags = parse_err("a: b: c\n");
    assert_eq!((diags.len(), diags[0].span), (1, at(1, 5)));
    let diags = parse_err("- *nope\n");
    assert!(diags[0].message.contains("unknown anchor"), "{}", diags[0]);
}

#[test]
fn empty_document_is_null() {
    for doc in ["", "# only a comment\n", "---\n", "~"] {
        let node = parse(doc);
        assert!(matches!(&node.value, Value::Scalar(s) if s.kind == ScalarKind::Null), "{doc:?}");
    }
    #[derive(Deserialize)]
    struct T {
        a: Option<u32>,
    }
    assert!(from_node::<Option<T>>(&parse("")).unwrap().is_none());
    assert!(from_node::<T>(&parse("{}")).unwrap().a.is_none());
}

#[test]
fn multiple_documents_are_rejected() {
    let diags = parse_err("a: 1\n---\nb: 2\n");
    assert_eq!(diags.len(), 1);
    assert_eq!(diags[0].span, at(2, 1));
    assert!(diags[0].message.contains("only one YAML document"));
}

#[test]
fn duplicate_keys_are_rejected_at_the_second_key() {
    let diags = parse_err("a: 1\nb:\n  c: 1\n  c: 2\na: 3\n");
    let got: Vec<(&str, Option<Span>)> = diags.iter().map(|d| (d.path.as_str(), d.span)).collect();
    assert_eq!(got, vec![("b.c", at(4, 3)), ("a", at(5, 1))]);
    assert_eq!(diags[0].message, "duplicate key \"c\" (first defined at line 3, column 3)");
    assert_eq!(parse_err("{\"a\": 1, \"a\": 2}").len(), 1);
}

#[test]
fn tags() {
    let node =
        parse("a: !!str 5\nb: !!int \"7\"\nc: !!float 1\nd: !!bool 'true'\ne: ! 12\nf: !!seq [1]\ng: !!null ''\n");
    assert_eq!((kind(&node, "a"), text(&node, "a")), (ScalarKind::Str, "5"));
    assert_eq!(kind(&node, "b"), ScalarKind::Int(7));
    assert_eq!(kind(&node, "c"), ScalarKind::Float(1.0));
    assert_eq!(kind(&node, "d"), ScalarKind::Bool(true));
    assert_eq!(kind(&node, "e"), ScalarKind::Str);
    assert_eq!(kind(&node, "g"), ScalarKind::Null);
    let diags = parse_err("a: !foo 1\nb: !!binary aGk=\nc: !!map [1]\nd: !!int x\ne: !<tag:x> 1\n");
    let got: Vec<&str> = diags.iter().map(|d| d.path.as_str()).collect();
    assert_eq!(got, vec!["a", "b", "c", "d", "e"]);
    assert!(diags[0].message.starts_with("unsupported tag \"!foo\""), "{}", diags[0]);
    assert!(diags[1].message.starts_with("unsupported tag \"!!binary\""), "{}", diags[1]);
    assert!(diags[2].message.contains("!!map"), "{}", diags[2]);
    assert_eq!(diags[3].message, "\"x\" is not a valid !!int");
    assert!(diags[4].message.contains("tag:x"), "{}", diags[4]);
}

#[test]
fn anchors_aliases_and_merge_keys() {
    let node = parse(
        "base: &base {timeout: 5s, retries: 2}\nlist: &l [a, b]\nx:\n  <<: *base\n  retries: 3\n  copy: *l\n\
         y: {<<: [{a: 1, b: 1}, {b: 2, c: 2}], c: 3}\nz: *base\n",
    );
    assert_eq!(text(&node, "x.timeout"), "5s");
    assert_eq!(kind(&node, "x.retries"), ScalarKind::Int(3));
    assert_eq!(text(&node, "x.copy[1]"), "b");
    assert_eq!(kind(&node, "y.a"), ScalarKind::Int(1));
    assert_eq!(kind(&node, "y.b"), ScalarKind::Int(1));
    assert_eq!(kind(&node, "y.c"), ScalarKind::Int(3));
    assert!(node.at_path("y.<<").is_none());
    assert_eq!(text(&node, "z.timeout"), "5s");
    // Merged entries keep the place where they were written.
    assert_eq!(node.key_span("x").and(node.at_path("x").and_then(|x| x.key_span("timeout"))), at(1, 14));
    let diags = parse_err("a: {<<: 1}\n");
    assert_eq!(diags[0].path, "a.<<");
}

#[test]
fn alias_bomb_is_rejected_quickly() {
    let mut doc = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..10 {
        let prev = (b'a' + i - 1) as char;
        let cur = (b'a' + i) as char;
        let refs = vec![format!("*{prev}"); 10].join(", ");
        doc.push_str(&format!("{cur}: &{cur} [{refs}]\n"));
    }
    let start = Instant::now();
    let diags = parse_err(&doc);
    assert!(start.elapsed().as_secs() < 2);
    assert_eq!(diags.len(), 1);
    assert!(diags[0].message.contains("too large"), "{}", diags[0]);
    // Moderate reuse stays well within the limit.
    let small: String = doc.lines().take(3).map(|l| format!("{l}\n")).collect();
    assert_eq!(parse(&small).at_path("c[9][9][9]").and_then(Node::as_str), Some("x"));
}

#[test]
fn depth_bombs_are_rejected() {
    let start = Instant::now();
    // The scanner looks ahead in flow collections and has a limit of its own; either limit will do.
    let diags = parse_err(&"[".repeat(200_000));
    assert!(start.elapsed().as_secs() < 2);
    assert_eq!(diags.len(), 1);
    let m = &diags[0].message;
    assert!(m.contains("nesting too deep") || m.contains("recursion limit"), "{m}");
    let diags = parse_err(&"- ".repeat(200_000));
    assert!(start.elapsed().as_secs() < 4);
    assert!(diags[0].message.contains("nesting too deep"), "{}", diags[0]);
    // 64 levels are fine, 65 are not.
    parse(&format!("{}{}", "[".repeat(64), "]".repeat(64)));
    parse_err(&format!("{}{}", "[".repeat(65), "]".repeat(65)));
    let mut block = String::new();
    for i in 0..70 {
        block.push_str(&format!("{}k{i}:\n", "  ".repeat(i)));
    }
    assert!(parse_err(&block)[0].message.contains("nesting too deep"));
    // An alias may not smuggle in depth either.
    let deep = format!("a: &a {}1{}\nb: [[[[*a]]]]\n", "[".repeat(60), "]".repeat(60));
    assert!(parse_err(&deep)[0].message.contains("after expanding an alias"));
}

#[test]
fn paths_round_trip_through_at_path() {
    let node = parse(
        "upstreams:\n  user:\n    endpoints: [a, b]\nhosts:\n  api.example.com: {x: 1}\n  \"q\\\"[1]\": 2\n  \"\": 3\n",
    );
    assert_eq!(text(&node, "upstreams.user.endpoints[1]"), "b");
    assert_eq!(text(&node, "hosts[\"api.example.com\"].x"), "1");
    assert_eq!(text(&node, "hosts[\"q\\\"[1]\"]"), "2");
    assert_eq!(text(&node, "hosts[\"\"]"), "3");
    assert!(std::ptr::eq(node.at_path("").unwrap(), &node));
    for bad in ["upstreams.user.endpoints[2]", "upstreams..user", ".upstreams", "upstreams[0]", "hosts[\"x", "nope"] {
        assert!(node.at_path(bad).is_none(), "{bad}");
    }
    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct T {
        hosts: BTreeMap<String, BTreeMap<String, u8>>,
    }
    let e = from_node::<T>(&parse("hosts:\n  api.example.com: {x: 300}\n")).unwrap_err();
    assert_eq!(e.path, "hosts[\"api.example.com\"].x");
    assert!(parse("hosts:\n  api.example.com: {x: 300}\n").at_path(&e.path).is_some());
    assert_eq!(node.at_path("hosts").and_then(|h| h.key_span("api.example.com")), at(5, 3));
    assert_eq!(node.key_span("nope"), None);
}

#[test]
fn collection_keys_are_rejected() {
    let diags = parse_err("? [a, b]\n: 1\n");
    assert_eq!(diags.len(), 1);
    assert!(diags[0].message.contains("map key must be a scalar"), "{}", diags[0]);
}

#[test]
fn from_node_all_gives_up_after_100_rounds() {
    let mut doc = String::from("routes:\n");
    for i in 0..150 {
        doc.push_str(&format!("  - match: {{path: /{i}}}\n"));
    }
    let start = Instant::now();
    let diags = from_node_all::<Config>(&parse(&doc)).unwrap_err();
    assert!(start.elapsed().as_secs() < 5);
    assert_eq!(diags.len(), 100);
    assert_eq!((diags[0].path.as_str(), diags[99].path.as_str()), ("routes[0]", "routes[99]"));
}

/// xorshift64*: deterministic and dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[test]
fn fuzz_mutations_never_panic() {
    let seeds = [
        CONFIG.to_owned(),
        "a: &a {b: [1, 2, ${X:-3}]}\nc: *a\nd: {<<: *a, e: \"q\"}\nf: |\n  text\ng: !!str 1\n".to_owned(),
        r#"{"routes": [{"match": {"path": "/x"}, "upstream": "u"}], "upstreams": {"u": {"endpoints": ["a"]}}}"#
            .to_owned(),
    ];
    let specials = b"[{&*!|>:'\"-,#?%@`}]$\n ";
    let vars = |name: &str| (name == "X").then(|| "7".to_owned());
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for round in 0..20_000 {
        let mut bytes = seeds[round % seeds.len()].clone().into_bytes();
        for _ in 0..1 + rng.below(6) {
            let pos = rng.below(bytes.len() + 1);
            match rng.below(5) {
                0 if pos < bytes.len() => bytes[pos] ^= 1 << rng.below(8),
                1 => bytes.truncate(pos),
                2 => bytes.insert(pos, specials[rng.below(specials.len())]),
                3 => {
                    let len = rng.below(16).min(bytes.len() - pos.min(bytes.len()));
                    let chunk = bytes[pos.min(bytes.len())..pos.min(bytes.len()) + len].to_vec();
                    let dst = rng.below(bytes.len() + 1);
                    bytes.splice(dst..dst, chunk);
                }
                _ => {
                    let n = rng.below(bytes.len() + 1);
                    bytes.insert(n, b'&');
                    bytes.insert(n + 1, b'a');
                }
            }
        }
        let text = String::from_utf8_lossy(&bytes);
        match Node::parse(&text, &vars) {
            Ok(node) => {
                let _ = from_node_all::<Config>(&node);
                let _ = from_node::<serde_json::Value>(&node);
                let _ = from_node::<Vec<Filter>>(&node);
                let _ = node.at_path("routes[0].match.path");
            }
            Err(diags) => assert!(!diags.is_empty()),
        }
    }
}
