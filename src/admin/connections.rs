//! `GET /api/connections` and the client metrics taken at each scrape: both
//! read the connections' records (`proxy::conn_info`).
//!
//!   GET /api/connections[?backend=B&vhost=V&user=U&offset=N&limit=N]
//!
//! answers `{"total": T, "offset": N, "limit": N, "connections": [...]}`: the
//! live connections that match every filter given (exact names), oldest first,
//! `limit` of them (100 by default, at most 1000) from `offset` on.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde::Serialize;

use crate::config::clients::OTHER_LABEL;
use crate::control::App;
use crate::proxy::conn_info::{CloseSeen, ConnInfo};
use crate::telemetry::metrics;

/// Connections in one answer by default, and at most.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

/// One connection as the API shows it.
#[derive(Serialize)]
pub(crate) struct ConnectionView {
    id: u64,
    /// The client's address (a PROXY header's, where one was received).
    client: String,
    tls: bool,
    /// The listener it came in on.
    listener: &'static str,
    backend: String,
    /// The protocol the client's header said (`amqp091`, `amqp10`), once read.
    protocol: Option<&'static str>,
    /// Seconds since the backend was connected.
    age_seconds: f64,
    /// Unix time the backend was connected.
    started: f64,
    /// Bytes forwarded from the client to the broker, and back.
    bytes_in: u64,
    bytes_out: u64,
    /// Whether warren reads this connection's handshake (`clients.handshake`);
    /// without it the fields below stay empty.
    handshake: bool,
    vhost: Option<String>,
    user: Option<String>,
    mechanism: Option<String>,
    product: Option<String>,
    version: Option<String>,
    platform: Option<String>,
    connection_name: Option<String>,
    /// AMQP 1.0: the `open`'s container-id and hostname.
    container_id: Option<String>,
    hostname: Option<String>,
    /// Passed `connection.open` (counted against the limits).
    opened: bool,
    /// The heartbeat interval the client agreed to, seconds (0: none).
    heartbeat_seconds: u32,
    /// Seconds since the last bytes from the client and from the broker: in
    /// AMQP any frame counts as a heartbeat, so this is the time since the
    /// last heartbeat seen from each side.
    client_silent_seconds: Option<f64>,
    broker_silent_seconds: Option<f64>,
    /// Silences longer than the heartbeat so far, from the client and the broker.
    client_heartbeat_gaps: u32,
    broker_heartbeat_gaps: u32,
    blocked: bool,
    /// While blocked: since when (unix time) and the broker's reason.
    blocked_since: Option<f64>,
    blocked_reason: Option<String>,
    /// The connection's first `connection.close`, once one was sent.
    close: Option<CloseSeen>,
}

impl ConnectionView {
    fn of(c: &ConnInfo) -> ConnectionView {
        let [client_silent, broker_silent] = c.silent_for();
        let [client_gaps, broker_gaps] = c.gaps();
        let now = crate::balancer::unix_now();
        c.read(|d| {
            let client = d.client.clone().unwrap_or_default();
            ConnectionView {
                id: c.id,
                client: c.peer.to_string(),
                tls: c.tls,
                listener: c.listener,
                backend: c.backend.clone(),
                protocol: c.protocol().map(|p| p.label()),
                age_seconds: c.started.elapsed().as_secs_f64(),
                started: c.started_unix,
                bytes_in: c.bytes_up.load(std::sync::atomic::Ordering::Relaxed),
                bytes_out: c.bytes_down.load(std::sync::atomic::Ordering::Relaxed),
                handshake: c.handshake,
                vhost: d.vhost.clone(),
                user: client.user,
                mechanism: d.client.as_ref().map(|s| s.mechanism.clone()),
                product: client.product,
                version: client.version,
                platform: client.platform,
                connection_name: client.connection_name,
                container_id: d.container_id.clone(),
                hostname: d.hostname.clone(),
                opened: c.opened(),
                heartbeat_seconds: c.heartbeat(),
                client_silent_seconds: c.handshake.then_some(client_silent),
                broker_silent_seconds: c.handshake.then_some(broker_silent),
                client_heartbeat_gaps: client_gaps,
                broker_heartbeat_gaps: broker_gaps,
                blocked: d.blocked.is_some(),
                blocked_since: d
                    .blocked
                    .as_ref()
                    .map(|b| now - b.since.elapsed().as_secs_f64()),
                blocked_reason: d.blocked.as_ref().map(|b| b.reason.clone()),
                close: d.close.clone(),
            }
        })
    }
}

#[derive(Serialize)]
pub(crate) struct Page {
    /// Connections that match the filters, in all.
    total: usize,
    offset: usize,
    limit: usize,
    connections: Vec<ConnectionView>,
}

/// The filters and the page of a query string; anything else in it is ignored.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Query {
    backend: Option<String>,
    vhost: Option<String>,
    user: Option<String>,
    offset: usize,
    limit: usize,
}

impl Query {
    pub(crate) fn parse(query: Option<&str>) -> Query {
        let mut q = Query {
            limit: DEFAULT_LIMIT,
            ..Query::default()
        };
        for pair in query.unwrap_or("").split('&') {
            let Some((k, v)) = pair.split_once('=') else {
                continue;
            };
            let v = percent_decode(v);
            match k {
                "backend" => q.backend = Some(v),
                "vhost" => q.vhost = Some(v),
                "user" => q.user = Some(v),
                "offset" => q.offset = v.parse().unwrap_or(0),
                "limit" => q.limit = v.parse().unwrap_or(DEFAULT_LIMIT),
                _ => {}
            }
        }
        q.limit = q.limit.min(MAX_LIMIT);
        q
    }

    fn matches(&self, c: &ConnectionView) -> bool {
        let is = |want: &Option<String>, have: &Option<String>| {
            want.as_ref().is_none_or(|w| have.as_ref() == Some(w))
        };
        self.backend.as_ref().is_none_or(|b| *b == c.backend)
            && is(&self.vhost, &c.vhost)
            && is(&self.user, &c.user)
    }
}

/// `%XX` escapes and `+` of a query value, as a browser's
/// `URLSearchParams` writes them (`/` is `%2F`); bad escapes stay as written.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `GET /api/connections`.
pub(crate) fn page(app: &App, q: &Query) -> Page {
    let all: Vec<ConnectionView> = app
        .proxy
        .clients
        .list()
        .iter()
        .map(|c| ConnectionView::of(c))
        .filter(|v| q.matches(v))
        .collect();
    let total = all.len();
    Page {
        total,
        offset: q.offset,
        limit: q.limit,
        connections: all.into_iter().skip(q.offset).take(q.limit).collect(),
    }
}

/// The client gauges (connections per backend and vhost, per user, per client
/// library; blocked connections) and the blocked time since the last scrape.
pub(crate) fn refresh_metrics(app: &App) {
    let conns: Vec<Arc<ConnInfo>> = app.proxy.clients.list();
    let config = app.config.load();
    let m = &config.clients.metrics;
    let mut vhosts: HashMap<(String, String), usize> = HashMap::new();
    let mut users: HashMap<String, usize> = HashMap::new();
    let mut libraries: HashMap<(String, String), usize> = HashMap::new();
    let mut blocked: HashMap<String, usize> = HashMap::new();
    for c in conns.iter().filter(|c| c.handshake) {
        c.read(|d| {
            if let Some(v) = &d.vhost {
                *vhosts.entry((c.backend.clone(), v.clone())).or_default() += 1;
            }
            if let Some(s) = &d.client {
                if let Some(u) = &s.user {
                    *users.entry(u.clone()).or_default() += 1;
                }
                let product = s.product.clone().unwrap_or_default();
                let version = s.version.clone().unwrap_or_default();
                *libraries.entry((product, version)).or_default() += 1;
            }
            *blocked.entry(c.backend.clone()).or_default() += usize::from(d.blocked.is_some());
        });
    }
    let mut memory = app
        .proxy
        .clients
        .gauges
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let vhost_totals = totals(vhosts.iter().map(|((_, v), n)| (v.clone(), *n)));
    let keep_vhosts = labelled(&vhost_totals, &m.vhosts, m.top);
    let keep_users = labelled(&users, &m.users, m.top);
    let library_keys: HashMap<String, usize> = libraries
        .iter()
        .map(|((p, v), n)| (format!("{p}\u{0}{v}"), *n))
        .collect();
    let keep_libraries = labelled(&library_keys, &[], m.top);

    let mut rows = totals(vhosts.into_iter().map(|((b, v), n)| {
        let v = if keep_vhosts.contains(&v) {
            v
        } else {
            OTHER_LABEL.to_string()
        };
        (format!("{b}\u{0}{v}"), n)
    }));
    metrics::set_gauges(
        &mut memory,
        metrics::AMQP_CONNECTIONS,
        rows.drain()
            .map(|(k, n)| {
                let (b, v) = k.split_once('\u{0}').unwrap_or((&k, ""));
                (
                    vec![("backend", b.to_string()), ("vhost", v.to_string())],
                    n as f64,
                )
            })
            .collect(),
    );
    let user_rows = totals(users.into_iter().map(|(u, n)| {
        let u = if keep_users.contains(&u) {
            u
        } else {
            OTHER_LABEL.to_string()
        };
        (u, n)
    }));
    metrics::set_gauges(
        &mut memory,
        metrics::AMQP_USER_CONNECTIONS,
        user_rows
            .into_iter()
            .map(|(u, n)| (vec![("user", u)], n as f64))
            .collect(),
    );
    let library_rows = totals(library_keys.into_iter().map(|(k, n)| {
        let k = if keep_libraries.contains(&k) {
            k
        } else {
            format!("{OTHER_LABEL}\u{0}{OTHER_LABEL}")
        };
        (k, n)
    }));
    metrics::set_gauges(
        &mut memory,
        metrics::AMQP_CLIENT_CONNECTIONS,
        library_rows
            .into_iter()
            .map(|(k, n)| {
                let (p, v) = k.split_once('\u{0}').unwrap_or((&k, ""));
                (
                    vec![("product", p.to_string()), ("version", v.to_string())],
                    n as f64,
                )
            })
            .collect(),
    );
    // Every backend, blocked connections or not.
    for b in app.balancer.backends().iter() {
        blocked.entry(b.name().to_string()).or_default();
    }
    metrics::set_gauges(
        &mut memory,
        metrics::AMQP_BLOCKED,
        blocked
            .into_iter()
            .map(|(b, n)| (vec![("backend", b)], n as f64))
            .collect(),
    );
    for (backend, seconds) in app.proxy.clients.take_blocked() {
        metrics::blocked_seconds(&backend, seconds);
    }
}

/// Sums counts by key.
fn totals(rows: impl Iterator<Item = (String, usize)>) -> HashMap<String, usize> {
    let mut t = HashMap::new();
    for (k, n) in rows {
        *t.entry(k).or_default() += n;
    }
    t
}

/// The names that get a label value of their own: those `listed`, and the
/// `top` others with the most connections (ties broken by name, so the choice
/// is stable between scrapes).
fn labelled(counts: &HashMap<String, usize>, listed: &[String], top: usize) -> HashSet<String> {
    let mut keep: HashSet<String> = listed.iter().cloned().collect();
    let mut others: Vec<(&String, &usize)> = counts
        .iter()
        .filter(|(k, _)| !keep.contains(*k) && *k != OTHER_LABEL)
        .collect();
    others.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
    keep.extend(others.into_iter().take(top).map(|(k, _)| k.clone()));
    keep.remove(OTHER_LABEL);
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_parse_with_bounds() {
        let q = Query::parse(Some(
            "backend=n1&vhost=%2F&user=a+b&offset=5&limit=5000&x=1",
        ));
        assert_eq!(q.backend.as_deref(), Some("n1"));
        assert_eq!(q.vhost.as_deref(), Some("/"));
        assert_eq!(q.user.as_deref(), Some("a b"));
        assert_eq!((q.offset, q.limit), (5, MAX_LIMIT));
        assert_eq!(Query::parse(None).limit, DEFAULT_LIMIT);
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("caf%C3%A9"), "café");
    }

    #[test]
    fn the_listed_and_the_top_get_labels() {
        let counts: HashMap<String, usize> = [("a", 5), ("b", 3), ("c", 3), ("d", 1), ("other", 9)]
            .into_iter()
            .map(|(k, n)| (k.to_string(), n))
            .collect();
        let keep = labelled(&counts, &["d".to_string()], 2);
        let mut keep: Vec<_> = keep.into_iter().collect();
        keep.sort();
        assert_eq!(keep, ["a", "b", "d"]);
    }
}
