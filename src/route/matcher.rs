//! Request predicates besides host and path: the method set, header matchers and query
//! matchers, compiled once per route when the table is built.
//!
//! On the request path these run only for entries whose host and path already matched and
//! whose rank could beat the best match so far; the query string is scanned only then, and
//! without allocating unless a regex needs a percent-decoded value.

use crate::text::hex_value;
use std::borrow::Cow;
use std::fmt;

use http::{HeaderMap, HeaderName, Method};
use regex::Regex;

use super::{RequestView, RouteSpec};

/// How a header or query value is tested. `Present` and `Absent` look only at the name.
#[derive(Debug, Clone)]
pub enum ValueMatch {
    Exact(String),
    Prefix(String),
    /// Matched against the whole value: the table anchors it as `^(?:...)$` when built.
    Regex(Regex),
    Present,
    Absent,
}

impl fmt::Display for ValueMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ValueMatch::Exact(v) => write!(f, "exactly `{v}`"),
            ValueMatch::Prefix(v) => write!(f, "starting with `{v}`"),
            // The config compiler anchors regexes itself; don't show the anchors twice.
            ValueMatch::Regex(r) if r.as_str().starts_with('^') && r.as_str().ends_with('$') => {
                write!(f, "matching `{}`", r.as_str())
            }
            ValueMatch::Regex(r) => write!(f, "matching `^(?:{})$`", r.as_str()),
            ValueMatch::Present => f.write_str("present"),
            ValueMatch::Absent => f.write_str("absent"),
        }
    }
}

/// A request header test. With several values for the name, one matching value is enough;
/// `Absent` means no value at all.
#[derive(Debug, Clone)]
pub struct HeaderMatcher {
    pub name: HeaderName,
    pub kind: ValueMatch,
}

/// A query parameter test, by percent-decoded name, with the same rules as `HeaderMatcher`.
#[derive(Debug, Clone)]
pub struct QueryMatcher {
    pub name: String,
    pub kind: ValueMatch,
}

#[derive(Debug, Clone)]
enum Value {
    Exact(Box<[u8]>),
    Prefix(Box<[u8]>),
    Regex(Regex),
    Present,
    Absent,
}

impl Value {
    fn compile(kind: &ValueMatch) -> Value {
        match kind {
            ValueMatch::Exact(v) => Value::Exact(v.as_bytes().into()),
            ValueMatch::Prefix(v) => Value::Prefix(v.as_bytes().into()),
            // The config compiler leaves regexes unanchored. Re-anchoring an expression that
            // already compiled cannot realistically fail; if it ever did, the unanchored form
            // is the closer behaviour than refusing to build the whole table.
            ValueMatch::Regex(r) => {
                Value::Regex(Regex::new(&format!("^(?:{})$", r.as_str())).unwrap_or_else(|_| r.clone()))
            }
            ValueMatch::Present => Value::Present,
            ValueMatch::Absent => Value::Absent,
        }
    }

    /// Tests one value. Query values arrive still percent-encoded (`encoded`), and are decoded
    /// on the fly so that the common exact and prefix cases need no buffer.
    fn test(&self, raw: &[u8], encoded: bool) -> bool {
        match self {
            Value::Exact(v) if encoded => decoded_eq(raw, v),
            Value::Exact(v) => raw == &**v,
            Value::Prefix(v) if encoded => decoded_starts_with(raw, v),
            Value::Prefix(v) => raw.starts_with(v),
            Value::Regex(r) => {
                let bytes = if encoded { decode(raw) } else { Cow::Borrowed(raw) };
                std::str::from_utf8(&bytes).is_ok_and(|s| r.is_match(s))
            }
            Value::Present | Value::Absent => true,
        }
    }

    /// Applies the any-value / no-value rule over all values of one name.
    fn test_all<'v>(&self, mut values: impl Iterator<Item = &'v [u8]>, encoded: bool) -> bool {
        match self {
            Value::Absent => values.next().is_none(),
            Value::Present => values.next().is_some(),
            _ => values.any(|v| self.test(v, encoded)),
        }
    }
}

/// Standard methods as bits, so the common membership test is a mask. Comparing `Method`s
/// compares their internal tags, cheaper than matching on the name.
fn method_bit(method: &Method) -> Option<u16> {
    const STANDARD: [Method; 9] = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::HEAD,
        Method::PATCH,
        Method::OPTIONS,
        Method::CONNECT,
        Method::TRACE,
    ];
    STANDARD.iter().position(|m| m == method).map(|i| 1 << i)
}

#[derive(Debug, Clone)]
struct MethodSet {
    bits: u16,
    extensions: Box<[Method]>,
}

impl MethodSet {
    fn new(methods: &[Method]) -> MethodSet {
        let mut bits = 0;
        let mut extensions = Vec::new();
        for method in methods {
            match method_bit(method) {
                Some(bit) => bits |= bit,
                None => extensions.push(method.clone()),
            }
        }
        MethodSet { bits, extensions: extensions.into() }
    }

    fn contains(&self, method: &Method) -> bool {
        match method_bit(method) {
            Some(bit) => self.bits & bit != 0,
            None => self.extensions.contains(method),
        }
    }
}

#[derive(Debug, Clone)]
struct Header {
    name: HeaderName,
    value: Value,
}

#[derive(Debug, Clone)]
struct Query {
    name: Box<[u8]>,
    value: Value,
}

/// Everything a route requires beyond host and path, in the form cheapest to test.
#[derive(Debug, Clone)]
pub(crate) struct Predicates {
    methods: Option<MethodSet>,
    headers: Box<[Header]>,
    query: Box<[Query]>,
}

impl Predicates {
    pub(crate) fn compile(spec: &RouteSpec) -> Predicates {
        Predicates {
            methods: spec.methods.as_deref().map(MethodSet::new),
            headers: spec
                .headers
                .iter()
                .map(|h| Header { name: h.name.clone(), value: Value::compile(&h.kind) })
                .collect(),
            query: spec
                .query
                .iter()
                .map(|q| Query { name: q.name.as_bytes().into(), value: Value::compile(&q.kind) })
                .collect(),
        }
    }

    pub(crate) fn restricts_methods(&self) -> bool {
        self.methods.is_some()
    }

    pub(crate) fn method_ok(&self, method: &Method) -> bool {
        self.methods.as_ref().is_none_or(|set| set.contains(method))
    }

    /// The index of the first header matcher that fails.
    pub(crate) fn header_mismatch(&self, headers: &HeaderMap) -> Option<usize> {
        self.headers
            .iter()
            .position(|h| !h.value.test_all(headers.get_all(&h.name).iter().map(|v| v.as_bytes()), false))
    }

    /// The index of the first query matcher that fails.
    pub(crate) fn query_mismatch(&self, query: Option<&str>) -> Option<usize> {
        let query = query.unwrap_or("");
        self.query.iter().position(|q| !q.value.test_all(query_values(query, &q.name), true))
    }

    pub(crate) fn matches_except_method(&self, req: &RequestView<'_>) -> bool {
        self.header_mismatch(req.headers).is_none() && self.query_mismatch(req.query).is_none()
    }
}

/// The raw (still encoded) values of every query parameter whose decoded name is `name`.
fn query_values<'q>(query: &'q str, name: &'q [u8]) -> impl Iterator<Item = &'q [u8]> {
    query.as_bytes().split(|&b| b == b'&').filter(|pair| !pair.is_empty()).filter_map(move |pair| {
        let (key, value) = match memchr::memchr(b'=', pair) {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &pair[pair.len()..]),
        };
        decoded_eq(key, name).then_some(value)
    })
}

/// Form-urlencoded decoding as an iterator: `+` is a space, `%XX` a byte, and a `%` not followed
/// by two hex digits stays literal (browsers send such queries, so they must not fail a match).
struct Decoded<'a> {
    raw: &'a [u8],
}

impl Iterator for Decoded<'_> {
    type Item = u8;

    fn next(&mut self) -> Option<u8> {
        let (&first, rest) = self.raw.split_first()?;
        self.raw = rest;
        match first {
            b'+' => Some(b' '),
            b'%' => match rest {
                [h, l, tail @ ..] => match (hex_value(*h), hex_value(*l)) {
                    (Some(h), Some(l)) => {
                        self.raw = tail;
                        Some(h << 4 | l)
                    }
                    _ => Some(b'%'),
                },
                _ => Some(b'%'),
            },
            other => Some(other),
        }
    }
}

fn needs_decoding(raw: &[u8]) -> bool {
    memchr::memchr2(b'%', b'+', raw).is_some()
}

fn decoded_eq(raw: &[u8], expected: &[u8]) -> bool {
    if needs_decoding(raw) { Decoded { raw }.eq(expected.iter().copied()) } else { raw == expected }
}

fn decoded_starts_with(raw: &[u8], prefix: &[u8]) -> bool {
    let mut decoded = Decoded { raw };
    prefix.iter().all(|&b| decoded.next() == Some(b))
}

pub(crate) fn decode(raw: &[u8]) -> Cow<'_, [u8]> {
    if needs_decoding(raw) { Cow::Owned(Decoded { raw }.collect()) } else { Cow::Borrowed(raw) }
}

/// All values of a header, for diagnostics; `None` when the header is absent.
pub(crate) fn header_values_text(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let values: Vec<String> =
        headers.get_all(name).iter().map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()).collect();
    (!values.is_empty()).then(|| values.join(", "))
}

/// All decoded values of a query parameter, for diagnostics; `None` when it is absent.
pub(crate) fn query_values_text(query: Option<&str>, name: &str) -> Option<String> {
    let values: Vec<String> = query_values(query.unwrap_or(""), name.as_bytes())
        .map(|v| String::from_utf8_lossy(&decode(v)).into_owned())
        .collect();
    (!values.is_empty()).then(|| values.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn spec(headers: Vec<HeaderMatcher>, query: Vec<QueryMatcher>) -> Predicates {
        let mut spec = crate::route::tests::route(0, "r", &["/"]);
        spec.headers = headers;
        spec.query = query;
        Predicates::compile(&spec)
    }

    fn header(name: &str, kind: ValueMatch) -> HeaderMatcher {
        HeaderMatcher { name: HeaderName::from_bytes(name.as_bytes()).unwrap(), kind }
    }

    fn query(name: &str, kind: ValueMatch) -> QueryMatcher {
        QueryMatcher { name: name.into(), kind }
    }

    fn re(s: &str) -> ValueMatch {
        ValueMatch::Regex(Regex::new(s).unwrap())
    }

    fn headers(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_bytes(value).unwrap());
        }
        map
    }

    fn header_ok(kind: ValueMatch, map: &HeaderMap) -> bool {
        spec(vec![header("x-env", kind)], vec![]).header_mismatch(map).is_none()
    }

    fn query_ok(kind: ValueMatch, q: Option<&str>) -> bool {
        spec(vec![], vec![query("tag name", kind)]).query_mismatch(q).is_none()
    }

    #[test]
    fn header_matchers() {
        let none = headers(&[]);
        let prod = headers(&[("x-env", b"prod")]);
        let multi = headers(&[("x-env", b"dev"), ("x-env", b"production")]);
        let latin1 = headers(&[("x-env", b"caf\xe9")]);

        assert!(header_ok(ValueMatch::Exact("prod".into()), &prod));
        assert!(!header_ok(ValueMatch::Exact("Prod".into()), &prod));
        assert!(!header_ok(ValueMatch::Exact("prod".into()), &none));
        assert!(!header_ok(ValueMatch::Exact("prod".into()), &multi));
        assert!(header_ok(ValueMatch::Exact("dev".into()), &multi));
        assert!(header_ok(ValueMatch::Prefix("pro".into()), &multi));
        assert!(!header_ok(ValueMatch::Prefix("x".into()), &multi));
        assert!(header_ok(re("prod|production"), &multi));
        // Anchored: `rod` alone does not match `prod`.
        assert!(!header_ok(re("rod"), &prod));
        assert!(!header_ok(re(".*"), &latin1));
        assert!(header_ok(ValueMatch::Exact("caf\u{e9}".into()), &headers(&[("x-env", "caf\u{e9}".as_bytes())])));
        assert!(header_ok(ValueMatch::Present, &prod));
        assert!(!header_ok(ValueMatch::Present, &none));
        assert!(header_ok(ValueMatch::Absent, &none));
        assert!(!header_ok(ValueMatch::Absent, &multi));
        // An empty value still counts as present.
        assert!(!header_ok(ValueMatch::Absent, &headers(&[("x-env", b"")])));
    }

    #[test]
    fn query_matchers() {
        let q = Some("a=1&tag+name=blue%20sky&tag%20name=red&flag&x=%zz&&");
        assert!(query_ok(ValueMatch::Exact("blue sky".into()), q));
        assert!(query_ok(ValueMatch::Exact("red".into()), q));
        assert!(!query_ok(ValueMatch::Exact("blue%20sky".into()), q));
        assert!(query_ok(ValueMatch::Prefix("blue s".into()), q));
        assert!(!query_ok(ValueMatch::Prefix("sky".into()), q));
        assert!(query_ok(re("blue .*"), q));
        assert!(!query_ok(re("blue"), q));
        assert!(query_ok(ValueMatch::Present, q));
        assert!(!query_ok(ValueMatch::Absent, q));
        assert!(query_ok(ValueMatch::Absent, Some("a=1")));
        assert!(query_ok(ValueMatch::Absent, None));
        assert!(!query_ok(ValueMatch::Present, None));
        assert!(!query_ok(ValueMatch::Exact("".into()), None));

        let flags = |kind, q| spec(vec![], vec![query("flag", kind)]).query_mismatch(q).is_none();
        assert!(flags(ValueMatch::Exact("".into()), Some("flag")));
        assert!(flags(ValueMatch::Present, Some("x=1&flag")));
        assert!(flags(ValueMatch::Exact("".into()), Some("flag=")));
        assert!(!flags(ValueMatch::Present, Some("flagx=1")));
        let x = |kind, q| spec(vec![], vec![query("x", kind)]).query_mismatch(q).is_none();
        assert!(x(ValueMatch::Exact("%zz".into()), Some("x=%zz")));
        assert!(x(ValueMatch::Exact("%".into()), Some("x=%")));
        assert!(x(ValueMatch::Exact("a%2".into()), Some("x=a%2")));
        assert!(x(ValueMatch::Exact("é".into()), Some("x=%C3%A9")));
        assert!(!x(re(".*"), Some("x=%E9")));
    }

    #[test]
    fn every_matcher_must_hold() {
        let p = spec(
            vec![header("x-a", ValueMatch::Present), header("x-b", ValueMatch::Absent)],
            vec![query("q", ValueMatch::Exact("1".into()))],
        );
        assert_eq!(p.header_mismatch(&headers(&[("x-a", b"1")])), None);
        assert_eq!(p.header_mismatch(&headers(&[("x-a", b"1"), ("x-b", b"1")])), Some(1));
        assert_eq!(p.header_mismatch(&headers(&[])), Some(0));
        assert_eq!(p.query_mismatch(Some("q=2&q=1")), None);
        assert_eq!(p.query_mismatch(Some("q=2")), Some(0));
    }

    #[test]
    fn methods() {
        let set = MethodSet::new(&[Method::GET, Method::from_bytes(b"PURGE").unwrap()]);
        assert!(set.contains(&Method::GET));
        assert!(!set.contains(&Method::HEAD));
        assert!(set.contains(&Method::from_bytes(b"PURGE").unwrap()));
        assert!(!set.contains(&Method::from_bytes(b"LINK").unwrap()));
    }

    #[test]
    fn diagnostics_text() {
        let map = headers(&[("x-env", b"dev"), ("x-env", b"qa")]);
        assert_eq!(header_values_text(&map, &HeaderName::from_static("x-env")).as_deref(), Some("dev, qa"));
        assert_eq!(header_values_text(&map, &HeaderName::from_static("x-other")), None);
        assert_eq!(query_values_text(Some("a=x+y&a=%41"), "a").as_deref(), Some("x y, A"));
        assert_eq!(query_values_text(None, "a"), None);
        assert_eq!(ValueMatch::Exact("v".into()).to_string(), "exactly `v`");
        assert_eq!(re("a|b").to_string(), "matching `^(?:a|b)$`");
        assert_eq!(re("^(?:a|b)$").to_string(), "matching `^(?:a|b)$`");
    }
}
