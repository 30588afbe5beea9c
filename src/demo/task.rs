//! The demo task service: a to-do list per user, kept in memory.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::response::Response;
use axum::routing::get;
use http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::common::{Identity, Instance, parse_json};

/// Longest accepted title, in characters. Longer titles get a 400.
pub const MAX_TITLE_CHARS: usize = 200;
/// Most tasks one user may hold. Creating one more gets a 400
/// `too_many_tasks` rather than a 429, so it cannot be mistaken for the
/// gateway's rate limiting.
pub const MAX_TASKS_PER_USER: usize = 1000;

#[derive(Clone, Serialize)]
struct Task {
    id: String,
    title: String,
    done: bool,
    owner: String,
}

#[derive(Default)]
struct Store {
    /// Shared by all users so that an id names exactly one task.
    last_id: u64,
    by_owner: HashMap<String, Vec<Task>>,
}

struct TaskState {
    instance: Instance,
    store: Mutex<Store>,
}

impl TaskState {
    /// Locks the store. A panic while it was held cannot leave it
    /// half-updated (every update is a single push), so poisoning is ignored.
    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Deserialize)]
struct NewTask {
    title: Option<String>,
}

pub(super) fn router(instance: Instance) -> Router {
    let state = Arc::new(TaskState { instance: instance.clone(), store: Mutex::new(Store::default()) });
    let routes = Router::new().route("/tasks", get(list).post(create));
    instance.finish(routes, state)
}

async fn list(State(state): State<Arc<TaskState>>, headers: HeaderMap) -> Response {
    let instance = &state.instance;
    let Some(who) = Identity::from_headers(&headers) else {
        return instance.unauthenticated();
    };
    let tasks = state.store().by_owner.get(&who.id).cloned().unwrap_or_default();
    instance.ok(json!({ "tasks": tasks }))
}

async fn create(
    State(state): State<Arc<TaskState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let instance = &state.instance;
    let Some(who) = Identity::from_headers(&headers) else {
        return instance.unauthenticated();
    };
    let request: NewTask = match parse_json(body) {
        Ok(request) => request,
        Err(rejection) => return instance.reject(rejection),
    };
    let title = request.title.as_deref().map(str::trim).unwrap_or_default();
    if title.is_empty() {
        return instance.error(StatusCode::BAD_REQUEST, "invalid_title", "title is required and must not be blank");
    }
    if title.chars().count() > MAX_TITLE_CHARS {
        return instance.error(
            StatusCode::BAD_REQUEST,
            "invalid_title",
            &format!("title is longer than {MAX_TITLE_CHARS} characters"),
        );
    }

    let created = {
        let mut store = state.store();
        let store = &mut *store;
        let tasks = store.by_owner.entry(who.id.clone()).or_default();
        if tasks.len() >= MAX_TASKS_PER_USER {
            None
        } else {
            store.last_id += 1;
            let task = Task { id: store.last_id.to_string(), title: title.to_owned(), done: false, owner: who.id };
            tasks.push(task.clone());
            Some(task)
        }
    };
    match created {
        Some(task) => instance.reply(StatusCode::CREATED, json!({ "task": task })),
        None => instance.error(
            StatusCode::BAD_REQUEST,
            "too_many_tasks",
            &format!("a user may hold at most {MAX_TASKS_PER_USER} tasks"),
        ),
    }
}
