//! The admin listener: liveness, readiness, the running config, the route table, reloads.
//!
//! It runs on its own thread and runtime, apart from the workers, so that a busy data plane never
//! starves the operator's view of it (and the other way round).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json};
use axum::routing::{MethodRouter, delete, get, post, put};
use serde_json::json;

mod changes;

use crate::app::Shared;
use crate::background::Background;

pub struct AdminServer {
    address: SocketAddr,
    thread: Background,
}

impl AdminServer {
    pub fn start(address: SocketAddr, shared: Arc<Shared>) -> std::io::Result<AdminServer> {
        // SO_REUSEPORT: during a binary upgrade the new process binds the same address.
        let listener = crate::transport::listener::bind_one(address)
            .map_err(|e| std::io::Error::new(e.kind(), format!("admin listener cannot bind {address}: {e}")))?;
        let address = listener.local_addr()?;
        if !address.ip().is_loopback() {
            tracing::warn!(%address, "the admin listener is reachable from other hosts");
        }
        let thread = Background::spawn("gatehouse-admin", move |stop| async move {
            let listener = match tokio::net::TcpListener::from_std(listener) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(error = %e, "cannot register the admin socket");
                    return;
                }
            };
            let served = axum::serve(listener, router(shared)).with_graceful_shutdown(async {
                let _ = stop.await;
            });
            if let Err(e) = served.await {
                tracing::error!(error = %e, "admin listener failed");
            }
        })?;
        tracing::info!(%address, "admin listening");
        Ok(AdminServer { address, thread })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn shutdown(mut self) {
        self.thread.stop();
    }
}

/// Who may call an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone who reaches the admin listener (liveness, the dashboard page).
    Open,
    /// With `admin.token` set, only a caller presenting it.
    Token,
}

/// Every endpoint of the admin API: (method, path, who may call it, handler). The router is
/// built from this table, and docs/admin-openapi.json is checked against it.
fn table() -> Vec<(&'static str, &'static str, Access, MethodRouter<Arc<Shared>>)> {
    use Access::{Open, Token};
    vec![
        // Liveness stays open: a probe that cannot send headers must still see the process alive.
        ("GET", "/health", Open, get(|| async { Json(json!({"status": "ok"})) })),
        // So does the dashboard page: it holds no data, and asks for the token to fetch any.
        ("GET", "/dashboard", Open, get(dashboard)),
        ("GET", "/ready", Token, get(ready)),
        ("GET", "/config", Token, get(config)),
        ("GET", "/routes", Token, get(routes)),
        ("GET", "/reloads", Token, get(reloads)),
        ("POST", "/reload", Token, post(reload)),
        ("GET", "/consumers/{name}/usage", Token, get(usage)),
        ("GET", "/upstreams", Token, get(upstreams)),
        ("GET", "/metrics", Token, get(metrics)),
        ("GET", "/explain", Token, get(explain)),
        ("GET", "/routes/{name}", Token, get(changes::get_one::<crate::config::RouteConfig>)),
        ("PUT", "/routes/{name}", Token, put(changes::put::<crate::config::RouteConfig>)),
        ("DELETE", "/routes/{name}", Token, delete(changes::delete::<crate::config::RouteConfig>)),
        ("GET", "/upstreams/{name}", Token, get(changes::get_one::<crate::config::UpstreamConfig>)),
        ("PUT", "/upstreams/{name}", Token, put(changes::put::<crate::config::UpstreamConfig>)),
        ("DELETE", "/upstreams/{name}", Token, delete(changes::delete::<crate::config::UpstreamConfig>)),
        ("GET", "/consumers", Token, get(changes::consumers)),
        ("GET", "/consumers/{name}", Token, get(changes::get_one::<crate::config::ConsumerConfig>)),
        ("PUT", "/consumers/{name}", Token, put(changes::put::<crate::config::ConsumerConfig>)),
        ("DELETE", "/consumers/{name}", Token, delete(changes::delete::<crate::config::ConsumerConfig>)),
        ("GET", "/consumers/{name}/credentials", Token, get(changes::credentials)),
        ("POST", "/consumers/{name}/credentials", Token, post(changes::add_credential)),
        ("DELETE", "/consumers/{name}/credentials/{id}", Token, delete(changes::delete_credential)),
        ("GET", "/changes", Token, get(changes::get_changes)),
        ("DELETE", "/changes", Token, delete(changes::delete_changes)),
    ]
}

/// Every endpoint as (method, path, access): what the router serves.
pub fn endpoints() -> Vec<(&'static str, &'static str, Access)> {
    table().into_iter().map(|(method, path, access, _)| (method, path, access)).collect()
}

fn router(shared: Arc<Shared>) -> Router {
    // The token is read at startup, with the rest of `admin`.
    let token = shared.snapshot.load().config.admin.token.as_deref().map(digest);
    let (mut open, mut guarded) = (Router::new(), Router::new());
    for (_, path, access, handler) in table() {
        match access {
            Access::Open => open = open.route(path, handler),
            Access::Token => guarded = guarded.route(path, handler),
        }
    }
    let guarded = guarded.layer(axum::middleware::from_fn(
        move |request: axum::extract::Request, next: axum::middleware::Next| {
            let allowed = token.is_none_or(|want| presented(&request).is_some_and(|got| digest(got) == want));
            async move { if allowed { next.run(request).await } else { unauthorized() } }
        },
    ));
    open.merge(guarded).with_state(shared)
}

/// The dashboard: one page, no build step; it polls the API above from the browser.
async fn dashboard() -> impl IntoResponse {
    use axum::http::header;
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self'",
            ),
            (header::X_FRAME_OPTIONS, "DENY"),
        ],
        include_str!("dashboard.html"),
    )
}

/// SHA-256 of a token: compared digest to digest, so the time taken says nothing about how much
/// of a guess was right.
fn digest(token: &str) -> [u8; 32] {
    crate::policy::consumers::key_digest(token.as_bytes())
}

/// The bearer token of an admin call.
fn presented(request: &axum::extract::Request) -> Option<&str> {
    let value = request.headers().get(axum::http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn unauthorized() -> axum::response::Response {
    let body = json!({"error": {"status": 401, "code": "unauthorized", "message": "the admin API needs Authorization: Bearer <admin.token>"}});
    (StatusCode::UNAUTHORIZED, [(axum::http::header::WWW_AUTHENTICATE, "Bearer realm=\"gatehouse-admin\"")], Json(body))
        .into_response()
}

async fn ready(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let listeners: Vec<_> = shared
        .listeners()
        .iter()
        .map(|(name, address)| json!({"name": name, "address": address.to_string()}))
        .collect();
    Json(json!({"ready": true, "generation": shared.generation(), "listeners": listeners}))
}

async fn config(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let snap = shared.snapshot.load();
    let mut config = serde_json::to_value(&*snap.config).unwrap_or_default();
    // The caller has the token already; it and the credentials' secrets are still not echoed
    // back (logs, screenshots).
    changes::redact(&mut config);
    Json(json!({"generation": snap.generation, "config": config}))
}

async fn routes(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let snap = shared.snapshot.load();
    let listeners: Vec<_> = snap
        .serving()
        .map(|(i, l)| {
            let entries: Vec<_> = crate::route::describe::entries(&l.table, &snap, i)
                .into_iter()
                .map(|e| serde_json::to_value(e).unwrap_or_default())
                .collect();
            json!({"listener": &*l.name, "routes": entries})
        })
        .collect();
    Json(json!({"generation": snap.generation, "listeners": listeners}))
}

/// `gatehouse explain` over HTTP, against the running config:
/// `?url=/users/7&method=POST&header=x-version:2&listener=public`.
async fn explain(
    State(shared): State<Arc<Shared>>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> axum::response::Response {
    let bad = |message: String| {
        let body = json!({"error": {"status": 400, "code": "bad_request", "message": message}});
        (StatusCode::BAD_REQUEST, Json(body)).into_response()
    };
    let (mut method, mut url, mut listener, mut headers) = ("GET".to_owned(), None, None, Vec::new());
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match &*key {
            "method" => method = value.into_owned(),
            "url" => url = Some(value.into_owned()),
            "listener" => listener = Some(value.into_owned()),
            "header" => headers.push(value.into_owned()),
            other => return bad(format!("unknown parameter `{other}`: use url, method, header, listener")),
        }
    }
    let Some(url) = url else { return bad("`url` is required: the request's path (or URL) to explain".into()) };
    let snap = shared.snapshot.load();
    match crate::cli::explain_request(&snap, listener.as_deref(), &method, &url, &headers) {
        Ok(text) => ([(axum::http::header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response(),
        Err(e) => bad(e.to_string()),
    }
}

/// Prometheus metrics: OpenMetrics text when the scraper asks for it, else the classic text format.
async fn metrics(State(shared): State<Arc<Shared>>, headers: axum::http::HeaderMap) -> impl IntoResponse {
    let openmetrics = headers
        .get_all(axum::http::header::ACCEPT)
        .iter()
        .any(|v| v.to_str().is_ok_and(|v| v.contains("application/openmetrics-text")));
    let content_type = if openmetrics {
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    } else {
        "text/plain; version=0.0.4; charset=utf-8"
    };
    // Encoding walks every series: off the admin runtime's thread, which also serves /health.
    let body = tokio::task::spawn_blocking(move || shared.metrics(openmetrics)).await.unwrap_or_default();
    ([(axum::http::header::CONTENT_TYPE, content_type)], body)
}

/// Every upstream with its endpoints' live state (health, load, latency) and its breaker.
async fn upstreams(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let snap = shared.snapshot.load();
    let now = crate::transport::clock::now_ms();
    let mut names: Vec<_> = snap.upstreams.keys().cloned().collect();
    names.sort();
    let list: Vec<_> = names
        .iter()
        .filter_map(|name| snap.upstreams.get(name))
        .map(|u| {
            let members = u.members();
            let endpoints: Vec<_> = members
                .endpoints
                .iter()
                .map(|e| {
                    let s = &e.state;
                    json!({
                        "url": &*e.url,
                        "weight": e.weight,
                        "healthy": s.is_available(now),
                        "ejected": s.health.is_ejected(now),
                        "health_check_down": s.active_down.load(std::sync::atomic::Ordering::Relaxed),
                        "consecutive_failures": s.health.consecutive_failures(),
                        "in_flight": s.in_flight.load(std::sync::atomic::Ordering::Relaxed),
                        "requests": s.requests.load(std::sync::atomic::Ordering::Relaxed),
                        "latency_ms": s.latency.cost(now) / 1e6,
                        "warmth": (u.slow_start_ms > 0).then(|| s.warmth(now, u.slow_start_ms)),
                    })
                })
                .collect();
            let breaker = u.breaker.as_ref().map(|b| b.state(now).as_str());
            let discovery = u.discovery.as_ref().map(|d| {
                let status = d.status();
                json!({
                    "source": &d.source,
                    "endpoints": status.endpoints,
                    "last_change": status.last_change.map(httpdate::fmt_http_date),
                    "last_error": status.last_error,
                })
            });
            json!({"name": &*u.name, "circuit_breaker": breaker, "discovery": discovery, "endpoints": endpoints})
        })
        .collect();
    Json(json!({"generation": snap.generation, "upstreams": list}))
}

/// What a consumer has used of its quotas and per-consumer rate limits, on every route.
async fn usage(
    State(shared): State<Arc<Shared>>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> impl IntoResponse {
    let snap = shared.snapshot.load();
    let Some(consumer) = snap.consumers.by_name(&name).cloned() else {
        let body = json!({"error": {"status": 404, "code": "consumer_not_found", "message": format!("no consumer is named \"{name}\"")}});
        return (StatusCode::NOT_FOUND, Json(body));
    };
    // Each policy once, however many routes share it (a global policy is shared by all).
    let mut policies: Vec<Arc<crate::policy::RateLimitPolicy>> = Vec::new();
    for route in &snap.routes {
        for listener in 0..snap.listeners.len() {
            let p = route.policies(listener);
            for policy in [&p.rate_limit, &p.quota].into_iter().flatten() {
                if !policies.iter().any(|known| Arc::ptr_eq(known, policy)) {
                    policies.push(policy.clone());
                }
            }
        }
    }
    let mut limits = Vec::new();
    for policy in policies {
        limits.extend(policy.usage(&consumer).await);
    }
    (StatusCode::OK, Json(json!({"consumer": &*consumer.name, "plan": consumer.plan.as_deref(), "limits": limits})))
}

async fn reloads(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    Json(json!({"generation": shared.generation(), "reloads": shared.reloads()}))
}

async fn reload(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let result = tokio::task::spawn_blocking(move || shared.reload()).await;
    match result {
        Ok(Ok(generation)) => (StatusCode::OK, Json(json!({"ok": true, "generation": generation}))),
        Ok(Err(errors)) => {
            let list: Vec<_> = errors
                .diagnostics
                .iter()
                .map(|d| json!({"path": d.path, "line": d.span.map(|s| s.line), "column": d.span.map(|s| s.col), "message": d.message}))
                .collect();
            (StatusCode::UNPROCESSABLE_ENTITY, Json(json!({"ok": false, "errors": list})))
        }
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({"ok": false}))),
    }
}
