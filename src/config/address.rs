//! Addresses in the config: `host:port`, HTTP authorities (`admin.allowed_hosts`,
//! and the `Host` headers the admin API checks against them), and the management
//! API's base URL (`http[s]://host[:port][/prefix]`, never with credentials in it:
//! they would end up in logs).

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Splits `host:port` (or `[v6]:port`) into its parts.
pub fn split_host_port(s: &str) -> Option<(&str, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() || port == 0 {
        return None;
    }
    Some((host, port))
}

/// The host part of an HTTP authority: an IP address or a DNS name (held in
/// lower case, without a trailing dot, so equal names compare equal).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostName {
    Ip(IpAddr),
    Name(String),
}

impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostName::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            HostName::Ip(ip) => write!(f, "{ip}"),
            HostName::Name(n) => f.write_str(n),
        }
    }
}

/// `host[:port]` as an HTTP `Host` header or an `Origin` carries it (IPv6 in
/// brackets), and as `admin.allowed_hosts` lists it. No port means any port in
/// `admin.allowed_hosts`, and port 80 in a `Host` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authority {
    pub host: HostName,
    pub port: Option<u16>,
}

impl Authority {
    /// Parses `host[:port]`; None for anything else (a path, userinfo, an
    /// unbracketed IPv6 address, an empty or malformed name, a bad port).
    pub fn parse(s: &str) -> Option<Authority> {
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (v6, after) = rest.split_once(']')?;
            let ip: std::net::Ipv6Addr = v6.parse().ok()?;
            let port = match after {
                "" => None,
                p => Some(parse_port(p.strip_prefix(':')?)?),
            };
            (HostName::Ip(IpAddr::V6(ip)), port)
        } else {
            let (host, port) = match s.split_once(':') {
                Some((h, p)) => (h, Some(parse_port(p)?)),
                None => (s, None),
            };
            let host = match host.parse::<std::net::Ipv4Addr>() {
                Ok(ip) => HostName::Ip(IpAddr::V4(ip)),
                Err(_) => HostName::Name(dns_name(host)?),
            };
            (host, port)
        };
        Some(Authority { host, port })
    }
}

impl fmt::Display for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(p) => write!(f, "{}:{p}", self.host),
            None => write!(f, "{}", self.host),
        }
    }
}

impl<'de> Deserialize<'de> for Authority {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Authority::parse(s.trim()).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "expected a host name or IP address, optionally with `:port` \
                 (such as `warren.example.com` or `10.0.0.5:8404`), got `{s}`"
            ))
        })
    }
}

impl Serialize for Authority {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// Digits only (no sign, no spaces), as in a URL.
fn parse_port(p: &str) -> Option<u16> {
    if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    p.parse().ok()
}

/// A DNS name of letters, digits, `-` and `_` in dot-separated labels, lower
/// cased, one trailing dot dropped.
fn dns_name(s: &str) -> Option<String> {
    let s = s.strip_suffix('.').unwrap_or(s);
    let valid = !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    valid.then(|| s.to_ascii_lowercase())
}

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// The URL as given, its userinfo hidden by [`redact_userinfo`].
    #[error("invalid management URL `{0}`: expected http://host:port[/prefix] or https://host:port[/prefix]")]
    BadUrl(String),
    #[error(
        "management URL `{0}` carries credentials: set health.username and \
         health.password_file (or password_env) instead"
    )]
    Credentials(String),
}

/// A parsed management base URL.
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `https://`: the API is reached over TLS.
    pub tls: bool,
    /// The host part (without the brackets of an IPv6 address): the name the
    /// node's certificate is checked against unless the config names another.
    pub host: String,
    /// `host:port`, as connected to.
    pub authority: String,
    /// Path prefix without trailing slash (usually empty).
    pub prefix: String,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        write!(f, "{scheme}://{}{}", self.authority, self.prefix)
    }
}

impl Endpoint {
    pub fn parse(url: &str) -> Result<Endpoint, EndpointError> {
        let bad = || EndpointError::BadUrl(redact_userinfo(url));
        let (tls, rest) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
            (Some(rest), _) => (false, rest),
            (_, Some(rest)) => (true, rest),
            _ => return Err(bad()),
        };
        let (authority, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if authority.contains('@') {
            // Credentials belong in health.username/password, never in a URL that gets logged.
            return Err(EndpointError::Credentials(redact_userinfo(url)));
        }
        let (host, authority) = if let Some((host, _)) = split_host_port(authority) {
            (host.to_string(), authority.to_string())
        } else if !authority.is_empty() && !authority.contains(':') {
            let port = if tls { 443 } else { 80 };
            (authority.to_string(), format!("{authority}:{port}"))
        } else {
            return Err(bad());
        };
        Ok(Endpoint {
            tls,
            host,
            authority,
            prefix: prefix.to_string(),
        })
    }
}

/// `url` with any `user:password@` hidden (`http://user:***@host:15672`), fit for
/// errors and logs. Everything up to the *last* `@` counts as userinfo, so a
/// password holding `/` or `@` is hidden too; without a `:` it is all hidden
/// (it may be a bare token).
pub fn redact_userinfo(url: &str) -> String {
    let start = url.find("://").map_or(0, |i| i + 3);
    let Some(at) = url[start..].rfind('@').map(|i| start + i) else {
        return url.to_string();
    };
    let user = match url[start..at].split_once(':') {
        Some((user, _password)) => format!("{user}:"),
        None => String::new(),
    };
    format!("{}{user}***{}", &url[..start], &url[at..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_authorities() {
        let a = |s: &str| Authority::parse(s).map(|a| a.to_string());
        for (given, read) in [
            ("127.0.0.1:8404", "127.0.0.1:8404"),
            ("10.0.0.5", "10.0.0.5"),
            ("[::1]:8404", "[::1]:8404"),
            ("[::1]", "[::1]"),
            ("Warren.Example.COM.", "warren.example.com"),
            ("localhost:80", "localhost:80"),
            ("svc_1.ns-2", "svc_1.ns-2"),
        ] {
            assert_eq!(a(given).as_deref(), Some(read), "{given}");
        }
        for bad in [
            "",
            ":8404",
            "::1",
            "[::1",
            "[::1]x",
            "[127.0.0.1]:1",
            "h:",
            "h:+1",
            "h:65536",
            "h:1:2",
            "user@h",
            "h/path",
            "http://h",
            "*.example.com",
            "a..b",
            "h ",
        ] {
            assert_eq!(a(bad), None, "{bad:?}");
        }
        let p = Authority::parse("[::1]:8404").expect("v6");
        assert_eq!(p.host, HostName::Ip("::1".parse().expect("ip")));
        assert_eq!(p.port, Some(8404));
    }

    #[test]
    fn allowed_hosts_are_read_checked_and_printed() {
        let parse = |hosts: &str| {
            crate::config::Config::from_yaml(
                &format!("listen: 127.0.0.1:5672\nadmin: {{allowed_hosts: {hosts}}}\nbackends:\n  - {{name: a, address: 'h:1'}}\n"),
                std::path::Path::new("t.yaml"),
            )
        };
        let c = parse("[Warren.example.com, 'lb.example.com:8404', '[fd00::1]:8404']")
            .expect("valid hosts");
        let shown: Vec<String> = c
            .admin
            .allowed_hosts
            .iter()
            .map(|a| a.to_string())
            .collect();
        assert_eq!(
            shown,
            [
                "warren.example.com",
                "lb.example.com:8404",
                "[fd00::1]:8404"
            ]
        );
        let printed = c.to_yaml();
        assert!(printed.contains("lb.example.com:8404"), "{printed}");
        let again = crate::config::Config::from_yaml(&printed, std::path::Path::new("t.yaml"))
            .expect("the printed config parses");
        assert_eq!(again.admin.allowed_hosts, c.admin.allowed_hosts);
        let e = parse("[ok.example, 'http://x/']")
            .expect_err("a URL")
            .to_string();
        assert!(
            e.contains("admin.allowed_hosts[1]") && e.contains("`http://x/`"),
            "{e}"
        );
        assert!(crate::config::AdminConfig::default()
            .allowed_hosts
            .is_empty());
    }

    #[test]
    fn parses_endpoints() {
        let e = Endpoint::parse("http://127.0.0.1:15672").expect("valid");
        assert_eq!(e.authority, "127.0.0.1:15672");
        assert_eq!(e.prefix, "");
        assert!(!e.tls);
        let e = Endpoint::parse("http://mq/rabbit/").expect("valid");
        assert_eq!(e.authority, "mq:80");
        assert_eq!(e.prefix, "/rabbit");
        let e = Endpoint::parse("https://mq.example").expect("valid");
        assert!(e.tls);
        assert_eq!(
            (e.host.as_str(), e.authority.as_str()),
            ("mq.example", "mq.example:443")
        );
        let e = Endpoint::parse("https://[::1]:15671/").expect("valid");
        assert_eq!(
            (e.host.as_str(), e.authority.as_str()),
            ("::1", "[::1]:15671")
        );
        assert_eq!(format!("{e:?}"), "https://[::1]:15671");
        assert!(Endpoint::parse("ftp://x:1").is_err());
        assert!(Endpoint::parse("https://").is_err());
        assert!(Endpoint::parse("http://u:p@x:1").is_err());
        assert!(Endpoint::parse("http://").is_err());
    }

    #[test]
    fn errors_never_show_the_password() {
        for (url, shown) in [
            (
                "http://user:s3cret@host:15672",
                "http://user:***@host:15672",
            ),
            (
                "http://user:s3cret@host:15672/api",
                "http://user:***@host:15672/api",
            ),
            // A `/` or `@` in the password: everything up to the last `@` is hidden.
            (
                "http://user:s3/cret@host:15672",
                "http://user:***@host:15672",
            ),
            ("http://user:s3@cret@host", "http://user:***@host"),
            (
                "https://user:s3cret@host:15671",
                "https://user:***@host:15671",
            ),
            ("https://s3cret@host", "https://***@host"),
            ("user:s3cret@host:15672", "user:***@host:15672"),
            // No `:`: the whole userinfo may be a token.
            ("http://s3cret@host:15672", "http://***@host:15672"),
        ] {
            let e = Endpoint::parse(url).expect_err(url).to_string();
            assert!(!e.contains("s3"), "{url}: {e}");
            assert!(e.contains(shown), "{url}: {e}");
        }
    }
}
