//! Routing: which route answers a request. Owns path and host patterns, header and query
//! matchers, the precedence order, the lookup index, `explain` diagnostics and path rewrites.
//!
//! On the request path this comes right after path normalisation (percent-decoding of
//! unreserved characters, dot segments removed, `//` merged) and before upstream selection:
//! `RouteTable::find` takes a `RequestView` and returns the winning route and its params. It is
//! pure, synchronous and does no I/O. A lookup allocates nothing unless a regex route matches
//! (or a pattern has more than eight params), and its cost does not grow with the number of
//! routes. The rest of this header is user documentation.
//!
//! # Path patterns
//!
//! | pattern | matches | does not match |
//! |---|---|---|
//! | `/users` | `/users` | `/users/`, `/users/42`, `/usersX` |
//! | `/users/` | `/users/` | `/users` |
//! | `/users/**` | `/users`, `/users/`, `/users/42/x` | `/usersX` |
//! | `/users/{id}` | `/users/42` (`id` = `42`) | `/users`, `/users/`, `/users/42/x` |
//! | `/users/*/orders` | `/users/42/orders` | `/users/orders` |
//! | `/files/{*rest}` | `/files` (`rest` = empty), `/files/a/b.txt` (`rest` = `a/b.txt`) | `/filesX` |
//! | `/api/{version}/**` | `/api/v1`, `/api/v1/users` | `/api`, `/api/` |
//! | `/` | `/` only | anything longer |
//! | `/**` | every path | |
//!
//! - A pattern starts with `/` and is split into segments at each `/`.
//! - `{name}` matches exactly one non-empty segment and captures it. Names are
//!   `[A-Za-z_][A-Za-z0-9_]*` and unique within a pattern. A param must be a whole segment:
//!   `/users/{id}.json` is an error.
//! - `*` matches one non-empty segment without capturing it.
//! - `**` (anonymous) and `{*name}` (captured) match any remainder, including nothing, and must
//!   be the last segment. `/files/**` matches `/files` itself; the captured remainder has no
//!   leading `/`.
//! - A trailing slash is significant: `/users/` matches only `/users/`, and a request for
//!   `/users/` does not match `/users`.
//! - Everything else is literal text, compared byte for byte with the normalised path (so it is
//!   case-sensitive). `//`, `?`, `#` and whitespace are rejected because a normalised path
//!   never contains them.
//! - A regex path pattern is matched against the whole normalised path: it is anchored as
//!   `^(?:...)$`, and its named groups become params. It is displayed as `regex:^...$`.
//! - The query string is never part of the path; match it with query matchers.
//! - A request target that does not start with `/` (`OPTIONS *`) is refused before routing.
//!
//! # Hosts, methods, headers, query
//!
//! A route matches when one of its host patterns, one of its path patterns, its method list,
//! every header matcher and every query matcher match.
//!
//! - Hosts: `example.com` matches exactly that host; `*.example.com` matches `a.example.com`
//!   and `a.b.example.com` but not `example.com`. Hosts are lowercase and have no port; an IPv6
//!   address is written in brackets, `[::1]`. A route without hosts matches any host; a request
//!   without a host matches only such routes.
//! - Methods: none listed means any method.
//! - Headers: `exact` compares the value bytes, `prefix` the leading bytes, `regex` the whole
//!   value as UTF-8 (a value that is not UTF-8 never matches), `present` / `absent` look at the
//!   name only. When a header has several values, one matching value is enough; `absent` means
//!   no value at all.
//! - Query parameters: the same, by name, after form-urlencoded decoding (`+` is a space, `%XX`
//!   a byte; `flag` without `=` has the value "").
//! - If no route matches but some route matched everything except the method, the answer is
//!   405 with an `Allow` list of the methods of all such routes.
//!
//! # Precedence
//!
//! Each (route, host pattern, path pattern) combination is an *entry*. When several entries
//! match a request, the one first in this order wins; each rule only breaks ties left by the
//! rules before it.
//!
//! 1. Higher `priority` first (default 0). Priority overrides everything below: a priority-10
//!    `/**` beats a priority-0 exact `/x`.
//! 2. Host: an exact host, then wildcards with more labels after the `*`
//!    (`*.b.example.com` before `*.example.com`), then entries without a host.
//! 3. Path, first by class:
//!    - class a: patterns with at least one literal segment (the root `/` and a trailing slash
//!      count as literal), such as `/users/{id}` or `/x/**`;
//!    - class b: regexes;
//!    - class c: patterns with no literal segment at all, such as `/**`, `/{tenant}/**`,
//!      `/{*rest}` or `/{a}/{b}`, so a regex beats the catch-all fallback.
//!
//!    Within classes a and c, the segments are compared from the left and the first difference
//!    decides: a literal beats a param or `*`, which beats a tail (`**` or `{*name}`). Where one
//!    pattern ends, ending exactly beats a tail. Then more literal text wins. Two regexes are not
//!    compared by their text; they go on to rules 4 and 5. Examples, winner first:
//!    - `/users/{id}` over `/users/**` for `/users/42`;
//!    - `/a/b/**` over `/a/**` for `/a/b/c`;
//!    - `/a/b/**` over `/a/{x}/c` for `/a/b/c` (the second segment decides);
//!    - `/a/{x}` over `/a/{x}/**` for `/a/1`;
//!    - `/users` over `/users/**` for `/users`;
//!    - `regex:^/.*$` over `/**` and over `/{tenant}/**`, but `/x/**` over the regex.
//! 4. A route that lists methods beats one that does not; then more header matchers beat fewer;
//!    then more query matchers beat fewer.
//! 5. Declaration order: the route declared first (lower id) wins; within one route, its earlier
//!    host and path patterns.
//!
//! `gatehouse routes` lists entries in exactly this order, and `RouteTable::explain` reports for
//! each entry why it did or did not win.

pub mod describe;
mod explain;
mod host;
mod matcher;
mod params;
mod pattern;
mod precedence;
mod rewrite;
mod table;
mod trie;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use http::{HeaderMap, Method};

pub use explain::{EntryVerdict, Explanation, Verdict};
pub use host::HostPattern;
pub use matcher::{HeaderMatcher, QueryMatcher, ValueMatch};
pub use params::RouteMatch;
pub use pattern::{PathPattern, PatternError};
pub use rewrite::{PathRewrite, RewriteTemplate, validate_rewrite};
pub use table::RouteTable;

/// Index of a route in its snapshot's route list, which is also its declaration order.
pub type RouteId = u32;

/// One route as the config compiler hands it to the table.
#[derive(Debug, Clone)]
pub struct RouteSpec {
    pub id: RouteId,
    pub name: Arc<str>,
    /// Higher wins, before any other rule. Default 0.
    pub priority: i32,
    /// Empty: any host.
    pub hosts: Vec<HostPattern>,
    /// At least one.
    pub paths: Vec<PathPattern>,
    /// `None`: any method.
    pub methods: Option<Vec<Method>>,
    pub headers: Vec<HeaderMatcher>,
    pub query: Vec<QueryMatcher>,
}

/// The parts of a request that routing looks at, already normalised by the caller.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    pub method: &'a Method,
    /// Lowercase, without port.
    pub host: Option<&'a str>,
    /// Normalised: starts with `/`, no dot segments, no `//`.
    pub path: &'a str,
    /// The raw query string without `?`; only parsed if a candidate route has query matchers.
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

/// The outcome of a lookup.
#[derive(Debug, Clone)]
pub enum Lookup {
    Matched(RouteMatch),
    /// Some route matched everything but the method. `allow` is sorted and deduplicated.
    MethodNotAllowed {
        allow: Vec<Method>,
    },
    NotFound,
}

/// One entry of the table, as listed by `gatehouse routes`.
#[derive(Debug, Clone, Copy)]
pub struct EntryInfo<'a> {
    pub route: RouteId,
    pub name: &'a str,
    pub priority: i32,
    pub host: Option<&'a HostPattern>,
    pub pattern: &'a PathPattern,
    /// Index of `pattern` in the route's `paths`, as in `RouteMatch::pattern`.
    pub pattern_index: u16,
    pub methods: Option<&'a [Method]>,
    pub headers: usize,
    pub query: usize,
    /// Position in precedence order, 0 first.
    pub rank: u32,
}
