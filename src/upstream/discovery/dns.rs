//! DNS sources: every A/AAAA address of a name is an endpoint (`dns`), or SRV records name the
//! hosts, ports and weights (`srv`). Answers are looked up again when their TTL runs out (kept
//! within the resolver's `min_ttl` and `max_ttl`).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig as HickoryConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;

use super::{Discover, Found, Look, Target};

/// The resolver's settings, checked.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResolverSettings {
    /// Empty: the system's (/etc/resolv.conf).
    pub nameservers: Vec<SocketAddr>,
    pub timeout: Duration,
    pub min_ttl: Duration,
    pub max_ttl: Duration,
}

impl ResolverSettings {
    pub fn from_config(c: &crate::config::ResolverConfig) -> Result<ResolverSettings, (String, String)> {
        let mut nameservers = Vec::new();
        for (i, text) in c.nameservers.iter().enumerate() {
            let text = text.trim();
            let address = text
                .parse::<SocketAddr>()
                .or_else(|_| text.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                .map_err(|_| (format!("nameservers[{i}]"), format!("`{text}` is not ip or ip:port")))?;
            nameservers.push(address);
        }
        let (min_ttl, max_ttl) = (c.min_ttl.get(), c.max_ttl.get());
        if min_ttl < Duration::from_millis(100) || min_ttl > max_ttl {
            return Err(("min_ttl".into(), "at least 100ms and at most max_ttl".into()));
        }
        let timeout = c.timeout.get();
        if timeout < Duration::from_millis(10) || timeout > Duration::from_secs(30) {
            return Err(("timeout".into(), "between 10ms and 30s".into()));
        }
        Ok(ResolverSettings { nameservers, timeout, min_ttl, max_ttl })
    }

    /// A resolver with these settings.
    pub fn build(&self) -> Result<TokioResolver, String> {
        let config = if self.nameservers.is_empty() {
            let (config, _) = hickory_resolver::system_conf::read_system_conf()
                .map_err(|e| format!("cannot read the system's resolver settings (/etc/resolv.conf): {e}"))?;
            config
        } else {
            let mut servers = Vec::new();
            for address in &self.nameservers {
                servers.push(NameServerConfig::new(*address, Protocol::Udp));
                servers.push(NameServerConfig::new(*address, Protocol::Tcp));
            }
            HickoryConfig::from_parts(None, Vec::new(), servers)
        };
        let mut options = ResolverOpts::default();
        options.timeout = self.timeout;
        options.attempts = 2;
        // The cache must not outlive our own bounds: a look after max_ttl asks the server again,
        // and a name that did not exist is asked for again at the next look.
        options.positive_max_ttl = Some(self.max_ttl);
        options.negative_max_ttl = Some(self.min_ttl);
        let mut builder = TokioResolver::builder_with_config(config, TokioConnectionProvider::default());
        *builder.options_mut() = options;
        Ok(builder.build())
    }

    fn look_again(&self, valid_until: Instant) -> Duration {
        valid_until.saturating_duration_since(Instant::now()).clamp(self.min_ttl, self.max_ttl)
    }
}

/// `dns`: every address of `name`, at `port`.
pub struct Dns {
    pub resolver: Arc<TokioResolver>,
    pub settings: ResolverSettings,
    pub name: String,
    pub port: u16,
    pub weight: u32,
}

impl Discover for Dns {
    fn describe(&self) -> String {
        format!("dns {} port {}", self.name, self.port)
    }

    fn look(&self) -> Look<'_> {
        Box::pin(async move {
            let lookup = self.resolver.lookup_ip(self.name.as_str()).await.map_err(|e| e.to_string())?;
            let authority = Some(format!("{}:{}", self.name.trim_end_matches('.'), self.port));
            let targets = lookup
                .iter()
                .map(|ip| Target::new(&ip.to_string(), self.port, self.weight, authority.clone()))
                .collect();
            Ok(Found { targets, look_again: self.settings.look_again(lookup.valid_until()) })
        })
    }
}

/// `srv`: the hosts and ports of the SRV records of `name` with the best (lowest) priority;
/// records of other priorities are backups, used only when those disappear.
pub struct Srv {
    pub resolver: Arc<TokioResolver>,
    pub settings: ResolverSettings,
    pub name: String,
}

impl Discover for Srv {
    fn describe(&self) -> String {
        format!("srv {}", self.name)
    }

    fn look(&self) -> Look<'_> {
        Box::pin(async move {
            let lookup = self.resolver.srv_lookup(self.name.as_str()).await.map_err(|e| e.to_string())?;
            let mut valid_until = lookup.as_lookup().valid_until();
            let Some(best) = lookup.iter().map(|r| r.priority()).min() else {
                return Ok(Found { targets: Vec::new(), look_again: self.settings.min_ttl });
            };
            let mut targets = Vec::new();
            for record in lookup.iter().filter(|r| r.priority() == best) {
                let host = record.target().to_utf8();
                let host = host.trim_end_matches('.');
                if host.is_empty() {
                    // "." as the target: the service is decidedly not available at this domain.
                    continue;
                }
                // Weight 0 means "rarely": the smallest share we give.
                let weight = u32::from(record.weight()).max(1);
                let authority = Some(format!("{host}:{}", record.port()));
                let ips = self.resolver.lookup_ip(host).await.map_err(|e| format!("{host}: {e}"))?;
                valid_until = valid_until.min(ips.valid_until());
                targets.extend(
                    ips.iter().map(|ip| Target::new(&ip.to_string(), record.port(), weight, authority.clone())),
                );
            }
            Ok(Found { targets, look_again: self.settings.look_again(valid_until) })
        })
    }
}
