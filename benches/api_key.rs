//! The cost of the `api_key` policy per request: finding the key, hashing it (SHA-256), looking up
//! its consumer among many, and removing it from the request. Target: under 2 µs.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use gatehouse::config::{ApiKeyConfig, ConsumerConfig, CredentialConfig};
use gatehouse::policy::QueryEdit;
use gatehouse::policy::api_key::ApiKeyPolicy;
use gatehouse::policy::consumers::{ConsumerIndex, generate_key};
use http::{HeaderMap, HeaderValue};

fn main() {
    divan::main();
}

/// `n` consumers with one key each; returns the policy and one valid key.
fn setup(n: usize) -> (ApiKeyPolicy, String) {
    let mut configs = Vec::with_capacity(n);
    let mut some_key = String::new();
    for i in 0..n {
        let (key, digest) = generate_key().unwrap();
        if i == n / 2 {
            some_key = key;
        }
        configs.push(ConsumerConfig {
            name: format!("consumer-{i}"),
            groups: vec!["partners".into()],
            plan: None,
            metadata: Default::default(),
            credentials: vec![CredentialConfig { api_key_sha256: Some(digest), ..Default::default() }],
        });
    }
    let index = Arc::new(ConsumerIndex::compile(&configs).unwrap());
    (ApiKeyPolicy::compile(&ApiKeyConfig::default(), index).unwrap(), some_key)
}

fn headers(key: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("host", HeaderValue::from_static("api.example.com"));
    h.insert("user-agent", HeaderValue::from_static("bench/1.0"));
    h.insert("x-api-key", HeaderValue::from_str(key).unwrap());
    h
}

/// A valid key among `n` consumers.
#[divan::bench(args = [10, 10_000])]
fn valid_key(bencher: divan::Bencher, n: usize) {
    let (policy, key) = setup(n);
    bencher.with_inputs(|| headers(&key)).bench_local_values(|mut h| {
        let identity = policy.authenticate(&mut h, None, &mut QueryEdit::default()).unwrap();
        assert!(identity.is_some());
        h
    });
}

/// An unknown key: refused after the same hash and lookup.
#[divan::bench]
fn unknown_key(bencher: divan::Bencher) {
    let (policy, _) = setup(1000);
    bencher.with_inputs(|| headers("gh_not-a-key-of-anyone-at-all-000000000000")).bench_local_values(|mut h| {
        assert!(policy.authenticate(&mut h, None, &mut QueryEdit::default()).is_err());
        h
    });
}
