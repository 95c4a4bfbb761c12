//! The status page (`GET /`) and what it polls (`GET /api/status`): every
//! backend, listener and warren itself in one JSON answer, read from the live
//! state at request time. Nothing runs for the page between requests.
//!
//! The page is one HTML document embedded in the binary, its script and style
//! inline (`status.html`, `status.js`, `status.css`, joined once). Its
//! `Content-Security-Policy` allows exactly those two inline blocks, by their
//! SHA-256, and requests to this origin only; no frame may embed it (the
//! action buttons cannot be clickjacked).

use std::sync::atomic::Ordering;
use std::sync::OnceLock;

use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::Response;
use serde::Serialize;

use crate::balancer::{Backend, CheckStatus, Mode, State};
use crate::control::App;
use crate::proxy::socket::AcceptCounts;

const TEMPLATE: &str = include_str!("status.html");
const SCRIPT: &str = include_str!("status.js");
const STYLE: &str = include_str!("status.css");

/// The page, with the headers that keep it to itself.
pub(crate) fn page() -> Response<Full<Bytes>> {
    let page = built();
    let mut r = Response::new(Full::new(Bytes::from_static(page.html.as_bytes())));
    let h = r.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    if let Ok(csp) = HeaderValue::from_str(&page.csp) {
        h.insert("content-security-policy", csp);
    }
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// The page and its policy, made once.
struct Built {
    html: String,
    csp: String,
}

fn built() -> &'static Built {
    static BUILT: OnceLock<Built> = OnceLock::new();
    BUILT.get_or_init(|| {
        let html = TEMPLATE
            .replace("/*STYLE*/", STYLE)
            .replace("/*SCRIPT*/", SCRIPT);
        Built {
            html,
            csp: policy(SCRIPT, STYLE),
        }
    })
}

/// The `Content-Security-Policy` that allows the inline `script` and `style`
/// blocks and nothing else: no other script or style, no inline handler or
/// `style` attribute, requests only to this origin, no frame, no form.
fn policy(script: &str, style: &str) -> String {
    format!(
        "default-src 'none'; script-src '{}'; style-src '{}'; connect-src 'self'; \
         img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        sha256(script),
        sha256(style)
    )
}

/// A CSP hash source: `sha256-` and the base64 of the digest.
fn sha256(text: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    format!(
        "sha256-{}",
        base64::engine::general_purpose::STANDARD.encode(d.as_ref())
    )
}

/// One backend as the API shows it.
#[derive(Serialize)]
pub(crate) struct BackendView<'a> {
    name: &'a str,
    address: &'a str,
    state: State,
    mode: Mode,
    alarm: bool,
    maintenance: bool,
    /// Unix time (seconds) of the last change of state or alarm.
    changed_at: f64,
    active_connections: usize,
    total_connections: u64,
    /// Bytes forwarded from clients to the node since start (a client of the
    /// API takes rates from two readings).
    bytes_in: u64,
    /// Bytes forwarded from the node to clients since start.
    bytes_out: u64,
    #[serde(flatten)]
    check: CheckStatus,
}

pub(crate) fn view(b: &Backend) -> BackendView<'_> {
    BackendView {
        name: b.name(),
        address: &b.config.address,
        state: b.state(),
        mode: b.mode(),
        alarm: b.alarm(),
        maintenance: b.maintenance(),
        changed_at: b.changed_at(),
        active_connections: b.active_connections(),
        total_connections: b.total_connections(),
        bytes_in: b.bytes_in.load(Ordering::Relaxed),
        bytes_out: b.bytes_out.load(Ordering::Relaxed),
        check: b.check.lock().map(|c| c.clone()).unwrap_or_default(),
    }
}

/// A backend as one listener of `listeners:` sees it.
#[derive(Serialize)]
pub(crate) struct BackendListener {
    listener: String,
    protocol: &'static str,
    /// The node's address for this listener.
    address: Option<String>,
    /// New connections of this listener may go to the backend (it is usable
    /// and its listener for the protocol passes its check).
    usable: bool,
    /// Out for this protocol: its `protocol-listener` check fails.
    protocol_out: bool,
    /// This listener's connections open on the backend now.
    active_connections: usize,
    /// warren's port that leads to this backend only (`stream`).
    #[serde(skip_serializing_if = "Option::is_none")]
    node_port: Option<u16>,
}

/// The backend as each listener of `listeners:` sees it; connections are
/// counted from the live records at request time.
pub(crate) fn backend_listeners(app: &App, b: &Backend) -> Vec<BackendListener> {
    let cfg = app.config.load();
    if cfg.listeners.is_empty() {
        return Vec::new();
    }
    let records = app.proxy.clients.list();
    cfg.listeners
        .iter()
        .map(|l| {
            let bit = l.protocol.bit();
            BackendListener {
                listener: l.name.clone(),
                protocol: l.protocol.as_str(),
                address: l.backend_address(&b.config),
                usable: b.usable_for(bit),
                protocol_out: b.out_for(bit),
                active_connections: records
                    .iter()
                    .filter(|r| r.listener == l.name && r.backend == b.name())
                    .count(),
                node_port: l.node_ports.get(b.name()).copied(),
            }
        })
        .collect()
}

/// `GET /api/status`.
#[derive(Serialize)]
pub(crate) struct Status<'a> {
    version: &'static str,
    /// Unix time (seconds) of this answer.
    now: f64,
    /// Unix time warren started.
    started: f64,
    uptime_seconds: f64,
    reload: Reload,
    /// Whether actions need the admin token (the token itself is never shown).
    token_required: bool,
    listeners: Vec<ListenerView>,
    backends: Vec<BackendView<'a>>,
}

#[derive(Serialize)]
struct Reload {
    /// Whether the last reload (or the start) succeeded.
    ok: bool,
    /// Unix time of the last successful load.
    last_success: f64,
}

#[derive(Serialize)]
struct ListenerView {
    name: &'static str,
    /// The bound address; `null` when the listener is not configured.
    address: Option<String>,
    accepted: u64,
    rejected: u64,
    active: usize,
}

/// Everything the page shows, from `backends` (the current set, loaded by
/// the caller so the views can borrow it).
pub(crate) fn status<'a>(app: &App, backends: &'a [std::sync::Arc<Backend>]) -> Status<'a> {
    let now = crate::balancer::unix_now();
    let cfg = app.config.load();
    let (ok, last_success) = app.reloader.last();
    let stats = &app.proxy.listener_stats;
    let tls_active = stats.tls_active.load(Ordering::Relaxed);
    let all_active = stats.active.load(Ordering::Relaxed);
    let named_active: usize = app
        .proxy
        .listeners
        .iter()
        .map(|l| l.active.load(Ordering::Relaxed))
        .sum();
    let listener =
        |name, address: Option<std::net::SocketAddr>, c: &AcceptCounts, active| ListenerView {
            name,
            address: address.map(|a| a.to_string()),
            accepted: c.accepted.load(Ordering::Relaxed),
            rejected: c.rejected.load(Ordering::Relaxed),
            active,
        };
    Status {
        version: env!("CARGO_PKG_VERSION"),
        now,
        started: app.started,
        uptime_seconds: (now - app.started).max(0.0),
        reload: Reload { ok, last_success },
        token_required: cfg.admin.token_file.is_some() || cfg.admin.token_env.is_some(),
        listeners: [
            listener(
                crate::telemetry::metrics::LISTENER_PLAIN,
                app.proxy.amqp_listener.local_addr(),
                &stats.plain,
                all_active.saturating_sub(tls_active + named_active),
            ),
            listener(
                crate::telemetry::metrics::LISTENER_TLS,
                app.proxy.tls_listener.local_addr(),
                &stats.tls,
                tls_active,
            ),
        ]
        .into_iter()
        .chain(app.proxy.listeners.iter().map(|l| {
            listener(
                l.name,
                l.socket.local_addr(),
                &l.counts,
                l.active.load(Ordering::Relaxed),
            )
        }))
        .collect(),
        backends: backends.iter().map(|b| view(b)).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_allows_exactly_the_inline_script_and_style() {
        let page = built();
        let html = &page.html;
        let inline = |open: &str, close: &str| {
            let start = html.find(open).expect("opening tag") + open.len();
            let end = start + html[start..].find(close).expect("closing tag");
            html[start..end].to_string()
        };
        let script = inline("<script>", "</script>");
        let style = inline("<style>", "</style>");
        assert_eq!(script, SCRIPT);
        assert_eq!(style, STYLE);
        // One block each: a second would be refused by the browser.
        assert_eq!(html.matches("<script").count(), 1);
        assert_eq!(html.matches("<style").count(), 1);
        let csp = &page.csp;
        assert!(
            csp.contains(&format!("script-src '{}'", sha256(&script))),
            "{csp}"
        );
        assert!(
            csp.contains(&format!("style-src '{}'", sha256(&style))),
            "{csp}"
        );
        assert!(csp.contains("frame-ancestors 'none'"));
        assert!(!csp.contains("unsafe"), "{csp}");
        // Nothing from elsewhere: no URL with a scheme or a protocol-relative one.
        for needle in ["http://", "https://", "src=\"//", "href=\"//"] {
            assert!(!html.contains(needle), "{needle} in the page");
        }
    }

    #[test]
    fn the_digest_is_the_standard_one() {
        // printf 'abc' | openssl dgst -sha256 -binary | base64
        assert_eq!(
            sha256("abc"),
            "sha256-ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0="
        );
    }
}
