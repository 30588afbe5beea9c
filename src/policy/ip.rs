//! `ip_restriction`: allow and deny lists of client addresses (request policies, first: a refused
//! client gets nothing else from the gateway, not even a CORS preflight answer).
//!
//! The client address is the one resolved through `server.trusted_proxies`: an untrusted client
//! cannot choose its address by sending `X-Forwarded-For`.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::config::IpRestrictionConfig;
use crate::proxy::error::ProxyError;
use crate::state::canonical_ip;

#[derive(Debug)]
pub struct IpRestriction {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
}

fn parse(list: &[String], field: &str, errors: &mut Vec<(String, String)>) -> Vec<IpNet> {
    let mut out = Vec::new();
    for (i, text) in list.iter().enumerate() {
        match text.parse::<IpNet>().or_else(|_| text.parse::<IpAddr>().map(IpNet::from)) {
            Ok(net) => out.push(net.trunc()),
            Err(_) => errors.push((format!("{field}[{i}]"), format!("\"{text}\" is not an IP address or CIDR block"))),
        }
    }
    out
}

impl IpRestriction {
    pub fn compile(config: &IpRestrictionConfig) -> Result<IpRestriction, Vec<(String, String)>> {
        let mut errors = Vec::new();
        let allow = parse(&config.allow, "allow", &mut errors);
        let deny = parse(&config.deny, "deny", &mut errors);
        if allow.is_empty() && deny.is_empty() && errors.is_empty() {
            errors.push((String::new(), "give allow or deny addresses".into()));
        }
        if errors.is_empty() { Ok(IpRestriction { allow, deny }) } else { Err(errors) }
    }

    pub fn check(&self, client: IpAddr) -> Result<(), ProxyError> {
        let client = canonical_ip(client);
        let refused = self.deny.iter().any(|n| n.contains(&client))
            || (!self.allow.is_empty() && !self.allow.iter().any(|n| n.contains(&client)));
        if refused {
            return Err(ProxyError::Forbidden {
                message: "your address is not allowed here".into(),
                insufficient_scope: false,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: &[&str], deny: &[&str]) -> IpRestriction {
        IpRestriction::compile(&IpRestrictionConfig {
            allow: allow.iter().map(|s| s.to_string()).collect(),
            deny: deny.iter().map(|s| s.to_string()).collect(),
        })
        .unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn allow_and_deny_lists_with_v4_and_v6() {
        let p = policy(&["10.0.0.0/8", "2001:db8::/32"], &["10.0.0.13"]);
        assert!(p.check(ip("10.1.2.3")).is_ok());
        assert!(p.check(ip("10.0.0.13")).is_err(), "deny wins over allow");
        assert!(p.check(ip("192.168.1.1")).is_err());
        assert!(p.check(ip("2001:db8::1")).is_ok());
        assert!(p.check(ip("2001:db9::1")).is_err());
        assert!(p.check(ip("::ffff:10.9.9.9")).is_ok(), "IPv4-mapped addresses count as IPv4");
        let deny_only = policy(&[], &["203.0.113.0/24"]);
        assert!(deny_only.check(ip("203.0.113.9")).is_err());
        assert!(deny_only.check(ip("198.51.100.1")).is_ok());
    }

    #[test]
    fn bad_addresses_are_config_errors() {
        let errors = IpRestriction::compile(&IpRestrictionConfig {
            allow: vec!["10.0.0.0/33".into(), "nope".into()],
            deny: vec![],
        })
        .unwrap_err();
        assert_eq!(errors.len(), 2);
        assert!(IpRestriction::compile(&IpRestrictionConfig::default()).is_err());
    }
}
