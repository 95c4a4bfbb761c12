//! The shared operator state: operator intents (drain, disable, enable,
//! maintenance) kept in the RabbitMQ cluster as one global runtime parameter
//! (`PUT/GET /api/global-parameters/NAME` on any node's management API), so
//! every warren in front of the cluster applies them. RabbitMQ is the
//! replicated store; health verdicts stay local to each instance.
//!
//! The value is `{"backends": {NAME: {"intent", "at", "by"}}}`: one entry per
//! backend, the unix time it was written and by whom. Rules:
//! - an entry newer than the one an instance applied last is applied (through
//!   `act`); the newest write for a backend wins (ties: the greater `by`);
//! - a write is read-modify-write of the whole value, replacing only its own
//!   backend's entry, then read back (written again when already replaced, at
//!   most [`WRITE_TRIES`] times). The management API has no compare-and-set, so
//!   a concurrent writer that read before this write landed can still replace
//!   it afterwards: every instance therefore writes again, on each poll, the
//!   entries it wrote that the stored value lacks or holds older
//!   ([`reassert`]). Entries converge while their writers live; an intent whose
//!   writer died before repairing it is lost (the operator sees it missing);
//! - when no node answers, the instance keeps what it applied last and says so
//!   (`GET /api/backends`, `warren_shared_state_up` 0); its own operator
//!   actions still apply locally and are written at the next successful write.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hyper::{Method, StatusCode};
use serde::{Deserialize, Serialize};

use crate::balancer::unix_now;
use crate::balancer::Mode;
use crate::control::act::{act_as, Action};
use crate::control::app::App;
use crate::control::operator_state::{Entry, Intent};
use crate::mgmt::{self, encode_segment, Credentials, Target};

const WRITE_TRIES: usize = 3;
/// Time one read or write of the parameter may take on one node.
const TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Value {
    #[serde(default)]
    backends: HashMap<String, Entry>,
}

/// Whether the config turns the shared state on.
pub fn enabled(app: &App) -> bool {
    app.config.load().operations.shared_state.is_some()
}

/// The management APIs of the backends, in order, and the credentials.
fn stores(app: &App) -> (Vec<Target>, Option<Credentials>) {
    let cfg = app.config.load();
    let targets = (0..cfg.backends.len())
        .filter_map(|i| Target::for_backend(&cfg, i)?.ok())
        .collect();
    let creds = cfg
        .health
        .resolve_password()
        .ok()
        .map(|password| Credentials {
            username: cfg.health.username.clone(),
            password,
        });
    (targets, creds)
}

fn path(app: &App) -> Option<String> {
    let cfg = app.config.load();
    let name = &cfg.operations.shared_state.as_ref()?.parameter;
    Some(format!("/api/global-parameters/{}", encode_segment(name)))
}

/// Reads the parameter from the first node that answers; an absent one is empty.
async fn read(app: &App) -> Result<(Value, usize), String> {
    let (targets, creds) = stores(app);
    let creds = creds.ok_or("no management password")?;
    let path = path(app).ok_or("shared_state is off")?;
    let mut errors = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        match mgmt::request(t, &creds, Method::GET, &path, None, TIMEOUT).await {
            Ok(r) if r.status == StatusCode::OK => {
                let value = r
                    .json()
                    .and_then(|v| v.get("value").cloned())
                    .and_then(|v| serde_json::from_value::<Value>(v).ok())
                    .ok_or_else(|| format!("{}: not a warren state", t.endpoint.authority))?;
                return Ok((value, i));
            }
            Ok(r) if r.status == StatusCode::NOT_FOUND => return Ok((Value::default(), i)),
            Ok(r) => errors.push(format!(
                "{}: HTTP {}",
                t.endpoint.authority,
                r.status.as_u16()
            )),
            Err(e) => errors.push(format!("{}: {e}", t.endpoint.authority)),
        }
    }
    Err(if errors.is_empty() {
        "no backend has a management API".into()
    } else {
        errors.join("; ")
    })
}

async fn write(app: &App, store: usize, value: &Value) -> Result<(), String> {
    let (targets, creds) = stores(app);
    let creds = creds.ok_or("no management password")?;
    let path = path(app).ok_or("shared_state is off")?;
    let t = targets.get(store).ok_or("the store went away")?;
    let body = serde_json::json!({ "value": value });
    match mgmt::request(t, &creds, Method::PUT, &path, Some(body), TIMEOUT).await {
        Ok(r) if r.status.is_success() => Ok(()),
        Ok(r) => Err(format!(
            "{}: PUT: HTTP {}",
            t.endpoint.authority,
            r.status.as_u16()
        )),
        Err(e) => Err(format!("{}: PUT: {e}", t.endpoint.authority)),
    }
}

/// Records an operator's intent for `backend` (already applied here) in the
/// cluster. Err when it could not be written (the intent stays local).
pub async fn publish(app: &App, backend: &str, intent: Intent, by: &str) -> Result<(), String> {
    if !enabled(app) {
        return Ok(());
    }
    let entry = Entry {
        intent,
        at: unix_now(),
        by: format!("{} ({by})", instance(app)),
    };
    if let Ok(mut a) = app.shared.applied.lock() {
        a.insert(backend.to_string(), entry.clone());
    }
    let mut last = String::new();
    for _ in 0..WRITE_TRIES {
        let result = async {
            let (mut value, store) = read(app).await?;
            if value
                .backends
                .get(backend)
                .is_some_and(|e| e.newer_than(&entry))
            {
                // Someone wrote a newer intent meanwhile: theirs stands.
                return Ok(true);
            }
            value.backends.insert(backend.to_string(), entry.clone());
            write(app, store, &value).await?;
            let (back, _) = read(app).await?;
            Ok::<bool, String>(
                back.backends
                    .get(backend)
                    .is_some_and(|e| !entry.newer_than(e)),
            )
        }
        .await;
        match result {
            Ok(true) => {
                app.shared.mark(Ok(()));
                tracing::info!(backend, intent = intent.as_str(), "operator intent shared");
                return Ok(());
            }
            Ok(false) => last = "overwritten by a concurrent writer".into(),
            Err(e) => {
                app.shared.mark(Err(e.clone()));
                return Err(e);
            }
        }
    }
    Err(last)
}

/// This instance's name in the entries it writes: its admin address.
fn instance(app: &App) -> String {
    let addr = app
        .admin_listener
        .local_addr()
        .unwrap_or_else(|| app.config.load().admin.listen);
    format!("warren@{addr}")
}

/// Reads the parameter once and applies every entry newer than the one applied
/// last. Ok(number applied).
pub async fn sync(app: &Arc<App>) -> Result<usize, String> {
    let result = read(app).await;
    let (value, store) = match result {
        Ok(v) => {
            app.shared.mark(Ok(()));
            v
        }
        Err(e) => {
            app.shared.mark(Err(e.clone()));
            return Err(e);
        }
    };
    reassert(app, &value, store).await;
    let mut applied = 0;
    for (name, entry) in value.backends {
        let newer = app
            .shared
            .applied
            .lock()
            .map(|a| a.get(&name).is_none_or(|old| entry.newer_than(old)))
            .unwrap_or(false);
        if !newer {
            continue;
        }
        if let Some(b) = app.balancer.get(&name) {
            let action = match (entry.intent, b.mode()) {
                (Intent::Enable, Mode::Enabled) => None,
                (Intent::Enable, _) => Some(Action::Enable),
                (Intent::Drain | Intent::Maintenance, Mode::Draining) => None,
                (Intent::Drain | Intent::Maintenance, _) => Some(Action::Drain),
                (Intent::Disable, Mode::Disabled) => None,
                (Intent::Disable, _) => Some(Action::Disable),
            };
            if let Some(action) = action {
                let by = format!("shared state, from {}", entry.by);
                act_as(app, &b, action, Some(&by));
                applied += 1;
            }
        }
        if let Ok(mut a) = app.shared.applied.lock() {
            a.insert(name, entry);
        }
    }
    Ok(applied)
}

/// Writes again the entries this instance wrote that the stored value lacks
/// (or holds older): a concurrent writer that read before our write landed
/// replaced it. Each instance repairs its own entries on its next poll, so
/// the value converges while the writers live.
async fn reassert(app: &App, stored: &Value, store: usize) {
    let me = format!("{} (", instance(app));
    let lost: Vec<(String, Entry)> = match app.shared.applied.lock() {
        Ok(a) => a
            .iter()
            .filter(|(name, e)| {
                e.by.starts_with(&me) && stored.backends.get(*name).is_none_or(|s| e.newer_than(s))
            })
            .map(|(n, e)| (n.clone(), e.clone()))
            .collect(),
        Err(_) => return,
    };
    if lost.is_empty() {
        return;
    }
    let mut value = stored.clone();
    for (name, entry) in &lost {
        tracing::info!(backend = %name, intent = entry.intent.as_str(), "operator intent lost to a concurrent write; writing it again");
        value.backends.insert(name.clone(), entry.clone());
    }
    if let Err(e) = write(app, store, &value).await {
        tracing::warn!(error = %e, "operator intent not written again");
    }
}

/// At start-up, before accepting: tries to read the state for
/// `shared_state.startup_wait`.
pub async fn startup(app: &Arc<App>) {
    let Some(cfg) = app.config.load().operations.shared_state.clone() else {
        return;
    };
    let deadline = tokio::time::Instant::now() + cfg.startup_wait.get();
    loop {
        match sync(app).await {
            Ok(n) => {
                tracing::info!(applied = n, "shared operator state read");
                return;
            }
            Err(e) if tokio::time::Instant::now() >= deadline => {
                tracing::warn!(error = %e, "shared operator state unreachable at start-up; starting without it");
                return;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// Polls the state every `shared_state.interval` (read live) until shutdown.
pub fn spawn(app: Arc<App>) {
    tokio::spawn(async move {
        loop {
            let interval = match &app.config.load().operations.shared_state {
                Some(s) => s.interval.get(),
                None => Duration::from_secs(2),
            };
            tokio::select! {
                _ = app.shutdown.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
            if enabled(&app) {
                if let Err(e) = sync(&app).await {
                    tracing::debug!(error = %e, "shared operator state not read");
                }
            }
        }
    });
}
