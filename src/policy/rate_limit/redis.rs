//! The Redis backend: counters shared by every node of a fleet.
//!
//! One round trip decides every limit of a request: a Lua script (loaded once, then called by its
//! SHA with EVALSHA) reads the limits' states, decides them with the same arithmetic as
//! `algorithm.rs` (in microseconds, on the Redis server's clock, so nodes' clocks do not matter),
//! and writes the new states only when all of them admit the request. The keys of one request's
//! limits share a hash tag, so in a Redis Cluster they live in one slot and one script can touch
//! them all.
//!
//! Each worker thread has its own multiplexed connection, driven by its own runtime: requests
//! pipeline on it, and no request waits on another thread. A call that fails or takes longer than
//! `timeout` marks Redis as down for `retry_after`, during which requests go straight to the
//! policy's failure mode instead of waiting for a timeout each; the first call after that tries
//! again. Both transitions are logged.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;

use super::algorithm::{Algorithm, Decision};
use crate::config::RedisConfig;
use crate::transport::clock;

/// Decides the limits of one request. See the module doc for the layout of keys and arguments.
pub const DECIDE_LUA: &str = r#"
-- KEYS[i]: limit i's state, "a b c" (three integers), or absent (a fresh key).
-- ARGV[1]: now in microseconds since the epoch, or 0 for the server's own clock.
-- ARGV[2]: 1 to decide, 0 to only look (nothing is written).
-- ARGV[3i], ARGV[3i+1], ARGV[3i+2]: limit i's kind (1 token bucket, 2 fixed window,
--   3 sliding window, 4 calendar month) and its two parameters: interval and burst, window and
--   limit, or the month's end and limit (µs, count).
-- Returns {refused limit (1-based) or 0, then per limit: allowed, remaining, reset, retry}.
local now = tonumber(ARGV[1])
if now == 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local floor, min, max = math.floor, math.min, math.max

local function sliding_retry(current, previous, elapsed, w, limit)
  if current < limit and previous > 0 then
    local t = w - min(floor((limit - 1 - current) * w / previous), w)
    if t < w then return max(t - elapsed, 1) end
  end
  local to_next = w - elapsed
  if current == 0 then return to_next end
  return to_next + w - min(floor(max(limit - 1, 0) * w / current), w)
end

local out, states, refused = {0}, {}, 0
for i = 1, #KEYS do
  local kind, a, b = tonumber(ARGV[3*i]), tonumber(ARGV[3*i+1]), tonumber(ARGV[3*i+2])
  local s0, s1, s2 = 0, 0, 0
  local raw = redis.call('GET', KEYS[i])
  if raw then
    local x, y, z = string.match(raw, '^(%d+) (%d+) (%d+)$')
    if x then s0, s1, s2 = tonumber(x), tonumber(y), tonumber(z) end
  end
  local allowed, remaining, reset, retry, idle = 0, 0, 0, 0, 0
  if kind == 1 then
    local tolerance = a * b
    local tat = max(s0, now)
    local ahead = tat + a - now
    if ahead > tolerance then
      reset, retry = tat - now, ahead - tolerance
    else
      allowed, remaining, reset = 1, floor((tolerance - ahead) / a), ahead
      s0 = tat + a
    end
    idle = s0
  elseif kind == 4 then
    -- a: when the current calendar month ends; it names the month.
    if s0 ~= a then s0, s1, s2 = a, 0, 0 end
    reset = max(a - now, 1)
    if s1 >= b then retry = reset else s1 = s1 + 1; allowed, remaining = 1, b - s1 end
    idle = a
  else
    local index = floor(now / a) + 1
    if s0 ~= index then
      if kind == 3 and s0 + 1 == index then s0, s1, s2 = index, 0, s1 else s0, s1, s2 = index, 0, 0 end
    end
    local elapsed = now % a
    reset = a - elapsed
    if kind == 2 then
      if s1 >= b then retry = reset else s1 = s1 + 1; allowed, remaining = 1, b - s1 end
      idle = s0 * a
    else
      local used = s2 * (a - elapsed) + s1 * a
      if used + a > b * a then
        retry = sliding_retry(s1, s2, elapsed, a, b)
      else
        allowed, remaining = 1, floor((b * a - used - a) / a)
        s1 = s1 + 1
      end
      idle = (s0 + 1) * a
    end
  end
  if allowed == 0 and refused == 0 then refused = i end
  states[i] = {s0, s1, s2, idle}
  local n = #out
  out[n + 1], out[n + 2], out[n + 3], out[n + 4] = allowed, remaining, reset, retry
end
if refused == 0 and ARGV[2] == '1' then
  for i = 1, #KEYS do
    local s = states[i]
    local ttl = max(1, math.ceil((s[4] - now) / 1000))
    redis.call('SET', KEYS[i], string.format('%.0f %.0f %.0f', s[1], s[2], s[3]), 'PX', ttl)
  end
end
out[1] = refused
return out
"#;

/// Gives back what `DECIDE_LUA` took (a limit decided in a later call refused the request).
pub const REFUND_LUA: &str = r#"
local now = tonumber(ARGV[1])
if now == 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
for i = 1, #KEYS do
  local kind, a = tonumber(ARGV[3*i]), tonumber(ARGV[3*i+1])
  local raw = redis.call('GET', KEYS[i])
  if raw then
    local x, y, z = string.match(raw, '^(%d+) (%d+) (%d+)$')
    if x then
      local s0, s1, s2 = tonumber(x), tonumber(y), tonumber(z)
      if kind == 1 then
        s0 = math.max(s0 - a, 0)
      elseif kind == 4 then
        if s0 == a then s1 = math.max(s1 - 1, 0) end
      elseif s0 == math.floor(now / a) + 1 then
        s1 = math.max(s1 - 1, 0)
      end
      redis.call('SET', KEYS[i], string.format('%.0f %.0f %.0f', s0, s1, s2), 'KEEPTTL')
    end
  end
end
return 1
"#;

/// A limit's kind and parameters as the scripts take them at `now_ns`: microseconds and counts.
/// A calendar month is named by its end, which the gateway computes (Lua has no calendar).
pub fn script_args(algorithm: &Algorithm, now_ns: u64) -> [u64; 3] {
    let us = |ns: u64| (ns / 1000).max(1);
    match *algorithm {
        Algorithm::TokenBucket { interval_ns, burst } => [1, us(interval_ns), burst],
        Algorithm::FixedWindow { window_ns, limit } => [2, us(window_ns), limit],
        Algorithm::SlidingWindow { window_ns, limit } => [3, us(window_ns), limit],
        Algorithm::CalendarMonth { limit } => [4, us(super::algorithm::month_of(now_ns).1), limit],
    }
}

/// Reads `DECIDE_LUA`'s answer: the refused limit (if any) and each limit's decision.
pub fn parse_reply(reply: &[i64], limits: usize) -> Option<(Option<usize>, Vec<Decision>)> {
    if reply.len() != 1 + 4 * limits {
        return None;
    }
    let refused = usize::try_from(reply[0]).ok()?;
    if refused > limits {
        return None;
    }
    let ns = |us: i64| u64::try_from(us).unwrap_or(0).saturating_mul(1000);
    let decisions = reply[1..]
        .chunks_exact(4)
        .map(|c| Decision {
            allowed: c[0] == 1,
            remaining: u64::try_from(c[1]).unwrap_or(0),
            reset_ns: ns(c[2]),
            retry_after_ns: ns(c[3]),
        })
        .collect();
    Some((refused.checked_sub(1), decisions))
}

/// The connection settings of the top-level `redis`, with the fleet-wide state of its health.
pub struct RedisBackend {
    id: u64,
    target: Target,
    timeout: Duration,
    retry_after_ms: u64,
    prefix: Box<str>,
    decide: redis::Script,
    refund: redis::Script,
    down_until_ms: AtomicU64,
    healthy: AtomicBool,
}

enum Target {
    Single(redis::Client),
    // Boxed: one per backend, and the enum should not be as large as its largest variant.
    Cluster(Box<redis::cluster::ClusterClient>),
}

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

thread_local! {
    /// This worker's connection to each backend, by backend id.
    static CONNS: RefCell<Vec<(u64, Conn)>> = const { RefCell::new(Vec::new()) };
}

impl RedisBackend {
    pub fn new(config: &RedisConfig) -> Result<RedisBackend, (String, String)> {
        static IDS: AtomicU64 = AtomicU64::new(1);
        let connect = config.connect_timeout.get();
        let timeout = config.timeout.get();
        let target = match (&config.url, config.cluster.is_empty()) {
            (Some(url), true) => Target::Single(
                redis::Client::open(url.as_str()).map_err(|e| ("url".into(), format!("invalid Redis URL: {e}")))?,
            ),
            (None, false) => Target::Cluster(Box::new(
                ClusterClientBuilder::new(config.cluster.clone())
                    .connection_timeout(connect)
                    .response_timeout(timeout)
                    .retries(1)
                    .build()
                    .map_err(|e| ("cluster".into(), format!("invalid Redis Cluster nodes: {e}")))?,
            )),
            (Some(_), false) => return Err(("url".into(), "give either `url` or `cluster`, not both".into())),
            (None, true) => return Err(("url".into(), "give the `url` of a Redis, or `cluster` nodes".into())),
        };
        if timeout < Duration::from_millis(1) {
            return Err(("timeout".into(), "must be at least 1ms".into()));
        }
        Ok(RedisBackend {
            id: IDS.fetch_add(1, Ordering::Relaxed),
            target,
            timeout,
            retry_after_ms: config.retry_after.get().as_millis() as u64,
            prefix: config.key_prefix.as_str().into(),
            decide: redis::Script::new(DECIDE_LUA),
            refund: redis::Script::new(REFUND_LUA),
            down_until_ms: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Whether to try Redis now (false while a recent failure's `retry_after` runs).
    pub fn available(&self) -> bool {
        clock::now_ms() >= self.down_until_ms.load(Ordering::Relaxed)
    }

    /// Runs `DECIDE_LUA` on `keys` with the limits' `args`.
    pub async fn decide(&self, keys: &[String], args: &[u64]) -> Result<Vec<i64>, String> {
        self.run(&self.decide, keys, 1, args).await
    }

    /// Runs `DECIDE_LUA` without writing: what the keys have left.
    pub async fn peek(&self, keys: &[String], args: &[u64]) -> Result<Vec<i64>, String> {
        self.run(&self.decide, keys, 0, args).await
    }

    /// Runs `REFUND_LUA`.
    pub async fn refund(&self, keys: &[String], args: &[u64]) -> Result<Vec<i64>, String> {
        self.run(&self.refund, keys, 1, args).await.map(|_| Vec::new())
    }

    /// Runs one of the scripts with the arguments they all take: `0` (the server's clock),
    /// `second` (the mode, or a count), then `args`. An error or a timeout marks Redis down.
    pub async fn run(
        &self,
        script: &redis::Script,
        keys: &[String],
        second: u64,
        args: &[u64],
    ) -> Result<Vec<i64>, String> {
        let mode = second;
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(key.as_str());
        }
        invocation.arg(0u64).arg(mode);
        for arg in args {
            invocation.arg(*arg);
        }
        let exchange = async {
            let conn = self.connection().await.map_err(|e| e.to_string())?;
            let reply: redis::Value = match conn {
                Conn::Single(mut c) => invocation.invoke_async(&mut c).await,
                Conn::Cluster(mut c) => invocation.invoke_async(&mut c).await,
            }
            .map_err(|e| e.to_string())?;
            Ok::<_, String>(reply)
        };
        let result = match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok(value)) => integers(value),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        };
        match &result {
            Ok(_) => self.succeeded(),
            Err(e) => self.failed(e),
        }
        result
    }

    async fn connection(&self) -> redis::RedisResult<Conn> {
        if let Some(conn) = CONNS.with(|c| c.borrow().iter().find(|(id, _)| *id == self.id).map(|(_, c)| c.clone())) {
            return Ok(conn);
        }
        let conn = match &self.target {
            Target::Single(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.timeout.max(Duration::from_millis(100))))
                    .set_response_timeout(Some(self.timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(self.retry_after_ms.max(10)));
                Conn::Single(ConnectionManager::new_lazy_with_config(client.clone(), config)?)
            }
            Target::Cluster(client) => Conn::Cluster(client.get_async_connection().await?),
        };
        CONNS.with(|c| {
            let mut conns = c.borrow_mut();
            let retired = RETIRED.lock().unwrap_or_else(|e| e.into_inner());
            conns.retain(|(id, _)| !retired.contains(id));
            if !conns.iter().any(|(id, _)| *id == self.id) {
                conns.push((self.id, conn.clone()));
            }
        });
        Ok(conn)
    }

    fn succeeded(&self) {
        if !self.healthy.swap(true, Ordering::Relaxed) {
            tracing::info!("Redis answers again: rate limits use the shared counters");
        }
    }

    fn failed(&self, error: &str) {
        self.down_until_ms.store(clock::tick() + self.retry_after_ms, Ordering::Relaxed);
        if self.healthy.swap(false, Ordering::Relaxed) {
            tracing::warn!(
                "Redis failed ({error}): rate limits use each policy's failure mode, trying again every {} ms",
                self.retry_after_ms
            );
        }
        // Drop this worker's connection: the next try connects afresh.
        CONNS.with(|c| c.borrow_mut().retain(|(id, _)| *id != self.id));
    }
}

/// Backends that were dropped (a reload changed `redis`): workers close their connections to
/// them the next time they look for one.
static RETIRED: std::sync::Mutex<Vec<u64>> = std::sync::Mutex::new(Vec::new());

impl Drop for RedisBackend {
    fn drop(&mut self) {
        RETIRED.lock().unwrap_or_else(|e| e.into_inner()).push(self.id);
    }
}

fn integers(value: redis::Value) -> Result<Vec<i64>, String> {
    match value {
        redis::Value::Array(items) => items
            .into_iter()
            .map(|v| match v {
                redis::Value::Int(n) => Ok(n),
                other => Err(format!("unexpected reply item {other:?}")),
            })
            .collect(),
        redis::Value::Int(n) => Ok(vec![n]),
        other => Err(format!("unexpected reply {other:?}")),
    }
}

/// Which backend this is, for fingerprints of things that use it.
pub fn fingerprint_of(backend: &RedisBackend) -> u64 {
    backend.id
}

/// Shared settings of a backend, as the registry keys them (so connections survive reloads).
pub fn fingerprint(config: &RedisConfig) -> String {
    format!("{config:?}")
}
