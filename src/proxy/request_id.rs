//! The request id: kept from the client when well-formed and trusted, generated otherwise; sent
//! upstream and echoed to the client.

use http::{HeaderMap, HeaderValue};

use crate::state::ServerSettings;

/// Longest client-supplied id that is kept.
const MAX_LEN: usize = 128;

/// Returns the request's id, setting it in `headers` for the upstream.
pub fn resolve(headers: &mut HeaderMap, server: &ServerSettings) -> HeaderValue {
    if server.request_id_trust_incoming {
        let mut values = headers.get_all(&server.request_id_header).iter();
        if let (Some(v), None) = (values.next(), values.next()) {
            if is_well_formed(v.as_bytes()) {
                return v.clone();
            }
        }
    }
    let id = generate();
    headers.insert(server.request_id_header.clone(), id.clone());
    id
}

/// Ids are logged and echoed: only a safe character set is kept, so an id can't inject into logs.
fn is_well_formed(id: &[u8]) -> bool {
    !id.is_empty() && id.len() <= MAX_LEN && id.iter().all(|b| b.is_ascii_alphanumeric() || b"-_.:/+=@".contains(b))
}

/// A random (version 4) UUID.
pub fn generate() -> HeaderValue {
    let mut bytes = fastrand::u128(..).to_be_bytes();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 36];
    let mut at = 0;
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out[at] = b'-';
            at += 1;
        }
        out[at] = HEX[(b >> 4) as usize];
        out[at + 1] = HEX[(b & 0x0f) as usize];
        at += 2;
    }
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_v4_uuids_and_distinct() {
        let a = generate();
        let b = generate();
        assert_ne!(a, b);
        let s = a.to_str().unwrap();
        assert_eq!(s.len(), 36);
        assert_eq!(&s[14..15], "4");
        assert!(matches!(&s[19..20], "8" | "9" | "a" | "b"));
    }

    #[test]
    fn incoming_ids_are_kept_only_when_well_formed_and_single() {
        let server = crate::config::compile::default_server_settings();
        let mut h = HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static("abc-123"));
        assert_eq!(resolve(&mut h, &server), "abc-123");
        h.insert("x-request-id", HeaderValue::from_static("bad id\"with quotes"));
        let id = resolve(&mut h, &server);
        assert_ne!(id, "bad id\"with quotes");
        assert_eq!(h["x-request-id"], id);
        h.insert("x-request-id", HeaderValue::from_static("one"));
        h.append("x-request-id", HeaderValue::from_static("two"));
        let id = resolve(&mut h, &server);
        assert_eq!(h.get_all("x-request-id").iter().count(), 1);
        assert_ne!(id, "one");
        let long = "a".repeat(129);
        h.insert("x-request-id", HeaderValue::from_str(&long).unwrap());
        assert_ne!(resolve(&mut h, &server), long.as_str());
    }
}
