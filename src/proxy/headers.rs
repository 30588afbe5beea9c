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

fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "proxy-authorization"
            | "proxy-authenticate"
    )
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1): the fixed list and every header named in
/// `Connection`. These describe one connection and must not be forwarded to the next.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(&name);
    }
    for name in [
        &header::CONNECTION,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::TE,
        &header::TRAILER,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
        &header::PROXY_AUTHORIZATION,
        &header::PROXY_AUTHENTICATE,
    ] {
        headers.remove(name);
    }
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
        let xff = match headers.get(&X_FORWARDED_FOR).filter(|_| trusted) {
            Some(_) => append_list(headers.get_all(&X_FORWARDED_FOR).iter(), conn.peer_ip_value.as_bytes()),
            None => Some(conn.peer_ip_value.clone()),
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
        let mut element = String::with_capacity(64);
        element.push_str(&conn.forwarded_for);
        element.push_str(";proto=");
        element.push_str(conn.scheme);
        if let Some(host) = original_host.and_then(|h| h.to_str().ok()) {
            element.push_str(";host=");
            push_forwarded_value(&mut element, host);
        }
        let value = if trusted && headers.contains_key(header::FORWARDED) {
            append_list(headers.get_all(header::FORWARDED).iter(), element.as_bytes())
        } else {
            HeaderValue::from_str(&element).ok()
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

/// The request's host for routing: lowercase, without port. From the absolute-form target when
/// there is one (it overrides `Host`, RFC 9112 §3.2.2), else from the single `Host` header.
pub fn request_host(parts: &Parts) -> Result<Option<Cow<'_, str>>, ProxyError> {
    let raw: &str = if let Some(authority) = parts.uri.authority() {
        if authority.as_str().contains('@') {
            return Err(ProxyError::BadRequest("user information is not allowed in the request target".into()));
        }
        authority.as_str()
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
            None => return Ok(None),
            Some(v) => v.to_str().map_err(|_| ProxyError::BadRequest("invalid Host header".into()))?,
        }
    };
    let host = strip_port(raw).ok_or_else(|| ProxyError::BadRequest("invalid Host header".into()))?;
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Ok(Some(Cow::Owned(host.to_ascii_lowercase())))
    } else {
        Ok(Some(Cow::Borrowed(host)))
    }
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
        strip_hop_by_hop(&mut h);
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
