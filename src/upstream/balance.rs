//! Endpoint selection: round-robin, random, least-request, peak-EWMA and consistent hashing.
//!
//! Round-robin precomputes the smooth weighted order once per compile (nginx's algorithm: no endpoint
//! gets a burst of consecutive requests), so picking is one atomic increment: no lock on the request
//! path. The cursor lives in the registry and survives reloads of an unchanged upstream.
//!
//! Least-request and peak-EWMA pick the better of two endpoints drawn at random ("power of two
//! choices"): nearly as good as scanning all of them, at a constant cost, and without the herd
//! effect of everyone choosing the same least-loaded endpoint. Consistent hashing places each
//! endpoint on a ring at many points (in proportion to its weight): a key goes to the first point
//! after its hash, so removing an endpoint moves only the keys it had.
//!
//! Every algorithm skips endpoints that passive health checks ejected; when every endpoint is
//! ejected, all of them are used (panic mode) rather than failing every request.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::state::registry::BalancerState;

use super::Endpoint;

/// Longest precomputed round-robin schedule; weights are scaled down to fit.
const MAX_SCHEDULE: u64 = 4096;
/// Ring points per unit of weight, and at most in all.
const RING_POINTS: u64 = 160;
const MAX_RING: u64 = 100_000;

pub enum Balancer {
    RoundRobin {
        schedule: Vec<u32>,
        state: Arc<BalancerState>,
    },
    Random {
        cumulative: Vec<u64>,
    },
    LeastRequest,
    PeakEwma,
    /// Sorted `(point, endpoint index)`.
    Ring {
        points: Vec<(u64, u32)>,
    },
}

/// What a pick may depend on besides the endpoints.
#[derive(Default, Clone, Copy)]
pub struct Pick<'a> {
    /// The request's hash key (consistent hashing); `None` picks at random.
    pub hash: Option<u64>,
    /// Endpoints already tried by this request (a retry goes elsewhere when it can).
    pub tried: &'a [u64],
    /// The coarse clock, for ejections.
    pub now_ms: u64,
}

impl Balancer {
    pub fn round_robin(weights: &[u32], state: Arc<BalancerState>) -> Balancer {
        Balancer::RoundRobin { schedule: smooth_schedule(weights), state }
    }

    pub fn random(weights: &[u32]) -> Balancer {
        let mut total = 0u64;
        let cumulative = weights
            .iter()
            .map(|w| {
                total += u64::from((*w).max(1));
                total
            })
            .collect();
        Balancer::Random { cumulative }
    }

    /// A ring for consistent hashing over endpoints named by `names` (their URLs: the same
    /// endpoints give the same ring on every node).
    pub fn ring(names: &[&str], weights: &[u32]) -> Balancer {
        let total_weight: u64 = weights.iter().map(|w| u64::from((*w).max(1))).sum::<u64>().max(1);
        let per_weight = (MAX_RING / total_weight).clamp(1, RING_POINTS);
        let mut points = Vec::new();
        for (i, (name, weight)) in names.iter().zip(weights).enumerate() {
            for replica in 0..u64::from((*weight).max(1)) * per_weight {
                points.push((stable_hash(&(name, replica)), i as u32));
            }
        }
        points.sort_unstable();
        Balancer::Ring { points }
    }

    pub fn pick<'a>(&self, endpoints: &'a [Arc<Endpoint>], pick: Pick<'_>) -> Option<&'a Arc<Endpoint>> {
        if endpoints.len() <= 1 {
            return endpoints.first();
        }
        // Usable: not ejected, and not tried yet by this request. If that leaves nothing, relax:
        // first allow tried ones, then ejected ones (panic mode).
        let usable = |e: &Endpoint, strict: bool| {
            e.state.is_available(pick.now_ms) && (!strict || !pick.tried.contains(&e.state.id))
        };
        let strict = endpoints.iter().any(|e| usable(e, true));
        let relaxed = strict || endpoints.iter().any(|e| usable(e, false));
        let ok = |e: &Endpoint| !relaxed || usable(e, strict);
        let index = match self {
            Balancer::RoundRobin { schedule, state } => {
                let len = schedule.len().max(1);
                let start = state.cursor.fetch_add(1, Ordering::Relaxed);
                // Usually the first; at most one lap of the schedule otherwise.
                (0..len)
                    .map(|step| *schedule.get((start + step) % len).unwrap_or(&0) as usize)
                    .find(|&i| endpoints.get(i).is_some_and(|e| ok(e)))?
            }
            Balancer::Random { cumulative } => {
                let total = *cumulative.last()?;
                // A few draws find a usable endpoint unless most are out; then the first usable.
                (0..8)
                    .map(|_| {
                        let x = fastrand::u64(0..total);
                        cumulative.partition_point(|&c| c <= x)
                    })
                    .find(|&i| endpoints.get(i).is_some_and(|e| ok(e)))
                    .or_else(|| endpoints.iter().position(|e| ok(e)))?
            }
            Balancer::LeastRequest => two_choices(endpoints, &ok, |e| {
                (f64::from(e.state.in_flight.load(Ordering::Relaxed)) + 1.0) / f64::from(e.weight.max(1))
            })?,
            Balancer::PeakEwma => two_choices(endpoints, &ok, |e| {
                let latency = e.state.latency.cost(pick.now_ms);
                latency * (f64::from(e.state.in_flight.load(Ordering::Relaxed)) + 1.0) / f64::from(e.weight.max(1))
            })?,
            Balancer::Ring { points } => {
                // A request without the hash key (no such header or cookie) lands anywhere.
                let hash = pick.hash.unwrap_or_else(|| fastrand::u64(..));
                let start = points.partition_point(|(p, _)| *p < hash);
                // The first point at or after the hash whose endpoint is usable (the ring wraps).
                (0..points.len())
                    .map(|step| points[(start + step) % points.len()].1 as usize)
                    .find(|&i| endpoints.get(i).is_some_and(|e| ok(e)))?
            }
        };
        endpoints.get(index)
    }
}

/// The better (lower `cost`) of two distinct usable endpoints drawn at random.
fn two_choices(
    endpoints: &[Arc<Endpoint>],
    ok: &dyn Fn(&Endpoint) -> bool,
    cost: impl Fn(&Endpoint) -> f64,
) -> Option<usize> {
    let n = endpoints.len();
    // Usually every endpoint is usable: draw among all, without building a list.
    for _ in 0..4 {
        let a = fastrand::usize(0..n);
        let b = (a + 1 + fastrand::usize(0..n - 1)) % n;
        match (ok(&endpoints[a]), ok(&endpoints[b])) {
            (true, true) => return Some(if cost(&endpoints[b]) < cost(&endpoints[a]) { b } else { a }),
            (true, false) => return Some(a),
            (false, true) => return Some(b),
            (false, false) => {}
        }
    }
    let usable: Vec<usize> = (0..endpoints.len()).filter(|&i| ok(&endpoints[i])).collect();
    match usable.len() {
        0 => None,
        1 => Some(usable[0]),
        n => {
            let a = fastrand::usize(0..n);
            let b = (a + 1 + fastrand::usize(0..n - 1)) % n;
            let (a, b) = (usable[a], usable[b]);
            Some(if cost(&endpoints[b]) < cost(&endpoints[a]) { b } else { a })
        }
    }
}

/// A hash that is the same in every gatehouse process (so a key goes to the same endpoint on
/// every node of a fleet).
pub fn stable_hash(value: &impl Hash) -> u64 {
    let mut hasher = stable_hasher();
    value.hash(&mut hasher);
    hasher.finish()
}

/// The hasher behind `stable_hash`: fixed keys, so every process agrees.
pub fn stable_hasher() -> impl Hasher {
    #[allow(deprecated)]
    std::hash::SipHasher::new_with_keys(0x6761_7465_686f_7573, 0x6520_7269_6e67_2121)
}

/// The smooth weighted round-robin order for one full cycle.
fn smooth_schedule(weights: &[u32]) -> Vec<u32> {
    if weights.is_empty() {
        return Vec::new();
    }
    let mut weights: Vec<u64> = weights.iter().map(|w| u64::from((*w).max(1))).collect();
    let total: u64 = weights.iter().sum();
    if total > MAX_SCHEDULE {
        // Scale down, keeping every endpoint at least once: proportions stay within 1/MAX_SCHEDULE.
        for w in &mut weights {
            *w = (*w * MAX_SCHEDULE / total).max(1);
        }
    }
    let total: i64 = weights.iter().map(|w| *w as i64).sum();
    let mut current = vec![0i64; weights.len()];
    let mut schedule = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, w) in weights.iter().enumerate() {
            current[i] += *w as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        schedule.push(best as u32);
    }
    schedule
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smooth_schedule_interleaves_by_weight() {
        assert_eq!(smooth_schedule(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_schedule(&[1, 1]), vec![0, 1]);
        let s = smooth_schedule(&[3, 2]);
        assert_eq!(s.iter().filter(|i| **i == 0).count(), 3);
        assert_eq!(s.iter().filter(|i| **i == 1).count(), 2);
    }

    #[test]
    fn huge_weights_are_scaled_into_a_bounded_schedule() {
        let s = smooth_schedule(&[1_000_000, 1, 3_000_000]);
        assert!(s.len() as u64 <= MAX_SCHEDULE + 2);
        assert!(s.contains(&1), "every endpoint keeps at least one slot");
        let zeros = s.iter().filter(|i| **i == 0).count() as f64;
        let twos = s.iter().filter(|i| **i == 2).count() as f64;
        assert!((twos / zeros - 3.0).abs() < 0.01);
    }

    fn endpoints(n: usize) -> Vec<Arc<Endpoint>> {
        (0..n)
            .map(|i| {
                let url = format!("http://10.0.0.{i}:80");
                Arc::new(Endpoint::new(
                    &url,
                    &format!("10.0.0.{i}"),
                    80,
                    1,
                    Arc::new(super::super::EndpointState::new(i as u64 + 1)),
                ))
            })
            .collect()
    }

    fn owners(balancer: &Balancer, list: &[Arc<Endpoint>], keys: u64) -> Vec<String> {
        (0..keys)
            .map(|k| {
                let pick = Pick { hash: Some(stable_hash(&k)), ..Default::default() };
                balancer.pick(list, pick).unwrap().url.to_string()
            })
            .collect()
    }

    #[test]
    fn the_ring_spreads_keys_and_moves_only_the_removed_endpoints_keys() {
        let all = endpoints(10);
        let names: Vec<&str> = all.iter().map(|e| &*e.url).collect();
        let ring = Balancer::ring(&names, &[1; 10]);
        let before = owners(&ring, &all, 20_000);
        for e in &all {
            let share = before.iter().filter(|o| **o == *e.url).count() as f64 / 20_000.0;
            assert!((0.06..=0.14).contains(&share), "{} has {share}", e.url);
        }
        // Remove endpoint 3: its keys move, nobody else's.
        let fewer: Vec<Arc<Endpoint>> = all.iter().filter(|e| !e.url.contains(".3:")).cloned().collect();
        let names: Vec<&str> = fewer.iter().map(|e| &*e.url).collect();
        let after = owners(&Balancer::ring(&names, &[1; 9]), &fewer, 20_000);
        let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
        let had = before.iter().filter(|o| o.contains(".3:")).count();
        assert_eq!(moved, had, "only the removed endpoint's keys move");
        assert!(moved as f64 / 20_000.0 <= 0.14, "about 1/N move: {moved}");
    }

    #[test]
    fn ejected_endpoints_are_skipped_and_all_ejected_means_all_used() {
        let all = endpoints(3);
        let names: Vec<&str> = all.iter().map(|e| &*e.url).collect();
        let weights = [1, 1, 1];
        let balancers = [
            Balancer::round_robin(&weights, Arc::default()),
            Balancer::random(&weights),
            Balancer::LeastRequest,
            Balancer::PeakEwma,
            Balancer::ring(&names, &weights),
        ];
        all[1].state.health.eject_until(u64::MAX);
        for (b, balancer) in balancers.iter().enumerate() {
            for k in 0..300u64 {
                let pick = Pick { hash: Some(stable_hash(&k)), now_ms: 1000, ..Default::default() };
                let chosen = balancer.pick(&all, pick).unwrap();
                assert!(!chosen.url.contains(".1:"), "balancer {b} chose the ejected endpoint");
                // A retry avoids the endpoint tried first.
                let tried = [chosen.state.id];
                let retry = balancer.pick(&all, Pick { tried: &tried, ..pick }).unwrap();
                assert_ne!(retry.state.id, chosen.state.id, "balancer {b} retried the same endpoint");
            }
        }
        all[0].state.health.eject_until(u64::MAX);
        all[2].state.health.eject_until(u64::MAX);
        for balancer in &balancers {
            assert!(
                balancer.pick(&all, Pick { hash: Some(7), now_ms: 1000, ..Default::default() }).is_some(),
                "panic mode"
            );
        }
    }

    #[test]
    fn least_request_prefers_idle_endpoints() {
        let all = endpoints(4);
        all[0].state.in_flight.store(50, Ordering::Relaxed);
        all[1].state.in_flight.store(50, Ordering::Relaxed);
        let mut busy = 0;
        for _ in 0..1000 {
            let e = Balancer::LeastRequest.pick(&all, Pick::default()).unwrap();
            busy += usize::from(e.state.id <= 2);
        }
        // A busy endpoint is chosen only when both draws are busy: 1/6 of the time.
        assert!(busy < 250, "{busy} of 1000 went to the busy endpoints");
    }
}
