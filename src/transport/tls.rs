//! TLS termination with rustls (the `ring` provider): certificates chosen by SNI — an exact name,
//! then a wildcard one label deep, then the listener's default — TLS 1.2 and 1.3, ALPN `h2` and
//! `http/1.1`. Certificate and key files are watched and swapped in when they change: handshakes
//! from then on use the new pair, connections already open keep theirs.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::{TlsConfig, TlsVersion};

/// A listener's TLS: the acceptor new connections use, and the certificates behind it.
pub struct ListenerTls {
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub certificates: Arc<CertStore>,
    pub handshake_timeout: Duration,
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
        let mut server = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .map_err(|e| ("tls".to_owned(), e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(store.clone());
        server.alpn_protocols = config.alpn.iter().flatten().map(|p| p.as_bytes().to_vec()).collect();
        // Resumption by ticket: a returning client skips the full handshake.
        server.ticketer = rustls::crypto::ring::Ticketer::new().map_err(|e| ("tls".to_owned(), e.to_string()))?;
        server.send_tls13_tickets = 2;
        Ok(ListenerTls {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
            certificates: store,
            handshake_timeout: config.handshake_timeout.0,
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
struct Stamp(Vec<Option<(SystemTime, u64)>>);

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

fn stamp_of(sources: &[Source]) -> Stamp {
    let look = |path: &PathBuf| {
        std::fs::metadata(path).ok().map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
    };
    Stamp(sources.iter().flat_map(|s| [look(&s.cert), look(&s.key)]).collect())
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
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let read = |path: &PathBuf| {
        let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
        if meta.len() > 1024 * 1024 {
            return Err(format!("{}: larger than 1 MiB", path.display()));
        }
        std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
    };
    let cert_pem = read(&source.cert)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: not a PEM certificate chain ({e})", source.cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no certificate in it", source.cert.display()));
    }
    let key_pem = read(&source.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| format!("{}: not a PEM private key ({e})", source.key.display()))?;
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
