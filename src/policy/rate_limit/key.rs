//! What a limit counts by: the parts of a request that make up its key.
//!
//! A key is written as tagged, length-prefixed parts into a `Hasher`: a keyed SipHash for the
//! local backend (a u64 an attacker cannot aim collisions at), or a byte buffer hashed with SHA-256
//! for Redis (the same on every node). The key text itself is never stored.

use std::hash::Hasher;
use std::net::IpAddr;

use http::{HeaderMap, HeaderName};

use crate::policy::Identity;
use crate::route::RouteMatch;

/// One part of a key, as written in config.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeyPart {
    /// The client's address, resolved through trusted proxies.
    ClientIp,
    /// The consumer attached by authentication.
    Consumer,
    /// A claim of the verified token (or introspection answer).
    Claim(Box<str>),
    /// A request header's value.
    Header(HeaderName),
    /// A query parameter's value.
    Query(Box<str>),
    /// A cookie's value.
    Cookie(Box<str>),
    /// A path parameter of the route pattern (`{id}`).
    Param(Box<str>),
    /// The route's name.
    Route,
    /// Nothing: all requests share one count.
    Global,
}

impl KeyPart {
    /// Parses `client_ip`, `consumer`, `route`, `global`, `header:NAME`, `claim:NAME`,
    /// `query:NAME` or `param:NAME`.
    pub fn parse(text: &str) -> Result<KeyPart, String> {
        let (kind, arg) = match text.split_once(':') {
            Some((kind, arg)) => (kind.trim(), Some(arg.trim())),
            None => (text.trim(), None),
        };
        fn need<'t>(kind: &str, arg: Option<&'t str>) -> Result<&'t str, String> {
            match arg {
                Some(a) if !a.is_empty() => Ok(a),
                _ => Err(format!("`{kind}` needs a name: write `{kind}:NAME`")),
            }
        }
        Ok(match (kind, arg) {
            ("client_ip" | "ip", None) => KeyPart::ClientIp,
            ("consumer", None) => KeyPart::Consumer,
            ("route", None) => KeyPart::Route,
            ("global", None) => KeyPart::Global,
            ("claim", a) => KeyPart::Claim(need(kind, a)?.into()),
            ("query", a) => KeyPart::Query(need(kind, a)?.into()),
            ("cookie", a) => KeyPart::Cookie(need(kind, a)?.into()),
            ("param", a) => KeyPart::Param(need(kind, a)?.into()),
            ("header", a) => {
                let name = need(kind, a)?;
                KeyPart::Header(
                    HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("`{name}` is not a header name"))?,
                )
            }
            ("client_ip" | "ip" | "consumer" | "route" | "global", Some(_)) => {
                return Err(format!("`{kind}` takes no name"));
            }
            _ => {
                return Err(format!(
                    "unknown key `{text}`: expected client_ip, consumer, route, global, header:NAME, claim:NAME, query:NAME, cookie:NAME or param:NAME"
                ));
            }
        })
    }
}

impl std::fmt::Display for KeyPart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyPart::ClientIp => f.write_str("client_ip"),
            KeyPart::Consumer => f.write_str("consumer"),
            KeyPart::Route => f.write_str("route"),
            KeyPart::Global => f.write_str("global"),
            KeyPart::Claim(n) => write!(f, "claim:{n}"),
            KeyPart::Header(n) => write!(f, "header:{n}"),
            KeyPart::Query(n) => write!(f, "query:{n}"),
            KeyPart::Cookie(n) => write!(f, "cookie:{n}"),
            KeyPart::Param(n) => write!(f, "param:{n}"),
        }
    }
}

/// What a key is taken from.
pub struct KeySource<'a> {
    pub client: IpAddr,
    pub identity: Option<&'a Identity>,
    pub route: &'a str,
    pub headers: &'a HeaderMap,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub route_match: &'a RouteMatch,
}

/// Longest value of one part that is used whole; longer ones are cut (a client cannot make the
/// gateway hash megabytes, and a longer value would not be a better key).
const MAX_PART: usize = 256;

/// Writes the key of `parts` for `source` into `out`. A part the request lacks (no consumer, no
/// such header) is replaced by the client's address: leaving out a header must not escape the
/// limit, and anonymous callers must not all share one count.
pub fn write_key(parts: &[KeyPart], source: &KeySource<'_>, out: &mut impl Hasher) {
    for part in parts {
        match value_of(part, source) {
            Some(Value::Text(text)) => write_value(out, text),
            Some(Value::Empty) => tagged(out, 2, b""),
            None => write_ip(out, source.client),
        }
    }
}

/// Writes a part's value: what `write_key` writes for a part whose value is `text` (so the key
/// of consumer `alice` under `key: consumer` can be made without a request).
pub fn write_value(out: &mut impl Hasher, text: &str) {
    tagged(out, 1, text.as_bytes());
}

enum Value<'a> {
    Text(&'a str),
    Empty,
}

fn value_of<'a>(part: &KeyPart, s: &KeySource<'a>) -> Option<Value<'a>> {
    Some(match part {
        KeyPart::ClientIp => return None,
        KeyPart::Global => Value::Empty,
        KeyPart::Route => Value::Text(s.route),
        KeyPart::Consumer => Value::Text(&s.identity?.consumer.as_ref()?.name),
        KeyPart::Claim(name) => Value::Text(claim_text(s.identity?, name)?),
        KeyPart::Header(name) => Value::Text(s.headers.get(name)?.to_str().ok().filter(|v| !v.is_empty())?),
        KeyPart::Query(name) => Value::Text(crate::text::query_param(s.query?, name)?),
        KeyPart::Cookie(name) => {
            let lines = s.headers.get_all(http::header::COOKIE).iter().filter_map(|v| v.to_str().ok());
            Value::Text(crate::text::cookie(lines, name)?)
        }
        KeyPart::Param(name) => Value::Text(s.route_match.param(s.path, name)?),
    })
}

fn claim_text<'a>(identity: &'a Identity, name: &str) -> Option<&'a str> {
    match identity.claim(name)? {
        serde_json::Value::String(text) if !text.is_empty() => Some(text),
        // Numbers and other values are keyed by their JSON text, which `claim` cannot lend: such
        // claims are rare as keys, and `sub`, `client_id` and tenant ids are strings.
        _ => None,
    }
}

fn tagged(out: &mut impl Hasher, tag: u8, bytes: &[u8]) {
    let bytes = &bytes[..bytes.len().min(MAX_PART)];
    out.write_u8(tag);
    out.write_u16(bytes.len() as u16);
    out.write(bytes);
}

fn write_ip(out: &mut impl Hasher, ip: IpAddr) {
    match crate::state::canonical_ip(ip) {
        IpAddr::V4(v4) => tagged(out, 4, &v4.octets()),
        IpAddr::V6(v6) => tagged(out, 6, &v6.octets()),
    }
}

/// A `Hasher` that keeps the bytes: the stable form of a key, for Redis.
#[derive(Default)]
pub struct KeyBytes(pub Vec<u8>);

impl Hasher for KeyBytes {
    fn finish(&self) -> u64 {
        0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }
    fn write_u16(&mut self, n: u16) {
        self.0.extend_from_slice(&n.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_parts_parse_and_display() {
        for text in [
            "client_ip",
            "consumer",
            "route",
            "global",
            "header:x-tenant",
            "claim:sub",
            "query:k",
            "cookie:sid",
            "param:id",
        ] {
            assert_eq!(KeyPart::parse(text).unwrap().to_string(), text);
        }
        assert_eq!(KeyPart::parse("ip").unwrap(), KeyPart::ClientIp);
        assert_eq!(KeyPart::parse("header: X-Tenant").unwrap(), KeyPart::Header(HeaderName::from_static("x-tenant")));
        for bad in ["", "user", "header", "header:", "header:bad name", "claim", "consumer:x", "ip:1"] {
            assert!(KeyPart::parse(bad).is_err(), "{bad}");
        }
    }
}
