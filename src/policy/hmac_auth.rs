//! `hmac_auth`: requests signed with a consumer's shared secret (authentication, request policies
//! phase), in the HTTP Signatures style of draft-cavage as Kong's `hmac-auth` uses it:
//!
//! ```text
//! Authorization: hmac username="partner-a", algorithm="hmac-sha256",
//!                headers="date @request-target digest", signature="<base64>"
//! ```
//!
//! (`Signature keyId="…", …` is accepted too.) The signing string has one line per signed header,
//! `name: value`, joined by `\n`; the pseudo-headers `@request-target` / `(request-target)` are
//! `<method in lowercase> <target as sent>`, and `request-line` is `<METHOD> <target> HTTP/1.1`.
//!
//! The signed date must be within `clock_skew` of gatehouse's clock, and the required headers must
//! be among the signed ones (by default the date and the request target), so a signature cannot
//! be replayed later or for another request. With `validate_body`, a signed `Digest` header must
//! match the body, which the proxy reads (up to a limit) and checks before anything goes upstream.

use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, header};
use hyper::body::Incoming;

use crate::config::HmacAuthConfig;
use crate::proxy::error::ProxyError;

use super::RequestFacts;
use super::consumers::{ConsumerIndex, KeyRejection};
use super::identity::Identity;

use std::sync::Arc;

/// The `Authorization` value is refused beyond this length before any parsing.
const MAX_AUTHORIZATION_BYTES: usize = 4096;
/// At most this many headers may be signed.
const MAX_SIGNED_HEADERS: usize = 32;
const DEFAULT_MAX_BODY: u64 = 1024 * 1024;

static X_DATE: http::HeaderName = http::HeaderName::from_static("x-date");
static DIGEST: http::HeaderName = http::HeaderName::from_static("digest");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Algorithm {
    Sha1,
    Sha256,
    Sha384,
    Sha512,
}

impl Algorithm {
    fn parse(name: &str) -> Option<Algorithm> {
        match name.to_ascii_lowercase().as_str() {
            "hmac-sha1" => Some(Algorithm::Sha1),
            "hmac-sha256" => Some(Algorithm::Sha256),
            "hmac-sha384" => Some(Algorithm::Sha384),
            "hmac-sha512" => Some(Algorithm::Sha512),
            _ => None,
        }
    }

    fn ring(self) -> ring::hmac::Algorithm {
        match self {
            Algorithm::Sha1 => ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
            Algorithm::Sha256 => ring::hmac::HMAC_SHA256,
            Algorithm::Sha384 => ring::hmac::HMAC_SHA384,
            Algorithm::Sha512 => ring::hmac::HMAC_SHA512,
        }
    }
}

/// A requirement on the signed headers; some names stand for each other.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Required {
    Date,
    RequestTarget,
    Header(String),
}

impl Required {
    fn met_by(&self, signed: &[String]) -> bool {
        let any = |names: &[&str]| signed.iter().any(|s| names.contains(&s.as_str()));
        match self {
            Required::Date => any(&["date", "x-date"]),
            Required::RequestTarget => any(&["@request-target", "(request-target)", "request-line"]),
            Required::Header(name) => any(&[name.as_str()]),
        }
    }
}

pub struct HmacAuthPolicy {
    algorithms: Vec<Algorithm>,
    clock_skew: Duration,
    required: Vec<Required>,
    validate_body: bool,
    max_body: u64,
    keep: bool,
    optional: bool,
    challenge: HeaderValue,
    consumers: Arc<ConsumerIndex>,
}

/// A body the proxy must check against a signed `Digest` before forwarding.
pub struct BodyCheck {
    algorithm: &'static ring::digest::Algorithm,
    expected: Vec<u8>,
    max: u64,
}

/// The parameters of a signature.
#[derive(Debug, Default, PartialEq)]
struct Params {
    key_id: String,
    algorithm: String,
    headers: Vec<String>,
    signature: String,
}

impl HmacAuthPolicy {
    pub fn compile(
        config: &HmacAuthConfig,
        consumers: Arc<ConsumerIndex>,
    ) -> Result<HmacAuthPolicy, Vec<(String, String)>> {
        let mut errors = Vec::new();
        let algorithms = match &config.algorithms {
            None => vec![Algorithm::Sha256, Algorithm::Sha384, Algorithm::Sha512],
            Some(list) => list
                .iter()
                .enumerate()
                .filter_map(|(i, name)| {
                    let a = Algorithm::parse(name);
                    if a.is_none() {
                        errors.push((
                            format!("algorithms[{i}]"),
                            format!("\"{name}\" is not hmac-sha256, hmac-sha384, hmac-sha512 or hmac-sha1"),
                        ));
                    }
                    a
                })
                .collect(),
        };
        if algorithms.is_empty() && errors.is_empty() {
            errors.push(("algorithms".to_owned(), "list at least one algorithm".to_owned()));
        }
        let required_names: Vec<String> =
            config.required_headers.clone().unwrap_or_else(|| vec!["date".to_owned(), "@request-target".to_owned()]);
        let mut required: Vec<Required> = required_names
            .iter()
            .map(|n| match n.to_ascii_lowercase().as_str() {
                "date" | "x-date" => Required::Date,
                "@request-target" | "(request-target)" | "request-line" => Required::RequestTarget,
                other => Required::Header(other.to_owned()),
            })
            .collect();
        if config.validate_body && !required.contains(&Required::Header("digest".into())) {
            required.push(Required::Header("digest".into()));
        }
        let challenge_headers: Vec<String> = required
            .iter()
            .map(|r| match r {
                Required::Date => "date".to_owned(),
                Required::RequestTarget => "@request-target".to_owned(),
                Required::Header(h) => h.clone(),
            })
            .collect();
        let challenge =
            HeaderValue::from_str(&format!("hmac realm=\"gatehouse\", headers=\"{}\"", challenge_headers.join(" ")))
                .map_err(|_| errors.push(("required_headers".to_owned(), "header names only".to_owned())))
                .ok();
        if !consumers.has_hmac_keys() {
            errors.push((
                String::new(),
                "hmac_auth needs consumers with username and secret credentials (top-level `consumers:`)".into(),
            ));
        }
        let clock_skew = config.clock_skew.map_or(Duration::from_secs(300), |d| d.get());
        match challenge {
            Some(challenge) if errors.is_empty() => Ok(HmacAuthPolicy {
                algorithms,
                clock_skew,
                required,
                validate_body: config.validate_body,
                max_body: config.max_body_size.map_or(DEFAULT_MAX_BODY, |b| b.get()),
                keep: config.keep_credentials,
                optional: config.optional,
                challenge,
                consumers,
            }),
            _ => Err(errors),
        }
    }

    /// Whether the request carries a signature (to choose between authentication policies).
    pub fn presented(&self, headers: &HeaderMap) -> bool {
        signature_value(headers).is_some()
    }

    /// Checks the signature. On success the consumer is the caller, and `body` is set when the
    /// body must be checked against the signed digest before forwarding.
    pub fn authenticate(
        &self,
        headers: &mut HeaderMap,
        facts: &RequestFacts<'_>,
        body: &mut Option<BodyCheck>,
    ) -> Result<Option<Identity>, ProxyError> {
        let Some(value) = signature_value(headers) else {
            return if self.optional { Ok(None) } else { Err(self.refuse(None, "a signed request is required")) };
        };
        let invalid = |why: &str| self.refuse(Some("invalid_signature"), why);
        if value.len() > MAX_AUTHORIZATION_BYTES {
            return Err(invalid("the signature parameters are too long"));
        }
        let params = parse_params(value).map_err(|why| invalid(&why))?;
        let algorithm = Algorithm::parse(&params.algorithm)
            .filter(|a| self.algorithms.contains(a))
            .ok_or_else(|| invalid("the algorithm is not accepted"))?;
        if let Some(missing) = self.required.iter().find(|r| !r.met_by(&params.headers)) {
            let name = match missing {
                Required::Date => "date",
                Required::RequestTarget => "@request-target",
                Required::Header(h) => h,
            };
            return Err(invalid(&format!("`{name}` must be among the signed headers")));
        }
        self.check_date(headers, &params.headers).map_err(|why| invalid(&why))?;
        let signing_string = signing_string(headers, facts, &params.headers).map_err(|why| invalid(&why))?;
        let signature =
            STANDARD.decode(params.signature.as_bytes()).map_err(|_| invalid("the signature is not base64"))?;
        let (entry, consumer) = match self.consumers.by_hmac_key(&params.key_id) {
            Ok(found) => found,
            Err(KeyRejection::Revoked) => return Err(invalid("the key has been revoked")),
            Err(KeyRejection::Expired) => return Err(invalid("the key has expired")),
            Err(KeyRejection::Unknown) => return Err(invalid("the signature is not valid")),
        };
        let key = ring::hmac::Key::new(algorithm.ring(), &entry.secret);
        // Constant-time comparison inside ring.
        ring::hmac::verify(&key, signing_string.as_bytes(), &signature)
            .map_err(|_| invalid("the signature is not valid"))?;
        if self.validate_body {
            *body = Some(digest_check(headers, self.max_body).map_err(|why| invalid(&why))?);
        }
        let identity = Identity::of_consumer(consumer.clone());
        if !self.keep {
            headers.remove(header::AUTHORIZATION);
        }
        Ok(Some(identity))
    }

    /// The signed date (`X-Date` before `Date`) must be within the clock skew.
    fn check_date(&self, headers: &HeaderMap, signed: &[String]) -> Result<(), String> {
        let name = [&X_DATE, &header::DATE]
            .into_iter()
            .find(|n| signed.iter().any(|s| s == n.as_str()) && headers.contains_key(*n))
            .or_else(|| [&X_DATE, &header::DATE].into_iter().find(|n| headers.contains_key(*n)))
            .ok_or("a Date or X-Date header is required")?;
        let text = headers.get(name).and_then(|v| v.to_str().ok()).ok_or("the date is not readable")?;
        let date = httpdate::parse_http_date(text).map_err(|_| format!("`{name}` is not an HTTP date"))?;
        let now = SystemTime::now();
        let skew = now.duration_since(date).or_else(|_| date.duration_since(now)).unwrap_or(Duration::MAX);
        if skew > self.clock_skew {
            return Err(format!("`{name}` is more than {}s away from the gateway's clock", self.clock_skew.as_secs()));
        }
        Ok(())
    }

    fn refuse(&self, error: Option<&'static str>, message: &str) -> ProxyError {
        ProxyError::unauthorized_with(self.challenge.clone(), error, message)
    }
}

/// The parameters of `Authorization: hmac …` or `Authorization: Signature …`.
fn signature_value(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = value.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("hmac") || scheme.eq_ignore_ascii_case("signature")).then(|| rest.trim())
}

/// `key="value", …`: every value quoted, no name twice.
fn parse_params(text: &str) -> Result<Params, String> {
    let mut params = Params::default();
    let mut seen = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let (name, after) = rest.split_once('=').ok_or("the signature parameters are malformed")?;
        let name = name.trim().to_ascii_lowercase();
        let after = after.trim_start().strip_prefix('"').ok_or("signature parameter values must be quoted")?;
        let end = after.find('"').ok_or("a signature parameter value is not closed")?;
        let value = &after[..end];
        rest = after[end + 1..].trim_start();
        rest = match rest.strip_prefix(',') {
            Some(r) => r.trim_start(),
            None if rest.is_empty() => rest,
            None => return Err("signature parameters must be separated by commas".into()),
        };
        if seen.contains(&name) {
            return Err(format!("the signature parameter `{name}` appears twice"));
        }
        seen.push(name.clone());
        match name.as_str() {
            "username" | "keyid" => params.key_id = value.to_owned(),
            "algorithm" => params.algorithm = value.to_owned(),
            "headers" => {
                params.headers = value.split_ascii_whitespace().map(str::to_ascii_lowercase).collect();
            }
            "signature" => params.signature = value.to_owned(),
            // Extension parameters (`created`, `expires`, `realm`…) are not used.
            _ => {}
        }
    }
    if params.key_id.is_empty() || params.signature.is_empty() || params.algorithm.is_empty() {
        return Err("the signature needs username (or keyId), algorithm and signature".into());
    }
    if params.headers.is_empty() {
        // draft-cavage: without `headers`, only the date is signed.
        params.headers.push("date".into());
    }
    if params.headers.len() > MAX_SIGNED_HEADERS {
        return Err(format!("more than {MAX_SIGNED_HEADERS} signed headers"));
    }
    Ok(params)
}

/// The string the client signed: one `name: value` line per signed header.
fn signing_string(headers: &HeaderMap, facts: &RequestFacts<'_>, signed: &[String]) -> Result<String, String> {
    let target = facts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let target = if facts.uri.scheme().is_some() { facts.uri.to_string() } else { target.to_owned() };
    let mut lines = Vec::with_capacity(signed.len());
    for name in signed {
        match name.as_str() {
            "request-line" => {
                lines.push(format!("{} {target} {}", facts.method, version_text(facts.version)));
            }
            "@request-target" | "(request-target)" => {
                lines.push(format!("{name}: {} {target}", facts.method.as_str().to_ascii_lowercase()));
            }
            _ => {
                let values: Vec<&str> = headers
                    .get_all(name.as_str())
                    .iter()
                    .map(|v| v.to_str().map(str::trim))
                    .collect::<Result<_, _>>()
                    .map_err(|_| format!("the signed header `{name}` is not readable text"))?;
                if values.is_empty() {
                    return Err(format!("the signed header `{name}` is missing"));
                }
                lines.push(format!("{name}: {}", values.join(", ")));
            }
        }
    }
    Ok(lines.join("\n"))
}

fn version_text(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2",
        _ => "HTTP/1.1",
    }
}

/// `Digest: SHA-256=<base64>` (or SHA-512; several may be listed).
fn digest_check(headers: &HeaderMap, max: u64) -> Result<BodyCheck, String> {
    let value = headers.get(&DIGEST).and_then(|v| v.to_str().ok()).ok_or("a Digest header is required")?;
    for item in value.split(',') {
        let Some((alg, encoded)) = item.trim().split_once('=') else { continue };
        let algorithm = match alg.to_ascii_uppercase().as_str() {
            "SHA-256" => &ring::digest::SHA256,
            "SHA-512" => &ring::digest::SHA512,
            _ => continue,
        };
        let expected = STANDARD.decode(encoded.trim()).map_err(|_| "the Digest is not base64")?;
        return Ok(BodyCheck { algorithm, expected, max });
    }
    Err("the Digest header has no SHA-256 or SHA-512 value".into())
}

impl BodyCheck {
    /// Reads the whole body (within the limit) and checks it against the digest; the body is
    /// only forwarded once it is known to be the one that was signed.
    /// `server_limit` is `server.limits.max_body_size`; the lower limit applies.
    pub async fn read(self, body: Incoming, server_limit: Option<u64>) -> Result<Bytes, ProxyError> {
        let limit = server_limit.map_or(self.max, |s| s.min(self.max));
        let bytes = crate::proxy::forward::read_limited(body, limit).await?;
        let actual = ring::digest::digest(self.algorithm, &bytes);
        if actual.as_ref() != self.expected.as_slice() {
            return Err(ProxyError::unauthorized(Some("invalid_signature"), "the body does not match its Digest"));
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_parse_strictly() {
        let p = parse_params(
            r#"username="alice", algorithm="hmac-sha256", headers="Date @request-target", signature="c2ln""#,
        )
        .unwrap();
        assert_eq!(p.key_id, "alice");
        assert_eq!(p.headers, ["date", "@request-target"]);
        let cavage = parse_params(r#"keyId="k",algorithm="hmac-sha512",signature="eA==",created="1""#).unwrap();
        assert_eq!((cavage.key_id.as_str(), cavage.headers.as_slice()), ("k", &["date".to_owned()][..]));
        for bad in [
            r#"username=alice, algorithm="a", signature="s""#,
            r#"username="alice" algorithm="a", signature="s""#,
            r#"username="alice", username="bob", algorithm="a", signature="s""#,
            r#"username="alice", algorithm="a", signature="s"#,
            r#"algorithm="a", signature="s""#,
            "garbage",
        ] {
            assert!(parse_params(bad).is_err(), "{bad}");
        }
        let many = (0..40).map(|i| format!("h{i}")).collect::<Vec<_>>().join(" ");
        assert!(parse_params(&format!(r#"username="a", algorithm="a", signature="s", headers="{many}""#)).is_err());
    }

    #[test]
    fn requirements_accept_their_aliases() {
        let signed = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert!(Required::Date.met_by(&signed(&["x-date"])));
        assert!(Required::RequestTarget.met_by(&signed(&["request-line"])));
        assert!(Required::RequestTarget.met_by(&signed(&["(request-target)"])));
        assert!(!Required::RequestTarget.met_by(&signed(&["date", "host"])));
        assert!(!Required::Header("digest".into()).met_by(&signed(&["date"])));
    }

    #[test]
    fn digests_are_read_from_the_header() {
        let mut h = HeaderMap::new();
        h.insert(&DIGEST, HeaderValue::from_static("MD5=abc, SHA-256=X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE="));
        let check = digest_check(&h, 10).unwrap();
        assert_eq!(check.expected.len(), 32);
        h.insert(&DIGEST, HeaderValue::from_static("MD5=abc"));
        assert!(digest_check(&h, 10).is_err());
        h.insert(&DIGEST, HeaderValue::from_static("SHA-256=!!"));
        assert!(digest_check(&h, 10).is_err());
    }
}
