//! `explain`: for one request, the verdict of every entry of the table, in precedence order.
//!
//! Not on the request path: it backs `gatehouse explain` and the admin API, so it walks all
//! entries linearly and allocates freely. It checks host, path, method, headers and query in that
//! order and reports the first that fails, so its winner is by construction the first entry that
//! matches everything, which is what `find` must return (the tests hold both to that).

use std::fmt;

use http::Method;

use super::RouteId;
use super::matcher::{header_values_text, query_values_text};
use super::params::Captures;
use super::{RequestView, RouteTable};

/// Why each entry did or did not win.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    /// The route and path pattern index `find` returns, if it returns a match.
    pub winner: Option<(RouteId, u16)>,
    /// Every entry, in precedence order.
    pub entries: Vec<EntryVerdict>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryVerdict {
    pub route: RouteId,
    pub host: Option<String>,
    pub pattern: String,
    pub rank: u32,
    pub verdict: Verdict,
    /// The params the path pattern captured, whenever the path matched.
    pub params: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Selected,
    /// Matched, but a higher-precedence entry won.
    Shadowed,
    HostMismatch,
    PathMismatch,
    MethodMismatch {
        allowed: Vec<Method>,
    },
    HeaderMismatch {
        name: String,
        expected: String,
        actual: Option<String>,
    },
    QueryMismatch {
        name: String,
        expected: String,
        actual: Option<String>,
    },
}

fn mismatch(
    f: &mut fmt::Formatter<'_>,
    what: &str,
    name: &str,
    expected: &str,
    actual: &Option<String>,
) -> fmt::Result {
    match actual {
        Some(actual) => write!(f, "{what} `{name}` should be {expected} but is `{actual}`"),
        None => write!(f, "{what} `{name}` should be {expected} but is missing"),
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Selected => f.write_str("selected"),
            Verdict::Shadowed => f.write_str("matches, but a route listed above it wins"),
            Verdict::HostMismatch => f.write_str("host does not match"),
            Verdict::PathMismatch => f.write_str("path does not match"),
            Verdict::MethodMismatch { allowed } => {
                f.write_str("method not allowed; allowed: ")?;
                for (i, method) in allowed.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    f.write_str(method.as_str())?;
                }
                Ok(())
            }
            Verdict::HeaderMismatch { name, expected, actual } => mismatch(f, "header", name, expected, actual),
            Verdict::QueryMismatch { name, expected, actual } => mismatch(f, "query parameter", name, expected, actual),
        }
    }
}

impl RouteTable {
    /// Every entry with its verdict for this request. Linear and allocating: for diagnostics only.
    pub fn explain(&self, req: &RequestView<'_>) -> Explanation {
        let mut winner = None;
        let mut entries = Vec::with_capacity(self.entries.len());
        let mut caps = Captures::default();
        let path_fits = u32::try_from(req.path.len()).is_ok();
        for (rank, entry) in self.entries.iter().enumerate() {
            let rank = rank as u32;
            let spec = &self.routes[entry.route as usize];
            let predicates = &self.predicates[entry.route as usize];
            let host = self.entry_host(rank);
            let pattern = self.entry_path(rank);
            let host_ok = host.is_none_or(|h| req.host.is_some_and(|actual| h.matches(actual)));
            let path_ok = host_ok && path_fits && pattern.capture(req.path, &mut caps);
            let mut params = Vec::new();
            let verdict = if !host_ok {
                Verdict::HostMismatch
            } else if !path_ok {
                Verdict::PathMismatch
            } else {
                for (slot, name) in pattern.param_names().enumerate() {
                    if let Some(value) = caps.get(slot).and_then(|(s, e)| req.path.get(s..e)) {
                        params.push((name.to_owned(), value.to_owned()));
                    }
                }
                if !predicates.method_ok(req.method) {
                    Verdict::MethodMismatch { allowed: spec.methods.clone().unwrap_or_default() }
                } else if let Some(i) = predicates.header_mismatch(req.headers) {
                    let matcher = &spec.headers[i];
                    Verdict::HeaderMismatch {
                        name: matcher.name.as_str().to_owned(),
                        expected: matcher.kind.to_string(),
                        actual: header_values_text(req.headers, &matcher.name),
                    }
                } else if let Some(i) = predicates.query_mismatch(req.query) {
                    let matcher = &spec.query[i];
                    Verdict::QueryMismatch {
                        name: matcher.name.clone(),
                        expected: matcher.kind.to_string(),
                        actual: query_values_text(req.query, &matcher.name),
                    }
                } else if winner.is_none() {
                    winner = Some((spec.id, entry.path));
                    Verdict::Selected
                } else {
                    Verdict::Shadowed
                }
            };
            entries.push(EntryVerdict {
                route: spec.id,
                host: host.map(|h| h.to_string()),
                pattern: pattern.as_str().to_owned(),
                rank,
                verdict,
                params,
            });
        }
        Explanation { winner, entries }
    }
}
