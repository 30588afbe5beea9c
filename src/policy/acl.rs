//! `acl`: allow or deny by the consumer's groups (authorization, request policies phase).

use crate::config::AclConfig;
use crate::proxy::error::ProxyError;

use super::identity::Identity;

#[derive(Debug)]
pub struct AclPolicy {
    allow: Vec<String>,
    deny: Vec<String>,
}

impl AclPolicy {
    pub fn compile(config: &AclConfig) -> Result<AclPolicy, Vec<(String, String)>> {
        if config.allow.is_empty() && config.deny.is_empty() {
            return Err(vec![(String::new(), "give allow or deny groups".into())]);
        }
        Ok(AclPolicy { allow: config.allow.clone(), deny: config.deny.clone() })
    }

    pub fn check(&self, identity: Option<&Identity>) -> Result<(), ProxyError> {
        let Some(consumer) = identity.and_then(|i| i.consumer.as_ref()) else {
            return match identity {
                None => Err(ProxyError::unauthorized(None, "this route needs an authenticated consumer")),
                Some(_) => Err(ProxyError::Forbidden {
                    message: "the caller is not a known consumer".into(),
                    insufficient_scope: false,
                }),
            };
        };
        if self.deny.iter().any(|g| consumer.in_group(g)) {
            return Err(ProxyError::Forbidden {
                message: "the consumer's group is denied here".into(),
                insufficient_scope: false,
            });
        }
        if !self.allow.is_empty() && !self.allow.iter().any(|g| consumer.in_group(g)) {
            return Err(ProxyError::Forbidden {
                message: "the consumer is not in an allowed group".into(),
                insufficient_scope: false,
            });
        }
        Ok(())
    }
}
