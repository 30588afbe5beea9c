//! Small HTTP/1.1 exchanges for the gateway's own needs — a GET of a JWKS document, a POST of a
//! span export — with a size cap, over TLS for https:// URLs. Not on the proxying path.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use tokio::net::TcpStream;

use super::h1::{self, Io};
use crate::proxy::body::UpstreamBody;

/// Fetches `url` (`http://`, or `https://` verified against the system's roots) and returns the
/// body of a 200 answer.
pub async fn get(url: &str, timeout: Duration, max_bytes: usize) -> Result<Bytes, String> {
    match tokio::time::timeout(timeout, get_inner(url, max_bytes)).await {
        Ok(result) => result,
        Err(_) => Err(format!("fetching {url} timed out after {timeout:?}")),
    }
}

async fn get_inner(url: &str, max_bytes: usize) -> Result<Bytes, String> {
    let request = Request::get(url)
        .header(header::ACCEPT, "application/json")
        .header(header::USER_AGENT, concat!("gatehouse/", env!("CARGO_PKG_VERSION")))
        .body(Bytes::new())
        .map_err(|e| format!("cannot build a request for {url}: {e}"))?;
    let response = send(request, max_bytes).await?;
    if response.status() != StatusCode::OK {
        return Err(format!("{url} answered {}", response.status()));
    }
    Ok(response.into_body())
}

/// Sends `request` (its URI absolute: `http://` or `https://`, verified against the system's
/// roots) on a connection of its own, and reads the answer whole, up to `max_bytes`. For the
/// gateway's own occasional calls (JWKS documents, span exports), not the proxying path.
pub async fn send(request: Request<Bytes>, max_bytes: usize) -> Result<http::Response<Bytes>, String> {
    let (mut parts, body) = request.into_parts();
    let url = parts.uri.to_string();
    let tls = match parts.uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(format!("\"{url}\": only http:// and https:// URLs can be reached")),
    };
    let authority = parts.uri.authority().ok_or_else(|| format!("\"{url}\" has no host"))?.clone();
    let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_owned();
    let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let stream =
        TcpStream::connect((host.as_str(), port)).await.map_err(|e| format!("cannot connect to {url}: {e}"))?;
    let roots = if tls { Some(super::tls::UpstreamTls::system()?) } else { None };
    let io = Io::over(stream, &host, roots.as_deref()).await.map_err(|e| format!("TLS to {url} failed: {e}"))?;
    // The request target goes out in origin form, the authority in Host.
    let host_value = http::HeaderValue::from_str(authority.as_str()).map_err(|_| format!("{url}: bad host"))?;
    parts.headers.insert(header::HOST, host_value);
    let mut request = Request::from_parts(parts, UpstreamBody::Full(Some(body)));
    let response = h1::exchange(h1::Conn::new(io), &mut request, None)
        .await
        .map_err(|failure| format!("{url} failed: {}", failure.error))?;
    let (parts, body) = response.into_parts();
    let body = Limited::new(body, max_bytes).collect().await.map_err(|e| format!("reading {url} failed: {e}"))?;
    Ok(http::Response::from_parts(parts, body.to_bytes()))
}
