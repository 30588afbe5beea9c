//! The demo appointment service: a few seeded appointments, readable by their
//! owners and deletable by admins.

use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::{delete, get};
use http::{HeaderMap, StatusCode};
use serde::Serialize;
use serde_json::json;

use super::common::{Identity, Instance};

#[derive(Clone, Serialize)]
struct Appointment {
    id: &'static str,
    owner: &'static str,
    title: &'static str,
    time: &'static str,
}

const SEED: [Appointment; 3] = [
    Appointment { id: "1", owner: "alice", title: "Dentist check-up", time: "2026-07-01T09:30:00Z" },
    Appointment { id: "2", owner: "alice", title: "Car service", time: "2026-07-03T14:00:00Z" },
    Appointment { id: "3", owner: "admin", title: "Quarterly planning", time: "2026-07-06T10:00:00Z" },
];

struct AppointmentState {
    instance: Instance,
    appointments: Mutex<Vec<Appointment>>,
}

impl AppointmentState {
    /// Locks the list. Every update is a single removal, so a poisoned lock
    /// still guards consistent data.
    fn appointments(&self) -> std::sync::MutexGuard<'_, Vec<Appointment>> {
        self.appointments.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

pub(super) fn router(instance: Instance) -> Router {
    let state = Arc::new(AppointmentState { instance: instance.clone(), appointments: Mutex::new(SEED.to_vec()) });
    let routes = Router::new().route("/appointments", get(list)).route("/appointments/{id}", delete(remove));
    instance.finish(routes, state)
}

/// The caller's own appointments; admins see everyone's.
async fn list(State(state): State<Arc<AppointmentState>>, headers: HeaderMap) -> Response {
    let instance = &state.instance;
    let Some(who) = Identity::from_headers(&headers) else {
        return instance.unauthenticated();
    };
    let all = who.has_role("admin");
    let visible: Vec<Appointment> = state.appointments().iter().filter(|a| all || a.owner == who.id).cloned().collect();
    instance.ok(json!({ "appointments": visible }))
}

/// Admin only. The gateway enforces the role too; checking it here as well
/// keeps the service safe if a route is ever misconfigured.
async fn remove(
    State(state): State<Arc<AppointmentState>>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Response {
    let instance = &state.instance;
    let Some(who) = Identity::from_headers(&headers) else {
        return instance.unauthenticated();
    };
    if !who.has_role("admin") {
        return instance.error(StatusCode::FORBIDDEN, "forbidden", "deleting appointments requires the admin role");
    }
    let Ok(Path(id)) = id else {
        return instance.error(StatusCode::BAD_REQUEST, "invalid_request", "bad appointment id");
    };
    let removed = {
        let mut appointments = state.appointments();
        let before = appointments.len();
        appointments.retain(|a| a.id != id);
        appointments.len() != before
    };
    if removed { instance.ok(json!({ "deleted": id })) } else { instance.not_found() }
}
