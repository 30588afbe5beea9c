//! `request_headers` / `response_headers`: set, add and remove headers (request filter phase and
//! response filter phase).
//!
//! Names and values are parsed once at compile time; applying a filter clones pre-built values
//! (a reference count), never parses or allocates strings.

use std::collections::BTreeMap;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::config::HeaderFilterConfig;

#[derive(Debug, Default)]
pub struct HeaderFilter {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
}

impl HeaderFilter {
    /// Builds the filter; on error returns (field path suffix, message) pairs.
    pub fn compile(config: &HeaderFilterConfig) -> Result<HeaderFilter, Vec<(String, String)>> {
        let mut errors = Vec::new();
        let mut pairs = |map: &BTreeMap<String, String>, field: &str| -> Vec<(HeaderName, HeaderValue)> {
            let mut out = Vec::new();
            for (name, value) in map {
                match (parse_name(name), HeaderValue::from_str(value)) {
                    (Ok(n), Ok(v)) => out.push((n, v)),
                    (Err(e), _) => errors.push((format!("{field}.{name}"), e)),
                    (_, Err(_)) => errors.push((
                        format!("{field}.{name}"),
                        "header value must be visible ASCII or spaces (no control characters)".to_owned(),
                    )),
                }
            }
            out
        };
        let set = pairs(&config.set, "set");
        let add = pairs(&config.add, "add");
        let mut remove = Vec::new();
        for (i, name) in config.remove.iter().enumerate() {
            match parse_name(name) {
                Ok(n) => remove.push(n),
                Err(e) => errors.push((format!("remove[{i}]"), e)),
            }
        }
        if errors.is_empty() { Ok(HeaderFilter { remove, set, add }) } else { Err(errors) }
    }

    /// Remove, then set, then add: so `remove: [x]` plus `add: {x: …}` yields exactly the added value.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }
}

pub fn parse_name(name: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("invalid header name \"{name}\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remove_then_set_then_add() {
        let config = HeaderFilterConfig {
            set: [("x-set".to_owned(), "new".to_owned())].into(),
            add: [("x-add".to_owned(), "two".to_owned())].into(),
            remove: vec!["x-gone".into(), "x-add".into()],
        };
        let filter = HeaderFilter::compile(&config).unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("x-set", HeaderValue::from_static("old"));
        headers.append("x-set", HeaderValue::from_static("older"));
        headers.insert("x-gone", HeaderValue::from_static("1"));
        headers.insert("x-add", HeaderValue::from_static("one"));
        filter.apply(&mut headers);
        assert_eq!(headers.get_all("x-set").iter().collect::<Vec<_>>(), vec!["new"]);
        assert!(headers.get("x-gone").is_none());
        assert_eq!(headers.get_all("x-add").iter().collect::<Vec<_>>(), vec!["two"]);
    }

    #[test]
    fn bad_names_and_values_are_reported_with_their_field() {
        let config = HeaderFilterConfig {
            set: [("bad name".to_owned(), "v".to_owned()), ("x-ok".to_owned(), "line\nbreak".to_owned())].into(),
            add: BTreeMap::new(),
            remove: vec!["(".into()],
        };
        let errors = HeaderFilter::compile(&config).unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, vec!["set.bad name", "set.x-ok", "remove[0]"]);
    }
}
