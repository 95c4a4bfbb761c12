//! Addresses in the config: `host:port`, and the management API's base URL
//! (`http://host[:port][/prefix]`, never with credentials in it: they would end
//! up in logs).

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
    #[error("invalid management URL `{0}`: expected http://host:port[/prefix]")]
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
    /// `host:port`, as connected to.
    pub authority: String,
    /// Path prefix without trailing slash (usually empty).
    pub prefix: String,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}{}", self.authority, self.prefix)
    }
}

impl Endpoint {
    pub fn parse(url: &str) -> Result<Endpoint, EndpointError> {
        let bad = || EndpointError::BadUrl(redact_userinfo(url));
        let rest = url.strip_prefix("http://").ok_or_else(bad)?;
        let (authority, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if authority.contains('@') {
            // Credentials belong in health.username/password, never in a URL that gets logged.
            return Err(EndpointError::Credentials(redact_userinfo(url)));
        }
        let authority = if split_host_port(authority).is_some() {
            authority.to_string()
        } else if !authority.is_empty() && !authority.contains(':') {
            format!("{authority}:80")
        } else {
            return Err(bad());
        };
        Ok(Endpoint {
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
        let e = Endpoint::parse("http://mq/rabbit/").expect("valid");
        assert_eq!(e.authority, "mq:80");
        assert_eq!(e.prefix, "/rabbit");
        assert!(Endpoint::parse("https://x:1").is_err());
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
