//! What an endpoint's past requests say about it: passive health (outlier ejection) and latency.
//!
//! Both live in the endpoint's state, shared by every worker and kept across reloads while the
//! endpoint stays in the config.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Passive health: consecutive failures eject an endpoint for a while, longer each time.
#[derive(Default)]
pub struct Health {
    consecutive_failures: AtomicU32,
    /// Until when (coarse clock, ms) the endpoint is ejected; 0 = never ejected.
    ejected_until_ms: AtomicU64,
    /// Ejections so far; the next one lasts longer. Reset by a success after an ejection.
    ejections: AtomicU32,
}

/// The settings of passive health, per upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierSettings {
    /// Failures in a row that eject (0: passive health off).
    pub consecutive_failures: u32,
    pub base_ejection_ms: u64,
    pub max_ejection_ms: u64,
    /// The most endpoints of the upstream ejected at once, in percent (at least one stays).
    pub max_ejected_percent: u32,
}

impl Health {
    pub fn is_available(&self, now_ms: u64) -> bool {
        self.ejected_until_ms.load(Ordering::Relaxed) <= now_ms
    }

    /// Until when the endpoint is (or was, last time) ejected; 0 if never.
    pub fn ejected_until_ms(&self) -> u64 {
        self.ejected_until_ms.load(Ordering::Relaxed)
    }

    pub fn is_ejected(&self, now_ms: u64) -> bool {
        !self.is_available(now_ms)
    }

    pub fn eject_until(&self, until_ms: u64) {
        self.ejected_until_ms.store(until_ms, Ordering::Relaxed);
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Ordering::Relaxed)
    }

    /// A request succeeded (a response other than a 5xx).
    pub fn success(&self) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
        if self.ejections.load(Ordering::Relaxed) != 0 && self.ejected_until_ms.load(Ordering::Relaxed) == 0 {
            self.ejections.store(0, Ordering::Relaxed);
        }
    }

    /// A request failed. Returns true when this failure ejected the endpoint; `may_eject` says
    /// whether the upstream's cap on ejected endpoints allows one more.
    pub fn failure(&self, settings: &OutlierSettings, now_ms: u64, may_eject: impl FnOnce() -> bool) -> bool {
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if settings.consecutive_failures == 0 || failures < settings.consecutive_failures || self.is_ejected(now_ms) {
            return false;
        }
        if !may_eject() {
            return false;
        }
        let times = self.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let duration = settings.base_ejection_ms.saturating_mul(u64::from(times)).min(settings.max_ejection_ms);
        self.ejected_until_ms.store(now_ms + duration, Ordering::Relaxed);
        self.consecutive_failures.store(0, Ordering::Relaxed);
        true
    }

    /// After an ejection ends, the endpoint is back on probation: one more failure run ejects it
    /// for longer; a success forgets the past ejections. Returns when the ejection ended.
    pub fn end_ejection_if_over(&self, now_ms: u64) -> Option<u64> {
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        if until != 0 && until <= now_ms {
            self.ejected_until_ms.store(0, Ordering::Relaxed);
            return Some(until);
        }
        None
    }
}

/// Peak-EWMA latency: an exponentially weighted moving average of response times that jumps up
/// at once to a slower response and decays back over `TAU`.
#[derive(Default)]
pub struct Latency {
    /// Nanoseconds, as f64 bits; 0 = nothing measured yet.
    ewma_bits: AtomicU64,
    updated_ms: AtomicU64,
}

const TAU_MS: f64 = 10_000.0;
/// What an endpoint without measurements is assumed to take (so new endpoints get tried).
const DEFAULT_COST_NS: f64 = 1_000_000.0;

impl Latency {
    pub fn observe(&self, rtt_ns: u64, now_ms: u64) {
        let rtt = rtt_ns as f64;
        let old = f64::from_bits(self.ewma_bits.load(Ordering::Relaxed));
        let elapsed = now_ms.saturating_sub(self.updated_ms.load(Ordering::Relaxed)) as f64;
        let new = if old == 0.0 || rtt > old {
            rtt
        } else {
            let w = (-elapsed / TAU_MS).exp();
            old * w + rtt * (1.0 - w)
        };
        self.ewma_bits.store(new.to_bits(), Ordering::Relaxed);
        self.updated_ms.store(now_ms, Ordering::Relaxed);
    }

    /// The current estimate (decayed towards nothing-known when not updated for long).
    pub fn cost(&self, _now_ms: u64) -> f64 {
        match f64::from_bits(self.ewma_bits.load(Ordering::Relaxed)) {
            v if v > 0.0 => v,
            _ => DEFAULT_COST_NS,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTINGS: OutlierSettings = OutlierSettings {
        consecutive_failures: 3,
        base_ejection_ms: 1000,
        max_ejection_ms: 2500,
        max_ejected_percent: 50,
    };

    #[test]
    fn consecutive_failures_eject_for_longer_each_time() {
        let h = Health::default();
        assert!(!h.failure(&SETTINGS, 0, || true));
        h.success();
        assert!(!h.failure(&SETTINGS, 0, || true));
        assert!(!h.failure(&SETTINGS, 0, || true));
        assert!(h.failure(&SETTINGS, 100, || true), "third in a row");
        assert!(h.is_ejected(1099) && h.is_available(1100));
        h.end_ejection_if_over(1100);
        for _ in 0..2 {
            h.failure(&SETTINGS, 1200, || true);
        }
        assert!(h.failure(&SETTINGS, 1200, || true));
        assert!(h.is_ejected(3199) && h.is_available(3200), "twice as long");
        h.end_ejection_if_over(3200);
        for _ in 0..3 {
            h.failure(&SETTINGS, 4000, || true);
        }
        assert!(h.is_ejected(6499) && h.is_available(6500), "capped at max_ejection");
        h.end_ejection_if_over(6500);
        h.success();
        for _ in 0..3 {
            h.failure(&SETTINGS, 7000, || true);
        }
        assert!(h.is_available(8000), "a success after an ejection forgets the past ones");
    }

    #[test]
    fn the_cap_can_refuse_an_ejection() {
        let h = Health::default();
        for _ in 0..5 {
            assert!(!h.failure(&SETTINGS, 0, || false));
        }
        assert!(h.is_available(0));
    }

    #[test]
    fn latency_jumps_up_and_decays_down() {
        let l = Latency::default();
        assert_eq!(l.cost(0), DEFAULT_COST_NS);
        l.observe(10_000_000, 0);
        l.observe(1_000_000, 10_000);
        let after_tau = l.cost(10_000);
        assert!(after_tau < 10_000_000.0 && after_tau > 1_000_000.0, "{after_tau}");
        l.observe(50_000_000, 10_001);
        assert_eq!(l.cost(10_001), 50_000_000.0, "a slow response counts at once");
    }
}
