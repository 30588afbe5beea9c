//! TLS termination with rustls (the `ring` provider): certificates chosen by SNI — an exact name,
//! then a wildcard one label deep, then the listener's default — TLS 1.2 and 1.3, ALPN `h2` and
//! `http/1.1`. Certificate and key files are watched and swapped in when they change: handshakes
//! from then on use the new pair, connections already open keep theirs.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::{TlsConfig, TlsVersion};

/// A listener's TLS: the acceptor new connections use, and the certificates behind it.
pub struct ListenerTls {
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub certificates: Arc<CertStore>,
    pub handshake_timeout: Duration,
    /// With client certificates: the headers that carry what they say (subject, SANs).
    pub client_headers: Option<ClientHeaders>,
}

/// Headers for a verified client certificate; always removed from what clients send.
#[derive(Debug, Clone)]
pub struct ClientHeaders {
    pub subject: Option<http::HeaderName>,
    pub sans: Option<http::HeaderName>,
}

impl std::fmt::Debug for ListenerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerTls").finish_non_exhaustive()
    }
}

impl ListenerTls {
    /// Loads every certificate (an error names the file) and starts watching them unless `dry_run`.
    pub fn build(config: &TlsConfig, dry_run: bool) -> Result<ListenerTls, (String, String)> {
        let store = Arc::new(CertStore::load(config)?);
        if !dry_run {
            watch(Arc::downgrade(&store), config.watch_interval.0);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let versions: &[&'static rustls::SupportedProtocolVersion] = match config.min_version {
            TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
            TlsVersion::V1_3 => &[&rustls::version::TLS13],
        };
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .map_err(|e| ("tls".to_owned(), e.to_string()))?;
        let (builder, client_headers) = match &config.client_auth {
            None => (builder.with_no_client_auth(), None),
            Some(auth) => {
                let field = |f: &str| format!("tls.client_auth.{f}");
                let roots = super::pem::roots(std::path::Path::new(&auth.ca)).map_err(|m| (field("ca"), m))?;
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                let verifier = if auth.required { verifier } else { verifier.allow_unauthenticated() };
                let verifier = verifier.build().map_err(|e| (field("ca"), e.to_string()))?;
                let header = |name: &Option<String>, f: &str| -> Result<Option<http::HeaderName>, (String, String)> {
                    name.as_deref()
                        .map(|n| {
                            http::HeaderName::from_bytes(n.as_bytes())
                                .map_err(|_| (field(f), format!("{n:?} is not a header name")))
                        })
                        .transpose()
                };
                let headers = ClientHeaders {
                    subject: header(&auth.subject_header, "subject_header")?,
                    sans: header(&auth.san_header, "san_header")?,
                };
                (builder.with_client_cert_verifier(verifier), Some(headers))
            }
        };
        let mut server = builder.with_cert_resolver(store.clone());
        server.alpn_protocols = config.alpn.iter().flatten().map(|p| p.as_bytes().to_vec()).collect();
        // Resumption by ticket: a returning client skips the full handshake.
        server.ticketer = rustls::crypto::ring::Ticketer::new().map_err(|e| ("tls".to_owned(), e.to_string()))?;
        server.send_tls13_tickets = 2;
        Ok(ListenerTls {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
            certificates: store,
            handshake_timeout: config.handshake_timeout.0,
            client_headers,
        })
    }
}

/// One configured pair of files.
#[derive(Debug, Clone)]
struct Source {
    index: usize,
    cert: PathBuf,
    key: PathBuf,
    names: Vec<String>,
    default: bool,
}

/// What the files said when they were last read.
#[derive(Debug, Clone, PartialEq)]
struct Stamp(Vec<Option<crate::config::watch::Fingerprint>>);

/// The certificates of a listener, by name.
pub struct CertStore {
    current: ArcSwap<Certs>,
    sources: Vec<Source>,
    stamp: Mutex<Stamp>,
}

struct Certs {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` is kept as `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
    /// Names served, for the admin API and logs.
    names: Vec<String>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore").field("names", &self.current.load().names).finish()
    }
}

impl CertStore {
    fn load(config: &TlsConfig) -> Result<CertStore, (String, String)> {
        if config.certificates.is_empty() {
            return Err(("tls.certificates".into(), "at least one certificate".into()));
        }
        let defaults = config.certificates.iter().filter(|c| c.default).count();
        if defaults > 1 {
            return Err(("tls.certificates".into(), "only one certificate can be the default".into()));
        }
        let sources: Vec<Source> = config
            .certificates
            .iter()
            .enumerate()
            .map(|(index, c)| Source {
                index,
                cert: PathBuf::from(&c.cert),
                key: PathBuf::from(&c.key),
                names: c.names.iter().map(|n| n.to_ascii_lowercase()).collect(),
                default: c.default || (defaults == 0 && index == 0),
            })
            .collect();
        let stamp = stamp_of(&sources);
        let certs = build(&sources)?;
        Ok(CertStore { current: ArcSwap::from_pointee(certs), sources, stamp: Mutex::new(stamp) })
    }

    /// The names the listener has certificates for (`*.` for wildcards).
    pub fn names(&self) -> Vec<String> {
        self.current.load().names.clone()
    }

    /// Reads the files again if they changed; keeps what it has when they do not make a valid
    /// set (a certificate renewed before its key, say), and tries again next time.
    fn refresh(&self) {
        let now = stamp_of(&self.sources);
        let mut last = self.stamp.lock().unwrap_or_else(|e| e.into_inner());
        if *last == now {
            return;
        }
        // A file being written shows a new stamp on each look: wait for two that agree.
        std::thread::sleep(Duration::from_millis(50));
        if stamp_of(&self.sources) != now {
            return;
        }
        match build(&self.sources) {
            Ok(certs) => {
                tracing::info!(names = ?certs.names, "TLS certificates reloaded");
                self.current.store(Arc::new(certs));
                *last = now;
            }
            Err((path, error)) => {
                tracing::warn!(%path, %error, "TLS certificate files changed but do not load; keeping the previous ones");
            }
        }
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let certs = self.current.load();
        let Some(name) = hello.server_name() else { return Some(certs.default.clone()) };
        let name = name.to_ascii_lowercase();
        if let Some(found) = certs.exact.get(&name) {
            return Some(found.clone());
        }
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(found) = certs.wildcard.get(parent) {
                return Some(found.clone());
            }
        }
        Some(certs.default.clone())
    }
}

/// The config watcher's fingerprint of every file: a renewal renamed over the old file is seen
/// even when size and modification time stay the same.
fn stamp_of(sources: &[Source]) -> Stamp {
    use crate::config::watch::fingerprint;
    Stamp(sources.iter().flat_map(|s| [fingerprint(&s.cert), fingerprint(&s.key)]).collect())
}

fn build(sources: &[Source]) -> Result<Certs, (String, String)> {
    let (mut exact, mut wildcard, mut names) = (HashMap::new(), HashMap::new(), Vec::new());
    let mut default = None;
    for source in sources {
        let path = format!("tls.certificates[{}]", source.index);
        let (key, san) = load_pair(source).map_err(|e| (path.clone(), e))?;
        let key = Arc::new(key);
        let served = if source.names.is_empty() { san } else { source.names.clone() };
        if served.is_empty() && !source.default {
            return Err((path, "the certificate names no DNS name: give `names`, or make it the default".into()));
        }
        for name in served {
            let taken = match name.strip_prefix("*.") {
                Some(parent) => wildcard.insert(parent.to_owned(), key.clone()).is_some(),
                None => exact.insert(name.clone(), key.clone()).is_some(),
            };
            if taken {
                return Err((path, format!("{name} is named by another certificate too")));
            }
            names.push(name);
        }
        if source.default {
            default = Some(key);
        }
    }
    let default = default.ok_or_else(|| ("tls.certificates".to_owned(), "no default certificate".to_owned()))?;
    Ok(Certs { exact, wildcard, default, names })
}

/// A certificate chain and its key, checked to belong together; and the DNS names of the
/// certificate's subjectAltName.
fn load_pair(source: &Source) -> Result<(CertifiedKey, Vec<String>), String> {
    let chain = super::pem::chain(&source.cert)?;
    let key = super::pem::key(&source.key)?;
    let signer =
        rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| format!("{}: {e}", source.key.display()))?;
    let end_entity = webpki::EndEntityCert::try_from(&chain[0])
        .map_err(|e| format!("{}: the certificate does not parse ({e:?})", source.cert.display()))?;
    let names: Vec<String> = end_entity.valid_dns_names().map(|n| n.to_ascii_lowercase()).collect();
    let certified = CertifiedKey::new(chain, signer);
    certified
        .keys_match()
        .map_err(|_| format!("{} is not the key of {}", source.key.display(), source.cert.display()))?;
    Ok((certified, names))
}

/// Looks at the files every `interval` while the store is in use.
fn watch(store: Weak<CertStore>, interval: Duration) {
    crate::upstream::active::runtime().spawn(async move {
        let mut every = tokio::time::interval(interval.max(Duration::from_millis(10)));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every.tick().await;
        loop {
            every.tick().await;
            let Some(store) = store.upgrade() else { return };
            // File reads and the short wait for a settled write are blocking work.
            let _ = tokio::task::spawn_blocking(move || store.refresh()).await;
        }
    });
}

/// What a verified client certificate says about its holder (mTLS on a listener).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The subject as an RFC 4514 string (`CN=client-a,O=Acme`), ready as a header value.
    pub subject: Option<http::HeaderValue>,
    /// DNS names and URIs of the subjectAltName, comma-separated, ready as a header value.
    pub sans: Option<http::HeaderValue>,
}

impl ClientIdentity {
    /// From the leaf certificate a client presented (and rustls verified): built once per
    /// connection, copied onto each of its requests.
    pub fn of(cert: &rustls::pki_types::CertificateDer<'_>) -> Option<ClientIdentity> {
        let parsed = webpki::EndEntityCert::try_from(cert).ok()?;
        let value = |text: String| (!text.is_empty()).then(|| http::HeaderValue::from_str(&text).ok()).flatten();
        let subject = value(rfc4514(parsed.subject()).unwrap_or_default());
        let sans: Vec<&str> = parsed.valid_dns_names().chain(parsed.valid_uri_names()).collect();
        Some(ClientIdentity { subject, sans: value(sans.join(",")) })
    }
}

/// One DER element: (tag, contents, the rest). Definite lengths up to 64 KiB only.
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = match first {
        n if n < 0x80 => (usize::from(n), rest),
        0x81 => (usize::from(*rest.first()?), rest.get(1..)?),
        0x82 => (usize::from(u16::from_be_bytes([*rest.first()?, *rest.get(1)?])), rest.get(2..)?),
        _ => return None,
    };
    Some((tag, rest.get(..len)?, rest.get(len..)?))
}

/// The contents of a certificate's subject Name as RFC 4514 text (most specific first).
fn rfc4514(mut name: &[u8]) -> Option<String> {
    let mut rdns = Vec::new();
    while !name.is_empty() {
        let (tag, mut set, rest) = der(name)?;
        name = rest;
        if tag != 0x31 {
            return None;
        }
        let mut parts = Vec::new();
        while !set.is_empty() {
            let (tag, attribute, rest) = der(set)?;
            set = rest;
            if tag != 0x30 {
                return None;
            }
            let (oid_tag, oid, value) = der(attribute)?;
            let (value_tag, value, _) = der(value)?;
            if oid_tag != 0x06 {
                return None;
            }
            let key = match oid {
                [0x55, 0x04, 0x03] => "CN".to_owned(),
                [0x55, 0x04, 0x06] => "C".to_owned(),
                [0x55, 0x04, 0x07] => "L".to_owned(),
                [0x55, 0x04, 0x08] => "ST".to_owned(),
                [0x55, 0x04, 0x0a] => "O".to_owned(),
                [0x55, 0x04, 0x0b] => "OU".to_owned(),
                [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01] => "emailAddress".to_owned(),
                other => dotted(other)?,
            };
            let text = match value_tag {
                // UTF8String, PrintableString, TeletexString, IA5String.
                0x0c | 0x13 | 0x14 | 0x16 => escape(&String::from_utf8_lossy(value)),
                // Anything else: the value's DER in hex, as RFC 4514 says.
                _ => {
                    let mut hex = String::from("#");
                    crate::text::push_hex(&mut hex, &[value_tag]);
                    hex.push_str(&crate::text::hex_encode(value));
                    hex
                }
            };
            parts.push(format!("{key}={text}"));
        }
        rdns.push(parts.join("+"));
    }
    rdns.reverse();
    Some(rdns.join(","))
}

/// An OID in dotted form.
fn dotted(oid: &[u8]) -> Option<String> {
    let (&first, rest) = oid.split_first()?;
    let mut parts = vec![(first / 40).to_string(), (first % 40).to_string()];
    let mut value: u64 = 0;
    for &b in rest {
        value = value.checked_mul(128)? | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            parts.push(value.to_string());
            value = 0;
        }
    }
    Some(parts.join("."))
}

/// RFC 4514 escaping, and control characters as `\XX` so the text fits in a header.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        match c {
            ',' | '+' | '"' | '\\' | '<' | '>' | ';' => {
                out.push('\\');
                out.push(c);
            }
            '#' if i == 0 => out.push_str("\\#"),
            ' ' if i == 0 || i == last => out.push_str("\\ "),
            c if c.is_control() => {
                for b in c.to_string().bytes() {
                    out.push_str(&format!("\\{b:02X}"));
                }
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_read_as_rfc4514_and_hostile_der_is_refused() {
        // SET { SEQ { CN "a,b" } }, SET { SEQ { O "Acme" } }
        let name = [
            0x31, 0x0c, 0x30, 0x0a, 0x06, 0x03, 0x55, 0x04, 0x03, 0x0c, 0x03, b'a', b',', b'b', //
            0x31, 0x0d, 0x30, 0x0b, 0x06, 0x03, 0x55, 0x04, 0x0a, 0x13, 0x04, b'A', b'c', b'm', b'e',
        ];
        assert_eq!(rfc4514(&name).as_deref(), Some("O=Acme,CN=a\\,b"));
        // Truncated, wrong tags, lengths past the end, long-form lengths beyond two bytes.
        for bad in [&name[..5], &[0x30, 0x00][..], &[0x31, 0x05, 0x30][..], &[0x31, 0x84, 0, 0, 0, 1, 0][..]] {
            assert_eq!(rfc4514(bad), None, "{bad:?}");
        }
        assert_eq!(escape(" #x\n"), "\\ #x\\0A");
        assert_eq!(dotted(&[0x2a, 0x86, 0x48]).as_deref(), Some("1.2.840"));
    }
}
