//! `basic_auth`: HTTP Basic authentication (RFC 7617) against the consumers' password hashes
//! (authentication, request policies phase).
//!
//! Password hashes are slow on purpose (argon2id, bcrypt: tens of milliseconds), so:
//! - checks run on the blocking thread pool, never on a worker's event loop, and at most one per
//!   CPU at a time across the process, so a flood of guesses cannot starve proxying;
//! - each worker remembers outcomes (by SHA-256 of user name and password, never the password):
//!   a correct password for 5 minutes, a wrong one for 30 seconds, both tied to the stored hash, so
//!   changing a password in the config invalidates them;
//! - an unknown user name is checked against another user's hash, so the answer takes as long as
//!   for a known one: timing does not reveal which user names exist.
//!
//! A revoked or expired credential is refused before any cache is consulted.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, OnceLock};

use base64::Engine;
use http::{HeaderMap, HeaderValue, header};
use tokio::sync::Semaphore;

use crate::config::BasicAuthConfig;
use crate::proxy::error::ProxyError;
use crate::transport::clock;

use super::cache::LocalCache;
use super::consumers::{ConsumerIndex, KeyRejection, MAX_PASSWORD_BYTES, PasswordHash};
use super::identity::Identity;

const REMEMBER_GOOD_MS: u64 = 5 * 60 * 1000;
const REMEMBER_BAD_MS: u64 = 30 * 1000;

thread_local! {
    /// Outcomes of password checks: true for a correct password.
    static CHECKED: std::cell::RefCell<LocalCache<bool>> = std::cell::RefCell::new(LocalCache::new(8192, &super::cache::BASIC_AUTH));
}

/// Password checks running at once, process-wide: one per CPU.
fn slots() -> &'static Semaphore {
    static SLOTS: OnceLock<Semaphore> = OnceLock::new();
    SLOTS.get_or_init(|| Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get())))
}

pub struct BasicAuthPolicy {
    challenge: HeaderValue,
    keep: bool,
    optional: bool,
    consumers: Arc<ConsumerIndex>,
}

impl BasicAuthPolicy {
    pub fn compile(
        config: &BasicAuthConfig,
        consumers: Arc<ConsumerIndex>,
    ) -> Result<BasicAuthPolicy, Vec<(String, String)>> {
        let mut errors = Vec::new();
        let realm = config.realm.as_deref().unwrap_or("gatehouse");
        let challenge = if realm.is_empty() || realm.chars().any(|c| c == '"' || c == '\\' || c.is_control()) {
            errors.push(("realm".to_owned(), "a realm is not empty and has no quotes, backslashes or controls".into()));
            None
        } else {
            HeaderValue::from_str(&format!("Basic realm=\"{realm}\", charset=\"UTF-8\"")).ok()
        };
        if !consumers.has_passwords() {
            errors.push((
                String::new(),
                "basic_auth needs consumers with username and password_hash credentials (top-level `consumers:`)"
                    .into(),
            ));
        }
        match challenge {
            Some(challenge) if errors.is_empty() => {
                Ok(BasicAuthPolicy { challenge, keep: config.keep_credentials, optional: config.optional, consumers })
            }
            _ => Err(errors),
        }
    }

    /// Whether the request presents Basic credentials (to choose between authentication policies).
    pub fn presented(&self, headers: &HeaderMap) -> bool {
        credentials_value(headers).is_some()
    }

    pub async fn authenticate(&self, headers: &mut HeaderMap) -> Result<Option<Identity>, ProxyError> {
        let Some(encoded) = credentials_value(headers) else {
            return if self.optional { Ok(None) } else { Err(self.refuse(None, "credentials are required")) };
        };
        let (user, password) = decode(encoded).ok_or_else(|| {
            self.refuse(Some("invalid_credentials"), "the credentials are not base64 of user:password")
        })?;
        let identity = self.check(&user, &password).await?;
        if !self.keep {
            headers.remove(header::AUTHORIZATION);
        }
        Ok(Some(identity))
    }

    async fn check(&self, user: &str, password: &[u8]) -> Result<Identity, ProxyError> {
        let wrong = || self.refuse(Some("invalid_credentials"), "the user name or password is wrong");
        let (hash, consumer) = match self.consumers.by_username(user) {
            Ok((entry, consumer)) => (entry.hash.clone(), Some(consumer.clone())),
            Err(KeyRejection::Revoked) => {
                return Err(self.refuse(Some("invalid_credentials"), "the credentials have been revoked"));
            }
            Err(KeyRejection::Expired) => {
                return Err(self.refuse(Some("invalid_credentials"), "the credentials have expired"));
            }
            Err(KeyRejection::Unknown) => match self.consumers.decoy_password_hash() {
                Some(decoy) => (decoy, None),
                None => return Err(wrong()),
            },
        };
        let scope = {
            let mut h = DefaultHasher::new();
            hash.as_str().hash(&mut h);
            h.finish()
        };
        let key = secret_key(user, password);
        let now = clock::now_ms();
        let known = CHECKED.with(|c| c.borrow().get(scope, 0, &key, now));
        let correct = match known {
            Some(correct) => correct,
            None => {
                let correct = verify_off_loop(hash, password.to_vec()).await?;
                let remember = if correct { REMEMBER_GOOD_MS } else { REMEMBER_BAD_MS };
                let expires = clock::tick().saturating_add(remember);
                CHECKED.with(|c| c.borrow_mut().put(scope, 0, &key, expires, correct));
                correct
            }
        };
        match consumer {
            Some(consumer) if correct => Ok(Identity::of_consumer(consumer)),
            _ => Err(wrong()),
        }
    }

    fn refuse(&self, error: Option<&'static str>, message: &str) -> ProxyError {
        ProxyError::unauthorized_with(self.challenge.clone(), error, message)
    }
}

/// The base64 part of `Authorization: Basic …` (the scheme is case-insensitive).
fn credentials_value(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("basic").then(|| rest.trim())
}

/// `base64(user:password)` → (user, password). The user name is UTF-8 without controls; the
/// password any bytes up to `MAX_PASSWORD_BYTES`.
fn decode(encoded: &str) -> Option<(String, Vec<u8>)> {
    if encoded.len() > MAX_PASSWORD_BYTES * 2 {
        return None;
    }
    let bytes = base64::engine::general_purpose::STANDARD.decode(encoded).ok()?;
    let colon = bytes.iter().position(|b| *b == b':')?;
    let user = std::str::from_utf8(&bytes[..colon]).ok()?;
    if user.is_empty() || user.chars().any(char::is_control) {
        return None;
    }
    let password = &bytes[colon + 1..];
    (password.len() <= MAX_PASSWORD_BYTES).then(|| (user.to_owned(), password.to_vec()))
}

/// What identifies a (user, password) pair in the cache: its SHA-256, never the password.
fn secret_key(user: &str, password: &[u8]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(user.as_bytes());
    ctx.update(&[0]);
    ctx.update(password);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// Runs the slow hash check on the blocking pool, one per CPU at a time.
async fn verify_off_loop(hash: Arc<PasswordHash>, password: Vec<u8>) -> Result<bool, ProxyError> {
    let unavailable = || ProxyError::AuthUnavailable("the password could not be checked".into());
    let _slot = slots().acquire().await.map_err(|_| unavailable())?;
    tokio::task::spawn_blocking(move || hash.verify(&password)).await.map_err(|_| unavailable())
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD;

    #[test]
    fn credentials_are_decoded_strictly() {
        assert_eq!(decode(&STANDARD.encode("alice:pa:ss")), Some(("alice".into(), b"pa:ss".to_vec())));
        assert_eq!(decode(&STANDARD.encode("alice:")), Some(("alice".into(), Vec::new())));
        assert_eq!(decode(&STANDARD.encode("no-colon")), None);
        assert_eq!(decode(&STANDARD.encode(":pw")), None, "empty user");
        assert_eq!(decode(&STANDARD.encode("a\u{1}b:pw")), None, "control in user");
        assert_eq!(decode(&STANDARD.encode(b"\xff\xfe:pw")), None, "user not UTF-8");
        assert_eq!(decode("!!!not base64"), None);
        assert_eq!(decode(&STANDARD.encode(format!("u:{}", "x".repeat(MAX_PASSWORD_BYTES + 1)))), None);
    }

    #[test]
    fn the_scheme_is_case_insensitive_and_must_be_basic() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("bAsIc  dTpw "));
        assert_eq!(credentials_value(&h), Some("dTpw"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer dTpw"));
        assert_eq!(credentials_value(&h), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic"));
        assert_eq!(credentials_value(&h), None);
    }

    #[test]
    fn hashes_verify_and_costs_are_bounded() {
        let argon = PasswordHash::parse(&super::super::consumers::hash_password(b"s3cret").unwrap()).unwrap();
        assert!(argon.verify(b"s3cret"));
        assert!(!argon.verify(b"s3cret "));
        let bcrypt = PasswordHash::parse(&bcrypt::hash("s3cret", 4).unwrap()).unwrap();
        assert!(bcrypt.verify(b"s3cret"));
        assert!(!bcrypt.verify(b"S3cret"));
        // bcrypt only uses 72 bytes: a longer password is refused, not truncated into a match.
        let long = "a".repeat(72);
        let truncated = PasswordHash::parse(&bcrypt::hash(&long, 4).unwrap()).unwrap();
        assert!(truncated.verify(long.as_bytes()));
        assert!(!truncated.verify(format!("{long}anything").as_bytes()));

        assert!(PasswordHash::parse("$2b$15$abcdefghijklmnopqrstuuABCDEFGHIJKLMNOPQRSTUVWXYZ01234").is_err());
        let huge = "$argon2id$v=19$m=4194304,t=2,p=1$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG";
        assert!(PasswordHash::parse(huge).unwrap_err().contains("above"));
        assert!(PasswordHash::parse("plaintext").is_err());
        assert!(PasswordHash::parse("$2b$04$short").is_err());
        assert!(PasswordHash::parse("{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=").is_err());
    }
}
