//! `concurrency`: how many requests of a key may be in flight at once on this node.
//!
//! A request takes a slot before it goes upstream and gives it back when its response has been
//! sent (or the client went away). A request that finds no slot either waits in a bounded queue
//! for up to `queue_timeout`, or — queue full, or no queue — is refused at once with 503, so an
//! overloaded service sheds load instead of building a backlog. The slots live in the registry:
//! a reload that keeps the policy keeps counting the requests already in flight.
//!
//! In-flight counts are per node by nature (a request is in flight on one node); a fleet divides
//! its limit by its size.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::rate_limit::key::{self, KeyPart, KeySource};
use crate::config::ConcurrencyConfig;
use crate::proxy::error::ProxyError;
use crate::state::registry::Registry;

const SHARDS: usize = 16;

pub struct ConcurrencyPolicy {
    key: Box<[KeyPart]>,
    gates: Arc<Gates>,
    queue: usize,
    queue_timeout: Duration,
}

/// The slots of every key of one policy.
pub struct Gates {
    max: usize,
    shards: Box<[Shard]>,
}

type Shard = Mutex<HashMap<u64, Arc<Gate>>>;

struct Gate {
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
}

/// A taken slot: given back when dropped (with the response body). The key's entry goes with the
/// last slot, so the map holds only keys with requests in flight or waiting: a flood of distinct
/// keys costs memory only while its requests are in flight.
pub struct Slot {
    permit: Option<OwnedSemaphorePermit>,
    gates: Arc<Gates>,
    key: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        drop(self.permit.take());
        self.gates.forget_if_idle(self.key);
    }
}

impl ConcurrencyPolicy {
    pub fn compile(
        config: &ConcurrencyConfig,
        scope: &str,
        registry: &Registry,
    ) -> Result<ConcurrencyPolicy, Vec<(String, String)>> {
        let mut errors = Vec::new();
        let parts: Vec<String> = match &config.key {
            Some(k) => k.as_slice().to_vec(),
            None => vec!["route".into()],
        };
        let mut key = Vec::new();
        for (i, text) in parts.iter().enumerate() {
            match KeyPart::parse(text) {
                Ok(p) => key.push(p),
                Err(message) => {
                    errors.push((if parts.len() == 1 { "key".into() } else { format!("key[{i}]") }, message))
                }
            }
        }
        if parts.is_empty() {
            errors.push(("key".into(), "an empty key: use `route` to count all requests together".into()));
        }
        if !(1..=1_000_000).contains(&config.max) {
            errors.push(("max".into(), "must be between 1 and 1000000".into()));
        }
        if config.queue > 100_000 {
            errors.push(("queue".into(), "at most 100000".into()));
        }
        let queue_timeout = config.queue_timeout.get();
        if config.queue > 0 && !(Duration::from_millis(1)..=Duration::from_secs(300)).contains(&queue_timeout) {
            errors.push(("queue_timeout".into(), "must be between 1ms and 5m".into()));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let max = config.max as usize;
        let fingerprint = format!("{scope}|{}|{max}", parts.join(","));
        let gates = registry.concurrency_gates(&fingerprint, || Gates::new(max));
        Ok(ConcurrencyPolicy { key: key.into(), gates, queue: config.queue as usize, queue_timeout })
    }

    /// Takes a slot for the request, waiting in the queue if there is room in it.
    pub async fn enter(&self, source: &KeySource<'_>) -> Result<Slot, ProxyError> {
        let mut hasher = hasher();
        key::write_key(&self.key, source, &mut hasher);
        let key = hasher.finish();
        let gate = self.gates.gate(key);
        if let Ok(permit) = gate.slots.clone().try_acquire_owned() {
            return Ok(self.slot(permit, key));
        }
        if self.queue == 0 {
            drop(gate);
            self.gates.forget_if_idle(key);
            return Err(too_busy());
        }
        // Join the queue only while it has room; leave it however the wait ends.
        if gate.waiting.fetch_add(1, Ordering::AcqRel) >= self.queue {
            gate.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(too_busy());
        }
        let waited = tokio::time::timeout(self.queue_timeout, gate.slots.clone().acquire_owned()).await;
        gate.waiting.fetch_sub(1, Ordering::AcqRel);
        drop(gate);
        match waited {
            Ok(Ok(permit)) => Ok(self.slot(permit, key)),
            _ => {
                self.gates.forget_if_idle(key);
                Err(too_busy())
            }
        }
    }

    fn slot(&self, permit: OwnedSemaphorePermit, key: u64) -> Slot {
        Slot { permit: Some(permit), gates: self.gates.clone(), key }
    }

    /// Whether entering may wait (so the caller boxes the wait, keeping its own future small).
    pub fn may_wait(&self) -> bool {
        self.queue > 0
    }

    /// `enter` without waiting: `None` when the request would have to queue.
    pub fn try_enter(&self, source: &KeySource<'_>) -> Option<Result<Slot, ProxyError>> {
        let mut hasher = hasher();
        key::write_key(&self.key, source, &mut hasher);
        let key = hasher.finish();
        let gate = self.gates.gate(key);
        let taken = gate.slots.clone().try_acquire_owned();
        drop(gate);
        match taken {
            Ok(permit) => Some(Ok(self.slot(permit, key))),
            Err(_) if self.queue == 0 => {
                self.gates.forget_if_idle(key);
                Some(Err(too_busy()))
            }
            Err(_) => None,
        }
    }
}

fn too_busy() -> ProxyError {
    ProxyError::TooBusy
}

impl Gates {
    fn new(max: usize) -> Gates {
        Gates { max, shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect() }
    }

    fn gate(&self, key: u64) -> Arc<Gate> {
        let mut shard = self.shards[(key >> 60) as usize % SHARDS].lock().unwrap_or_else(|e| e.into_inner());
        shard
            .entry(key)
            .or_insert_with(|| {
                Arc::new(Gate { slots: Arc::new(Semaphore::new(self.max)), waiting: AtomicUsize::new(0) })
            })
            .clone()
    }

    /// Forgets `key` if nothing of it is in flight or waiting (and nobody holds its gate).
    fn forget_if_idle(&self, key: u64) {
        let mut shard = self.shards[(key >> 60) as usize % SHARDS].lock().unwrap_or_else(|e| e.into_inner());
        let idle = shard.get(&key).is_some_and(|gate| {
            Arc::strong_count(gate) == 1
                && gate.slots.available_permits() == self.max
                && gate.waiting.load(Ordering::Acquire) == 0
        });
        if idle {
            shard.remove(&key);
        }
    }

    /// How many keys are held.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets keys with nothing in flight and nobody waiting; returns how many remain.
    pub fn sweep(&self) -> usize {
        let mut left = 0;
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            shard.retain(|_, gate| {
                Arc::strong_count(gate) > 1
                    || gate.slots.available_permits() < self.max
                    || gate.waiting.load(Ordering::Acquire) > 0
            });
            left += shard.len();
        }
        left
    }

    /// Requests in flight, over all keys.
    pub fn in_flight(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let shard = s.lock().unwrap_or_else(|e| e.into_inner());
                shard.values().map(|g| self.max - g.slots.available_permits()).sum::<usize>()
            })
            .sum()
    }
}

fn hasher() -> impl Hasher {
    static STATE: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
    STATE.get_or_init(Default::default).build_hasher()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_forgotten_when_their_last_slot_is_given_back() {
        let gates = Arc::new(Gates::new(1));
        let policy =
            ConcurrencyPolicy { key: Box::new([]), gates: gates.clone(), queue: 0, queue_timeout: Duration::ZERO };
        let slots: Vec<Slot> = (0..1000u64)
            .map(|k| {
                let gate = gates.gate(k);
                let permit = gate.slots.clone().try_acquire_owned().unwrap();
                drop(gate);
                policy.slot(permit, k)
            })
            .collect();
        assert_eq!(gates.len(), 1000, "one entry per key in flight");
        drop(slots);
        assert!(gates.is_empty(), "a flood of distinct keys leaves nothing behind");
    }
}
