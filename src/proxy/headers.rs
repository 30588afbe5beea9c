//! Header handling on the way through: hop-by-hop removal, forwarding headers, the client's address,
//! and the request's host.
//!
//! Hot path: one pass over header names decides whether any hop-by-hop header is present at all
//! (usually none is); per-connection values (the peer's address) are pre-built once per connection.

use std::borrow::Cow;
use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;

use crate::state::{ServerSettings, canonical_ip};
use crate::transport::conn::ConnContext;

use super::error::ProxyError;

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// The hop-by-hop headers (RFC 9110 §7.6.1, plus the non-standard `Keep-Alive` and
/// `Proxy-Connection`), by bit position in `HeadScan::hop`.
const HOP_BY_HOP: [&HeaderName; 9] = [
    &header::CONNECTION,
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
    &header::TE,
    &header::TRAILER,
    &header::TRANSFER_ENCODING,
    &header::UPGRADE,
    &header::PROXY_AUTHORIZATION,
    &header::PROXY_AUTHENTICATE,
];
const CONNECTION_BIT: u16 = 1;
const TE_BIT: u16 = 1 << 3;
const TRANSFER_ENCODING_BIT: u16 = 1 << 5;
const UPGRADE_BIT: u16 = 1 << 6;

fn hop_by_hop_bit(name: &str) -> u16 {
    match name {
        "connection" => CONNECTION_BIT,
        "keep-alive" => 1 << 1,
        "proxy-connection" => 1 << 2,
        "te" => TE_BIT,
        "trailer" => 1 << 4,
        "transfer-encoding" => TRANSFER_ENCODING_BIT,
        "upgrade" => UPGRADE_BIT,
        "proxy-authorization" => 1 << 7,
        "proxy-authenticate" => 1 << 8,
        _ => 0,
    }
}

/// What one pass over a message's header fields found, so that later steps look up only what is
/// there: most requests carry no hop-by-hop header, no `Expect` and no `Transfer-Encoding`.
#[derive(Debug, Default, Clone, Copy)]
pub struct HeadScan {
    /// Which hop-by-hop headers are present (bits as in `HOP_BY_HOP`).
    pub hop: u16,
    /// Total bytes of names and values.
    pub bytes: usize,
    pub expect: bool,
}

impl HeadScan {
    pub fn transfer_encoding(&self) -> bool {
        self.hop & TRANSFER_ENCODING_BIT != 0
    }

    /// An `Upgrade` header is present (a WebSocket handshake may be asked for).
    pub fn upgrade(&self) -> bool {
        self.hop & UPGRADE_BIT != 0
    }

    /// A `TE` header is present.
    pub fn te(&self) -> bool {
        self.hop & TE_BIT != 0
    }
}

pub fn scan(headers: &HeaderMap) -> HeadScan {
    let mut scan = HeadScan::default();
    for (name, value) in headers {
        let name = name.as_str();
        scan.bytes += name.len() + value.len();
        scan.hop |= hop_by_hop_bit(name);
        scan.expect |= name == "expect";
    }
    scan
}

/// Whether the request's `TE` lists `trailers`.
pub fn te_has_trailers(headers: &HeaderMap) -> bool {
    has_token(headers, header::TE, "trailers")
}

/// Whether a comma-separated header (every line of it) lists `token`, without case and
/// parameters (`Connection: keep-alive, Upgrade`, `TE: trailers;q=1`).
pub fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.as_bytes().split(|b| *b == b',').any(|t| {
            let t = t.split(|b| *b == b';').next().unwrap_or_default();
            t.trim_ascii().eq_ignore_ascii_case(token.as_bytes())
        })
    })
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1): the fixed list and every header named in
/// `Connection`. These describe one connection and must not be forwarded to the next. `hop` is
/// `HeadScan::hop` of these headers.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, hop: u16) {
    if hop == 0 {
        return;
    }
    if hop & CONNECTION_BIT != 0 {
        // Names listed in Connection: the usual ones (`keep-alive`, `close`, `upgrade`) need no
        // parsing; only an unusual name costs a `HeaderName`.
        let mut named: Vec<HeaderName> = Vec::new();
        for value in headers.get_all(header::CONNECTION) {
            let Ok(value) = value.to_str() else { continue };
            for token in value.split(',') {
                let token = token.trim();
                if token.is_empty() || token.eq_ignore_ascii_case("close") || token.eq_ignore_ascii_case("keep-alive") {
                    continue;
                }
                if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                    if hop_by_hop_bit(name.as_str()) == 0 {
                        named.push(name);
                    }
                }
            }
        }
        for name in &named {
            headers.remove(name);
        }
    }
    for (bit, name) in HOP_BY_HOP.iter().enumerate() {
        if hop & (1 << bit) != 0 {
            headers.remove(*name);
        }
    }
}

/// `strip_hop_by_hop` for a message not scanned before (responses).
pub fn strip_response_hop_by_hop(headers: &mut HeaderMap) {
    let hop = headers.keys().fold(0, |hop, name| hop | hop_by_hop_bit(name.as_str()));
    strip_hop_by_hop(headers, hop);
}

/// Sets `X-Forwarded-*` and `Forwarded` for the upstream. From a trusted proxy, existing values
/// are kept and extended; from anyone else they are replaced, so a client cannot forge its origin.
pub fn add_forwarded(
    headers: &mut HeaderMap,
    conn: &ConnContext,
    server: &ServerSettings,
    trusted: bool,
    original_host: Option<&HeaderValue>,
) {
    if !trusted {
        // Whatever gatehouse adds or not, an untrusted client's claims about its origin never
        // reach the upstream.
        if !server.x_forwarded {
            headers.remove(&X_FORWARDED_FOR);
            headers.remove(&X_FORWARDED_PROTO);
            headers.remove(&X_FORWARDED_HOST);
        }
        if !server.forwarded {
            headers.remove(header::FORWARDED);
        }
    }
    if server.x_forwarded {
        let xff = if trusted && headers.contains_key(&X_FORWARDED_FOR) {
            append_list(headers.get_all(&X_FORWARDED_FOR).iter(), conn.peer_ip_value.as_bytes())
        } else {
            Some(conn.peer_ip_value.clone())
        };
        if let Some(xff) = xff {
            headers.insert(X_FORWARDED_FOR.clone(), xff);
        }
        if !(trusted && headers.contains_key(&X_FORWARDED_PROTO)) {
            headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(conn.scheme));
        }
        if !(trusted && headers.contains_key(&X_FORWARDED_HOST)) {
            match original_host {
                Some(host) => {
                    headers.insert(X_FORWARDED_HOST.clone(), host.clone());
                }
                None => {
                    headers.remove(&X_FORWARDED_HOST);
                }
            }
        }
    }
    if server.forwarded {
        let element = conn.forwarded_element(original_host);
        let value = if trusted && headers.contains_key(header::FORWARDED) {
            element.and_then(|e| append_list(headers.get_all(header::FORWARDED).iter(), e.as_bytes()))
        } else {
            element
        };
        match value {
            Some(v) => {
                headers.insert(header::FORWARDED, v);
            }
            None => {
                headers.remove(header::FORWARDED);
            }
        }
    }
}

/// The RFC 7239 element `for=…;proto=…;host=…` for a request to `host`.
pub fn forwarded_element(forwarded_for: &str, scheme: &str, host: Option<&HeaderValue>) -> Option<HeaderValue> {
    let mut element = String::with_capacity(64);
    element.push_str(forwarded_for);
    element.push_str(";proto=");
    element.push_str(scheme);
    if let Some(host) = host.and_then(|h| h.to_str().ok()) {
        element.push_str(";host=");
        push_forwarded_value(&mut element, host);
    }
    HeaderValue::from_str(&element).ok()
}

/// `a, b` + `c` → `a, b, c`, joining repeated header lines into one.
fn append_list<'a>(existing: impl Iterator<Item = &'a HeaderValue>, last: &[u8]) -> Option<HeaderValue> {
    let mut out = Vec::with_capacity(64);
    for v in existing {
        if !out.is_empty() {
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(v.as_bytes());
    }
    if !out.is_empty() {
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(last);
    HeaderValue::from_bytes(&out).ok()
}

/// RFC 7239 values are tokens or quoted strings; a host with a port (`:`) must be quoted.
fn push_forwarded_value(out: &mut String, value: &str) {
    let token = value.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if token {
        out.push_str(value);
    } else {
        out.push('"');
        for c in value.chars() {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
    }
}

/// The client's address: the peer, or — when the peer is a trusted proxy — the rightmost address in
/// `X-Forwarded-For` that is not itself a trusted proxy. Rightmost, because everything left of the
/// last trusted hop was written by the client and can be forged.
pub fn client_ip(headers: &HeaderMap, peer: IpAddr, server: &ServerSettings) -> IpAddr {
    let peer = canonical_ip(peer);
    if server.trusted_proxies.is_empty() || !server.is_trusted(peer) {
        return peer;
    }
    let mut client = peer;
    let hops: Vec<&str> =
        headers.get_all(&X_FORWARDED_FOR).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).collect();
    for hop in hops.iter().rev() {
        let Some(ip) = parse_forwarded_ip(hop.trim()) else { break };
        client = ip;
        if !server.is_trusted(ip) {
            break;
        }
    }
    client
}

/// An address as proxies write it in X-Forwarded-For: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1` or
/// `[2001:db8::1]:5678`.
fn parse_forwarded_ip(text: &str) -> Option<IpAddr> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(canonical_ip(ip));
    }
    if let Some(rest) = text.strip_prefix('[') {
        return rest.split_once(']').and_then(|(ip, _)| ip.parse().ok()).map(canonical_ip);
    }
    text.rsplit_once(':').and_then(|(ip, port)| {
        port.parse::<u16>().ok()?;
        ip.parse().ok().map(canonical_ip)
    })
}

/// The request's host: for routing (lowercase, without port) and as the client wrote it (for
/// `X-Forwarded-Host`, `Forwarded` and `preserve_host`). From the absolute-form target when there
/// is one (it overrides `Host`, RFC 9112 §3.2.2), else from the single `Host` header.
pub fn request_host(parts: &Parts) -> Result<(Option<Cow<'_, str>>, Option<HeaderValue>), ProxyError> {
    let bad = || ProxyError::BadRequest("invalid Host header".into());
    let (raw, value): (&str, HeaderValue) = if let Some(authority) = parts.uri.authority() {
        if authority.as_str().contains('@') {
            return Err(ProxyError::BadRequest("user information is not allowed in the request target".into()));
        }
        (authority.as_str(), HeaderValue::from_str(authority.as_str()).map_err(|_| bad())?)
    } else {
        let mut values = parts.headers.get_all(header::HOST).iter();
        let first = values.next();
        if values.next().is_some() {
            return Err(ProxyError::BadRequest("more than one Host header".into()));
        }
        match first {
            None if parts.version == http::Version::HTTP_11 => {
                return Err(ProxyError::BadRequest("missing Host header".into()));
            }
            None => return Ok((None, None)),
            Some(v) => (v.to_str().map_err(|_| bad())?, v.clone()),
        }
    };
    let host = strip_port(raw).ok_or_else(bad)?;
    let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    };
    Ok((Some(host), Some(value)))
}

/// `host[:port]` → `host`, validating the characters (RFC 3986 reg-name or IP literal). A
/// trailing dot (the fully qualified form, `example.com.`) is dropped: it names the same host.
pub fn strip_port(authority: &str) -> Option<&str> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(valid_port)) {
            return None;
        }
        if !ip.bytes().all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.') || ip.is_empty() {
            return None;
        }
        // Keep the brackets: `[::1]` is how routes write an IPv6 host.
        return Some(&authority[..ip.len() + 2]);
    }
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if valid_port(port) => host,
        Some(_) => return None,
        None => authority,
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    let valid = !host.is_empty()
        && host.len() <= 253
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    valid.then_some(host)
}

fn valid_port(port: &str) -> bool {
    !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(trusted: &[&str]) -> ServerSettings {
        let mut s = crate::config::compile::default_server_settings();
        s.trusted_proxies = trusted.iter().map(|t| t.parse().unwrap()).collect();
        s
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("keep-alive, X-Secret-Hop"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        h.insert("proxy-authorization", HeaderValue::from_static("Basic x"));
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert("trailer", HeaderValue::from_static("x"));
        h.insert("x-keep", HeaderValue::from_static("yes"));
        strip_response_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-keep"], "yes");
    }

    #[test]
    fn client_ip_walks_forwarded_for_from_the_right_through_trusted_hops() {
        let s = settings(&["10.0.0.0/8"]);
        let mut h = HeaderMap::new();
        h.insert(&X_FORWARDED_FOR, HeaderValue::from_static("6.6.6.6, 203.0.113.9, 10.1.1.1"));
        let peer: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(client_ip(&h, peer, &s), "203.0.113.9".parse::<IpAddr>().unwrap());
        // An untrusted peer's header is ignored entirely.
        let outsider: IpAddr = "198.51.100.1".parse().unwrap();
        assert_eq!(client_ip(&h, outsider, &s), outsider);
        // Garbage stops the walk at the last good hop.
        h.insert(&X_FORWARDED_FOR, HeaderValue::from_static("not-an-ip, 10.1.1.1"));
        assert_eq!(client_ip(&h, peer, &s), "10.1.1.1".parse::<IpAddr>().unwrap());
        h.insert(&X_FORWARDED_FOR, HeaderValue::from_static("[2001:db8::1]:443"));
        assert_eq!(client_ip(&h, peer, &s), "2001:db8::1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn host_parsing_strips_ports_lowercases_and_rejects_junk() {
        assert_eq!(strip_port("Example.com:8080"), Some("Example.com"));
        assert_eq!(strip_port("[::1]:80"), Some("[::1]"));
        assert_eq!(strip_port("a.b"), Some("a.b"));
        assert_eq!(strip_port("Example.com.:443"), Some("Example.com"), "the fully qualified form");
        assert_eq!(strip_port("."), None);
        for bad in ["", ":80", "a b", "a:x", "[::1", "[zz]", "a/b", "a@b", "host:123456", "[::1]x"] {
            assert_eq!(strip_port(bad), None, "{bad}");
        }
    }

    #[test]
    fn forwarded_values_are_quoted_when_not_tokens() {
        let mut s = String::new();
        push_forwarded_value(&mut s, "example.com:8080");
        assert_eq!(s, "\"example.com:8080\"");
        s.clear();
        push_forwarded_value(&mut s, "example.com");
        assert_eq!(s, "example.com");
    }
}
