//! The in-memory backend: one limit's per-key states, sharded, with bounded memory.
//!
//! Keys are 64-bit keyed hashes of the key's text (see `key.rs`), so an entry is a few dozen bytes
//! whatever the key, nothing is allocated per request, and no key text (addresses, user ids) is
//! kept. Each shard is a small map behind its own mutex: a decision holds one lock for a few
//! nanoseconds, and two workers meet on a lock only when they touch the same shard at once.
//!
//! Memory is bounded by `max_keys`. A shard that is full first forgets keys whose state is as good
//! as new (idle long enough: forgetting them changes no decision), then, if that frees too little,
//! the least recently seen eighth of its keys. Under a flood of distinct keys the keys that are
//! forgotten are the flood's own one-off keys and idle ones; a forgotten key that comes back starts
//! with a full allowance, which is the documented price of the bound.
//!
//! Why not a cache crate (moka): its admission policy may decline to keep a new key, and a key
//! that is never kept would never be limited; eviction here only ever takes keys that were seen
//! less recently than the ones it keeps.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Mutex;

use super::algorithm::{Algorithm, Decision, State};

const SHARDS: usize = 32;

/// One limit's counters.
pub struct LocalStore {
    algorithm: Algorithm,
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
}

struct Shard {
    map: HashMap<u64, Entry, BuildHasherDefault<PreHashed>>,
}

#[derive(Clone, Copy)]
struct Entry {
    state: State,
    seen: u64,
}

impl LocalStore {
    pub fn new(algorithm: Algorithm, max_keys: usize) -> LocalStore {
        let per_shard = max_keys.div_ceil(SHARDS).max(1);
        let shards = (0..SHARDS).map(|_| Mutex::new(Shard { map: HashMap::default() })).collect();
        LocalStore { algorithm, shards, per_shard }
    }

    pub fn algorithm(&self) -> &Algorithm {
        &self.algorithm
    }

    /// Decides a request of `key` at `now`.
    pub fn decide(&self, key: u64, now: u64) -> Decision {
        let mut shard = self.shard(key);
        if let Some(entry) = shard.map.get_mut(&key) {
            entry.seen = now;
            return self.algorithm.decide(&mut entry.state, now);
        }
        let mut state = State::default();
        let decision = self.algorithm.decide(&mut state, now);
        if shard.map.len() >= self.per_shard {
            shard.make_room(&self.algorithm, now, self.per_shard);
        }
        shard.map.insert(key, Entry { state, seen: now });
        decision
    }

    /// What `key` has left at `now`, without using any of it.
    pub fn peek(&self, key: u64, now: u64) -> Decision {
        let state = self.shard(key).map.get(&key).map(|e| e.state).unwrap_or_default();
        self.algorithm.peek(&state, now)
    }

    /// Sets `key`'s state to `state` (the fleet's, from Redis) plus `since` requests admitted
    /// here meanwhile.
    pub fn replace(&self, key: u64, state: State, since: u64, now: u64) {
        let mut state = state;
        if since > 0 {
            self.algorithm.charge(&mut state, now, since);
        }
        let mut shard = self.shard(key);
        match shard.map.get_mut(&key) {
            Some(entry) => entry.state = state,
            None => {
                if shard.map.len() >= self.per_shard {
                    shard.make_room(&self.algorithm, now, self.per_shard);
                }
                shard.map.insert(key, Entry { state, seen: now });
            }
        }
    }

    /// Gives back what `decide` took for `key` (another limit refused the request).
    pub fn refund(&self, key: u64, now: u64) {
        if let Some(entry) = self.shard(key).map.get_mut(&key) {
            self.algorithm.refund(&mut entry.state, now);
        }
    }

    /// Forgets every key whose state is as good as new; returns how many keys remain.
    pub fn sweep(&self, now: u64) -> usize {
        let mut left = 0;
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            shard.map.retain(|_, e| self.algorithm.idle_at(&e.state) > now);
            if shard.map.capacity() > 4 * shard.map.len().max(16) {
                shard.map.shrink_to_fit();
            }
            left += shard.map.len();
        }
        left
    }

    /// How many keys are held.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).map.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn shard(&self, key: u64) -> std::sync::MutexGuard<'_, Shard> {
        // The low bits pick the bucket inside a shard's map: take the shard from the high ones.
        let index = (key >> 58) as usize % SHARDS;
        self.shards[index].lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Shard {
    fn make_room(&mut self, algorithm: &Algorithm, now: u64, capacity: usize) {
        self.map.retain(|_, e| algorithm.idle_at(&e.state) > now);
        let target = capacity - capacity / 8;
        if self.map.len() < target {
            return;
        }
        // Forget the least recently seen, down to 7/8 of the capacity.
        let mut seen: Vec<u64> = self.map.values().map(|e| e.seen).collect();
        let drop = self.map.len() - target + 1;
        let (_, cutoff, _) = seen.select_nth_unstable(drop - 1);
        let cutoff = *cutoff;
        let mut dropped = 0;
        self.map.retain(|_, e| {
            if e.seen <= cutoff && dropped < drop {
                dropped += 1;
                false
            } else {
                true
            }
        });
    }
}

/// The keys are already hashes: the map uses them as they are.
#[derive(Default)]
struct PreHashed(u64);

impl Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used; anything else still hashes deterministically.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn bucket() -> Algorithm {
        Algorithm::TokenBucket { interval_ns: S, burst: 2 }
    }

    #[test]
    fn keys_are_limited_independently() {
        let store = LocalStore::new(bucket(), 1000);
        let now = 100 * S;
        for key in [1u64 << 60, 2, 3 << 58] {
            assert!(store.decide(key, now).allowed);
            assert!(store.decide(key, now).allowed);
            assert!(!store.decide(key, now).allowed, "key {key}");
        }
        assert_eq!(store.len(), 3);
    }

    #[test]
    fn a_flood_of_distinct_keys_stays_within_the_bound_and_keeps_recent_keys() {
        let max = 3200;
        let store = LocalStore::new(bucket(), max);
        let now = 100 * S;
        // A key in active use, refused because it is over its limit.
        let regular = 0xdead_beef_u64 << 20;
        store.decide(regular, now);
        store.decide(regular, now);
        for i in 0..200_000u64 {
            let key = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            store.decide(key, now + i);
            if i % 100 == 0 {
                assert!(!store.decide(regular, now + i).allowed, "the regular key was forgotten at {i}");
            }
        }
        let len = store.len();
        assert!(len <= max + SHARDS, "{len} keys held, bound {max}");
        assert!(len >= max / 2, "{len}: eviction took far more than needed");
    }

    #[test]
    fn sweeping_forgets_only_idle_keys() {
        let store = LocalStore::new(bucket(), 1000);
        store.decide(1, 10 * S);
        store.decide(2, 20 * S);
        store.decide(2, 20 * S);
        // Key 1's bucket is full again after 11 s; key 2's after 22 s.
        assert_eq!(store.sweep(15 * S), 1);
        assert!(!store.decide(2, 20 * S).allowed, "the busy key kept its state");
        assert_eq!(store.sweep(23 * S), 0);
        assert!(store.is_empty());
    }
}
