//! Issuing JSON Web Tokens with `ring`: the demo's auth service signs its tokens with this, and the
//! tests mint tokens of every algorithm the `jwt` policy accepts. The gateway itself never signs.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{self as sig, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair, RsaPublicKeyComponents};
use serde_json::{Value, json};

enum SigningKey {
    Rsa(RsaKeyPair, &'static dyn sig::RsaEncoding),
    Ecdsa(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
    Hmac(ring::hmac::Key, Vec<u8>),
}

/// A private key with its algorithm and key id.
pub struct TokenSigner {
    alg: &'static str,
    kid: Option<String>,
    key: SigningKey,
    rng: SystemRandom,
}

fn alg_name(alg: &str) -> Result<&'static str, String> {
    const ALL: [&str; 12] =
        ["HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"];
    ALL.into_iter().find(|a| *a == alg).ok_or_else(|| format!("unsupported algorithm {alg}"))
}

impl TokenSigner {
    /// An RSA key (PKCS#8 DER) signing with `alg` (RS256/384/512 or PS256/384/512).
    pub fn rsa(pkcs8: &[u8], alg: &str, kid: Option<&str>) -> Result<TokenSigner, String> {
        let alg = alg_name(alg)?;
        let encoding: &'static dyn sig::RsaEncoding = match alg {
            "RS256" => &sig::RSA_PKCS1_SHA256,
            "RS384" => &sig::RSA_PKCS1_SHA384,
            "RS512" => &sig::RSA_PKCS1_SHA512,
            "PS256" => &sig::RSA_PSS_SHA256,
            "PS384" => &sig::RSA_PSS_SHA384,
            "PS512" => &sig::RSA_PSS_SHA512,
            other => return Err(format!("{other} is not an RSA algorithm")),
        };
        let key = RsaKeyPair::from_pkcs8(pkcs8).map_err(|e| format!("RSA key rejected: {e}"))?;
        Ok(TokenSigner {
            alg,
            kid: kid.map(str::to_owned),
            key: SigningKey::Rsa(key, encoding),
            rng: SystemRandom::new(),
        })
    }

    /// A fresh random key for ES256, ES384, EdDSA or HS256/384/512.
    pub fn generate(alg: &str, kid: Option<&str>) -> Result<TokenSigner, String> {
        let alg = alg_name(alg)?;
        let rng = SystemRandom::new();
        let key = match alg {
            "ES256" | "ES384" => {
                let signing = if alg == "ES256" {
                    &sig::ECDSA_P256_SHA256_FIXED_SIGNING
                } else {
                    &sig::ECDSA_P384_SHA384_FIXED_SIGNING
                };
                let pkcs8 = EcdsaKeyPair::generate_pkcs8(signing, &rng).map_err(|e| e.to_string())?;
                SigningKey::Ecdsa(EcdsaKeyPair::from_pkcs8(signing, pkcs8.as_ref(), &rng).map_err(|e| e.to_string())?)
            }
            "EdDSA" => {
                let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| e.to_string())?;
                SigningKey::Ed25519(Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|e| e.to_string())?)
            }
            "HS256" | "HS384" | "HS512" => {
                let mut secret = vec![0u8; 48];
                rng.fill(&mut secret).map_err(|e| e.to_string())?;
                return TokenSigner::hmac(&secret, alg, kid);
            }
            other => return Err(format!("cannot generate a key for {other}; use TokenSigner::rsa")),
        };
        Ok(TokenSigner { alg, kid: kid.map(str::to_owned), key, rng })
    }

    /// A shared secret for HS256/384/512.
    pub fn hmac(secret: &[u8], alg: &str, kid: Option<&str>) -> Result<TokenSigner, String> {
        let alg = alg_name(alg)?;
        let algorithm = match alg {
            "HS256" => ring::hmac::HMAC_SHA256,
            "HS384" => ring::hmac::HMAC_SHA384,
            "HS512" => ring::hmac::HMAC_SHA512,
            other => return Err(format!("{other} is not an HMAC algorithm")),
        };
        let key = SigningKey::Hmac(ring::hmac::Key::new(algorithm, secret), secret.to_vec());
        Ok(TokenSigner { alg, kid: kid.map(str::to_owned), key, rng: SystemRandom::new() })
    }

    pub fn algorithm(&self) -> &'static str {
        self.alg
    }

    /// Signs `claims` into a compact JWS with header `{"alg","typ":"JWT","kid"}`.
    pub fn sign(&self, claims: &Value) -> Result<String, String> {
        let mut header = json!({ "alg": self.alg, "typ": "JWT" });
        if let Some(kid) = &self.kid {
            header["kid"] = Value::from(kid.as_str());
        }
        self.sign_with_header(&header, claims)
    }

    /// Signs with a header of the caller's choice (tests use this for hostile headers).
    pub fn sign_with_header(&self, header: &Value, claims: &Value) -> Result<String, String> {
        let encode = |v: &Value| serde_json::to_vec(v).map(|b| URL_SAFE_NO_PAD.encode(b)).map_err(|e| e.to_string());
        let mut token = encode(header)?;
        token.push('.');
        token.push_str(&encode(claims)?);
        let signature = self.signature(token.as_bytes())?;
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(signature));
        Ok(token)
    }

    fn signature(&self, message: &[u8]) -> Result<Vec<u8>, String> {
        match &self.key {
            SigningKey::Rsa(key, encoding) => {
                let mut out = vec![0; key.public().modulus_len()];
                key.sign(*encoding, &self.rng, message, &mut out).map_err(|e| e.to_string())?;
                Ok(out)
            }
            SigningKey::Ecdsa(key) => {
                key.sign(&self.rng, message).map(|s| s.as_ref().to_vec()).map_err(|e| e.to_string())
            }
            SigningKey::Ed25519(key) => Ok(key.sign(message).as_ref().to_vec()),
            SigningKey::Hmac(key, _) => Ok(ring::hmac::sign(key, message).as_ref().to_vec()),
        }
    }

    /// The key as a public JWK (for HMAC, the secret itself as an `oct` key).
    pub fn jwk(&self) -> Value {
        let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
        let mut jwk = match &self.key {
            SigningKey::Rsa(key, _) => {
                let public = RsaPublicKeyComponents::<Vec<u8>>::from(key.public());
                json!({ "kty": "RSA", "n": b64(&public.n), "e": b64(&public.e) })
            }
            SigningKey::Ecdsa(key) => {
                let point = key.public_key().as_ref();
                let half = (point.len() - 1) / 2;
                let crv = if half == 32 { "P-256" } else { "P-384" };
                json!({ "kty": "EC", "crv": crv, "x": b64(&point[1..1 + half]), "y": b64(&point[1 + half..]) })
            }
            SigningKey::Ed25519(key) => json!({ "kty": "OKP", "crv": "Ed25519", "x": b64(key.public_key().as_ref()) }),
            SigningKey::Hmac(_, secret) => json!({ "kty": "oct", "k": b64(secret) }),
        };
        jwk["use"] = "sig".into();
        jwk["alg"] = self.alg.into();
        if let Some(kid) = &self.kid {
            jwk["kid"] = Value::from(kid.as_str());
        }
        jwk
    }
}

/// The DER body of a PEM block (`-----BEGIN <label>-----`); text around the block is ignored.
pub fn pem_der(pem: &str, label: &str) -> Result<Vec<u8>, String> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem.find(&begin).ok_or_else(|| format!("no {begin} line"))? + begin.len();
    let len = pem[start..].find(&end).ok_or_else(|| format!("no {end} line"))?;
    let body: String = pem[start..start + len].chars().filter(|c| !c.is_ascii_whitespace()).collect();
    STANDARD.decode(body).map_err(|e| format!("bad base64 in the PEM block: {e}"))
}
