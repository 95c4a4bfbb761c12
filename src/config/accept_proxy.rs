//! `accept_proxy` on a listener: the PROXY protocol headers (v1 or v2) that a
//! load balancer in front of warren sends, and the networks trusted to send them.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::config::values::PositiveDuration;

/// `accept_proxy` (the plain listener's) or `tls.accept_proxy` (the TLS
/// listener's). HAProxy: `bind ... accept-proxy` with `tcp-request connection
/// expect-proxy layer4 if { src ... }`.
///
/// A connection from a network of `from` must start with a PROXY header (v1 or
/// v2) within `timeout`; its addresses replace the TCP peer's. A connection
/// from anywhere else must not send one.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AcceptProxyConfig {
    /// The load balancers' networks, e.g. `[10.0.0.0/8, 192.0.2.7]` (an address
    /// alone is a /32 or /128).
    pub from: TrustedNetworks,
    /// The whole header must have arrived this long after the connection was
    /// accepted.
    #[serde(default = "default_timeout")]
    pub timeout: PositiveDuration,
}

fn default_timeout() -> PositiveDuration {
    PositiveDuration::secs(5)
}

/// A non-empty list of networks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct TrustedNetworks(Vec<Network>);

impl TrustedNetworks {
    /// Whether `ip` is in one of the networks. An IPv4-mapped IPv6 address (a
    /// dual-stack listener's IPv4 peer) is taken as the IPv4 address it maps.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|n| n.contains(ip))
    }
}

impl<'de> Deserialize<'de> for TrustedNetworks {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let list = Vec::<Network>::deserialize(d)?;
        if list.is_empty() {
            return Err(serde::de::Error::custom(
                "expected at least one network, such as `10.0.0.0/8`",
            ));
        }
        Ok(TrustedNetworks(list))
    }
}

/// A network in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`) or one address.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Network(IpNet);

impl Network {
    /// Parses `s`; a network whose address has bits set past its prefix
    /// (`10.1.2.3/8`) is refused as a likely typo.
    pub fn parse(s: &str) -> Result<Network, String> {
        let s = s.trim();
        let net = match s.parse::<IpNet>() {
            Ok(net) => net,
            Err(_) => match s.parse::<IpAddr>() {
                Ok(ip) => IpNet::from(ip),
                Err(_) => {
                    return Err(format!(
                        "expected a network such as `10.0.0.0/8` or an address, got `{s}`"
                    ))
                }
            },
        };
        if net.trunc() != net {
            return Err(format!(
                "`{s}` has host bits set past its prefix: expected `{}`",
                net.trunc()
            ));
        }
        Ok(Network(net))
    }

    /// Whether `ip` is in the network (an IPv4-mapped IPv6 address taken as
    /// the IPv4 address it maps).
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&ip.to_canonical())
    }
}

impl fmt::Debug for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl<'de> Deserialize<'de> for Network {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Network::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl Serialize for Network {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> TrustedNetworks {
        TrustedNetworks(
            list.iter()
                .map(|s| Network::parse(s).expect("test network"))
                .collect(),
        )
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn networks_and_single_addresses() {
        let t = nets(&["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"]);
        assert!(t.contains(ip("10.200.1.1")));
        assert!(t.contains(ip("192.0.2.7")));
        assert!(!t.contains(ip("192.0.2.8")));
        assert!(t.contains(ip("2001:db8::99")));
        assert!(!t.contains(ip("2001:db9::1")));
        assert!(!t.contains(ip("11.0.0.1")));
        // A dual-stack listener's IPv4 peer.
        assert!(t.contains(ip("::ffff:10.1.2.3")));
        assert!(!t.contains(ip("::ffff:11.1.2.3")));
    }

    #[test]
    fn bad_networks_are_refused_with_what_was_expected() {
        for (bad, says) in [
            ("10.0.0.0/33", "expected a network"),
            ("ten.0.0.0/8", "expected a network"),
            ("", "expected a network"),
            ("10.1.2.3/8", "expected `10.0.0.0/8`"),
        ] {
            let e = Network::parse(bad).expect_err(bad);
            assert!(e.contains(says), "{bad}: {e}");
        }
        assert_eq!(
            Network::parse(" 127.0.0.1 ")
                .expect("an address")
                .to_string(),
            "127.0.0.1/32"
        );
    }

    fn parse(listeners: &str) -> Result<crate::config::Config, crate::config::ConfigError> {
        crate::config::Config::from_yaml(
            &format!("{listeners}\nbackends:\n  - {{name: a, address: 'h:1'}}\n"),
            std::path::Path::new("t.yaml"),
        )
    }

    #[test]
    fn config_shape_on_both_listeners() {
        let c = parse(
            "listen: 127.0.0.1:5672\naccept_proxy: {from: [10.0.0.0/8, 127.0.0.1]}\n\
             tls: {listen: 127.0.0.1:5671, cert: c, key: k, accept_proxy: {from: ['::1'], timeout: 2s}}",
        )
        .expect("valid");
        let plain = c.accept_proxy.as_ref().expect("accept_proxy");
        assert_eq!(plain.timeout.get(), std::time::Duration::from_secs(5));
        assert!(plain.from.contains(ip("127.0.0.1")));
        let tls = c.tls.as_ref().and_then(|t| t.accept_proxy.as_ref());
        let tls = tls.expect("tls.accept_proxy");
        assert_eq!(tls.timeout.get(), std::time::Duration::from_secs(2));
        assert!(tls.from.contains(ip("::1")));
        // The effective config shows it and parses again.
        let again = crate::config::Config::from_yaml(&c.to_yaml(), std::path::Path::new("t.yaml"))
            .expect("printed config parses");
        assert_eq!(again.accept_proxy, c.accept_proxy);
        assert!(c.to_yaml().contains("127.0.0.1/32"), "{}", c.to_yaml());
    }

    #[test]
    fn config_errors_name_the_key() {
        for (yaml, key) in [
            (
                "listen: 127.0.0.1:5672\naccept_proxy: {from: [10.0.0.0/8, 300.0.0.0/8]}",
                "accept_proxy.from[1]",
            ),
            (
                "listen: 127.0.0.1:5672\naccept_proxy: {from: []}",
                "accept_proxy.from",
            ),
            ("listen: 127.0.0.1:5672\naccept_proxy: {}", "accept_proxy"),
            (
                "listen: 127.0.0.1:5672\naccept_proxy: {from: [::1/128], timeout: 0s}",
                "accept_proxy.timeout",
            ),
            (
                "listen: 127.0.0.1:5672\naccept_proxy: {from: [::1/128], trusted: true}",
                "accept_proxy.trusted",
            ),
            (
                "tls: {listen: 127.0.0.1:5671, cert: c, key: k, accept_proxy: {from: [x]}}",
                "tls.accept_proxy.from[0]",
            ),
        ] {
            match parse(yaml) {
                Err(crate::config::ConfigError::Invalid {
                    key: k, message, ..
                }) => {
                    assert_eq!(k, key, "{yaml}: {message}")
                }
                other => panic!("{yaml}: expected an error naming {key}, got {other:?}"),
            }
        }
    }
}
