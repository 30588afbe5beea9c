//! Routes, upstreams, consumers and credentials changed at runtime.
//!
//! Each change goes through `Shared::change`: the config file with every change so far plus this
//! one is compiled by the same code as a reload, written to `admin.store`, and swapped in. A body
//! is JSON in the config file's shape (the same field names and units), read with every `$` taken
//! literally: the admin API never interpolates the gateway's environment.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::app::{ChangeError, Shared};
use crate::config::overlay::Overlay;
use crate::config::{
    ConfigErrors, ConsumerConfig, CredentialConfig, Diagnostic, LocalConfig, RouteConfig, UpstreamConfig,
};

/// A kind of entity the API changes, and how it lives in the config and in the changes.
pub(crate) trait Entity: Clone + serde::Serialize + DeserializeOwned + Send + 'static {
    const KIND: &'static str;
    /// The body names the entity in a `name` field (routes, consumers), or not at all (upstreams).
    const NAMED: bool;
    fn changes(overlay: &mut Overlay) -> &mut std::collections::BTreeMap<String, Option<Self>>;
    /// Whether the changes hold one of this kind named `name` (a replacement or a deletion).
    fn changed(overlay: &Overlay, name: &str) -> bool;
    fn find(config: &LocalConfig, name: &str) -> Option<Self>;
    /// Refuses a name the config would refuse, before anything is compiled: routes and upstreams
    /// follow the config's name rule; consumers' names are checked by the consumer index.
    fn check_name(name: &str) -> Result<(), ChangeError> {
        if crate::config::compile::valid_name(name) {
            return Ok(());
        }
        Err(ChangeError::BadRequest(vec![Diagnostic::new("", crate::config::compile::name_rule(name))]))
    }
    /// Makes it fit to be stored (e.g. API keys hashed).
    fn prepare(&mut self) -> Result<(), ChangeError> {
        Ok(())
    }
}

impl Entity for RouteConfig {
    const KIND: &'static str = "route";
    const NAMED: bool = true;
    fn changes(overlay: &mut Overlay) -> &mut std::collections::BTreeMap<String, Option<Self>> {
        &mut overlay.routes
    }
    fn changed(overlay: &Overlay, name: &str) -> bool {
        overlay.routes.contains_key(name)
    }
    fn find(config: &LocalConfig, name: &str) -> Option<Self> {
        config.routes.iter().find(|r| r.name.as_deref() == Some(name)).cloned()
    }
}

impl Entity for UpstreamConfig {
    const KIND: &'static str = "upstream";
    const NAMED: bool = false;
    fn changes(overlay: &mut Overlay) -> &mut std::collections::BTreeMap<String, Option<Self>> {
        &mut overlay.upstreams
    }
    fn changed(overlay: &Overlay, name: &str) -> bool {
        overlay.upstreams.contains_key(name)
    }
    fn find(config: &LocalConfig, name: &str) -> Option<Self> {
        config.upstreams.get(name).cloned()
    }
}

impl Entity for ConsumerConfig {
    const KIND: &'static str = "consumer";
    const NAMED: bool = true;
    fn changes(overlay: &mut Overlay) -> &mut std::collections::BTreeMap<String, Option<Self>> {
        &mut overlay.consumers
    }
    fn changed(overlay: &Overlay, name: &str) -> bool {
        overlay.consumers.contains_key(name)
    }
    fn find(config: &LocalConfig, name: &str) -> Option<Self> {
        config.consumers.iter().find(|c| c.name == name).cloned()
    }
    fn check_name(_: &str) -> Result<(), ChangeError> {
        Ok(())
    }
    fn prepare(&mut self) -> Result<(), ChangeError> {
        for (i, credential) in self.credentials.iter_mut().enumerate() {
            hash_api_key(credential, &format!("credentials[{i}]"))?;
        }
        Ok(())
    }
}

/// An API key given in clear is stored as its SHA-256, like `gatehouse keygen` prints it: the
/// store never holds a usable key.
fn hash_api_key(credential: &mut CredentialConfig, path: &str) -> Result<(), ChangeError> {
    if let Some(key) = credential.api_key.take() {
        if key.len() < 16 {
            return Err(ChangeError::BadRequest(vec![Diagnostic::new(
                format!("{path}.api_key"),
                "an API key needs at least 16 characters",
            )]));
        }
        if credential.api_key_sha256.is_some() {
            return Err(ChangeError::BadRequest(vec![Diagnostic::new(
                path.to_owned(),
                "give api_key or api_key_sha256, not both",
            )]));
        }
        credential.api_key_sha256 = Some(crate::policy::consumers::key_hex(&key));
    }
    Ok(())
}

/// How a credential is named in the API: its kind and what identifies it (a key's hash prefix, a
/// user name, a token subject). Never the secret.
pub fn credential_id(c: &CredentialConfig) -> String {
    let key_hash = match (&c.api_key_sha256, &c.api_key) {
        (Some(hex), _) => Some(hex.to_ascii_lowercase()),
        (None, Some(key)) => Some(crate::policy::consumers::key_hex(key)),
        (None, None) => None,
    };
    match (key_hash, &c.jwt_subject, &c.username, &c.secret) {
        (Some(hex), ..) => format!("api_key:{}", hex.get(..16).unwrap_or(&hex)),
        (None, Some(subject), ..) => format!("jwt:{subject}"),
        (None, None, Some(user), Some(_)) => format!("hmac:{user}"),
        (None, None, Some(user), None) => format!("basic:{user}"),
        (None, None, None, _) => "unknown".to_owned(),
    }
}

fn describe_credential(c: &CredentialConfig) -> Value {
    let id = credential_id(c);
    let kind = id.split(':').next().unwrap_or_default().to_owned();
    json!({"id": id, "kind": kind, "label": c.label, "expires": c.expires, "revoked": c.revoked})
}

/// Replaces secrets (and what could be cracked offline to find them) in a JSON config document.
pub fn redact(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                if matches!(key.as_str(), "secret" | "api_key" | "password_hash" | "token" | "client_secret")
                    && v.is_string()
                {
                    *v = json!("<redacted>");
                } else if key == "otlp" {
                    // A tracing vendor's API key travels in the exporter's headers.
                    if let Some(Value::Object(headers)) = v.get_mut("headers") {
                        headers.values_mut().for_each(|h| *h = json!("<redacted>"));
                    }
                    redact(v);
                } else {
                    redact(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        // A password in a URL (`redis://user:password@host`).
        Value::String(text) => {
            if let Some((scheme, rest)) = text.split_once("://") {
                let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
                if let Some((_, host)) = authority.rsplit_once('@') {
                    let tail = &rest[authority.len()..];
                    *text = format!("{scheme}://<redacted>@{host}{tail}");
                }
            }
        }
        _ => {}
    }
}

fn error(status: StatusCode, code: &str, message: String) -> Response {
    (status, Json(json!({"error": {"status": status.as_u16(), "code": code, "message": message}}))).into_response()
}

fn error_with(status: StatusCode, code: &str, message: String, diagnostics: &[Diagnostic]) -> Response {
    let errors: Vec<_> = diagnostics
        .iter()
        .map(|d| json!({"path": d.path, "line": d.span.map(|s| s.line), "column": d.span.map(|s| s.col), "message": d.message}))
        .collect();
    let body = json!({"error": {"status": status.as_u16(), "code": code, "message": message, "errors": errors}});
    (status, Json(body)).into_response()
}

fn count(errors: &ConfigErrors) -> String {
    let n = errors.diagnostics.len();
    format!("{n} error{}", if n == 1 { "" } else { "s" })
}

impl IntoResponse for ChangeError {
    fn into_response(self) -> Response {
        match self {
            ChangeError::NoStore => error(
                StatusCode::CONFLICT,
                "read_only",
                "the admin API is read-only: set admin.store to the file where its changes are kept".into(),
            ),
            ChangeError::File(errors) => error_with(
                StatusCode::CONFLICT,
                "config_file_invalid",
                format!("the config file does not load ({}); fix it first, nothing was changed", count(&errors)),
                &errors.diagnostics,
            ),
            ChangeError::Invalid(errors) => error_with(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_config",
                format!("the config with this change has {}; nothing was changed", count(&errors)),
                &errors.diagnostics,
            ),
            ChangeError::NotFound(message) => error(StatusCode::NOT_FOUND, "not_found", message),
            ChangeError::Conflict(message) => error(StatusCode::CONFLICT, "conflict", message),
            ChangeError::BadRequest(diagnostics) => {
                let message = diagnostics.first().map(|d| d.message.clone()).unwrap_or_default();
                error_with(StatusCode::BAD_REQUEST, "bad_request", message, &diagnostics)
            }
            ChangeError::Store(message) => error(StatusCode::INTERNAL_SERVER_ERROR, "store_failed", message),
        }
    }
}

/// Reads a JSON body into `T`, reporting every problem with its path. `name`, when given, is put
/// into the body's `name` field (which, if present, must say the same).
fn body<T: DeserializeOwned>(bytes: &Bytes, name: Option<&str>) -> Result<T, ChangeError> {
    let bad = |path: &str, message: String| ChangeError::BadRequest(vec![Diagnostic::new(path.to_owned(), message)]);
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(bad("", "a JSON body is required".into()));
    }
    let mut value: Value = serde_json::from_slice(bytes).map_err(|e| bad("", format!("the body is not JSON: {e}")))?;
    if let Some(name) = name {
        let Value::Object(map) = &mut value else { return Err(bad("", "the body must be a JSON object".into())) };
        match map.get("name") {
            None => {
                map.insert("name".into(), json!(name));
            }
            Some(Value::String(given)) if given == name => {}
            Some(given) => return Err(bad("name", format!("the body names {given}, the URL {name:?}"))),
        }
    }
    // Through the config reader, for every error at once with its path, and no interpolation.
    crate::config::overlay::parse(&value.to_string()).map_err(ChangeError::BadRequest)
}

fn changed(status: StatusCode, generation: u64, extra: Value) -> Response {
    let mut body = json!({"generation": generation});
    if let (Value::Object(body), Value::Object(extra)) = (&mut body, extra) {
        body.extend(extra);
    }
    (status, Json(body)).into_response()
}

/// `GET /routes|upstreams|consumers/{name}`: the running entity, redacted, and where it came from.
pub(crate) async fn get_one<E: Entity>(State(shared): State<Arc<Shared>>, Path(name): Path<String>) -> Response {
    let snap = shared.snapshot.load();
    let Some(entity) = E::find(&snap.config, &name) else {
        return ChangeError::NotFound(format!("no {} is named {name:?}", E::KIND)).into_response();
    };
    let mut config = serde_json::to_value(&entity).unwrap_or_default();
    redact(&mut config);
    let source = if E::changed(&shared.changes(), &name) { "admin" } else { "file" };
    Json(json!({"name": name, "source": source, "generation": snap.generation, E::KIND: config})).into_response()
}

/// Runs a change away from the admin runtime's thread: it reads the config file and compiles
/// (which may wait for a discovery's first answer), and `/health` must stay quick meanwhile.
async fn off_thread<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ChangeError> + Send + 'static,
) -> Result<T, ChangeError> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|_| Err(ChangeError::Store("the change did not finish".into())))
}

/// `PUT …/{name}`: creates or replaces the entity as a change.
pub(crate) async fn put<E: Entity>(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    bytes: Bytes,
) -> Response {
    let result = off_thread(move || {
        E::check_name(&name)?;
        let mut entity: E = body(&bytes, E::NAMED.then_some(name.as_str()))?;
        entity.prepare()?;
        shared.change(|changes, file| {
            let existed = E::find(&changes.apply(file).config, &name).is_some();
            E::changes(changes).insert(name.clone(), Some(entity));
            Ok(existed)
        })
    })
    .await;
    match result {
        Ok((true, generation)) => changed(StatusCode::OK, generation, json!({"created": false})),
        Ok((false, generation)) => changed(StatusCode::CREATED, generation, json!({"created": true})),
        Err(e) => e.into_response(),
    }
}

/// `DELETE …/{name}`: forgets an entity the API added, or marks the file's deleted.
pub(crate) async fn delete<E: Entity>(State(shared): State<Arc<Shared>>, Path(name): Path<String>) -> Response {
    let deleted = name.clone();
    let result = off_thread(move || {
        shared.change(|changes, file| {
            if E::find(&changes.apply(file).config, &name).is_none() {
                return Err(ChangeError::NotFound(format!("no {} is named {name:?}", E::KIND)));
            }
            // What only the API added is forgotten; what the file has is marked deleted.
            if E::find(file, &name).is_some() {
                E::changes(changes).insert(name.clone(), None);
            } else {
                E::changes(changes).remove(&name);
            }
            Ok(())
        })
    })
    .await;
    match result {
        Ok(((), generation)) => changed(StatusCode::OK, generation, json!({"deleted": deleted})),
        Err(e) => e.into_response(),
    }
}

/// Every consumer: name, plan, groups, its credentials by id (no secrets), and where it came from.
pub async fn consumers(State(shared): State<Arc<Shared>>) -> Response {
    let snap = shared.snapshot.load();
    let changes = shared.changes();
    let list: Vec<_> = snap
        .config
        .consumers
        .iter()
        .map(|c| {
            let name = &c.name;
            let source = if changes.consumers.contains_key(name) { "admin" } else { "file" };
            let credentials: Vec<_> = c.credentials.iter().map(describe_credential).collect();
            json!({"name": name, "plan": c.plan, "groups": c.groups, "source": source, "credentials": credentials})
        })
        .collect();
    Json(json!({"generation": snap.generation, "consumers": list})).into_response()
}

pub async fn credentials(State(shared): State<Arc<Shared>>, Path(name): Path<String>) -> Response {
    let snap = shared.snapshot.load();
    match ConsumerConfig::find(&snap.config, &name) {
        Some(c) => {
            let list: Vec<_> = c.credentials.iter().map(describe_credential).collect();
            Json(json!({"consumer": name, "credentials": list})).into_response()
        }
        None => ChangeError::NotFound(format!("no consumer is named {name:?}")).into_response(),
    }
}

#[derive(serde::Deserialize)]
pub struct AddQuery {
    /// `api_key`: gatehouse makes the key, stores its hash, and answers it this once.
    generate: Option<String>,
}

/// Adds a credential to a consumer (from the file or the API): the whole consumer becomes a change.
pub async fn add_credential(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    Query(query): Query<AddQuery>,
    bytes: Bytes,
) -> Response {
    let result = off_thread(move || {
        let (mut credential, generated) = match query.generate.as_deref() {
            None => (body::<CredentialConfig>(&bytes, None)?, None),
            Some("api_key") => {
                let mut credential = if bytes.iter().all(u8::is_ascii_whitespace) {
                    CredentialConfig::default()
                } else {
                    body::<CredentialConfig>(&bytes, None)?
                };
                if credential.api_key.is_some() || credential.api_key_sha256.is_some() {
                    return Err(ChangeError::BadRequest(vec![Diagnostic::new(
                        "api_key",
                        "generate=api_key makes the key: give none",
                    )]));
                }
                let (key, _) = crate::policy::consumers::generate_key().map_err(ChangeError::Store)?;
                credential.api_key = Some(key.clone());
                (credential, Some(key))
            }
            Some(other) => {
                return Err(ChangeError::BadRequest(vec![Diagnostic::new(
                    "",
                    format!("generate={other:?}: only api_key can be generated"),
                )]));
            }
        };
        hash_api_key(&mut credential, "")?;
        let id = credential_id(&credential);
        let answer = id.clone();
        let (_, generation) = shared.change(move |changes, file| {
            let merged = changes.apply(file).config;
            let Some(mut consumer) = ConsumerConfig::find(&merged, &name) else {
                return Err(ChangeError::NotFound(format!("no consumer is named {name:?}")));
            };
            if consumer.credentials.iter().any(|c| credential_id(c) == id) {
                return Err(ChangeError::Conflict(format!("consumer {name:?} already has credential {id}")));
            }
            consumer.credentials.push(credential);
            changes.consumers.insert(name, Some(consumer));
            Ok(())
        })?;
        Ok((answer, generated, generation))
    })
    .await;
    match result {
        Ok((id, key, generation)) => {
            let mut extra = json!({"id": id});
            if let Some(key) = key {
                extra["api_key"] = json!(key);
            }
            changed(StatusCode::CREATED, generation, extra)
        }
        Err(e) => e.into_response(),
    }
}

pub async fn delete_credential(
    State(shared): State<Arc<Shared>>,
    Path((name, id)): Path<(String, String)>,
) -> Response {
    let deleted = id.clone();
    let result = off_thread(move || {
        shared.change(|changes, file| {
            let merged = changes.apply(file).config;
            let Some(mut consumer) = ConsumerConfig::find(&merged, &name) else {
                return Err(ChangeError::NotFound(format!("no consumer is named {name:?}")));
            };
            let before = consumer.credentials.len();
            consumer.credentials.retain(|c| credential_id(c) != id);
            if consumer.credentials.len() == before {
                return Err(ChangeError::NotFound(format!("consumer {name:?} has no credential {id}")));
            }
            changes.consumers.insert(name.clone(), Some(consumer));
            Ok(())
        })
    })
    .await;
    match result {
        Ok(((), generation)) => changed(StatusCode::OK, generation, json!({"deleted": deleted})),
        Err(e) => e.into_response(),
    }
}

/// Every change the API has made, as kept in `admin.store` (secrets redacted).
pub async fn get_changes(State(shared): State<Arc<Shared>>) -> Response {
    let mut changes = serde_json::to_value(shared.changes()).unwrap_or_default();
    redact(&mut changes);
    let store = shared.store().map(|p| p.display().to_string());
    Json(json!({"generation": shared.generation(), "store": store, "changes": changes})).into_response()
}

/// Forgets every change: the config file alone again.
pub async fn delete_changes(State(shared): State<Arc<Shared>>) -> Response {
    let result = off_thread(move || {
        shared.change(|changes, _| {
            *changes = Overlay::default();
            Ok(())
        })
    })
    .await;
    match result {
        Ok(((), generation)) => changed(StatusCode::OK, generation, json!({})),
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_wherever_the_config_holds_them() {
        let mut config = json!({
            "admin": {"token": "t0ken"},
            "redis": {"url": "redis://app:hunter2@redis.internal:6379/0"},
            "tracing": {"otlp": {"endpoint": "https://otlp.vendor.example/v1/traces", "headers": {"x-api-key": "vendor-key"}}},
            "consumers": [{"name": "a", "credentials": [{"secret": "s", "api_key": "k", "password_hash": "$argon2id$"}]}],
            "upstreams": {"u": {"endpoints": ["http://10.0.0.1:80"]}},
        });
        redact(&mut config);
        let text = config.to_string();
        for secret in ["t0ken", "hunter2", "vendor-key", "\"s\"", "\"k\"", "argon2id"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert_eq!(config["redis"]["url"], "redis://<redacted>@redis.internal:6379/0");
        assert_eq!(config["tracing"]["otlp"]["endpoint"], "https://otlp.vendor.example/v1/traces");
        assert_eq!(config["upstreams"]["u"]["endpoints"][0], "http://10.0.0.1:80");
    }
}
