//! The cost of picking an endpoint, per balancing algorithm, among 10 endpoints (and 100 for the
//! ring): what step 6 of every request costs.
//!
//! Run: `cargo bench --bench balance`.
#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::sync::Arc;

use divan::Bencher;
use gatehouse::state::registry::BalancerState;
use gatehouse::upstream::balance::{Balancer, Pick, stable_hash};
use gatehouse::upstream::{Endpoint, EndpointState};

fn main() {
    divan::main();
}

fn endpoints(n: usize) -> Vec<Arc<Endpoint>> {
    (0..n)
        .map(|i| {
            let url = format!("http://10.0.0.{i}:8080");
            Arc::new(Endpoint::new(&url, &format!("10.0.0.{i}"), 8080, 1, Arc::new(EndpointState::new(i as u64 + 1))))
        })
        .collect()
}

fn run(bencher: Bencher, balancer: Balancer, n: usize, hashed: bool) {
    let list = endpoints(n);
    let mut k = 0u64;
    bencher.bench_local(|| {
        k += 1;
        let pick = Pick { hash: hashed.then(|| stable_hash(&k)), now_ms: 1, ..Pick::default() };
        black_box(balancer.pick(black_box(&list), pick)).map(|e| e.state.id)
    });
}

#[divan::bench]
fn round_robin(bencher: Bencher) {
    run(bencher, Balancer::round_robin(&[1; 10], Arc::new(BalancerState::default())), 10, false);
}

#[divan::bench]
fn random(bencher: Bencher) {
    run(bencher, Balancer::random(&[1; 10]), 10, false);
}

#[divan::bench]
fn least_request(bencher: Bencher) {
    run(bencher, Balancer::LeastRequest, 10, false);
}

#[divan::bench]
fn ewma(bencher: Bencher) {
    run(bencher, Balancer::PeakEwma, 10, false);
}

#[divan::bench(args = [10, 100])]
fn consistent_hash(bencher: Bencher, n: usize) {
    let list = endpoints(n);
    let names: Vec<&str> = list.iter().map(|e| &*e.url).collect();
    run(bencher, Balancer::ring(&names, &vec![1; n]), n, true);
}

/// The whole of step 6 as a request runs it: load the upstream's current members (one `ArcSwap`
/// load), pick among 10 endpoints round-robin, take a reference to the endpoint. `warming`: every
/// endpoint has just become available under a long `slow_start`, so most picks are drawn again
/// (up to four times): the worst case of slow start.
#[divan::bench(args = [false, true])]
fn select(bencher: Bencher, warming: bool) {
    use gatehouse::upstream::discovery::Target;
    use gatehouse::upstream::{MemberSpec, Members, PoolSettings, Upstream};
    let registry = gatehouse::state::registry::Registry::new();
    let spec = MemberSpec {
        upstream: Arc::from("bench"),
        balance: gatehouse::config::BalanceConfig::RoundRobin,
        check: None,
        tls: false,
    };
    let targets: Vec<Target> = (0..10).map(|i| Target::new(&format!("10.0.0.{i}"), 8080, 1, None)).collect();
    let members = Members::build(&spec, &targets, &registry, false);
    let first = members.endpoints[0].clone();
    let pool = PoolSettings { max_idle_per_endpoint: 1, idle_timeout: std::time::Duration::from_secs(30) };
    let timeout = std::time::Duration::from_secs(1);
    let mut upstream = Upstream::single("bench", first, timeout, timeout, pool, None);
    upstream.members = Arc::new(arc_swap::ArcSwap::from_pointee(members));
    upstream.slow_start_ms = if warming { 3_600_000 } else { 0 };
    let now_ms = gatehouse::transport::clock::now_ms();
    bencher.bench_local(|| black_box(upstream.select(Pick { now_ms, ..Pick::default() })).map(|e| e.state.id));
}
