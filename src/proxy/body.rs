//! Bodies on both sides of the proxy, streamed frame by frame and never buffered whole.
//!
//! `UpstreamBody` is what gatehouse sends upstream: nothing, fixed bytes, or the client's body
//! streaming through. `ProxyBody` is what the client receives: fixed bytes (errors, direct responses)
//! or the upstream's body streaming through. When a `ProxyBody` ends or is dropped it finishes the
//! request: the connection's deadline state learns the request is over, and the request log is
//! written. (The upstream connection went back to the pool as soon as its body's last byte was
//! read, or is closed with the body if it was not.)

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::telemetry::RequestLog;
use crate::upstream::client::ResponseBody;

/// An error while streaming a body through the gateway.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("client body: {0}")]
    Client(hyper::Error),
    #[error("upstream body: {0}")]
    Upstream(crate::upstream::client::BoxError),
    #[error("the request body is larger than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("the request body does not match its Content-Length")]
    Length,
}

// === impl UpstreamBody ===

/// The request body sent upstream.
pub enum UpstreamBody {
    Empty,
    Full(Option<Bytes>),
    /// The client's body, counted for the request log and against the size limit.
    Streaming {
        body: Incoming,
        received: Option<Arc<AtomicU64>>,
        limit: Option<BodyLimit>,
    },
}

/// A cap on a streamed body: bytes left before it is exceeded.
pub struct BodyLimit {
    pub limit: u64,
    pub left: u64,
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            UpstreamBody::Empty => Poll::Ready(None),
            UpstreamBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            UpstreamBody::Streaming { body, received, limit } => match Pin::new(body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        let n = data.len() as u64;
                        if let Some(counter) = received.as_ref() {
                            counter.fetch_add(n, Ordering::Relaxed);
                        }
                        if let Some(cap) = limit.as_mut() {
                            match cap.left.checked_sub(n) {
                                Some(left) => cap.left = left,
                                None => return Poll::Ready(Some(Err(BodyError::TooLarge { limit: cap.limit }))),
                            }
                        }
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(BodyError::Client(e)))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Empty => true,
            UpstreamBody::Full(b) => b.is_none(),
            UpstreamBody::Streaming { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Empty => SizeHint::with_exact(0),
            UpstreamBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            UpstreamBody::Streaming { body, .. } => body.size_hint(),
        }
    }
}

// === impl ProxyBody ===

/// The response body sent to the client.
pub struct ProxyBody {
    kind: Kind,
    sent: u64,
    finish: Option<Finish>,
}

enum Kind {
    Empty,
    Full(Option<Bytes>),
    Upstream { body: ResponseBody, web: Option<Box<super::grpc::Web>> },
}

/// What happens when the response is over.
struct Finish {
    log: RequestLog,
    /// A `concurrency` slot: the request is in flight until its response is sent.
    _slot: Option<crate::policy::concurrency::Slot>,
    /// Likewise for the endpoint's count of requests in flight.
    _in_flight: Option<crate::upstream::InFlight>,
}

impl ProxyBody {
    pub fn empty() -> ProxyBody {
        ProxyBody { kind: Kind::Empty, sent: 0, finish: None }
    }

    pub fn full(bytes: Bytes) -> ProxyBody {
        if bytes.is_empty() {
            return ProxyBody::empty();
        }
        ProxyBody { kind: Kind::Full(Some(bytes)), sent: 0, finish: None }
    }

    /// The upstream's body.
    pub fn upstream(body: ResponseBody) -> ProxyBody {
        ProxyBody { kind: Kind::Upstream { body, web: None }, sent: 0, finish: None }
    }

    /// The upstream's gRPC answer, translated frame by frame for a gRPC-Web client.
    pub fn grpc_web(body: ResponseBody, web: super::grpc::Web) -> ProxyBody {
        let kind = Kind::Upstream { body, web: Some(Box::new(web)) };
        ProxyBody { kind, sent: 0, finish: None }
    }

    /// Hands the request log (and the request's concurrency slot) to the body: the log is
    /// written and the slot given back when the body ends.
    pub fn attach(
        &mut self,
        log: RequestLog,
        slot: Option<crate::policy::concurrency::Slot>,
        in_flight: Option<crate::upstream::InFlight>,
    ) {
        self.finish = Some(Finish { log, _slot: slot, _in_flight: in_flight });
    }

    fn complete(&mut self, clean: bool) {
        if let Some(finish) = self.finish.take() {
            finish.log.finish(self.sent, clean);
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let polled = match &mut this.kind {
            Kind::Empty => Poll::Ready(None),
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Upstream { body, web, .. } => match Pin::new(body).poll_frame(cx) {
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(BodyError::Upstream(e)))),
                Poll::Ready(Some(Ok(frame))) => match web {
                    Some(web) => Poll::Ready(Some(Ok(Frame::data(web.translate(frame))))),
                    None => Poll::Ready(Some(Ok(frame))),
                },
                other => other.map(|o| o.map(|r| r.map_err(BodyError::Upstream))),
            },
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.sent += data.len() as u64;
                }
            }
            Poll::Ready(None) => this.complete(true),
            Poll::Ready(Some(Err(_))) => this.complete(false),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Empty => true,
            Kind::Full(b) => b.is_none(),
            Kind::Upstream { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            // Translated frames change the length (base64, the trailers frame): unknown.
            Kind::Upstream { web: Some(_), .. } => SizeHint::default(),
            Kind::Upstream { body, .. } => body.size_hint(),
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        // hyper may never poll a body that reports end-of-stream up front (204, HEAD, empty
        // bodies), and drops it after the last frame: either way the request ends here. A body that
        // is dropped before its end means the client went away (the upstream connection, in the
        // middle of a message, is closed with it).
        let clean = self.is_end_stream();
        self.complete(clean);
    }
}
