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

#[derive(Debug, Default)]
pub struct ConsumerIndex {
    consumers: Vec<Arc<Consumer>>,
    api_keys: HashMap<[u8; 32], KeyEntry>,
    jwt_subjects: HashMap<String, usize>,
}

/// The SHA-256 digest of an API key.
pub fn key_digest(key: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, key);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// A new random API key and its SHA-256 in hex (`gatehouse keygen`).
pub fn generate_key() -> Result<(String, String), String> {
    use base64::Engine;
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new().fill(&mut bytes).map_err(|_| "no randomness available".to_owned())?;
    let key = format!("gh_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes));
    let hash = hex_encode(&key_digest(key.as_bytes()));
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
                let kinds = [cred.api_key_sha256.is_some(), cred.api_key.is_some(), cred.jwt_subject.is_some()];
                if kinds.iter().filter(|k| **k).count() != 1 {
                    errors.push((path.clone(), "give exactly one of api_key_sha256, api_key or jwt_subject".into()));
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
                if let Some(subject) = &cred.jwt_subject {
                    if index.jwt_subjects.insert(subject.clone(), at).is_some() {
                        errors.push((format!("{path}.jwt_subject"), format!("\"{subject}\" already names a consumer")));
                    }
                }
            }
            index.consumers.push(Arc::new(Consumer {
                name: Arc::from(c.name.as_str()),
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
        let entry = self.api_keys.get(&key_digest(key)).ok_or(KeyRejection::Unknown)?;
        if entry.revoked {
            return Err(KeyRejection::Revoked);
        }
        if entry.expires.is_some_and(|t| SystemTime::now() >= t) {
            return Err(KeyRejection::Expired);
        }
        self.consumers.get(entry.consumer).ok_or(KeyRejection::Unknown)
    }

    pub fn by_jwt_subject(&self, value: &str) -> Option<&Arc<Consumer>> {
        self.jwt_subjects.get(value).and_then(|i| self.consumers.get(*i))
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
