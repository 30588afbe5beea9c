//! `HttpProxy`: the request path from a parsed request head to the response (DESIGN steps 1–9).
//!
//! `serve` is infallible: every failure becomes a `ProxyError` and `ProxyError::to_response` turns
//! it into the JSON error. The steps, in order:
//! 1. load the snapshot once; the whole request uses this generation;
//! 2. start the `RequestLog`;
//! 3. normalise: request id, method, size limits, host, path;
//! 4. route lookup (pure, sync): 404 / 405 here;
//! 5. request policies (`policy::apply_request_policies`);
//! 6. pick an endpoint of the route's upstream;
//! 7. send upstream over a pooled connection, bodies streaming, under the route/upstream timeouts;
//! 8. response policies;
//! 9. the request log is finished when the response body ends (`body::ProxyBody`).

pub mod body;
pub mod error;
pub mod forward;
pub mod grpc;
pub mod headers;
pub mod normalize;
pub mod request_id;
pub mod tunnel;

use std::time::Instant;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, Uri, Version};
use http_body::Body as _;
use hyper::body::Incoming;

use crate::policy::{self, PolicyOutcome, RequestFacts, RequestState};
use crate::route::{Lookup, RequestView};
use crate::state::{Snapshot, SnapshotHandle};
use crate::telemetry::RequestLog;
use crate::telemetry::request_log::LogStart;
use crate::transport::conn::ConnContext;

use body::{BodyLimit, ProxyBody, UpstreamBody};
use error::{ErrorSource, ProxyError};

pub struct HttpProxy {
    pub snapshot: SnapshotHandle,
    /// Connections and requests on each listener, over all workers.
    pub counts: crate::transport::conn::Counts,
}

impl HttpProxy {
    pub fn new(snapshot: SnapshotHandle, counts: crate::transport::conn::Counts) -> Self {
        HttpProxy { snapshot, counts }
    }

    /// Serves one request. Never fails: errors are responses.
    pub async fn serve(&self, conn: &ConnContext, req: Request<Incoming>) -> Response<ProxyBody> {
        let start = Instant::now();
        let snap = self.snapshot.load();
        let Some(listener) = snap.listeners.get(conn.listener) else {
            // The listener left the config: its connections are being drained.
            let err = ProxyError::NoRoute { method: req.method().clone(), path: req.uri().path().to_owned() };
            return err.to_response(None, &snap.server.request_id_header);
        };
        let log = RequestLog::start(
            conn.state.clone(),
            start,
            LogStart {
                sink: snap.access_log.as_ref(),
                listener: &listener.name,
                peer: conn.peer,
                method: req.method(),
                uri: req.uri(),
                user_agent: req.headers().get(header::USER_AGENT),
            },
        );
        let mut exchange = Exchange {
            snap: &snap,
            conn,
            log,
            request_id: None,
            start,
            cors: None,
            rate_reports: [None, None],
            slot: None,
            in_flight: None,
            grpc: grpc::content_type(req.headers()),
        };
        let result = exchange.handle(req).await;
        let Exchange { mut log, request_id, cors, rate_reports, slot, in_flight, grpc, .. } = exchange;
        log.set_unrouted(listener.unrouted.as_ref());
        let mut response = match result {
            Ok(response) => response,
            Err(err) => {
                log.set_error(err.code());
                match err.source() {
                    ErrorSource::Downstream => tracing::debug!(error = %err, "request rejected"),
                    _ => tracing::warn!(error = %err, request_id = ?request_id, "request failed"),
                }
                match grpc {
                    Some(content_type) => {
                        grpc::error_response(&err, content_type, request_id.as_ref(), &snap.server.request_id_header)
                    }
                    None => err.to_response(request_id.as_ref(), &snap.server.request_id_header),
                }
            }
        };
        // CORS headers go on every response of a CORS route, the gateway's own errors included:
        // without them a browser hides the error from the page.
        if let Some((cors, origin)) = cors {
            cors.apply(&origin, response.headers_mut());
        }
        for report in rate_reports.iter().flatten() {
            report.apply(response.headers_mut());
        }
        log.set_status(response.status().as_u16());
        response.body_mut().attach(log, slot, in_flight);
        response
    }
}

/// One request's journey through the steps, with what the steps share.
struct Exchange<'a> {
    snap: &'a Snapshot,
    conn: &'a ConnContext,
    log: RequestLog,
    request_id: Option<HeaderValue>,
    start: Instant,
    /// The route's CORS policy and the request's Origin, for the response.
    cors: Option<(std::sync::Arc<crate::policy::CorsPolicy>, HeaderValue)>,
    /// What the rate limit and the quota tell the client, on every response (a 429 included).
    rate_reports: [Option<crate::policy::rate_limit::RateReport>; 2],
    /// The `concurrency` slot: given back when the response has been sent.
    slot: Option<crate::policy::concurrency::Slot>,
    /// The endpoint's in-flight count, lowered when the response has been sent.
    in_flight: Option<crate::upstream::InFlight>,
    /// A gRPC request's content type: its errors are answered as gRPC statuses.
    grpc: Option<HeaderValue>,
}

impl Exchange<'_> {
    fn count_body(&mut self, bytes: usize) {
        if let Some(counter) = self.log.bytes_in_counter() {
            counter.fetch_add(bytes as u64, std::sync::atomic::Ordering::Relaxed);
        }
    }

    async fn handle(&mut self, req: Request<Incoming>) -> Result<Response<ProxyBody>, ProxyError> {
        let snap = self.snap;
        let server = &snap.server;
        let (mut parts, body) = req.into_parts();
        // Room for what the gateway adds (request id, X-Forwarded-*, Forwarded, Host) in one
        // growth of the map instead of several.
        parts.headers.reserve(6);

        // 3. Normalise. The request id comes first so that every later error carries it.
        let request_id = request_id::resolve(&mut parts.headers, server);
        if let Some(sampling) = server.trace_sampling {
            let trace = crate::telemetry::trace::TraceContext::apply(&mut parts.headers, sampling);
            self.log.set_trace(&trace);
            if let (Some(sink), true) = (&server.trace_export, trace.sampled) {
                let facts = crate::telemetry::otlp::RequestFacts {
                    method: &parts.method,
                    path: parts.uri.path(),
                    scheme: self.conn.scheme,
                    host: parts.headers.get(header::HOST).and_then(|h| h.to_str().ok()).or(parts.uri.host()),
                    peer: self.conn.peer,
                    version: parts.version,
                    user_agent: parts.headers.get(header::USER_AGENT).map(HeaderValue::as_bytes),
                };
                self.log.start_span(sink, &trace, facts);
            }
        }
        self.log.set_request_id(&request_id);
        self.request_id = Some(request_id.clone());
        let client = headers::client_ip(&parts.headers, self.conn.peer.ip(), server);
        self.log.set_client(client);
        if parts.method == Method::CONNECT {
            return Err(ProxyError::BadRequest("CONNECT is not supported: gatehouse is not a forward proxy".into()));
        }
        let scan = headers::scan(&parts.headers);
        check_limits(&parts, server, &scan)?;
        if scan.transfer_encoding() {
            check_framing(&parts, self.conn, self.log.head_is_known())?;
        }
        // Consumer headers are the gateway's to set: a client's own never pass.
        if !snap.consumers.is_empty() {
            parts.headers.remove(&crate::policy::consumers::CONSUMER_NAME);
            parts.headers.remove(&crate::policy::consumers::CONSUMER_GROUPS);
        }
        // So is the mark of a mirrored copy: a client cannot pass its request off as shadow traffic.
        parts.headers.remove(&forward::MIRROR_HEADER);
        // `serve` found this listener in this snapshot.
        let listener = &snap.listeners[self.conn.listener];
        // And what a verified client certificate says.
        if let Some(names) = listener.tls.as_ref().and_then(|t| t.client_headers.as_ref()) {
            client_cert_headers(&mut parts.headers, names, self.conn.client_cert.as_deref());
        }

        let (host, original_host) = headers::request_host(&parts)?;
        let path = normalize::normalize_path(parts.uri.path(), &server.path)
            .map_err(|e| ProxyError::BadRequest(e.reason().into()))?;
        if self.log.is_detailed() {
            self.log.set_path(&path);
        }

        // 4. Route.
        if let Some((port, status)) = listener.https_redirect {
            return https_redirect(&parts, host.as_deref(), port, status);
        }
        // A CORS preflight is routed as the request it announces (a route for `POST /orders`
        // answers the preflight of `POST /orders`); if that route has no CORS policy, it is an
        // ordinary OPTIONS request after all.
        let announced = preflight_of(&parts);
        let mut view = RequestView {
            method: announced.as_ref().map_or(&parts.method, |(_, m)| m),
            host: host.as_deref(),
            path: &path,
            query: parts.uri.query(),
            headers: &parts.headers,
        };
        let mut found = listener.table.find(&view);
        let mut preflight = announced.as_ref();
        if preflight.is_some()
            && !matches!(&found, Lookup::Matched(m) if snap.route(m.route).policies(self.conn.listener).cors.is_some())
        {
            preflight = None;
            view.method = &parts.method;
            found = listener.table.find(&view);
        }
        let route_match = match found {
            Lookup::Matched(m) => m,
            Lookup::MethodNotAllowed { allow } => {
                let allow = allow.iter().map(Method::as_str).collect::<Vec<_>>().join(", ");
                return Err(ProxyError::MethodNotAllowed {
                    method: parts.method.clone(),
                    allow: HeaderValue::from_str(&allow).unwrap_or_else(|_| HeaderValue::from_static("")),
                });
            }
            Lookup::NotFound => {
                return Err(ProxyError::NoRoute { method: parts.method.clone(), path: path.into_owned() });
            }
        };
        let route = snap.route(route_match.route);
        let websocket = scan.upgrade() && tunnel::is_websocket_upgrade(&parts.method, parts.version, &parts.headers);
        if websocket && !route.websocket {
            return Err(ProxyError::UpgradeNotAllowed);
        }
        let policies = route.policies(self.conn.listener);
        let spec = listener.table.spec(route_match.route);
        self.log.set_route(&route.name, route.metrics.get(self.conn.listener));

        if let (Some(cors), None) = (&policies.cors, &preflight) {
            if let Some(origin) = parts.headers.get(header::ORIGIN) {
                self.cors = Some((cors.clone(), origin.clone()));
            }
        }

        // 5. Request policies.
        let facts = RequestFacts {
            path: &path,
            query: parts.uri.query(),
            route_match: &route_match,
            spec,
            route_name: &route.name,
            method: &parts.method,
            uri: &parts.uri,
            version: parts.version,
            host: original_host.as_ref(),
            scheme: self.conn.scheme,
            client,
            request_id: (&server.request_id_header, &request_id),
            preflight: preflight.map(|(origin, method)| (origin, method)),
        };
        let mut state = RequestState::default();
        if self.log.span().is_some() {
            state.timings = Some(Vec::new());
        }
        let outcome = policy::apply_request_policies(policies, &mut parts.headers, &facts, &mut state).await;
        if let (Some(span), Some(timings)) = (self.log.span(), state.timings.take()) {
            for t in timings {
                span.policy(t.name, t.start, t.end, t.error);
            }
        }
        if let Some(consumer) = state.identity.as_ref().and_then(|i| i.consumer.as_ref()) {
            self.log.set_consumer(consumer);
        }
        self.rate_reports = [state.rate_report.take(), state.quota_report.take()];
        self.slot = state.slot.take();
        let outcome = outcome?;
        if let PolicyOutcome::Respond(mut response) = outcome {
            policy::apply_response_policies(policies, response.headers_mut());
            response.headers_mut().insert(server.request_id_header.clone(), request_id);
            return Ok(*response);
        }

        // 6. Endpoint, 7. upstream request: prepared once, sent once per try.
        // Sticky splits and consistent hashing key the request as rate limits do, on the request
        // as the client sent it (before forwarding headers are added).
        let key_source = crate::policy::rate_limit::KeySource {
            client,
            identity: state.identity.as_ref(),
            route: &route.name,
            headers: &parts.headers,
            path: &path,
            query: parts.uri.query(),
            route_match: &route_match,
        };
        let (side, upstream) = match (&route.split, &route.upstream) {
            (Some(split), _) => split.pick(split.on.as_deref().map(|key| crate::upstream::hash_of(key, &key_source))),
            (None, Some(upstream)) => (0, upstream),
            // Compile guarantees a route either has an upstream or answers by itself.
            (None, None) => return Err(ProxyError::NoEndpoint(route.name.to_string())),
        };
        self.log.set_upstream_side(side);
        let hash = upstream.hash_on.as_deref().map(|key| crate::upstream::hash_of(key, &key_source));
        let trusted = !server.trusted_proxies.is_empty() && server.is_trusted(self.conn.peer.ip());
        let upgrade = if websocket { tunnel::Upgrade::take(&mut parts.extensions, &parts.headers) } else { None };
        // gRPC-Web from a browser: gRPC for an HTTP/2 upstream.
        let grpc = self.grpc.is_some();
        let web = self.grpc.as_ref().filter(|_| upstream.http2).and_then(grpc::Web::of);
        if let Some(web) = &web {
            parts.headers.insert(header::CONTENT_TYPE, web.upstream_type.clone());
            if web.text {
                parts.headers.remove(header::CONTENT_LENGTH);
            }
        }
        // `TE: trailers` is the one TE an HTTP/2 upstream may get; gRPC servers look for it.
        let te_trailers = upstream.http2 && (web.is_some() || (scan.te() && headers::te_has_trailers(&parts.headers)));
        let grpc_timeout = if grpc { grpc::timeout(&parts.headers) } else { None };
        headers::strip_hop_by_hop(&mut parts.headers, scan.hop);
        if te_trailers {
            parts.headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
        if let Some(upgrade) = &upgrade {
            upgrade.restore_request_headers(&mut parts.headers);
        }
        if scan.expect {
            // gatehouse answers `Expect: 100-continue` itself when it starts reading the body.
            parts.headers.remove(header::EXPECT);
        }
        headers::add_forwarded(&mut parts.headers, self.conn, server, trusted, original_host.as_ref());
        let upstream_path = route.rewrite.apply(&path, &route_match, spec);
        if let Some(query) = state.query_edit.query.take() {
            parts.uri = origin_form(&upstream_path, query.as_deref())?;
        } else if parts.uri.scheme().is_some() || upstream_path != parts.uri.path() {
            parts.uri = origin_form(&upstream_path, parts.uri.query())?;
        }
        parts.version = Version::HTTP_11;
        // The route's `body_limit` within the server's.
        let max_body_size = match (server.max_body_size, policies.max_body_size) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let retry = &upstream.retry;
        let may_resend = retry.attempts > 0 && retry.may_resend(&parts.method);
        // gRPC-Web text bodies are base64: decoded whole (a browser's call sends one message),
        // after the signed digest, if any, has been checked on what the client sent.
        let text = web.as_ref().filter(|w| w.text);
        let body = if let Some(check) = state.body_check.take() {
            // The signed digest must match before any of the body goes upstream.
            let bytes = Box::pin(check.read(body, max_body_size)).await?;
            self.count_body(bytes.len());
            let bytes = match text {
                Some(web) => web.decode_request(bytes)?,
                None => bytes,
            };
            if bytes.is_empty() { UpstreamBody::Empty } else { UpstreamBody::Full(Some(bytes)) }
        } else if let Some(web) = text {
            let limit = max_body_size.unwrap_or(grpc::MAX_WEB_TEXT_BODY);
            let bytes = Box::pin(forward::read_limited(body, limit)).await?;
            self.count_body(bytes.len());
            UpstreamBody::Full(Some(web.decode_request(bytes)?))
        } else if body.is_end_stream() {
            UpstreamBody::Empty
        } else {
            let limit = match max_body_size {
                Some(max) if body.size_hint().lower() > max => return Err(ProxyError::PayloadTooLarge { limit: max }),
                Some(max) => Some(BodyLimit { limit: max, left: max }),
                None => None,
            };
            let announced = body.size_hint().exact();
            let keep =
                if route.mirror.is_some() { retry.max_body.max(forward::MIRROR_MAX_BODY) } else { retry.max_body };
            if (may_resend || route.mirror.is_some()) && announced.is_some_and(|n| n <= keep) {
                // Small enough to keep: read now, so that a retry can send it again.
                let bytes = Box::pin(forward::read_small(body, retry.max_body)).await?;
                self.count_body(bytes.len());
                UpstreamBody::Full(Some(bytes))
            } else {
                UpstreamBody::Streaming { body, received: self.log.bytes_in_counter(), limit }
            }
        };

        // The upstream's response-head timeout runs inside `send`, from the moment each try is
        // written; the route's timeout bounds everything, retries included, from the request's arrival.
        if let Some(mirror) = &route.mirror {
            forward::mirror(mirror, &parts, &body);
        }
        let tries = forward::Tries {
            upstream,
            host: &route.host,
            original_host: original_host.as_ref(),
            hash,
            timeouts: route.try_timeouts,
        };
        let exchange = Box::pin(tries.run(parts, body, &mut self.log));
        // A gRPC client's deadline bounds the route's time too.
        let limit = match (route.timeout, grpc_timeout) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let (response, in_flight) = match limit {
            Some(limit) => match tokio::time::timeout_at((self.start + limit).into(), exchange).await {
                Ok(result) => result?,
                Err(_) => return Err(ProxyError::RouteTimeout(limit)),
            },
            None => exchange.await?,
        };
        self.in_flight = Some(in_flight);

        // 8. Response policies.
        let (mut parts, body) = response.into_parts();
        let switching = parts.status == http::StatusCode::SWITCHING_PROTOCOLS;
        let upstream_protocol = if switching { parts.headers.get(header::UPGRADE).cloned() } else { None };
        headers::strip_response_hop_by_hop(&mut parts.headers);
        policy::apply_response_policies(policies, &mut parts.headers);
        parts.headers.insert(server.request_id_header.clone(), request_id);
        if switching {
            // Only the upgrade the client asked for, on a route that allows it, is switched to.
            let Some(upgrade) = upgrade else {
                return Err(ProxyError::UpstreamFailed("the upstream switched protocols unasked".into()));
            };
            let hold = self.conn.state.hold_connection();
            upgrade.switch(&mut parts, upstream_protocol, server.websocket_idle, hold);
            return Ok(Response::from_parts(parts, ProxyBody::empty()));
        }
        if let Some(web) = web {
            let answered_grpc =
                parts.headers.get(header::CONTENT_TYPE).is_some_and(|c| c.as_bytes().starts_with(b"application/grpc"));
            if answered_grpc {
                parts.headers.insert(header::CONTENT_TYPE, web.client_type.clone());
                parts.headers.remove(header::CONTENT_LENGTH);
                return Ok(Response::from_parts(parts, ProxyBody::grpc_web(body, web)));
            }
        }
        Ok(Response::from_parts(parts, ProxyBody::upstream(body)))
    }
}

/// Replaces the client-certificate headers with the verified certificate's subject and SANs.
fn client_cert_headers(
    headers: &mut http::HeaderMap,
    names: &crate::transport::tls::ClientHeaders,
    identity: Option<&crate::transport::tls::ClientIdentity>,
) {
    for (name, value) in [
        (&names.subject, identity.and_then(|i| i.subject.as_ref())),
        (&names.sans, identity.and_then(|i| i.sans.as_ref())),
    ] {
        let Some(name) = name else { continue };
        headers.remove(name);
        if let Some(value) = value {
            headers.insert(name.clone(), value.clone());
        }
    }
}

/// The same request target on `https://host[:port]`.
fn https_redirect(
    parts: &http::request::Parts,
    host: Option<&str>,
    port: u16,
    status: http::StatusCode,
) -> Result<Response<ProxyBody>, ProxyError> {
    let host = host.ok_or_else(|| ProxyError::BadRequest("a redirect to HTTPS needs a Host".into()))?;
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let location =
        if port == 443 { format!("https://{host}{target}") } else { format!("https://{host}:{port}{target}") };
    let location =
        HeaderValue::from_str(&location).map_err(|_| ProxyError::BadRequest("invalid redirect target".into()))?;
    let mut response = Response::new(ProxyBody::empty());
    *response.status_mut() = status;
    response.headers_mut().insert(header::LOCATION, location);
    response.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    Ok(response)
}

/// `(Origin, announced method)` of a CORS preflight request.
fn preflight_of(parts: &http::request::Parts) -> Option<(HeaderValue, Method)> {
    if parts.method != Method::OPTIONS {
        return None;
    }
    let origin = parts.headers.get(header::ORIGIN)?;
    let method = parts.headers.get(header::ACCESS_CONTROL_REQUEST_METHOD)?;
    Some((origin.clone(), Method::from_bytes(method.as_bytes()).ok()?))
}

/// Limits on the request head that hyper does not enforce at the configured size: checked here so
/// the client gets the JSON error (hyper's own, higher limits remain as the last line of defence).
fn check_limits(
    parts: &http::request::Parts,
    server: &crate::state::ServerSettings,
    scan: &headers::HeadScan,
) -> Result<(), ProxyError> {
    let uri = &parts.uri;
    let target_len = uri.path_and_query().map_or(0, |pq| pq.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len() + uri.scheme_str().map_or(0, str::len) + 3);
    if target_len > server.max_uri_length {
        return Err(ProxyError::UriTooLong { limit: server.max_uri_length });
    }
    if parts.headers.len() > server.max_headers {
        return Err(ProxyError::HeadersTooLarge(
            format!("more than {} request header fields", server.max_headers).into(),
        ));
    }
    let bytes = scan.bytes;
    if bytes > server.max_header_bytes {
        return Err(ProxyError::HeadersTooLarge(
            format!("request headers are larger than {} bytes", server.max_header_bytes).into(),
        ));
    }
    Ok(())
}

/// Request smuggling defences beyond hyper's own (which already rejects differing duplicate
/// Content-Length values and Transfer-Encoding in HTTP/1.0): a body must be framed one way only, and
/// `chunked` is the only transfer coding gatehouse forwards.
fn check_framing(parts: &http::request::Parts, conn: &ConnContext, head_known: bool) -> Result<(), ProxyError> {
    let mut codings = parts.headers.get_all(header::TRANSFER_ENCODING).iter();
    let Some(first) = codings.next() else { return Ok(()) };
    if codings.next().is_some() || !first.as_bytes().eq_ignore_ascii_case(b"chunked") {
        return Err(ProxyError::BadRequest(
            "unsupported Transfer-Encoding: only a single `chunked` is accepted".into(),
        ));
    }
    // hyper removes Content-Length when Transfer-Encoding is present; the raw head still shows it.
    if head_known && conn.state.head_had_content_length() == Some(true) {
        return Err(ProxyError::BadRequest("a request cannot have both Content-Length and Transfer-Encoding".into()));
    }
    Ok(())
}

fn origin_form(path: &str, query: Option<&str>) -> Result<Uri, ProxyError> {
    let mut target = String::with_capacity(path.len() + query.map_or(0, |q| q.len() + 1));
    target.push_str(path);
    if let Some(q) = query {
        target.push('?');
        target.push_str(q);
    }
    Uri::try_from(target).map_err(|_| ProxyError::BadRequest("the rewritten path is not a valid URI".into()))
}
