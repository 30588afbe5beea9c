//! Sending one request to one endpoint over a pooled HTTP/1.1 connection (request path step 7).
//!
//! HTTP/1.1 goes through gatehouse's own client (`h1`); HTTP/2 upstreams through hyper's. A pooled
//! connection is tried first; if it turns out to have been closed by the upstream while idle, the
//! request goes to the next pooled connection or a new one, so a stale pool never fails a request.
//! New connections are made with the upstream's connect timeout, trying each resolved address in
//! turn.

use std::future::Future;
use std::io;
use std::time::Duration;

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::proxy::body::UpstreamBody;

use super::h1::{self, Io};
use super::pool::{self, Sender2};
use super::tls::UpstreamTls;
use super::{Endpoint, Upstream};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An upstream's response body: read from an HTTP/1.1 connection by gatehouse's own client, or
/// a stream of an HTTP/2 connection.
pub enum ResponseBody {
    H1(h1::Body),
    H2(Incoming),
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ResponseBody::H1(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            ResponseBody::H2(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::H1(body) => body.is_end_stream(),
            ResponseBody::H2(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::H1(body) => body.size_hint(),
            ResponseBody::H2(body) => body.size_hint(),
        }
    }
}

/// Why an upstream exchange failed; the proxy maps these to 502/504.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to {endpoint}: {source}")]
    Connect { endpoint: String, source: io::Error },
    #[error("connecting to {endpoint} timed out")]
    ConnectTimeout { endpoint: String },
    #[error("upstream {endpoint} failed: {source}")]
    Exchange { endpoint: String, source: BoxError },
    #[error("upstream {endpoint} sent no response head within {after:?}")]
    ResponseTimeout { endpoint: String, after: Duration },
    #[error("upstream {upstream} has circuit_breaker.max_pending connections being opened")]
    TooManyConnecting { upstream: String },
}

/// A route's replacements for its upstream's connect and response-head timeouts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TryTimeouts {
    pub connect: Option<Duration>,
    pub response_header: Option<Duration>,
}

/// Sends `request` to `endpoint` and waits for the response head.
pub async fn send(
    upstream: &Upstream,
    endpoint: &Endpoint,
    request: Request<UpstreamBody>,
) -> Result<Response<ResponseBody>, UpstreamError> {
    send_or_return(upstream, endpoint, request, TryTimeouts::default()).await.map_err(|(e, _)| e)
}

/// `send`, giving the request back when nothing of it was sent (it can go to another endpoint,
/// body and all). `timeouts` replace the upstream's where set.
pub async fn send_or_return(
    upstream: &Upstream,
    endpoint: &Endpoint,
    mut request: Request<UpstreamBody>,
    timeouts: TryTimeouts,
) -> Result<Response<ResponseBody>, (UpstreamError, Option<Request<UpstreamBody>>)> {
    let connect_timeout = timeouts.connect.unwrap_or(upstream.connect_timeout);
    let head_timeout = timeouts.response_header.unwrap_or(upstream.response_header_timeout);
    let key = endpoint.state.id;
    endpoint.state.count_request();
    if upstream.http2 {
        // Boxed, as the dial below: what is not the pooled path stays out of every request's future.
        return Box::pin(send_h2(upstream, endpoint, request, connect_timeout, head_timeout)).await;
    }
    let release = Some(h1::Release { key, settings: upstream.pool });
    // Pooled connections first. One the upstream closed while it was idle (found out only once
    // the request is on its way) passes the request on to the next, or to a new connection.
    loop {
        let conn = match pool::take(key) {
            Some(conn) => conn,
            // Boxed: connecting is not the usual path, and its future stays out of the request's.
            None => match Box::pin(connect(upstream, endpoint, connect_timeout)).await {
                Ok(conn) => conn,
                Err(e) => return Err((e, Some(request))),
            },
        };
        // Not `timed`: an async fn around the exchange would hold the exchange's future twice.
        match tokio::time::timeout(head_timeout, h1::exchange(conn, &mut request, release)).await {
            Err(_) => return Err((response_timeout(endpoint, head_timeout), None)),
            Ok(Ok(response)) => return Ok(response.map(ResponseBody::H1)),
            Ok(Err(failure)) if failure.stale => continue,
            Ok(Err(failure)) => return Err(h1_failure(endpoint, failure, request)),
        }
    }
}

/// A new HTTP/1.1 connection, within the breaker's `max_pending`.
async fn connect(upstream: &Upstream, endpoint: &Endpoint, timeout: Duration) -> Result<h1::Conn, UpstreamError> {
    let _pending = match upstream.breaker.as_ref().map(|b| b.connecting()) {
        Some(Err(_)) => return Err(UpstreamError::TooManyConnecting { upstream: upstream.name.to_string() }),
        Some(Ok(pending)) => pending,
        None => None,
    };
    dial(endpoint, timeout, upstream.tls.as_deref()).await.map(h1::Conn::new)
}

fn h1_failure(
    endpoint: &Endpoint,
    failure: h1::Failure,
    request: Request<UpstreamBody>,
) -> (UpstreamError, Option<Request<UpstreamBody>>) {
    let back = (!failure.written).then_some(request);
    (UpstreamError::Exchange { endpoint: endpoint.url.to_string(), source: Box::new(failure.error) }, back)
}

/// `send_or_return` to an HTTP/2 upstream: the request becomes a stream of the worker's
/// connection to the endpoint (made on first use, and again when the upstream closed it).
async fn send_h2(
    upstream: &Upstream,
    endpoint: &Endpoint,
    mut request: Request<UpstreamBody>,
    connect_timeout: Duration,
    head_timeout: Duration,
) -> Result<Response<ResponseBody>, (UpstreamError, Option<Request<UpstreamBody>>)> {
    let key = endpoint.state.id;
    // HTTP/2 names the target in :scheme and :authority, taken from an absolute URI.
    let scheme = if upstream.tls.is_some() { "https" } else { "http" };
    let authority = request.headers_mut().remove(http::header::HOST);
    let authority = authority.as_ref().and_then(|h| h.to_str().ok()).unwrap_or("localhost");
    let target = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
    match format!("{scheme}://{authority}{target}").parse::<http::Uri>() {
        Ok(uri) => *request.uri_mut() = uri,
        Err(_) => {
            let error = UpstreamError::Connect {
                endpoint: endpoint.url.to_string(),
                source: io::Error::new(io::ErrorKind::InvalidInput, "no valid HTTP/2 target"),
            };
            return Err((error, None));
        }
    }
    *request.version_mut() = http::Version::HTTP_2;
    // The worker's connection, if it still takes streams (one the upstream is closing — GOAWAY,
    // idle timeout — is replaced, as a stale HTTP/1 connection is); else a new one.
    let mut pooled = pool::take_shared(key);
    if let Some(sender) = pooled.as_mut() {
        if sender.ready().await.is_err() {
            pool::drop_shared(key);
            pooled = None;
        }
    }
    let mut sender = match pooled {
        Some(sender) => sender,
        None => {
            let sender = match connect_h2(endpoint, connect_timeout, upstream.tls.as_deref()).await {
                Ok(sender) => sender,
                Err(e) => return Err((e, Some(request))),
            };
            pool::put_shared(key, sender.clone());
            sender
        }
    };
    // Waits while the connection has as many streams open as the upstream allows.
    if let Err(source) = sender.ready().await {
        return Err((exchange_error(endpoint, source), Some(request)));
    }
    match timed(head_timeout, endpoint, sender.try_send_request(request)).await.map_err(|e| (e, None))? {
        Ok(response) => Ok(response.map(ResponseBody::H2)),
        Err(mut err) => {
            let back = err.take_message();
            Err((exchange_error(endpoint, err.into_error()), back))
        }
    }
}

async fn connect_h2(
    endpoint: &Endpoint,
    timeout: Duration,
    tls: Option<&UpstreamTls>,
) -> Result<Sender2, UpstreamError> {
    match dial(endpoint, timeout, tls).await? {
        Io::Plain(stream) => handshake_h2(endpoint, stream).await,
        Io::Tls(stream) => {
            if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
                let source = io::Error::other("the upstream did not agree to HTTP/2 (ALPN h2)");
                return Err(UpstreamError::Connect { endpoint: endpoint.url.to_string(), source });
            }
            handshake_h2(endpoint, stream).await
        }
    }
}

async fn handshake_h2<I>(endpoint: &Endpoint, io: I) -> Result<Sender2, UpstreamError>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, connection) = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(false)
        .handshake(TokioIo::new(io))
        .await
        .map_err(|source| exchange_error(endpoint, source))?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(error = %err, "upstream HTTP/2 connection closed with an error");
        }
    });
    Ok(sender)
}

/// Bounds the wait for the response head.
async fn timed<T>(limit: Duration, endpoint: &Endpoint, exchange: impl Future<Output = T>) -> Result<T, UpstreamError> {
    tokio::time::timeout(limit, exchange).await.map_err(|_| response_timeout(endpoint, limit))
}

fn response_timeout(endpoint: &Endpoint, after: Duration) -> UpstreamError {
    UpstreamError::ResponseTimeout { endpoint: endpoint.url.to_string(), after }
}

fn exchange_error(endpoint: &Endpoint, source: hyper::Error) -> UpstreamError {
    UpstreamError::Exchange { endpoint: endpoint.url.to_string(), source: Box::new(source) }
}

/// A connection to one of the endpoint's addresses (with `tls`, its handshake done) within
/// `timeout`.
async fn dial(endpoint: &Endpoint, timeout: Duration, tls: Option<&UpstreamTls>) -> Result<Io, UpstreamError> {
    let connect_all = async {
        let addrs = endpoint.addresses().await?;
        let mut last_error = None;
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(stream) => return Io::over(stream, &endpoint.host, tls).await,
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address")))
    };
    match tokio::time::timeout(timeout, connect_all).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(source)) => Err(UpstreamError::Connect { endpoint: endpoint.url.to_string(), source }),
        Err(_) => Err(UpstreamError::ConnectTimeout { endpoint: endpoint.url.to_string() }),
    }
}
