//! Tests of the route table as a whole: lookups, precedence, 405, explain, and the randomized
//! comparison of the index against a linear reference. Nothing here is on the request path.
//!
//! Pattern-level, matcher-level and rewrite tests live next to their code; this module holds
//! the shared builders they use too.

mod lookup;
mod precedence;
mod random;

use std::sync::{Arc, LazyLock};

use http::{HeaderMap, Method};

use super::{PathPattern, RequestView, RouteSpec, RouteTable};

static GET: Method = Method::GET;
static NO_HEADERS: LazyLock<HeaderMap> = LazyLock::new(HeaderMap::new);

/// `regex:` selects the regex form, as in displayed patterns.
pub(crate) fn pattern(s: &str) -> PathPattern {
    match s.strip_prefix("regex:") {
        Some(re) => PathPattern::regex(re).unwrap(),
        None => PathPattern::parse(s).unwrap(),
    }
}

/// A route matching any host, method, header and query on `paths`.
pub(crate) fn route(id: u32, name: &str, paths: &[&str]) -> RouteSpec {
    RouteSpec {
        id,
        name: Arc::from(name),
        priority: 0,
        hosts: Vec::new(),
        paths: paths.iter().map(|p| pattern(p)).collect(),
        methods: None,
        headers: Vec::new(),
        query: Vec::new(),
    }
}

pub(crate) fn table(routes: Vec<RouteSpec>) -> RouteTable {
    RouteTable::build(routes)
}

/// A GET without host, query or headers.
pub(crate) fn get(path: &str) -> RequestView<'_> {
    RequestView { method: &GET, host: None, path, query: None, headers: &NO_HEADERS }
}
