//! Retries: which failures may be tried again, how long to wait, and the budget that keeps retries
//! from multiplying an outage.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::{Method, StatusCode};

use crate::transport::clock;

/// An upstream's retry settings.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Tries after the first (0: no retries).
    pub attempts: u32,
    pub on_connect_failure: bool,
    /// The connection failed after the request was (maybe) sent: idempotent methods only.
    pub on_reset: bool,
    /// No response head within the upstream's `response_header` timeout: idempotent methods only.
    pub on_timeout: bool,
    /// Response statuses that are tried again (e.g. 502, 503, 504): idempotent methods only.
    pub on_statuses: Vec<StatusCode>,
    /// Retry POST and PATCH too (only when the service is known to de-duplicate).
    pub non_idempotent: bool,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// The largest request body kept to be sent again.
    pub max_body: u64,
}

impl RetryPolicy {
    pub fn none() -> RetryPolicy {
        RetryPolicy {
            attempts: 0,
            on_connect_failure: false,
            on_reset: false,
            on_timeout: false,
            on_statuses: Vec::new(),
            non_idempotent: false,
            backoff_base: Duration::ZERO,
            backoff_max: Duration::ZERO,
            max_body: 0,
        }
    }

    /// Whether a request with this method may be tried again after it may have reached the
    /// service (a reset, a timeout, a status). A connect failure is always safe to retry.
    pub fn may_resend(&self, method: &Method) -> bool {
        self.non_idempotent || method.is_idempotent()
    }

    /// The wait before try `n` (1 = the first retry): exponential, with full jitter.
    pub fn backoff(&self, n: u32) -> Duration {
        let ceiling = self.backoff_base.saturating_mul(1u32 << n.saturating_sub(1).min(16)).min(self.backoff_max);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(if nanos == 0 { 0 } else { fastrand::u64(0..=nanos) })
    }
}

/// Retries are at most `percent`% of the requests of the last 10 s (and at least
/// `min_per_second` per second), so a failing upstream gets a bounded extra load rather than every
/// request times `attempts`.
///
/// Counted without a lock (every request counts itself here): two 10-second windows per counter,
/// each slot tagged with its window. A count that races a window change may be lost; the budget
/// is a bound on amplification, not an exact ledger.
pub struct RetryBudget {
    percent: u64,
    min_per_window: u64,
    requests: [Window; 2],
    retries: [Window; 2],
}

#[derive(Default)]
struct Window {
    /// Which 10-second window (of the coarse clock) `count` belongs to.
    index: AtomicU64,
    count: AtomicU64,
}

const WINDOW_MS: u64 = 10_000;

impl RetryBudget {
    pub fn new(percent: u32, min_per_second: u32) -> RetryBudget {
        RetryBudget {
            percent: u64::from(percent),
            min_per_window: u64::from(min_per_second) * WINDOW_MS / 1000,
            requests: Default::default(),
            retries: Default::default(),
        }
    }

    /// Counts a request (its first try).
    pub fn request(&self) {
        bump(&self.requests, clock::now_ms() / WINDOW_MS);
    }

    /// Takes one retry from the budget; `false` when it is spent.
    pub fn try_retry(&self) -> bool {
        self.try_retry_at(clock::now_ms())
    }

    fn try_retry_at(&self, now_ms: u64) -> bool {
        let window = now_ms / WINDOW_MS;
        // The last 10 s: this window and the share of the previous one still inside them.
        let into = (now_ms % WINDOW_MS) as f64 / WINDOW_MS as f64;
        let last_10s = |counts: &[Window; 2]| {
            let (current, previous) = read(counts, window);
            current as f64 + previous as f64 * (1.0 - into)
        };
        let allowed = (last_10s(&self.requests) * self.percent as f64 / 100.0).max(self.min_per_window as f64);
        if last_10s(&self.retries) + 1.0 > allowed {
            return false;
        }
        bump(&self.retries, window);
        true
    }
}

fn bump(counts: &[Window; 2], window: u64) {
    let slot = &counts[(window & 1) as usize];
    let seen = slot.index.load(Ordering::Relaxed);
    if seen != window && slot.index.compare_exchange(seen, window, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
        slot.count.store(0, Ordering::Relaxed);
    }
    slot.count.fetch_add(1, Ordering::Relaxed);
}

/// The counts of window `window` and of the one before it.
fn read(counts: &[Window; 2], window: u64) -> (u64, u64) {
    let of = |w: u64| {
        let slot = &counts[(w & 1) as usize];
        if slot.index.load(Ordering::Relaxed) == w { slot.count.load(Ordering::Relaxed) } else { 0 }
    };
    (of(window), window.checked_sub(1).map_or(0, of))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_caps_retries_at_a_share_of_requests() {
        let budget = RetryBudget::new(20, 0);
        let now = 1_000_000;
        for _ in 0..100 {
            bump(&budget.requests, now / WINDOW_MS);
        }
        let granted = (0..100).filter(|_| budget.try_retry_at(now)).count();
        assert_eq!(granted, 20);
        // Two windows later, the old traffic no longer counts.
        assert!(!budget.try_retry_at(now + 2 * WINDOW_MS));
    }

    #[test]
    fn a_minimum_lets_quiet_upstreams_retry() {
        let budget = RetryBudget::new(20, 1);
        let granted = (0..100).filter(|_| budget.try_retry_at(5_000)).count();
        assert_eq!(granted, 10, "1 per second over the 10 s window");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let mut p = RetryPolicy::none();
        p.backoff_base = Duration::from_millis(25);
        p.backoff_max = Duration::from_millis(250);
        for _ in 0..100 {
            assert!(p.backoff(1) <= Duration::from_millis(25));
            assert!(p.backoff(3) <= Duration::from_millis(100));
            assert!(p.backoff(30) <= Duration::from_millis(250));
        }
        assert!(p.may_resend(&Method::GET) && p.may_resend(&Method::PUT) && !p.may_resend(&Method::POST));
    }
}
