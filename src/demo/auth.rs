//! The demo auth service: password login that issues RS256 JWTs, and the
//! JWKS the gateway verifies them against.

use std::io;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::common::{Instance, account, parse_json};
use crate::policy::jwt::sign::{TokenSigner, pem_der};

/// `iss` of every demo token; the gateway's JWT policy in the demo config
/// expects the same value.
pub const ISSUER: &str = "gatehouse-demo-auth";
/// `aud` of every demo token.
pub const AUDIENCE: &str = "gatehouse-demo";
/// `kid` in the token header and the JWKS, so the gateway can pick the key.
pub const KEY_ID: &str = "demo-2026";
/// Token lifetime in seconds (`exp - iat`, and `expires_in` in the login reply).
pub const TOKEN_LIFETIME_SECS: u64 = 3600;

/// PUBLICLY KNOWN DEMO KEY. It is committed to the repository so that
/// `gatehouse demo` works with no setup, which means anyone can mint tokens
/// with it: never trust it, or reuse it, anywhere outside the demo.
const DEMO_KEY_PEM: &str = include_str!("demo-key.pem");

/// The demo signing key together with its published JWKS.
pub(super) struct Signer {
    signer: TokenSigner,
    jwks: Value,
}

impl Signer {
    pub(super) fn load() -> io::Result<Signer> {
        let invalid = |e: String| io::Error::new(io::ErrorKind::InvalidData, format!("demo signing key: {e}"));
        let der = pem_der(DEMO_KEY_PEM, "PRIVATE KEY").map_err(invalid)?;
        let signer = TokenSigner::rsa(&der, "RS256", Some(KEY_ID)).map_err(invalid)?;
        let jwks = json!({ "keys": [signer.jwk()] });
        Ok(Signer { signer, jwks })
    }

    /// Signs `claims` as a compact RS256 JWS.
    fn sign(&self, claims: &Value) -> Result<String, String> {
        self.signer.sign(claims)
    }
}

struct AuthState {
    instance: Instance,
    signer: Signer,
}

#[derive(Deserialize)]
struct LoginRequest {
    username: String,
    password: String,
}

pub(super) fn router(instance: Instance, signer: Signer) -> Router {
    let state = Arc::new(AuthState { instance: instance.clone(), signer });
    let routes = Router::new().route("/login", post(login)).route("/.well-known/jwks.json", get(jwks));
    instance.finish(routes, state)
}

async fn login(State(state): State<Arc<AuthState>>, body: Result<Bytes, BytesRejection>) -> Response {
    let instance = &state.instance;
    let request: LoginRequest = match parse_json(body) {
        Ok(request) => request,
        Err(rejection) => return instance.reject(rejection),
    };
    // Unknown user and wrong password answer identically, so the reply does
    // not reveal which usernames exist.
    let Some(user) = account(&request.username).filter(|a| a.password == request.password) else {
        return instance.reply(StatusCode::UNAUTHORIZED, json!({ "error": "invalid_credentials" }));
    };
    let now = match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(since_epoch) => since_epoch.as_secs(),
        Err(err) => {
            tracing::error!(%err, "system clock is before 1970; cannot issue a demo token");
            return instance.internal_error();
        }
    };
    let claims = json!({
        "sub": user.id,
        "name": user.name,
        "roles": user.roles,
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + TOKEN_LIFETIME_SECS,
    });
    match state.signer.sign(&claims) {
        Ok(token) => instance.ok(json!({
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": TOKEN_LIFETIME_SECS,
        })),
        Err(err) => {
            tracing::error!(%err, "cannot issue a demo token");
            instance.internal_error()
        }
    }
}

/// The one response without `service`/`instance`: a JWKS must stay a plain
/// JWKS for the gateway (and any other JOSE library) to consume it.
async fn jwks(State(state): State<Arc<AuthState>>) -> Response {
    Json(state.signer.jwks.clone()).into_response()
}
