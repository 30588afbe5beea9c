//! Steps 6 and 7 with retries: pick an endpoint, send, and try again elsewhere when the upstream's
//! retry policy, the request's method and the retry budget allow.
//!
//! Every try's outcome feeds the endpoint's passive health (a connection failure, a reset, a
//! timeout or a 5xx counts against it) and its latency estimate (for `ewma`). A retry avoids the
//! endpoints this request already tried when another one is usable, and waits a jittered,
//! growing backoff first. A request body is sent again only if it was kept: empty, read whole
//! because it was small (`retries.max_body`), or never sent because the connection failed.

use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::state::UpstreamHost;
use crate::telemetry::RequestLog;
use crate::transport::clock;
use crate::upstream::breaker::Refusal;
use crate::upstream::client::{self, ResponseBody, UpstreamError};
use crate::upstream::{InFlight, Pick, Upstream};

use super::body::UpstreamBody;
use super::error::{ErrorSource, ProxyError};

/// One request's tries at one upstream.
pub struct Tries<'a> {
    pub upstream: &'a Upstream,
    pub host: &'a UpstreamHost,
    pub original_host: Option<&'a HeaderValue>,
    /// The consistent-hashing key, if the upstream hashes.
    pub hash: Option<u64>,
    /// The route's connect and per-try timeouts, where it sets them.
    pub timeouts: client::TryTimeouts,
}

impl Tries<'_> {
    pub async fn run(
        self,
        parts: Parts,
        body: UpstreamBody,
        log: &mut RequestLog,
    ) -> Result<(Response<ResponseBody>, InFlight), ProxyError> {
        let upstream = self.upstream;
        let retry = &upstream.retry;
        upstream.budget.request();
        let may_resend = retry.may_resend(&parts.method);
        // A body that can be sent again: none, or one held in memory.
        let kept: Option<Option<Bytes>> = match &body {
            UpstreamBody::Empty => Some(None),
            UpstreamBody::Full(bytes) => Some(bytes.clone()),
            UpstreamBody::Streaming { .. } => None,
        };
        // After a try that reached the upstream, the request is gone: keep a copy of its head if a
        // retry may need it (connection failures give the whole request back).
        let resend_head = retry.attempts > 0
            && may_resend
            && kept.is_some()
            && (retry.on_reset || retry.on_timeout || !retry.on_statuses.is_empty());
        let mut request = Some(Request::from_parts(parts, body));
        // Boxed: only a request that may be retried keeps one, and it would weigh on every
        // request's future otherwise.
        let mut template: Option<Box<(http::Method, http::Uri, http::Version, http::HeaderMap)>> = None;
        let mut tried: Vec<u64> = Vec::new();
        let mut attempt = 0u32;
        let mut first_started: Option<Instant> = None;
        loop {
            let now_ms = clock::now_ms();
            let endpoint = upstream
                .select(Pick { hash: self.hash, tried: &tried, now_ms })
                .ok_or_else(|| ProxyError::NoEndpoint(upstream.name.to_string()))?;
            log.set_upstream(&endpoint.url);
            let retries_left = attempt < retry.attempts;
            let mut in_flight;
            let traced;
            let started = Instant::now();
            // A failure becomes the client's answer once, here: its code, and whether it is the
            // upstream's fault (breaker, metrics, retries) or the client's (its body broke) or the
            // gateway's own cap, all follow from that one conversion.
            let result = {
                // This try's request lives in this block only: moved into the send, it takes no
                // room of its own in this future while the send is awaited.
                let mut this_try = match request.take() {
                    Some(r) => r,
                    None => {
                        let (method, uri, version, headers) =
                            *template.clone().ok_or(ProxyError::UpstreamFailed("no request to retry".into()))?;
                        let body = match kept.clone().flatten() {
                            Some(bytes) => UpstreamBody::Full(Some(bytes)),
                            None => UpstreamBody::Empty,
                        };
                        let mut r = Request::new(body);
                        *r.method_mut() = method;
                        *r.uri_mut() = uri;
                        *r.version_mut() = version;
                        *r.headers_mut() = headers;
                        r
                    }
                };
                set_host(this_try.headers_mut(), self.host, self.original_host, &endpoint.authority);
                if resend_head && retries_left && template.is_none() {
                    let r = &this_try;
                    template = Some(Box::new((r.method().clone(), r.uri().clone(), r.version(), r.headers().clone())));
                }
                // The breaker reads the clock afresh: its open time is short, and the coarse clock
                // can be a quarter of a second behind.
                let ticket = match upstream.breaker.as_ref().map(|b| b.admit(clock::tick())) {
                    None => None,
                    Some(Ok(ticket)) => Some(ticket),
                    Some(Err(refusal)) => {
                        return Err(match refusal {
                            Refusal::Open => ProxyError::CircuitOpen(upstream.name.to_string()),
                            Refusal::Overloaded => ProxyError::UpstreamOverloaded(upstream.name.to_string()),
                        });
                    }
                };
                // Counted by the endpoint and the breaker until the response body has been sent,
                // or until this future is dropped (the client went away, the route's timeout ran
                // out).
                in_flight = InFlight::new(&endpoint.state, ticket);
                // A traced request: this try is a span of its own, the upstream's parent.
                traced = log.span().map(|span| {
                    let child = span.start_try(this_try.headers_mut());
                    let target = this_try.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned();
                    (child, this_try.method().clone(), target)
                });
                client::send_or_return(upstream, &endpoint, this_try, self.timeouts)
            }
            .await
            .map_err(|(error, back)| {
                let connect = matches!(error, UpstreamError::Connect { .. } | UpstreamError::ConnectTimeout { .. });
                let timeout = matches!(error, UpstreamError::ResponseTimeout { .. });
                (ProxyError::from(error), connect, timeout, back)
            });
            // One clock reading for this try's latency (metrics, balancer) and the request's.
            let took = started.elapsed();
            first_started.get_or_insert(started);
            let upstreams_fault = |e: &ProxyError| e.source() == ErrorSource::Upstream;
            if let (Some((child, method, target)), Some(span)) = (traced, log.span()) {
                let outcome = match &result {
                    Ok(response) => Ok(response.status().as_u16()),
                    Err((error, ..)) => Err(error.code()),
                };
                span.finish_try(child, &method, &endpoint, &target, outcome, attempt);
            }
            if upstream.breaker.is_some() {
                let failed = match &result {
                    Ok(response) => response.status().is_server_error(),
                    Err((error, ..)) => upstreams_fault(error),
                };
                in_flight.finish(failed, clock::tick());
            }
            if let Some(metrics) = &upstream.metrics {
                match &result {
                    Ok(response) => metrics.tried(Some(response.status().as_u16()), took.as_secs_f64()),
                    Err((error, ..)) if upstreams_fault(error) => metrics.tried(None, 0.0),
                    // The client's body broke, or the gateway's own cap refused: not the upstream's.
                    Err(_) => {}
                }
            }
            match result {
                Ok(response) => {
                    let done_ms = clock::now_ms();
                    endpoint.state.latency.observe(took.as_nanos() as u64, done_ms);
                    let status = response.status();
                    upstream.record(&endpoint, status.is_server_error(), done_ms);
                    let again = retries_left
                        && may_resend
                        && template.is_some()
                        && retry.on_statuses.contains(&status)
                        && upstream.budget.try_retry();
                    if !again {
                        // From the first try's start to this response's head.
                        let first = first_started.map_or(started, |f| f.min(started));
                        log.set_upstream_latency(started.duration_since(first) + took);
                        return Ok((response, in_flight));
                    }
                    // The response is dropped unread: its connection is closed, not pooled.
                    drop((response, in_flight));
                    tracing::debug!(upstream = %upstream.name, endpoint = %endpoint.url, %status, "retrying");
                }
                Err((proxy_error, connect, timeout, back)) => {
                    drop(in_flight);
                    if !upstreams_fault(&proxy_error) {
                        // The client's body broke: not the endpoint's fault, and not retried.
                        return Err(proxy_error);
                    }
                    upstream.record(&endpoint, true, clock::now_ms());
                    let wanted = (connect && retry.on_connect_failure)
                        || (!connect && !timeout && retry.on_reset && may_resend)
                        || (timeout && retry.on_timeout && may_resend);
                    // Sent again: the request given back (nothing went out), or a kept copy.
                    let resendable = back.is_some() || template.is_some();
                    if !(retries_left && wanted && resendable && upstream.budget.try_retry()) {
                        return Err(proxy_error);
                    }
                    request = back;
                    tracing::debug!(upstream = %upstream.name, endpoint = %endpoint.url, error = %proxy_error, "retrying");
                }
            }
            tried.push(endpoint.state.id);
            attempt += 1;
            if let Some(metrics) = &upstream.metrics {
                metrics.retried();
            }
            let wait = retry.backoff(attempt);
            if !wait.is_zero() {
                Box::pin(tokio::time::sleep(wait)).await;
            }
        }
    }
}

fn set_host(
    headers: &mut http::HeaderMap,
    host: &UpstreamHost,
    original: Option<&HeaderValue>,
    endpoint: &HeaderValue,
) {
    let value = match host {
        UpstreamHost::Endpoint => endpoint.clone(),
        // An HTTP/1.0 client may send no Host; HTTP/1.1 upstream requests must have one.
        UpstreamHost::Preserve => original.cloned().unwrap_or_else(|| endpoint.clone()),
        UpstreamHost::Rewrite(value) => value.clone(),
    };
    headers.insert(header::HOST, value);
}

/// Reads a body announced as at most `max` bytes, so it can be sent more than once.
pub async fn read_small(body: Incoming, max: u64) -> Result<Bytes, ProxyError> {
    let limited = http_body_util::Limited::new(body, usize::try_from(max).unwrap_or(usize::MAX));
    match limited.collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(ProxyError::BadRequest("the request body is longer than its Content-Length".into()))
        }
        Err(_) => Err(ProxyError::BadRequest("the request body is malformed or was cut off".into())),
    }
}

/// Reads a whole body of at most `limit` bytes; more is `413 payload_too_large`.
pub async fn read_limited(body: Incoming, limit: u64) -> Result<Bytes, ProxyError> {
    match http_body_util::Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX)).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ProxyError::PayloadTooLarge { limit }),
        Err(_) => Err(ProxyError::BadRequest("the request body is malformed or was cut off".into())),
    }
}

/// Marks the copies sent to a mirror; removed from every client request.
pub static MIRROR_HEADER: http::HeaderName = http::HeaderName::from_static("x-gatehouse-mirror");

/// The largest body copied to a mirror (kept in memory for it).
pub const MIRROR_MAX_BODY: u64 = 64 * 1024;
/// Copies in flight to one mirror at most: a slow or hanging shadow costs a bounded amount.
const MIRROR_IN_FLIGHT: usize = 64;

/// Sends a copy of the request to the route's mirror, in the background, when the dice say so
/// and the body is at hand (empty or kept in memory). The copy's answer is read and discarded;
/// nothing about it reaches the client or delays the real request.
pub fn mirror(mirror: &crate::state::Mirror, parts: &Parts, body: &UpstreamBody) {
    if mirror.share < 1_000_000 && fastrand::u32(0..1_000_000) >= mirror.share {
        return;
    }
    let body = match body {
        UpstreamBody::Empty => UpstreamBody::Empty,
        UpstreamBody::Full(bytes) => UpstreamBody::Full(bytes.clone()),
        // A streamed body goes to the upstream only once.
        UpstreamBody::Streaming { .. } => return,
    };
    use std::sync::atomic::Ordering;
    if mirror.in_flight.fetch_add(1, Ordering::AcqRel) >= MIRROR_IN_FLIGHT {
        mirror.in_flight.fetch_sub(1, Ordering::AcqRel);
        return;
    }
    let mut request = Request::new(body);
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = parts.uri.clone();
    *request.version_mut() = parts.version;
    *request.headers_mut() = parts.headers.clone();
    request.headers_mut().insert(MIRROR_HEADER.clone(), HeaderValue::from_static("1"));
    let upstream = mirror.upstream.clone();
    let in_flight = mirror.in_flight.clone();
    tokio::spawn(async move {
        let now_ms = clock::now_ms();
        if let Some(endpoint) = upstream.select(Pick { now_ms, ..Pick::default() }) {
            request.headers_mut().insert(header::HOST, endpoint.authority.clone());
            let exchange = async {
                if let Ok(response) = client::send(&upstream, &endpoint, request).await {
                    // Read to the end, the connection goes back to the pool.
                    let _ = response.into_body().collect().await;
                }
            };
            // The response head is bounded by the upstream's timeout; the body by this.
            let _ = tokio::time::timeout(upstream.response_header_timeout * 2, exchange).await;
        }
        in_flight.fetch_sub(1, Ordering::AcqRel);
    });
}
