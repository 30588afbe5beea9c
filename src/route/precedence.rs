//! The precedence order of table entries (rules in the `route` module docs). It is computed once,
//! when the table is built: every entry gets its position in this order as a `u32` rank, and the
//! lookup compares ranks only. `gatehouse routes` lists entries in this order.

use std::cmp::{Ordering, Reverse};

use super::RouteId;
use super::host::HostPattern;
use super::pattern::{PathPattern, Segment, Shape, Tail};

/// Everything that decides where one (route, host, path) entry stands. `Ordering::Less` means
/// "takes precedence": sorting ascending puts the winner first.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EntryKey<'a> {
    pub(crate) priority: i32,
    pub(crate) host: Option<&'a HostPattern>,
    pub(crate) path: &'a PathPattern,
    pub(crate) has_methods: bool,
    pub(crate) headers: usize,
    pub(crate) query: usize,
    pub(crate) route: RouteId,
    /// Positions inside the route; only here so that the order is total.
    pub(crate) host_index: usize,
    pub(crate) path_index: usize,
}

/// Exact hosts, then wildcards with more labels, then entries without a host.
fn host_rank(host: Option<&HostPattern>) -> (u8, Reverse<usize>) {
    match host {
        Some(HostPattern::Exact(_)) => (0, Reverse(0)),
        Some(wildcard @ HostPattern::Wildcard { .. }) => (1, Reverse(wildcard.suffix_labels())),
        None => (2, Reverse(0)),
    }
}

/// What a pattern requires at one segment position. Declared best-first. `End` and
/// `Literal`/`Param` never match the same path at the same position, so their relative order
/// only affects listing (a shorter exact pattern is listed before its extensions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Token {
    End,
    Literal,
    Param,
    Tail,
}

/// Segment patterns with a literal segment (the root and a trailing slash count) come first,
/// regexes second, and patterns made only of params and tails last.
fn path_class(path: &PathPattern) -> u8 {
    match path.shape() {
        Shape::Segments { segments, .. } => {
            if segments.iter().any(|s| matches!(s, Segment::Literal(_))) {
                0
            } else {
                2
            }
        }
        Shape::Regex { .. } => 1,
    }
}

fn tokens(segments: &[Segment], tail: Tail) -> impl Iterator<Item = Token> + '_ {
    let end = if tail == Tail::None { Token::End } else { Token::Tail };
    segments
        .iter()
        .map(|s| match s {
            Segment::Literal(_) => Token::Literal,
            Segment::Param(_) | Segment::Any => Token::Param,
        })
        .chain(std::iter::once(end))
}

fn literal_len(segments: &[Segment]) -> usize {
    segments
        .iter()
        .map(|s| match s {
            Segment::Literal(text) => text.len(),
            Segment::Param(_) | Segment::Any => 0,
        })
        .sum()
}

/// Rule 3 on its own. Two regexes compare equal here, leaving them to rules 4 and 5.
pub(crate) fn compare_paths(a: &PathPattern, b: &PathPattern) -> Ordering {
    path_class(a).cmp(&path_class(b)).then_with(|| match (a.shape(), b.shape()) {
        (Shape::Segments { segments: sa, tail: ta }, Shape::Segments { segments: sb, tail: tb }) => {
            tokens(sa, *ta).cmp(tokens(sb, *tb)).then_with(|| literal_len(sb).cmp(&literal_len(sa)))
        }
        _ => Ordering::Equal,
    })
}

impl Ord for EntryKey<'_> {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .priority
            .cmp(&self.priority)
            .then_with(|| host_rank(self.host).cmp(&host_rank(other.host)))
            .then_with(|| compare_paths(self.path, other.path))
            .then_with(|| other.has_methods.cmp(&self.has_methods))
            .then_with(|| other.headers.cmp(&self.headers))
            .then_with(|| other.query.cmp(&self.query))
            .then_with(|| self.route.cmp(&other.route))
            .then_with(|| self.host_index.cmp(&other.host_index))
            .then_with(|| self.path_index.cmp(&other.path_index))
    }
}

impl PartialOrd for EntryKey<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for EntryKey<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for EntryKey<'_> {}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PathPattern {
        match s.strip_prefix("regex:") {
            Some(re) => PathPattern::regex(re).unwrap(),
            None => PathPattern::parse(s).unwrap(),
        }
    }

    /// Asserts `a` strictly precedes `b` on the path rule alone.
    fn before(a: &str, b: &str) {
        assert_eq!(compare_paths(&p(a), &p(b)), Ordering::Less, "{a} should precede {b}");
        assert_eq!(compare_paths(&p(b), &p(a)), Ordering::Greater, "{b} should follow {a}");
    }

    #[test]
    fn path_order() {
        before("/users/{id}", "/users/**");
        before("/users/{id}", "/users/{*rest}");
        before("/a/b/**", "/a/**");
        before("/a/b/**", "/a/{x}/c");
        before("/a", "/a/**");
        before("/a/{x}", "/a/{x}/**");
        before("/", "regex:/.*");
        before("/x/**", "regex:/.*");
        before("regex:/.*", "/**");
        before("regex:/.*", "/{tenant}/**");
        before("regex:/.*", "/{*rest}");
        before("regex:/.*", "/{a}/{b}");
        before("/{a}/{b}", "/{a}/**");
        before("/{tenant}/**", "/**");
        before("/users/", "/users/{id}");
        before("/{id}/", "regex:/.*");
        // Same shape: longer literal text first.
        before("/users/{id}", "/u/{id}");
        assert_eq!(compare_paths(&p("regex:/a"), &p("regex:/b")), Ordering::Equal);
        assert_eq!(compare_paths(&p("/a/{x}"), &p("/a/{y}")), Ordering::Equal);
        assert_eq!(compare_paths(&p("/a/*"), &p("/a/{y}")), Ordering::Equal);
    }

    #[test]
    fn host_order() {
        let exact = HostPattern::parse("a.example.com").unwrap();
        let deep = HostPattern::parse("*.b.example.com").unwrap();
        let shallow = HostPattern::parse("*.example.com").unwrap();
        let ranks = [host_rank(Some(&exact)), host_rank(Some(&deep)), host_rank(Some(&shallow)), host_rank(None)];
        assert!(ranks.windows(2).all(|w| w[0] < w[1]), "{ranks:?}");
    }
}
