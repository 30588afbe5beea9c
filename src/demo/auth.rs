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
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use http::StatusCode;
use ring::rand::SystemRandom;
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair, RsaPublicKeyComponents};
use serde::Deserialize;
use serde_json::{Value, json};

use super::common::{Instance, account, parse_json};

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

const PEM_BEGIN: &str = "-----BEGIN PRIVATE KEY-----";
const PEM_END: &str = "-----END PRIVATE KEY-----";

/// The demo signing key together with its published JWKS.
pub(super) struct Signer {
    key: RsaKeyPair,
    rng: SystemRandom,
    jwks: Value,
}

impl Signer {
    pub(super) fn load() -> io::Result<Signer> {
        let der = pem_body(DEMO_KEY_PEM)?;
        let key = RsaKeyPair::from_pkcs8(&der)
            .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, format!("demo signing key rejected: {err}")))?;
        let public = RsaPublicKeyComponents::<Vec<u8>>::from(key.public());
        let jwks = json!({
            "keys": [{
                "kty": "RSA",
                "use": "sig",
                "alg": "RS256",
                "kid": KEY_ID,
                "n": URL_SAFE_NO_PAD.encode(&public.n),
                "e": URL_SAFE_NO_PAD.encode(&public.e),
            }]
        });
        Ok(Signer { key, rng: SystemRandom::new(), jwks })
    }

    /// Signs `claims` as a compact RS256 JWS.
    fn sign(&self, claims: &Value) -> Result<String, SignError> {
        let header = json!({ "alg": "RS256", "typ": "JWT", "kid": KEY_ID });
        let mut token = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header)?);
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims)?));
        let mut signature = vec![0; self.key.public().modulus_len()];
        self.key.sign(&RSA_PKCS1_SHA256, &self.rng, token.as_bytes(), &mut signature).map_err(|_| SignError::Crypto)?;
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(&signature));
        Ok(token)
    }
}

#[derive(Debug)]
enum SignError {
    Json(serde_json::Error),
    Crypto,
}

impl From<serde_json::Error> for SignError {
    fn from(err: serde_json::Error) -> Self {
        SignError::Json(err)
    }
}

impl std::fmt::Display for SignError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SignError::Json(err) => write!(f, "cannot encode token: {err}"),
            SignError::Crypto => f.write_str("RSA signing failed"),
        }
    }
}

/// Decodes the base64 body of the PKCS#8 PEM block; the lines before it are
/// a warning for people reading the file and are skipped.
fn pem_body(pem: &str) -> io::Result<Vec<u8>> {
    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("demo signing key: {what}"));
    let start = pem.find(PEM_BEGIN).ok_or_else(|| invalid("no BEGIN PRIVATE KEY line"))? + PEM_BEGIN.len();
    let len = pem[start..].find(PEM_END).ok_or_else(|| invalid("no END PRIVATE KEY line"))?;
    let body: String = pem[start..start + len].chars().filter(|c| !c.is_ascii_whitespace()).collect();
    STANDARD.decode(body).map_err(|err| invalid(&format!("bad base64: {err}")))
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
