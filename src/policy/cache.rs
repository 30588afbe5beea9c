//! Per-worker caches of policy decisions: verified tokens (`jwt`), answers of an authorization
//! service (`forward_auth`). A hit costs a hash lookup instead of a signature check or a network
//! round trip.
//!
//! Each worker thread owns its caches (a `thread_local!` per use), so a lookup is never contended.
//! An entry holds its whole key and is only used when the key matches byte for byte, under the same
//! scope (policy settings) and generation (e.g. of signing keys), before it expires: a hash
//! collision cannot pass a request, and a rotation invalidates what came before.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};

/// Hits and misses of one kind of cache, over every worker (for `/metrics`). Counted in shards of
/// their own cache line, a thread writing to its own: workers never contend for a counter on the
/// request path; a scrape adds the shards up.
pub struct CacheStats {
    pub name: &'static str,
    shards: [Shard; SHARDS],
}

const SHARDS: usize = 16;

#[repr(align(64))]
struct Shard {
    hits: AtomicU64,
    misses: AtomicU64,
}

impl Shard {
    const fn new() -> Shard {
        Shard { hits: AtomicU64::new(0), misses: AtomicU64::new(0) }
    }
}

thread_local! {
    /// This thread's shard, taken in turn when it first counts.
    static SHARD: usize = {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        NEXT.fetch_add(1, Ordering::Relaxed) as usize % SHARDS
    };
}

impl CacheStats {
    const fn new(name: &'static str) -> CacheStats {
        CacheStats { name, shards: [const { Shard::new() }; SHARDS] }
    }

    fn count(&self, hit: bool) {
        let shard = &self.shards[SHARD.with(|s| *s)];
        let counter = if hit { &shard.hits } else { &shard.misses };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// `(hits, misses)` so far.
    pub fn counts(&self) -> (u64, u64) {
        self.shards
            .iter()
            .fold((0, 0), |(h, m), s| (h + s.hits.load(Ordering::Relaxed), m + s.misses.load(Ordering::Relaxed)))
    }
}

pub static JWT: CacheStats = CacheStats::new("jwt");
pub static INTROSPECTION: CacheStats = CacheStats::new("introspection");
pub static BASIC_AUTH: CacheStats = CacheStats::new("basic_auth");
pub static FORWARD_AUTH: CacheStats = CacheStats::new("forward_auth");

/// Every kind of cache, for the metrics.
pub static ALL: [&CacheStats; 4] = [&JWT, &INTROSPECTION, &BASIC_AUTH, &FORWARD_AUTH];

/// A bounded map of expiring entries; beyond `capacity`, an arbitrary entry makes room.
pub struct LocalCache<V> {
    stats: &'static CacheStats,
    capacity: usize,
    hasher: RandomState,
    entries: HashMap<u64, Entry<V>>,
}

struct Entry<V> {
    scope: u64,
    generation: u64,
    key: Box<[u8]>,
    expires: u64,
    value: V,
}

impl<V: Clone> LocalCache<V> {
    pub fn new(capacity: usize, stats: &'static CacheStats) -> Self {
        LocalCache { stats, capacity, hasher: RandomState::new(), entries: HashMap::new() }
    }

    fn slot(&self, scope: u64, key: &[u8]) -> u64 {
        let mut h = self.hasher.build_hasher();
        scope.hash(&mut h);
        key.hash(&mut h);
        h.finish()
    }

    /// The value stored for `key` under the same `scope` and `generation`, unless it expired
    /// (`now` and expiry times are in the caller's unit).
    pub fn get(&self, scope: u64, generation: u64, key: &[u8], now: u64) -> Option<V> {
        let found = self.entries.get(&self.slot(scope, key)).filter(|entry| {
            entry.scope == scope && entry.generation == generation && *entry.key == *key && now < entry.expires
        });
        self.stats.count(found.is_some());
        found.map(|entry| entry.value.clone())
    }

    /// Remembers `value` for `key` until `expires`.
    pub fn put(&mut self, scope: u64, generation: u64, key: &[u8], expires: u64, value: V) {
        let slot = self.slot(scope, key);
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&slot) {
            if let Some(victim) = self.entries.keys().next().copied() {
                self.entries.remove(&victim);
            }
        }
        self.entries.insert(slot, Entry { scope, generation, key: key.into(), expires, value });
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The cache scope of a policy: a hash of its settings, so that a reload that changes them does
/// not reuse answers given under the old ones.
pub fn scope_of(settings: &impl std::fmt::Debug) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::hash::Hash::hash(&format!("{settings:?}"), &mut h);
    std::hash::Hasher::finish(&h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hits_only_for_the_same_key_scope_generation_and_before_expiry() {
        static STATS: CacheStats = CacheStats::new("test");
        let mut cache = LocalCache::new(16, &STATS);
        cache.put(1, 7, b"tok-a", 100, "a");
        assert_eq!(cache.get(1, 7, b"tok-a", 99), Some("a"));
        assert_eq!(cache.get(1, 7, b"tok-a", 100), None, "expired");
        assert_eq!(cache.get(2, 7, b"tok-a", 50), None, "other policy");
        assert_eq!(cache.get(1, 8, b"tok-a", 50), None, "keys rotated");
        assert_eq!(cache.get(1, 7, b"tok-b", 50), None);
        assert_eq!(STATS.counts(), (1, 4));
    }

    #[test]
    fn the_cache_is_bounded() {
        static STATS: CacheStats = CacheStats::new("bounded");
        let mut cache = LocalCache::new(64, &STATS);
        for i in 0..200u32 {
            cache.put(9, 1, &i.to_be_bytes(), u64::MAX, i);
        }
        assert!(cache.len() <= 64);
        assert_eq!(cache.get(9, 1, &199u32.to_be_bytes(), 0), Some(199), "the newest entry is kept");
    }
}
