//! Addresses in the config: `host:port`, and the management API's base URL
//! (`http[s]://host[:port][/prefix]`, never with credentials in it: they would
//! end up in logs).

use std::fmt;

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
