//! TLS to upstreams (`https://` endpoints): rustls with the system's trusted roots or a configured
//! CA, SNI from the endpoint's host (or `server_name`), an optional client certificate (mTLS to
//! the upstream), and `insecure_skip_verify` for development, loudly.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

use crate::config::UpstreamTlsConfig;
use crate::transport::pem;

/// How an upstream's connections are secured.
pub struct UpstreamTls {
    connector: tokio_rustls::TlsConnector,
    /// The name sent in SNI and verified, instead of each endpoint's host.
    server_name: Option<ServerName<'static>>,
    /// Certificates are not verified (development only).
    pub insecure: bool,
    /// The settings it was built from (what tells two apart in registry keys).
    settings: String,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.settings)
    }
}

impl PartialEq for UpstreamTls {
    fn eq(&self, other: &Self) -> bool {
        self.settings == other.settings
    }
}

/// The system's trusted roots, read once.
fn system_roots() -> Result<Arc<rustls::RootCertStore>, String> {
    static ROOTS: OnceLock<Result<Arc<rustls::RootCertStore>, String>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = rustls::RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found.errors.first().map(ToString::to_string).unwrap_or_else(|| "none found".into());
                return Err(format!("no trusted root certificates on this system ({why}): give tls.ca"));
            }
            Ok(Arc::new(roots))
        })
        .clone()
}

impl UpstreamTls {
    /// TLS with the system's roots and nothing else: `https://` URLs of the gateway's own calls.
    pub fn system() -> Result<Arc<UpstreamTls>, String> {
        static DEFAULT: OnceLock<Result<Arc<UpstreamTls>, String>> = OnceLock::new();
        DEFAULT
            .get_or_init(|| UpstreamTls::build(&UpstreamTlsConfig::default(), false).map(Arc::new).map_err(|(_, m)| m))
            .clone()
    }

    /// From an upstream's `tls` settings, offering `h2` (else `http/1.1`) in ALPN; an error
    /// names the field.
    pub fn build(config: &UpstreamTlsConfig, http2: bool) -> Result<UpstreamTls, (String, String)> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| (String::new(), e.to_string()))?;
        let builder = if config.insecure_skip_verify {
            builder.dangerous().with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
        } else {
            let roots = match &config.ca {
                Some(path) => Arc::new(pem::roots(Path::new(path)).map_err(|m| ("ca".to_owned(), m))?),
                None => system_roots().map_err(|m| ("ca".to_owned(), m))?,
            };
            builder.with_root_certificates(roots)
        };
        let mut client = match &config.client_certificate {
            Some(pair) => {
                let chain = pem::chain(Path::new(&pair.cert)).map_err(|m| ("client_certificate.cert".to_owned(), m))?;
                let key = pem::key(Path::new(&pair.key)).map_err(|m| ("client_certificate.key".to_owned(), m))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| ("client_certificate".to_owned(), e.to_string()))?
            }
            None => builder.with_no_client_auth(),
        };
        client.alpn_protocols = vec![if http2 { b"h2".to_vec() } else { b"http/1.1".to_vec() }];
        let server_name = match &config.server_name {
            Some(name) => Some(
                ServerName::try_from(name.clone())
                    .map_err(|_| ("server_name".to_owned(), format!("{name:?} is not a DNS name or IP address")))?,
            ),
            None => None,
        };
        Ok(UpstreamTls {
            connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
            server_name,
            insecure: config.insecure_skip_verify,
            settings: format!("{config:?} h2={http2}"),
        })
    }

    /// The same settings offering the other protocol in ALPN (health checks speak HTTP/1.1, or
    /// HTTP/2 for gRPC, whatever the upstream's): no files read again.
    pub fn with_alpn(&self, http2: bool) -> UpstreamTls {
        let mut client = rustls::ClientConfig::clone(self.connector.config());
        client.alpn_protocols = vec![if http2 { b"h2".to_vec() } else { b"http/1.1".to_vec() }];
        let settings = match self.settings.rsplit_once(" h2=") {
            Some((config, _)) => format!("{config} h2={http2}"),
            None => self.settings.clone(),
        };
        UpstreamTls {
            connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
            server_name: self.server_name.clone(),
            insecure: self.insecure,
            settings,
        }
    }

    /// The TLS handshake over a connected socket to an endpoint at `host`.
    pub async fn connect(
        &self,
        tcp: TcpStream,
        host: &str,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let name =
            match &self.server_name {
                Some(name) => name.clone(),
                None => ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']').to_owned()).map_err(
                    |_| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{host}: no TLS server name")),
                )?,
            };
        self.connector.connect(name, tcp).await
    }
}

/// `insecure_skip_verify`: any certificate is taken (its signatures are still checked, so the
/// handshake itself is sound). For development against self-signed certificates only.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
