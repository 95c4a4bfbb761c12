//! The one place that acts on a backend.

use std::sync::Arc;

use crate::balancer::{Backend, Command, Health, Mode};
use crate::config::OnAlarm;
use crate::control::app::App;
use crate::control::drain::{self, DrainPlan};
use crate::control::events::Kind;
use crate::control::rebalance;
use crate::telemetry::metrics;

/// What can be done to a backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Operator: no new connections; the open ones are closed, paced over
    /// `drain.window`.
    Drain,
    /// Operator: no new connections; the open ones stay.
    Disable,
    /// Operator: back in rotation (a drain in progress stops).
    Enable,
    /// The checks found the node down (reason): its clients are told to
    /// reconnect at once, unless an operator already took it out.
    Down(String),
    /// The checks found the node up again.
    Up,
    /// The node reported a resource alarm (reason); `health.on_alarm` says
    /// what follows.
    Alarm(String),
    /// The node's alarm cleared.
    AlarmCleared,
    /// The node is in maintenance mode (reason): out of rotation, its
    /// connections drained paced (the broker may close them first).
    Maintenance(String),
    /// The node left maintenance mode: back in rotation if it is up.
    MaintenanceOver,
    /// Operator (`maintenance off`): the revived node is back in rotation,
    /// with slow start (a drain in progress stops).
    Revive,
    /// A reload removed the backend: its checker stops and its connections
    /// are drained.
    Retire,
}

/// Applies `action` to `b`, with all that follows from it.
pub(crate) fn act(app: &Arc<App>, b: &Arc<Backend>, action: Action) {
    act_as(app, b, action, None);
}

/// [`act`] on behalf of `by` (an operator's request: where it came from),
/// which the event records.
pub(crate) fn act_as(app: &Arc<App>, b: &Arc<Backend>, action: Action, by: Option<&str>) {
    let name = b.name();
    record(app, b, &action, by);
    match action {
        Action::Drain => {
            let prev = b.set_mode(Mode::Draining);
            tracing::info!(backend = name, previous = prev.as_str(), "operator: drain");
            let reason = format!("warren: draining node {name} (operator request), reconnect");
            start_drain(app, b, "operator", reason);
        }
        Action::Disable => {
            let prev = b.set_mode(Mode::Disabled);
            b.conns.cancel_drain();
            tracing::info!(
                backend = name,
                previous = prev.as_str(),
                "operator: disable"
            );
        }
        Action::Enable => {
            let prev = b.set_mode(Mode::Enabled);
            b.conns.cancel_drain();
            tracing::info!(backend = name, previous = prev.as_str(), "operator: enable");
            if b.maintenance() {
                // The node still says it is in maintenance: its clients go.
                let reason = format!("warren: node {name} is in maintenance, reconnect");
                start_drain(app, b, "maintenance", reason);
            } else if prev != Mode::Enabled {
                rebalance::trigger(app, &format!("{name} enabled"));
            }
        }
        Action::Down(reason) => {
            b.set_health(Health::Down);
            tracing::warn!(backend = name, reason, "backend down");
            if b.mode() == Mode::Enabled {
                // Its clients would otherwise hang until TCP or their heartbeat gives up.
                let text = format!("warren: node {name} is down, reconnect");
                b.conns.broadcast(Command::Close(text.into()));
            }
        }
        Action::Up => {
            b.set_health(Health::Up);
            tracing::info!(backend = name, "backend up");
            rebalance::trigger(app, &format!("{name} came back"));
        }
        Action::Alarm(reason) => {
            b.set_alarm(true);
            let on_alarm = app.config.load().health.on_alarm;
            tracing::warn!(
                backend = name,
                reason,
                on_alarm = on_alarm.as_str(),
                "resource alarm"
            );
            if on_alarm == OnAlarm::Drain && b.mode() == Mode::Enabled {
                let reason = format!("warren: node {name} has a resource alarm, reconnect");
                start_drain(app, b, "alarm", reason);
            }
        }
        Action::AlarmCleared => {
            b.set_alarm(false);
            tracing::info!(backend = name, "resource alarm cleared");
            if !b.maintenance() {
                b.conns.cancel_drain();
            }
        }
        Action::Maintenance(reason) => {
            b.set_maintenance(true);
            tracing::warn!(
                backend = name,
                reason,
                "node in maintenance, out of rotation"
            );
            if b.mode() == Mode::Enabled {
                let reason = format!("warren: node {name} is in maintenance, reconnect");
                start_drain(app, b, "maintenance", reason);
            }
        }
        Action::MaintenanceOver => {
            b.set_maintenance(false);
            tracing::info!(backend = name, "node out of maintenance");
            let alarm_drains = b.alarm() && app.config.load().health.on_alarm == OnAlarm::Drain;
            if b.mode() == Mode::Enabled && !alarm_drains {
                b.conns.cancel_drain();
            }
            if b.health() == Health::Up {
                b.restart_slowstart();
                rebalance::trigger(app, &format!("{name} back from maintenance"));
            }
        }
        Action::Revive => {
            let prev = b.set_mode(Mode::Enabled);
            b.conns.cancel_drain();
            b.restart_slowstart();
            tracing::info!(
                backend = name,
                previous = prev.as_str(),
                "operator: maintenance over"
            );
            rebalance::trigger(app, &format!("{name} back from maintenance"));
        }
        Action::Retire => {
            b.tasks.cancel();
            b.set_mode(Mode::Draining);
            let reason =
                format!("warren: node {name} was removed from the configuration, reconnect");
            start_drain(app, b, "reload", reason);
            app.balancer.retire(Arc::clone(b));
        }
    }
    b.record_state();
}

/// The event for `action`.
fn record(app: &App, b: &Backend, action: &Action, by: Option<&str>) {
    let (kind, message) = match action {
        Action::Drain => (Kind::Operator, "drain".to_string()),
        Action::Disable => (Kind::Operator, "disable".to_string()),
        Action::Enable => (Kind::Operator, "enable".to_string()),
        Action::Down(reason) => (Kind::Health, format!("down: {reason}")),
        Action::Up => (Kind::Health, "up".to_string()),
        Action::Alarm(reason) => (Kind::Alarm, format!("resource alarm: {reason}")),
        Action::AlarmCleared => (Kind::Alarm, "resource alarm cleared".to_string()),
        Action::Maintenance(reason) => (Kind::Maintenance, format!("in maintenance: {reason}")),
        Action::MaintenanceOver => (Kind::Maintenance, "out of maintenance".to_string()),
        Action::Revive => (
            Kind::Operator,
            "maintenance over: back in rotation".to_string(),
        ),
        Action::Retire => (Kind::Reload, "removed from the configuration".to_string()),
    };
    app.events.push(kind, Some(b.name()), message, by);
}

/// Counts and starts a paced drain of `b`; `reason` is the reply-text of the
/// clients' `connection.close`.
fn start_drain(app: &App, b: &Arc<Backend>, trigger: &'static str, reason: String) {
    metrics::drain_started(b.name(), trigger);
    let cfg = app.config.load();
    let plan = DrainPlan {
        window: cfg.drain.window.get(),
        grace: cfg.drain.grace.get(),
        reason: reason.into(),
    };
    drain::start(Arc::clone(b), plan, &app.shutdown, Arc::clone(&app.events));
}
