//! Backends, their state, and the choice of one for a new connection.
//!
//! The set of backends is read on every accept and changed only on reload, so it
//! lives in an `ArcSwap` and is swapped whole. Per-backend state (health verdict,
//! operator mode, connection counts) is in atomics.

mod orders;
pub use orders::{Command, ConnRegistry, Orders, OrdersRx};

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::{BackendConfig, Balance};
use crate::telemetry::metrics;

/// What the health checker last concluded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Health {
    Up = 0,
    Down = 1,
}

/// What the operator asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum Mode {
    /// Health-driven.
    Enabled = 0,
    /// No new connections; existing ones are closed gracefully, paced.
    Draining = 1,
    /// No new connections; existing ones kept.
    Disabled = 2,
}

impl Mode {
    /// The name the admin API shows.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enabled => "enabled",
            Mode::Draining => "draining",
            Mode::Disabled => "disabled",
        }
    }
}

/// The state shown to operators, combining health and mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Up,
    Down,
    Draining,
    Disabled,
    /// The node itself is in maintenance mode (`rabbitmq-upgrade drain`).
    Maintenance,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Up => "up",
            State::Down => "down",
            State::Draining => "draining",
            State::Disabled => "disabled",
            State::Maintenance => "maintenance",
        }
    }
}

/// Health-check bookkeeping shown by the admin API.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CheckStatus {
    /// Unix time (seconds) of the last completed check.
    pub last_check: Option<f64>,
    pub consecutive_successes: u32,
    pub consecutive_failures: u32,
    pub last_failure: Option<String>,
    /// The node's RabbitMQ version, once read (`GET /api/overview`).
    pub rabbitmq_version: Option<String>,
    /// The node's Erlang name, read with the version (`rabbit@host`).
    pub node: Option<String>,
    /// The name of the node's cluster (`cluster_name`), read with the version.
    pub rabbitmq_cluster: Option<String>,
    /// How long the last probe took, seconds (a probe that timed out took
    /// `health.timeout`).
    pub last_check_seconds: Option<f64>,
    /// The management checks of the last probe (`health.checks`, `auto` resolved).
    pub checks: Vec<String>,
    /// Checks of that list the node does not know (HTTP 404), skipped.
    pub skipped_checks: Vec<String>,
}

/// One RabbitMQ node as warren sees it.
#[derive(Debug)]
pub struct Backend {
    pub config: BackendConfig,
    health: AtomicU8,
    mode: AtomicU8,
    /// A resource alarm (memory/disk) on the node, per `health.on_alarm`.
    alarm: AtomicBool,
    /// The node is in maintenance mode (`rabbitmq-upgrade drain`).
    maintenance: AtomicBool,
    /// The protocols (`ListenerProtocol::bit`) whose listener check fails on
    /// the node: out for those listeners only.
    protocols_out: AtomicU8,
    /// Bytes forwarded from clients to this backend (added per read, relaxed).
    pub bytes_in: AtomicU64,
    /// Bytes forwarded from this backend to clients.
    pub bytes_out: AtomicU64,
    /// The part of `bytes_in`/`bytes_out` already handed to the metrics.
    reported_in: AtomicU64,
    reported_out: AtomicU64,
    reported_total: AtomicU64,
    active: AtomicUsize,
    total: AtomicU64,
    /// When the backend last came up (for slow start); `None` while never down.
    up_since: Mutex<Option<Instant>>,
    /// The state and alarm [`Backend::record_state`] last saw ([`shown`]), and
    /// since when (Unix time, seconds, as f64 bits).
    shown: AtomicU8,
    changed_at: AtomicU64,
    pub check: Mutex<CheckStatus>,
    /// Open client connections, so they can be drained.
    pub conns: ConnRegistry,
    /// Cancelled when the backend is removed: ends its health checker.
    pub tasks: CancellationToken,
    /// Connect failures the data path saw, until the health checker takes them.
    connect_failures: ConnectFailures,
}

/// Connect failures reported by the data path (an event for the checker: the
/// data path never runs the health state machine itself).
#[derive(Debug, Default)]
struct ConnectFailures {
    /// How many since the checker last took them, and the last one's reason.
    taken: Mutex<(u32, String)>,
    reported: tokio::sync::Notify,
}

impl Backend {
    pub fn new(config: BackendConfig) -> Self {
        Backend {
            config,
            health: AtomicU8::new(Health::Up as u8),
            mode: AtomicU8::new(Mode::Enabled as u8),
            alarm: AtomicBool::new(false),
            maintenance: AtomicBool::new(false),
            protocols_out: AtomicU8::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            reported_in: AtomicU64::new(0),
            reported_out: AtomicU64::new(0),
            reported_total: AtomicU64::new(0),
            active: AtomicUsize::new(0),
            total: AtomicU64::new(0),
            up_since: Mutex::new(None),
            shown: AtomicU8::new(shown(State::Up, false)),
            changed_at: AtomicU64::new(unix_now().to_bits()),
            check: Mutex::new(CheckStatus::default()),
            conns: ConnRegistry::default(),
            tasks: CancellationToken::new(),
            connect_failures: ConnectFailures::default(),
        }
    }

    /// The data path could not connect (or prepare the socket): the backend's
    /// health checker counts it as a failed probe.
    pub fn report_connect_failure(&self, reason: &str) {
        if let Ok(mut t) = self.connect_failures.taken.lock() {
            t.0 = t.0.saturating_add(1);
            t.1 = reason.to_string();
        }
        self.connect_failures.reported.notify_one();
    }

    /// Waits until a connect failure is reported (one reported before the call
    /// ends the wait at once).
    pub async fn connect_failure_reported(&self) {
        self.connect_failures.reported.notified().await;
    }

    /// The connect failures reported since the last call: how many, and the
    /// last one's reason.
    pub fn take_connect_failures(&self) -> (u32, String) {
        self.connect_failures
            .taken
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default()
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn health(&self) -> Health {
        if self.health.load(Ordering::Acquire) == Health::Up as u8 {
            Health::Up
        } else {
            Health::Down
        }
    }

    /// Sets the health verdict; returns the previous one.
    pub fn set_health(&self, h: Health) -> Health {
        let prev = self.health.swap(h as u8, Ordering::AcqRel);
        if h == Health::Up && prev != Health::Up as u8 {
            if let Ok(mut s) = self.up_since.lock() {
                *s = Some(Instant::now());
            }
        }
        if prev == Health::Up as u8 {
            Health::Up
        } else {
            Health::Down
        }
    }

    /// Starts slow start over, as for a backend that just came up (a node back
    /// from maintenance).
    pub fn restart_slowstart(&self) {
        if let Ok(mut s) = self.up_since.lock() {
            *s = Some(Instant::now());
        }
    }

    /// When the backend last came back up, if it ever went down.
    pub fn up_since(&self) -> Option<Instant> {
        self.up_since.lock().ok().and_then(|s| *s)
    }

    pub fn mode(&self) -> Mode {
        match self.mode.load(Ordering::Acquire) {
            1 => Mode::Draining,
            2 => Mode::Disabled,
            _ => Mode::Enabled,
        }
    }

    /// Sets the operator mode; returns the previous one.
    pub fn set_mode(&self, m: Mode) -> Mode {
        match self.mode.swap(m as u8, Ordering::AcqRel) {
            1 => Mode::Draining,
            2 => Mode::Disabled,
            _ => Mode::Enabled,
        }
    }

    pub fn state(&self) -> State {
        match (self.mode(), self.health()) {
            (Mode::Disabled, _) => State::Disabled,
            (Mode::Draining, _) => State::Draining,
            (Mode::Enabled, _) if self.maintenance() => State::Maintenance,
            (Mode::Enabled, Health::Down) => State::Down,
            (Mode::Enabled, Health::Up) => State::Up,
        }
    }

    /// Records the state gauges (on a change, and at each scrape), and the
    /// time of the change when the state or the alarm differs from the last
    /// call's. Every action on a backend ends with this call, so that time is
    /// when the state changed.
    pub fn record_state(&self) {
        let now = shown(self.state(), self.alarm());
        if self.shown.swap(now, Ordering::AcqRel) != now {
            self.changed_at
                .store(unix_now().to_bits(), Ordering::Relaxed);
        }
        metrics::backend_state(
            self.name(),
            self.state().as_str(),
            self.usable(),
            self.alarm(),
        );
    }

    /// Unix time (seconds) of the last change of state or alarm; the
    /// backend's creation until the first.
    pub fn changed_at(&self) -> f64 {
        f64::from_bits(self.changed_at.load(Ordering::Relaxed))
    }

    /// May receive new connections.
    pub fn usable(&self) -> bool {
        self.state() == State::Up && !self.alarm()
    }

    /// May receive new connections on a listener of the protocol with `bit`
    /// (`ListenerProtocol::bit`).
    pub fn usable_for(&self, bit: u8) -> bool {
        self.usable() && !self.out_for(bit)
    }

    /// The node's listener for the protocol with `bit` failed its check.
    pub fn out_for(&self, bit: u8) -> bool {
        self.protocols_out.load(Ordering::Acquire) & bit != 0
    }

    /// The protocols the node is out for, as bits.
    pub fn protocols_out(&self) -> u8 {
        self.protocols_out.load(Ordering::Acquire)
    }

    /// Sets whether the node is out for the protocol with `bit`; returns
    /// whether that changed.
    pub fn set_out_for(&self, bit: u8, out: bool) -> bool {
        let old = if out {
            self.protocols_out.fetch_or(bit, Ordering::AcqRel)
        } else {
            self.protocols_out.fetch_and(!bit, Ordering::AcqRel)
        };
        (old & bit != 0) != out
    }

    pub fn alarm(&self) -> bool {
        self.alarm.load(Ordering::Acquire)
    }

    pub fn maintenance(&self) -> bool {
        self.maintenance.load(Ordering::Acquire)
    }

    /// Sets the maintenance flag; returns the previous value.
    pub fn set_maintenance(&self, on: bool) -> bool {
        self.maintenance.swap(on, Ordering::AcqRel)
    }

    /// Sets the alarm flag; returns the previous value.
    pub fn set_alarm(&self, on: bool) -> bool {
        self.alarm.swap(on, Ordering::AcqRel)
    }

    /// Share of its normal traffic a backend takes, in 0..=1000: ramps up linearly
    /// over `slowstart` after it comes back, so it is not flooded (no herd).
    pub fn weight_permille(&self, now: Instant, slowstart: Duration) -> u32 {
        match self.up_since() {
            Some(since) if !slowstart.is_zero() => {
                let elapsed = now.saturating_duration_since(since);
                if elapsed >= slowstart {
                    1000
                } else {
                    // Never zero, so a lone returning backend still gets traffic.
                    ((elapsed.as_millis() * 1000 / slowstart.as_millis()) as u32).max(10)
                }
            }
            _ => 1000,
        }
    }

    pub fn active_connections(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    pub fn total_connections(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Bytes (in, out) forwarded since the previous call; each byte is reported once
    /// even when two scrapes race.
    pub fn take_unreported_bytes(&self) -> (u64, u64) {
        (
            take_unreported(&self.bytes_in, &self.reported_in),
            take_unreported(&self.bytes_out, &self.reported_out),
        )
    }

    /// Connections made since the previous call (for the metrics, at scrape time:
    /// a labelled counter per connection would cost the accept path a lookup).
    pub fn take_unreported_connections(&self) -> u64 {
        take_unreported(&self.total, &self.reported_total)
    }

    /// Counts a connection for as long as the guard lives.
    pub fn connection_guard(self: &Arc<Self>) -> ActiveGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.total.fetch_add(1, Ordering::Relaxed);
        ActiveGuard {
            backend: Arc::clone(self),
        }
    }
}

/// A state and an alarm flag as one byte, to compare with the last seen.
fn shown(state: State, alarm: bool) -> u8 {
    (state as u8) << 1 | u8::from(alarm)
}

/// Seconds since the Unix epoch (0 if the clock is set before it).
pub(crate) fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// How much `total` grew since the last call for this `reported` mark.
/// `fetch_max`: a scrape that loaded an older total never moves the mark back,
/// so nothing is counted twice when two scrapes race.
fn take_unreported(total: &AtomicU64, reported: &AtomicU64) -> u64 {
    let now = total.load(Ordering::Relaxed);
    now.saturating_sub(reported.fetch_max(now, Ordering::Relaxed))
}

/// Decrements a backend's active count on drop.
#[derive(Debug)]
pub struct ActiveGuard {
    backend: Arc<Backend>,
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.backend.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The backends in config order, and the round-robin cursor.
#[derive(Debug)]
pub struct Balancer {
    backends: ArcSwap<Vec<Arc<Backend>>>,
    policy: ArcSwap<Policy>,
    cursor: AtomicUsize,
    /// Backends removed by a reload whose connections are still closing: shutdown
    /// must still close them, metrics still count them.
    retired: Mutex<Vec<Arc<Backend>>>,
}

/// How to choose among usable backends.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    pub balance: Balance,
    pub slowstart: Duration,
}

impl Balancer {
    pub fn new(policy: Policy, backends: Vec<Arc<Backend>>) -> Self {
        Balancer {
            backends: ArcSwap::from_pointee(backends),
            policy: ArcSwap::from_pointee(policy),
            cursor: AtomicUsize::new(0),
            retired: Mutex::new(Vec::new()),
        }
    }

    pub fn backends(&self) -> Arc<Vec<Arc<Backend>>> {
        self.backends.load_full()
    }

    pub fn get(&self, name: &str) -> Option<Arc<Backend>> {
        self.backends
            .load()
            .iter()
            .find(|b| b.name() == name)
            .cloned()
    }

    /// Replaces the backend set (reload).
    pub fn replace(&self, policy: Policy, backends: Vec<Arc<Backend>>) {
        self.policy.store(Arc::new(policy));
        self.backends.store(Arc::new(backends));
    }

    /// The policy in force.
    pub fn policy(&self) -> Policy {
        **self.policy.load()
    }

    /// Keeps a removed backend until its connections are gone.
    pub fn retire(&self, b: Arc<Backend>) {
        if let Ok(mut r) = self.retired.lock() {
            r.push(b);
        }
    }

    /// Removed backends that still had connections when last looked at.
    pub fn retired(&self) -> Vec<Arc<Backend>> {
        self.retired.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Forgets the retired backends with no connection left and returns them.
    pub fn prune_retired(&self) -> Vec<Arc<Backend>> {
        let Ok(mut r) = self.retired.lock() else {
            return Vec::new();
        };
        let (gone, keep): (Vec<_>, Vec<_>) = r
            .drain(..)
            .partition(|b| b.conns.is_empty() && b.active_connections() == 0);
        *r = keep;
        gone
    }

    /// Current and retired backends: everything that may hold connections.
    pub fn all(&self) -> Vec<Arc<Backend>> {
        let mut v: Vec<Arc<Backend>> = self.backends.load().iter().cloned().collect();
        v.extend(self.retired());
        v
    }

    /// True when at least one backend may take new connections.
    pub fn any_usable(&self) -> bool {
        self.backends.load().iter().any(|b| b.usable())
    }

    /// Backends to try for a new connection, best first, at most `max`.
    /// Only usable backends are returned; the caller tries them in order.
    pub fn candidates(&self, max: usize) -> Vec<Arc<Backend>> {
        self.candidates_for(max, 0)
    }

    /// [`Balancer::candidates`] for a listener whose protocol has `bit`: the
    /// backends out for that protocol are left out.
    pub fn candidates_for(&self, max: usize, bit: u8) -> Vec<Arc<Backend>> {
        let all = self.backends.load();
        if all.is_empty() || max == 0 {
            return Vec::new();
        }
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        // Rotate over the usable ones only, so that a backend out of service does not
        // hand its turn to its neighbour; ties are broken round-robin under both policies.
        let usable: Vec<&Arc<Backend>> = all.iter().filter(|b| b.usable_for(bit)).collect();
        let m = usable.len();
        let mut usable: Vec<Arc<Backend>> = (0..m)
            .map(|k| Arc::clone(usable[(start + k) % m]))
            .collect();
        let policy = **self.policy.load();
        if policy.balance == Balance::LeastConnections {
            // Stable sort keeps the rotation among equals.
            usable.sort_by_key(|b| b.active_connections());
        }
        // Slow start: a returning backend is skipped for a share of the picks that
        // shrinks as its weight grows; it stays a fallback behind the others.
        let now = Instant::now();
        let roll = (start as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 54; // 0..1024
        let (mut ready, warming): (Vec<_>, Vec<_>) = usable.into_iter().partition(|b| {
            let w = b.weight_permille(now, policy.slowstart);
            w >= 1000 || roll * 1000 / 1024 < w as u64
        });
        ready.extend(warming);
        ready.truncate(max);
        ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(name: &str) -> Arc<Backend> {
        Arc::new(Backend::new(BackendConfig {
            name: name.into(),
            address: format!("{name}:5672"),
            management: None,
            management_tls: None,
            tls: None,
            send_proxy: None,
            ports: Default::default(),
        }))
    }

    fn policy(balance: Balance) -> Policy {
        Policy {
            balance,
            slowstart: Duration::from_secs(10),
        }
    }

    fn names(v: &[Arc<Backend>]) -> Vec<String> {
        v.iter().map(|b| b.name().to_string()).collect()
    }

    #[test]
    fn round_robin_rotates_and_skips_unusable() {
        let (a, b, c) = (backend("a"), backend("b"), backend("c"));
        let lb = Balancer::new(
            policy(Balance::RoundRobin),
            vec![a.clone(), b.clone(), c.clone()],
        );
        let firsts: Vec<String> = (0..6)
            .map(|_| names(&lb.candidates(1))[0].clone())
            .collect();
        assert_eq!(firsts, ["a", "b", "c", "a", "b", "c"]);
        c.set_mode(Mode::Disabled);
        // The remaining two share evenly: c's turn does not go to its neighbour.
        let firsts: Vec<String> = (0..6)
            .map(|_| names(&lb.candidates(1))[0].clone())
            .collect();
        assert_eq!(firsts.iter().filter(|n| *n == "a").count(), 3, "{firsts:?}");
        b.set_health(Health::Down);
        for _ in 0..4 {
            assert_eq!(names(&lb.candidates(3)), ["a"]);
        }
        a.set_mode(Mode::Draining);
        assert!(lb.candidates(3).is_empty());
        assert!(!lb.any_usable());
    }

    #[test]
    fn least_connections_prefers_idle_backends() {
        let (a, b, c) = (backend("a"), backend("b"), backend("c"));
        let lb = Balancer::new(
            policy(Balance::LeastConnections),
            vec![a.clone(), b.clone(), c.clone()],
        );
        let _g1 = a.connection_guard();
        let _g2 = a.connection_guard();
        let _g3 = c.connection_guard();
        assert_eq!(names(&lb.candidates(3)), ["b", "c", "a"]);
        assert_eq!(a.active_connections(), 2);
        drop(_g1);
        assert_eq!(a.active_connections(), 1);
        assert_eq!(a.total_connections(), 2);
    }

    #[test]
    fn slow_start_ramps_a_returning_backend() {
        let (a, b) = (backend("a"), backend("b"));
        let lb = Balancer::new(
            policy(Balance::LeastConnections),
            vec![a.clone(), b.clone()],
        );
        let _busy = a.connection_guard();
        b.set_health(Health::Down);
        b.set_health(Health::Up);
        // Least-connections alone would send every pick to the idle, returning `b`.
        let to_b = (0..1000)
            .filter(|_| lb.candidates(1)[0].name() == "b")
            .count();
        assert!(
            to_b < 100,
            "returning backend took {to_b} of 1000 picks at once"
        );
        assert_eq!(
            b.weight_permille(
                Instant::now() + Duration::from_secs(11),
                Duration::from_secs(10)
            ),
            1000
        );
    }

    #[test]
    fn states_combine_health_and_mode() {
        let a = backend("a");
        assert_eq!(a.state(), State::Up);
        a.set_health(Health::Down);
        assert_eq!(a.state(), State::Down);
        a.set_mode(Mode::Draining);
        assert_eq!(a.state(), State::Draining);
        a.set_mode(Mode::Disabled);
        assert_eq!(a.state(), State::Disabled);
        // Maintenance shows under an operator mode, over a health verdict.
        a.set_maintenance(true);
        assert_eq!(a.state(), State::Disabled);
        a.set_mode(Mode::Enabled);
        assert_eq!(a.state(), State::Maintenance);
        a.set_health(Health::Up);
        assert_eq!(a.state(), State::Maintenance);
        assert!(!a.usable());
        a.set_maintenance(false);
        assert!(a.usable());
    }

    #[test]
    fn the_change_time_moves_only_when_state_or_alarm_does() {
        let a = backend("a");
        let created = a.changed_at();
        a.record_state();
        assert_eq!(a.changed_at(), created, "no change yet");
        std::thread::sleep(Duration::from_millis(5));
        a.set_health(Health::Down);
        a.record_state();
        let down = a.changed_at();
        assert!(down > created);
        std::thread::sleep(Duration::from_millis(5));
        a.record_state();
        assert_eq!(a.changed_at(), down, "a scrape is no change");
        a.set_alarm(true);
        a.record_state();
        assert!(a.changed_at() > down, "an alarm is a change");
    }
}
