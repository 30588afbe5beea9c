//! The cost of the `jwt` policy per request: a signature check (first sight of a token) and a
//! cached verdict (the same token again), for RS256 and ES256.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use gatehouse::config::{JwtConfig, OneOrMany};
use gatehouse::policy::QueryEdit;
use gatehouse::policy::jwt::JwtPolicy;
use gatehouse::policy::jwt::sign::{TokenSigner, pem_der};
use gatehouse::state::registry::Registry;
use http::{HeaderMap, HeaderValue};
use serde_json::json;

const DEMO_KEY: &str = include_str!("../src/demo/demo-key.pem");

fn main() {
    divan::main();
}

struct Setup {
    policy: JwtPolicy,
    signer: TokenSigner,
    runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

fn setup(alg: &str) -> Setup {
    let signer = match alg {
        "RS256" => TokenSigner::rsa(&pem_der(DEMO_KEY, "PRIVATE KEY").unwrap(), "RS256", Some("k")).unwrap(),
        other => TokenSigner::generate(other, Some("k")).unwrap(),
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, json!({ "keys": [signer.jwk()] }).to_string()).unwrap();
    let config = JwtConfig {
        jwks_file: Some(path.display().to_string()),
        audience: Some(OneOrMany::One("api".into())),
        forward_claims: BTreeMap::from([("sub".into(), "x-user-id".into())]),
        ..JwtConfig::default()
    };
    let policy = JwtPolicy::compile(&config, &Registry::new(), &Default::default()).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    Setup { policy, signer, runtime, _dir: dir }
}

fn token(signer: &TokenSigner, sub: u64) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    signer.sign(&json!({"sub": sub.to_string(), "aud": "api", "exp": now + 3600})).unwrap()
}

fn headers(token: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("authorization", HeaderValue::from_str(&format!("Bearer {token}")).unwrap());
    h
}

/// Every token is new: the signature is checked.
#[divan::bench(args = ["RS256", "ES256"])]
fn first_sight(bencher: divan::Bencher, alg: &str) {
    let s = setup(alg);
    let mut n = 0u64;
    bencher
        .with_inputs(|| {
            n += 1;
            headers(&token(&s.signer, n))
        })
        .bench_local_values(|mut h| {
            s.runtime.block_on(s.policy.authenticate(&mut h, None, &mut QueryEdit::default())).unwrap();
            h
        });
}

/// The same token again: the worker's cache answers.
#[divan::bench(args = ["RS256", "ES256"])]
fn cached(bencher: divan::Bencher, alg: &str) {
    let s = setup(alg);
    let t = token(&s.signer, 1);
    s.runtime.block_on(s.policy.authenticate(&mut headers(&t), None, &mut QueryEdit::default())).unwrap();
    bencher.with_inputs(|| headers(&t)).bench_local_values(|mut h| {
        s.runtime.block_on(s.policy.authenticate(&mut h, None, &mut QueryEdit::default())).unwrap();
        h
    });
}
