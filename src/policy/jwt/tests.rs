//! The `jwt` policy against tokens of every supported algorithm, and against hostile ones.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue};
use serde_json::{Value, json};

use super::JwtPolicy;
use super::sign::{TokenSigner, pem_der};
use crate::config::{JwtConfig, OneOrMany, TokenSourceConfig};
use crate::policy::token::QueryEdit;
use crate::state::registry::Registry;

const DEMO_KEY: &str = include_str!("../../demo/demo-key.pem");

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn claims() -> Value {
    json!({"sub": "alice", "iss": "issuer", "aud": "api", "iat": now(), "exp": now() + 300, "roles": ["user"]})
}

fn rsa(alg: &str, kid: &str) -> TokenSigner {
    TokenSigner::rsa(&pem_der(DEMO_KEY, "PRIVATE KEY").unwrap(), alg, Some(kid)).unwrap()
}

/// A policy whose keys are the given signers' JWKs (written to a JWKS file).
fn policy(signers: &[&TokenSigner], tweak: impl FnOnce(&mut JwtConfig)) -> (JwtPolicy, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    let keys: Vec<Value> = signers.iter().map(|s| s.jwk()).collect();
    std::fs::write(&path, json!({ "keys": keys }).to_string()).unwrap();
    let mut config = JwtConfig {
        jwks_file: Some(path.display().to_string()),
        issuer: Some(OneOrMany::One("issuer".into())),
        audience: Some(OneOrMany::One("api".into())),
        forward_claims: BTreeMap::from([("sub".into(), "x-user-id".into()), ("roles".into(), "x-user-roles".into())]),
        ..JwtConfig::default()
    };
    tweak(&mut config);
    (JwtPolicy::compile(&config, &Registry::new(), &Default::default()).unwrap_or_else(|e| panic!("{e:?}")), dir)
}

fn bearer(token: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("authorization", HeaderValue::from_str(&format!("Bearer {token}")).unwrap());
    h
}

async fn check(policy: &JwtPolicy, mut headers: HeaderMap) -> Result<HeaderMap, (u16, String)> {
    let mut edit = QueryEdit::default();
    match policy.authenticate(&mut headers, None, &mut edit).await {
        Ok(_) => Ok(headers),
        Err(e) => Err((e.status().as_u16(), e.to_string())),
    }
}

#[tokio::test]
async fn every_supported_algorithm_verifies() {
    let mut signers: Vec<TokenSigner> = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"]
        .iter()
        .map(|alg| rsa(alg, &format!("rsa-{alg}")))
        .collect();
    for alg in ["ES256", "ES384", "EdDSA", "HS256", "HS384", "HS512"] {
        signers.push(TokenSigner::generate(alg, Some(&format!("k-{alg}"))).unwrap());
    }
    let refs: Vec<&TokenSigner> = signers.iter().collect();
    let (policy, _dir) = policy(&refs, |_| {});
    for signer in &signers {
        let token = signer.sign(&claims()).unwrap();
        let headers = check(&policy, bearer(&token)).await.unwrap_or_else(|e| panic!("{}: {e:?}", signer.algorithm()));
        assert_eq!(headers["x-user-id"], "alice");
        assert_eq!(headers["x-user-roles"], "user");
        // The same token with a different signature is refused.
        // Flip one character in the middle of the signature (the last one may carry only padding).
        let sig_start = token.rfind('.').unwrap() + 1;
        let at = sig_start + (token.len() - sig_start) / 2;
        let mut tampered = token.clone().into_bytes();
        tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        let err = check(&policy, bearer(&tampered)).await.unwrap_err();
        assert_eq!(err.0, 401, "{}: tampered signature accepted", signer.algorithm());
    }
}

#[tokio::test]
async fn claims_are_checked() {
    let signer = TokenSigner::generate("ES256", Some("k1")).unwrap();
    let (policy, _dir) = policy(&[&signer], |c| c.required_claims = vec!["sub".into()]);
    let cases: Vec<(&str, Value)> = vec![
        ("expired", json!({"sub": "a", "iss": "issuer", "aud": "api", "exp": now() - 120})),
        ("not valid yet", json!({"sub": "a", "iss": "issuer", "aud": "api", "exp": now() + 300, "nbf": now() + 120})),
        (
            "issued in the future",
            json!({"sub": "a", "iss": "issuer", "aud": "api", "exp": now() + 300, "iat": now() + 120}),
        ),
        ("issuer", json!({"sub": "a", "iss": "other", "aud": "api", "exp": now() + 300})),
        ("audience", json!({"sub": "a", "iss": "issuer", "aud": "other", "exp": now() + 300})),
        ("`sub`", json!({"iss": "issuer", "aud": "api", "exp": now() + 300})),
        ("`exp`", json!({"sub": "a", "iss": "issuer", "aud": "api"})),
    ];
    for (why, claims) in cases {
        let token = signer.sign(&claims).unwrap();
        let (status, message) = check(&policy, bearer(&token)).await.unwrap_err();
        assert_eq!(status, 401, "{why}");
        assert!(message.contains(why), "{why}: {message}");
    }
    // Within the leeway is fine; an audience list needs one match.
    let token = signer.sign(&json!({"sub": "a", "iss": "issuer", "aud": ["x", "api"], "exp": now() - 10})).unwrap();
    assert!(check(&policy, bearer(&token)).await.is_ok());
}

#[tokio::test]
async fn hostile_tokens_are_refused() {
    let signer = rsa("RS256", "rsa-1");
    let (policy, _dir) = policy(&[&signer], |_| {});
    let b64 = |v: &Value| base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, v.to_string());
    let body = b64(&claims());
    let none = format!("{}.{body}.", b64(&json!({"alg": "none", "typ": "JWT"})));
    // Algorithm confusion: an HMAC over the token keyed with the RSA public key's bytes.
    let n = signer.jwk()["n"].as_str().unwrap().to_owned();
    let confused = TokenSigner::hmac(n.as_bytes(), "HS256", Some("rsa-1")).unwrap().sign(&claims()).unwrap();
    let unknown_kid = TokenSigner::generate("ES256", Some("nobody")).unwrap().sign(&claims()).unwrap();
    let long = format!("{}.{}.{}", "a".repeat(9000), "b".repeat(9000), "c");
    for (name, value) in [
        ("alg none", format!("Bearer {none}")),
        ("HMAC with the public key", format!("Bearer {confused}")),
        ("unknown kid", format!("Bearer {unknown_kid}")),
        ("empty", "Bearer ".to_owned()),
        ("garbage", "Bearer not-a-token".to_owned()),
        ("two parts", "Bearer a.b".to_owned()),
        ("four parts", "Bearer a.b.c.d".to_owned()),
        ("bad base64", "Bearer @@@.###.$$$".to_owned()),
        ("truncated", format!("Bearer {}", &signer.sign(&claims()).unwrap()[..60])),
        ("oversized", format!("Bearer {long}")),
        ("wrong scheme", format!("Basic {}", signer.sign(&claims()).unwrap())),
        ("json header", format!("Bearer {}.{body}.sig", b64(&json!({"alg": "RS256", "jku": "http://evil"})))),
    ] {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", HeaderValue::from_str(&value).unwrap());
        let (status, _) = check(&policy, headers).await.expect_err(name);
        assert_eq!(status, 401, "{name}");
    }
}

#[tokio::test]
async fn identity_headers_from_clients_are_always_removed() {
    let signer = TokenSigner::generate("EdDSA", None).unwrap();
    let (policy, _dir) = policy(&[&signer], |c| c.optional = true);
    let mut spoofed = bearer(&signer.sign(&json!({"iss": "issuer", "aud": "api", "exp": now() + 60})).unwrap());
    spoofed.insert("x-user-id", HeaderValue::from_static("admin"));
    spoofed.insert("x-user-roles", HeaderValue::from_static("admin"));
    let headers = check(&policy, spoofed).await.unwrap();
    assert!(headers.get("x-user-id").is_none(), "the token had no sub: the spoofed value must not survive");
    assert!(headers.get("x-user-roles").is_none());
    // Optional: no token passes without identity, and spoofed headers are still removed.
    let mut anonymous = HeaderMap::new();
    anonymous.insert("x-user-id", HeaderValue::from_static("admin"));
    let headers = check(&policy, anonymous).await.unwrap();
    assert!(headers.get("x-user-id").is_none());
    // Optional does not mean a bad token is let through.
    assert_eq!(check(&policy, bearer("a.b.c")).await.unwrap_err().0, 401);
}

#[tokio::test]
async fn tokens_come_from_headers_cookies_or_query_and_can_be_stripped() {
    let signer = TokenSigner::generate("ES384", None).unwrap();
    let (policy, _dir) = policy(&[&signer], |c| {
        c.token_from = vec![
            TokenSourceConfig::Header { name: "x-token".into(), scheme: None },
            TokenSourceConfig::Cookie("session".into()),
            TokenSourceConfig::Query("access_token".into()),
        ];
        c.strip_token = true;
    });
    let token = signer.sign(&claims()).unwrap();
    let mut h = HeaderMap::new();
    h.insert("x-token", HeaderValue::from_str(&token).unwrap());
    let out = check(&policy, h).await.unwrap();
    assert!(out.get("x-token").is_none(), "stripped");

    let mut h = HeaderMap::new();
    h.insert("cookie", HeaderValue::from_str(&format!("theme=dark; session={token}; lang=en")).unwrap());
    let out = check(&policy, h).await.unwrap();
    assert_eq!(out["cookie"], "theme=dark; lang=en");

    let mut h = HeaderMap::new();
    let query = format!("page=2&access_token={token}&q=x");
    let mut edit = QueryEdit::default();
    policy.authenticate(&mut h, Some(&query), &mut edit).await.unwrap();
    assert_eq!(edit.query, Some(Some("page=2&q=x".to_owned())));

    // Not in `Authorization` when that is not a configured source.
    assert_eq!(check(&policy, bearer(&token)).await.unwrap_err().0, 401);
}

#[tokio::test]
async fn verified_tokens_are_reused_but_only_while_valid() {
    let signer = TokenSigner::generate("ES256", Some("k")).unwrap();
    let (policy, _dir) = policy(&[&signer], |_| {});
    let token = signer.sign(&claims()).unwrap();
    assert!(check(&policy, bearer(&token)).await.is_ok());
    assert!(check(&policy, bearer(&token)).await.is_ok(), "served from the cache");
    // Another policy (other audience) does not reuse this policy's verdict.
    let (strict, _dir2) = self::policy(&[&signer], |c| c.audience = Some(OneOrMany::One("other".into())));
    assert_eq!(check(&strict, bearer(&token)).await.unwrap_err().0, 401);
}

#[test]
fn config_mistakes_are_reported() {
    let registry = Registry::new();
    let errors = |c: JwtConfig| JwtPolicy::compile(&c, &registry, &Default::default()).err().unwrap_or_default();
    assert!(!errors(JwtConfig::default()).is_empty(), "no key source");
    let short = errors(JwtConfig { secret: Some("short".into()), ..JwtConfig::default() });
    assert!(short[0].1.contains("32 bytes"), "{short:?}");
    let algs = errors(JwtConfig {
        secret: Some("x".repeat(40)),
        algorithms: Some(vec!["none".into(), "RS256".into()]),
        ..JwtConfig::default()
    });
    assert!(algs.iter().any(|(f, _)| f == "algorithms[0]"), "{algs:?}");
    let https = errors(JwtConfig { jwks_url: Some("https://idp/jwks".into()), ..JwtConfig::default() });
    assert_eq!(https[0].0, "jwks_url");
}

/// DER: a length in definite form.
fn der_len(len: usize) -> Vec<u8> {
    if len < 0x80 {
        vec![len as u8]
    } else {
        let bytes: Vec<u8> = len.to_be_bytes().into_iter().skip_while(|b| *b == 0).collect();
        let mut out = vec![0x80 | bytes.len() as u8];
        out.extend(bytes);
        out
    }
}

fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend(der_len(content.len()));
    out.extend_from_slice(content);
    out
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, der);
    let lines: Vec<&str> = b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
    format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
}

#[tokio::test]
async fn pem_public_keys_of_each_type_verify() {
    let b64d = |v: &Value| {
        base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, v.as_str().unwrap()).unwrap()
    };
    let rsa_signer = rsa("RS256", "k");
    let jwk = rsa_signer.jwk();
    // PKCS#1 RSAPublicKey: SEQUENCE { INTEGER n, INTEGER e }, integers with a leading zero if needed.
    let int = |bytes: Vec<u8>| {
        let mut b = bytes;
        if b[0] & 0x80 != 0 {
            b.insert(0, 0);
        }
        der(0x02, &b)
    };
    let rsa_der = der(0x30, &[int(b64d(&jwk["n"])), int(b64d(&jwk["e"]))].concat());
    let ec = TokenSigner::generate("ES256", None).unwrap();
    let ec_jwk = ec.jwk();
    let point = [vec![4u8], b64d(&ec_jwk["x"]), b64d(&ec_jwk["y"])].concat();
    let ec_spki = [hex("3059301306072a8648ce3d020106082a8648ce3d030107034200"), point].concat();
    let ed = TokenSigner::generate("EdDSA", None).unwrap();
    let ed_spki = [hex("302a300506032b6570032100"), b64d(&ed.jwk()["x"])].concat();
    for (signer, pem_text) in [
        (&rsa_signer, pem("RSA PUBLIC KEY", &rsa_der)),
        (&ec, pem("PUBLIC KEY", &ec_spki)),
        (&ed, pem("PUBLIC KEY", &ed_spki)),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        std::fs::write(&path, &pem_text).unwrap();
        let config = JwtConfig { public_key_file: Some(path.display().to_string()), ..JwtConfig::default() };
        let policy = JwtPolicy::compile(&config, &Registry::new(), &Default::default())
            .unwrap_or_else(|e| panic!("{}: {e:?}", signer.algorithm()));
        let token = signer.sign(&claims()).unwrap();
        if let Err(e) = check(&policy, bearer(&token)).await {
            panic!("{}: {e:?}", signer.algorithm());
        }
        // A token of another key type is refused by this key.
        let other = TokenSigner::generate("HS256", None).unwrap().sign(&claims()).unwrap();
        assert_eq!(check(&policy, bearer(&other)).await.unwrap_err().0, 401);
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("junk.pem");
    std::fs::write(&path, "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n").unwrap();
    let config = JwtConfig { public_key_file: Some(path.display().to_string()), ..JwtConfig::default() };
    assert!(JwtPolicy::compile(&config, &Registry::new(), &Default::default()).is_err());
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap()).collect()
}
