//! `sync: batch`: decide on this node, share the counts through Redis every `sync_interval`.
//!
//! Requests are decided by the node's own counters (no round trip on the request path). Every
//! interval, a flusher thread sends each key's admitted count since the last flush to Redis
//! (`CHARGE_LUA`: added unconditionally — those requests were admitted), and Redis answers with
//! the key's state for the whole fleet, which replaces the node's (plus what the node admitted
//! while the flush was in flight). So each node sees the others' traffic at most one interval and
//! one round trip late.
//!
//! The price, documented in docs/rate-limiting.md: within one interval, every node may admit what
//! it believes is left, so the fleet may admit up to (nodes − 1) × (what one node admits in an
//! interval) more than the limit — and no more, since every admitted request is charged to Redis
//! at the next flush and the overshoot is paid back by refusing later.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use super::algorithm::Algorithm;
use super::local::LocalStore;
use super::redis::{RedisBackend, script_args};
use crate::background::Background;

/// Adds `ARGV[2]` admitted requests to a key's state and returns the state after.
pub const CHARGE_LUA: &str = r#"
-- KEYS[1]: the state, as DECIDE_LUA keeps it. ARGV[1]: now (µs) or 0 for the server's clock.
-- ARGV[2]: the count to add. ARGV[3..5]: the limit's kind and parameters, as for DECIDE_LUA.
local now = tonumber(ARGV[1])
if now == 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local n, kind, a, b = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local s0, s1, s2 = 0, 0, 0
local raw = redis.call('GET', KEYS[1])
if raw then
  local x, y, z = string.match(raw, '^(%d+) (%d+) (%d+)$')
  if x then s0, s1, s2 = tonumber(x), tonumber(y), tonumber(z) end
end
local idle
if kind == 1 then
  s0 = math.max(s0, now) + n * a
  idle = s0
elseif kind == 4 then
  if s0 ~= a then s0, s1, s2 = a, 0, 0 end
  s1 = s1 + n
  idle = a
else
  local index = math.floor(now / a) + 1
  if s0 ~= index then
    if kind == 3 and s0 + 1 == index then s0, s1, s2 = index, 0, s1 else s0, s1, s2 = index, 0, 0 end
  end
  s1 = s1 + n
  if kind == 2 then idle = s0 * a else idle = (s0 + 1) * a end
end
local ttl = math.max(1, math.ceil((idle - now) / 1000))
redis.call('SET', KEYS[1], string.format('%.0f %.0f %.0f', s0, s1, s2), 'PX', ttl)
return {s0, s1, s2}
"#;

/// One policy's batched counting: what was admitted since the last flush, per limit and key.
pub struct Batch {
    backend: Arc<RedisBackend>,
    /// Per limit: its local counters and algorithm.
    limits: Box<[(Arc<LocalStore>, Algorithm)]>,
    pending: Mutex<HashMap<(usize, u64), Pending>>,
    /// Flushes that make up `SYNC_AFTER_LAST_REQUEST`.
    quiet_flushes: u32,
    charge: redis::Script,
    flusher: Mutex<Option<Background>>,
}

struct Pending {
    redis_key: String,
    count: u64,
    /// Flushes since this node last saw a request of the key.
    quiet: u32,
}

/// How long a node keeps a key in sync after its last request of it.
const SYNC_AFTER_LAST_REQUEST: Duration = Duration::from_secs(2);

impl Batch {
    /// Starts the flusher, which runs until the batch is dropped.
    pub fn start(
        backend: Arc<RedisBackend>,
        limits: Box<[(Arc<LocalStore>, Algorithm)]>,
        interval: Duration,
    ) -> std::io::Result<Arc<Batch>> {
        let batch = Arc::new(Batch {
            backend,
            limits,
            pending: Mutex::new(HashMap::new()),
            quiet_flushes: (SYNC_AFTER_LAST_REQUEST.as_millis() / interval.as_millis().max(1)).max(2) as u32,
            charge: redis::Script::new(CHARGE_LUA),
            flusher: Mutex::new(None),
        });
        let weak: Weak<Batch> = Arc::downgrade(&batch);
        let flusher = Background::spawn("gatehouse-redis-sync", move |mut stop| async move {
            let mut every = tokio::time::interval(interval);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = &mut stop => break,
                    _ = every.tick() => {
                        let Some(batch) = weak.upgrade() else { break };
                        batch.flush().await;
                    }
                }
            }
        })?;
        *batch.flusher.lock().unwrap_or_else(|e| e.into_inner()) = Some(flusher);
        Ok(batch)
    }

    /// Notes a request of limit `limit` for the key `local` (its local hash): `admitted` ones are
    /// charged to Redis at the next flush; refused ones only keep the key in sync. `redis_key`
    /// makes the Redis key the first time the key is seen in this interval.
    pub fn record(&self, limit: usize, local: u64, admitted: bool, redis_key: impl FnOnce() -> String) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let entry =
            pending.entry((limit, local)).or_insert_with(|| Pending { redis_key: redis_key(), count: 0, quiet: 0 });
        entry.count += u64::from(admitted);
        entry.quiet = 0;
    }

    /// Sends what was admitted since the last flush, and takes the fleet's state back.
    pub async fn flush(self: &Arc<Self>) {
        let batch: Vec<((usize, u64), Pending)> = {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            pending.drain().collect()
        };
        if batch.is_empty() || !self.backend.available() {
            // While Redis is out the node's own counters decide; their counts are not replayed.
            return;
        }
        let now = super::now_ns();
        // One call per key, all in flight at once: they pipeline on the connection.
        let mut calls = tokio::task::JoinSet::new();
        for ((limit, local), p) in batch {
            let this = self.clone();
            calls.spawn(async move {
                let (store, algorithm) = &this.limits[limit];
                let args = script_args(algorithm, now);
                let keys = [p.redis_key];
                let Ok(reply) = this.backend.run(&this.charge, &keys, p.count, &args).await else { return };
                let [s0, s1, s2] = reply[..] else { return };
                let global = algorithm.from_script_state([s0, s1, s2].map(|v| u64::try_from(v).unwrap_or(0)));
                let mut pending = this.pending.lock().unwrap_or_else(|e| e.into_inner());
                // What this node admitted while the flush was in flight is counted on top.
                let since = pending.get(&(limit, local)).map_or(0, |p| p.count);
                store.replace(local, global, since, super::now_ns());
                // A key stays in sync for a while after its last request here, so this node learns
                // what the others admit meanwhile even while it sees no request of the key.
                if p.quiet < this.quiet_flushes {
                    let [redis_key] = keys;
                    pending.entry((limit, local)).or_insert(Pending { redis_key, count: 0, quiet: p.quiet + 1 });
                }
            });
        }
        while calls.join_next().await.is_some() {}
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        // The flusher holds only a weak reference; stop its thread without joining from itself.
        if let Some(mut flusher) = self.flusher.lock().unwrap_or_else(|e| e.into_inner()).take() {
            std::thread::spawn(move || flusher.stop());
        }
    }
}
