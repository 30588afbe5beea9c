//! `ProxyError`: everything that can go wrong with a request, and the one function that turns it
//! into the response the client sees.
//!
//! Each variant knows its source (the client, the upstream, or gatehouse itself), its status, a
//! stable machine-readable code, and whether retrying it on another endpoint is safe. The body is
//! always `{"error":{"status":…,"code":"…","message":"…","request_id":"…"}}`.

use std::borrow::Cow;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use crate::proxy::body::{BodyError, ProxyBody};
use crate::upstream::client::UpstreamError;

/// Who caused an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorSource {
    Downstream,
    Upstream,
    Internal,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("{0}")]
    BadRequest(Cow<'static, str>),
    #[error("no route matches {method} {path}")]
    NoRoute { method: http::Method, path: String },
    #[error("method {method} is not allowed here")]
    MethodNotAllowed { method: http::Method, allow: HeaderValue },
    #[error("{message}")]
    Unauthorized { error: Option<&'static str>, message: String, challenge: Option<HeaderValue> },
    #[error("{message}")]
    Forbidden { message: String, insufficient_scope: bool },
    #[error("{0}")]
    AuthUnavailable(String),
    #[error("{}", if *quota { format!("the quota \"{limit}\" is used up; it renews in {retry_after} s") } else { format!("too many requests: the limit \"{limit}\" is used up; retry in {retry_after} s") })]
    RateLimited { retry_after: u64, limit: Box<str>, quota: bool },
    #[error("too many requests are in flight here; retry shortly")]
    TooBusy,
    #[error("the upstream {0} is failing: its circuit breaker is open")]
    CircuitOpen(String),
    #[error("the upstream {0} has too many requests in flight")]
    UpstreamOverloaded(String),
    #[error("the rate limit cannot be checked: its shared counters are unavailable")]
    RateLimitUnavailable,
    #[error("the request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: u64 },
    #[error("the request target is longer than {limit} bytes")]
    UriTooLong { limit: usize },
    #[error("{0}")]
    HeadersTooLarge(Cow<'static, str>),
    #[error("the upstream is unavailable: {0}")]
    UpstreamUnavailable(String),
    #[error("connecting to the upstream timed out")]
    UpstreamConnectTimeout,
    #[error("the upstream failed: {0}")]
    UpstreamFailed(String),
    #[error("upstream {0} has no endpoints")]
    NoEndpoint(String),
    #[error("the upstream did not answer within {0:?}")]
    UpstreamTimeout(std::time::Duration),
    #[error("the route's timeout of {0:?} expired")]
    RouteTimeout(std::time::Duration),
    #[error("this route does not accept WebSocket upgrades")]
    UpgradeNotAllowed,
}

impl ProxyError {
    /// 401: `error` is the RFC 6750 error code (`invalid_token`), none when no token was sent.
    pub fn unauthorized(error: Option<&'static str>, message: &str) -> ProxyError {
        ProxyError::Unauthorized { error, message: message.to_owned(), challenge: None }
    }

    /// 401 with another challenge than `Bearer` (e.g. `Basic realm="…"`).
    pub fn unauthorized_with(challenge: HeaderValue, error: Option<&'static str>, message: &str) -> ProxyError {
        ProxyError::Unauthorized { error, message: message.to_owned(), challenge: Some(challenge) }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) | ProxyError::UpgradeNotAllowed => StatusCode::BAD_REQUEST,
            ProxyError::NoRoute { .. } => StatusCode::NOT_FOUND,
            ProxyError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            ProxyError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ProxyError::AuthUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::RateLimitUnavailable
            | ProxyError::TooBusy
            | ProxyError::CircuitOpen(_)
            | ProxyError::UpstreamOverloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::UriTooLong { .. } => StatusCode::URI_TOO_LONG,
            ProxyError::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::UpstreamUnavailable(_) | ProxyError::UpstreamFailed(_) => StatusCode::BAD_GATEWAY,
            ProxyError::NoEndpoint(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::UpstreamConnectTimeout | ProxyError::UpstreamTimeout(_) | ProxyError::RouteTimeout(_) => {
                StatusCode::GATEWAY_TIMEOUT
            }
        }
    }

    /// Stable, documented, machine-readable: clients and dashboards key on it.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::NoRoute { .. } => "route_not_found",
            ProxyError::MethodNotAllowed { .. } => "method_not_allowed",
            ProxyError::Unauthorized { error: Some(code), .. } => code,
            ProxyError::Unauthorized { error: None, .. } => "unauthorized",
            ProxyError::Forbidden { .. } => "forbidden",
            ProxyError::AuthUnavailable(_) => "auth_unavailable",
            ProxyError::RateLimited { quota: false, .. } => "rate_limited",
            ProxyError::RateLimited { quota: true, .. } => "quota_exceeded",
            ProxyError::RateLimitUnavailable => "rate_limit_unavailable",
            ProxyError::TooBusy => "concurrency_limited",
            ProxyError::CircuitOpen(_) => "circuit_open",
            ProxyError::UpstreamOverloaded(_) => "upstream_overloaded",
            ProxyError::PayloadTooLarge { .. } => "payload_too_large",
            ProxyError::UriTooLong { .. } => "uri_too_long",
            ProxyError::HeadersTooLarge(_) => "headers_too_large",
            ProxyError::UpstreamUnavailable(_) => "upstream_unavailable",
            ProxyError::UpstreamConnectTimeout => "upstream_connect_timeout",
            ProxyError::UpstreamFailed(_) => "upstream_error",
            ProxyError::NoEndpoint(_) => "no_endpoint",
            ProxyError::UpstreamTimeout(_) => "upstream_timeout",
            ProxyError::RouteTimeout(_) => "route_timeout",
            ProxyError::UpgradeNotAllowed => "upgrade_not_allowed",
        }
    }

    pub fn source(&self) -> ErrorSource {
        match self {
            ProxyError::BadRequest(_)
            | ProxyError::UpgradeNotAllowed
            | ProxyError::NoRoute { .. }
            | ProxyError::MethodNotAllowed { .. }
            | ProxyError::UriTooLong { .. }
            | ProxyError::PayloadTooLarge { .. }
            | ProxyError::Unauthorized { .. }
            | ProxyError::Forbidden { .. }
            | ProxyError::RateLimited { .. }
            // Load shedding is expected under load: logged like a client's error, not as a failure.
            | ProxyError::TooBusy
            | ProxyError::CircuitOpen(_)
            | ProxyError::UpstreamOverloaded(_)
            | ProxyError::HeadersTooLarge(_) => ErrorSource::Downstream,
            ProxyError::UpstreamUnavailable(_)
            | ProxyError::UpstreamConnectTimeout
            | ProxyError::UpstreamFailed(_)
            | ProxyError::UpstreamTimeout(_) => ErrorSource::Upstream,
            ProxyError::NoEndpoint(_) | ProxyError::RouteTimeout(_) | ProxyError::RateLimitUnavailable => {
                ErrorSource::Internal
            }
            ProxyError::AuthUnavailable(_) => ErrorSource::Upstream,
        }
    }

    /// Whether another endpoint may be tried: only when the request cannot have reached the upstream.
    pub fn retryable(&self) -> bool {
        matches!(self, ProxyError::UpstreamUnavailable(_) | ProxyError::UpstreamConnectTimeout)
    }

    /// The message shown to clients: upstream details (addresses, OS errors) stay in gatehouse's own
    /// logs, never in responses.
    pub fn public_message(&self) -> Cow<'static, str> {
        match self {
            ProxyError::UpstreamUnavailable(_) => "the upstream service is unavailable".into(),
            ProxyError::UpstreamFailed(_) => "the upstream service failed to answer".into(),
            ProxyError::NoEndpoint(_) => "no upstream endpoint is available".into(),
            other => other.to_string().into(),
        }
    }

    /// The one place an error becomes a response.
    pub fn to_response(
        &self,
        request_id: Option<&HeaderValue>,
        request_id_header: &http::HeaderName,
    ) -> Response<ProxyBody> {
        let status = self.status();
        // Written by hand to keep the documented field order (serde_json would sort the keys).
        let message = serde_json::Value::from(self.public_message().into_owned());
        let request_id_json = request_id
            .and_then(|v| v.to_str().ok())
            .map_or_else(|| "null".to_owned(), |id| serde_json::Value::from(id).to_string());
        let body = format!(
            "{{\"error\":{{\"status\":{},\"code\":\"{}\",\"message\":{message},\"request_id\":{request_id_json}}}}}",
            status.as_u16(),
            self.code(),
        );
        let mut response = Response::new(ProxyBody::full(Bytes::from(body)));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(id) = request_id {
            headers.insert(request_id_header.clone(), id.clone());
        }
        match self {
            ProxyError::MethodNotAllowed { allow, .. } => {
                headers.insert(header::ALLOW, allow.clone());
            }
            ProxyError::Unauthorized { challenge: Some(challenge), .. } => {
                headers.insert(header::WWW_AUTHENTICATE, challenge.clone());
            }
            ProxyError::Unauthorized { error, message, challenge: None } => {
                headers.insert(header::WWW_AUTHENTICATE, www_authenticate(*error, message));
            }
            ProxyError::RateLimited { retry_after, .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
            }
            ProxyError::TooBusy | ProxyError::CircuitOpen(_) | ProxyError::UpstreamOverloaded(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ProxyError::Forbidden { message, insufficient_scope: true } => {
                headers.insert(header::WWW_AUTHENTICATE, www_authenticate(Some("insufficient_scope"), message));
            }
            _ => {}
        }
        if self.source() == ErrorSource::Downstream && status == StatusCode::BAD_REQUEST {
            // After a malformed request the client's framing cannot be trusted any more.
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

impl From<UpstreamError> for ProxyError {
    fn from(err: UpstreamError) -> ProxyError {
        match err {
            UpstreamError::Connect { .. } => ProxyError::UpstreamUnavailable(err.to_string()),
            UpstreamError::ConnectTimeout { .. } => ProxyError::UpstreamConnectTimeout,
            UpstreamError::ResponseTimeout { after, .. } => ProxyError::UpstreamTimeout(after),
            UpstreamError::TooManyConnecting { upstream } => ProxyError::UpstreamOverloaded(upstream),
            UpstreamError::Exchange { ref source, .. } => match client_body_failure(&**source) {
                Some(BodyError::TooLarge { limit }) => ProxyError::PayloadTooLarge { limit: *limit },
                Some(_) => ProxyError::BadRequest("the request body is malformed or was cut off".into()),
                None => ProxyError::UpstreamFailed(err.to_string()),
            },
        }
    }
}

/// `Bearer realm="gatehouse"[, error="…", error_description="…"]` (RFC 6750 §3): without a
/// token there is no error code, only the challenge.
fn www_authenticate(error: Option<&str>, description: &str) -> HeaderValue {
    let mut value = String::from("Bearer realm=\"gatehouse\"");
    if let Some(error) = error {
        let description: String = description.chars().filter(|c| *c != '"' && *c != '\\' && !c.is_control()).collect();
        value.push_str(&format!(", error=\"{error}\", error_description=\"{description}\""));
    }
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("Bearer realm=\"gatehouse\""))
}

/// The client body's error, when an exchange failed because of it (bad chunking, the client went
/// away, the body was too large) rather than because of the upstream.
fn client_body_failure<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a BodyError> {
    let mut source = Some(err);
    while let Some(e) = source {
        if let Some(body_error) = e.downcast_ref::<BodyError>() {
            return Some(body_error);
        }
        source = e.source();
    }
    None
}

/// The 408 written straight to the socket when a client is too slow to send its request head (no
/// request exists yet, so there is no request id).
pub const REQUEST_TIMEOUT_RESPONSE: &[u8] = b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: 121\r\n\r\n{\"error\":{\"status\":408,\"code\":\"request_timeout\",\"message\":\"the request head was not received in time\",\"request_id\":null}}";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_raw_408_is_well_formed() {
        let text = std::str::from_utf8(REQUEST_TIMEOUT_RESPONSE).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let len: usize = head.lines().find_map(|l| l.strip_prefix("content-length: ")).unwrap().parse().unwrap();
        assert_eq!(body.len(), len);
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["status"], 408);
    }

    #[test]
    fn upstream_details_never_reach_the_client() {
        let err = ProxyError::UpstreamUnavailable("cannot connect to http://10.1.2.3:8080: refused".into());
        let msg = err.public_message();
        assert!(!msg.contains("10.1.2.3"));
        assert_eq!(err.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(err.code(), "upstream_unavailable");
    }
}
