//! The segment trie of one host group: the part of the lookup that keeps its cost independent of
//! the number of routes.
//!
//! `RouteTable::find` walks one trie per host group that can match the request host. A node has
//! literal children (looked up by the next path segment), at most one param child (any non-empty
//! segment), the entries that end at the node and the entries whose tail starts there. Entries
//! are stored as their global precedence rank, each list ascending, and every node knows the best
//! rank below it, so the walk skips whatever cannot beat the best match found so far.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use super::pattern::{Segment, Tail, split_first};

/// A multiply-rotate hash for short keys (segments, host names). The keys come from the config,
/// never from requests, so flooding a bucket is not something a client can do; a request can
/// only probe, and SipHash would cost more than the rest of a typical lookup.
#[derive(Default, Clone, Copy)]
pub(crate) struct KeyHasher(u64);

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl KeyHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for KeyHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        // The length keeps zero padding of the last word from colliding with real zero bytes.
        self.add(bytes.len() as u64);
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    #[inline]
    fn write_u8(&mut self, byte: u8) {
        self.add(u64::from(byte));
    }

    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

pub(crate) type KeyMap<V> = HashMap<Box<str>, V, BuildHasherDefault<KeyHasher>>;

/// Up to this many literal children a linear scan beats hashing the segment.
const SMALL_FANOUT: usize = 8;

#[derive(Debug)]
enum Children {
    Few(Box<[(Box<str>, u32)]>),
    Hashed(KeyMap<u32>),
}

impl Children {
    #[inline]
    fn get(&self, segment: &str) -> Option<u32> {
        match self {
            // A handful of short keys: comparing lengths first rejects most without a memcmp.
            Children::Few(list) => {
                list.iter().find(|(k, _)| k.len() == segment.len() && **k == *segment).map(|(_, child)| *child)
            }
            Children::Hashed(map) => map.get(segment).copied(),
        }
    }
}

#[derive(Debug)]
struct Node {
    literals: Children,
    param: Option<u32>,
    exact: Box<[u32]>,
    tails: Box<[u32]>,
    /// The best rank anywhere in this subtree, `u32::MAX` when it holds none.
    best: u32,
}

/// Receives the ranks of entries whose host and path match, and bounds the walk: nothing with a
/// rank at or above `bound()` is offered. Lists are offered in ascending order, so a visitor that
/// lowers its bound on success stops each list at its first success.
pub(crate) trait Visitor {
    fn bound(&self) -> u32;
    fn visit(&mut self, rank: u32);
}

#[derive(Debug)]
pub(crate) struct Trie {
    nodes: Box<[Node]>,
}

#[derive(Default)]
struct BuildNode {
    literals: HashMap<Box<str>, u32>,
    param: Option<u32>,
    exact: Vec<u32>,
    tails: Vec<u32>,
}

/// Collects patterns; ranks must be inserted in ascending order so every list comes out sorted.
#[derive(Default)]
pub(crate) struct TrieBuilder {
    nodes: Vec<BuildNode>,
}

impl TrieBuilder {
    fn child(&mut self, parent: usize, segment: &Segment) -> usize {
        let next = self.nodes.len();
        let node = &mut self.nodes[parent];
        let slot = match segment {
            Segment::Literal(text) => *node.literals.entry(text.clone()).or_insert(next as u32),
            Segment::Param(_) | Segment::Any => *node.param.get_or_insert(next as u32),
        };
        if slot as usize == next {
            self.nodes.push(BuildNode::default());
        }
        slot as usize
    }

    pub(crate) fn insert(&mut self, segments: &[Segment], tail: Tail, rank: u32) {
        if self.nodes.is_empty() {
            self.nodes.push(BuildNode::default());
        }
        let mut node = 0;
        for segment in segments {
            node = self.child(node, segment);
        }
        let target = &mut self.nodes[node];
        match tail {
            Tail::None => target.exact.push(rank),
            Tail::Anonymous | Tail::Named(_) => target.tails.push(rank),
        }
    }

    pub(crate) fn finish(self) -> Trie {
        let mut nodes: Vec<Node> = self
            .nodes
            .into_iter()
            .map(|n| {
                let literals = if n.literals.len() <= SMALL_FANOUT {
                    let mut list: Vec<(Box<str>, u32)> = n.literals.into_iter().collect();
                    // Sorted only so that a build is reproducible.
                    list.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                    Children::Few(list.into())
                } else {
                    Children::Hashed(n.literals.into_iter().collect())
                };
                let own = n.exact.first().into_iter().chain(n.tails.first()).copied().min();
                Node {
                    literals,
                    param: n.param,
                    exact: n.exact.into(),
                    tails: n.tails.into(),
                    best: own.unwrap_or(u32::MAX),
                }
            })
            .collect();
        // Children are always created after their parent, so a reverse sweep sees every child's
        // final `best` before its parent reads it.
        for index in (0..nodes.len()).rev() {
            let node = &nodes[index];
            let from_literals = match &node.literals {
                Children::Few(list) => list.iter().map(|(_, c)| nodes[*c as usize].best).min(),
                Children::Hashed(map) => map.values().map(|c| nodes[*c as usize].best).min(),
            };
            let from_param = node.param.map(|c| nodes[c as usize].best);
            let best = [Some(node.best), from_literals, from_param].into_iter().flatten().min();
            nodes[index].best = best.unwrap_or(u32::MAX);
        }
        Trie { nodes: nodes.into() }
    }
}

#[inline]
fn offer(list: &[u32], visitor: &mut impl Visitor) {
    for &rank in list {
        if rank >= visitor.bound() {
            break;
        }
        visitor.visit(rank);
    }
}

impl Trie {
    pub(crate) fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Offers every entry whose pattern matches `path` (a normalised path starting with `/`).
    pub(crate) fn walk(&self, path: &str, visitor: &mut impl Visitor) {
        if let Some(rest) = path.strip_prefix('/') {
            if !self.nodes.is_empty() {
                self.walk_node(0, Some(rest), visitor);
            }
        }
    }

    fn walk_node(&self, index: u32, rest: Option<&str>, visitor: &mut impl Visitor) {
        let node = &self.nodes[index as usize];
        if node.best >= visitor.bound() {
            return;
        }
        // Best-first within a node: an exact end, then literal, then param children, and tails
        // last; the ranks decide, but this order lets the bound cut the later branches early.
        match rest {
            None => offer(&node.exact, visitor),
            Some(rest) => {
                let (segment, next) = split_first(rest);
                if let Some(child) = node.literals.get(segment) {
                    self.walk_node(child, next, visitor);
                }
                if let (Some(child), false) = (node.param, segment.is_empty()) {
                    self.walk_node(child, next, visitor);
                }
            }
        }
        offer(&node.tails, visitor);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::pattern::{PathPattern, Shape};

    struct Collect(Vec<u32>);

    impl Visitor for Collect {
        fn bound(&self) -> u32 {
            u32::MAX
        }
        fn visit(&mut self, rank: u32) {
            self.0.push(rank);
        }
    }

    struct Best(u32);

    impl Visitor for Best {
        fn bound(&self) -> u32 {
            self.0
        }
        fn visit(&mut self, rank: u32) {
            self.0 = rank;
        }
    }

    fn trie(patterns: &[&str]) -> Trie {
        let mut builder = TrieBuilder::default();
        for (rank, p) in patterns.iter().enumerate() {
            let pattern = PathPattern::parse(p).unwrap();
            let Shape::Segments { segments, tail } = pattern.shape() else { unreachable!() };
            builder.insert(segments, *tail, rank as u32);
        }
        builder.finish()
    }

    fn all(t: &Trie, path: &str) -> Vec<u32> {
        let mut c = Collect(Vec::new());
        t.walk(path, &mut c);
        c.0.sort_unstable();
        c.0
    }

    #[test]
    fn offers_every_match() {
        let patterns = ["/", "/users", "/users/", "/users/{id}", "/users/**", "/**", "/{a}/{b}", "/users/*/x"];
        let t = trie(&patterns);
        assert_eq!(all(&t, "/"), [0, 5]);
        assert_eq!(all(&t, "/users"), [1, 4, 5]);
        assert_eq!(all(&t, "/users/"), [2, 4, 5]);
        assert_eq!(all(&t, "/users/7"), [3, 4, 5, 6]);
        assert_eq!(all(&t, "/users/7/x"), [4, 5, 7]);
        assert_eq!(all(&t, "/other"), [5]);
        assert_eq!(all(&t, "no-slash"), Vec::<u32>::new());
        for path in ["/", "/users", "/users/", "/users/7", "/users/7/x", "/a/b/c", "/x//"] {
            let expected: Vec<u32> = patterns
                .iter()
                .enumerate()
                .filter(|(_, p)| PathPattern::parse(p).unwrap().matches(path))
                .map(|(i, _)| i as u32)
                .collect();
            assert_eq!(all(&t, path), expected, "{path}");
        }
    }

    #[test]
    fn bound_prunes_to_the_best() {
        let t = trie(&["/a/b", "/a/{x}", "/**"]);
        let mut best = Best(u32::MAX);
        t.walk("/a/b", &mut best);
        assert_eq!(best.0, 0);
        let mut best = Best(u32::MAX);
        t.walk("/a/c", &mut best);
        assert_eq!(best.0, 1);
    }

    #[test]
    fn wide_fanout_uses_the_hash_map() {
        let owned: Vec<String> = (0..100).map(|i| format!("/svc{i}/{{id}}")).collect();
        let patterns: Vec<&str> = owned.iter().map(|s| s.as_str()).collect();
        let t = trie(&patterns);
        assert!(matches!(t.nodes[0].literals, Children::Hashed(_)));
        assert_eq!(all(&t, "/svc42/1"), [42]);
        assert_eq!(all(&t, "/svc100/1"), Vec::<u32>::new());
        assert_eq!(t.nodes[0].best, 0);
    }

    #[test]
    fn hasher_distinguishes_lengths() {
        use std::hash::{BuildHasher, BuildHasherDefault};
        let build = BuildHasherDefault::<KeyHasher>::default();
        assert_ne!(build.hash_one("a"), build.hash_one("a\0"));
        assert_ne!(build.hash_one("abcdefgh"), build.hash_one("abcdefgi"));
    }
}
