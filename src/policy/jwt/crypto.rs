//! Signature verification for JSON Web Tokens, on `ring` (the crypto library gatehouse already
//! uses), installed as jsonwebtoken's crypto provider.
//!
//! Each algorithm is only ever checked against a key of its own family, so an RSA public key can
//! never be used as an HMAC secret (algorithm confusion). RSA keys below 2048 bits are refused.

use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::{Error, ErrorKind};
use jsonwebtoken::jwk::{EllipticCurve, ThumbprintHash};
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind, EncodingKey};
use ring::signature::{self as sig, RsaPublicKeyComponents, UnparsedPublicKey, VerificationAlgorithm};

/// The provider gatehouse installs. Signing is not needed at the gateway.
pub static PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: no_signer,
    verifier_factory: verifier,
    key_utils: KeyUtils {
        rsa_pub_components_from_private_key: |_| Err(unsupported()),
        rsa_pub_components_from_public_key: |_| Err(unsupported()),
        ec_pub_components_from_private_key: |_, _| Err(unsupported()),
        ed_pub_components_from_private_key: |_, _: &EllipticCurve| Err(unsupported()),
        compute_digest: |_, _: ThumbprintHash| Err(unsupported()),
    },
};

/// Installs the provider for the process (idempotent).
pub fn install() {
    let _ = PROVIDER.install_default();
}

fn unsupported() -> Error {
    ErrorKind::InvalidAlgorithm.into()
}

fn no_signer(_: &Algorithm, _: &EncodingKey) -> jsonwebtoken::errors::Result<Box<dyn JwtSigner>> {
    Err(unsupported())
}

enum Material {
    Hmac(ring::hmac::Key),
    RsaComponents { n: Vec<u8>, e: Vec<u8>, params: &'static sig::RsaParameters },
    Public(UnparsedPublicKey<Vec<u8>>),
}

struct Verifier {
    algorithm: Algorithm,
    material: Material,
}

fn verifier(algorithm: &Algorithm, key: &DecodingKey) -> jsonwebtoken::errors::Result<Box<dyn JwtVerifier>> {
    if !key.family().algorithms().contains(algorithm) {
        return Err(ErrorKind::InvalidAlgorithm.into());
    }
    let der_or_secret = || match key.kind() {
        DecodingKeyKind::SecretOrDer(bytes) => Ok(bytes.clone()),
        DecodingKeyKind::RsaModulusExponent { .. } => Err(Error::from(ErrorKind::InvalidKeyFormat)),
    };
    let public = |alg: &'static dyn VerificationAlgorithm| {
        der_or_secret().map(|b| Material::Public(UnparsedPublicKey::new(alg, b)))
    };
    let rsa = |params: &'static sig::RsaParameters| match key.kind() {
        DecodingKeyKind::RsaModulusExponent { n, e } => Material::RsaComponents { n: n.clone(), e: e.clone(), params },
        DecodingKeyKind::SecretOrDer(der) => Material::Public(UnparsedPublicKey::new(params, der.clone())),
    };
    let material = match algorithm {
        Algorithm::HS256 => Material::Hmac(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &der_or_secret()?)),
        Algorithm::HS384 => Material::Hmac(ring::hmac::Key::new(ring::hmac::HMAC_SHA384, &der_or_secret()?)),
        Algorithm::HS512 => Material::Hmac(ring::hmac::Key::new(ring::hmac::HMAC_SHA512, &der_or_secret()?)),
        Algorithm::RS256 => rsa(&sig::RSA_PKCS1_2048_8192_SHA256),
        Algorithm::RS384 => rsa(&sig::RSA_PKCS1_2048_8192_SHA384),
        Algorithm::RS512 => rsa(&sig::RSA_PKCS1_2048_8192_SHA512),
        Algorithm::PS256 => rsa(&sig::RSA_PSS_2048_8192_SHA256),
        Algorithm::PS384 => rsa(&sig::RSA_PSS_2048_8192_SHA384),
        Algorithm::PS512 => rsa(&sig::RSA_PSS_2048_8192_SHA512),
        Algorithm::ES256 => public(&sig::ECDSA_P256_SHA256_FIXED)?,
        Algorithm::ES384 => public(&sig::ECDSA_P384_SHA384_FIXED)?,
        Algorithm::EdDSA => public(&sig::ED25519)?,
        _ => return Err(unsupported()),
    };
    Ok(Box::new(Verifier { algorithm: *algorithm, material }))
}

impl signature::Verifier<Vec<u8>> for Verifier {
    fn verify(&self, message: &[u8], signature: &Vec<u8>) -> Result<(), signature::Error> {
        let ok = match &self.material {
            Material::Hmac(key) => ring::hmac::verify(key, message, signature).is_ok(),
            Material::RsaComponents { n, e, params } => {
                RsaPublicKeyComponents { n, e }.verify(params, message, signature).is_ok()
            }
            Material::Public(key) => key.verify(message, signature).is_ok(),
        };
        if ok { Ok(()) } else { Err(signature::Error::new()) }
    }
}

impl JwtVerifier for Verifier {
    fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
}
