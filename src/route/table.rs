//! The route table: built once per config snapshot, then shared read-only by every request.
//!
//! `find` is the router step of the request path (after path normalisation, before upstream
//! selection). The host picks a few groups through hash maps, each group's segment trie and
//! regex set offer the entries whose path matches, and method, header and query predicates run
//! only on entries whose rank could still beat the best one found. The winner is then re-matched
//! to record its params. Nothing here allocates except where the regex crate must (a regex entry
//! that matches) and the `Allow` list of a 405.

use std::fmt;

use http::Method;
use regex::RegexSet;

use super::host::HostPattern;
use super::matcher::Predicates;
use super::params::{Params, RouteMatch};
use super::pattern::{PathPattern, Shape};
use super::precedence::EntryKey;
use super::trie::{KeyMap, Trie, TrieBuilder, Visitor};
use super::{EntryInfo, Lookup, RequestView, RouteId, RouteSpec};

/// One (route, host pattern, path pattern) combination. Its index in `RouteTable::entries` is
/// its precedence rank.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Entry {
    /// Position in `RouteTable::routes`, not the route id.
    pub(crate) route: u32,
    pub(crate) host: Option<u16>,
    pub(crate) path: u16,
}

#[derive(Debug)]
struct RegexGroup {
    /// `None` only if the combined set failed to compile (size limits); each regex is then run
    /// on its own, which is slower but gives the same answers.
    set: Option<RegexSet>,
    ranks: Box<[u32]>,
    best: u32,
}

/// All entries sharing one host pattern (or having none).
#[derive(Debug)]
struct Group {
    trie: Trie,
    regexes: RegexGroup,
}

#[derive(Default)]
struct GroupBuilder {
    trie: TrieBuilder,
    regex_ranks: Vec<u32>,
    regex_sources: Vec<String>,
}

impl GroupBuilder {
    fn finish(self) -> Group {
        let set = if self.regex_sources.is_empty() { None } else { RegexSet::new(&self.regex_sources).ok() };
        Group {
            trie: self.trie.finish(),
            regexes: RegexGroup {
                set,
                best: self.regex_ranks.first().copied().unwrap_or(u32::MAX),
                ranks: self.regex_ranks.into(),
            },
        }
    }
}

impl Group {
    fn walk(&self, table: &RouteTable, path: &str, visitor: &mut impl Visitor) {
        if !self.trie.is_empty() {
            self.trie.walk(path, visitor);
        }
        let regexes = &self.regexes;
        if regexes.best >= visitor.bound() {
            return;
        }
        match &regexes.set {
            Some(set) => {
                // `is_match` does not allocate; most requests stop here.
                if !set.is_match(path) {
                    return;
                }
                for index in set.matches(path).iter() {
                    let rank = regexes.ranks[index];
                    if rank >= visitor.bound() {
                        break;
                    }
                    visitor.visit(rank);
                }
            }
            None => {
                for &rank in regexes.ranks.iter() {
                    if rank >= visitor.bound() {
                        break;
                    }
                    if table.entry_path(rank).matches(path) {
                        visitor.visit(rank);
                    }
                }
            }
        }
    }
}

/// The compiled routes of one config snapshot. See the module docs for matching and precedence.
pub struct RouteTable {
    /// Sorted by id.
    pub(crate) routes: Box<[RouteSpec]>,
    pub(crate) predicates: Box<[Predicates]>,
    /// In precedence order: index = rank.
    pub(crate) entries: Box<[Entry]>,
    exact_hosts: KeyMap<Group>,
    /// Keyed by the suffix with its leading dot, e.g. `.example.com`.
    wildcard_hosts: KeyMap<Group>,
    /// Bit `n` is set when some wildcard suffix has `n` labels (see `label_bit`).
    wildcard_labels: u64,
    any_host: Group,
}

/// Label counts of 63 and more share the last bit, which only costs a wasted probe.
fn label_bit(labels: usize) -> u64 {
    1 << labels.min(63)
}

impl fmt::Debug for RouteTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteTable")
            .field("routes", &self.routes.len())
            .field("entries", &self.entries.len())
            .field("exact_hosts", &self.exact_hosts.len())
            .field("wildcard_hosts", &self.wildcard_hosts.len())
            .finish_non_exhaustive()
    }
}

/// Finds the best entry whose predicates all hold.
struct Best<'t, 'r> {
    table: &'t RouteTable,
    req: &'t RequestView<'r>,
    best: u32,
    /// Set when a host-and-path match failed its method check. A miss without it cannot be a
    /// 405, so the second walk that builds the `Allow` list is skipped.
    method_missed: bool,
}

impl Visitor for Best<'_, '_> {
    #[inline]
    fn bound(&self) -> u32 {
        self.best
    }

    #[inline]
    fn visit(&mut self, rank: u32) {
        if rank >= self.best {
            return;
        }
        let predicates = self.table.entry_predicates(rank);
        if !predicates.method_ok(self.req.method) {
            self.method_missed = true;
        } else if predicates.matches_except_method(self.req) {
            self.best = rank;
        }
    }
}

/// Collects the methods of every route that matches everything but the method.
struct Allowed<'t, 'r> {
    table: &'t RouteTable,
    req: &'t RequestView<'r>,
    allow: Vec<Method>,
}

impl Visitor for Allowed<'_, '_> {
    fn bound(&self) -> u32 {
        u32::MAX
    }

    fn visit(&mut self, rank: u32) {
        let route = self.table.entries[rank as usize].route as usize;
        let predicates = &self.table.predicates[route];
        if predicates.restricts_methods()
            && !predicates.method_ok(self.req.method)
            && predicates.matches_except_method(self.req)
        {
            let methods = self.table.routes[route].methods.as_deref().unwrap_or_default();
            self.allow.extend(methods.iter().cloned());
        }
    }
}

impl RouteTable {
    /// Compiles the routes. Never fails: specs arrive validated and their patterns parsed.
    ///
    /// A route's paths beyond the 65,536th and hosts beyond the 65,536th are ignored, since a
    /// match reports the path as a `u16`; the config compiler rejects such routes long before.
    pub fn build(mut routes: Vec<RouteSpec>) -> RouteTable {
        routes.sort_by_key(|r| r.id);
        let predicates: Box<[Predicates]> = routes.iter().map(Predicates::compile).collect();

        let mut keys = Vec::new();
        for (position, spec) in routes.iter().enumerate() {
            let hosts: Vec<Option<(usize, &HostPattern)>> = if spec.hosts.is_empty() {
                vec![None]
            } else {
                spec.hosts.iter().enumerate().take(usize::from(u16::MAX) + 1).map(Some).collect()
            };
            for host in hosts {
                for (path_index, path) in spec.paths.iter().enumerate().take(usize::from(u16::MAX) + 1) {
                    let key = EntryKey {
                        priority: spec.priority,
                        host: host.map(|(_, h)| h),
                        path,
                        has_methods: spec.methods.is_some(),
                        headers: spec.headers.len(),
                        query: spec.query.len(),
                        route: spec.id,
                        host_index: host.map_or(0, |(i, _)| i),
                        path_index,
                    };
                    keys.push((position, host.is_some(), key));
                }
            }
        }
        keys.sort_by(|a, b| a.2.cmp(&b.2));
        let entries: Box<[Entry]> = keys
            .iter()
            .map(|(position, has_host, key)| Entry {
                route: *position as u32,
                host: has_host.then_some(key.host_index as u16),
                path: key.path_index as u16,
            })
            .collect();

        let mut exact: KeyMap<GroupBuilder> = KeyMap::default();
        let mut wildcard: KeyMap<GroupBuilder> = KeyMap::default();
        let mut any = GroupBuilder::default();
        for (rank, entry) in entries.iter().enumerate() {
            let spec = &routes[entry.route as usize];
            let group = match entry.host.map(|h| &spec.hosts[usize::from(h)]) {
                None => &mut any,
                Some(HostPattern::Exact(host)) => exact.entry(host.as_str().into()).or_default(),
                Some(pattern @ HostPattern::Wildcard { .. }) => {
                    let labels = pattern.wildcard_key().unwrap_or_default();
                    wildcard.entry(format!(".{labels}").into()).or_default()
                }
            };
            let rank = rank as u32;
            match spec.paths[usize::from(entry.path)].shape() {
                Shape::Segments { segments, tail } => group.trie.insert(segments, *tail, rank),
                Shape::Regex { regex, .. } => {
                    group.regex_ranks.push(rank);
                    group.regex_sources.push(regex.as_str().to_owned());
                }
            }
        }

        let wildcard_labels = wildcard.keys().fold(0, |bits, suffix| bits | label_bit(suffix.matches('.').count()));
        RouteTable {
            wildcard_labels,
            routes: routes.into(),
            predicates,
            entries,
            exact_hosts: exact.into_iter().map(|(k, g)| (k, g.finish())).collect(),
            wildcard_hosts: wildcard.into_iter().map(|(k, g)| (k, g.finish())).collect(),
            any_host: any.finish(),
        }
    }

    /// The best route for a request: the highest-precedence entry whose host, path, method,
    /// headers and query all match. Without one, `MethodNotAllowed` if some route failed only on
    /// the method, else `NotFound`.
    pub fn find(&self, req: &RequestView<'_>) -> Lookup {
        // Captures are stored as u32 offsets; no real request line comes near this.
        if u32::try_from(req.path.len()).is_err() {
            return Lookup::NotFound;
        }
        let mut best = Best { table: self, req, best: u32::MAX, method_missed: false };
        self.walk(req, &mut best);
        if best.best == u32::MAX {
            // Nothing was pruned (the bound never dropped), so every host and path match was
            // seen and the flag is reliable.
            return if best.method_missed { self.method_not_allowed(req) } else { Lookup::NotFound };
        }
        Lookup::Matched(self.route_match(best.best, req.path))
    }

    /// Offers every entry whose host and path match to the visitor, best groups first.
    fn walk(&self, req: &RequestView<'_>, visitor: &mut impl Visitor) {
        if let Some(host) = req.host {
            if !self.exact_hosts.is_empty() {
                if let Some(group) = self.exact_hosts.get(host) {
                    group.walk(self, req.path, visitor);
                }
            }
            if !self.wildcard_hosts.is_empty() {
                // Each dot after the first label starts a suffix a wildcard could be keyed by;
                // left to right is most labels first, matching the precedence of wildcards.
                // Suffixes with a label count no wildcard has are not worth hashing.
                let mut labels_after = host.bytes().filter(|&b| b == b'.').count();
                for (at, byte) in host.bytes().enumerate() {
                    if byte != b'.' {
                        continue;
                    }
                    let probe = at > 0 && self.wildcard_labels & label_bit(labels_after) != 0;
                    labels_after -= 1;
                    if !probe {
                        continue;
                    }
                    if let Some(group) = self.wildcard_hosts.get(&host[at..]) {
                        group.walk(self, req.path, visitor);
                    }
                }
            }
        }
        self.any_host.walk(self, req.path, visitor);
    }

    #[cold]
    fn method_not_allowed(&self, req: &RequestView<'_>) -> Lookup {
        let mut allowed = Allowed { table: self, req, allow: Vec::new() };
        self.walk(req, &mut allowed);
        let mut allow = allowed.allow;
        if allow.is_empty() {
            return Lookup::NotFound;
        }
        allow.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        allow.dedup();
        Lookup::MethodNotAllowed { allow }
    }

    pub(crate) fn route_match(&self, rank: u32, path: &str) -> RouteMatch {
        let entry = self.entries[rank as usize];
        let spec = &self.routes[entry.route as usize];
        let pattern = &spec.paths[usize::from(entry.path)];
        let mut params = Params::default();
        if pattern.captures_anything() {
            pattern.capture(path, &mut params.caps);
            if !pattern.names().is_empty() {
                params.names = Some(pattern.names().clone());
            }
        }
        RouteMatch { route: spec.id, pattern: entry.path, params }
    }

    fn entry_predicates(&self, rank: u32) -> &Predicates {
        &self.predicates[self.entries[rank as usize].route as usize]
    }

    pub(crate) fn entry_path(&self, rank: u32) -> &PathPattern {
        let entry = self.entries[rank as usize];
        &self.routes[entry.route as usize].paths[usize::from(entry.path)]
    }

    pub(crate) fn entry_host(&self, rank: u32) -> Option<&HostPattern> {
        let entry = self.entries[rank as usize];
        entry.host.map(|h| &self.routes[entry.route as usize].hosts[usize::from(h)])
    }

    /// Every entry in precedence order, for `gatehouse routes`.
    pub fn entries(&self) -> impl Iterator<Item = EntryInfo<'_>> {
        self.entries.iter().enumerate().map(|(rank, entry)| {
            let spec = &self.routes[entry.route as usize];
            EntryInfo {
                route: spec.id,
                name: &spec.name,
                priority: spec.priority,
                host: entry.host.map(|h| &spec.hosts[usize::from(h)]),
                pattern: &spec.paths[usize::from(entry.path)],
                pattern_index: entry.path,
                methods: spec.methods.as_deref(),
                headers: spec.headers.len(),
                query: spec.query.len(),
                rank: rank as u32,
            }
        })
    }

    /// The route with this id.
    ///
    /// # Panics
    /// If no route in the table has this id: ids come from this table's own matches.
    pub fn spec(&self, id: RouteId) -> &RouteSpec {
        match self.get(id) {
            Some(spec) => spec,
            None => panic!("route id {id} is not in this table"),
        }
    }

    /// The route with this id, if any.
    pub fn get(&self, id: RouteId) -> Option<&RouteSpec> {
        // Ids are normally the dense declaration index; fall back to a search otherwise.
        match self.routes.get(id as usize) {
            Some(spec) if spec.id == id => Some(spec),
            _ => self.routes.binary_search_by_key(&id, |r| r.id).ok().map(|i| &self.routes[i]),
        }
    }

    /// All routes, ordered by id.
    pub fn routes(&self) -> &[RouteSpec] {
        &self.routes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::tests::{get, route, table};

    fn outcome(t: &RouteTable, path: &str) -> Option<(RouteId, u16)> {
        match t.find(&get(path)) {
            Lookup::Matched(m) => Some((m.route, m.pattern)),
            _ => None,
        }
    }

    #[test]
    fn regexes_without_a_combined_set_give_the_same_answers() {
        let specs = || {
            vec![
                route(0, "a", &[r"regex:/a/\d+", "/a/b"]),
                route(1, "b", &["regex:/a/.*"]),
                route(2, "c", &["regex:/(b|c)"]),
                route(3, "d", &["/**"]),
            ]
        };
        let with_set = table(specs());
        let mut without = table(specs());
        assert!(without.any_host.regexes.set.is_some());
        without.any_host.regexes.set = None;
        for path in ["/a/1", "/a/b", "/a/x", "/b", "/c", "/d", "/"] {
            assert_eq!(outcome(&with_set, path), outcome(&without, path), "{path}");
        }
        assert_eq!(outcome(&without, "/a/1"), Some((0, 0)));
        assert_eq!(outcome(&without, "/a/x"), Some((1, 0)));
    }

    #[test]
    fn the_table_can_be_shared_across_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<RouteTable>();
        shareable::<Lookup>();
    }

    #[test]
    fn wildcard_probes_skip_label_counts_no_pattern_has() {
        let mut spec = route(0, "w", &["/"]);
        spec.hosts = vec![HostPattern::parse("*.b.example.com").unwrap()];
        let t = table(vec![spec]);
        assert_eq!(t.wildcard_labels, label_bit(3));
        for (host, hit) in [("a.b.example.com", true), ("x.a.b.example.com", true), ("b.example.com", false)] {
            let req = RequestView { host: Some(host), ..get("/") };
            assert_eq!(matches!(t.find(&req), Lookup::Matched(_)), hit, "{host}");
        }
    }
}
