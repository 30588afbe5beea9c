//! gRPC through the gateway: a request is gRPC when its content type is `application/grpc…`.
//! Its `grpc-timeout` bounds the route's time, and the gateway's own errors are answered the way
//! gRPC clients read them — HTTP 200 with `grpc-status` and `grpc-message` (a "trailers-only"
//! response) — not as JSON.

use std::time::Duration;

use http::{HeaderMap, HeaderValue, Response, header};

use super::body::ProxyBody;
use super::error::ProxyError;

static GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
static GRPC_MESSAGE: http::HeaderName = http::HeaderName::from_static("grpc-message");
static GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");

/// The request's gRPC content type, if it is a gRPC (or gRPC-Web) request.
pub fn content_type(headers: &HeaderMap) -> Option<HeaderValue> {
    let value = headers.get(header::CONTENT_TYPE)?;
    value.as_bytes().starts_with(b"application/grpc").then(|| value.clone())
}

/// `grpc-timeout`: at most 8 digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`). A malformed one is
/// ignored (the route's own timeout still applies).
pub fn timeout(headers: &HeaderMap) -> Option<Duration> {
    let text = headers.get(&GRPC_TIMEOUT)?.to_str().ok()?;
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The gRPC status of one of the gateway's errors.
pub fn status_of(err: &ProxyError) -> u8 {
    match err.status().as_u16() {
        400 | 414 | 431 => 3, // INVALID_ARGUMENT
        401 => 16,            // UNAUTHENTICATED
        403 => 7,             // PERMISSION_DENIED
        404 | 405 => 12,      // UNIMPLEMENTED
        408 | 504 => 4,       // DEADLINE_EXCEEDED
        413 | 429 => 8,       // RESOURCE_EXHAUSTED
        502 | 503 => 14,      // UNAVAILABLE
        _ => 13,              // INTERNAL
    }
}

/// A trailers-only gRPC answer for one of the gateway's errors.
pub fn error_response(
    err: &ProxyError,
    content_type: HeaderValue,
    request_id: Option<&HeaderValue>,
    request_id_header: &http::HeaderName,
) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::empty());
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, content_type);
    headers.insert(GRPC_STATUS.clone(), HeaderValue::from(u16::from(status_of(err))));
    let message = format!("{} ({})", err.public_message(), err.code());
    if let Ok(value) = HeaderValue::from_str(&percent_encode(&message)) {
        headers.insert(GRPC_MESSAGE.clone(), value);
    }
    if let Some(id) = request_id {
        headers.insert(request_id_header.clone(), id.clone());
    }
    response
}

/// `grpc-message` encoding: printable ASCII but `%` as is, everything else as `%XX` of its UTF-8.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for &b in text.as_bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_and_bad_ones_are_ignored() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(&GRPC_TIMEOUT, HeaderValue::from_str(v).unwrap());
            timeout(&h)
        };
        assert_eq!(with("1S"), Some(Duration::from_secs(1)));
        assert_eq!(with("250m"), Some(Duration::from_millis(250)));
        assert_eq!(with("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(with("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "S", "1", "123456789S", "1s", "-1S", "1.5S", "1 S", "١S"] {
            assert_eq!(with(bad), None, "{bad}");
        }
    }

    #[test]
    fn messages_are_percent_encoded() {
        assert_eq!(percent_encode("no route: 100% ünique\n"), "no route: 100%25 %C3%BCnique%0A");
    }

    #[test]
    fn errors_map_to_grpc_statuses() {
        assert_eq!(status_of(&ProxyError::unauthorized(None, "no token")), 16);
        assert_eq!(status_of(&ProxyError::RouteTimeout(Duration::from_secs(1))), 4);
        assert_eq!(status_of(&ProxyError::UpstreamUnavailable("x".into())), 14);
        assert_eq!(status_of(&ProxyError::TooBusy), 8);
        assert_eq!(status_of(&ProxyError::NoRoute { method: http::Method::POST, path: "/x".into() }), 12);
    }
}
