//! `clients`: what warren reads of each AMQP connection's handshake, how its
//! metrics label vhosts and users, and the connection limits it enforces at
//! `connection.open` (docs/clients.md).

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::config::accept_proxy::Network;

/// The label value of every vhost, user or client version that has no label
/// value of its own (see [`ClientMetrics`]).
pub const OTHER_LABEL: &str = "other";

/// The `clients` section.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientsConfig {
    /// Read each connection's handshake (user and client properties of
    /// `start-ok`, heartbeat of `tune-ok`, vhost of `open`) and the
    /// connection methods after it (`blocked`, `unblocked`, `close`). Off:
    /// warren knows each connection's address, backend and bytes only, and
    /// `limits` cannot apply.
    pub handshake: bool,
    /// How the metrics label vhosts and users.
    pub metrics: ClientMetrics,
    /// Connection limits, checked at `connection.open`.
    pub limits: LimitsConfig,
}

impl Default for ClientsConfig {
    fn default() -> Self {
        ClientsConfig {
            handshake: true,
            metrics: ClientMetrics::default(),
            limits: LimitsConfig::default(),
        }
    }
}

/// `clients.metrics`: which vhosts, users and client libraries get a label
/// value of their own (the rest are counted as `other`, so the number of
/// series stays bounded whatever clients send).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientMetrics {
    /// Vhosts always labelled by name.
    pub vhosts: Vec<String>,
    /// Users always labelled by name.
    pub users: Vec<String>,
    /// Besides those, the `top` vhosts, users and client versions with the
    /// most connections at the time of the scrape.
    pub top: usize,
}

impl Default for ClientMetrics {
    fn default() -> Self {
        ClientMetrics {
            vhosts: Vec::new(),
            users: Vec::new(),
            top: 10,
        }
    }
}

/// `clients.limits`: by vhost, by user (the key `*` applies to each one not
/// listed, counted apart), and by client network (all connections from the
/// network counted together).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub vhosts: BTreeMap<String, Limit>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub users: BTreeMap<String, Limit>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<NetworkLimit>,
}

impl LimitsConfig {
    pub fn is_empty(&self) -> bool {
        self.vhosts.is_empty() && self.users.is_empty() && self.networks.is_empty()
    }

    /// The limit of vhost or user `name` in `map`: its own, else `*`'s.
    pub fn of<'a>(map: &'a BTreeMap<String, Limit>, name: &str) -> Option<&'a Limit> {
        map.get(name).or_else(|| map.get("*"))
    }
}

/// One limit: open connections at once, and new connections per time.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limit {
    /// At most this many connections open at once (0 refuses every one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// At most this many new connections per second, minute or hour (`20/s`,
    /// `600/m`), with bursts up to that number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<Rate>,
}

/// A limit for the clients of one network.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkLimit {
    /// `10.1.0.0/16`, `2001:db8::/32` or one address.
    pub network: Network,
    #[serde(flatten)]
    pub limit: Limit,
}

impl NetworkLimit {
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.network.contains(ip)
    }
}

/// `N/s`, `N/m` or `N/h`: N events per second, minute or hour.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    pub count: u32,
    pub per: Duration,
}

impl Rate {
    pub fn parse(s: &str) -> Result<Rate, String> {
        let bad = || format!("expected a rate such as `20/s`, `600/m` or `1000/h`, got `{s}`");
        let (n, unit) = s.trim().split_once('/').ok_or_else(bad)?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        let per = match unit.trim() {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return Err(bad()),
        };
        if count == 0 {
            return Err(format!(
                "expected a rate above 0, got `{s}` (`max_connections: 0` refuses every connection)"
            ));
        }
        Ok(Rate { count, per })
    }

    /// Events per second.
    pub fn per_second(&self) -> f64 {
        f64::from(self.count) / self.per.as_secs_f64()
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.per.as_secs() {
            1 => "s",
            60 => "m",
            _ => "h",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Rate::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl Serialize for Rate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl ClientsConfig {
    /// Checks what the types cannot: limits need the handshake read; names are
    /// ones a client can send (a vhost or user name is at most 255 bytes).
    pub(crate) fn validate(&self) -> Result<(), (String, String)> {
        if !self.handshake && !self.limits.is_empty() {
            return Err((
                "clients.limits".into(),
                "limits apply at connection.open, which warren reads only with \
                 `clients.handshake: true`"
                    .into(),
            ));
        }
        for (what, map) in [
            ("vhosts", &self.limits.vhosts),
            ("users", &self.limits.users),
        ] {
            for name in map.keys() {
                if name.is_empty() || name.len() > 255 {
                    return Err((
                        format!("clients.limits.{what}"),
                        format!("expected names of 1 to 255 bytes, got `{name}`"),
                    ));
                }
            }
        }
        for (what, list) in [
            ("vhosts", &self.metrics.vhosts),
            ("users", &self.metrics.users),
        ] {
            if let Some(name) = list.iter().find(|n| *n == OTHER_LABEL) {
                return Err((
                    format!("clients.metrics.{what}"),
                    format!("`{name}` is the label of everything not listed"),
                ));
            }
        }
        if self.metrics.top > 1000 {
            return Err((
                "clients.metrics.top".into(),
                format!(
                    "expected at most 1000 (each value is a series), got {}",
                    self.metrics.top
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(clients: &str) -> Result<crate::config::Config, crate::config::ConfigError> {
        crate::config::Config::from_yaml(
            &format!("listen: 127.0.0.1:5672\nbackends: [{{name: a, address: 'h:1'}}]\n{clients}"),
            std::path::Path::new("t.yaml"),
        )
    }

    #[test]
    fn limits_parse_and_round_trip() {
        let c = parse(
            "clients:
  metrics: {vhosts: [orders], top: 5}
  limits:
    vhosts:
      orders: {max_connections: 100, rate: 20/s}
      '*': {max_connections: 1000}
    users:
      batch: {rate: 600/m}
    networks:
      - {network: 10.1.0.0/16, max_connections: 50}
",
        )
        .expect("valid");
        let l = &c.clients.limits;
        let orders = LimitsConfig::of(&l.vhosts, "orders").expect("listed");
        assert_eq!(orders.max_connections, Some(100));
        assert_eq!(orders.rate.map(|r| r.per_second()), Some(20.0));
        let other = LimitsConfig::of(&l.vhosts, "billing").expect("star");
        assert_eq!(other.max_connections, Some(1000));
        assert_eq!(LimitsConfig::of(&l.users, "alice"), None);
        assert!(l.networks[0].contains("10.1.2.3".parse().expect("ip")));
        assert!(!l.networks[0].contains("10.2.0.1".parse().expect("ip")));
        let again = crate::config::Config::from_yaml(&c.to_yaml(), std::path::Path::new("t.yaml"))
            .expect("effective config parses again");
        assert_eq!(again.clients, c.clients);
        assert!(c.to_yaml().contains("rate: 600/m"), "{}", c.to_yaml());
    }

    #[test]
    fn mistakes_name_their_key() {
        for (clients, key) in [
            (
                "clients: {handshake: false, limits: {vhosts: {a: {max_connections: 1}}}}",
                "clients.limits",
            ),
            (
                "clients: {limits: {vhosts: {a: {rate: 5}}}}",
                "clients.limits.vhosts.a.rate",
            ),
            (
                "clients: {limits: {vhosts: {a: {rate: 0/s}}}}",
                "clients.limits.vhosts.a.rate",
            ),
            (
                "clients: {limits: {users: {a: {max: 1}}}}",
                "clients.limits.users.a.max",
            ),
            (
                "clients: {limits: {networks: [{network: 10.1.2.3/8}]}}",
                "clients.limits.networks[0].network",
            ),
            (
                "clients: {metrics: {vhosts: [other]}}",
                "clients.metrics.vhosts",
            ),
            ("clients: {metrics: {top: 5000}}", "clients.metrics.top"),
        ] {
            match parse(clients) {
                Err(crate::config::ConfigError::Invalid { key: k, .. }) => {
                    assert_eq!(k, key, "{clients}")
                }
                other => panic!("{clients}: expected an error for {key}, got {other:?}"),
            }
        }
    }
}
