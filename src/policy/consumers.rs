//! Consumers: the known callers (applications, partners) with their groups, plan and credentials.
//!
//! Built once per snapshot from `consumers:`; authentication policies (`api_key`, and `jwt` with a
//! `consumer_claim`) attach the consumer they recognise to the request's identity, where `acl`,
//! the access log and the upstream headers find it. API keys are kept only as SHA-256 digests.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::SystemTime;

use http::{HeaderName, HeaderValue};

use crate::config::ConsumerConfig;
use crate::text::{hex_decode, hex_encode};

pub static CONSUMER_NAME: HeaderName = HeaderName::from_static("x-consumer-name");
pub static CONSUMER_GROUPS: HeaderName = HeaderName::from_static("x-consumer-groups");

#[derive(Debug)]
pub struct Consumer {
    pub name: Arc<str>,
    /// Its place in the config's `consumers` list, from 0.
    pub position: usize,
    pub groups: Vec<Arc<str>>,
    pub plan: Option<Arc<str>>,
    pub metadata: BTreeMap<String, String>,
    /// Pre-built upstream header values.
    pub name_value: HeaderValue,
    pub groups_value: Option<HeaderValue>,
}

impl Consumer {
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| &**g == group)
    }
}

/// Whose a credential is, and whether it may still be used.
#[derive(Debug, Clone, Copy)]
struct KeyEntry {
    consumer: usize,
    expires: Option<SystemTime>,
    revoked: bool,
}

/// Why a presented API key does not identify anyone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRejection {
    Unknown,
    Expired,
    Revoked,
}

/// A user name's password hash, checked at load: a known scheme with bounded cost.
#[derive(Debug)]
pub struct PasswordEntry {
    owner: KeyEntry,
    pub hash: Arc<PasswordHash>,
}

/// A key id's HMAC secret.
pub struct HmacEntry {
    owner: KeyEntry,
    pub secret: Box<[u8]>,
}

impl std::fmt::Debug for HmacEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HmacEntry").field("consumer", &self.owner.consumer).finish_non_exhaustive()
    }
}

/// HMAC secrets shorter than this are refused: they could be guessed from one signature.
const MIN_HMAC_SECRET_BYTES: usize = 16;

#[derive(Debug, Default)]
pub struct ConsumerIndex {
    consumers: Vec<Arc<Consumer>>,
    api_keys: HashMap<[u8; 32], KeyEntry>,
    jwt_subjects: HashMap<String, usize>,
    passwords: HashMap<String, PasswordEntry>,
    hmac_keys: HashMap<String, HmacEntry>,
}

/// A stored password hash. Costs are bounded at load, so a config cannot make one check take
/// seconds or gigabytes.
#[derive(Debug)]
pub enum PasswordHash {
    Bcrypt(String),
    Argon2(String),
}

/// bcrypt cost 14 takes about a second on one core; more would be a denial of service.
const MAX_BCRYPT_COST: u32 = 14;
/// Argon2 memory per check, in KiB (256 MiB).
const MAX_ARGON2_MEMORY_KIB: u32 = 256 * 1024;
const MAX_ARGON2_PASSES: u32 = 16;
/// Longest password accepted (bcrypt cannot use more than 72 bytes; longer ones are refused rather
/// than silently truncated).
pub const MAX_PASSWORD_BYTES: usize = 1024;

impl PasswordHash {
    pub fn parse(text: &str) -> Result<PasswordHash, String> {
        if text.starts_with("$2a$") || text.starts_with("$2b$") || text.starts_with("$2y$") {
            let parts: bcrypt::HashParts = text.parse().map_err(|e| format!("not a bcrypt hash: {e}"))?;
            if parts.get_cost() > MAX_BCRYPT_COST {
                return Err(format!("bcrypt cost {} is above {MAX_BCRYPT_COST}", parts.get_cost()));
            }
            Ok(PasswordHash::Bcrypt(text.to_owned()))
        } else if text.starts_with("$argon2") {
            let parsed = argon2::password_hash::phc::PasswordHash::new(text)
                .map_err(|e| format!("not an argon2 hash (PHC string): {e}"))?;
            let params = argon2::Params::try_from(&parsed).map_err(|e| format!("bad argon2 parameters: {e}"))?;
            if params.m_cost() > MAX_ARGON2_MEMORY_KIB || params.t_cost() > MAX_ARGON2_PASSES {
                return Err(format!(
                    "argon2 parameters m={} t={} are above m={MAX_ARGON2_MEMORY_KIB} t={MAX_ARGON2_PASSES}",
                    params.m_cost(),
                    params.t_cost()
                ));
            }
            Ok(PasswordHash::Argon2(text.to_owned()))
        } else {
            Err("use an argon2id hash (`gatehouse hash-password`) or a bcrypt hash ($2b$…)".into())
        }
    }

    /// Checks a password (slow on purpose: call it off the event loop).
    pub fn verify(&self, password: &[u8]) -> bool {
        match self {
            // bcrypt reads at most 72 bytes: a longer password would match on its first 72.
            PasswordHash::Bcrypt(hash) => password.len() <= 72 && bcrypt::verify(password, hash).unwrap_or(false),
            PasswordHash::Argon2(hash) => {
                use argon2::password_hash::PasswordVerifier;
                argon2::password_hash::phc::PasswordHash::new(hash)
                    .is_ok_and(|parsed| argon2::Argon2::default().verify_password(password, &parsed).is_ok())
            }
        }
    }

    /// The text as configured (identifies the hash in caches).
    pub fn as_str(&self) -> &str {
        match self {
            PasswordHash::Bcrypt(h) | PasswordHash::Argon2(h) => h,
        }
    }
}

/// An argon2id hash of `password` with OWASP's recommended parameters (19 MiB, 2 passes), for
/// `gatehouse hash-password`.
pub fn hash_password(password: &[u8]) -> Result<String, String> {
    use argon2::password_hash::PasswordHasher;
    let params = argon2::Params::new(19 * 1024, 2, 1, None).map_err(|e| e.to_string())?;
    let argon2 = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    argon2.hash_password(password).map(|h| h.to_string()).map_err(|e| e.to_string())
}

/// The SHA-256 digest of an API key.
pub fn key_digest(key: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, key);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// An API key's SHA-256 in hex, as `api_key_sha256` holds it.
pub fn key_hex(key: &str) -> String {
    hex_encode(&key_digest(key.as_bytes()))
}

/// A new random API key and its SHA-256 in hex (`gatehouse keygen`).
pub fn generate_key() -> Result<(String, String), String> {
    use base64::Engine;
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new().fill(&mut bytes).map_err(|_| "no randomness available".to_owned())?;
    let key = format!("gh_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes));
    let hash = key_hex(&key);
    Ok((key, hash))
}

impl ConsumerIndex {
    /// Builds the index; errors are (YAML path, message) pairs.
    pub fn compile(configs: &[ConsumerConfig]) -> Result<ConsumerIndex, Vec<(String, String)>> {
        let mut errors = Vec::new();
        let mut index = ConsumerIndex::default();
        let mut names = HashMap::new();
        for (i, c) in configs.iter().enumerate() {
            let base = format!("consumers[{i}]");
            if c.name.is_empty() || c.name.len() > 128 || c.name.chars().any(|ch| ch.is_control()) {
                errors.push((format!("{base}.name"), "a consumer name is 1-128 printable characters".into()));
            }
            if let Some(first) = names.insert(c.name.clone(), i) {
                errors.push((
                    format!("{base}.name"),
                    format!("consumer \"{}\" is already defined at consumers[{first}]", c.name),
                ));
            }
            let name_value = HeaderValue::from_str(&c.name).unwrap_or_else(|_| {
                errors.push((format!("{base}.name"), "the name must be usable as a header value".into()));
                HeaderValue::from_static("invalid")
            });
            let groups_value =
                (!c.groups.is_empty()).then(|| HeaderValue::from_str(&c.groups.join(",")).ok()).flatten();
            if !c.groups.is_empty() && groups_value.is_none() {
                errors.push((format!("{base}.groups"), "group names must be usable as a header value".into()));
            }
            let at = index.consumers.len();
            for (j, cred) in c.credentials.iter().enumerate() {
                let path = format!("{base}.credentials[{j}]");
                let kinds = [
                    cred.api_key_sha256.is_some(),
                    cred.api_key.is_some(),
                    cred.jwt_subject.is_some(),
                    cred.username.is_some() || cred.password_hash.is_some(),
                ];
                if kinds.iter().filter(|k| **k).count() != 1 {
                    errors.push((
                        path.clone(),
                        "give exactly one of api_key_sha256, api_key, jwt_subject or username with password_hash"
                            .into(),
                    ));
                    continue;
                }
                let expires = match &cred.expires {
                    Some(text) => match humantime::parse_rfc3339_weak(text) {
                        Ok(t) => Some(t),
                        Err(_) => {
                            errors.push((
                                format!("{path}.expires"),
                                format!("\"{text}\" is not a time such as 2027-01-01T00:00:00Z"),
                            ));
                            None
                        }
                    },
                    None => None,
                };
                let entry = KeyEntry { consumer: at, expires, revoked: cred.revoked };
                let digest = match (&cred.api_key_sha256, &cred.api_key) {
                    (Some(hex), _) => match hex_decode(hex).and_then(|b| <[u8; 32]>::try_from(b).ok()) {
                        Some(d) => Some(d),
                        None => {
                            errors.push((
                                format!("{path}.api_key_sha256"),
                                "not a SHA-256 digest (64 hex digits)".into(),
                            ));
                            None
                        }
                    },
                    (None, Some(key)) => {
                        if key.len() < 16 {
                            errors.push((format!("{path}.api_key"), "an API key needs at least 16 characters".into()));
                        }
                        Some(key_digest(key.as_bytes()))
                    }
                    (None, None) => None,
                };
                if let Some(digest) = digest {
                    if index.api_keys.insert(digest, entry).is_some() {
                        errors.push((path.clone(), "this API key already belongs to a consumer".into()));
                    }
                }
                match (&cred.username, &cred.password_hash, &cred.secret) {
                    (Some(_), Some(_), Some(_)) => {
                        errors.push((
                            path.clone(),
                            "give either password_hash (basic_auth) or secret (hmac_auth)".into(),
                        ));
                    }
                    (Some(user), None, Some(secret)) => {
                        if secret.len() < MIN_HMAC_SECRET_BYTES {
                            errors.push((
                                format!("{path}.secret"),
                                format!("an HMAC secret needs at least {MIN_HMAC_SECRET_BYTES} bytes"),
                            ));
                        }
                        let hmac = HmacEntry { owner: entry, secret: secret.as_bytes().into() };
                        if index.hmac_keys.insert(user.clone(), hmac).is_some() {
                            errors.push((
                                format!("{path}.username"),
                                format!("HMAC key id \"{user}\" already belongs to a consumer"),
                            ));
                        }
                    }
                    (Some(user), Some(hash), None) => match PasswordHash::parse(hash) {
                        Ok(hash) => {
                            let entry = PasswordEntry { owner: entry, hash: Arc::new(hash) };
                            if index.passwords.insert(user.clone(), entry).is_some() {
                                errors.push((
                                    format!("{path}.username"),
                                    format!("user name \"{user}\" already belongs to a consumer"),
                                ));
                            }
                        }
                        Err(e) => errors.push((format!("{path}.password_hash"), e)),
                    },
                    (Some(_), None, None) => {
                        errors.push((path.clone(), "a username needs a password_hash or a secret".into()))
                    }
                    (None, Some(_), _) => errors.push((path.clone(), "a password_hash needs a username".into())),
                    (None, None, Some(_)) => {
                        errors.push((path.clone(), "a secret needs a username (its key id)".into()))
                    }
                    (None, None, None) => {}
                }
                if let Some(subject) = &cred.jwt_subject {
                    if index.jwt_subjects.insert(subject.clone(), at).is_some() {
                        errors.push((format!("{path}.jwt_subject"), format!("\"{subject}\" already names a consumer")));
                    }
                }
            }
            index.consumers.push(Arc::new(Consumer {
                name: Arc::from(c.name.as_str()),
                position: index.consumers.len(),
                groups: c.groups.iter().map(|g| Arc::from(g.as_str())).collect(),
                plan: c.plan.as_deref().map(Arc::from),
                metadata: c.metadata.clone(),
                name_value,
                groups_value,
            }));
        }
        if errors.is_empty() { Ok(index) } else { Err(errors) }
    }

    pub fn is_empty(&self) -> bool {
        self.consumers.is_empty()
    }

    /// The consumer owning this API key.
    pub fn by_api_key(&self, key: &[u8]) -> Result<&Arc<Consumer>, KeyRejection> {
        // Looking up the digest of the key, never the key: timing reveals nothing about stored keys.
        self.owner(self.api_keys.get(&key_digest(key)))
    }

    /// The password entry of a user name, and its consumer, if the credential is usable now.
    pub fn by_username(&self, user: &str) -> Result<(&PasswordEntry, &Arc<Consumer>), KeyRejection> {
        let entry = self.passwords.get(user).ok_or(KeyRejection::Unknown)?;
        Ok((entry, self.owner(Some(&entry.owner))?))
    }

    /// The HMAC secret of a key id, and its consumer, if the credential is usable now.
    pub fn by_hmac_key(&self, key_id: &str) -> Result<(&HmacEntry, &Arc<Consumer>), KeyRejection> {
        let entry = self.hmac_keys.get(key_id).ok_or(KeyRejection::Unknown)?;
        Ok((entry, self.owner(Some(&entry.owner))?))
    }

    /// The consumer a credential belongs to, if it is known and usable now.
    fn owner(&self, entry: Option<&KeyEntry>) -> Result<&Arc<Consumer>, KeyRejection> {
        let entry = entry.ok_or(KeyRejection::Unknown)?;
        if entry.revoked {
            return Err(KeyRejection::Revoked);
        }
        if entry.expires.is_some_and(|t| SystemTime::now() >= t) {
            return Err(KeyRejection::Expired);
        }
        self.consumers.get(entry.consumer).ok_or(KeyRejection::Unknown)
    }

    pub fn has_hmac_keys(&self) -> bool {
        !self.hmac_keys.is_empty()
    }

    /// A password hash to check against when the user name is unknown, so that answering takes
    /// as long as for a known name (no user enumeration by timing).
    pub fn decoy_password_hash(&self) -> Option<Arc<PasswordHash>> {
        self.passwords.values().next().map(|e| e.hash.clone())
    }

    pub fn has_passwords(&self) -> bool {
        !self.passwords.is_empty()
    }

    pub fn by_jwt_subject(&self, value: &str) -> Option<&Arc<Consumer>> {
        self.jwt_subjects.get(value).and_then(|i| self.consumers.get(*i))
    }

    pub fn by_name(&self, name: &str) -> Option<&Arc<Consumer>> {
        self.consumers.iter().find(|c| &*c.name == name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.consumers.iter().map(|c| &*c.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CredentialConfig;

    fn consumer(name: &str, creds: Vec<CredentialConfig>) -> ConsumerConfig {
        ConsumerConfig {
            name: name.into(),
            groups: vec!["partners".into()],
            plan: Some("pro".into()),
            metadata: BTreeMap::new(),
            credentials: creds,
        }
    }

    #[test]
    fn keys_by_digest_with_expiry_and_revocation() {
        let (key, hash) = generate_key().unwrap();
        assert!(key.starts_with("gh_") && hash.len() == 64);
        let index = ConsumerIndex::compile(&[
            consumer("a", vec![CredentialConfig { api_key_sha256: Some(hash.to_uppercase()), ..Default::default() }]),
            consumer(
                "b",
                vec![CredentialConfig { api_key: Some("plain-key-0123456789".into()), ..Default::default() }],
            ),
            consumer(
                "c",
                vec![
                    CredentialConfig {
                        api_key: Some("expired-key-0123456789".into()),
                        expires: Some("2020-01-01T00:00:00Z".into()),
                        ..Default::default()
                    },
                    CredentialConfig {
                        api_key: Some("revoked-key-0123456789".into()),
                        revoked: true,
                        ..Default::default()
                    },
                    CredentialConfig { jwt_subject: Some("svc-c".into()), ..Default::default() },
                ],
            ),
        ])
        .unwrap();
        assert_eq!(&*index.by_api_key(key.as_bytes()).unwrap().name, "a");
        assert_eq!(&*index.by_api_key(b"plain-key-0123456789").unwrap().name, "b");
        assert_eq!(index.by_api_key(b"expired-key-0123456789").unwrap_err(), KeyRejection::Expired);
        assert_eq!(index.by_api_key(b"revoked-key-0123456789").unwrap_err(), KeyRejection::Revoked);
        assert_eq!(index.by_api_key(b"nope").unwrap_err(), KeyRejection::Unknown);
        assert_eq!(&*index.by_jwt_subject("svc-c").unwrap().name, "c");
    }

    #[test]
    fn mistakes_are_reported() {
        let errors = ConsumerIndex::compile(&[
            consumer("dup", vec![CredentialConfig::default()]),
            consumer("dup", vec![CredentialConfig { api_key_sha256: Some("xyz".into()), ..Default::default() }]),
            consumer(
                "short",
                vec![CredentialConfig {
                    api_key: Some("short".into()),
                    expires: Some("soon".into()),
                    ..Default::default()
                }],
            ),
        ])
        .unwrap_err();
        let paths: Vec<&str> = errors.iter().map(|(p, _)| p.as_str()).collect();
        assert!(paths.contains(&"consumers[0].credentials[0]"), "{errors:?}");
        assert!(paths.contains(&"consumers[1].name"), "{errors:?}");
        assert!(paths.contains(&"consumers[1].credentials[0].api_key_sha256"), "{errors:?}");
        assert!(paths.contains(&"consumers[2].credentials[0].api_key"), "{errors:?}");
        assert!(paths.contains(&"consumers[2].credentials[0].expires"), "{errors:?}");
    }
}
