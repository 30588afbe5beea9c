//! `RequestLog`: the per-request context that becomes the access log line.
//!
//! It is created when the request head arrives and travels with the response body; it is finished
//! exactly once, when the body ends or is dropped (a client that goes away mid-response is logged
//! with status 499, as nginx does). When the access log is off, it carries nothing but the start time
//! and the connection's state: no strings are captured.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use http::{HeaderValue, Method, Uri};

use crate::transport::conn::ConnState;

use super::access_log::{AccessLogWriter, LogLine};
use super::metrics::{RouteMetrics, method_class};

pub struct RequestLog {
    start: Instant,
    conn: Arc<ConnState>,
    status: u16,
    detail: Option<Box<Detail>>,
    finished: bool,
    head_fresh: bool,
    /// The route's metric handles (the listener's unrouted ones when no route matched).
    metrics: Option<Arc<RouteMetrics>>,
    /// Which of the route's upstreams served the request, by position (None: the gateway
    /// answered by itself).
    side: Option<usize>,
    method: u8,
    /// Request body bytes, counted when the access log or the metrics want them.
    bytes_in: Option<Arc<AtomicU64>>,
    /// The identified consumer, when the metrics count consumers.
    consumer: Option<Arc<crate::policy::Consumer>>,
    /// The request's span, when it is sampled and spans are exported.
    span: Option<Box<super::otlp::RequestSpan>>,
}

struct Detail {
    sink: Arc<AccessLogWriter>,
    time: SystemTime,
    listener: Arc<str>,
    peer: SocketAddr,
    client: IpAddr,
    method: Method,
    uri: Uri,
    /// The normalised path, once known (a request rejected earlier logs the path as received).
    path: Option<String>,
    user_agent: Option<HeaderValue>,
    request_id: Option<HeaderValue>,
    trace_id: Option<String>,
    route: Option<Arc<str>>,
    consumer: Option<Arc<str>>,
    upstream: Option<Arc<str>>,
    upstream_latency: Option<Duration>,
    error: Option<&'static str>,
}

/// What the access log needs to know about the request when it starts.
pub struct LogStart<'a> {
    pub sink: Option<&'a Arc<AccessLogWriter>>,
    pub listener: &'a Arc<str>,
    pub peer: SocketAddr,
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub user_agent: Option<&'a HeaderValue>,
}

impl RequestLog {
    pub fn start(conn: Arc<ConnState>, start: Instant, info: LogStart<'_>) -> RequestLog {
        let head_fresh = conn.begin_request();
        let detail = info.sink.map(|sink| {
            Box::new(Detail {
                sink: sink.clone(),
                time: SystemTime::now(),
                listener: info.listener.clone(),
                peer: info.peer,
                client: crate::state::canonical_ip(info.peer.ip()),
                method: info.method.clone(),
                uri: info.uri.clone(),
                path: None,
                user_agent: info.user_agent.cloned(),
                request_id: None,
                trace_id: None,
                route: None,
                consumer: None,
                upstream: None,
                upstream_latency: None,
                error: None,
            })
        });
        RequestLog {
            start,
            conn,
            status: 0,
            detail,
            finished: false,
            head_fresh,
            metrics: None,
            side: None,
            method: method_class(info.method),
            bytes_in: None,
            consumer: None,
            span: None,
        }
    }

    /// Whether the connection's raw copy of the request head belongs to this request.
    pub fn head_is_known(&self) -> bool {
        self.head_fresh
    }

    /// Whether anything beyond the status is recorded (callers skip work when not).
    pub fn is_detailed(&self) -> bool {
        self.detail.is_some()
    }

    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    pub fn set_status(&mut self, status: u16) {
        self.status = status;
    }

    pub fn set_client(&mut self, client: IpAddr) {
        if let Some(d) = &mut self.detail {
            d.client = client;
        }
    }

    pub fn set_request_id(&mut self, id: &HeaderValue) {
        if let Some(d) = &mut self.detail {
            d.request_id = Some(id.clone());
        }
        if let Some(span) = &mut self.span {
            span.attribute("gatehouse.request_id", String::from_utf8_lossy(id.as_bytes()).into_owned());
        }
    }

    pub fn set_trace(&mut self, trace: &super::trace::TraceContext) {
        if let Some(d) = &mut self.detail {
            d.trace_id = Some(trace.trace_id_hex());
        }
    }

    /// Records the request as a span for `sink` (a sampled request, with export on).
    pub fn start_span(
        &mut self,
        sink: &Arc<super::otlp::SpanSink>,
        trace: &super::trace::TraceContext,
        facts: super::otlp::RequestFacts<'_>,
    ) {
        self.span = Some(Box::new(super::otlp::RequestSpan::new(sink, trace, facts)));
    }

    /// The request's span, when it is recorded.
    pub fn span(&mut self) -> Option<&mut super::otlp::RequestSpan> {
        self.span.as_deref_mut()
    }

    pub fn set_path(&mut self, path: &str) {
        if let Some(d) = &mut self.detail {
            d.path = Some(path.to_owned());
        }
    }

    /// The route that matched, with its metric handles on this listener.
    pub fn set_route(&mut self, name: &Arc<str>, metrics: Option<&Arc<RouteMetrics>>) {
        if let Some(d) = &mut self.detail {
            d.route = Some(name.clone());
        }
        if let Some(span) = &mut self.span {
            span.set_route(name);
        }
        self.metrics = metrics.cloned();
    }

    /// Requests that matched no route are counted with these (the listener's) handles.
    pub fn set_unrouted(&mut self, metrics: Option<&Arc<RouteMetrics>>) {
        if self.metrics.is_none() {
            self.metrics = metrics.cloned();
        }
    }

    /// The position, among the route's upstreams, of the one the request goes to (for the
    /// metrics' `upstream` label).
    pub fn set_upstream_side(&mut self, side: usize) {
        self.side = Some(side);
    }

    pub fn set_consumer(&mut self, consumer: &Arc<crate::policy::Consumer>) {
        if let Some(d) = &mut self.detail {
            d.consumer = Some(consumer.name.clone());
        }
        if let Some(span) = &mut self.span {
            span.attribute("gatehouse.consumer", consumer.name.to_string());
        }
        if self.metrics.as_ref().is_some_and(|m| m.counts_consumers()) {
            self.consumer = Some(consumer.clone());
        }
    }

    pub fn set_upstream(&mut self, endpoint: &Arc<str>) {
        if let Some(d) = &mut self.detail {
            d.upstream = Some(endpoint.clone());
        }
    }

    pub fn set_upstream_latency(&mut self, latency: Duration) {
        if let Some(d) = &mut self.detail {
            d.upstream_latency = Some(latency);
        }
    }

    /// The error code of the gateway's own answer (counted in the metrics too).
    pub fn set_error(&mut self, code: &'static str) {
        if let Some(m) = &self.metrics {
            m.errored(code);
        }
        if let Some(d) = &mut self.detail {
            d.error = Some(code);
        }
        if let Some(span) = &mut self.span {
            span.set_error(code);
        }
    }

    /// A counter of request body bytes, when the access log or the metrics want it.
    pub fn bytes_in_counter(&mut self) -> Option<Arc<AtomicU64>> {
        if self.detail.is_none() && self.metrics.is_none() {
            return None;
        }
        Some(self.bytes_in.get_or_insert_with(|| Arc::new(AtomicU64::new(0))).clone())
    }

    /// Ends the request: `bytes_out` body bytes were sent; `complete` is false when the response
    /// was cut short.
    pub fn finish(mut self, bytes_out: u64, complete: bool) {
        self.finish_inner(bytes_out, complete);
    }

    fn finish_inner(&mut self, bytes_out: u64, complete: bool) {
        if self.finished {
            return;
        }
        self.finished = true;
        self.conn.end_request();
        let status = if self.status == 0 { 499 } else { self.status };
        let bytes_in = self.bytes_in.as_ref().map_or(0, |c| c.load(Ordering::Relaxed));
        // One clock reading for the metrics and the log line, and none when neither is on.
        let duration =
            if self.metrics.is_some() || self.detail.is_some() { self.start.elapsed() } else { Duration::ZERO };
        if let Some(m) = &self.metrics {
            m.record(self.side, self.method, status, duration.as_secs_f64(), bytes_in, bytes_out);
            if let Some(consumer) = &self.consumer {
                m.record_consumer(consumer, status);
            }
        }
        if let Some(span) = self.span.take() {
            span.finish(status, complete);
        }
        let Some(d) = self.detail.take() else { return };
        let line = LogLine {
            time: d.time,
            listener: &d.listener,
            request_id: d.request_id.as_ref().map(HeaderValue::as_bytes),
            trace_id: d.trace_id.as_deref(),
            client: d.client,
            peer: d.peer,
            method: d.method.as_str(),
            path: d.path.as_deref().unwrap_or_else(|| d.uri.path()),
            route: d.route.as_deref(),
            consumer: d.consumer.as_deref(),
            upstream: d.upstream.as_deref(),
            status,
            bytes_in,
            bytes_out,
            duration,
            upstream_latency: d.upstream_latency,
            user_agent: d.user_agent.as_ref().map(HeaderValue::as_bytes),
            error: d.error.or(if complete { None } else { Some("response_incomplete") }),
        };
        d.sink.write(&line);
    }
}

impl Drop for RequestLog {
    fn drop(&mut self) {
        // Dropped without finishing: the request future was cancelled (the client went away
        // before a response was produced).
        self.finish_inner(0, false);
    }
}
