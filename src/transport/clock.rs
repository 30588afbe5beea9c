//! A coarse clock for connection deadlines and pool ages: one atomic load instead of a clock read.
//!
//! Every worker's tick refreshes it; readings are at most one tick old. Latency measurements that
//! need precision use `Instant` directly; this clock is only for "has it been N seconds".

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

static ORIGIN: OnceLock<Instant> = OnceLock::new();
static NOW_MS: AtomicU64 = AtomicU64::new(0);

fn origin() -> Instant {
    *ORIGIN.get_or_init(Instant::now)
}

/// Milliseconds since the process's clock origin, as of the last tick.
#[inline]
pub fn now_ms() -> u64 {
    NOW_MS.load(Ordering::Relaxed)
}

/// Reads the real clock and publishes it; returns the fresh reading.
pub fn tick() -> u64 {
    let ms = origin().elapsed().as_millis() as u64;
    NOW_MS.fetch_max(ms, Ordering::Relaxed);
    ms
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_moves_forward_and_never_back() {
        let a = tick();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let b = tick();
        assert!(b >= a + 5);
        assert!(now_ms() >= b);
    }
}
