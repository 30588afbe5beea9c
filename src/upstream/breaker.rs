//! The circuit breaker of an upstream, and its cap on requests in flight.
//!
//! Closed: requests pass; the share of failures over the last `window` is watched. When it
//! reaches `failure_ratio` (with at least `min_requests` requests seen), the breaker opens: for
//! `open_for`, every request is answered 503 `circuit_open` at once, without touching the
//! upstream, which gets time to recover. Then it is half-open: up to `half_open_requests` requests
//! go through as probes; if they all succeed the breaker closes, if one fails it opens again.
//!
//! The state lives in the registry, so a reload that keeps the upstream keeps its breaker.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// The settings of a breaker.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerSettings {
    pub failure_ratio: f64,
    pub min_requests: u64,
    pub window_ms: u64,
    pub open_ms: u64,
    pub half_open_requests: u64,
    /// Requests in flight at once to the upstream (0: no cap).
    pub max_requests: u64,
}

/// What the breaker is doing, for the admin API and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

pub struct Breaker {
    settings: BreakerSettings,
    inner: Mutex<Inner>,
    in_flight: AtomicU64,
}

struct Inner {
    state: BreakerState,
    /// Closed: counts of the current and previous half-window.
    window: u64,
    requests: [u64; 2],
    failures: [u64; 2],
    /// Open: until when.
    open_until: u64,
    /// Half-open: probes let through, and how many succeeded.
    probes: u64,
    successes: u64,
}

/// Why a request may not go to the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Open,
    Overloaded,
}

/// A request admitted by the breaker: report its outcome with `Breaker::finish`; dropping it
/// unreported counts it as neither (the client went away).
pub struct Ticket {
    probe: bool,
}

impl Breaker {
    pub fn new(settings: BreakerSettings) -> Breaker {
        Breaker {
            settings,
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                window: 0,
                requests: [0; 2],
                failures: [0; 2],
                open_until: 0,
                probes: 0,
                successes: 0,
            }),
            in_flight: AtomicU64::new(0),
        }
    }

    pub fn settings(&self) -> &BreakerSettings {
        &self.settings
    }

    pub fn state(&self, now_ms: u64) -> BreakerState {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        self.advance(&mut inner, now_ms);
        inner.state
    }

    /// Asks to send a request. On `Ok`, the caller must call `finish` with the outcome.
    pub fn admit(&self, now_ms: u64) -> Result<Ticket, Refusal> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        self.advance(&mut inner, now_ms);
        let probe = match inner.state {
            BreakerState::Open => return Err(Refusal::Open),
            BreakerState::HalfOpen if inner.probes >= self.settings.half_open_requests => return Err(Refusal::Open),
            BreakerState::HalfOpen => true,
            BreakerState::Closed => false,
        };
        let max = self.settings.max_requests;
        if max > 0 && self.in_flight.load(Ordering::Acquire) >= max {
            return Err(Refusal::Overloaded);
        }
        if probe {
            inner.probes += 1;
        }
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Ok(Ticket { probe })
    }

    /// Reports how an admitted request went.
    pub fn finish(&self, ticket: Ticket, failed: bool, now_ms: u64) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        self.advance(&mut inner, now_ms);
        match inner.state {
            BreakerState::HalfOpen if ticket.probe => {
                if failed {
                    self.open(&mut inner, now_ms);
                } else {
                    inner.successes += 1;
                    if inner.successes >= self.settings.half_open_requests {
                        inner.state = BreakerState::Closed;
                        inner.requests = [0; 2];
                        inner.failures = [0; 2];
                        tracing::info!("circuit breaker closed: the upstream answers again");
                    }
                }
            }
            BreakerState::Closed => {
                inner.requests[0] += 1;
                inner.failures[0] += u64::from(failed);
                let requests = inner.requests[0] + inner.requests[1];
                let failures = inner.failures[0] + inner.failures[1];
                if requests >= self.settings.min_requests
                    && failures as f64 >= self.settings.failure_ratio * requests as f64
                {
                    self.open(&mut inner, now_ms);
                }
            }
            _ => {}
        }
    }

    /// A ticket whose request never got an outcome (the client went away).
    pub fn abandon(&self, _ticket: Ticket) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    fn open(&self, inner: &mut Inner, now_ms: u64) {
        if inner.state != BreakerState::Open {
            tracing::warn!("circuit breaker open for {} ms: too many failures", self.settings.open_ms);
        }
        inner.state = BreakerState::Open;
        inner.open_until = now_ms + self.settings.open_ms;
    }

    fn advance(&self, inner: &mut Inner, now_ms: u64) {
        if inner.state == BreakerState::Open && now_ms >= inner.open_until {
            inner.state = BreakerState::HalfOpen;
            inner.probes = 0;
            inner.successes = 0;
        }
        // Closed counts roll over in half-windows: the last `window` is this half and the last.
        let half = (self.settings.window_ms / 2).max(1);
        let window = now_ms / half;
        if window != inner.window {
            if window == inner.window + 1 {
                inner.requests = [0, inner.requests[0]];
                inner.failures = [0, inner.failures[0]];
            } else {
                inner.requests = [0; 2];
                inner.failures = [0; 2];
            }
            inner.window = window;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTINGS: BreakerSettings = BreakerSettings {
        failure_ratio: 0.5,
        min_requests: 10,
        window_ms: 10_000,
        open_ms: 30_000,
        half_open_requests: 3,
        max_requests: 0,
    };

    fn run(b: &Breaker, now: u64, failed: bool) -> Result<(), Refusal> {
        let ticket = b.admit(now)?;
        b.finish(ticket, failed, now);
        Ok(())
    }

    #[test]
    fn the_breaker_opens_half_opens_and_closes() {
        let b = Breaker::new(SETTINGS);
        let t = 1_000_000;
        // 9 failures are not enough: fewer than min_requests.
        for _ in 0..9 {
            run(&b, t, true).unwrap();
        }
        assert_eq!(b.state(t), BreakerState::Closed);
        run(&b, t, true).unwrap();
        assert_eq!(b.state(t), BreakerState::Open);
        assert_eq!(run(&b, t + 29_999, false), Err(Refusal::Open), "open for 30 s");
        assert_eq!(b.state(t + 30_000), BreakerState::HalfOpen);
        // Three probes; a fourth waits for their outcome.
        let probes: Vec<_> = (0..3).map(|_| b.admit(t + 30_000).unwrap()).collect();
        assert_eq!(b.admit(t + 30_000).err(), Some(Refusal::Open));
        for p in probes {
            b.finish(p, false, t + 30_001);
        }
        assert_eq!(b.state(t + 30_001), BreakerState::Closed, "all probes succeeded");
    }

    #[test]
    fn a_failed_probe_opens_again_and_healthy_traffic_stays_closed() {
        let b = Breaker::new(SETTINGS);
        let t = 1_000_000;
        for _ in 0..10 {
            run(&b, t, true).unwrap();
        }
        let probe = b.admit(t + 30_000).unwrap();
        b.finish(probe, true, t + 30_000);
        assert_eq!(b.state(t + 30_000), BreakerState::Open);
        assert_eq!(b.state(t + 59_999), BreakerState::Open);

        let healthy = Breaker::new(SETTINGS);
        for i in 0..1000 {
            run(&healthy, t + i * 10, i % 3 == 0).unwrap();
        }
        assert_eq!(healthy.state(t + 10_000), BreakerState::Closed, "a third failing is under the ratio");
        // Old failures leave the window.
        let b = Breaker::new(SETTINGS);
        for _ in 0..9 {
            run(&b, t, true).unwrap();
        }
        for _ in 0..9 {
            run(&b, t + 20_000, false).unwrap();
        }
        run(&b, t + 20_000, true).unwrap();
        assert_eq!(b.state(t + 20_000), BreakerState::Closed);
    }

    #[test]
    fn max_requests_caps_what_is_in_flight() {
        let b = Breaker::new(BreakerSettings { max_requests: 2, ..SETTINGS });
        let one = b.admit(0).unwrap();
        let _two = b.admit(0).unwrap();
        assert_eq!(b.admit(0).err(), Some(Refusal::Overloaded));
        b.finish(one, false, 0);
        assert!(b.admit(0).is_ok());
    }
}
