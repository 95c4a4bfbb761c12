//! `management_tls`: how warren reaches `https://` management URLs, for health
//! checks and for `warren bootstrap`. `health.management_tls` holds what every
//! node shares (usually the CA and a client certificate); a backend's own
//! `management_tls` overrides it key by key (usually `server_name`, for a node
//! addressed by IP whose certificate names a host). Without a `ca`, the node's
//! certificate is verified against the system's trust store.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::address::Endpoint;
use super::BackendConfig;

/// TLS settings for `https://` management URLs, as written in the file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ManagementTlsConfig {
    /// CA certificates, PEM, that the node's certificate must chain to. Without
    /// it, the system's trust store (the ca-certificates package on Debian).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// The name the node's certificate must carry, also sent as SNI (unless it
    /// is an IP address); defaults to the host of the management URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// A client certificate chain, PEM, for nodes that require one
    /// (`management.ssl.fail_if_no_peer_cert = true`); `key` must come with it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
}

/// A setting and the config key it was read from (errors name it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keyed<T> {
    pub value: T,
    pub key: String,
}

/// The TLS settings in force for one management URL.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ManagementTls {
    pub ca: Option<Keyed<PathBuf>>,
    pub server_name: Option<Keyed<String>>,
    /// The client certificate chain and its key, always together.
    pub client: Option<(Keyed<PathBuf>, Keyed<PathBuf>)>,
}

impl ManagementTls {
    /// Backend `i`'s settings: its own keys over `health.management_tls`'s. A
    /// client certificate and its key come together from the same place.
    /// `Err((key, message))` when only one of `cert` and `key` is given.
    pub fn resolve(
        global: Option<&ManagementTlsConfig>,
        own: Option<&ManagementTlsConfig>,
        i: usize,
    ) -> Result<ManagementTls, (String, String)> {
        let own_prefix = format!("backends[{i}].management_tls");
        let sources = [
            (own, own_prefix.as_str()),
            (global, "health.management_tls"),
        ];
        let pick = |field: &str, get: &dyn Fn(&ManagementTlsConfig) -> bool| {
            sources
                .iter()
                .find_map(|(c, prefix)| c.filter(|c| get(c)).map(|c| (c, *prefix)))
                .map(|(c, prefix)| (c, format!("{prefix}.{field}")))
        };
        let ca = pick("ca", &|c| c.ca.is_some())
            .and_then(|(c, key)| c.ca.clone().map(|value| Keyed { value, key }));
        let server_name = pick("server_name", &|c| c.server_name.is_some())
            .and_then(|(c, key)| c.server_name.clone().map(|value| Keyed { value, key }));
        let client = match sources
            .iter()
            .find(|(c, _)| c.is_some_and(|c| c.cert.is_some() || c.key.is_some()))
        {
            Some((Some(c), prefix)) => match (&c.cert, &c.key) {
                (Some(cert), Some(key)) => Some((
                    Keyed {
                        value: cert.clone(),
                        key: format!("{prefix}.cert"),
                    },
                    Keyed {
                        value: key.clone(),
                        key: format!("{prefix}.key"),
                    },
                )),
                (Some(_), None) | (None, Some(_)) => {
                    let missing = if c.cert.is_none() { "cert" } else { "key" };
                    return Err((
                        format!("{prefix}.{missing}"),
                        "expected both `cert` and `key` for a client certificate, or neither"
                            .into(),
                    ));
                }
                (None, None) => None,
            },
            _ => None,
        };
        Ok(ManagementTls {
            ca,
            server_name,
            client,
        })
    }
}

/// What can be checked without reading a file: a backend's `management_tls`
/// goes with an `https://` management URL, `health.management_tls` with at
/// least one, and each client certificate with its key. `Err((key, message))`.
pub(crate) fn validate(
    global: Option<&ManagementTlsConfig>,
    backends: &[BackendConfig],
) -> Result<(), (String, String)> {
    let https = |b: &BackendConfig| {
        b.management
            .as_deref()
            .and_then(|m| Endpoint::parse(m).ok())
            .is_some_and(|e| e.tls)
    };
    for (i, b) in backends.iter().enumerate() {
        if b.management_tls.is_some() && !https(b) {
            let url = match &b.management {
                Some(m) => format!(
                    "`{}` is not an https:// URL",
                    super::address::redact_userinfo(m)
                ),
                None => "there is no `management` URL".to_string(),
            };
            return Err((
                format!("backends[{i}].management_tls"),
                format!("TLS settings for the management API, but {url}: use https:// or remove `management_tls`"),
            ));
        }
        if https(b) {
            ManagementTls::resolve(global, b.management_tls.as_ref(), i)?;
        }
    }
    if global.is_some() {
        if !backends.iter().any(https) {
            return Err((
                "health.management_tls".into(),
                "TLS settings for the management API, but no backend has an https:// \
                 `management` URL: use https:// or remove `health.management_tls`"
                    .into(),
            ));
        }
        ManagementTls::resolve(global, None, 0)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls(
        ca: Option<&str>,
        name: Option<&str>,
        cert: Option<&str>,
        key: Option<&str>,
    ) -> ManagementTlsConfig {
        ManagementTlsConfig {
            ca: ca.map(PathBuf::from),
            server_name: name.map(str::to_string),
            cert: cert.map(PathBuf::from),
            key: key.map(PathBuf::from),
        }
    }

    #[test]
    fn a_backend_overrides_the_global_settings_key_by_key() {
        let global = tls(
            Some("/g/ca.pem"),
            Some("mq"),
            Some("/g/c.pem"),
            Some("/g/k.pem"),
        );
        let own = tls(None, Some("node2.mq"), None, None);
        let t = ManagementTls::resolve(Some(&global), Some(&own), 2).expect("valid");
        let ca = t.ca.expect("ca");
        assert_eq!(
            (ca.value.to_str(), ca.key.as_str()),
            (Some("/g/ca.pem"), "health.management_tls.ca")
        );
        let name = t.server_name.expect("server_name");
        assert_eq!(
            (name.value.as_str(), name.key.as_str()),
            ("node2.mq", "backends[2].management_tls.server_name")
        );
        let (cert, key) = t.client.expect("client certificate");
        assert_eq!(cert.key, "health.management_tls.cert");
        assert_eq!(key.value, PathBuf::from("/g/k.pem"));
        // A certificate of its own comes with its own key, never the global one.
        let own = tls(None, None, Some("/b/c.pem"), None);
        let (key, _) = ManagementTls::resolve(Some(&global), Some(&own), 1).expect_err("no key");
        assert_eq!(key, "backends[1].management_tls.key");
        assert_eq!(
            ManagementTls::resolve(None, None, 0).expect("nothing"),
            ManagementTls::default()
        );
    }

    fn parse(text: &str) -> Result<crate::config::Config, (String, String)> {
        crate::config::Config::from_yaml(
            &format!("listen: 127.0.0.1:5672\n{text}"),
            std::path::Path::new("t.yaml"),
        )
        .map_err(|e| match e {
            crate::config::ConfigError::Invalid { key, message, .. } => (key, message),
            e => (String::new(), e.to_string()),
        })
    }

    #[test]
    fn https_urls_and_their_settings_parse() {
        let c = parse(
            "health: {management_tls: {ca: /etc/warren/mq-ca.pem, cert: /c.pem, key: /k.pem}}
backends:
  - {name: a, address: '10.0.0.1:5671', management: 'https://10.0.0.1:15671', management_tls: {server_name: node1.mq}}
  - {name: b, address: 'h:5672', management: 'http://h:15672'}
",
        )
        .expect("valid");
        let g = c.health.management_tls.as_ref().expect("global");
        assert_eq!(
            g.ca.as_deref(),
            Some(std::path::Path::new("/etc/warren/mq-ca.pem"))
        );
        let own = c.backends[0].management_tls.as_ref().expect("own");
        assert_eq!(own.server_name.as_deref(), Some("node1.mq"));
        // Shown by `warren check` and read back the same.
        let again = crate::config::Config::from_yaml(&c.to_yaml(), std::path::Path::new("t.yaml"))
            .expect("round trip");
        assert_eq!(again.backends, c.backends);
        // An https:// URL without any settings: the system's trust store.
        parse("backends: [{name: a, address: 'h:1', management: 'https://h'}]\n")
            .expect("system roots");
    }

    #[test]
    fn misplaced_or_half_settings_name_the_key() {
        for (text, key, says) in [
            (
                "backends: [{name: a, address: 'h:1', management: 'http://h:15672', management_tls: {server_name: x}}]",
                "backends[0].management_tls",
                "`http://h:15672` is not an https:// URL",
            ),
            (
                "backends: [{name: a, address: 'h:1', management_tls: {ca: /ca.pem}}]",
                "backends[0].management_tls",
                "no `management` URL",
            ),
            (
                "health: {management_tls: {ca: /ca.pem}}\nbackends: [{name: a, address: 'h:1', management: 'http://h:15672'}]",
                "health.management_tls",
                "no backend has an https://",
            ),
            (
                "health: {management_tls: {cert: /c.pem}}\nbackends: [{name: a, address: 'h:1', management: 'https://h:15671'}]",
                "health.management_tls.key",
                "both `cert` and `key`",
            ),
            (
                "backends: [{name: a, address: 'h:1', management: 'https://h:15671', management_tls: {key: /k.pem}}]",
                "backends[0].management_tls.cert",
                "both `cert` and `key`",
            ),
            (
                "backends: [{name: a, address: 'h:1', management: 'https://h:15671', management_tls: {verify: false}}]",
                "backends[0].management_tls.verify",
                "unknown key `verify`",
            ),
        ] {
            let (k, message) = parse(&format!("{text}\n")).expect_err(text);
            assert_eq!(k, key, "{text}: {message}");
            assert!(message.contains(says), "{text}: {message}");
        }
    }
}
