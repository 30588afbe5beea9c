//! Test PKI and TLS clients: a CA made per test (rcgen), leaf certificates for names, and rustls
//! clients that trust only that CA.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A CA and the files of the certificates it issued.
pub struct Pki {
    pub dir: tempfile::TempDir,
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    pub ca_der: CertificateDer<'static>,
}

/// A certificate's files and its DER (to compare with what a server presented).
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: CertificateDer<'static>,
}

impl Pki {
    pub fn new() -> Pki {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "gatehouse test CA");
        let ca = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap();
        let ca_der = ca.der().clone();
        Pki { dir: tempfile::tempdir().unwrap(), ca, ca_der }
    }

    /// A certificate for `names`, written as `<file>.pem` and `<file>.key`.
    pub fn issue(&self, file: &str, names: &[&str]) -> Issued {
        self.sign(file, rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap())
    }

    fn sign(&self, file: &str, params: rcgen::CertificateParams) -> Issued {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let (cert_path, key_path) = (self.path(&format!("{file}.pem")), self.path(&format!("{file}.key")));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        Issued { cert: cert_path, key: key_path, der: cert.der().clone() }
    }

    /// A client certificate: `cn` and `org` in its subject, `sans` as DNS names.
    pub fn issue_client(&self, file: &str, cn: &str, org: &str, sans: &[&str]) -> Issued {
        let mut params = rcgen::CertificateParams::new(sans.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        params.distinguished_name.push(rcgen::DnType::OrganizationName, org);
        self.sign(file, params)
    }

    /// A client config trusting this CA and presenting `issued`.
    pub fn client_with_cert(&self, issued: &Issued) -> rustls::ClientConfig {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&issued.key).unwrap();
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(vec![issued.der.clone()], key)
            .unwrap()
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    pub fn ca_pem_path(&self) -> PathBuf {
        let path = self.path("ca.pem");
        std::fs::write(&path, self.ca.pem()).unwrap();
        path
    }

    /// A client config trusting this CA, offering `alpn`, limited to `versions` when given.
    pub fn client(
        &self,
        alpn: &[&str],
        versions: Option<&[&'static rustls::SupportedProtocolVersion]>,
    ) -> rustls::ClientConfig {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions.unwrap_or(rustls::DEFAULT_VERSIONS))
            .unwrap();
        let mut config = builder.with_root_certificates(roots).with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        config
    }
}

/// Completes a handshake as `sni` (no SNI when it is an IP address).
pub async fn handshake(
    addr: SocketAddr,
    sni: &str,
    config: rustls::ClientConfig,
) -> std::io::Result<TlsStream<TcpStream>> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    connector.connect(name, tcp).await
}

/// The certificate the server presented.
pub fn presented(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream.get_ref().1.peer_certificates().unwrap()[0].clone().into_owned()
}

/// One GET over a ready stream, HTTP/2 or HTTP/1.1: (status, version, body).
pub async fn get<S>(stream: S, h2: bool, authority: &str, path: &str) -> (u16, http::Version, String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(stream);
    let request = |version| {
        let builder = http::Request::builder().uri(format!("https://{authority}{path}")).version(version);
        let builder = if h2 { builder } else { builder.uri(path).header("host", authority) };
        builder.body(Full::new(Bytes::new())).unwrap()
    };
    let response = if h2 {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.unwrap();
        tokio::spawn(conn);
        sender.send_request(request(http::Version::HTTP_2)).await.unwrap()
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        sender.send_request(request(http::Version::HTTP_11)).await.unwrap()
    };
    let (status, version) = (response.status().as_u16(), response.version());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, version, String::from_utf8_lossy(&body).into_owned())
}

/// Writes `text` to `path` the way certificate tools do: a new file renamed over the old.
pub fn replace(path: &Path, text: &[u8]) {
    let temporary = path.with_extension("new");
    std::fs::write(&temporary, text).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

/// An HTTPS server answering every request with JSON: the SNI it was reached by, whether the
/// client presented a certificate, and the request's Host. With `client_ca`, a client
/// certificate from `pki` is required.
pub struct HttpsUpstream {
    pub addr: SocketAddr,
    /// TLS handshakes completed.
    pub handshakes: Arc<std::sync::atomic::AtomicUsize>,
    /// Paths requested, in order.
    pub paths: Arc<std::sync::Mutex<Vec<String>>>,
}

impl HttpsUpstream {
    pub async fn start(pki: &Pki, issued: &Issued, require_client_cert: bool) -> HttpsUpstream {
        use rustls::pki_types::pem::PemObject;
        let chain = vec![issued.der.clone()];
        let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&issued.key).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = if require_client_cert {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(pki.ca_der.clone()).unwrap();
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build().unwrap();
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let config = Arc::new(builder.with_single_cert(chain, key).unwrap());
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handshakes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let paths = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (counted, seen) = (handshakes.clone(), paths.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let (counted, seen) = (counted.clone(), seen.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let (_, session) = tls.get_ref();
                    let sni = session.server_name().map(str::to_owned);
                    let client_cert = session.peer_certificates().is_some_and(|c| !c.is_empty());
                    let service = hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                        seen.lock().unwrap().push(request.uri().path().to_owned());
                        let body = serde_json::json!({
                            "sni": sni,
                            "client_cert": client_cert,
                            "host": request.headers().get("host").map(|h| h.to_str().unwrap_or_default().to_owned()),
                            "uri": request.uri().to_string(),
                        });
                        async move {
                            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(
                                body.to_string(),
                            ))))
                        }
                    });
                    let _ =
                        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), service).await;
                });
            }
        });
        HttpsUpstream { addr, handshakes, paths }
    }
}
