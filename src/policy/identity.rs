//! `Identity`: who the caller is, as established by an authentication policy (request policies
//! phase), for authorization policies and for the headers sent upstream.

use std::sync::{Arc, OnceLock};

use http::HeaderValue;
use serde_json::{Map, Value};

use super::consumers::Consumer;

/// Who the caller is: the claims of a verified token (none for an API key), and the consumer
/// recognised, if any.
#[derive(Debug, Clone)]
pub struct Identity {
    pub claims: Arc<Map<String, Value>>,
    pub consumer: Option<Arc<Consumer>>,
}

impl Identity {
    pub fn of_claims(claims: Map<String, Value>) -> Identity {
        Identity { claims: Arc::new(claims), consumer: None }
    }

    /// A consumer recognised without claims (by an API key).
    pub fn of_consumer(consumer: Arc<Consumer>) -> Identity {
        static NO_CLAIMS: OnceLock<Arc<Map<String, Value>>> = OnceLock::new();
        Identity { claims: NO_CLAIMS.get_or_init(|| Arc::new(Map::new())).clone(), consumer: Some(consumer) }
    }

    pub fn subject(&self) -> Option<&str> {
        self.claims.get("sub").and_then(Value::as_str)
    }

    pub fn claim(&self, name: &str) -> Option<&Value> {
        self.claims.get(name)
    }

    /// A claim read as a list of strings: a JSON array of strings, or one string of values separated
    /// by spaces or commas (OAuth `scope` is space-separated).
    pub fn claim_values(&self, name: &str) -> Vec<&str> {
        match self.claims.get(name) {
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
            Some(Value::String(s)) => s.split([' ', ',']).filter(|v| !v.is_empty()).collect(),
            _ => Vec::new(),
        }
    }

    /// Whether the claim equals `value`, or (for a list) contains it.
    pub fn claim_has(&self, name: &str, value: &str) -> bool {
        match self.claims.get(name) {
            Some(Value::String(s)) => s == value,
            Some(Value::Array(items)) => items.iter().any(|i| i.as_str() == Some(value)),
            Some(Value::Number(n)) => n.to_string() == value,
            Some(Value::Bool(b)) => b.to_string() == value,
            _ => false,
        }
    }
}

/// A claim as a header value: strings as they are, lists joined with commas, anything else as
/// compact JSON. `None` when the value cannot be a header (control characters): such a claim is
/// not forwarded rather than mangled.
pub fn claim_header_value(value: &Value) -> Option<HeaderValue> {
    let text = match value {
        Value::Null => return None,
        Value::String(s) => s.clone(),
        Value::Array(items) => {
            let parts: Vec<String> = items
                .iter()
                .map(|i| match i {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect();
            parts.join(",")
        }
        other => other.to_string(),
    };
    HeaderValue::from_str(&text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn identity(v: Value) -> Identity {
        Identity::of_claims(v.as_object().cloned().unwrap())
    }

    #[test]
    fn claims_read_as_lists_and_values() {
        let id = identity(
            json!({"sub": "alice", "roles": ["user", "admin"], "scope": "read write", "level": 3, "odd": "a,b"}),
        );
        assert_eq!(id.subject(), Some("alice"));
        assert_eq!(id.claim_values("roles"), vec!["user", "admin"]);
        assert_eq!(id.claim_values("scope"), vec!["read", "write"]);
        assert_eq!(id.claim_values("odd"), vec!["a", "b"]);
        assert!(id.claim_has("roles", "admin") && !id.claim_has("roles", "root"));
        assert!(id.claim_has("level", "3"));
        assert!(id.claim_values("missing").is_empty());
    }

    #[test]
    fn claims_become_header_values_or_nothing() {
        assert_eq!(claim_header_value(&json!("alice")).unwrap(), "alice");
        assert_eq!(claim_header_value(&json!(["user", "admin"])).unwrap(), "user,admin");
        assert_eq!(claim_header_value(&json!(42)).unwrap(), "42");
        assert_eq!(claim_header_value(&json!({"a": 1})).unwrap(), "{\"a\":1}");
        assert!(claim_header_value(&json!("evil\r\nX-Admin: yes")).is_none(), "no header injection");
        assert!(claim_header_value(&Value::Null).is_none());
    }
}
