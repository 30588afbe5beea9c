//! `api_key`: the caller presents a key that belongs to a consumer (authentication, request
//! policies phase). The key is read from a header or query parameter, looked up by its SHA-256,
//! and removed from the request before it goes upstream unless `keep_key` is set.

use std::sync::Arc;

use http::{HeaderMap, HeaderName};

use crate::config::{ApiKeyConfig, KeySourceConfig};
use crate::proxy::error::ProxyError;

use super::consumers::{ConsumerIndex, KeyRejection};
use super::identity::Identity;
use super::token::QueryEdit;

enum Source {
    Header(HeaderName),
    Query(String),
}

pub struct ApiKeyPolicy {
    sources: Vec<Source>,
    keep: bool,
    optional: bool,
    consumers: Arc<ConsumerIndex>,
}

/// Longest key accepted (longer ones are refused before hashing).
const MAX_KEY_BYTES: usize = 512;

impl ApiKeyPolicy {
    pub fn compile(
        config: &ApiKeyConfig,
        consumers: Arc<ConsumerIndex>,
    ) -> Result<ApiKeyPolicy, Vec<(String, String)>> {
        let mut errors = Vec::new();
        let mut sources = Vec::new();
        for (i, s) in config.key_from.iter().enumerate() {
            match s {
                KeySourceConfig::Header(name) => match HeaderName::from_bytes(name.as_bytes()) {
                    Ok(h) => sources.push(Source::Header(h)),
                    Err(_) => {
                        errors.push((format!("key_from[{i}].header"), format!("\"{name}\" is not a header name")))
                    }
                },
                KeySourceConfig::Query(name) => sources.push(Source::Query(name.clone())),
            }
        }
        if sources.is_empty() {
            sources.push(Source::Header(HeaderName::from_static("x-api-key")));
        }
        if consumers.is_empty() {
            errors.push((
                String::new(),
                "api_key needs consumers with api_key credentials (top-level `consumers:`)".into(),
            ));
        }
        if errors.is_empty() {
            Ok(ApiKeyPolicy { sources, keep: config.keep_key, optional: config.optional, consumers })
        } else {
            Err(errors)
        }
    }

    fn find<'a>(&self, headers: &'a HeaderMap, query: Option<&'a str>) -> Option<(&'a [u8], &Source)> {
        for source in &self.sources {
            match source {
                Source::Header(name) => {
                    if let Some(v) = headers.get(name).filter(|v| !v.is_empty()) {
                        return Some((v.as_bytes(), source));
                    }
                }
                Source::Query(name) => {
                    if let Some(key) = crate::text::query_param(query?, name) {
                        return Some((key.as_bytes(), source));
                    }
                }
            }
        }
        None
    }

    /// Whether the request presents a key at all (to choose between authentication policies).
    pub fn presented(&self, headers: &HeaderMap, query: Option<&str>) -> bool {
        self.find(headers, query).is_some()
    }

    pub fn authenticate(
        &self,
        headers: &mut HeaderMap,
        query: Option<&str>,
        edit: &mut QueryEdit,
    ) -> Result<Option<Identity>, ProxyError> {
        let Some((key, source)) = self.find(headers, query) else {
            return if self.optional {
                Ok(None)
            } else {
                Err(ProxyError::unauthorized(None, "an API key is required"))
            };
        };
        if key.len() > MAX_KEY_BYTES {
            return Err(ProxyError::unauthorized(Some("invalid_key"), "the API key is not valid"));
        }
        let consumer = match self.consumers.by_api_key(key) {
            Ok(c) => c.clone(),
            Err(KeyRejection::Expired) => {
                return Err(ProxyError::unauthorized(Some("invalid_key"), "the API key has expired"));
            }
            Err(KeyRejection::Revoked) => {
                return Err(ProxyError::unauthorized(Some("invalid_key"), "the API key has been revoked"));
            }
            Err(KeyRejection::Unknown) => {
                return Err(ProxyError::unauthorized(Some("invalid_key"), "the API key is not valid"));
            }
        };
        if !self.keep {
            match source {
                Source::Header(name) => {
                    let name = name.clone();
                    headers.remove(&name);
                }
                Source::Query(name) => {
                    edit.query = Some(crate::text::query_without(query.unwrap_or_default(), name));
                }
            }
        }
        Ok(Some(Identity::of_consumer(consumer)))
    }
}
