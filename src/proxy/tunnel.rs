//! WebSocket (HTTP/1.1 Upgrade): after the upstream's `101`, the client's and the upstream's
//! connections are joined and bytes relayed both ways until either side closes, or until neither
//! has sent anything for `server.timeouts.websocket_idle`.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method, Version, header};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::headers::has_token;
use crate::upstream::h1::{Conn, Upgraded};

/// Whether a request asks to become a WebSocket: `GET`, HTTP/1.1, `Connection: upgrade` and
/// `Upgrade: websocket` (names and tokens without case).
pub fn is_websocket_upgrade(method: &Method, version: Version, headers: &HeaderMap) -> bool {
    *method == Method::GET
        && version == Version::HTTP_11
        && has_token(headers, header::CONNECTION, "upgrade")
        && has_token(headers, header::UPGRADE, "websocket")
}

/// The client's side of an upgrade, taken from the request before it goes upstream.
pub struct Upgrade {
    client: OnUpgrade,
    protocol: HeaderValue,
}

impl Upgrade {
    pub fn take(extensions: &mut http::Extensions, headers: &HeaderMap) -> Option<Upgrade> {
        let client = extensions.remove::<OnUpgrade>()?;
        let protocol = headers.get(header::UPGRADE)?.clone();
        Some(Upgrade { client, protocol })
    }

    /// Puts back the two hop-by-hop headers that make the upstream's request an upgrade.
    pub fn restore_request_headers(&self, headers: &mut HeaderMap) {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, self.protocol.clone());
    }

    /// The upstream agreed (`101`): joins the two connections on a task of their own, and puts the
    /// upgrade headers back on the response for the client.
    pub fn switch(
        self,
        response: &mut http::response::Parts,
        upstream_protocol: Option<HeaderValue>,
        idle: Duration,
        hold: Option<crate::transport::conn::ConnectionHold>,
    ) {
        let Some(upstream) = response.extensions.remove::<Upgraded>().and_then(|u| u.take()) else { return };
        response.headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        response.headers.insert(header::UPGRADE, upstream_protocol.unwrap_or(self.protocol));
        let client = self.client;
        tokio::spawn(async move {
            match client.await {
                Ok(client) => relay(client, upstream, idle).await,
                Err(e) => tracing::debug!(error = %e, "WebSocket upgrade did not complete"),
            }
            drop(hold);
        });
    }
}

async fn relay(client: hyper::upgrade::Upgraded, upstream: Conn, idle: Duration) {
    // Reads on either side count as activity; the watch looks every quarter of the idle time
    // and closes the tunnel once a whole idle time has passed without any.
    let activity = AtomicU64::new(0);
    let mut client = Watched { io: TokioIo::new(client), activity: &activity };
    let mut upstream = Watched { io: upstream, activity: &activity };
    let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
    let watch = async {
        let step = (idle / 4).max(Duration::from_millis(10));
        let mut quiet = Duration::ZERO;
        loop {
            tokio::time::sleep(step).await;
            quiet = if activity.swap(0, Ordering::Relaxed) > 0 { Duration::ZERO } else { quiet + step };
            if quiet >= idle {
                return;
            }
        }
    };
    tokio::select! {
        result = copy => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "WebSocket tunnel ended with an error");
            }
        }
        () = watch => tracing::debug!(?idle, "WebSocket tunnel closed: idle"),
    }
}

/// A stream that counts the reads that moved bytes (no clock read per read).
struct Watched<'a, T> {
    io: T,
    activity: &'a AtomicU64,
}

impl<T> Watched<'_, T> {
    fn touch(&self) {
        self.activity.fetch_add(1, Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<'_, T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<'_, T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_complete_websocket_handshake_is_an_upgrade() {
        let headers = |pairs: &[(&str, &str)]| {
            let mut map = HeaderMap::new();
            for (k, v) in pairs {
                map.append(header::HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
            }
            map
        };
        let good = headers(&[("connection", "keep-alive, Upgrade"), ("upgrade", "WebSocket")]);
        assert!(is_websocket_upgrade(&Method::GET, Version::HTTP_11, &good));
        assert!(!is_websocket_upgrade(&Method::POST, Version::HTTP_11, &good));
        assert!(!is_websocket_upgrade(&Method::GET, Version::HTTP_10, &good));
        assert!(!is_websocket_upgrade(&Method::GET, Version::HTTP_2, &good));
        for bad in [
            headers(&[("upgrade", "websocket")]),
            headers(&[("connection", "upgrade")]),
            headers(&[("connection", "upgraded"), ("upgrade", "websocket")]),
            headers(&[("connection", "upgrade"), ("upgrade", "h2c")]),
        ] {
            assert!(!is_websocket_upgrade(&Method::GET, Version::HTTP_11, &bad), "{bad:?}");
        }
        let split = headers(&[("connection", "keep-alive"), ("connection", "upgrade"), ("upgrade", "websocket")]);
        assert!(is_websocket_upgrade(&Method::GET, Version::HTTP_11, &split), "Connection given twice");
    }
}
