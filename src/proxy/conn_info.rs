//! What warren knows about each client connection: one record per connection
//! ([`ConnInfo`]), from the moment its backend is connected until it ends, and
//! the table of the live ones ([`Clients`]), which `GET /api/connections`, the
//! client metrics and the connection limits read.
//!
//! The data path writes to a record only where it already stops: once per
//! read (bytes, and with `clients.handshake` the time of the read, for
//! heartbeat gaps) and at the few channel-0 connection methods the frame
//! tracker keeps (`proxy::handshake` reads them). Everything else about a
//! connection (who, which vhost, blocked or not, how it closed) sits behind a
//! lock taken at those methods and by readers of the table.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::time::Instant;

use crate::balancer::unix_now;
use crate::config::{Config, Limit, LimitsConfig, Rate};
use crate::proxy::amqp::{self, Captured, Dir, Protocol};
use crate::proxy::amqp10;
use crate::proxy::handshake::{self, StartOk};
use crate::telemetry::metrics;

/// Who sent a `connection.close`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Client,
    Broker,
    /// warren itself: a drain, a shutdown, a limit.
    Warren,
}

impl Side {
    pub fn label(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Broker => "broker",
            Side::Warren => "warren",
        }
    }

    fn of(dir: Dir) -> Side {
        match dir {
            Dir::Up => Side::Client,
            Dir::Down => Side::Broker,
        }
    }
}

/// The first `connection.close` of a connection: it decided how it ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CloseSeen {
    pub side: Side,
    pub code: u16,
    pub text: String,
}

/// The connection is blocked by the broker (`connection.blocked`, a resource
/// alarm) since `since`.
#[derive(Clone, Debug)]
pub struct Blocked {
    pub since: Instant,
    /// Unix time (seconds) it was blocked.
    pub since_unix: f64,
    pub reason: String,
    /// Up to here the blocked time has been added to the metric.
    reported: Instant,
}

/// What the handshake and the connection methods after it told about a
/// connection (with `clients.handshake`). On the heap, and only once there is
/// something to keep: an idle connection that never got that far holds none.
#[derive(Clone, Debug, Default)]
pub struct Details {
    /// The common name of the client's TLS certificate (mutual TLS on the
    /// TLS listener): the user of an `EXTERNAL` login.
    pub cert_name: Option<String>,
    /// `connection.start-ok`: user, mechanism and client properties.
    pub client: Option<StartOk>,
    /// `connection.open`'s vhost.
    pub vhost: Option<String>,
    /// AMQP 1.0: the `open`'s container-id and hostname.
    pub container_id: Option<String>,
    pub hostname: Option<String>,
    pub blocked: Option<Blocked>,
    /// Blocked time of earlier blocks, not yet added to the metric.
    blocked_unreported: Duration,
    pub close: Option<CloseSeen>,
}

/// The details of a connection that has none yet.
const NO_DETAILS: Details = Details {
    cert_name: None,
    client: None,
    vhost: None,
    container_id: None,
    hostname: None,
    blocked: None,
    blocked_unreported: Duration::ZERO,
    close: None,
};

/// One client connection, as warren knows it. Written by the connection's
/// task, read by the admin API and the metrics (and by an access log at the
/// connection's end).
#[derive(Debug)]
pub struct ConnInfo {
    pub id: u64,
    /// The client (as a PROXY header gave it, where one did).
    pub peer: SocketAddr,
    /// Accepted with TLS.
    pub tls: bool,
    /// The listener it came in on (`amqp`, `amqps`, or a name of `listeners:`).
    pub listener: &'static str,
    pub backend: String,
    /// Unix time (seconds) the backend was connected.
    pub started_unix: f64,
    pub started: Instant,
    /// Bytes forwarded client to broker, broker to client.
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
    /// The handshake is read (`clients.handshake`): reads are timed for
    /// heartbeat gaps, the connection methods are kept.
    pub handshake: bool,
    /// Milliseconds after `started` of the last read from the client, from
    /// the broker.
    heard_ms: [AtomicU64; 2],
    /// The heartbeat `tune-ok` settled, seconds (0: none, or not yet known).
    heartbeat: AtomicU32,
    /// Silences longer than the heartbeat, from the client, from the broker.
    gaps: [AtomicU32; 2],
    /// Passed `connection.open` (counted against the limits).
    opened: AtomicBool,
    /// The protocol the client's header said: 0 not yet known, 1 AMQP 0-9-1,
    /// 2 AMQP 1.0.
    protocol: AtomicU8,
    details: Mutex<Option<Box<Details>>>,
    clients: Arc<Clients>,
}

impl ConnInfo {
    /// The record of a connection whose backend was just connected.
    pub(crate) fn new(
        clients: &Arc<Clients>,
        id: u64,
        peer: SocketAddr,
        tls: bool,
        listener: &'static str,
        backend: &str,
        handshake: bool,
    ) -> ConnInfo {
        ConnInfo {
            id,
            peer,
            tls,
            listener,
            backend: backend.to_string(),
            started_unix: unix_now(),
            started: Instant::now(),
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
            handshake,
            heard_ms: [AtomicU64::new(0), AtomicU64::new(0)],
            heartbeat: AtomicU32::new(0),
            gaps: [AtomicU32::new(0), AtomicU32::new(0)],
            opened: AtomicBool::new(false),
            protocol: AtomicU8::new(0),
            details: Mutex::new(None),
            clients: Arc::clone(clients),
        }
    }

    /// With the common name of the client's certificate.
    pub(crate) fn with_cert_name(self, name: Option<String>) -> ConnInfo {
        if let Some(n) = name {
            self.update(|d| d.cert_name = Some(handshake::text(n.as_bytes())));
        }
        self
    }

    fn lock(&self) -> MutexGuard<'_, Option<Box<Details>>> {
        // A panic while holding it leaves plain data, still good to read.
        self.details.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the connection's details (empty ones when there are none yet).
    pub fn read<T>(&self, f: impl FnOnce(&Details) -> T) -> T {
        f(self.lock().as_deref().unwrap_or(&NO_DETAILS))
    }

    /// Changes the connection's details (made on first use).
    fn update<T>(&self, f: impl FnOnce(&mut Details) -> T) -> T {
        f(self.lock().get_or_insert_with(Box::default))
    }

    /// The methods whose arguments the frame tracker keeps for this record,
    /// in direction `dir`.
    pub(crate) fn wanted(&self, dir: Dir) -> &'static [u16] {
        if !self.handshake {
            return &[];
        }
        match dir {
            Dir::Up => &[
                amqp::METHOD_START_OK,
                amqp::METHOD_TUNE_OK,
                amqp::METHOD_OPEN,
                amqp::METHOD_CLOSE,
            ],
            Dir::Down => &[
                amqp::METHOD_CLOSE,
                amqp::METHOD_BLOCKED,
                amqp::METHOD_UNBLOCKED,
            ],
        }
    }

    /// Bytes forwarded in `dir`.
    pub(crate) fn count(&self, dir: Dir, n: u64) {
        let counter = match dir {
            Dir::Up => &self.bytes_up,
            Dir::Down => &self.bytes_down,
        };
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// A read from the peer on the source side of `dir`: a silence longer than
    /// the heartbeat before it is a gap.
    pub(crate) fn heard(&self, dir: Dir) {
        if !self.handshake {
            return;
        }
        let now = self.started.elapsed().as_millis() as u64;
        let last = self.heard_ms[dir as usize].swap(now, Ordering::Relaxed);
        self.check_gap(dir, now.saturating_sub(last));
    }

    /// Counts a gap when `silence` is longer than the heartbeat.
    fn check_gap(&self, dir: Dir, silence_ms: u64) {
        let hb = u64::from(self.heartbeat.load(Ordering::Relaxed));
        if hb > 0 && silence_ms > hb * 1000 {
            self.gaps[dir as usize].fetch_add(1, Ordering::Relaxed);
            metrics::heartbeat_gap(&self.backend, Side::of(dir).label());
        }
    }

    /// Seconds since the last read from the client, from the broker.
    pub fn silent_for(&self) -> [f64; 2] {
        let now = self.started.elapsed().as_millis() as u64;
        [0, 1].map(|i| now.saturating_sub(self.heard_ms[i].load(Ordering::Relaxed)) as f64 / 1e3)
    }

    pub fn heartbeat(&self) -> u32 {
        self.heartbeat.load(Ordering::Relaxed)
    }

    /// Heartbeat gaps seen so far: (client, broker).
    pub fn gaps(&self) -> [u32; 2] {
        [0, 1].map(|i| self.gaps[i].load(Ordering::Relaxed))
    }

    pub fn opened(&self) -> bool {
        self.opened.load(Ordering::Relaxed)
    }

    /// The protocol the client's header said, once it was read.
    pub fn protocol(&self) -> Option<Protocol> {
        match self.protocol.load(Ordering::Relaxed) {
            1 => Some(Protocol::Amqp091),
            2 => Some(Protocol::Amqp10),
            _ => None,
        }
    }

    /// The client's protocol header was read: kept, and counted.
    pub(crate) fn set_protocol(&self, p: Protocol) {
        let v = match p {
            Protocol::Amqp091 => 1,
            Protocol::Amqp10 => 2,
        };
        self.protocol.store(v, Ordering::Relaxed);
        tracing::debug!(protocol = p.label(), "protocol header read");
        metrics::protocol_connection(self.listener, p.label());
    }

    /// A kept connection method from the side `dir` reads from. Returns the
    /// refusal text when a limit refuses the connection at its
    /// `connection.open` (the caller does not forward that frame).
    pub(crate) fn on_method(&self, dir: Dir, c: &Captured) -> Option<String> {
        match (dir, c.method) {
            (Dir::Up, amqp::METHOD_START_OK) => {
                if let Some(mut s) = handshake::start_ok(&c.args) {
                    self.update(|d| {
                        if s.user.is_none() && s.mechanism == "EXTERNAL" {
                            // The broker takes the user from the certificate too.
                            s.user = d.cert_name.clone();
                        }
                        d.client = Some(s);
                    });
                }
            }
            (Dir::Up, amqp::METHOD_TUNE_OK) => {
                if let Some(hb) = handshake::tune_ok_heartbeat(&c.args) {
                    self.heartbeat.store(u32::from(hb), Ordering::Relaxed);
                }
            }
            (Dir::Up, amqp::METHOD_OPEN) => {
                let vhost = handshake::open_vhost(&c.args).unwrap_or_default();
                let user = self.update(|d| {
                    d.vhost = Some(vhost.clone());
                    d.client.as_ref().and_then(|c| c.user.clone())
                });
                if let Err(text) = self.clients.admit(self, &vhost, user.as_deref()) {
                    self.closed(Side::Warren, amqp::NOT_ALLOWED, &text);
                    return Some(text);
                }
            }
            (Dir::Up, amqp10::KEPT_OPEN) => {
                let open = amqp10::open_fields(&c.args);
                self.update(|d| {
                    d.container_id = open.container_id;
                    d.hostname = open.hostname;
                });
            }
            (_, amqp::METHOD_CLOSE) => {
                if let Some(close) = handshake::close(&c.args) {
                    self.closed(Side::of(dir), close.code, &close.text);
                }
            }
            (Dir::Down, amqp::METHOD_BLOCKED) => {
                let reason = handshake::blocked_reason(&c.args).unwrap_or_default();
                self.update(|d| {
                    if d.blocked.is_none() {
                        let now = Instant::now();
                        d.blocked = Some(Blocked {
                            since: now,
                            since_unix: unix_now(),
                            reason,
                            reported: now,
                        });
                    }
                });
            }
            (Dir::Down, amqp::METHOD_UNBLOCKED) => {
                self.update(|d| {
                    if let Some(b) = d.blocked.take() {
                        d.blocked_unreported += b.reported.elapsed();
                    }
                });
            }
            _ => {}
        }
        None
    }

    /// A `connection.close` went out from `side`; the first one is kept.
    pub(crate) fn closed(&self, side: Side, code: u16, text: &str) {
        self.update(|d| {
            if d.close.is_none() {
                d.close = Some(CloseSeen {
                    side,
                    code,
                    text: handshake::text(text.as_bytes()),
                });
            }
        });
    }

    /// The text of warren's refusal of this connection, if it was refused.
    pub(crate) fn refusal(&self) -> Option<String> {
        self.read(|d| match &d.close {
            Some(c) if c.side == Side::Warren && c.code == amqp::NOT_ALLOWED => {
                Some(c.text.clone())
            }
            _ => None,
        })
    }

    /// Blocked time not yet added to the metric, up to now.
    fn take_blocked(&self) -> Duration {
        let mut lock = self.lock();
        let Some(d) = lock.as_deref_mut() else {
            return Duration::ZERO;
        };
        let mut t = std::mem::take(&mut d.blocked_unreported);
        if let Some(b) = d.blocked.as_mut() {
            let now = Instant::now();
            t += now.saturating_duration_since(b.reported);
            b.reported = now;
        }
        t
    }
}

/// The live connections and the counts the limits need.
#[derive(Debug)]
pub struct Clients {
    config: Arc<ArcSwap<Config>>,
    conns: Mutex<HashMap<u64, Arc<ConnInfo>>>,
    /// Taken before `conns` where both are (never the other way round).
    limits: Mutex<LimitState>,
    /// The client gauges this warren set at its last scrape.
    pub(crate) gauges: Mutex<metrics::GaugeMemory>,
}

/// Connections past `connection.open`, per vhost and per user, and the token
/// buckets of the rate limits.
#[derive(Debug, Default)]
struct LimitState {
    vhosts: HashMap<String, usize>,
    users: HashMap<String, usize>,
    buckets: HashMap<(Scope, String), Bucket>,
}

/// What a limit applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Scope {
    Vhost,
    User,
    Network,
}

impl Scope {
    fn label(self) -> &'static str {
        match self {
            Scope::Vhost => "vhost",
            Scope::User => "user",
            Scope::Network => "network",
        }
    }
}

/// A token bucket: `rate.count` tokens at most, refilled at the rate.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// A connection listed in [`Clients`]; dropping it removes it
/// ([`Clients::remove`]).
pub(crate) struct Listed<'a>(&'a Clients, Arc<ConnInfo>);

impl Listed<'_> {
    /// The connection's record.
    pub(crate) fn info(&self) -> &Arc<ConnInfo> {
        &self.1
    }
}

impl Drop for Listed<'_> {
    fn drop(&mut self) {
        self.0.remove(&self.1);
    }
}

/// Buckets kept at most; beyond it the full ones (idle keys) are dropped.
const MAX_BUCKETS: usize = 10_000;

impl Clients {
    pub(crate) fn new(config: Arc<ArcSwap<Config>>) -> Clients {
        Clients {
            config,
            conns: Mutex::default(),
            limits: Mutex::default(),
            gauges: Mutex::default(),
        }
    }

    fn conns(&self) -> MutexGuard<'_, HashMap<u64, Arc<ConnInfo>>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn limit_state(&self) -> MutexGuard<'_, LimitState> {
        self.limits.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lists a connection until the returned guard is dropped.
    #[must_use = "the connection leaves the table when the guard is dropped"]
    pub(crate) fn insert(&self, info: Arc<ConnInfo>) -> Listed<'_> {
        self.conns().insert(info.id, Arc::clone(&info));
        Listed(self, info)
    }

    /// The live connections, by id.
    pub fn list(&self) -> Vec<Arc<ConnInfo>> {
        let mut v: Vec<_> = self.conns().values().cloned().collect();
        v.sort_by_key(|c| c.id);
        v
    }

    /// The connection ended: out of the table and the limits' counts, its
    /// close (or its lack of one), last silence and blocked time into the
    /// metrics.
    fn remove(&self, info: &ConnInfo) {
        self.conns().remove(&info.id);
        let (vhost, user, close) = info.read(|d| {
            let user = d.client.as_ref().and_then(|c| c.user.clone());
            (d.vhost.clone(), user, d.close.clone())
        });
        if info.opened() {
            let mut s = self.limit_state();
            if let Some(v) = vhost {
                decrement(&mut s.vhosts, &v);
            }
            if let Some(u) = user {
                decrement(&mut s.users, &u);
            }
        }
        if info.handshake {
            // The silence that ended it (a client that stopped, and the
            // broker that gave up on it) counts too.
            let [client, broker] = info.silent_for();
            info.check_gap(Dir::Up, (client * 1e3) as u64);
            info.check_gap(Dir::Down, (broker * 1e3) as u64);
            let blocked = info.take_blocked();
            metrics::blocked_seconds(&info.backend, blocked.as_secs_f64());
            match close {
                Some(c) => metrics::amqp_close(&info.backend, c.side.label(), c.code),
                None => metrics::amqp_close_none(&info.backend),
            }
        }
    }

    /// Blocked time of the live connections since the last call, per backend
    /// (for the metrics, at a scrape).
    pub(crate) fn take_blocked(&self) -> Vec<(String, f64)> {
        let mut per: HashMap<String, f64> = HashMap::new();
        for c in self.list() {
            let t = c.take_blocked();
            *per.entry(c.backend.clone()).or_default() += t.as_secs_f64();
        }
        per.into_iter().collect()
    }

    /// Checks the limits for a connection at its `connection.open` to `vhost`
    /// as `user`; counts it when admitted. `Err`: the text of the refusal.
    fn admit(&self, info: &ConnInfo, vhost: &str, user: Option<&str>) -> Result<(), String> {
        let config = self.config.load();
        let limits = &config.clients.limits;
        let mut s = self.limit_state();
        // Every applicable limit, checked before any is counted.
        let mut applicable: Vec<(Scope, String, &Limit)> = Vec::new();
        if let Some(l) = LimitsConfig::of(&limits.vhosts, vhost) {
            applicable.push((Scope::Vhost, vhost.to_string(), l));
        }
        if let Some((u, l)) = user.and_then(|u| Some((u, LimitsConfig::of(&limits.users, u)?))) {
            applicable.push((Scope::User, u.to_string(), l));
        }
        for n in &limits.networks {
            if n.contains(info.peer.ip()) {
                applicable.push((Scope::Network, n.network.to_string(), &n.limit));
            }
        }
        let now = Instant::now();
        for (scope, name, limit) in &applicable {
            if let Some(max) = limit.max_connections {
                let open = match scope {
                    Scope::Vhost => s.vhosts.get(name).copied().unwrap_or(0),
                    Scope::User => s.users.get(name).copied().unwrap_or(0),
                    Scope::Network => self.open_from(&limits.networks, name),
                };
                if open >= max {
                    metrics::limit_refusal(scope.label(), "connections");
                    return Err(format!(
                        "warren: connection limit for {} {name} reached ({max})",
                        scope.label()
                    ));
                }
            }
            if let Some(rate) = limit.rate {
                let b = s.bucket(*scope, name, rate, now);
                if b.tokens < 1.0 {
                    metrics::limit_refusal(scope.label(), "rate");
                    return Err(format!(
                        "warren: connection rate limit for {} {name} reached ({rate})",
                        scope.label()
                    ));
                }
            }
        }
        for (scope, name, limit) in &applicable {
            if limit.rate.is_some() {
                if let Some(b) = s.buckets.get_mut(&(*scope, name.clone())) {
                    b.tokens -= 1.0;
                }
            }
        }
        *s.vhosts.entry(vhost.to_string()).or_default() += 1;
        if let Some(u) = user {
            *s.users.entry(u.to_string()).or_default() += 1;
        }
        info.opened.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Open connections (past `connection.open`) from network `name` of `networks`.
    fn open_from(&self, networks: &[crate::config::NetworkLimit], name: &str) -> usize {
        let Some(net) = networks.iter().find(|n| n.network.to_string() == name) else {
            return 0;
        };
        self.conns()
            .values()
            .filter(|c| c.opened() && net.contains(c.peer.ip()))
            .count()
    }
}

impl LimitState {
    /// The bucket of `(scope, name)`, refilled up to `now`.
    fn bucket(&mut self, scope: Scope, name: &str, rate: Rate, now: Instant) -> Bucket {
        if self.buckets.len() >= MAX_BUCKETS {
            self.buckets
                .retain(|_, b| now.saturating_duration_since(b.at) < Duration::from_secs(3600));
        }
        let cap = f64::from(rate.count);
        let b = self
            .buckets
            .entry((scope, name.to_string()))
            .or_insert(Bucket {
                tokens: cap,
                at: now,
            });
        let refill = now.saturating_duration_since(b.at).as_secs_f64() * rate.per_second();
        b.tokens = (b.tokens + refill).min(cap);
        b.at = now;
        *b
    }
}

fn decrement(map: &mut HashMap<String, usize>, key: &str) {
    if let Some(n) = map.get_mut(key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clients(yaml: &str) -> Arc<Clients> {
        let config = Config::from_yaml(
            &format!("listen: 127.0.0.1:5672\nbackends: [{{name: a, address: 'h:1'}}]\n{yaml}"),
            std::path::Path::new("t.yaml"),
        )
        .expect("valid");
        Arc::new(Clients::new(Arc::new(ArcSwap::from_pointee(config))))
    }

    fn conn(c: &Arc<Clients>, id: u64, peer: &str) -> Arc<ConnInfo> {
        let info = Arc::new(ConnInfo::new(
            c,
            id,
            peer.parse().expect("addr"),
            false,
            metrics::LISTENER_PLAIN,
            "a",
            true,
        ));
        // Listed until the test removes it.
        std::mem::forget(c.insert(Arc::clone(&info)));
        info
    }

    fn open(info: &ConnInfo, user: &str, vhost: &str) -> Option<String> {
        let props = handshake::tests::str_entry("product", b"test");
        let args =
            handshake::tests::start_ok_args(&props, "PLAIN", format!("\0{user}\0pw").as_bytes());
        let captured = |method, args: Vec<u8>| Captured {
            method,
            frame_len: 12 + args.len() as u64,
            args,
        };
        info.on_method(Dir::Up, &captured(amqp::METHOD_START_OK, args));
        let mut open = vec![vhost.len() as u8];
        open.extend_from_slice(vhost.as_bytes());
        open.extend_from_slice(&[0, 0]);
        info.on_method(Dir::Up, &captured(amqp::METHOD_OPEN, open))
    }

    #[test]
    fn a_vhost_limit_refuses_the_next_connection_until_one_ends() {
        let c = clients("clients: {limits: {vhosts: {v: {max_connections: 2}}}}");
        let a = conn(&c, 1, "10.0.0.1:1000");
        let b = conn(&c, 2, "10.0.0.1:1001");
        assert_eq!(open(&a, "u", "v"), None);
        assert_eq!(open(&b, "u", "v"), None);
        let third = conn(&c, 3, "10.0.0.1:1002");
        let refused = open(&third, "u", "v").expect("refused");
        assert_eq!(refused, "warren: connection limit for vhost v reached (2)");
        assert_eq!(third.refusal().as_deref(), Some(refused.as_str()));
        assert!(!third.opened());
        // Another vhost is not limited.
        assert_eq!(open(&conn(&c, 4, "10.0.0.1:1003"), "u", "w"), None);
        c.remove(&third);
        c.remove(&a);
        assert_eq!(open(&conn(&c, 5, "10.0.0.1:1004"), "u", "v"), None);
    }

    #[test]
    fn user_network_and_rate_limits() {
        let c = clients(
            "clients:
  limits:
    users: {'*': {max_connections: 1}}
    networks: [{network: 10.9.0.0/16, max_connections: 1}]
",
        );
        assert_eq!(open(&conn(&c, 1, "10.0.0.1:1"), "alice", "/"), None);
        let e = open(&conn(&c, 2, "10.0.0.1:2"), "alice", "/").expect("user limit");
        assert!(e.contains("limit for user alice"), "{e}");
        assert_eq!(open(&conn(&c, 3, "10.9.0.1:3"), "bob", "/"), None);
        let e = open(&conn(&c, 4, "10.9.3.3:4"), "carol", "/").expect("network limit");
        assert!(e.contains("limit for network 10.9.0.0/16"), "{e}");

        let c = clients("clients: {limits: {vhosts: {v: {rate: 2/h}}}}");
        assert_eq!(open(&conn(&c, 1, "10.0.0.1:1"), "u", "v"), None);
        assert_eq!(open(&conn(&c, 2, "10.0.0.1:2"), "u", "v"), None);
        let e = open(&conn(&c, 3, "10.0.0.1:3"), "u", "v").expect("rate");
        assert_eq!(e, "warren: connection rate limit for vhost v reached (2/h)");
    }

    #[test]
    fn an_external_login_is_the_certificates_name() {
        let c = clients("");
        let info = ConnInfo::new(
            &c,
            1,
            "10.0.0.1:1".parse().expect("addr"),
            true,
            metrics::LISTENER_TLS,
            "a",
            true,
        )
        .with_cert_name(Some("orders-api".into()));
        let args = handshake::tests::start_ok_args(&[], "EXTERNAL", b"");
        let start_ok = Captured {
            method: amqp::METHOD_START_OK,
            frame_len: 12 + args.len() as u64,
            args,
        };
        info.on_method(Dir::Up, &start_ok);
        let user = info.read(|d| d.client.as_ref().and_then(|s| s.user.clone()));
        assert_eq!(user.as_deref(), Some("orders-api"));
    }

    #[test]
    fn blocked_time_is_reported_once() {
        let c = clients("");
        let info = conn(&c, 1, "10.0.0.1:1");
        let blocked = Captured {
            method: amqp::METHOD_BLOCKED,
            args: b"\x0dlow on memory".to_vec(),
            frame_len: 26,
        };
        info.on_method(Dir::Down, &blocked);
        let first = info.read(|d| d.blocked.clone()).expect("blocked");
        assert_eq!(first.reason, "low on memory");
        std::thread::sleep(Duration::from_millis(20));
        let reported = info.take_blocked();
        assert!(reported >= Duration::from_millis(20), "{reported:?}");
        let unblocked = Captured {
            method: amqp::METHOD_UNBLOCKED,
            args: Vec::new(),
            frame_len: 12,
        };
        info.on_method(Dir::Down, &unblocked);
        assert!(info.read(|d| d.blocked.is_none()));
        assert!(info.take_blocked() < Duration::from_millis(20));
        assert_eq!(info.take_blocked(), Duration::ZERO);
    }
}
