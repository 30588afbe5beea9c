//! Pieces shared by every demo service: the JSON envelope, the identity the
//! gateway forwards, request-body parsing and the demo accounts.

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderMap, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

/// A demo account. The auth service checks passwords against this table and
/// the user service serves profiles from it, so both always agree.
pub(super) struct Account {
    pub id: &'static str,
    pub password: &'static str,
    pub name: &'static str,
    pub roles: &'static [&'static str],
}

pub(super) const ACCOUNTS: &[Account] = &[
    Account { id: "alice", password: "alice-pw", name: "Alice", roles: &["user"] },
    Account { id: "admin", password: "admin-pw", name: "Admin", roles: &["user", "admin"] },
];

pub(super) fn account(id: &str) -> Option<&'static Account> {
    ACCOUNTS.iter().find(|a| a.id == id)
}

/// Which service and instance answered. Stamped on every response so that a
/// newcomer can see where the gateway sent each request (and round-robin at
/// work across the two user instances).
#[derive(Clone, Debug)]
pub(super) struct Instance {
    service: &'static str,
    instance: String,
}

impl Instance {
    pub(super) fn new(service: &'static str, number: usize) -> Instance {
        Instance { service, instance: format!("{service}-{number}") }
    }

    /// A JSON response carrying `service` and `instance` alongside `body`'s
    /// fields. `body` is expected to be an object; anything else is nested
    /// under `data` rather than dropped.
    pub(super) fn reply(&self, status: StatusCode, body: Value) -> Response {
        let mut fields = match body {
            Value::Object(fields) => fields,
            other => {
                let mut fields = Map::new();
                fields.insert("data".to_owned(), other);
                fields
            }
        };
        fields.insert("service".to_owned(), Value::from(self.service));
        fields.insert("instance".to_owned(), Value::from(self.instance.clone()));
        (status, Json(Value::Object(fields))).into_response()
    }

    pub(super) fn ok(&self, body: Value) -> Response {
        self.reply(StatusCode::OK, body)
    }

    pub(super) fn error(&self, status: StatusCode, error: &str, message: &str) -> Response {
        self.reply(status, json!({ "error": error, "message": message }))
    }

    pub(super) fn not_found(&self) -> Response {
        self.reply(StatusCode::NOT_FOUND, json!({ "error": "not_found" }))
    }

    pub(super) fn unauthenticated(&self) -> Response {
        self.error(StatusCode::UNAUTHORIZED, "unauthenticated", "no identity from the gateway (X-User-Id missing)")
    }

    pub(super) fn internal_error(&self) -> Response {
        self.error(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the demo service failed to handle the request")
    }

    pub(super) fn reject(&self, rejection: Rejection) -> Response {
        self.error(rejection.status, rejection.error, &rejection.message)
    }

    /// Adds what every service has: `GET /health` and JSON answers for
    /// unknown paths and wrong methods, so that no response is ever plain
    /// text.
    pub(super) fn finish<S>(&self, routes: Router<S>, state: S) -> Router
    where
        S: Clone + Send + Sync + 'static,
    {
        let health = self.clone();
        let missing = self.clone();
        let wrong_method = self.clone();
        routes
            .route(
                "/health",
                get(move || {
                    let instance = health.clone();
                    async move { instance.ok(json!({ "status": "ok" })) }
                }),
            )
            .fallback(move || {
                let instance = missing.clone();
                async move { instance.not_found() }
            })
            .method_not_allowed_fallback(move || {
                let instance = wrong_method.clone();
                async move {
                    instance.error(
                        StatusCode::METHOD_NOT_ALLOWED,
                        "method_not_allowed",
                        "this path does not accept that method",
                    )
                }
            })
            .with_state(state)
    }
}

/// Why a request was refused, turned into a response by [`Instance::reject`].
#[derive(Debug)]
pub(super) struct Rejection {
    pub status: StatusCode,
    pub error: &'static str,
    pub message: String,
}

/// Parses a JSON request body. The content type is deliberately not checked:
/// newcomers poking at the demo with `curl -d` should not be turned away over
/// a missing header.
pub(super) fn parse_json<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, Rejection> {
    let body = body.map_err(|rejection| Rejection {
        status: rejection.status(),
        error: "invalid_request",
        message: rejection.body_text(),
    })?;
    serde_json::from_slice(&body).map_err(|err| Rejection {
        status: StatusCode::BAD_REQUEST,
        error: "invalid_request",
        message: format!("request body is not the expected JSON: {err}"),
    })
}

/// Who the gateway says is calling, from `X-User-Id`, `X-User-Name` and
/// `X-User-Roles`. The services trust these headers because they are only
/// reachable through the gateway, which sets them after verifying a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Identity {
    pub id: String,
    pub name: String,
    pub roles: Vec<String>,
}

impl Identity {
    pub(super) fn from_headers(headers: &HeaderMap) -> Option<Identity> {
        // Lossy decoding keeps a display name with non-ASCII characters
        // usable instead of rejecting the whole request.
        let text =
            |name: &str| headers.get(name).map(|value| String::from_utf8_lossy(value.as_bytes()).trim().to_owned());
        let id = text("x-user-id").filter(|id| !id.is_empty())?;
        let name = text("x-user-name").filter(|name| !name.is_empty()).unwrap_or_else(|| id.clone());
        let roles = text("x-user-roles")
            .map(|roles| roles.split(',').map(str::trim).filter(|role| !role.is_empty()).map(str::to_owned).collect())
            .unwrap_or_default();
        Some(Identity { id, name, roles })
    }

    pub(super) fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}
