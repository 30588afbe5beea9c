//! The demo user service. Two instances run side by side so that the gateway's
//! load balancing is visible in the `instance` field.

use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::get;
use http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

use super::common::{ACCOUNTS, Account, Identity, Instance, account};

pub(super) fn router(instance: Instance) -> Router {
    let state = Arc::new(instance.clone());
    let routes =
        Router::new().route("/users", get(list)).route("/users/me", get(me)).route("/users/{id}", get(profile));
    instance.finish(routes, state)
}

fn public_profile(account: &Account) -> Value {
    json!({ "id": account.id, "name": account.name })
}

/// Public on purpose: it needs no identity, so it is the easiest way to watch
/// requests alternate between `user-1` and `user-2`.
async fn list(State(instance): State<Arc<Instance>>) -> Response {
    let users: Vec<Value> = ACCOUNTS.iter().map(public_profile).collect();
    instance.ok(json!({ "users": users }))
}

/// Echoes the identity the gateway derived from the caller's token.
async fn me(State(instance): State<Arc<Instance>>, headers: HeaderMap) -> Response {
    match Identity::from_headers(&headers) {
        Some(who) => instance.ok(json!({
            "user": { "id": who.id, "name": who.name, "roles": who.roles }
        })),
        None => instance.unauthenticated(),
    }
}

async fn profile(State(instance): State<Arc<Instance>>, id: Result<Path<String>, PathRejection>) -> Response {
    let Ok(Path(id)) = id else {
        return instance.error(StatusCode::BAD_REQUEST, "invalid_request", "bad user id");
    };
    match account(&id) {
        Some(account) => instance.ok(json!({ "user": public_profile(account) })),
        None => instance.not_found(),
    }
}
