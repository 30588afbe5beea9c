//! Verified tokens, remembered per worker until they expire, so that a client presenting the same
//! token again costs a hash lookup instead of a signature check (an RS256 check costs more than
//! proxying the request).
//!
//! An entry holds the whole token and is only used when the token matches byte for byte, for the
//! same policy settings and the same generation of keys: a hash collision cannot pass a token, and
//! rotated keys invalidate what they verified.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher, RandomState};

use crate::policy::identity::Identity;

/// Entries per worker; beyond this, an arbitrary entry makes room.
const CAPACITY: usize = 8192;

struct Entry {
    scope: u64,
    generation: u64,
    token: Box<str>,
    expires: u64,
    identity: Identity,
}

struct Cache {
    hasher: RandomState,
    entries: HashMap<u64, Entry>,
}

thread_local! {
    static CACHE: RefCell<Cache> = RefCell::new(Cache { hasher: RandomState::new(), entries: HashMap::new() });
}

fn key(hasher: &RandomState, scope: u64, token: &str) -> u64 {
    let mut h = hasher.build_hasher();
    scope.hash(&mut h);
    token.hash(&mut h);
    h.finish()
}

/// The identity of a token verified before under the same `scope` and key `generation`.
pub fn get(scope: u64, generation: u64, token: &str, now: u64) -> Option<Identity> {
    CACHE.with(|cache| {
        let cache = cache.borrow();
        let entry = cache.entries.get(&key(&cache.hasher, scope, token))?;
        let valid =
            entry.scope == scope && entry.generation == generation && &*entry.token == token && now < entry.expires;
        valid.then(|| entry.identity.clone())
    })
}

/// Remembers a verified token until `expires` (a Unix time in seconds).
pub fn put(scope: u64, generation: u64, token: &str, expires: u64, identity: Identity) {
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        let k = key(&cache.hasher, scope, token);
        if cache.entries.len() >= CAPACITY && !cache.entries.contains_key(&k) {
            if let Some(victim) = cache.entries.keys().next().copied() {
                cache.entries.remove(&victim);
            }
        }
        cache.entries.insert(k, Entry { scope, generation, token: token.into(), expires, identity });
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(sub: &str) -> Identity {
        let mut m = serde_json::Map::new();
        m.insert("sub".into(), sub.into());
        Identity::of_claims(m)
    }

    #[test]
    fn hits_only_for_the_same_token_scope_generation_and_before_expiry() {
        put(1, 7, "tok-a", 100, id("a"));
        assert_eq!(get(1, 7, "tok-a", 99).unwrap().subject(), Some("a"));
        assert!(get(1, 7, "tok-a", 100).is_none(), "expired");
        assert!(get(2, 7, "tok-a", 50).is_none(), "other policy");
        assert!(get(1, 8, "tok-a", 50).is_none(), "keys rotated");
        assert!(get(1, 7, "tok-b", 50).is_none());
    }

    #[test]
    fn the_cache_is_bounded() {
        for i in 0..(CAPACITY + 100) {
            put(9, 1, &format!("t{i}"), u64::MAX, id("x"));
        }
        let len = CACHE.with(|c| c.borrow().entries.len());
        assert!(len <= CAPACITY);
    }
}
