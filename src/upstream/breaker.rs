//! The circuit breaker of an upstream, and its cap on requests in flight.
//!
//! Closed: requests pass; the share of failures over the last `window` is watched. When it
//! reaches `failure_ratio` (with at least `min_requests` requests seen), the breaker opens: for
//! `open_for`, every request is answered 503 `circuit_open` at once, without touching the
//! upstream, which gets time to recover. Then it is half-open: up to `half_open_requests` requests
//! go through as probes; if they all succeed the breaker closes, if one fails it opens again.
//!
//! A request holds a `Ticket` from admission until its response body has been sent (or it was
//! abandoned): that is what `max_requests` counts. A ticket dropped without an outcome — the
//! client went away, the route's timeout ran out — gives back its place, and a half-open probe's
//! place too, so cancelled requests can neither fill the cap for ever nor keep the breaker
//! half-open with probes that will never report.
//!
//! The state lives in the registry, so a reload that keeps the upstream keeps its breaker.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

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
    /// Connections being opened to the upstream at once (0: no cap).
    pub max_pending: u64,
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
    connecting: AtomicU64,
}

/// A connection being opened to the upstream, counted against `max_pending` while this lives.
pub struct Connecting(Arc<Breaker>);

impl Drop for Connecting {
    fn drop(&mut self) {
        self.0.connecting.fetch_sub(1, Ordering::AcqRel);
    }
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
    /// Counts the times the breaker opened: a probe from an earlier half-open period no longer
    /// holds a place in the current one.
    opened: u64,
}

/// Why a request may not go to the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Open,
    Overloaded,
}

/// A request admitted by the breaker, counted in flight while this lives. Report its outcome
/// with `finish`; dropping it unreported counts it as neither success nor failure.
pub struct Ticket {
    breaker: Arc<Breaker>,
    /// A half-open probe of the period that began after the `opened`-th opening.
    probe: Option<u64>,
    reported: bool,
}

impl Ticket {
    /// Reports how the request went (the response head, or the failure): once.
    pub fn finish(&mut self, failed: bool, now_ms: u64) {
        if !self.reported {
            self.reported = true;
            self.breaker.record(self.probe.is_some(), failed, now_ms);
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.breaker.in_flight.fetch_sub(1, Ordering::AcqRel);
        if let (Some(period), false) = (self.probe, self.reported) {
            let mut inner = self.breaker.inner.lock().unwrap_or_else(|e| e.into_inner());
            if inner.state == BreakerState::HalfOpen && inner.opened == period {
                inner.probes = inner.probes.saturating_sub(1);
            }
        }
    }
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
                opened: 0,
            }),
            in_flight: AtomicU64::new(0),
            connecting: AtomicU64::new(0),
        }
    }

    /// Asks to open a connection: `Ok(None)` without a cap, `Err` when `max_pending` are already
    /// being opened.
    pub fn connecting(self: &Arc<Self>) -> Result<Option<Connecting>, Refusal> {
        let max = self.settings.max_pending;
        if max == 0 {
            return Ok(None);
        }
        if self.connecting.fetch_add(1, Ordering::AcqRel) >= max {
            self.connecting.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::Overloaded);
        }
        Ok(Some(Connecting(self.clone())))
    }

    pub fn settings(&self) -> &BreakerSettings {
        &self.settings
    }

    pub fn state(&self, now_ms: u64) -> BreakerState {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        self.advance(&mut inner, now_ms);
        inner.state
    }

    /// Asks to send a request. On `Ok`, the ticket counts the request until it is dropped.
    pub fn admit(self: &Arc<Self>, now_ms: u64) -> Result<Ticket, Refusal> {
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
        Ok(Ticket { breaker: self.clone(), probe: probe.then_some(inner.opened), reported: false })
    }

    /// Requests admitted and not finished yet (their tickets alive).
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Acquire)
    }

    fn record(&self, probe: bool, failed: bool, now_ms: u64) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        self.advance(&mut inner, now_ms);
        match inner.state {
            BreakerState::HalfOpen if probe => {
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

    fn open(&self, inner: &mut Inner, now_ms: u64) {
        if inner.state != BreakerState::Open {
            tracing::warn!("circuit breaker open for {} ms: too many failures", self.settings.open_ms);
        }
        inner.state = BreakerState::Open;
        inner.opened += 1;
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
        max_pending: 0,
    };

    fn run(b: &Arc<Breaker>, now: u64, failed: bool) -> Result<(), Refusal> {
        b.admit(now)?.finish(failed, now);
        Ok(())
    }

    fn breaker(settings: BreakerSettings) -> Arc<Breaker> {
        Arc::new(Breaker::new(settings))
    }

    #[test]
    fn the_breaker_opens_half_opens_and_closes() {
        let b = breaker(SETTINGS);
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
        for mut p in probes {
            p.finish(false, t + 30_001);
        }
        assert_eq!(b.state(t + 30_001), BreakerState::Closed, "all probes succeeded");
    }

    #[test]
    fn a_failed_probe_opens_again_and_healthy_traffic_stays_closed() {
        let b = breaker(SETTINGS);
        let t = 1_000_000;
        for _ in 0..10 {
            run(&b, t, true).unwrap();
        }
        b.admit(t + 30_000).unwrap().finish(true, t + 30_000);
        assert_eq!(b.state(t + 30_000), BreakerState::Open);
        assert_eq!(b.state(t + 59_999), BreakerState::Open);

        let healthy = breaker(SETTINGS);
        for i in 0..1000 {
            run(&healthy, t + i * 10, i % 3 == 0).unwrap();
        }
        assert_eq!(healthy.state(t + 10_000), BreakerState::Closed, "a third failing is under the ratio");
        // Old failures leave the window.
        let b = breaker(SETTINGS);
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
        let b = breaker(BreakerSettings { max_requests: 2, ..SETTINGS });
        let mut one = b.admit(0).unwrap();
        let _two = b.admit(0).unwrap();
        assert_eq!(b.admit(0).err(), Some(Refusal::Overloaded));
        // Reporting the outcome (the response head) does not end the request: its body is still
        // being sent.
        one.finish(false, 0);
        assert_eq!(b.admit(0).err(), Some(Refusal::Overloaded));
        drop(one);
        assert!(b.admit(0).is_ok());
        assert_eq!(b.in_flight(), 1, "the ticket of the line above is gone again");
    }

    #[test]
    fn max_pending_caps_connections_being_opened() {
        let b = breaker(SETTINGS);
        assert!(b.connecting().unwrap().is_none(), "no cap");
        let b = breaker(BreakerSettings { max_pending: 2, ..SETTINGS });
        let one = b.connecting().unwrap();
        let two = b.connecting().unwrap();
        assert!(one.is_some() && two.is_some());
        assert!(b.connecting().is_err());
        drop(one);
        assert!(b.connecting().unwrap().is_some());
    }

    #[test]
    fn abandoned_requests_give_back_their_places_and_probes() {
        let b = breaker(BreakerSettings { max_requests: 3, ..SETTINGS });
        // Cancelled requests (dropped unreported) do not fill the cap.
        for _ in 0..100 {
            drop(b.admit(0).unwrap());
        }
        assert_eq!(b.in_flight(), 0);
        let t = 1_000_000;
        for _ in 0..10 {
            run(&b, t, true).unwrap();
        }
        // Half-open: three probes are abandoned (the clients went away); three others may go.
        let abandoned: Vec<_> = (0..3).map(|_| b.admit(t + 30_000).unwrap()).collect();
        assert_eq!(b.admit(t + 30_000).err(), Some(Refusal::Open));
        drop(abandoned);
        for _ in 0..3 {
            run(&b, t + 30_001, false).unwrap();
        }
        assert_eq!(b.state(t + 30_001), BreakerState::Closed);
        // A probe of an earlier half-open period frees nothing in a later one.
        for _ in 0..10 {
            run(&b, t + 40_000, true).unwrap();
        }
        let stale = b.admit(t + 70_000).unwrap();
        b.admit(t + 70_000).unwrap().finish(true, t + 70_000);
        let (a, c) = (b.admit(t + 100_000).unwrap(), b.admit(t + 100_000).unwrap());
        drop(stale);
        let _d = b.admit(t + 100_000).unwrap();
        assert_eq!(b.admit(t + 100_000).err(), Some(Refusal::Open), "the stale probe freed a place");
        drop((a, c));
    }
}
