//! Long-lived state shared by consecutive snapshots: what a reload must not reset.
//!
//! An endpoint that stays in the config keeps its identity (and with it its pooled connections and
//! DNS cache); an upstream keeps its balancer position. Entries are held weakly, so state of
//! endpoints that left the config disappears with the last snapshot that used them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use crate::policy::concurrency::Gates;
use crate::policy::jwt::keys::JwksSource;
use crate::policy::rate_limit::local::LocalStore;
use crate::policy::rate_limit::redis::RedisBackend;
use crate::upstream::EndpointState;

#[derive(Default)]
pub struct Registry {
    endpoints: Mutex<HashMap<String, Weak<EndpointState>>>,
    balancers: Mutex<HashMap<String, Weak<BalancerState>>>,
    jwks: Mutex<HashMap<String, Weak<JwksSource>>>,
    rate_limits: Mutex<HashMap<String, Weak<LocalStore>>>,
    redis: Mutex<HashMap<String, Weak<RedisBackend>>>,
    concurrency: Mutex<HashMap<String, Weak<Gates>>>,
    batches: Mutex<HashMap<String, Weak<crate::policy::rate_limit::batch::Batch>>>,
    breakers: Mutex<HashMap<String, Weak<crate::upstream::breaker::Breaker>>>,
    probers: Mutex<HashMap<String, Weak<crate::upstream::active::Prober>>>,
    next_endpoint_id: AtomicU64,
}

/// A balancer's moving part, shared across reloads of an unchanged upstream.
#[derive(Debug, Default)]
pub struct BalancerState {
    pub cursor: AtomicUsize,
}

impl Registry {
    pub fn new() -> Arc<Registry> {
        Arc::new(Registry::default())
    }

    /// The state of the endpoint at `key` (its URL), created on first use.
    pub fn endpoint(&self, key: &str) -> Arc<EndpointState> {
        let mut map = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(state) = map.get(key).and_then(Weak::upgrade) {
            return state;
        }
        map.retain(|_, w| w.strong_count() > 0);
        let id = self.next_endpoint_id.fetch_add(1, Ordering::Relaxed) + 1;
        let state = Arc::new(EndpointState::new(id));
        map.insert(key.to_owned(), Arc::downgrade(&state));
        state
    }

    /// The remote JWKS at `url` with these settings: its keys survive reloads, so a reload does not
    /// make every worker fetch them again.
    pub fn jwks(
        &self,
        url: &str,
        allowed: Option<Vec<jsonwebtoken::Algorithm>>,
        refresh: std::time::Duration,
        min_refetch: std::time::Duration,
    ) -> Arc<JwksSource> {
        let key = format!("{url}|{allowed:?}|{}|{}", refresh.as_millis(), min_refetch.as_millis());
        let mut map = self.jwks.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(source) = map.get(&key).and_then(Weak::upgrade) {
            return source;
        }
        map.retain(|_, w| w.strong_count() > 0);
        let source = Arc::new(JwksSource::new(url.to_owned(), allowed, refresh, min_refetch));
        map.insert(key, Arc::downgrade(&source));
        source
    }

    /// The counters of the limit with this scope and settings: a reload that keeps the limit keeps
    /// its counts; changed settings make a new fingerprint, so a fresh store.
    pub fn rate_limit_store(&self, fingerprint: &str, make: impl FnOnce() -> LocalStore) -> Arc<LocalStore> {
        let mut map = self.rate_limits.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(store) = map.get(fingerprint).and_then(Weak::upgrade) {
            return store;
        }
        map.retain(|_, w| w.strong_count() > 0);
        let store = Arc::new(make());
        map.insert(fingerprint.to_owned(), Arc::downgrade(&store));
        store
    }

    /// The Redis backend with these settings: its connections and health survive reloads.
    pub fn redis(&self, config: &crate::config::RedisConfig) -> Result<Arc<RedisBackend>, (String, String)> {
        let key = crate::policy::rate_limit::redis::fingerprint(config);
        let mut map = self.redis.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(backend) = map.get(&key).and_then(Weak::upgrade) {
            return Ok(backend);
        }
        map.retain(|_, w| w.strong_count() > 0);
        let backend = Arc::new(RedisBackend::new(config)?);
        map.insert(key, Arc::downgrade(&backend));
        Ok(backend)
    }

    /// The in-flight slots of the `concurrency` policy with this scope and settings: a reload
    /// that keeps the policy keeps counting the requests in flight.
    pub fn concurrency_gates(&self, fingerprint: &str, make: impl FnOnce() -> Gates) -> Arc<Gates> {
        let mut map = self.concurrency.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(gates) = map.get(fingerprint).and_then(Weak::upgrade) {
            return gates;
        }
        map.retain(|_, w| w.strong_count() > 0);
        let gates = Arc::new(make());
        map.insert(fingerprint.to_owned(), Arc::downgrade(&gates));
        gates
    }

    /// Every live `concurrency` policy's slots (for the idle-key sweep).
    pub fn concurrency_gate_sets(&self) -> Vec<Arc<Gates>> {
        let map = self.concurrency.lock().unwrap_or_else(|e| e.into_inner());
        map.values().filter_map(Weak::upgrade).collect()
    }

    /// The batched Redis sync of a policy with these settings: kept across reloads, so counts
    /// waiting for the next sync are not lost.
    pub fn redis_batch(
        &self,
        fingerprint: &str,
        make: impl FnOnce() -> std::io::Result<Arc<crate::policy::rate_limit::batch::Batch>>,
    ) -> std::io::Result<Arc<crate::policy::rate_limit::batch::Batch>> {
        let mut map = self.batches.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(batch) = map.get(fingerprint).and_then(Weak::upgrade) {
            return Ok(batch);
        }
        map.retain(|_, w| w.strong_count() > 0);
        let batch = make()?;
        map.insert(fingerprint.to_owned(), Arc::downgrade(&batch));
        Ok(batch)
    }

    /// The circuit breaker of the upstream with this name and settings: its state survives reloads.
    pub fn breaker(
        &self,
        key: &str,
        settings: crate::upstream::breaker::BreakerSettings,
    ) -> Arc<crate::upstream::breaker::Breaker> {
        let mut map = self.breakers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(breaker) = map.get(key).and_then(Weak::upgrade) {
            return breaker;
        }
        map.retain(|_, w| w.strong_count() > 0);
        let breaker = Arc::new(crate::upstream::breaker::Breaker::new(settings));
        map.insert(key.to_owned(), Arc::downgrade(&breaker));
        breaker
    }

    /// The active health check of an endpoint with these settings: kept across reloads.
    pub fn prober(
        &self,
        key: &str,
        start: impl FnOnce() -> Arc<crate::upstream::active::Prober>,
    ) -> Arc<crate::upstream::active::Prober> {
        let mut map = self.probers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(prober) = map.get(key).and_then(Weak::upgrade) {
            return prober;
        }
        map.retain(|_, w| w.strong_count() > 0);
        let prober = start();
        map.insert(key.to_owned(), Arc::downgrade(&prober));
        prober
    }

    /// Every live limit's store (for the idle-key sweep).
    pub fn rate_limit_stores(&self) -> Vec<Arc<LocalStore>> {
        let map = self.rate_limits.lock().unwrap_or_else(|e| e.into_inner());
        map.values().filter_map(Weak::upgrade).collect()
    }

    /// The balancer state of the upstream with this name and settings fingerprint: a changed
    /// endpoint list starts a fresh rotation, an unchanged one continues where it was.
    pub fn balancer(&self, key: &str) -> Arc<BalancerState> {
        let mut map = self.balancers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(state) = map.get(key).and_then(Weak::upgrade) {
            return state;
        }
        map.retain(|_, w| w.strong_count() > 0);
        let state = Arc::new(BalancerState::default());
        map.insert(key.to_owned(), Arc::downgrade(&state));
        state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_identity_survives_while_referenced() {
        let reg = Registry::new();
        let a = reg.endpoint("http://10.0.0.1:80");
        let b = reg.endpoint("http://10.0.0.1:80");
        assert!(Arc::ptr_eq(&a, &b));
        let other = reg.endpoint("http://10.0.0.2:80");
        assert_ne!(a.id, other.id);
        let id = a.id;
        drop((a, b));
        let fresh = reg.endpoint("http://10.0.0.1:80");
        assert_ne!(fresh.id, id, "a dropped endpoint gets a new identity (its pool is gone)");
    }
}
