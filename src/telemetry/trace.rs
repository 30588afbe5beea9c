//! W3C Trace Context (`traceparent`, `tracestate`): continued from the client when it sends a
//! valid one, started when it does not, and passed on to the upstream with the gateway as the
//! parent of what the upstream does.
//!
//! The gateway is one hop of the trace: the upstream receives the client's trace id with a span
//! id of the gateway's own, so a tracing backend shows client → gateway → service. Whether the
//! trace is sampled follows the client's flag when there is one (parent-based) and `sampling`
//! otherwise. A malformed `traceparent` (wrong length, uppercase or non-hex digits, all-zero ids,
//! version `ff`) starts a new trace and the client's `tracestate` is dropped with it, as the
//! specification asks; a `tracestate` longer than 512 bytes or with characters outside its
//! grammar is dropped alone.

use http::{HeaderMap, HeaderValue};

pub static TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
pub static TRACESTATE: http::HeaderName = http::HeaderName::from_static("tracestate");

/// The longest `tracestate` passed on (the specification's 32 members of ≤ 256 bytes can be
/// longer; 512 bytes is what vendors keep in practice).
const MAX_TRACESTATE: usize = 512;

/// A request's place in a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    /// The gateway's span for this request: the upstream's parent.
    pub span_id: [u8; 8],
    /// The client's span, when it sent one.
    pub parent_id: Option<[u8; 8]>,
    pub sampled: bool,
}

impl TraceContext {
    /// Continues the client's trace or starts one, and rewrites the request's headers for the
    /// upstream. `sampling` is the share of new traces that are sampled.
    pub fn apply(headers: &mut HeaderMap, sampling: f64) -> TraceContext {
        let incoming = headers.get(&TRACEPARENT).and_then(|v| parse(v.as_bytes()));
        let context = match incoming {
            Some((trace_id, parent, flags)) => {
                TraceContext { trace_id, span_id: new_span_id(), parent_id: Some(parent), sampled: flags & 1 == 1 }
            }
            None => {
                // No usable parent: its tracestate means nothing either.
                headers.remove(&TRACESTATE);
                TraceContext {
                    trace_id: trace_id(),
                    span_id: new_span_id(),
                    parent_id: None,
                    sampled: sampling >= 1.0 || (sampling > 0.0 && fastrand::f64() < sampling),
                }
            }
        };
        // Several tracestate fields are one list (RFC 9110 field combination).
        if headers.get_all(&TRACESTATE).iter().nth(1).is_some() {
            let joined: Vec<&[u8]> = headers.get_all(&TRACESTATE).iter().map(HeaderValue::as_bytes).collect();
            let joined = joined.join(&b","[..]);
            match HeaderValue::from_bytes(&joined) {
                Ok(value) => {
                    headers.insert(TRACESTATE.clone(), value);
                }
                Err(_) => {
                    headers.remove(&TRACESTATE);
                }
            }
        }
        if headers.get(&TRACESTATE).is_some_and(|v| !valid_tracestate(v.as_bytes())) {
            headers.remove(&TRACESTATE);
        }
        headers.insert(TRACEPARENT.clone(), context.header());
        context
    }

    /// `00-<trace id>-<span id>-<flags>`, with the gateway's span as the parent.
    pub fn header(&self) -> HeaderValue {
        self.header_with(&self.span_id)
    }

    /// The header with another of the gateway's spans (a try of the upstream) as the parent.
    pub fn header_with(&self, span_id: &[u8; 8]) -> HeaderValue {
        let mut text = String::with_capacity(55);
        text.push_str("00-");
        crate::text::push_hex(&mut text, &self.trace_id);
        text.push('-');
        crate::text::push_hex(&mut text, span_id);
        text.push_str(if self.sampled { "-01" } else { "-00" });
        // One allocation: the header takes the text's buffer.
        HeaderValue::from_maybe_shared(bytes::Bytes::from(text)).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
    }

    pub fn trace_id_hex(&self) -> String {
        crate::text::hex_encode(&self.trace_id)
    }
}

fn trace_id() -> [u8; 16] {
    loop {
        let id = fastrand::u128(..).to_be_bytes();
        if id != [0; 16] {
            return id;
        }
    }
}

/// A new, non-zero span id.
pub fn new_span_id() -> [u8; 8] {
    loop {
        let id = fastrand::u64(..).to_be_bytes();
        if id != [0; 8] {
            return id;
        }
    }
}

/// `(trace id, parent id, flags)` of a valid `traceparent`.
pub fn parse(value: &[u8]) -> Option<([u8; 16], [u8; 8], u8)> {
    if value.len() < 55 {
        return None;
    }
    let version = hex_byte(&value[0..2])?;
    // Version 00 is exactly 55 bytes; a later version may carry more after a dash. ff is invalid.
    if version == 0xff || (version == 0 && value.len() != 55) || (value.len() > 55 && value[55] != b'-') {
        return None;
    }
    if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let mut trace_id = [0u8; 16];
    for (i, byte) in trace_id.iter_mut().enumerate() {
        *byte = hex_byte(&value[3 + 2 * i..5 + 2 * i])?;
    }
    let mut parent = [0u8; 8];
    for (i, byte) in parent.iter_mut().enumerate() {
        *byte = hex_byte(&value[36 + 2 * i..38 + 2 * i])?;
    }
    let flags = hex_byte(&value[53..55])?;
    if trace_id == [0; 16] || parent == [0; 8] {
        return None;
    }
    Some((trace_id, parent, flags))
}

/// Two lowercase hex digits (the specification forbids uppercase).
fn hex_byte(pair: &[u8]) -> Option<u8> {
    let digit = |c: u8| if c.is_ascii_uppercase() { None } else { crate::text::hex_value(c) };
    Some(digit(*pair.first()?)? << 4 | digit(*pair.get(1)?)?)
}

/// A `tracestate` of at most 512 bytes, in the characters its list-members may use.
fn valid_tracestate(value: &[u8]) -> bool {
    !value.is_empty()
        && value.len() <= MAX_TRACESTATE
        && value.iter().all(|&c| (0x20..=0x7e).contains(&c))
        && value.split(|&c| c == b',').all(|member| {
            let member = member.trim_ascii();
            member.is_empty() || member.iter().filter(|&&c| c == b'=').count() >= 1 && member[0] != b'='
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_is_continued_with_the_gateways_span() {
        let mut headers = HeaderMap::new();
        headers.insert(&TRACEPARENT, HeaderValue::from_static(VALID));
        headers.insert(&TRACESTATE, HeaderValue::from_static("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"));
        let context = TraceContext::apply(&mut headers, 0.0);
        assert_eq!(context.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(context.sampled, "the client's flag wins over sampling 0");
        let sent = headers[&TRACEPARENT].to_str().unwrap().to_owned();
        assert!(sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "{sent}");
        assert!(!sent.contains("00f067aa0ba902b7"), "the gateway's own span is the upstream's parent: {sent}");
        assert!(sent.ends_with("-01"));
        assert_eq!(headers[&TRACESTATE], "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7");
        // A later version with more fields is read for what version 00 defines.
        assert!(parse(format!("01{}-what-comes-next", &VALID[2..]).as_bytes()).is_some());
    }

    #[test]
    fn malformed_traceparents_start_a_new_trace_and_drop_tracestate() {
        let bad = [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            "00-4bf92f3577b34da6a3ce929d0e0e47zz-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-011",
        ];
        for value in bad {
            assert!(parse(value.as_bytes()).is_none(), "{value}");
            let mut headers = HeaderMap::new();
            headers.insert(&TRACEPARENT, HeaderValue::from_str(value).unwrap());
            headers.insert(&TRACESTATE, HeaderValue::from_static("vendor=value"));
            let context = TraceContext::apply(&mut headers, 1.0);
            assert!(context.parent_id.is_none() && context.sampled, "{value}");
            assert!(headers.get(&TRACESTATE).is_none(), "{value}");
            assert!(parse(headers[&TRACEPARENT].as_bytes()).is_some(), "a valid header is sent instead of {value}");
        }
        // Non-UTF-8 bytes are not a traceparent either.
        let mut headers = HeaderMap::new();
        headers.insert(&TRACEPARENT, HeaderValue::from_bytes(b"00-\xff\xfe").unwrap());
        assert!(TraceContext::apply(&mut headers, 0.0).parent_id.is_none());
    }

    #[test]
    fn oversized_or_invalid_tracestate_is_dropped_alone() {
        for state in ["=novalue", &"a=b,".repeat(200)] {
            let mut headers = HeaderMap::new();
            headers.insert(&TRACEPARENT, HeaderValue::from_static(VALID));
            headers.insert(&TRACESTATE, HeaderValue::from_str(state).unwrap());
            let context = TraceContext::apply(&mut headers, 0.0);
            assert!(context.parent_id.is_some());
            assert!(headers.get(&TRACESTATE).is_none(), "{state}");
        }
        // Two tracestate fields are one list; too long together, dropped.
        let mut headers = HeaderMap::new();
        headers.insert(&TRACEPARENT, HeaderValue::from_static(VALID));
        headers.append(&TRACESTATE, HeaderValue::from_static("a=1"));
        headers.append(&TRACESTATE, HeaderValue::from_static("b=2"));
        TraceContext::apply(&mut headers, 0.0);
        assert_eq!(headers.get_all(&TRACESTATE).iter().collect::<Vec<_>>(), ["a=1,b=2"]);
        let long = "x=".to_owned() + &"y".repeat(300);
        headers.insert(&TRACESTATE, HeaderValue::from_str(&long).unwrap());
        headers.append(&TRACESTATE, HeaderValue::from_str(&long).unwrap());
        TraceContext::apply(&mut headers, 0.0);
        assert!(headers.get(&TRACESTATE).is_none());
    }

    #[test]
    fn new_traces_follow_the_sampling_ratio() {
        let sampled = (0..10_000).filter(|_| TraceContext::apply(&mut HeaderMap::new(), 0.1).sampled).count();
        assert!((800..=1200).contains(&sampled), "{sampled} of 10000 at 10%");
        assert!(!TraceContext::apply(&mut HeaderMap::new(), 0.0).sampled);
    }
}
