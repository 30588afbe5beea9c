//! Verification keys for the `jwt` policy: from a JWKS document (remote or on disk), a shared
//! secret, or a PEM public key; and the long-lived cache of a remote JWKS.
//!
//! A remote JWKS is fetched when first needed, refreshed in the background once it is older than
//! the refresh interval, and fetched again when a token names an unknown `kid` — but not more often
//! than the policy's `jwks_min_refetch` (default `MIN_REFETCH`), so a flood of tokens with random `kid`s cannot hammer the identity provider.
//! A failed fetch keeps the keys already known. Fetches are single-flight across workers.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio::sync::Notify;

use crate::transport::clock;

/// By default, tokens naming an unknown `kid` trigger at most one JWKS fetch per this interval.
pub const MIN_REFETCH: Duration = Duration::from_secs(10);
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_JWKS_BYTES: usize = 512 * 1024;
/// More keys than this in one JWKS is refused: each token may be tried against every key.
const MAX_KEYS: usize = 64;

/// One verification key and the algorithms it may verify.
pub struct Key {
    pub kid: Option<String>,
    pub algorithms: Vec<Algorithm>,
    pub decoding: DecodingKey,
}

/// A set of keys; `generation` changes whenever the keys do (verified-token caches key on it).
pub struct KeySet {
    pub keys: Vec<Key>,
    pub generation: u64,
}

impl KeySet {
    /// The keys that may verify a token with this `kid` and `alg`: a key without a `kid` of its
    /// own (a secret, a PEM key) is a candidate whatever `kid` the token names.
    pub fn candidates<'a>(&'a self, kid: Option<&'a str>, alg: Algorithm) -> impl Iterator<Item = &'a Key> + 'a {
        self.keys.iter().filter(move |k| {
            k.algorithms.contains(&alg) && (kid.is_none() || k.kid.is_none() || k.kid.as_deref() == kid)
        })
    }

    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }
}

/// The algorithms a key type can verify, narrowed to `allowed` when given.
fn narrow(family: &[Algorithm], allowed: Option<&[Algorithm]>) -> Vec<Algorithm> {
    family.iter().copied().filter(|a| allowed.is_none_or(|list| list.contains(a))).collect()
}

fn key_algorithm(alg: KeyAlgorithm) -> Option<Algorithm> {
    Some(match alg {
        KeyAlgorithm::HS256 => Algorithm::HS256,
        KeyAlgorithm::HS384 => Algorithm::HS384,
        KeyAlgorithm::HS512 => Algorithm::HS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

/// One JWK as a verification key, or why it cannot be one.
fn jwk_key(jwk: &Jwk, allowed: Option<&[Algorithm]>) -> Result<Key, String> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption) | Some(PublicKeyUse::Other(_))) {
        return Err("not a signature key (`use` is not `sig`)".into());
    }
    let family: &[Algorithm] = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => jsonwebtoken::AlgorithmFamily::Rsa.algorithms(),
        AlgorithmParameters::EllipticCurve(ec) => {
            let (alg, len) = match ec.curve {
                EllipticCurve::P256 => (Algorithm::ES256, 32),
                EllipticCurve::P384 => (Algorithm::ES384, 48),
                _ => return Err("unsupported elliptic curve".into()),
            };
            let decoded =
                |v: &str| base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, v).map(|b| b.len());
            if decoded(&ec.x) != Ok(len) || decoded(&ec.y) != Ok(len) {
                return Err("EC key coordinates have the wrong length".into());
            }
            if alg == Algorithm::ES256 { &[Algorithm::ES256] } else { &[Algorithm::ES384] }
        }
        AlgorithmParameters::OctetKeyPair(okp) => {
            if okp.curve != EllipticCurve::Ed25519 {
                return Err("unsupported OKP curve".into());
            }
            &[Algorithm::EdDSA]
        }
        AlgorithmParameters::OctetKey(_) => jsonwebtoken::AlgorithmFamily::Hmac.algorithms(),
        _ => return Err("unsupported key type".into()),
    };
    let mut algorithms = narrow(family, allowed);
    if let Some(alg) = jwk.common.key_algorithm {
        let alg = key_algorithm(alg).ok_or("the key's `alg` is not a signature algorithm")?;
        algorithms.retain(|a| *a == alg);
    }
    if algorithms.is_empty() {
        return Err("none of the allowed algorithms fits this key".into());
    }
    let decoding = DecodingKey::from_jwk(jwk).map_err(|e| format!("invalid key: {e}"))?;
    Ok(Key { kid: jwk.common.key_id.clone(), algorithms, decoding })
}

/// Parses a JWKS document. Keys that cannot be used are skipped (and reported); a document with
/// no usable key is an error.
pub fn parse_jwks(bytes: &[u8], allowed: Option<&[Algorithm]>) -> Result<(Vec<Key>, Vec<String>), String> {
    #[derive(serde::Deserialize)]
    struct Document {
        keys: Vec<serde_json::Value>,
    }
    let doc: Document = serde_json::from_slice(bytes).map_err(|e| format!("not a JWKS document: {e}"))?;
    if doc.keys.len() > MAX_KEYS {
        return Err(format!("the JWKS has {} keys; at most {MAX_KEYS} are accepted", doc.keys.len()));
    }
    let mut keys = Vec::new();
    let mut skipped = Vec::new();
    for (i, value) in doc.keys.into_iter().enumerate() {
        let result = serde_json::from_value::<Jwk>(value)
            .map_err(|e| format!("unreadable: {e}"))
            .and_then(|jwk| jwk_key(&jwk, allowed));
        match result {
            Ok(key) => keys.push(key),
            Err(why) => skipped.push(format!("key {i}: {why}")),
        }
    }
    if keys.is_empty() {
        return Err(format!("the JWKS has no usable signature key ({})", skipped.join("; ")));
    }
    Ok((keys, skipped))
}

/// A shared secret as an HMAC key.
pub fn secret_key(secret: &[u8], allowed: Option<&[Algorithm]>) -> Result<Key, String> {
    let algorithms = narrow(jsonwebtoken::AlgorithmFamily::Hmac.algorithms(), allowed);
    if algorithms.is_empty() {
        return Err("a secret verifies only HS256, HS384 or HS512".into());
    }
    if secret.len() < 32 {
        return Err("the secret is shorter than 32 bytes; HMAC keys that short can be brute-forced".into());
    }
    Ok(Key { kid: None, algorithms, decoding: DecodingKey::from_secret(secret) })
}

/// A PEM public key (RSA, EC P-256/P-384 or Ed25519). The key type is read from the PEM label
/// and the key's algorithm identifier — never guessed by trying parsers, which could read one type
/// of key as another.
pub fn pem_key(pem: &[u8], allowed: Option<&[Algorithm]>) -> Result<Key, String> {
    use jsonwebtoken::AlgorithmFamily as F;
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
    const EC: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    const P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    const P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
    const ED25519: &[u8] = &[0x2b, 0x65, 0x70];
    let text = std::str::from_utf8(pem).map_err(|_| "not a PEM file".to_owned())?;
    let unsupported = || "not a PEM-encoded RSA, EC (P-256/P-384) or Ed25519 public key".to_owned();
    let (family, algorithms): (F, &[Algorithm]) = if text.contains("-----BEGIN RSA PUBLIC KEY-----") {
        (F::Rsa, F::Rsa.algorithms())
    } else if text.contains("-----BEGIN PUBLIC KEY-----") {
        let der = super::sign::pem_der(text, "PUBLIC KEY")?;
        // The algorithm identifier opens a SubjectPublicKeyInfo: look only there.
        let head = &der[..der.len().min(32)];
        let has = |oid: &[u8]| head.windows(oid.len()).any(|w| w == oid);
        if has(RSA) {
            (F::Rsa, F::Rsa.algorithms())
        } else if has(EC) && has(P256) {
            (F::Ec, &[Algorithm::ES256])
        } else if has(EC) && has(P384) {
            (F::Ec, &[Algorithm::ES384])
        } else if has(ED25519) {
            (F::Ed, &[Algorithm::EdDSA])
        } else {
            return Err(unsupported());
        }
    } else {
        return Err(unsupported());
    };
    let decoding = match family {
        F::Rsa => DecodingKey::from_rsa_pem(pem),
        F::Ec => DecodingKey::from_ec_pem(pem),
        _ => DecodingKey::from_ed_pem(pem),
    }
    .map_err(|e| format!("invalid key: {e}"))?;
    let algorithms = narrow(algorithms, allowed);
    if algorithms.is_empty() {
        return Err("none of the allowed algorithms fits this key".into());
    }
    Ok(Key { kid: None, algorithms, decoding })
}

// === impl JwksSource ===

/// A remote JWKS, shared by every snapshot and worker that uses the same URL.
pub struct JwksSource {
    pub url: String,
    allowed: Option<Vec<Algorithm>>,
    refresh_every_ms: u64,
    min_refetch_ms: u64,
    keys: ArcSwapOption<KeySet>,
    body_hash: AtomicU64,
    last_attempt_ms: AtomicU64,
    fetched_ms: AtomicU64,
    fetching: AtomicBool,
    done: Notify,
}

impl JwksSource {
    pub fn new(
        url: String,
        allowed: Option<Vec<Algorithm>>,
        refresh_every: Duration,
        min_refetch: Duration,
    ) -> JwksSource {
        JwksSource {
            url,
            allowed,
            refresh_every_ms: refresh_every.as_millis() as u64,
            min_refetch_ms: min_refetch.as_millis() as u64,
            keys: ArcSwapOption::empty(),
            body_hash: AtomicU64::new(0),
            last_attempt_ms: AtomicU64::new(0),
            fetched_ms: AtomicU64::new(0),
            fetching: AtomicBool::new(false),
            done: Notify::new(),
        }
    }

    /// The keys fetched so far, without waiting (refreshed in the background when old); `None`
    /// before the first fetch succeeded.
    pub fn current(self: &Arc<Self>) -> Option<Arc<KeySet>> {
        let keys = self.keys.load_full()?;
        let age = clock::now_ms().saturating_sub(self.fetched_ms.load(Ordering::Relaxed));
        if age >= self.refresh_every_ms && self.may_fetch() {
            let source = self.clone();
            tokio::spawn(async move { source.fetch().await });
        }
        Some(keys)
    }

    /// The current keys: fetched now if there are none yet; refreshed in the background if old.
    pub async fn keys(self: &Arc<Self>) -> Option<Arc<KeySet>> {
        if let Some(keys) = self.current() {
            return Some(keys);
        }
        if self.may_fetch() {
            self.fetch().await;
        }
        self.keys.load_full()
    }

    /// A token named a `kid` we do not know: the keys may have rotated. Fetches again unless that
    /// was done less than `MIN_REFETCH` ago.
    pub async fn refresh_for_unknown_kid(self: &Arc<Self>) -> Option<Arc<KeySet>> {
        if self.may_fetch() {
            self.fetch().await;
        }
        self.keys.load_full()
    }

    fn may_fetch(&self) -> bool {
        let last = self.last_attempt_ms.load(Ordering::Relaxed);
        // A fresh reading: this path is rare, and the coarse clock could be a tick behind.
        last == 0 || clock::tick().saturating_sub(last) >= self.min_refetch_ms
    }

    /// Fetches the JWKS once, however many callers ask at the same time.
    async fn fetch(&self) {
        let finished = self.done.notified();
        tokio::pin!(finished);
        finished.as_mut().enable();
        if self.fetching.swap(true, Ordering::AcqRel) {
            // Someone else is fetching: wait for them (bounded by their timeout).
            let _ = tokio::time::timeout(FETCH_TIMEOUT + Duration::from_secs(1), finished).await;
            return;
        }
        self.last_attempt_ms.store(clock::tick().max(1), Ordering::Relaxed);
        match crate::upstream::fetch::get(&self.url, FETCH_TIMEOUT, MAX_JWKS_BYTES).await {
            Ok(body) => self.install(&body),
            Err(e) => {
                let kept = if self.keys.load().is_some() { "; the keys fetched before stay in use" } else { "" };
                tracing::warn!(url = %self.url, "cannot fetch the JWKS: {e}{kept}");
            }
        }
        self.fetching.store(false, Ordering::Release);
        self.done.notify_waiters();
    }

    fn install(&self, body: &[u8]) {
        let mut h = DefaultHasher::new();
        body.hash(&mut h);
        let hash = h.finish();
        self.fetched_ms.store(clock::now_ms(), Ordering::Relaxed);
        if self.keys.load().is_some() && self.body_hash.load(Ordering::Relaxed) == hash {
            return;
        }
        match parse_jwks(body, self.allowed.as_deref()) {
            Ok((keys, skipped)) => {
                if !skipped.is_empty() {
                    tracing::warn!(url = %self.url, "JWKS keys skipped: {}", skipped.join("; "));
                }
                let generation = self.keys.load().as_ref().map_or(1, |k| k.generation + 1);
                tracing::info!(url = %self.url, keys = keys.len(), generation, "JWKS loaded");
                self.body_hash.store(hash, Ordering::Relaxed);
                self.keys.store(Some(Arc::new(KeySet { keys, generation })));
            }
            Err(e) => {
                tracing::warn!(url = %self.url, "the JWKS is unusable: {e}; the keys fetched before stay in use");
            }
        }
    }
}
