//! Who may use the admin API: the checks every request passes before it is
//! routed. Pure: headers in, a verdict out (the caller logs, counts and answers).
//!
//! * **Host** (every request, GETs too): a web page can reach the API through
//!   DNS rebinding (its own name, resolved to 127.0.0.1), and then its requests
//!   carry its own name in `Host`. So `Host` must name the listener: its IP and
//!   port, `localhost` with the port when it is bound to loopback; on a wildcard
//!   listener (`0.0.0.0`, `[::]`) any IP address or `localhost`, with any port
//!   (a name cannot be rebound when it is an address, and published or
//!   forwarded ports differ from the listener's); or an `admin.allowed_hosts`
//!   entry. Kubernetes probes and Prometheus's pod discovery send the pod's
//!   IP and port, which a wildcard listener accepts.
//! * **Browsers** (state-changing requests, anything but GET and HEAD): a page
//!   on another site can POST here with a plain HTML form, which needs no CORS
//!   preflight. Without a configured token, a request that shows it comes from
//!   a browser on another origin is refused: an `Origin` other than the API's
//!   own, a `Sec-Fetch-Site` other than `same-origin` or `none`, or a body type
//!   a form can send (`application/x-www-form-urlencoded`,
//!   `multipart/form-data`, `text/plain`). curl and scripts send none of these
//!   (curl sends the form type with `--data`: send no body, or
//!   `-H 'Content-Type: application/json'`). With a token configured, the
//!   token decides (a page cannot know it), whatever the browser headers say.

use std::net::SocketAddr;

use hyper::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST, ORIGIN};
use hyper::{Method, StatusCode, Uri};

use crate::config::{Authority, HostName, Secret};

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// No `Host` header, more than one, or one that is not `host[:port]`.
    BadHost,
    /// A `Host` (or an absolute request URI) naming neither this listener nor
    /// an `admin.allowed_hosts` entry.
    WrongHost,
    /// An `Origin` other than the API's own.
    CrossOrigin,
    /// `Sec-Fetch-Site` other than `same-origin` or `none`.
    CrossSite,
    /// A body type an HTML form can send.
    FormContentType,
    /// A token is configured and the request does not carry it.
    Unauthorized,
    /// A token is configured but cannot be read now.
    TokenUnavailable,
}

impl Refusal {
    /// The metric label: one of `telemetry::metrics::ADMIN_REFUSAL_REASONS`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Refusal::BadHost => "bad_host",
            Refusal::WrongHost => "wrong_host",
            Refusal::CrossOrigin => "cross_origin",
            Refusal::CrossSite => "cross_site",
            Refusal::FormContentType => "form_content_type",
            Refusal::Unauthorized => "unauthorized",
            Refusal::TokenUnavailable => "token_unavailable",
        }
    }

    pub(crate) fn status(self) -> StatusCode {
        match self {
            Refusal::BadHost => StatusCode::BAD_REQUEST,
            Refusal::WrongHost => StatusCode::MISDIRECTED_REQUEST,
            Refusal::CrossOrigin | Refusal::CrossSite | Refusal::FormContentType => {
                StatusCode::FORBIDDEN
            }
            Refusal::Unauthorized => StatusCode::UNAUTHORIZED,
            Refusal::TokenUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The answer's body.
    pub(crate) fn message(self) -> &'static str {
        match self {
            Refusal::BadHost => "a single Host header of the form host[:port] is required\n",
            Refusal::WrongHost => {
                "Host is not this admin API's address: use it, or list the name in admin.allowed_hosts\n"
            }
            Refusal::CrossOrigin => {
                "cross-origin request refused: a browser may change state here only with the admin token\n"
            }
            Refusal::CrossSite => {
                "cross-site request refused (Sec-Fetch-Site): a browser may change state here only with the admin token\n"
            }
            Refusal::FormContentType => {
                "form content type refused: send no body, or Content-Type: application/json\n"
            }
            Refusal::Unauthorized => "bearer token required\n",
            Refusal::TokenUnavailable => "admin token unavailable\n",
        }
    }
}

/// The admin token, as far as a state-changing request needs it.
pub(crate) enum Token {
    NotConfigured,
    Configured(Secret),
    /// Configured, but the file or variable cannot be read now.
    Unavailable,
}

/// The body types a browser sends cross-origin without a CORS preflight.
const FORM_TYPES: [&str; 3] = [
    "application/x-www-form-urlencoded",
    "multipart/form-data",
    "text/plain",
];

/// Whether a request may go on to the routes. `listener` is the bound admin
/// address (a wildcard IP for `0.0.0.0`/`[::]`); `token` is asked only for a
/// state-changing request.
pub(crate) fn check(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    listener: SocketAddr,
    allowed_hosts: &[Authority],
    token: impl FnOnce() -> Token,
) -> Result<(), Refusal> {
    let host = host_of(headers)?;
    if !host_allowed(&host, listener, allowed_hosts) {
        return Err(Refusal::WrongHost);
    }
    // An absolute request URI (`POST http://name/...`) names the host too.
    if let Some(a) = uri.authority() {
        let named = Authority::parse(a.as_str()).ok_or(Refusal::BadHost)?;
        if !host_allowed(&named, listener, allowed_hosts) {
            return Err(Refusal::WrongHost);
        }
    }
    if method == Method::GET || method == Method::HEAD {
        return Ok(());
    }
    match token() {
        Token::NotConfigured => match from_browser(headers, &host) {
            Some(r) => Err(r),
            None => Ok(()),
        },
        Token::Unavailable => Err(Refusal::TokenUnavailable),
        Token::Configured(t) => {
            let given = headers
                .get(AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or("");
            if constant_time_eq(given.as_bytes(), t.0.as_bytes()) {
                Ok(())
            } else {
                Err(Refusal::Unauthorized)
            }
        }
    }
}

/// The one `Host` header, parsed.
fn host_of(headers: &HeaderMap) -> Result<Authority, Refusal> {
    let mut all = headers.get_all(HOST).iter();
    let (Some(v), None) = (all.next(), all.next()) else {
        return Err(Refusal::BadHost);
    };
    v.to_str()
        .ok()
        .and_then(Authority::parse)
        .ok_or(Refusal::BadHost)
}

/// The port a `Host` or `Origin` means: 80 when it names none (plain HTTP).
fn port_of(a: &Authority) -> u16 {
    a.port.unwrap_or(80)
}

fn is_localhost(h: &HostName) -> bool {
    matches!(h, HostName::Name(n) if n == "localhost")
}

fn host_allowed(host: &Authority, listener: SocketAddr, allowed_hosts: &[Authority]) -> bool {
    let listed = allowed_hosts
        .iter()
        .any(|a| a.host == host.host && a.port.is_none_or(|p| p == port_of(host)));
    if listed {
        return true;
    }
    let ip = listener.ip();
    if ip.is_unspecified() {
        return matches!(host.host, HostName::Ip(_)) || is_localhost(&host.host);
    }
    let named = match &host.host {
        HostName::Ip(h) => h.to_canonical() == ip.to_canonical(),
        HostName::Name(_) => is_localhost(&host.host) && ip.is_loopback(),
    };
    named && port_of(host) == listener.port()
}

/// The refusal a browser-originated request gets when no token is configured.
fn from_browser(headers: &HeaderMap, host: &Authority) -> Option<Refusal> {
    if headers
        .get_all(ORIGIN)
        .iter()
        .any(|v| !same_origin(v, host))
    {
        return Some(Refusal::CrossOrigin);
    }
    let cross_site = headers.get_all("sec-fetch-site").iter().any(|v| {
        let site = v.to_str().unwrap_or("").trim().to_ascii_lowercase();
        site != "same-origin" && site != "none"
    });
    if cross_site {
        return Some(Refusal::CrossSite);
    }
    let form = headers.get_all(CONTENT_TYPE).iter().any(|v| {
        // A value that is not text cannot be shown harmless: refused too.
        let Ok(v) = v.to_str() else { return true };
        let media = v
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        FORM_TYPES.contains(&media.as_str())
    });
    form.then_some(Refusal::FormContentType)
}

/// Whether an `Origin` is `http://` plus the (checked) `Host`: the API's own
/// origin. `null` (sandboxed frames, local files) and other schemes are not.
fn same_origin(origin: &HeaderValue, host: &Authority) -> bool {
    origin
        .to_str()
        .ok()
        .and_then(|o| o.trim().strip_prefix("http://"))
        .and_then(Authority::parse)
        .is_some_and(|o| o.host == host.host && port_of(&o) == port_of(host))
}

/// Compares without an early exit, so timing does not reveal the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "s3cret-token-0123456789";

    /// The verdict on `method path` with `headers`, the listener at `listener`,
    /// `allowed` hosts and `token` (None: not configured).
    fn verdict(
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        listener: &str,
        allowed: &[&str],
        token: Option<&str>,
    ) -> Result<(), Refusal> {
        let mut req = hyper::Request::builder().method(method).uri(path);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(()).expect("a valid test request");
        let allowed: Vec<Authority> = allowed
            .iter()
            .map(|a| Authority::parse(a).expect("a valid allowed host"))
            .collect();
        let listener: SocketAddr = listener.parse().expect("a listener address");
        check(
            req.method(),
            req.uri(),
            req.headers(),
            listener,
            &allowed,
            || match token {
                None => Token::NotConfigured,
                Some(t) => Token::Configured(Secret(t.to_string())),
            },
        )
    }

    const LOOPBACK: &str = "127.0.0.1:8404";
    const HOST: (&str, &str) = ("host", "127.0.0.1:8404");

    #[test]
    fn the_host_must_name_the_listener() {
        use Refusal::*;
        let none: &[&str] = &[];
        let names = &["warren.example.com", "lb.example.com:9000"];
        for (host, listener, allowed, expected) in [
            // Its own address; localhost on loopback; IPv6 in brackets.
            (Some("127.0.0.1:8404"), LOOPBACK, none, Ok(())),
            (Some("localhost:8404"), LOOPBACK, none, Ok(())),
            (Some("LocalHost.:8404"), LOOPBACK, none, Ok(())),
            (Some("[::1]:8404"), "[::1]:8404", none, Ok(())),
            (Some("localhost:8404"), "[::1]:8404", none, Ok(())),
            (Some("10.0.0.5:8404"), "10.0.0.5:8404", none, Ok(())),
            // Another port, address or name: DNS rebinding sends its own name.
            (Some("127.0.0.1:8405"), LOOPBACK, none, Err(WrongHost)),
            (Some("127.0.0.1"), LOOPBACK, none, Err(WrongHost)),
            (Some("127.0.0.2:8404"), LOOPBACK, none, Err(WrongHost)),
            (Some("[::1]:8404"), LOOPBACK, none, Err(WrongHost)),
            (Some("evil.example:8404"), LOOPBACK, none, Err(WrongHost)),
            (
                Some("localhost:8404"),
                "10.0.0.5:8404",
                none,
                Err(WrongHost),
            ),
            (Some("127.0.0.1"), "127.0.0.1:80", none, Ok(())),
            // Configured names: without a port any port, with one only that one.
            (Some("WARREN.example.com"), LOOPBACK, names, Ok(())),
            (Some("warren.example.com:8404"), LOOPBACK, names, Ok(())),
            (Some("lb.example.com:9000"), LOOPBACK, names, Ok(())),
            (Some("lb.example.com:8404"), LOOPBACK, names, Err(WrongHost)),
            (Some("lb.example.com"), LOOPBACK, names, Err(WrongHost)),
            (Some("evil.example:8404"), LOOPBACK, names, Err(WrongHost)),
            // Wildcard: any address (probes and scrapes by pod IP, published
            // ports), localhost, listed names; other names not.
            (Some("10.1.2.3:8404"), "0.0.0.0:8404", none, Ok(())),
            (Some("127.0.0.1:18404"), "0.0.0.0:8404", none, Ok(())),
            (Some("[fd00::7]:8404"), "[::]:8404", none, Ok(())),
            (Some("localhost:18404"), "0.0.0.0:8404", none, Ok(())),
            (Some("warren.example.com"), "0.0.0.0:8404", names, Ok(())),
            (
                Some("evil.example:8404"),
                "0.0.0.0:8404",
                none,
                Err(WrongHost),
            ),
            (
                Some("warren-host-1:8404"),
                "0.0.0.0:8404",
                none,
                Err(WrongHost),
            ),
            // Missing or malformed.
            (None, LOOPBACK, none, Err(BadHost)),
            (Some(""), LOOPBACK, none, Err(BadHost)),
            (Some("::1:8404"), LOOPBACK, none, Err(BadHost)),
            (Some("user@127.0.0.1:8404"), LOOPBACK, none, Err(BadHost)),
            (Some("127.0.0.1:8404/x"), LOOPBACK, none, Err(BadHost)),
        ] {
            let headers: Vec<(&str, &str)> = host.map(|h| ("host", h)).into_iter().collect();
            for method in ["GET", "POST"] {
                assert_eq!(
                    verdict(method, "/api/backends", &headers, listener, allowed, None),
                    expected,
                    "{method} Host {host:?} on {listener} with {allowed:?}"
                );
            }
        }
    }

    #[test]
    fn one_host_and_an_absolute_uri_that_agrees() {
        let two = [HOST, ("host", "evil.example")];
        assert_eq!(
            verdict("GET", "/healthz", &two, LOOPBACK, &[], None),
            Err(Refusal::BadHost)
        );
        assert_eq!(
            verdict(
                "GET",
                "http://evil.example/healthz",
                &[HOST],
                LOOPBACK,
                &[],
                None
            ),
            Err(Refusal::WrongHost)
        );
        assert_eq!(
            verdict(
                "GET",
                "http://127.0.0.1:8404/healthz",
                &[HOST],
                LOOPBACK,
                &[],
                None
            ),
            Ok(())
        );
    }

    #[test]
    fn browser_requests_cannot_change_state_without_the_token() {
        use Refusal::*;
        let bearer = format!("Bearer {TOKEN}");
        let form = ("content-type", "application/x-www-form-urlencoded");
        let evil = ("origin", "http://evil.example");
        for (headers, token, expected) in [
            // curl and scripts: no Origin, no body type or JSON.
            (vec![HOST], None, Ok(())),
            (
                vec![HOST, ("content-type", "application/json")],
                None,
                Ok(()),
            ),
            (
                vec![HOST, ("user-agent", "curl/8.5.0"), ("accept", "*/*")],
                None,
                Ok(()),
            ),
            // The browser on the API's own page (devtools), or typed in.
            (
                vec![HOST, ("origin", "http://127.0.0.1:8404")],
                None,
                Ok(()),
            ),
            (vec![HOST, ("sec-fetch-site", "same-origin")], None, Ok(())),
            (vec![HOST, ("sec-fetch-site", "none")], None, Ok(())),
            // Another origin, whatever its body.
            (vec![HOST, evil], None, Err(CrossOrigin)),
            (vec![HOST, evil, form], None, Err(CrossOrigin)),
            (vec![HOST, ("origin", "null")], None, Err(CrossOrigin)),
            (
                vec![HOST, ("origin", "https://127.0.0.1:8404")],
                None,
                Err(CrossOrigin),
            ),
            (
                vec![HOST, ("origin", "http://127.0.0.1:8405")],
                None,
                Err(CrossOrigin),
            ),
            (
                vec![HOST, ("origin", "http://localhost:8404")],
                None,
                Err(CrossOrigin),
            ),
            (
                vec![HOST, ("sec-fetch-site", "cross-site")],
                None,
                Err(CrossSite),
            ),
            (
                vec![HOST, ("sec-fetch-site", "same-site")],
                None,
                Err(CrossSite),
            ),
            // What a form can send, even without Origin (old browsers, curl --data).
            (vec![HOST, form], None, Err(FormContentType)),
            (
                vec![HOST, ("content-type", "Multipart/Form-Data; boundary=x")],
                None,
                Err(FormContentType),
            ),
            (
                vec![HOST, ("content-type", "text/plain;charset=UTF-8")],
                None,
                Err(FormContentType),
            ),
            // With a token configured, the token decides.
            (vec![HOST], Some(TOKEN), Err(Unauthorized)),
            (vec![HOST, evil, form], Some(TOKEN), Err(Unauthorized)),
            (
                vec![HOST, ("authorization", "Bearer wrong-token-0123456789")],
                Some(TOKEN),
                Err(Unauthorized),
            ),
            (vec![HOST, ("authorization", &bearer)], Some(TOKEN), Ok(())),
            (
                vec![
                    HOST,
                    ("authorization", &bearer),
                    evil,
                    form,
                    ("sec-fetch-site", "cross-site"),
                ],
                Some(TOKEN),
                Ok(()),
            ),
        ] {
            assert_eq!(
                verdict(
                    "POST",
                    "/api/backends/n1/drain",
                    &headers,
                    LOOPBACK,
                    &[],
                    token
                ),
                expected,
                "{headers:?} token {token:?}"
            );
            // Reads are never refused for these headers.
            assert_eq!(
                verdict("GET", "/api/backends", &headers, LOOPBACK, &[], token),
                Ok(()),
                "GET {headers:?}"
            );
        }
    }

    #[test]
    fn an_origin_matches_the_host_it_came_through() {
        let via_name = [
            ("host", "warren.example.com"),
            ("origin", "http://warren.example.com"),
        ];
        let allowed = ["warren.example.com"];
        assert_eq!(
            verdict("POST", "/api/reload", &via_name, LOOPBACK, &allowed, None),
            Ok(())
        );
        let other = [
            ("host", "warren.example.com"),
            ("origin", "http://evil.example"),
        ];
        assert_eq!(
            verdict("POST", "/api/reload", &other, LOOPBACK, &allowed, None),
            Err(Refusal::CrossOrigin)
        );
    }

    #[test]
    fn the_token_is_read_only_for_state_changing_requests() {
        let mut asked = false;
        let req = hyper::Request::builder()
            .uri("/metrics")
            .header("host", "127.0.0.1:8404")
            .body(())
            .expect("request");
        let listener: SocketAddr = LOOPBACK.parse().expect("addr");
        let r = check(
            req.method(),
            req.uri(),
            req.headers(),
            listener,
            &[],
            || {
                asked = true;
                Token::Unavailable
            },
        );
        assert_eq!(r, Ok(()));
        assert!(!asked);
        let req = hyper::Request::builder()
            .method("POST")
            .uri("/api/reload")
            .header("host", "127.0.0.1:8404")
            .body(())
            .expect("request");
        let r = check(
            req.method(),
            req.uri(),
            req.headers(),
            listener,
            &[],
            || Token::Unavailable,
        );
        assert_eq!(r, Err(Refusal::TokenUnavailable));
    }

    #[test]
    fn refusals_have_bounded_labels_and_fitting_statuses() {
        use Refusal::*;
        for (r, status) in [
            (BadHost, 400),
            (WrongHost, 421),
            (CrossOrigin, 403),
            (CrossSite, 403),
            (FormContentType, 403),
            (Unauthorized, 401),
            (TokenUnavailable, 503),
        ] {
            assert_eq!(r.status().as_u16(), status, "{r:?}");
            assert!(
                crate::telemetry::metrics::ADMIN_REFUSAL_REASONS.contains(&r.label()),
                "{r:?}"
            );
            assert!(r.message().ends_with('\n'));
        }
    }
}
