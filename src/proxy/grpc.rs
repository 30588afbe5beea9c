//! gRPC through the gateway: a request is gRPC when its content type is `application/grpc…`.
//! Its `grpc-timeout` bounds the route's time, and the gateway's own errors are answered the way
//! gRPC clients read them — HTTP 200 with `grpc-status` and `grpc-message` (a "trailers-only"
//! response) — not as JSON.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, header};

use super::body::ProxyBody;
use super::error::ProxyError;

/// The largest gRPC-Web text body read (base64, decoded whole) when no `max_body_size` is set.
pub const MAX_WEB_TEXT_BODY: u64 = 4 * 1024 * 1024;

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
        let limited = ProxyError::RateLimited { retry_after: 1, limit: "per-client".into(), quota: false };
        assert_eq!(status_of(&limited), 8);
        assert_eq!(status_of(&ProxyError::TooBusy), 14, "load shedding: try again (UNAVAILABLE)");
        assert_eq!(status_of(&ProxyError::NoRoute { method: http::Method::POST, path: "/x".into() }), 12);
    }
}

/// A gRPC-Web request (`application/grpc-web[+proto]`, or `-text` for base64 bodies), translated
/// to gRPC for the upstream and back for the browser.
#[derive(Debug, Clone)]
pub struct Web {
    pub text: bool,
    /// The content type the client used, for the answer.
    pub client_type: HeaderValue,
    /// `application/grpc` with the client's suffix (`+proto`), for the upstream.
    pub upstream_type: HeaderValue,
}

impl Web {
    /// `value`: the request's `Content-Type` (as `content_type` found it).
    pub fn of(value: &HeaderValue) -> Option<Web> {
        let rest = value.to_str().ok()?.strip_prefix("application/grpc-web")?;
        let (text, suffix) = match rest.strip_prefix("-text") {
            Some(suffix) => (true, suffix),
            None => (false, rest),
        };
        if !(suffix.is_empty() || suffix.starts_with('+') || suffix.starts_with(';')) {
            return None;
        }
        let upstream_type = HeaderValue::from_str(&format!("application/grpc{suffix}")).ok()?;
        Some(Web { text, client_type: value.clone(), upstream_type })
    }

    /// The request body for the upstream: `-text` bodies are base64, possibly several padded
    /// pieces one after the other.
    pub fn decode_request(&self, body: Bytes) -> Result<Bytes, ProxyError> {
        use base64::Engine;
        let chars: Vec<u8> = body.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
        if chars.len() % 4 != 0 {
            return Err(ProxyError::BadRequest("a grpc-web-text body is not base64".into()));
        }
        let mut out = Vec::with_capacity(chars.len() / 4 * 3);
        for quad in chars.chunks(4) {
            base64::engine::general_purpose::STANDARD
                .decode_vec(quad, &mut out)
                .map_err(|_| ProxyError::BadRequest("a grpc-web-text body is not base64".into()))?;
        }
        Ok(Bytes::from(out))
    }

    /// A frame of the upstream's answer as the browser reads it: data as it is (base64 for
    /// `-text`, each frame padded on its own so it can be decoded as it arrives), and the trailers
    /// as a last frame flagged 0x80 holding them as header lines.
    pub fn translate(&self, frame: http_body::Frame<Bytes>) -> Bytes {
        let bytes = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => match frame.into_trailers() {
                Ok(trailers) => {
                    let mut block = String::new();
                    for (name, value) in &trailers {
                        block.push_str(name.as_str());
                        block.push(':');
                        block.push_str(&String::from_utf8_lossy(value.as_bytes()));
                        block.push_str("\r\n");
                    }
                    let mut out = Vec::with_capacity(5 + block.len());
                    out.push(0x80);
                    out.extend_from_slice(&u32::try_from(block.len()).unwrap_or(u32::MAX).to_be_bytes());
                    out.extend_from_slice(block.as_bytes());
                    Bytes::from(out)
                }
                Err(_) => Bytes::new(),
            },
        };
        if self.text && !bytes.is_empty() {
            use base64::Engine;
            Bytes::from(base64::engine::general_purpose::STANDARD.encode(&bytes))
        } else {
            bytes
        }
    }
}
