//! Host patterns: parsing `example.com` / `*.example.com` and matching them against the request
//! host, which the caller has already lowercased and stripped of its port.
//!
//! On the request path the table does not call `matches` per route: it looks the host up in
//! hash maps keyed by these patterns (see `table.rs`). `matches` is the reference used by
//! `explain` and the tests.

use std::fmt;

use super::pattern::PatternError;

/// Which hosts a route answers for. Stored lowercase.
///
/// `Wildcard { suffix: ".example.com" }` (written `*.example.com`) matches `a.example.com` and
/// `a.b.example.com`, but not `example.com` itself.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    Exact(String),
    Wildcard { suffix: String },
}

fn check_label(label: &str, original: &str) -> Result<(), PatternError> {
    if label.is_empty() {
        return Err(PatternError::new(format!("empty label in host pattern `{original}`")));
    }
    if label.contains('*') {
        return Err(PatternError::new(format!(
            "`*` in host pattern `{original}` is only allowed as the whole first label, as in \
             `*.example.com`"
        )));
    }
    if let Some(c) = label.chars().find(|&c| !(c.is_ascii_alphanumeric() || c == '-' || c == '_')) {
        return Err(PatternError::new(format!(
            "host pattern `{original}` contains {c:?}; a host name has only letters, digits, `-` \
             and `_` between its dots"
        )));
    }
    Ok(())
}

fn is_ipv6_literal(s: &str) -> bool {
    s.strip_prefix('[').and_then(|rest| rest.strip_suffix(']')).is_some_and(|inner| {
        inner.contains(':') && inner.chars().all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
    })
}

impl HostPattern {
    /// Validates and lowercases a host pattern: no port, no empty labels, `*` only as the whole
    /// first label. A bracketed IPv6 literal is accepted as an exact host.
    pub fn parse(s: &str) -> Result<HostPattern, PatternError> {
        if s.is_empty() {
            return Err(PatternError::new("empty host pattern; leave `match.host` out to match any host"));
        }
        if !s.is_ascii() {
            return Err(PatternError::new(format!(
                "host pattern `{s}` is not ASCII: write internationalised names in their punycode \
                 (`xn--`) form"
            )));
        }
        let lower = s.to_ascii_lowercase();
        if is_ipv6_literal(&lower) {
            return Ok(HostPattern::Exact(lower));
        }
        if lower.contains(':') {
            return Err(PatternError::new(format!(
                "host pattern `{s}` must not include a port: hosts are matched without one"
            )));
        }
        if lower == "*" {
            return Err(PatternError::new("host pattern `*` would match every host; leave `match.host` out instead"));
        }
        match lower.strip_prefix("*.") {
            Some(rest) => {
                rest.split('.').try_for_each(|label| check_label(label, s))?;
                Ok(HostPattern::Wildcard { suffix: format!(".{rest}") })
            }
            None => {
                lower.split('.').try_for_each(|label| check_label(label, s))?;
                Ok(HostPattern::Exact(lower))
            }
        }
    }

    /// Whether `host` (lowercase, no port) is one this pattern answers for.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(exact) => exact == host,
            HostPattern::Wildcard { .. } => {
                let labels = self.wildcard_key().unwrap_or_default();
                host.len() > labels.len() + 1
                    && host.ends_with(labels)
                    && host.as_bytes().get(host.len() - labels.len() - 1) == Some(&b'.')
            }
        }
    }

    /// The labels after `*.`, tolerating a suffix built by hand without its leading dot; the table
    /// indexes wildcards by this so that it agrees with `matches`.
    pub(crate) fn wildcard_key(&self) -> Option<&str> {
        match self {
            HostPattern::Exact(_) => None,
            HostPattern::Wildcard { suffix } => Some(suffix.strip_prefix('.').unwrap_or(suffix)),
        }
    }

    /// Labels after the `*`, which orders wildcards among themselves (more is more specific).
    pub(crate) fn suffix_labels(&self) -> usize {
        match self {
            HostPattern::Exact(_) => 0,
            HostPattern::Wildcard { .. } => self.wildcard_key().map_or(0, |labels| labels.matches('.').count() + 1),
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(host) => f.write_str(host),
            HostPattern::Wildcard { .. } => {
                write!(f, "*.{}", self.wildcard_key().unwrap_or_default())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(s: &str) -> String {
        HostPattern::parse(s).unwrap_err().to_string()
    }

    #[test]
    fn parses_and_lowercases() {
        assert_eq!(HostPattern::parse("API.Example.com").unwrap(), HostPattern::Exact("api.example.com".into()));
        assert_eq!(
            HostPattern::parse("*.Example.COM").unwrap(),
            HostPattern::Wildcard { suffix: ".example.com".into() }
        );
        assert_eq!(HostPattern::parse("*.example.com").unwrap().to_string(), "*.example.com");
        assert_eq!(HostPattern::parse("localhost").unwrap(), HostPattern::Exact("localhost".into()));
        assert_eq!(HostPattern::parse("10.0.0.1").unwrap(), HostPattern::Exact("10.0.0.1".into()));
        assert_eq!(HostPattern::parse("[::1]").unwrap(), HostPattern::Exact("[::1]".into()));
        assert_eq!(HostPattern::parse("*.com").unwrap().suffix_labels(), 1);
        assert_eq!(HostPattern::parse("*.b.example.com").unwrap().suffix_labels(), 3);
    }

    #[test]
    fn parse_errors() {
        assert!(err("").contains("empty host pattern"));
        assert!(err("example.com:8080").contains("must not include a port"));
        assert!(err("[::1]:443").contains("must not include a port"));
        assert!(err("a..b").contains("empty label"));
        assert!(err(".example.com").contains("empty label"));
        assert!(err("example.com.").contains("empty label"));
        assert!(err("*.").contains("empty label"));
        assert!(err("*").contains("every host"));
        assert!(err("a.*.com").contains("whole first label"));
        assert!(err("*a.example.com").contains("whole first label"));
        assert!(err("*.*.example.com").contains("whole first label"));
        assert!(err("exa mple.com").contains("contains ' '"));
        assert!(err("exa/mple.com").contains("contains '/'"));
        assert!(err("bücher.de").contains("punycode"));
    }

    #[test]
    fn matching() {
        let exact = HostPattern::parse("example.com").unwrap();
        assert!(exact.matches("example.com"));
        assert!(!exact.matches("a.example.com"));
        assert!(!exact.matches("example.co"));
        let wild = HostPattern::parse("*.example.com").unwrap();
        assert!(wild.matches("a.example.com"));
        assert!(wild.matches("a.b.example.com"));
        assert!(!wild.matches("example.com"));
        assert!(!wild.matches(".example.com"));
        assert!(!wild.matches("aexample.com"));
        assert!(!wild.matches("a.example.com.evil"));
        let by_hand = HostPattern::Wildcard { suffix: "example.com".into() };
        assert!(by_hand.matches("a.example.com"));
        assert!(!by_hand.matches("aexample.com"));
    }
}
