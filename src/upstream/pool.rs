//! Per-worker pools of idle keep-alive upstream connections.
//!
//! Each worker thread has its own pool (a thread-local), so taking and returning a connection is
//! never contended. Connections are reused last-in first-out: the warmest connection serves the
//! next request, and the coldest ones age out. A connection returns to the pool only when its
//! response body was read to the end (`h1::Body` puts it back); anything else closes it. An idle
//! HTTP/1.1 connection is only its socket: no task, no buffer.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

use crate::proxy::body::UpstreamBody;
use crate::transport::clock;

use super::PoolSettings;
use super::h1::Conn;

/// An HTTP/2 connection: shared by every request to its endpoint on this worker.
pub type Sender2 = hyper::client::conn::http2::SendRequest<UpstreamBody>;

struct Idle {
    conn: Conn,
    since_ms: u64,
    max_idle_ms: u64,
}

#[derive(Default)]
struct Pool {
    idle: HashMap<u64, VecDeque<Idle>, BuildHasherDefault<EndpointIdHasher>>,
    /// HTTP/2 endpoints: one live connection each.
    shared: HashMap<u64, Sender2, BuildHasherDefault<EndpointIdHasher>>,
}

/// Endpoint ids are small distinct counters from the registry: they are their own hash, and a
/// general-purpose hash of them would only cost time on every request.
#[derive(Default)]
struct EndpointIdHasher(u64);

impl Hasher for EndpointIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

thread_local! {
    static POOL: RefCell<Pool> = RefCell::new(Pool::default());
}

/// Keeps `conn`, whose last response ended cleanly, for the next request to endpoint `key`.
pub fn put(key: u64, conn: Conn, settings: PoolSettings) {
    let max = settings.max_idle_per_endpoint;
    if max == 0 {
        return;
    }
    let idle = Idle { conn, since_ms: clock::now_ms(), max_idle_ms: settings.idle_timeout.as_millis() as u64 };
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        let list = pool.idle.entry(key).or_default();
        // Full: the coldest connection makes room for the warm one just released.
        if list.len() >= max {
            list.pop_front();
        }
        list.push_back(idle);
    });
}

/// Takes the most recently used idle connection to endpoint `key` that is still open, if any.
pub fn take(key: u64) -> Option<Conn> {
    let now = clock::now_ms();
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        let list = pool.idle.get_mut(&key)?;
        while let Some(mut idle) = list.pop_back() {
            if now.saturating_sub(idle.since_ms) >= idle.max_idle_ms || !idle.conn.is_idle_open() {
                continue;
            }
            return Some(idle.conn.reuse());
        }
        None
    })
}

/// This worker's HTTP/2 connection to endpoint `key`, if it is still open.
pub fn take_shared(key: u64) -> Option<Sender2> {
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        match pool.shared.get(&key) {
            Some(sender) if !sender.is_closed() => Some(sender.clone()),
            Some(_) => {
                pool.shared.remove(&key);
                None
            }
            None => None,
        }
    })
}

/// Forgets this worker's HTTP/2 connection to endpoint `key` (it no longer takes streams).
pub fn drop_shared(key: u64) {
    POOL.with(|pool| {
        pool.borrow_mut().shared.remove(&key);
    });
}

/// Keeps an HTTP/2 connection for the next requests to endpoint `key`.
pub fn put_shared(key: u64, sender: Sender2) {
    POOL.with(|pool| {
        pool.borrow_mut().shared.insert(key, sender);
    });
}

/// Closes connections idle for longer than their pool's `idle_timeout` or already closed by the
/// upstream. Called by the worker's tick.
pub fn purge() {
    let now = clock::now_ms();
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        pool.idle.retain(|_, list| {
            list.retain_mut(|idle| now.saturating_sub(idle.since_ms) < idle.max_idle_ms && idle.conn.is_idle_open());
            !list.is_empty()
        });
        pool.shared.retain(|_, sender| !sender.is_closed());
    });
}

/// Drops every pooled connection of this thread (worker shutdown).
pub fn clear() {
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        pool.idle.clear();
        pool.shared.clear();
    });
}

/// Idle connections in this thread's pool, per endpoint key (for tests and the admin view).
pub fn idle_count(key: u64) -> usize {
    POOL.with(|pool| pool.borrow().idle.get(&key).map_or(0, VecDeque::len))
}
