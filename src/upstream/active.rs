//! Active health checks: a prober per endpoint asks it regularly whether it is well (an HTTP
//! request, a gRPC health call — `active/grpc.rs` — or a TCP connection), and takes it out of
//! rotation after `unhealthy_threshold` failures in a row, back in after `healthy_threshold`
//! successes.
//!
//! Probers run on one background thread of their own, never on the workers. They live in the
//! registry: a reload that keeps an endpoint and its check keeps the prober and what it learned;
//! when the check goes away, so does the prober, and the endpoint is no longer held down by it.

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use http::{Request, header};
use http_body_util::{BodyExt, Limited};
use tokio::net::TcpStream;

use super::EndpointState;
use super::h1::{self, Io};
use crate::proxy::body::UpstreamBody;

mod grpc;

/// How an endpoint is checked.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckSettings {
    pub kind: CheckKind,
    /// Probe this port instead of the endpoint's (a separate health or admin port).
    pub port: Option<u16>,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    /// HTTP and gRPC checks go over TLS when the endpoints are `https://`.
    pub tls: Option<Arc<super::tls::UpstreamTls>>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum CheckKind {
    Tcp,
    Http {
        path: String,
        host: Option<String>,
        /// Inclusive ranges of accepted statuses.
        statuses: Vec<(u16, u16)>,
        body_contains: Option<String>,
    },
    /// `grpc.health.v1.Health/Check` over cleartext HTTP/2.
    Grpc {
        /// The service asked about; empty: the whole server.
        service: String,
        /// The `:authority`; default: the host and port probed.
        authority: Option<String>,
    },
}

/// Sent with every probe, so endpoints can tell checks from traffic in their logs.
pub(super) const USER_AGENT: &str = concat!("gatehouse-health/", env!("CARGO_PKG_VERSION"));

/// A running prober; stops when dropped.
pub struct Prober {
    state: Arc<EndpointState>,
}

impl Drop for Prober {
    fn drop(&mut self) {
        // The check is gone (or changed): it no longer holds the endpoint down.
        self.state.active_down.store(false, Ordering::Relaxed);
    }
}

impl Prober {
    /// Starts probing `host:port` (or `settings.port`) every `settings.interval`.
    pub fn start(
        state: Arc<EndpointState>,
        url: Arc<str>,
        host: Arc<str>,
        port: u16,
        settings: CheckSettings,
    ) -> Arc<Prober> {
        let port = settings.port.unwrap_or(port);
        let prober = Arc::new(Prober { state: state.clone() });
        let weak: Weak<Prober> = Arc::downgrade(&prober);
        runtime().spawn(async move {
            let mut successes = 0u32;
            let mut failures = 0u32;
            // Spread the probes of many endpoints over the interval.
            tokio::time::sleep(jitter(settings.interval)).await;
            loop {
                let Some(prober) = weak.upgrade() else { return };
                let outcome = probe(&host, port, &settings).await;
                let down = &prober.state.active_down;
                match outcome {
                    Ok(()) => {
                        failures = 0;
                        successes += 1;
                        if down.load(Ordering::Relaxed) && successes >= settings.healthy_threshold {
                            down.store(false, Ordering::Relaxed);
                            prober.state.mark_up(crate::transport::clock::now_ms());
                            tracing::info!(endpoint = %url, "health check passes again: back in rotation");
                        }
                    }
                    Err(why) => {
                        successes = 0;
                        failures += 1;
                        if !down.load(Ordering::Relaxed) && failures >= settings.unhealthy_threshold {
                            down.store(true, Ordering::Relaxed);
                            tracing::warn!(endpoint = %url, "health check failed {failures} times ({why}): out of rotation");
                        }
                    }
                }
                drop(prober);
                tokio::time::sleep(settings.interval + jitter(settings.interval / 10)).await;
            }
        });
        prober
    }
}

fn jitter(max: Duration) -> Duration {
    Duration::from_nanos(fastrand::u64(0..=u64::try_from(max.as_nanos()).unwrap_or(u64::MAX)))
}

/// The probers' own runtime, on a thread of its own for the life of the process.
pub(crate) fn runtime() -> &'static tokio::runtime::Handle {
    static HANDLE: OnceLock<tokio::runtime::Handle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new().name("gatehouse-health".into()).spawn(move || {
            match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => {
                    let _ = tx.send(Some(rt.handle().clone()));
                    rt.block_on(std::future::pending::<()>());
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the health-check runtime");
                    let _ = tx.send(None);
                }
            }
        });
        let handle = spawned.ok().and_then(|_| rx.recv().ok().flatten());
        // Without a runtime of its own, probers run wherever they were started from.
        handle.unwrap_or_else(tokio::runtime::Handle::current)
    })
}

async fn probe(host: &str, port: u16, settings: &CheckSettings) -> Result<(), String> {
    match tokio::time::timeout(settings.timeout, probe_inner(host, port, &settings.kind, settings.tls.as_deref())).await
    {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {:?}", settings.timeout)),
    }
}

async fn probe_inner(
    host: &str,
    port: u16,
    kind: &CheckKind,
    tls: Option<&super::tls::UpstreamTls>,
) -> Result<(), String> {
    let stream = TcpStream::connect((host, port)).await.map_err(|e| format!("connect: {e}"))?;
    if matches!(kind, CheckKind::Tcp) {
        return Ok(());
    }
    let io = Io::over(stream, host, tls).await.map_err(|e| format!("TLS: {e}"))?;
    exchange(io, &super::authority_of(host, port, tls.is_some()), kind).await
}

/// The HTTP or gRPC check over a connected stream.
/// `endpoint` is the endpoint's own Host header (a check's `host` replaces it).
async fn exchange(io: Io, endpoint: &str, kind: &CheckKind) -> Result<(), String> {
    let (path, host_header, statuses, body_contains) = match kind {
        CheckKind::Tcp => return Ok(()),
        CheckKind::Grpc { service, authority } => {
            let authority = authority.as_deref().unwrap_or(endpoint);
            return grpc::check(io, authority, service).await;
        }
        CheckKind::Http { path, host, statuses, body_contains } => (path, host, statuses, body_contains),
    };
    let authority = host_header.as_deref().unwrap_or(endpoint);
    let mut request = Request::get(path.as_str())
        .header(header::HOST, authority)
        .header(header::USER_AGENT, USER_AGENT)
        .header(header::CONNECTION, "close")
        .body(UpstreamBody::Empty)
        .map_err(|e| format!("request: {e}"))?;
    let response =
        h1::exchange(h1::Conn::new(io), &mut request, None).await.map_err(|f| format!("request: {}", f.error))?;
    let status = response.status();
    if !statuses.iter().any(|(lo, hi)| (*lo..=*hi).contains(&status.as_u16())) {
        return Err(format!("status {}", status.as_u16()));
    }
    if let Some(needle) = body_contains {
        let body = Limited::new(response.into_body(), 64 * 1024).collect().await.map_err(|e| format!("body: {e}"))?;
        if !body.to_bytes().windows(needle.len().max(1)).any(|w| w == needle.as_bytes()) {
            return Err(format!("the body does not contain \"{needle}\""));
        }
    }
    Ok(())
}

/// Parses `200`, `200-399` or `2xx` into an inclusive range.
pub fn parse_status_range(text: &str) -> Result<(u16, u16), String> {
    let bad = || format!("`{text}`: expected a status (200), a range (200-399) or a class (2xx)");
    let text = text.trim();
    let range = if let Some(class) = text.strip_suffix("xx") {
        let c: u16 = class.parse().map_err(|_| bad())?;
        (c * 100, c * 100 + 99)
    } else if let Some((lo, hi)) = text.split_once('-') {
        (lo.trim().parse().map_err(|_| bad())?, hi.trim().parse().map_err(|_| bad())?)
    } else {
        let s: u16 = text.parse().map_err(|_| bad())?;
        (s, s)
    };
    if !(100..=599).contains(&range.0) || !(100..=599).contains(&range.1) || range.0 > range.1 {
        return Err(bad());
    }
    Ok(range)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_ranges_parse() {
        assert_eq!(parse_status_range("200").unwrap(), (200, 200));
        assert_eq!(parse_status_range("200-399").unwrap(), (200, 399));
        assert_eq!(parse_status_range("2xx").unwrap(), (200, 299));
        for bad in ["", "abc", "99", "700", "300-200", "9xx", "2x"] {
            assert!(parse_status_range(bad).is_err(), "{bad}");
        }
    }
}
