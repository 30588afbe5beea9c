//! `authorize`: what the authenticated caller must have — roles, scopes, claim values (request
//! policies phase, right after authentication).

use crate::config::AuthorizeConfig;
use crate::proxy::error::ProxyError;

use super::identity::Identity;

#[derive(Debug)]
pub struct AuthorizePolicy {
    roles: Vec<String>,
    roles_claim: String,
    scopes: Vec<String>,
    claims: Vec<(String, String)>,
}

impl AuthorizePolicy {
    pub fn compile(config: &AuthorizeConfig) -> Result<AuthorizePolicy, Vec<(String, String)>> {
        if config.roles.is_empty() && config.scopes.is_empty() && config.claims.is_empty() {
            return Err(vec![(String::new(), "require at least one of roles, scopes or claims".into())]);
        }
        Ok(AuthorizePolicy {
            roles: config.roles.clone(),
            roles_claim: config.roles_claim.clone().unwrap_or_else(|| "roles".into()),
            scopes: config.scopes.clone(),
            claims: config.claims.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        })
    }

    /// Allows the request, or says why not: 401 without an identity, 403 with the wrong one.
    pub fn check(&self, identity: Option<&Identity>) -> Result<(), ProxyError> {
        let Some(identity) = identity else {
            return Err(ProxyError::unauthorized(None, "this route needs an authenticated caller"));
        };
        if !self.roles.is_empty() {
            let has = identity.claim_values(&self.roles_claim);
            if !self.roles.iter().any(|r| has.contains(&r.as_str())) {
                return Err(ProxyError::Forbidden {
                    message: format!("one of the roles {} is required", self.roles.join(", ")),
                    insufficient_scope: false,
                });
            }
        }
        if !self.scopes.is_empty() {
            let mut granted = identity.claim_values("scope");
            granted.extend(identity.claim_values("scp"));
            if let Some(missing) = self.scopes.iter().find(|s| !granted.contains(&s.as_str())) {
                return Err(ProxyError::Forbidden {
                    message: format!("the scope {missing} is required"),
                    insufficient_scope: true,
                });
            }
        }
        for (claim, value) in &self.claims {
            if !identity.claim_has(claim, value) {
                return Err(ProxyError::Forbidden {
                    message: format!("the claim {claim} does not have the required value"),
                    insufficient_scope: false,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(v: serde_json::Value) -> Identity {
        Identity::of_claims(v.as_object().cloned().unwrap())
    }

    fn policy(roles: &[&str], scopes: &[&str], claims: &[(&str, &str)]) -> AuthorizePolicy {
        AuthorizePolicy::compile(&AuthorizeConfig {
            roles: roles.iter().map(|s| s.to_string()).collect(),
            roles_claim: None,
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            claims: claims.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        })
        .unwrap()
    }

    #[test]
    fn roles_scopes_and_claims() {
        let alice =
            identity(serde_json::json!({"sub": "alice", "roles": ["user"], "scope": "tasks:read", "tenant": "acme"}));
        let admin = identity(
            serde_json::json!({"sub": "admin", "roles": ["user", "admin"], "scp": ["tasks:read", "tasks:write"]}),
        );
        let need_admin = policy(&["admin"], &[], &[]);
        assert!(need_admin.check(Some(&admin)).is_ok());
        assert_eq!(need_admin.check(Some(&alice)).unwrap_err().status(), 403);
        assert_eq!(need_admin.check(None).unwrap_err().status(), 401);
        let need_write = policy(&[], &["tasks:read", "tasks:write"], &[]);
        assert!(need_write.check(Some(&admin)).is_ok());
        assert_eq!(need_write.check(Some(&alice)).unwrap_err().status(), 403);
        let need_acme = policy(&[], &[], &[("tenant", "acme")]);
        assert!(need_acme.check(Some(&alice)).is_ok());
        assert!(need_acme.check(Some(&admin)).is_err());
        assert!(AuthorizePolicy::compile(&AuthorizeConfig::default()).is_err());
    }
}
