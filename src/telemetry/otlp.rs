//! Spans of sampled requests, exported to an OpenTelemetry collector over OTLP/HTTP (protobuf).
//!
//! The request path builds plain span records only for sampled requests (none at all when
//! `tracing.otlp` is not set); the OpenTelemetry SDK's batch processor queues them (bounded: when
//! the collector is slow, spans are dropped, requests never wait) and exports them from a thread
//! of its own through `opentelemetry-otlp`. The HTTP client under the exporter is hyper, run on
//! the background runtime that the health checks use.
//!
//! A request is one SERVER span (`GET users`), with a CLIENT child span per try of the upstream
//! (what the upstream receives in `traceparent` is that try's span) and an INTERNAL child span for
//! each policy that waited on I/O (`forward_auth`, `introspection`, `jwt` key fetches, shared rate
//! limits, concurrency waits). Attribute names follow the HTTP semantic conventions.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, Response};
use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SpanData, SpanProcessor};

use crate::config::OtlpConfig;

/// Export responses larger than this are not read further.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// The exporter of one `tracing.otlp` setting: kept across reloads that do not change it.
pub struct SpanSink {
    processor: Option<BatchSpanProcessor>,
    scope: InstrumentationScope,
}

impl std::fmt::Debug for SpanSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SpanSink")
    }
}

impl SpanSink {
    /// Starts the exporter for a config that `config::compile` has checked.
    pub fn start(config: &OtlpConfig) -> Result<SpanSink, String> {
        use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(Client { timeout: config.timeout.0 })
            .with_endpoint(config.endpoint.clone())
            .with_protocol(Protocol::HttpBinary)
            .with_timeout(config.timeout.0)
            .with_headers(config.headers.clone().into_iter().collect())
            .build()
            .map_err(|e| e.to_string())?;
        let batch = BatchConfigBuilder::default()
            .with_max_queue_size(config.max_queue.max(1))
            .with_max_export_batch_size(config.max_queue.clamp(1, 512))
            .with_scheduled_delay(config.interval.0)
            .build();
        let mut processor = BatchSpanProcessor::builder(exporter).with_batch_config(batch).build();
        let resource = opentelemetry_sdk::Resource::builder_empty()
            .with_service_name(config.service_name.clone())
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        processor.set_resource(&resource);
        let scope = InstrumentationScope::builder("gatehouse").with_version(env!("CARGO_PKG_VERSION")).build();
        Ok(SpanSink { processor: Some(processor), scope })
    }

    fn emit(&self, span: SpanData) {
        if let Some(processor) = &self.processor {
            processor.on_end(span);
        }
    }
}

impl Drop for SpanSink {
    fn drop(&mut self) {
        // What is queued is still sent; not on the thread that dropped the last reference (it may
        // be a worker finishing a request).
        if let Some(processor) = self.processor.take() {
            let _ = std::thread::Builder::new().name("gatehouse-otlp-flush".into()).spawn(move || {
                let _ = processor.shutdown_with_timeout(Duration::from_secs(5));
            });
        }
    }
}

/// POSTs an export with hyper, on the background runtime (the batch processor's thread has none).
#[derive(Debug)]
struct Client {
    timeout: Duration,
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for Client {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, opentelemetry_http::HttpError> {
        let timeout = self.timeout;
        let sent = crate::upstream::active::runtime().spawn(async move {
            match tokio::time::timeout(timeout, post(request)).await {
                Ok(result) => result,
                Err(_) => Err(format!("the collector did not answer within {timeout:?}").into()),
            }
        });
        sent.await?
    }
}

async fn post(request: Request<Bytes>) -> Result<Response<Bytes>, opentelemetry_http::HttpError> {
    Ok(crate::upstream::fetch::send(request, MAX_RESPONSE_BYTES).await?)
}

/// The span of one sampled request, filled in as the request goes, exported when it ends.
pub struct RequestSpan {
    sink: Arc<SpanSink>,
    context: super::trace::TraceContext,
    trace_id: TraceId,
    span_id: SpanId,
    parent: Option<SpanId>,
    start: SystemTime,
    method: http::Method,
    route: Option<Arc<str>>,
    attributes: Vec<KeyValue>,
    error: Option<&'static str>,
    children: Vec<SpanData>,
}

/// A child span under way: what `finish_child` needs.
pub struct ChildStart {
    span_id: SpanId,
    start: SystemTime,
}

impl ChildStart {
    pub fn span_id(&self) -> [u8; 8] {
        self.span_id.to_bytes()
    }
}

impl RequestSpan {
    pub fn new(sink: &Arc<SpanSink>, trace: &super::trace::TraceContext, request: RequestFacts<'_>) -> RequestSpan {
        let mut attributes = Vec::with_capacity(12);
        attributes.push(KeyValue::new("http.request.method", request.method.as_str().to_owned()));
        attributes.push(KeyValue::new("url.path", request.path.to_owned()));
        attributes.push(KeyValue::new("url.scheme", request.scheme));
        attributes.push(KeyValue::new("network.peer.address", request.peer.ip().to_string()));
        attributes.push(KeyValue::new("network.peer.port", i64::from(request.peer.port())));
        attributes.push(KeyValue::new("network.protocol.version", version(request.version)));
        if let Some(host) = request.host {
            attributes.push(KeyValue::new("server.address", host.to_owned()));
        }
        if let Some(agent) = request.user_agent {
            attributes.push(KeyValue::new("user_agent.original", String::from_utf8_lossy(agent).into_owned()));
        }
        RequestSpan {
            sink: sink.clone(),
            context: *trace,
            trace_id: TraceId::from_bytes(trace.trace_id),
            span_id: SpanId::from_bytes(trace.span_id),
            parent: trace.parent_id.map(SpanId::from_bytes),
            start: SystemTime::now(),
            method: request.method.clone(),
            route: None,
            attributes,
            error: None,
            children: Vec::new(),
        }
    }

    pub fn set_route(&mut self, route: &Arc<str>) {
        self.route = Some(route.clone());
        self.attributes.push(KeyValue::new("gatehouse.route", route.to_string()));
    }

    pub fn attribute(&mut self, key: &'static str, value: String) {
        self.attributes.push(KeyValue::new(key, value));
    }

    pub fn set_error(&mut self, code: &'static str) {
        self.error = Some(code);
    }

    /// Starts a try of the upstream: a CLIENT child span, whose id the upstream receives as its
    /// parent in `traceparent`.
    pub fn start_try(&self, headers: &mut http::HeaderMap) -> ChildStart {
        let child = self.start_child();
        headers.insert(super::trace::TRACEPARENT.clone(), self.context.header_with(&child.span_id()));
        child
    }

    /// Ends a try: `outcome` is the response's status or why there was none.
    pub fn finish_try(
        &mut self,
        child: ChildStart,
        method: &http::Method,
        endpoint: &crate::upstream::Endpoint,
        target: &str,
        outcome: Result<u16, &'static str>,
        resend: u32,
    ) {
        let mut attributes = Vec::with_capacity(6);
        attributes.push(KeyValue::new("http.request.method", method.as_str().to_owned()));
        attributes.push(KeyValue::new("server.address", endpoint.host.to_string()));
        attributes.push(KeyValue::new("server.port", i64::from(endpoint.port)));
        attributes.push(KeyValue::new("url.full", format!("{}{target}", endpoint.url)));
        if resend > 0 {
            attributes.push(KeyValue::new("http.request.resend_count", i64::from(resend)));
        }
        let error = match outcome {
            Ok(status) => {
                attributes.push(KeyValue::new("http.response.status_code", i64::from(status)));
                (status >= 500).then(|| Cow::Owned(status.to_string()))
            }
            Err(reason) => Some(Cow::Borrowed(reason)),
        };
        let name = Cow::Owned(method.as_str().to_owned());
        self.finish_child(child, name, SpanKind::Client, attributes, error);
    }

    /// Starts a child span; its id is what the child's callee sees as parent.
    pub fn start_child(&self) -> ChildStart {
        ChildStart { span_id: SpanId::from_bytes(super::trace::new_span_id()), start: SystemTime::now() }
    }

    /// Ends a child span. `error` marks it failed with that reason.
    pub fn finish_child(
        &mut self,
        child: ChildStart,
        name: Cow<'static, str>,
        kind: SpanKind,
        attributes: Vec<KeyValue>,
        error: Option<Cow<'static, str>>,
    ) {
        let data = self.data(child.span_id, Some(self.span_id), false, name, kind, child.start, attributes, error);
        self.children.push(data);
    }

    /// A policy's wait on I/O, timed by the policy runner.
    pub fn policy(&mut self, name: &'static str, start: SystemTime, end: SystemTime, error: Option<&'static str>) {
        let id = SpanId::from_bytes(super::trace::new_span_id());
        let mut data = self.data(
            id,
            Some(self.span_id),
            false,
            Cow::Borrowed(name),
            SpanKind::Internal,
            start,
            vec![KeyValue::new("gatehouse.policy", name)],
            error.map(Cow::Borrowed),
        );
        data.end_time = end;
        self.children.push(data);
    }

    /// Ends the request's span with its status; exports it with its children.
    pub fn finish(mut self, status: u16, complete: bool) {
        self.attributes.push(KeyValue::new("http.response.status_code", i64::from(status)));
        let error: Option<Cow<'static, str>> = match (self.error, status) {
            (Some(code), _) if status >= 500 || status == 499 => Some(Cow::Borrowed(code)),
            (None, 500..) => Some(Cow::Owned(status.to_string())),
            _ if !complete => Some(Cow::Borrowed("response_incomplete")),
            _ => None,
        };
        if let Some(code) = self.error {
            self.attributes.push(KeyValue::new("gatehouse.error", code));
        }
        let name = match &self.route {
            Some(route) => Cow::Owned(format!("{} {route}", self.method)),
            None => Cow::Owned(self.method.to_string()),
        };
        let attributes = std::mem::take(&mut self.attributes);
        let remote = self.parent.is_some();
        let span = self.data(self.span_id, self.parent, remote, name, SpanKind::Server, self.start, attributes, error);
        for child in self.children.drain(..) {
            self.sink.emit(child);
        }
        self.sink.emit(span);
    }

    #[allow(clippy::too_many_arguments)]
    fn data(
        &self,
        span_id: SpanId,
        parent: Option<SpanId>,
        parent_is_remote: bool,
        name: Cow<'static, str>,
        kind: SpanKind,
        start: SystemTime,
        mut attributes: Vec<KeyValue>,
        error: Option<Cow<'static, str>>,
    ) -> SpanData {
        let status = match error {
            Some(reason) => {
                attributes.push(KeyValue::new("error.type", reason.clone()));
                Status::Error { description: reason }
            }
            None => Status::Unset,
        };
        SpanData {
            span_context: SpanContext::new(self.trace_id, span_id, TraceFlags::SAMPLED, false, TraceState::default()),
            parent_span_id: parent.unwrap_or(SpanId::INVALID),
            parent_span_is_remote: parent_is_remote,
            span_kind: kind,
            name,
            start_time: start,
            end_time: SystemTime::now(),
            attributes,
            dropped_attributes_count: 0,
            events: Default::default(),
            links: Default::default(),
            status,
            instrumentation_scope: self.sink.scope.clone(),
        }
    }
}

/// What the request span records of the request when it starts.
pub struct RequestFacts<'a> {
    pub method: &'a http::Method,
    pub path: &'a str,
    pub scheme: &'static str,
    pub host: Option<&'a str>,
    pub peer: std::net::SocketAddr,
    pub version: http::Version,
    pub user_agent: Option<&'a [u8]>,
}

fn version(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "0.9",
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_3 => "3",
        _ => "1.1",
    }
}
