//! The limiting algorithms, as pure functions of a key's state and the time.
//!
//! Every algorithm keeps three integers per key and decides in constant time. Time is nanoseconds
//! since the Unix epoch (`clock::now_ns`), so windows align to the calendar: a `1000/day` window
//! starts at 00:00 UTC, a `100/min` window on the minute. The same arithmetic runs in Redis
//! (`redis.rs` holds the Lua twins of these functions); a test keeps the two in step.

/// A key's state. All zero is a key never seen (or idle long enough to be as good as new).
pub type State = [u64; 3];

/// How one limit decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// A token bucket of `burst` tokens refilled continuously at one token per `interval_ns`,
    /// computed as GCRA (the generic cell rate algorithm): the state is one timestamp, the
    /// "theoretical arrival time" of the next request, and the decisions are exactly those of
    /// the bucket. `state[0]` = TAT.
    TokenBucket { interval_ns: u64, burst: u64 },
    /// At most `limit` requests per window; windows are consecutive multiples of `window_ns`.
    /// `state[0]` = window index + 1, `state[1]` = count.
    FixedWindow { window_ns: u64, limit: u64 },
    /// The previous window's count, weighted by how much of it still overlaps the sliding
    /// window, plus the current count. `state[0]` = window index + 1, `state[1]` = current
    /// count, `state[2]` = previous count.
    SlidingWindow { window_ns: u64, limit: u64 },
    /// At most `limit` requests per calendar month (UTC). `state[0]` = month index + 1 (months
    /// since January 1970), `state[1]` = count.
    CalendarMonth { limit: u64 },
}

/// The outcome for one limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Requests the key may still make now (after this one, when allowed).
    pub remaining: u64,
    /// Nanoseconds until the limit is fully available again (bucket full, window over).
    pub reset_ns: u64,
    /// When refused: nanoseconds until a request would be allowed.
    pub retry_after_ns: u64,
}

impl Algorithm {
    /// The quota as advertised to clients: `(requests, window in ns)`.
    pub fn quota(&self) -> (u64, u64) {
        match *self {
            Algorithm::TokenBucket { interval_ns, burst } => (burst, interval_ns.saturating_mul(burst)),
            Algorithm::FixedWindow { window_ns, limit } | Algorithm::SlidingWindow { window_ns, limit } => {
                (limit, window_ns)
            }
            Algorithm::CalendarMonth { limit } => (limit, 30 * DAY_NS),
        }
    }

    /// Decides a request at `now` and updates `state` when it is allowed. A refused request
    /// changes nothing: it does not use up what the key will be allowed later.
    pub fn decide(&self, state: &mut State, now: u64) -> Decision {
        match *self {
            Algorithm::TokenBucket { interval_ns, burst } => gcra(state, now, interval_ns, burst),
            Algorithm::FixedWindow { window_ns, limit } => fixed_window(state, now, window_ns, limit),
            Algorithm::SlidingWindow { window_ns, limit } => sliding_window(state, now, window_ns, limit),
            Algorithm::CalendarMonth { limit } => calendar_month(state, now, limit),
        }
    }

    /// Adds `n` admitted requests to `state` whatever the limit says (they were admitted elsewhere).
    pub fn charge(&self, state: &mut State, now: u64, n: u64) {
        match *self {
            Algorithm::TokenBucket { interval_ns, .. } => {
                state[0] = state[0].max(now).saturating_add(interval_ns.saturating_mul(n));
            }
            _ => {
                // Rolls the window like a decision would (on a copy that admits everything).
                let mut rolled = *state;
                let unlimited = match *self {
                    Algorithm::FixedWindow { window_ns, .. } => Algorithm::FixedWindow { window_ns, limit: u64::MAX },
                    Algorithm::SlidingWindow { window_ns, .. } => {
                        Algorithm::SlidingWindow { window_ns, limit: u64::MAX }
                    }
                    Algorithm::CalendarMonth { .. } => Algorithm::CalendarMonth { limit: u64::MAX },
                    Algorithm::TokenBucket { .. } => return,
                };
                unlimited.decide(&mut rolled, now);
                rolled[1] = rolled[1] - 1 + n;
                *state = rolled;
            }
        }
    }

    /// A state as the Redis scripts keep it (microseconds; a month named by its end), as this
    /// module keeps it.
    pub fn from_script_state(&self, s: [u64; 3]) -> State {
        match *self {
            Algorithm::TokenBucket { .. } => [s[0].saturating_mul(1000), 0, 0],
            Algorithm::FixedWindow { .. } | Algorithm::SlidingWindow { .. } => s,
            Algorithm::CalendarMonth { .. } => match s[0] {
                0 => State::default(),
                end_us => [month_of(end_us.saturating_mul(1000).saturating_sub(1)).0 + 1, s[1], 0],
            },
        }
    }

    /// What the key has left at `now`, without using any of it.
    pub fn peek(&self, state: &State, now: u64) -> Decision {
        let mut copy = *state;
        let decision = self.decide(&mut copy, now);
        if decision.allowed { self.refunded(decision) } else { decision }
    }

    /// Gives back what an allowed request took (another limit of the same policy refused it).
    pub fn refund(&self, state: &mut State, now: u64) {
        match *self {
            Algorithm::TokenBucket { interval_ns, .. } => {
                // A TAT in the past is as good as `now`: the bucket is full either way.
                state[0] = state[0].saturating_sub(interval_ns);
            }
            Algorithm::FixedWindow { window_ns, .. } | Algorithm::SlidingWindow { window_ns, .. } => {
                if state[0] == (now / window_ns).saturating_add(1) {
                    state[1] = state[1].saturating_sub(1);
                }
            }
            Algorithm::CalendarMonth { .. } => {
                if state[0] == month_of(now).0 + 1 {
                    state[1] = state[1].saturating_sub(1);
                }
            }
        }
    }

    /// What `decision` becomes once its request was refunded.
    pub fn refunded(&self, decision: Decision) -> Decision {
        let (quota, _) = self.quota();
        let reset_ns = match *self {
            Algorithm::TokenBucket { interval_ns, .. } => decision.reset_ns.saturating_sub(interval_ns),
            _ => decision.reset_ns,
        };
        Decision { remaining: (decision.remaining + 1).min(quota), reset_ns, ..decision }
    }

    /// The time from which a key's state equals a fresh one, so it can be forgotten.
    pub fn idle_at(&self, state: &State) -> u64 {
        match *self {
            Algorithm::TokenBucket { .. } => state[0],
            // The window after the current one still reads the current count (as "previous").
            Algorithm::FixedWindow { window_ns, .. } => state[0].saturating_mul(window_ns),
            Algorithm::SlidingWindow { window_ns, .. } => state[0].saturating_add(1).saturating_mul(window_ns),
            Algorithm::CalendarMonth { .. } => match state[0] {
                0 => 0,
                index => month_start(index),
            },
        }
    }
}

const DAY_NS: u64 = 86_400_000_000_000;

fn calendar_month(state: &mut State, now: u64, limit: u64) -> Decision {
    let (month, end) = month_of(now);
    if state[0] != month + 1 {
        *state = [month + 1, 0, 0];
    }
    let reset = end - now;
    if state[1] >= limit {
        return Decision { allowed: false, remaining: 0, reset_ns: reset, retry_after_ns: reset };
    }
    state[1] += 1;
    Decision { allowed: true, remaining: limit - state[1], reset_ns: reset, retry_after_ns: 0 }
}

/// The month of `now` (months since January 1970, UTC) and when it ends (ns since the epoch).
pub fn month_of(now: u64) -> (u64, u64) {
    let (year, month, _) = civil_from_days((now / DAY_NS) as i64);
    let index = (year - 1970) as u64 * 12 + (month - 1) as u64;
    (index, month_start(index + 1))
}

/// When month `index` (months since January 1970) starts, in ns since the epoch.
fn month_start(index: u64) -> u64 {
    let year = 1970 + (index / 12) as i64;
    let month = (index % 12) as u32 + 1;
    (days_from_civil(year, month, 1).max(0) as u64).saturating_mul(DAY_NS)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn gcra(state: &mut State, now: u64, interval: u64, burst: u64) -> Decision {
    let tolerance = interval.saturating_mul(burst);
    let tat = state[0].max(now);
    let next = tat.saturating_add(interval);
    let ahead = next - now;
    if ahead > tolerance {
        return Decision { allowed: false, remaining: 0, reset_ns: tat - now, retry_after_ns: ahead - tolerance };
    }
    state[0] = next;
    Decision { allowed: true, remaining: (tolerance - ahead) / interval, reset_ns: ahead, retry_after_ns: 0 }
}

fn fixed_window(state: &mut State, now: u64, window: u64, limit: u64) -> Decision {
    let index = (now / window).saturating_add(1);
    if state[0] != index {
        *state = [index, 0, 0];
    }
    let reset = index.saturating_mul(window).saturating_sub(now).max(1);
    if state[1] >= limit {
        return Decision { allowed: false, remaining: 0, reset_ns: reset, retry_after_ns: reset };
    }
    state[1] += 1;
    Decision { allowed: true, remaining: limit - state[1], reset_ns: reset, retry_after_ns: 0 }
}

fn sliding_window(state: &mut State, now: u64, window: u64, limit: u64) -> Decision {
    let index = (now / window).saturating_add(1);
    if state[0] != index {
        // The current window became the previous one, or both are long gone.
        let previous = if state[0].checked_add(1) == Some(index) { state[1] } else { 0 };
        *state = [index, 0, previous];
    }
    let (current, previous) = (state[1], state[2]);
    let elapsed = now % window;
    let reset = window - elapsed;
    // In units of 1/window requests: estimate = previous * (window - elapsed) / window + current.
    let w = window as u128;
    let capacity = limit as u128 * w;
    let used = (previous as u128 * (w - elapsed as u128)).saturating_add(current as u128 * w);
    if used.saturating_add(w) > capacity {
        return Decision {
            allowed: false,
            remaining: 0,
            reset_ns: reset,
            retry_after_ns: sliding_retry_after(current, previous, elapsed, window, limit),
        };
    }
    state[1] += 1;
    let remaining = (capacity - used - w) / w;
    Decision { allowed: true, remaining: remaining as u64, reset_ns: reset, retry_after_ns: 0 }
}

/// When a refused key may send again: the first moment the estimate leaves room for one request
/// (assuming the key sends nothing meanwhile). Exact, in integers: `a * (w - t) <= room` holds
/// exactly when `t >= w - floor(room / a)`.
fn sliding_retry_after(current: u64, previous: u64, elapsed: u64, window: u64, limit: u64) -> u64 {
    let w = window as u128;
    // Still in this window: the previous window's weight shrinks as time passes.
    if current < limit && previous > 0 {
        let room = (limit - 1 - current) as u128 * w;
        let t = w - (room / previous as u128).min(w);
        if t < w {
            return (t as u64).saturating_sub(elapsed).max(1);
        }
    }
    // In the next window, this window's count is the one that weighs.
    let to_next = window - elapsed;
    if current == 0 {
        return to_next;
    }
    let room = limit.saturating_sub(1) as u128 * w;
    let t = w - (room / current as u128).min(w);
    to_next.saturating_add(t as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;
    const MS: u64 = 1_000_000;

    fn run(alg: Algorithm, state: &mut State, at: u64, n: usize) -> Vec<bool> {
        (0..n).map(|_| alg.decide(state, at).allowed).collect()
    }

    #[test]
    fn token_bucket_allows_the_burst_then_the_rate() {
        // 5/s with burst 10.
        let alg = Algorithm::TokenBucket { interval_ns: 200 * MS, burst: 10 };
        let mut st = State::default();
        let t0 = 1_000 * S;
        let first = alg.decide(&mut st, t0);
        assert_eq!(first, Decision { allowed: true, remaining: 9, reset_ns: 200 * MS, retry_after_ns: 0 });
        assert_eq!(run(alg, &mut st, t0, 9), vec![true; 9]);
        let refused = alg.decide(&mut st, t0);
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after_ns, 200 * MS, "one token comes back after 1/rate");
        assert_eq!(refused.reset_ns, 2 * S, "the full bucket is back after burst/rate");
        // 199 ms later: still nothing; at 200 ms: exactly one.
        assert!(!alg.decide(&mut st, t0 + 199 * MS).allowed);
        assert_eq!(run(alg, &mut st, t0 + 200 * MS, 2), vec![true, false]);
        // A second later, five more tokens.
        assert_eq!(run(alg, &mut st, t0 + 1200 * MS, 6), vec![true, true, true, true, true, false]);
        // Idle for long: the bucket is full again, and no fuller than full.
        let d = alg.decide(&mut st, t0 + 100 * S);
        assert_eq!(d.remaining, 9);
        assert!(alg.idle_at(&st) <= t0 + 100 * S + 200 * MS);
    }

    #[test]
    fn token_bucket_refused_requests_cost_nothing() {
        let alg = Algorithm::TokenBucket { interval_ns: S, burst: 1 };
        let mut st = State::default();
        assert!(alg.decide(&mut st, 10 * S).allowed);
        for i in 0..1000 {
            assert!(!alg.decide(&mut st, 10 * S + i * MS / 2).allowed);
        }
        assert!(alg.decide(&mut st, 11 * S).allowed, "hammering while refused does not push the next token away");
    }

    #[test]
    fn token_bucket_refund_gives_the_token_back() {
        let alg = Algorithm::TokenBucket { interval_ns: S, burst: 2 };
        let mut st = State::default();
        assert!(alg.decide(&mut st, 10 * S).allowed);
        assert!(alg.decide(&mut st, 10 * S).allowed);
        alg.refund(&mut st, 10 * S);
        assert!(alg.decide(&mut st, 10 * S).allowed);
        assert!(!alg.decide(&mut st, 10 * S).allowed);
        // A refund never makes a bucket fuller than full.
        let mut fresh = State::default();
        alg.refund(&mut fresh, 10 * S);
        assert_eq!(run(alg, &mut fresh, 10 * S, 3), vec![true, true, false]);
    }

    #[test]
    fn fixed_window_counts_per_calendar_window() {
        let alg = Algorithm::FixedWindow { window_ns: 60 * S, limit: 3 };
        let mut st = State::default();
        let start = 600 * S; // a minute boundary
        let d = alg.decide(&mut st, start + 50 * S);
        assert_eq!(d, Decision { allowed: true, remaining: 2, reset_ns: 10 * S, retry_after_ns: 0 });
        assert_eq!(run(alg, &mut st, start + 55 * S, 3), vec![true, true, false]);
        let refused = alg.decide(&mut st, start + 59 * S);
        assert_eq!(refused.retry_after_ns, S);
        // The next minute starts afresh: the known weakness, 2x the limit across a boundary.
        assert_eq!(run(alg, &mut st, start + 60 * S, 4), vec![true, true, true, false]);
        assert_eq!(alg.idle_at(&st), start + 120 * S);
    }

    #[test]
    fn sliding_window_weighs_the_previous_window() {
        let alg = Algorithm::SlidingWindow { window_ns: 10 * S, limit: 10 };
        let mut st = State::default();
        let start = 1000 * S;
        assert_eq!(run(alg, &mut st, start + 9 * S, 11), [vec![true; 10], vec![false]].concat());
        // 2.5 s into the next window, 75% of the previous 10 still count: room for 2 (7.5 + 2 <= 10).
        assert_eq!(run(alg, &mut st, start + 12_500 * MS, 3), vec![true, true, false]);
        // At 5 s: 5 + 2 used, so 3 more.
        assert_eq!(run(alg, &mut st, start + 15 * S, 4), vec![true, true, true, false]);
        // Two windows later everything is forgotten.
        assert_eq!(run(alg, &mut st, start + 30 * S, 11), [vec![true; 10], vec![false]].concat());
    }

    #[test]
    fn sliding_window_retry_after_is_when_room_appears() {
        let alg = Algorithm::SlidingWindow { window_ns: 10 * S, limit: 10 };
        let start = 1000 * S;
        let mut st = State::default();
        run(alg, &mut st, start + 9 * S, 10);
        // In the same window, the count is full: room appears when the previous (empty) window no
        // longer matters and the next window weighs 10 * (w - t)/w <= 9, i.e. 1 s into it.
        let refused = alg.decide(&mut st, start + 9 * S);
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after_ns, S + S);
        let mut probe = st;
        assert!(!alg.decide(&mut probe, start + 9 * S + refused.retry_after_ns - 1).allowed);
        let mut probe = st;
        assert!(alg.decide(&mut probe, start + 9 * S + refused.retry_after_ns).allowed);
        // In the next window, limited by the previous one's weight.
        alg.decide(&mut st, start + 10 * S); // rolls the window; 10 previous at full weight: refused
        let refused = alg.decide(&mut st, start + 10 * S + 500 * MS);
        assert!(!refused.allowed);
        let at = start + 10 * S + 500 * MS + refused.retry_after_ns;
        let mut probe = st;
        assert!(!alg.decide(&mut probe, at - 1).allowed, "not a nanosecond early");
        assert!(alg.decide(&mut st, at).allowed);
    }

    #[test]
    fn sliding_window_never_admits_more_than_twice_the_limit_in_any_window() {
        // The documented worst case: a full window, then a burst just before the next boundary.
        let alg = Algorithm::SlidingWindow { window_ns: 10 * S, limit: 100 };
        let mut st = State::default();
        let start = 1000 * S;
        let mut times = Vec::new();
        let mut t = start;
        while t < start + 40 * S {
            if alg.decide(&mut st, t).allowed {
                times.push(t);
            }
            t += 7 * MS;
        }
        for (i, &from) in times.iter().enumerate() {
            let in_window = times[i..].iter().take_while(|&&x| x < from + 10 * S).count();
            assert!(in_window <= 200, "{in_window} in one window");
        }
        // And under a steady overload the long-run rate is the limit.
        let total = times.len() as f64;
        assert!((total - 400.0).abs() <= 12.0, "{total} admitted in 4 windows of 100");
    }

    #[test]
    fn calendar_months_follow_the_calendar() {
        let day = DAY_NS;
        // 2024-02-29 (a leap day): the month ends on 2024-03-01, 00:00 UTC.
        let leap_day = days_from_civil(2024, 2, 29) as u64 * day;
        assert_eq!(civil_from_days(days_from_civil(2024, 2, 29)), (2024, 2, 29));
        let (index, end) = month_of(leap_day + 12 * 3600 * 1_000_000_000);
        assert_eq!(index, 54 * 12 + 1);
        assert_eq!(end, days_from_civil(2024, 3, 1) as u64 * day);
        assert_eq!(month_of(end).0, index + 1, "the next month starts exactly at the end");
        assert_eq!(month_of(end - 1).0, index);
        assert_eq!(month_of(days_from_civil(2026, 12, 31) as u64 * day).1, days_from_civil(2027, 1, 1) as u64 * day);
        for days in (0..40_000).step_by(37) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }

        let alg = Algorithm::CalendarMonth { limit: 2 };
        let mut st = State::default();
        let t = leap_day;
        assert_eq!(run(alg, &mut st, t, 3), vec![true, true, false]);
        let refused = alg.decide(&mut st, t);
        assert_eq!(refused.retry_after_ns, day, "one day to March");
        assert_eq!(alg.peek(&st, t).remaining, 0);
        assert_eq!(run(alg, &mut st, end, 3), vec![true, true, false], "March starts afresh");
        assert_eq!(alg.idle_at(&st), days_from_civil(2024, 4, 1) as u64 * day);
        assert_eq!(alg.peek(&State::default(), end).remaining, 2, "peeking takes nothing");
    }

    #[test]
    fn huge_and_tiny_settings_do_not_overflow() {
        for alg in [
            Algorithm::TokenBucket { interval_ns: u64::MAX / 2, burst: u64::MAX },
            Algorithm::TokenBucket { interval_ns: 1, burst: 1 },
            Algorithm::FixedWindow { window_ns: u64::MAX, limit: u64::MAX },
            Algorithm::SlidingWindow { window_ns: u64::MAX, limit: u64::MAX },
            Algorithm::SlidingWindow { window_ns: 1, limit: 1 },
            Algorithm::CalendarMonth { limit: u64::MAX },
        ] {
            let mut st = State::default();
            for now in [0, 1, S, u64::MAX / 2, u64::MAX - 1] {
                let _ = alg.decide(&mut st, now);
                alg.refund(&mut st, now);
                let _ = alg.idle_at(&st);
                let _ = alg.quota();
            }
        }
    }
}
