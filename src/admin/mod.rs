//! The admin HTTP API: liveness, readiness, backend states and operator control,
//! and the status page.
//!
//!   GET  /                            the status page (HTML; polls /api/status and /api/events)
//!   GET  /api/status                  JSON: warren (version, uptime, last reload), listeners
//!                                     (accepted, rejected, active), backends as below
//!   GET  /healthz                     200 while the process runs
//!   GET  /readyz                      200 when a backend can take connections, else 503
//!   GET  /metrics                     Prometheus text format
//!   GET  /api/backends                JSON array of backends (state, why, node, version,
//!                                     connections, cumulative bytes, check latency)
//!   POST /api/backends/{name}/drain   no new connections; existing ones closed, paced
//!   POST /api/backends/{name}/disable no new connections; existing ones kept
//!   POST /api/backends/{name}/enable  back to health-driven
//!   POST /api/backends/{name}/maintenance/on   safety checks, paced drain, then
//!                                     `rabbitmq-upgrade drain` (control::maintenance);
//!                                     answers when done: 200, 409 refused/busy, 502 failed
//!   POST /api/backends/{name}/maintenance/off  `rabbitmq-upgrade revive`, wait for the
//!                                     checks, back in rotation with slow start
//!   GET  /api/events[?after=ID&limit=N] recent events, newest first (control::events)
//!   GET  /api/connections[?backend=&vhost=&user=&offset=&limit=]
//!                                     live client connections (see `connections`)
//!   POST /api/reload                  reload the config file (200, 400 invalid, 500 failed)
//!
//! Every request passes [`guard::check`] first: its `Host` must name this
//! listener (400, 421), and a state change needs the token when one is
//! configured (401), or else must not come from a browser on another origin (403).

mod connections;
mod guard;
mod scrape;
mod status;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;

use crate::control::operator_state::{self, Intent};
use crate::control::reload::{self, ReloadError, Trigger};
use crate::control::{act_as, Action, App};
use crate::control::{maintenance, shared_state};
use crate::proxy::socket::Acceptor;
use crate::telemetry::metrics;
use status::{view, BackendView};

type Body = Full<Bytes>;

/// Serves the admin API. It keeps serving during a graceful shutdown (`/readyz`
/// answers 503 then, `/metrics` still shows the connections closing); the server
/// stops it when the connections are gone.
pub(crate) async fn run(app: Arc<App>) {
    let mut acceptor = Acceptor::new(&app.admin_listener);
    loop {
        let (stream, peer) = match acceptor.accept().await {
            None => return,
            Some(Ok(a)) => a,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        // The address `Host` headers must name: the listening socket's (a
        // wildcard IP stays one), as bound (a configured port 0 is the real port).
        let listener = app
            .admin_listener
            .local_addr()
            .or_else(|| stream.local_addr().ok())
            .unwrap_or_else(|| app.config.load().admin.listen);
        let app = Arc::clone(&app);
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let app = Arc::clone(&app);
                async move { Ok::<_, Infallible>(serve(&app, req, peer, listener).await) }
            });
            let conn = http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc);
            let _ = conn.await;
        });
    }
}

/// Request bodies larger than this are refused (no endpoint takes a body today).
const MAX_BODY: u64 = 64 * 1024;

/// Answers one request: refused by [`guard::check`] (logged and counted), or routed.
async fn serve(
    app: &Arc<App>,
    req: Request<Incoming>,
    peer: SocketAddr,
    listener: SocketAddr,
) -> Response<Body> {
    let verdict = guard::check(
        req.method(),
        req.uri(),
        req.headers(),
        listener,
        &app.config.load().admin.allowed_hosts,
        || token(app),
    );
    match verdict {
        Ok(()) => route(app, req, peer).await,
        Err(refusal) => refuse(refusal, &req, peer),
    }
}

/// The admin token for a state-changing request (read again each time, so a
/// replaced file rotates it).
fn token(app: &App) -> guard::Token {
    match app.config.load().admin.resolve_token() {
        Ok(Some(t)) => guard::Token::Configured(t),
        Ok(None) => guard::Token::NotConfigured,
        Err(e) => {
            tracing::error!(error = %e, "admin token unavailable; refusing mutating requests");
            guard::Token::Unavailable
        }
    }
}

/// Logs and counts a refused request and makes its answer. The log shows what
/// the client sent that decided it (`Host`, `Origin`, `Sec-Fetch-Site`,
/// `Content-Type`, shortened), never `Authorization`.
fn refuse(refusal: guard::Refusal, req: &Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let shown = |name: &str| {
        req.headers().get(name).map(|v| {
            let v = String::from_utf8_lossy(v.as_bytes());
            v.chars().take(100).collect::<String>()
        })
    };
    tracing::warn!(
        reason = refusal.label(),
        status = refusal.status().as_u16(),
        method = %req.method(),
        path = %req.uri().path(),
        %peer,
        // Absent headers leave their field out.
        host = shown("host").as_deref(),
        origin = shown("origin").as_deref(),
        sec_fetch_site = shown("sec-fetch-site").as_deref(),
        content_type = shown("content-type").as_deref(),
        "admin request refused"
    );
    metrics::admin_refused(refusal.label());
    let mut r = text(refusal.status(), refusal.message());
    if refusal == guard::Refusal::Unauthorized {
        r.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer"),
        );
    }
    r
}

async fn route(app: &Arc<App>, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let too_large = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > MAX_BODY);
    if too_large {
        return text(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n");
    }
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segments.as_slice() {
        [""] => only_get(&method, status::page),
        ["api", "status"] => only_get(&method, || {
            let backends = app.balancer.backends();
            json(StatusCode::OK, &status::status(app, &backends))
        }),
        ["healthz"] => only_get(&method, || text(StatusCode::OK, "ok\n")),
        ["readyz"] => only_get(&method, || {
            if app.shutdown.is_cancelled() {
                text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
            } else if app.balancer.any_usable() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "no usable backend\n")
            }
        }),
        ["metrics"] => only_get(&method, || {
            let mut r = Response::new(Full::new(Bytes::from(scrape::render(app))));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }),
        ["api", "backends"] => only_get(&method, || {
            let backends = app.balancer.backends();
            let list: Vec<WithShared<'_>> = backends.iter().map(|b| with_shared(app, b)).collect();
            json(StatusCode::OK, &list)
        }),
        ["api", "backends", name] => only_get(&method, || match app.balancer.get(name) {
            Some(b) => json(StatusCode::OK, &with_shared(app, &b)),
            None => not_found(),
        }),
        ["api", "backends", name, action @ ("drain" | "disable" | "enable")] => {
            if method != Method::POST {
                return method_not_allowed("POST");
            }
            let Some(b) = app.balancer.get(name) else {
                return not_found();
            };
            let (action, intent) = match *action {
                "drain" => (Action::Drain, Intent::Drain),
                "disable" => (Action::Disable, Intent::Disable),
                _ => (Action::Enable, Intent::Enable),
            };
            let by = format!("admin API from {peer}");
            act_as(app, &b, action, Some(&by));
            // Shared with the other warrens when `operations.shared_state` is on;
            // a store that does not answer leaves the action local (the view says so).
            if let Err(e) = shared_state::publish(app, name, intent, &by).await {
                tracing::warn!(backend = *name, error = %e, "operator intent not shared");
            }
            json(StatusCode::OK, &with_shared(app, &b))
        }
        ["api", "backends", name, "maintenance", op @ ("on" | "off")] => {
            if method != Method::POST {
                return method_not_allowed("POST");
            }
            let by = format!("admin API from {peer}");
            let report = maintenance::run(app, name, *op == "on", &by).await;
            json(report.status(), &report)
        }
        ["api", "connections"] => only_get(&method, || {
            let q = connections::Query::parse(req.uri().query());
            json(StatusCode::OK, &connections::page(app, &q))
        }),
        ["api", "events"] => only_get(&method, || {
            let (after, limit) = events_query(req.uri().query());
            json(StatusCode::OK, &app.events.recent(after, limit))
        }),
        ["api", "reload"] => {
            if method != Method::POST {
                return method_not_allowed("POST");
            }
            match reload::reload(app, Trigger::Api).await {
                Ok(summary) => json(StatusCode::OK, &summary),
                Err(e) => {
                    let status = match e {
                        ReloadError::Config(_) | ReloadError::Tls { .. } => StatusCode::BAD_REQUEST,
                        _ => StatusCode::INTERNAL_SERVER_ERROR,
                    };
                    json(status, &serde_json::json!({ "error": e.to_string() }))
                }
            }
        }
        _ => not_found(),
    }
}

/// A backend's view, with the shared operator state when it is on.
#[derive(Serialize)]
struct WithShared<'a> {
    #[serde(flatten)]
    view: BackendView<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    shared_state: Option<operator_state::View>,
    /// The backend as each listener of `listeners:` sees it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    listeners: Vec<status::BackendListener>,
}

fn with_shared<'a>(app: &App, b: &'a crate::balancer::Backend) -> WithShared<'a> {
    WithShared {
        view: view(b),
        shared_state: shared_state::enabled(app).then(|| app.shared.view(b.name())),
        listeners: status::backend_listeners(app, b),
    }
}

fn only_get(method: &Method, f: impl FnOnce() -> Response<Body>) -> Response<Body> {
    if method == Method::GET || method == Method::HEAD {
        f()
    } else {
        method_not_allowed("GET")
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json<T: Serialize>(status: StatusCode, v: &T) -> Response<Body> {
    let body = serde_json::to_vec_pretty(v).unwrap_or_else(|_| b"null".to_vec());
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    // Live state: a cached copy would be a wrong one.
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn not_found() -> Response<Body> {
    text(StatusCode::NOT_FOUND, "not found\n")
}

fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    r.headers_mut()
        .insert(hyper::header::ALLOW, HeaderValue::from_static(allow));
    r
}

/// One blocking `GET path` to a running warren's admin API (the `healthcheck`
/// command); Ok on 200. A wildcard `admin.listen` is probed on loopback.
pub fn healthcheck(
    addr: std::net::SocketAddr,
    path: &str,
    timeout: std::time::Duration,
) -> Result<(), String> {
    use std::io::{Read, Write};
    let mut addr = addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes())
        .map_err(|e| format!("send to {addr}: {e}"))?;
    let mut head = [0u8; 64];
    let n = s
        .read(&mut head)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    let line = String::from_utf8_lossy(&head[..n]);
    let status = line.split_whitespace().nth(1).unwrap_or("");
    if status == "200" {
        Ok(())
    } else {
        Err(format!(
            "GET {path} on {addr}: {}",
            line.lines().next().unwrap_or("no answer")
        ))
    }
}

/// `after` (events newer than this id; 0) and `limit` (at most this many;
/// 100) from a query string. Anything else in it is ignored.
fn events_query(query: Option<&str>) -> (u64, usize) {
    let (mut after, mut limit) = (0, 100);
    for pair in query.unwrap_or("").split('&') {
        match pair.split_once('=') {
            Some(("after", v)) => after = v.parse().unwrap_or(0),
            Some(("limit", v)) => limit = v.parse().unwrap_or(100),
            _ => {}
        }
    }
    (after, limit.min(crate::control::events::CAPACITY))
}
