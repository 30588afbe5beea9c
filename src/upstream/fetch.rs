//! A small HTTP/1.1 GET for the gateway's own needs (JWKS documents and the like), with a timeout
//! and a size cap. Not on the proxying path.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Fetches `url` (`http://`, or `https://` verified against the system's roots) and returns the
/// body of a 200 answer.
pub async fn get(url: &str, timeout: Duration, max_bytes: usize) -> Result<Bytes, String> {
    match tokio::time::timeout(timeout, get_inner(url, max_bytes)).await {
        Ok(result) => result,
        Err(_) => Err(format!("fetching {url} timed out after {timeout:?}")),
    }
}

async fn get_inner(url: &str, max_bytes: usize) -> Result<Bytes, String> {
    let uri: Uri = url.parse().map_err(|_| format!("\"{url}\" is not a URL"))?;
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(format!("\"{url}\": only http:// and https:// URLs can be fetched")),
    };
    let authority = uri.authority().ok_or_else(|| format!("\"{url}\" has no host"))?.clone();
    let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_owned();
    let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let stream =
        TcpStream::connect((host.as_str(), port)).await.map_err(|e| format!("cannot connect to {url}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let mut sender = if tls {
        let secured = super::tls::UpstreamTls::system()?
            .connect(stream, &host)
            .await
            .map_err(|e| format!("TLS to {url} failed: {e}"))?;
        start(secured, url).await?
    } else {
        start(stream, url).await?
    };
    let path = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let request = Request::get(path)
        .header(header::HOST, authority.as_str())
        .header(header::ACCEPT, "application/json")
        .header(header::USER_AGENT, concat!("gatehouse/", env!("CARGO_PKG_VERSION")))
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("cannot build a request for {url}: {e}"))?;
    let response = sender.send_request(request).await.map_err(|e| format!("fetching {url} failed: {e}"))?;
    if response.status() != StatusCode::OK {
        return Err(format!("{url} answered {}", response.status()));
    }
    let body = Limited::new(response.into_body(), max_bytes)
        .collect()
        .await
        .map_err(|e| format!("reading {url} failed: {e}"))?;
    Ok(body.to_bytes())
}

async fn start<I>(io: I, url: &str) -> Result<hyper::client::conn::http1::SendRequest<Empty<Bytes>>, String>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("cannot talk to {url}: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}
