//! Endpoint selection: weighted round-robin and weighted random.
//!
//! Round-robin precomputes the smooth weighted order once per compile (nginx's algorithm: no endpoint
//! gets a burst of consecutive requests), so picking is one atomic increment: no lock on the request
//! path. The cursor lives in the registry and survives reloads of an unchanged upstream.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::state::registry::BalancerState;

use super::Endpoint;

/// Longest precomputed round-robin schedule; weights are scaled down to fit.
const MAX_SCHEDULE: u64 = 4096;

pub enum Balancer {
    RoundRobin { schedule: Vec<u32>, state: Arc<BalancerState> },
    Random { cumulative: Vec<u64> },
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

    pub fn pick<'a>(&self, endpoints: &'a [Arc<Endpoint>]) -> Option<&'a Arc<Endpoint>> {
        if endpoints.len() <= 1 {
            return endpoints.first();
        }
        let index = match self {
            Balancer::RoundRobin { schedule, state } => {
                let n = state.cursor.fetch_add(1, Ordering::Relaxed);
                *schedule.get(n % schedule.len().max(1))? as usize
            }
            Balancer::Random { cumulative } => {
                let total = *cumulative.last()?;
                let x = fastrand::u64(0..total);
                cumulative.partition_point(|&c| c <= x)
            }
        };
        endpoints.get(index)
    }
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
}
