//! The `listeners:` section: listeners beside `listen` and `tls.listen`, each
//! with a name and a protocol, and the port of each backend they lead to
//! (`backends[].ports`). docs/protocols.md.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::accept_proxy::AcceptProxyConfig;
use crate::config::address::{split_host_port, Endpoint};
use crate::config::values::socket_addr;
use crate::config::BackendConfig;

/// Names the one-listener form (`listen`, `tls.listen`) goes by in metrics and
/// the admin API; a listener of `listeners:` may not take them.
pub const RESERVED_NAMES: [&str; 2] = ["amqp", "amqps"];

/// One listener of `listeners:`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Unique; labels its metrics and its place in the admin API.
    pub name: String,
    /// Where clients connect.
    #[serde(deserialize_with = "socket_addr")]
    pub listen: SocketAddr,
    /// What clients speak, and so which port of each backend they reach.
    pub protocol: ListenerProtocol,
    /// TLS termination on this listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTls>,
    /// PROXY protocol headers accepted on this listener, before any TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accept_proxy: Option<AcceptProxyConfig>,
    /// `stream` only: one port per backend (on `listen`'s address) that leads to
    /// that backend and no other; warren advertises these to stream clients.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_ports: BTreeMap<String, u16>,
    /// `stream` only: the host warren advertises to stream clients; by default
    /// the address each client reached warren on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertised_host: Option<String>,
}

/// TLS termination on a listener of `listeners:`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    /// Certificate chain, PEM, the server's certificate first.
    pub cert: PathBuf,
    /// The certificate's private key, PEM.
    pub key: PathBuf,
    /// CA certificates, PEM: clients must present a certificate that chains to one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
}

/// What a listener carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerProtocol {
    /// AMQP 0-9-1 and 1.0: header checked, closed at a frame boundary.
    Amqp,
    /// RabbitMQ streams: each node also behind a port of its own
    /// (`node_ports`), what brokers advertise rewritten.
    Stream,
    Mqtt,
    Stomp,
    /// The management UI and API.
    Http,
    /// Any TCP protocol; each backend names its port.
    Tcp,
}

impl ListenerProtocol {
    pub const ALL: [ListenerProtocol; 6] = [
        ListenerProtocol::Amqp,
        ListenerProtocol::Stream,
        ListenerProtocol::Mqtt,
        ListenerProtocol::Stomp,
        ListenerProtocol::Http,
        ListenerProtocol::Tcp,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ListenerProtocol::Amqp => "amqp",
            ListenerProtocol::Stream => "stream",
            ListenerProtocol::Mqtt => "mqtt",
            ListenerProtocol::Stomp => "stomp",
            ListenerProtocol::Http => "http",
            ListenerProtocol::Tcp => "tcp",
        }
    }

    /// The name of RabbitMQ's `protocol-listener` health check for this
    /// protocol's listener, where a node has one warren checks.
    pub fn listener_check(self) -> Option<&'static str> {
        match self {
            ListenerProtocol::Stream => Some("stream"),
            ListenerProtocol::Mqtt => Some("mqtt"),
            ListenerProtocol::Stomp => Some("stomp"),
            _ => None,
        }
    }

    /// Its bit in a backend's set of protocols it is out for.
    pub fn bit(self) -> u8 {
        1 << (self as u8)
    }

    /// RabbitMQ's default port for the protocol (`amqp`: the backend's address).
    fn default_port(self, backend: &BackendConfig) -> Option<u16> {
        match self {
            ListenerProtocol::Amqp => split_host_port(&backend.address).map(|(_, p)| p),
            ListenerProtocol::Stream => Some(5552),
            ListenerProtocol::Mqtt => Some(1883),
            ListenerProtocol::Stomp => Some(61613),
            ListenerProtocol::Http => Some(
                backend
                    .management
                    .as_deref()
                    .and_then(|m| Endpoint::parse(m).ok())
                    .and_then(|ep| split_host_port(&ep.authority).map(|(_, p)| p))
                    .unwrap_or(15672),
            ),
            ListenerProtocol::Tcp => None,
        }
    }
}

impl ListenerConfig {
    /// The port of `backend` this listener leads to: `ports.<listener name>`,
    /// else `ports.<protocol>`, else the protocol's default.
    pub fn backend_port(&self, backend: &BackendConfig) -> Option<u16> {
        backend
            .ports
            .get(&self.name)
            .or_else(|| backend.ports.get(self.protocol.as_str()))
            .copied()
            .or_else(|| self.protocol.default_port(backend))
    }

    /// `host:port` of `backend` for this listener.
    pub fn backend_address(&self, backend: &BackendConfig) -> Option<String> {
        let (host, _) = split_host_port(&backend.address)?;
        let port = self.backend_port(backend)?;
        Some(if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        })
    }

    /// The address of the port leading to backend `name` (`stream`).
    pub fn node_address(&self, name: &str) -> Option<SocketAddr> {
        let port = *self.node_ports.get(name)?;
        Some(SocketAddr::new(self.listen.ip(), port))
    }
}

/// Checks `listeners` against each other, the backends and the other listening
/// addresses (`taken`: key and address). Errors are a key path and a message.
pub fn validate(
    listeners: &[ListenerConfig],
    backends: &[BackendConfig],
    taken: &[(String, SocketAddr)],
) -> Result<(), (String, String)> {
    let mut addresses: Vec<(String, SocketAddr)> = taken.to_vec();
    let mut claim = |key: String, addr: SocketAddr| -> Result<(), (String, String)> {
        if addr.port() != 0 {
            if let Some((other, _)) = addresses.iter().find(|(_, a)| *a == addr) {
                return Err((
                    key,
                    format!(
                        "`{addr}` is also `{other}`: each listener needs an address of its own"
                    ),
                ));
            }
        }
        addresses.push((key, addr));
        Ok(())
    };
    let names: Vec<&str> = backends.iter().map(|b| b.name.as_str()).collect();
    for (i, l) in listeners.iter().enumerate() {
        let at = |k: &str| format!("listeners[{i}].{k}");
        if !super::valid_name(&l.name) {
            return Err((
                at("name"),
                format!(
                    "expected a non-empty name of letters, digits, `-`, `_` or `.`, got `{}`",
                    l.name
                ),
            ));
        }
        if RESERVED_NAMES.contains(&l.name.as_str())
            || listeners[..i].iter().any(|o| o.name == l.name)
        {
            return Err((
                at("name"),
                format!(
                    "`{}` is taken (by another listener, or by `listen`/`tls.listen`, which are \
                     `amqp` and `amqps`)",
                    l.name
                ),
            ));
        }
        claim(at("listen"), l.listen)?;
        let stream = l.protocol == ListenerProtocol::Stream;
        if !stream && !l.node_ports.is_empty() {
            return Err((
                at("node_ports"),
                "only a `stream` listener has ports per node".into(),
            ));
        }
        if !stream && l.advertised_host.is_some() {
            return Err((
                at("advertised_host"),
                "only a `stream` listener advertises a host".into(),
            ));
        }
        if let Some(h) = &l.advertised_host {
            if h.is_empty() || h.len() > 255 || h.contains(char::is_whitespace) {
                return Err((
                    at("advertised_host"),
                    format!("expected a host name or address, got `{h}`"),
                ));
            }
        }
        if stream {
            for name in l.node_ports.keys() {
                if !names.contains(&name.as_str()) {
                    return Err((
                        format!("listeners[{i}].node_ports.{name}"),
                        format!(
                            "no backend is named `{name}`{}",
                            super::error::hint(super::error::did_you_mean(
                                name,
                                names.iter().copied()
                            ))
                        ),
                    ));
                }
            }
            for b in backends {
                match l.node_address(&b.name) {
                    Some(addr) if addr.port() != 0 => {
                        claim(format!("listeners[{i}].node_ports.{}", b.name), addr)?
                    }
                    Some(_) => {
                        return Err((
                            format!("listeners[{i}].node_ports.{}", b.name),
                            "expected a port other than 0: clients are sent to it".into(),
                        ))
                    }
                    None => {
                        return Err((
                            at("node_ports"),
                            format!(
                                "backend `{}` has no port: a stream client is sent to the node \
                                 that holds its stream, so each backend needs a port of its own",
                                b.name
                            ),
                        ))
                    }
                }
            }
        }
        for (j, b) in backends.iter().enumerate() {
            if l.backend_port(b).is_none() {
                return Err((
                    format!("backends[{j}].ports"),
                    format!(
                        "expected the port of listener `{}` (`ports: {{{}: PORT}}` or \
                         `ports: {{tcp: PORT}}`): a `tcp` listener has no default port",
                        l.name, l.name
                    ),
                ));
            }
        }
    }
    for (j, b) in backends.iter().enumerate() {
        for key in b.ports.keys() {
            let known = ListenerProtocol::ALL.iter().any(|p| p.as_str() == key)
                || listeners.iter().any(|l| &l.name == key);
            if !known {
                let candidates = ListenerProtocol::ALL
                    .iter()
                    .map(|p| p.as_str())
                    .chain(listeners.iter().map(|l| l.name.as_str()));
                return Err((
                    format!("backends[{j}].ports.{key}"),
                    format!(
                        "expected a protocol (amqp, stream, mqtt, stomp, http, tcp) or a \
                         listener's name{}",
                        super::error::hint(super::error::did_you_mean(key, candidates))
                    ),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError, ListenerProtocol};
    use std::path::Path;

    fn parse(s: &str) -> Result<Config, ConfigError> {
        Config::from_yaml(s, Path::new("w.yaml"))
    }

    const BACKENDS: &str = "backends:
  - {name: n1, address: 'h1:5672', management: 'http://h1:15672'}
  - {name: n2, address: 'h2:5672', ports: {stream: 5553, mqtt: 1884, streams: 5560, http: 8080}}
";

    #[test]
    fn listeners_alone_are_a_config_and_ports_resolve() {
        let c = parse(&format!(
            "listeners:
  - {{name: streams, listen: '127.0.0.1:5552', protocol: stream, node_ports: {{n1: 5561, n2: 5562}}}}
  - {{name: mqtt, listen: '127.0.0.1:1883', protocol: mqtt}}
  - {{name: ui, listen: '127.0.0.1:15672', protocol: http}}
{BACKENDS}"
        ))
        .expect("valid");
        let [streams, mqtt, ui] = &c.listeners[..] else {
            panic!("three listeners");
        };
        assert_eq!(streams.protocol, ListenerProtocol::Stream);
        let (n1, n2) = (&c.backends[0], &c.backends[1]);
        // Defaults, then the protocol's port, then the listener's own.
        assert_eq!(streams.backend_address(n1).as_deref(), Some("h1:5552"));
        assert_eq!(streams.backend_address(n2).as_deref(), Some("h2:5560"));
        assert_eq!(mqtt.backend_address(n1).as_deref(), Some("h1:1883"));
        assert_eq!(mqtt.backend_address(n2).as_deref(), Some("h2:1884"));
        assert_eq!(ui.backend_address(n1).as_deref(), Some("h1:15672"));
        assert_eq!(ui.backend_address(n2).as_deref(), Some("h2:8080"));
        assert_eq!(
            streams.node_address("n2"),
            Some("127.0.0.1:5562".parse().expect("addr"))
        );
    }

    fn refused(listeners: &str, backends: &str) -> String {
        parse(&format!(
            "listen: 127.0.0.1:5672\nlisteners:\n{listeners}{backends}"
        ))
        .expect_err("refused")
        .to_string()
    }

    #[test]
    fn mistakes_are_named_by_their_key() {
        let cases = [
            (
                "  - {name: amqp, listen: '127.0.0.1:1', protocol: amqp}\n",
                BACKENDS,
                "listeners[0].name",
            ),
            (
                "  - {name: a, listen: '127.0.0.1:5672', protocol: mqtt}\n",
                BACKENDS,
                "is also `listen`",
            ),
            (
                "  - {name: s, listen: '127.0.0.1:1', protocol: stream, node_ports: {n1: 2}}\n",
                BACKENDS,
                "backend `n2` has no port",
            ),
            (
                "  - {name: s, listen: '127.0.0.1:1', protocol: stream, node_ports: {n1: 2, n2: 3, nn3: 4}}\n",
                BACKENDS,
                "listeners[0].node_ports.nn3",
            ),
            (
                "  - {name: s, listen: '127.0.0.1:1', protocol: stream, node_ports: {n1: 2, n2: 1}}\n",
                BACKENDS,
                "is also `listeners[0].listen`",
            ),
            (
                "  - {name: m, listen: '127.0.0.1:1', protocol: mqtt, node_ports: {n1: 2}}\n",
                BACKENDS,
                "only a `stream` listener",
            ),
            (
                "  - {name: t, listen: '127.0.0.1:1', protocol: tcp}\n",
                BACKENDS,
                "a `tcp` listener has no default port",
            ),
            (
                "  - {name: t, listen: '127.0.0.1:1', protocol: smtp}\n",
                BACKENDS,
                "listeners[0].protocol",
            ),
            (
                "  - {name: m, listen: '127.0.0.1:1', protocol: mqtt}\n",
                "backends:\n  - {name: n1, address: 'h:1', ports: {mqt: 1}}\n",
                "did you mean `mqtt`",
            ),
        ];
        for (listeners, backends, wanted) in cases {
            let e = refused(listeners, backends);
            assert!(e.contains(wanted), "{listeners}: {e}");
        }
    }

    #[test]
    fn a_tcp_listener_takes_the_port_each_backend_names() {
        let c = parse(
            "listeners:
  - {name: iperf, listen: '127.0.0.1:5201', protocol: tcp}
backends:
  - {name: n1, address: 'h1:5672', ports: {iperf: 5202}}
  - {name: n2, address: 'h2:5672', ports: {tcp: 5203}}
",
        )
        .expect("valid");
        let l = &c.listeners[0];
        assert_eq!(
            l.backend_address(&c.backends[0]).as_deref(),
            Some("h1:5202")
        );
        assert_eq!(
            l.backend_address(&c.backends[1]).as_deref(),
            Some("h2:5203")
        );
    }
}
