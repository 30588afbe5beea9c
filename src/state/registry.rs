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
    endpoints: Shared<EndpointState>,
    balancers: Shared<BalancerState>,
    jwks: Shared<JwksSource>,
    rate_limits: Shared<LocalStore>,
    redis: Shared<RedisBackend>,
    concurrency: Shared<Gates>,
    batches: Shared<crate::policy::rate_limit::batch::Batch>,
    breakers: Shared<crate::upstream::breaker::Breaker>,
    probers: Shared<crate::upstream::active::Prober>,
    discoveries: Shared<crate::upstream::discovery::Discovery>,
    resolvers: Shared<hickory_resolver::TokioResolver>,
    span_sinks: Shared<crate::telemetry::otlp::SpanSink>,
    listener_tls: Shared<crate::transport::tls::ListenerTls>,
    next_endpoint_id: AtomicU64,
    /// The metric families: they live as long as the process, so counts continue across reloads.
    pub metrics: Arc<crate::telemetry::metrics::Metrics>,
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
        let next = &self.next_endpoint_id;
        get_or(&self.endpoints, key, || Arc::new(EndpointState::new(next.fetch_add(1, Ordering::Relaxed) + 1)))
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
        get_or(&self.jwks, &key, || Arc::new(JwksSource::new(url.to_owned(), allowed, refresh, min_refetch)))
    }

    /// The counters of the limit with this scope and settings: a reload that keeps the limit keeps
    /// its counts; changed settings make a new fingerprint, so a fresh store.
    pub fn rate_limit_store(&self, fingerprint: &str, make: impl FnOnce() -> LocalStore) -> Arc<LocalStore> {
        get_or(&self.rate_limits, fingerprint, || Arc::new(make()))
    }

    /// The Redis backend with these settings: its connections and health survive reloads.
    pub fn redis(&self, config: &crate::config::RedisConfig) -> Result<Arc<RedisBackend>, (String, String)> {
        let key = crate::policy::rate_limit::redis::fingerprint(config);
        get_or_try(&self.redis, &key, || RedisBackend::new(config).map(Arc::new))
    }

    /// The in-flight slots of the `concurrency` policy with this scope and settings: a reload
    /// that keeps the policy keeps counting the requests in flight.
    pub fn concurrency_gates(&self, fingerprint: &str, make: impl FnOnce() -> Gates) -> Arc<Gates> {
        get_or(&self.concurrency, fingerprint, || Arc::new(make()))
    }

    /// Every live `concurrency` policy's slots (for the idle-key sweep).
    pub fn concurrency_gate_sets(&self) -> Vec<Arc<Gates>> {
        live(&self.concurrency)
    }

    /// The batched Redis sync of a policy with these settings: kept across reloads, so counts
    /// waiting for the next sync are not lost.
    pub fn redis_batch(
        &self,
        fingerprint: &str,
        make: impl FnOnce() -> std::io::Result<Arc<crate::policy::rate_limit::batch::Batch>>,
    ) -> std::io::Result<Arc<crate::policy::rate_limit::batch::Batch>> {
        get_or_try(&self.batches, fingerprint, make)
    }

    /// The circuit breaker of the upstream with this name and settings: its state survives reloads.
    pub fn breaker(
        &self,
        key: &str,
        settings: crate::upstream::breaker::BreakerSettings,
    ) -> Arc<crate::upstream::breaker::Breaker> {
        get_or(&self.breakers, key, || Arc::new(crate::upstream::breaker::Breaker::new(settings)))
    }

    /// The active health check of an endpoint with these settings: kept across reloads.
    pub fn prober(
        &self,
        key: &str,
        start: impl FnOnce() -> Arc<crate::upstream::active::Prober>,
    ) -> Arc<crate::upstream::active::Prober> {
        get_or(&self.probers, key, start)
    }

    /// The running discovery of an upstream with this source and member settings: a reload that
    /// keeps them keeps the endpoints found, without looking again.
    pub fn discovery(
        &self,
        key: &str,
        start: impl FnOnce() -> Arc<crate::upstream::discovery::Discovery>,
    ) -> Arc<crate::upstream::discovery::Discovery> {
        get_or(&self.discoveries, key, start)
    }

    /// The DNS resolver with these settings (and its cache), shared by the sources that use it.
    pub fn resolver(
        &self,
        settings: &crate::upstream::discovery::dns::ResolverSettings,
    ) -> Result<Arc<hickory_resolver::TokioResolver>, String> {
        get_or_try(&self.resolvers, &format!("{settings:?}"), || settings.build().map(Arc::new))
    }

    /// The span exporter with these settings: a reload that keeps them keeps its queue.
    pub fn span_sink(
        &self,
        config: &crate::config::OtlpConfig,
    ) -> Result<Arc<crate::telemetry::otlp::SpanSink>, String> {
        get_or_try(&self.span_sinks, &format!("{config:?}"), || {
            crate::telemetry::otlp::SpanSink::start(config).map(Arc::new)
        })
    }

    /// A listener's TLS with these settings: a reload that keeps them keeps the certificates and
    /// their watcher (a check run builds a fresh one and watches nothing).
    pub fn listener_tls(
        &self,
        config: &crate::config::TlsConfig,
        dry_run: bool,
    ) -> Result<Arc<crate::transport::tls::ListenerTls>, (String, String)> {
        let build = || crate::transport::tls::ListenerTls::build(config, dry_run).map(Arc::new);
        if dry_run {
            return build();
        }
        get_or_try(&self.listener_tls, &format!("{config:?}"), build)
    }

    /// Every live limit's store (for the idle-key sweep).
    pub fn rate_limit_stores(&self) -> Vec<Arc<LocalStore>> {
        live(&self.rate_limits)
    }

    /// The balancer state of the upstream with this name and settings fingerprint: a changed
    /// endpoint list starts a fresh rotation, an unchanged one continues where it was.
    pub fn balancer(&self, key: &str) -> Arc<BalancerState> {
        get_or(&self.balancers, key, || Arc::new(BalancerState::default()))
    }
}

/// Entries held weakly by key: the state lives while some snapshot uses it.
type Shared<T> = Mutex<HashMap<String, Weak<T>>>;

/// The live entry at `key`, or a new one from `make` (dead entries are dropped on the way).
fn get_or_try<T, E>(map: &Shared<T>, key: &str, make: impl FnOnce() -> Result<Arc<T>, E>) -> Result<Arc<T>, E> {
    let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(found) = map.get(key).and_then(Weak::upgrade) {
        return Ok(found);
    }
    map.retain(|_, w| w.strong_count() > 0);
    let made = make()?;
    map.insert(key.to_owned(), Arc::downgrade(&made));
    Ok(made)
}

fn get_or<T>(map: &Shared<T>, key: &str, make: impl FnOnce() -> Arc<T>) -> Arc<T> {
    match get_or_try::<T, std::convert::Infallible>(map, key, || Ok(make())) {
        Ok(found) => found,
        Err(never) => match never {},
    }
}

/// Every live entry.
fn live<T>(map: &Shared<T>) -> Vec<Arc<T>> {
    map.lock().unwrap_or_else(|e| e.into_inner()).values().filter_map(Weak::upgrade).collect()
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
