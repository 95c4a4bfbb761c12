//! Active and passive health checking.
//!
//! One task per backend (a hung node never delays the others' checks). A probe is a
//! TCP connect to the AMQP port plus the node's own management API checks
//! (`GET /api/health/checks/<name>`), the whole probe bounded by `health.timeout`.
//! Consecutive results move the verdict with HAProxy's rise/fall semantics; failed
//! connects from the proxy count as failures too (passive detection). A verdict
//! flip is logged once; probes that agree with the current verdict log at debug.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper::{Method, StatusCode};
use tokio::net::TcpStream;

use crate::balancer::{Backend, Health};
use crate::config::{HealthConfig, OnAlarm};
use crate::mgmt::{self, Credentials, Endpoint};

/// The result of one probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Pass,
    /// The node is reachable and serving, but has a resource alarm.
    Alarm(String),
    Fail(String),
}

/// Fast while the verdict is changing, slow while down, normal otherwise.
pub(crate) fn next_interval(backend: &Backend, cfg: &HealthConfig) -> Duration {
    let (succ, fail) = backend
        .check
        .lock()
        .map(|c| (c.consecutive_successes, c.consecutive_failures))
        .unwrap_or((0, 0));
    match backend.health() {
        Health::Up if fail > 0 => cfg.fast_interval.get(),
        Health::Down if succ > 0 => cfg.fast_interval.get(),
        Health::Down => cfg.down_interval.get(),
        Health::Up => cfg.interval.get(),
    }
}

/// One probe, bounded by `health.timeout`.
pub(crate) async fn probe(
    backend: &Backend,
    cfg: &HealthConfig,
    creds: Option<&Credentials>,
) -> Outcome {
    let timeout = cfg.timeout.get();
    match tokio::time::timeout(timeout, probe_inner(backend, cfg, creds, timeout)).await {
        Ok(o) => o,
        Err(_) => Outcome::Fail(format!("check timed out after {timeout:?}")),
    }
}

async fn probe_inner(
    backend: &Backend,
    cfg: &HealthConfig,
    creds: Option<&Credentials>,
    timeout: Duration,
) -> Outcome {
    // The AMQP port: a connect and an immediate close. It sends no bytes, so a
    // listener expecting a PROXY header is not disturbed (RabbitMQ 3.10.8 logs
    // nothing for it), and it runs no TLS handshake on AMQPS ports (a handshake
    // then a close makes RabbitMQ log a warning per probe). See docs/tls.md.
    if let Err(e) = TcpStream::connect(&backend.config.address).await {
        return Outcome::Fail(format!("amqp port {}: {e}", backend.config.address));
    }
    let (Some(url), Some(creds)) = (&backend.config.management, creds) else {
        return Outcome::Pass;
    };
    let ep = match Endpoint::parse(url) {
        Ok(ep) => ep,
        Err(e) => return Outcome::Fail(e.to_string()),
    };
    let mut alarm = None;
    for check in &cfg.checks {
        let path = format!("/api/health/checks/{check}");
        match mgmt::request(&ep, creds, Method::GET, &path, None, timeout).await {
            Ok(resp) if resp.status == StatusCode::OK => {}
            Ok(resp) => {
                let reason = resp
                    .json()
                    .and_then(|v| v.get("reason").and_then(|r| r.as_str()).map(str::to_string))
                    .unwrap_or_else(|| {
                        String::from_utf8_lossy(&resp.body[..resp.body.len().min(200)]).into_owned()
                    });
                let text = format!("{check}: HTTP {}: {reason}", resp.status.as_u16());
                if check == "local-alarms" && resp.status == StatusCode::SERVICE_UNAVAILABLE {
                    alarm = Some(text);
                } else {
                    return Outcome::Fail(text);
                }
            }
            Err(e) => return Outcome::Fail(format!("{check}: {e}")),
        }
    }
    match alarm {
        Some(a) => Outcome::Alarm(a),
        None => Outcome::Pass,
    }
}

/// What one outcome changed; the control plane acts on it.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// The verdict flipped to this health.
    pub flip: Option<Health>,
    /// The node's alarm appeared (with its reason) or cleared, as warren
    /// counts alarms (`health.on_alarm: ignore` never raises one).
    pub alarm: Option<Option<String>>,
}

/// Applies one outcome to the backend's rise/fall counters (`backend.check`)
/// and says whether the verdict or the alarm changed. Changes nothing else.
pub(crate) fn observe(backend: &Backend, hc: &HealthConfig, outcome: &Outcome) -> Verdict {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    // Alarm handling: an alarmed node is reachable; what it means is configured.
    let alarm = match outcome {
        Outcome::Alarm(a) if hc.on_alarm != OnAlarm::Ignore => Some(a.clone()),
        _ => None,
    };
    let passed = matches!(outcome, Outcome::Pass | Outcome::Alarm(_));
    let Ok(mut st) = backend.check.lock() else {
        return Verdict::default();
    };
    st.last_check = Some(now);
    if passed {
        st.consecutive_successes = st.consecutive_successes.saturating_add(1);
        st.consecutive_failures = 0;
    } else {
        st.consecutive_failures = st.consecutive_failures.saturating_add(1);
        st.consecutive_successes = 0;
    }
    if let Outcome::Fail(r) | Outcome::Alarm(r) = outcome {
        st.last_failure = Some(r.clone());
    }
    let flip = match backend.health() {
        Health::Up if st.consecutive_failures >= hc.fall.get() => Some(Health::Down),
        Health::Down if st.consecutive_successes >= hc.rise.get() => Some(Health::Up),
        _ => None,
    };
    let alarm = (alarm.is_some() != backend.alarm()).then_some(alarm);
    Verdict { flip, alarm }
}

impl Outcome {
    /// The reason of a failed or alarmed probe.
    pub(crate) fn reason(&self) -> Option<&str> {
        match self {
            Outcome::Pass => None,
            Outcome::Fail(r) | Outcome::Alarm(r) => Some(r),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BackendConfig;

    fn backend() -> Backend {
        Backend::new(BackendConfig {
            name: "n1".into(),
            address: "127.0.0.1:1".into(),
            management: None,
            tls: None,
            send_proxy: None,
        })
    }

    fn fail() -> Outcome {
        Outcome::Fail("amqp port: refused".into())
    }

    #[test]
    fn fall_failures_flip_down_and_rise_passes_flip_up() {
        let b = backend();
        let hc = HealthConfig::default();
        for _ in 1..hc.fall.get() {
            assert_eq!(observe(&b, &hc, &fail()), Verdict::default());
        }
        let v = observe(&b, &hc, &fail());
        assert_eq!(v.flip, Some(Health::Down));
        // The flip is the control plane's to apply; until then it is repeated.
        b.set_health(Health::Down);
        assert_eq!(observe(&b, &hc, &fail()).flip, None);
        for _ in 1..hc.rise.get() {
            assert_eq!(observe(&b, &hc, &Outcome::Pass).flip, None);
        }
        assert_eq!(observe(&b, &hc, &Outcome::Pass).flip, Some(Health::Up));
        let st = b.check.lock().expect("check state");
        assert_eq!(st.consecutive_successes, hc.rise.get());
        assert_eq!(st.last_failure.as_deref(), Some("amqp port: refused"));
    }

    #[test]
    fn a_pass_between_failures_starts_the_count_over() {
        let b = backend();
        let hc = HealthConfig::default();
        for _ in 0..hc.fall.get() * 3 {
            for _ in 1..hc.fall.get() {
                assert_eq!(observe(&b, &hc, &fail()).flip, None);
            }
            assert_eq!(observe(&b, &hc, &Outcome::Pass).flip, None);
        }
    }

    #[test]
    fn an_alarm_is_reported_on_its_changes_only_and_counts_as_reachable() {
        let b = backend();
        let hc = HealthConfig::default();
        let alarm = Outcome::Alarm("local-alarms: HTTP 503: memory".into());
        let v = observe(&b, &hc, &alarm);
        assert_eq!(v.flip, None);
        assert_eq!(v.alarm, Some(Some("local-alarms: HTTP 503: memory".into())));
        b.set_alarm(true);
        assert_eq!(observe(&b, &hc, &alarm), Verdict::default());
        assert_eq!(observe(&b, &hc, &Outcome::Pass).alarm, Some(None));
        // `on_alarm: ignore`: an alarm raised before is cleared, none is raised.
        let ignore = HealthConfig {
            on_alarm: OnAlarm::Ignore,
            ..HealthConfig::default()
        };
        assert_eq!(observe(&b, &ignore, &alarm).alarm, Some(None));
        b.set_alarm(false);
        assert_eq!(observe(&b, &ignore, &alarm).alarm, None);
    }
}
