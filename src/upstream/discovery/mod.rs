//! Service discovery: where an upstream's endpoints come from when the config does not list them.
//!
//! A source (`Discover`) looks once and says what it found and when to look again: the
//! addresses of a DNS name (A/AAAA), the hosts, ports and weights of SRV records, or a file of
//! endpoints. A `Discovery` runs its source on the background runtime, never on the workers, and
//! when the answer changes it builds the upstream's members anew (endpoints, balancer, health
//! checks) and swaps them in: the request path reads the members and never waits for a lookup.
//!
//! Endpoints keep their state (connection pools, health, latency) across changes, because the
//! registry keys that state by address. A failed look (a DNS timeout, a malformed file) keeps the
//! last endpoints found and looks again soon; so does an answer without any endpoint, because a
//! gateway that forgets every endpoint on a resolver hiccup turns a small outage into a total one.
//!
//! Consul, etcd or Kubernetes endpoints fit as further sources: implement `Discover`; nothing
//! else changes.

pub mod dns;
pub mod file;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use super::{MemberSpec, Members};
use crate::state::registry::Registry;

/// One endpoint found by a source.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Target {
    /// `http://host:port`: the endpoint's identity (its state in the registry) and its name in logs.
    pub url: String,
    /// A literal IP, or a name resolved when connecting.
    pub host: String,
    pub port: u16,
    pub weight: u32,
    /// The Host header sent upstream, when not `host:port` (e.g. the DNS name for an address).
    pub authority: Option<String>,
}

impl Target {
    pub fn new(host: &str, port: u16, weight: u32, authority: Option<String>) -> Target {
        let host = super::bracketed(host).into_owned();
        Target { url: format!("http://{host}:{port}"), host, port, weight: weight.max(1), authority }
    }
}

/// What one look found.
#[derive(Debug)]
pub struct Found {
    pub targets: Vec<Target>,
    /// When to look again (a DNS answer's TTL, within the resolver's bounds).
    pub look_again: Duration,
}

pub type Look<'a> = Pin<Box<dyn Future<Output = Result<Found, String>> + Send + 'a>>;

/// A place endpoints are found.
pub trait Discover: Send + Sync + 'static {
    /// For logs and the admin API: `dns users.internal port 8080`.
    fn describe(&self) -> String;
    /// Looks once. `Err` says why nothing could be found this time.
    fn look(&self) -> Look<'_>;
}

/// After a failed look, the next comes this soon at first, then less often.
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// A running source and the members it keeps current. The source stops when this is dropped.
pub struct Discovery {
    pub members: Arc<ArcSwap<Members>>,
    pub source: String,
    status: Mutex<Status>,
    first: Condvar,
}

/// What the admin API shows of a discovery.
#[derive(Debug, Clone, Default)]
pub struct Status {
    /// At least one look finished (found something, or failed).
    pub looked: bool,
    pub endpoints: usize,
    pub last_change: Option<SystemTime>,
    /// The last look's error, cleared by the next look that finds endpoints.
    pub last_error: Option<String>,
}

impl Discovery {
    /// Starts looking with `source`; found endpoints become members built by `spec`.
    pub fn start(
        source: Box<dyn Discover>,
        spec: MemberSpec,
        registry: Arc<Registry>,
        start_checks: bool,
    ) -> Arc<Discovery> {
        let discovery = Arc::new(Discovery {
            members: Arc::new(ArcSwap::from_pointee(Members::empty(&spec))),
            source: source.describe(),
            status: Mutex::new(Status::default()),
            first: Condvar::new(),
        });
        let weak: Weak<Discovery> = Arc::downgrade(&discovery);
        super::active::runtime().spawn(async move {
            let mut current: Vec<Target> = Vec::new();
            let mut failures = 0u32;
            loop {
                let outcome = source.look().await;
                let Some(discovery) = weak.upgrade() else { return };
                let wait = match outcome {
                    Ok(found) if !found.targets.is_empty() => {
                        failures = 0;
                        let mut targets = found.targets;
                        targets.sort();
                        targets.dedup_by(|a, b| a.url == b.url);
                        if targets != current {
                            let members = Members::build(&spec, &targets, &registry, start_checks);
                            discovery.members.store(Arc::new(members));
                            tracing::info!(
                                upstream = %spec.upstream,
                                source = %discovery.source,
                                endpoints = %targets.iter().map(|t| t.url.as_str()).collect::<Vec<_>>().join(", "),
                                "discovered endpoints changed"
                            );
                            current = targets;
                            discovery.update(|s| s.last_change = Some(SystemTime::now()));
                        }
                        discovery.update(|s| {
                            s.endpoints = current.len();
                            s.last_error = None;
                        });
                        found.look_again
                    }
                    other => {
                        let why = match other {
                            Err(why) => why,
                            Ok(_) => "no endpoints found".to_owned(),
                        };
                        if failures == 0 {
                            tracing::warn!(
                                upstream = %spec.upstream,
                                source = %discovery.source,
                                "discovery failed ({why}); keeping the {} endpoints found before",
                                current.len()
                            );
                        }
                        failures += 1;
                        discovery.update(|s| s.last_error = Some(why));
                        RETRY_FIRST.saturating_mul(1 << failures.min(6)).min(RETRY_MAX)
                    }
                };
                discovery.update(|s| s.looked = true);
                discovery.first.notify_all();
                drop(discovery);
                tokio::time::sleep(wait).await;
            }
        });
        discovery
    }

    fn update(&self, change: impl FnOnce(&mut Status)) {
        change(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()));
    }

    pub fn status(&self) -> Status {
        self.status.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits up to `max` for the first look to finish (so a new config starts with endpoints).
    pub fn wait_first_look(&self, max: Duration) -> bool {
        let status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        let (status, _) = self.first.wait_timeout_while(status, max, |s| !s.looked).unwrap_or_else(|e| e.into_inner());
        status.looked
    }
}
