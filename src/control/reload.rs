//! Hot reload: on SIGHUP, `POST /api/reload`, or (with `reload.watch: true`) when
//! the file's content changes, read the config file again and apply it live.
//!
//! Everything that can fail happens before anything changes: the file is parsed
//! and validated, a changed `listen`, `tls.listen` or `admin.listen` is bound, and
//! every TLS certificate, key and CA file is read again and built into new rustls
//! configs. Only then is the new config swapped in. So an invalid file, a bad
//! certificate, or an address that cannot be bound, leaves the running config
//! untouched; the error is logged with the file and key and counted in
//! `warren_config_reloads_total{result="failure"}`.
//!
//! The TLS configs are swapped before the listeners: a handshake takes the config
//! current at its start, so open TLS connections keep theirs and new handshakes
//! use the re-read certificates. `listen` and `tls` may be added, moved or removed
//! (a removed listener stops accepting; its open connections go on).
//!
//! Backends are matched by name. An unchanged one keeps its `Arc<Backend>`: same
//! connections, same health verdict, same counters. A new one gets a health
//! checker. A removed one leaves the balancer at once, its checker stops, and its
//! connections are drained the AMQP way (paced, `drain.*`). One whose address or
//! management URL changed is removed and added. Settings read per connection or
//! per probe (balance, timeouts, retries, health, drain, shutdown, max_connections)
//! apply from the next use; health checkers wake up to pick up new intervals.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::balancer::unix_now;
use crate::balancer::{Backend, Policy};
use crate::config::{Config, ConfigError};
use crate::control::act::{act, Action};
use crate::control::app::App;
use crate::control::checks;
use crate::control::events::Kind;
use crate::telemetry::logging;

/// What asked for a reload (a metrics label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// SIGHUP.
    Signal,
    /// `POST /api/reload`.
    Api,
    /// The watched file changed.
    Watch,
}

impl Trigger {
    /// One of `metrics::RELOAD_TRIGGERS`.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Signal => "signal",
            Trigger::Api => "api",
            Trigger::Watch => "watch",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{file}: key `{key}`: {source}", key = .source.key())]
    Tls {
        file: PathBuf,
        #[source]
        source: crate::tls::TlsError,
    },
    #[error("{file}: key `{key}`: cannot listen on {addr}: {source}")]
    Bind {
        file: PathBuf,
        key: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// What a successful reload changed (the answer of `POST /api/reload`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    pub file: String,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Address or management URL changed: drained and replaced.
    pub changed: Vec<String>,
    pub unchanged: Vec<String>,
    /// The new AMQP address, when `listen` changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// The new TLS listener address, when `tls.listen` changed (or `tls` was added).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_listen: Option<SocketAddr>,
    /// Listeners removed from the file (`listen`, `tls.listen`): they stopped
    /// accepting; their open connections go on.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub closed_listeners: Vec<&'static str>,
    /// TLS certificates, keys and CA files were read again (the config has `tls`
    /// or a backend with `tls`).
    pub tls_reloaded: bool,
    /// The new admin address, when `admin.listen` changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_listen: Option<SocketAddr>,
    /// Changed keys that only take effect after a restart.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub needs_restart: Vec<&'static str>,
}

/// A valid config and what `warren check` warns about in it.
pub struct Checked {
    pub config: Config,
    /// Settings that contradict each other ([`Config::warnings`]), placed in the file.
    pub warnings: Vec<ConfigError>,
}

impl Summary {
    /// One line for the events feed: what changed.
    fn describe(&self) -> String {
        let mut parts = Vec::new();
        for (what, names) in [
            ("added", &self.added),
            ("removed", &self.removed),
            ("changed", &self.changed),
        ] {
            if !names.is_empty() {
                parts.push(format!("{what} {}", names.join(", ")));
            }
        }
        for (what, addr) in [
            ("listen", self.listen),
            ("tls.listen", self.tls_listen),
            ("admin.listen", self.admin_listen),
        ] {
            if let Some(a) = addr {
                parts.push(format!("{what} now {a}"));
            }
        }
        if !self.closed_listeners.is_empty() {
            parts.push(format!("closed {}", self.closed_listeners.join(", ")));
        }
        if self.tls_reloaded {
            parts.push("certificates read again".into());
        }
        if !self.needs_restart.is_empty() {
            parts.push(format!(
                "restart needed for {}",
                self.needs_restart.join(", ")
            ));
        }
        if parts.is_empty() {
            parts.push("no backend or listener changed".into());
        }
        format!("config reloaded: {}", parts.join("; "))
    }
}

/// Reads the config at `path`, validates it and checks the files it names:
/// what `warren check` and start-up run.
pub fn load(path: &Path) -> Result<Checked, ConfigError> {
    let text = read_config_file(path).map_err(|source| ConfigError::Read {
        file: path.to_path_buf(),
        source,
    })?;
    let config = Config::from_yaml(&text, path)?;
    check_files(&config, path).map_err(|e| e.located(&text))?;
    let warnings = warnings(&config, path, &text);
    Ok(Checked { config, warnings })
}

fn warnings(config: &Config, path: &Path, text: &str) -> Vec<ConfigError> {
    let warnings = config
        .warnings()
        .into_iter()
        .map(|(key, message)| ConfigError::invalid(path, key, message))
        .collect();
    ConfigError::all_located(warnings, text)
}

/// The checks that read the files a config names (the admin token, the
/// management password, TLS certificates, keys and CA files), once the config
/// itself is valid: run by `warren check`, at start-up and by every reload.
pub fn check_files(config: &Config, file: &Path) -> Result<(), ConfigError> {
    let invalid = |key: &str, message: String| ConfigError::invalid(file, key, message);
    if let Err(e) = config.admin.resolve_token() {
        let key = if config.admin.token_file.is_some() {
            "admin.token_file"
        } else {
            "admin.token_env"
        };
        return Err(invalid(key, e));
    }
    check_password(config).map_err(|(key, message)| invalid(key, message))?;
    crate::tls::check(config).map_err(|e| invalid(e.key(), e.to_string()))
}

/// The management password must be readable and non-empty wherever a
/// management check will use it (the probe reads it again each time, so a
/// rotated file is taken up), and wherever it is configured at all.
fn check_password(config: &Config) -> Result<(), (&'static str, String)> {
    let h = &config.health;
    let user = config
        .backends
        .iter()
        .position(|b| b.management.is_some())
        .filter(|_| !matches!(h.checks, crate::config::Checks::None));
    let configured = h.password.is_some() || h.password_file.is_some() || h.password_env.is_some();
    if user.is_none() && !configured {
        return Ok(());
    }
    let key = if h.password_file.is_some() {
        "health.password_file"
    } else if h.password_env.is_some() {
        "health.password_env"
    } else {
        "health.password"
    };
    let why = match h.resolve_password() {
        Ok(p) if p.0.is_empty() => "the password is empty".to_string(),
        Ok(_) => return Ok(()),
        Err(e) => e,
    };
    let message = match user {
        Some(i) => format!(
            "{why}; the management checks of backends[{i}] (`{}`) need it (for the TCP \
             connect check only, write `health.checks: none`)",
            config.backends[i].name
        ),
        None => why,
    };
    Err((key, message))
}

/// Fingerprint of the file as it is now; an unreadable file has one too, so the
/// watcher reports it once, not every interval.
fn fingerprint(read: &std::io::Result<String>) -> u64 {
    let mut h = DefaultHasher::new();
    match read {
        Ok(text) => text.hash(&mut h),
        Err(e) => format!("unreadable: {:?}", e.kind()).hash(&mut h),
    }
    h.finish()
}

/// The config file's text, bounded like [`Config::load`] reads it.
fn read_config_file(path: &Path) -> std::io::Result<String> {
    crate::config::read_limited_to_string(path, crate::config::MAX_CONFIG_FILE)
}

/// Reads the config file again and applies it. On failure nothing changes.
pub async fn reload(app: &Arc<App>, trigger: Trigger) -> Result<Summary, ReloadError> {
    let _one_at_a_time = app.reloader.lock.lock().await;
    let result = apply(app, trigger).await;
    let file = app.config_path.display().to_string();
    match &result {
        Ok(s) => {
            tracing::info!(
                file,
                trigger = trigger.as_str(),
                added = logging::list(&s.added),
                removed = logging::list(&s.removed),
                changed = logging::list(&s.changed),
                listen = s.listen.map(tracing::field::display),
                tls_listen = s.tls_listen.map(tracing::field::display),
                admin_listen = s.admin_listen.map(tracing::field::display),
                closed_listeners = logging::list(&s.closed_listeners),
                tls_reloaded = s.tls_reloaded,
                "config reloaded"
            );
            if !s.needs_restart.is_empty() {
                tracing::warn!(
                    keys = logging::list(&s.needs_restart),
                    "changed keys take effect after a restart"
                );
            }
            app.events
                .push(Kind::Reload, None, s.describe(), Some(trigger.as_str()));
            app.reloader.changed.notify_waiters();
        }
        Err(e) => {
            app.reloader.last_ok.store(false, Ordering::Relaxed);
            tracing::error!(file, trigger = trigger.as_str(), error = %e, "reload failed, the running config stays");
            app.events.push(
                Kind::Reload,
                None,
                format!("reload refused, the running config stays: {e}"),
                Some(trigger.as_str()),
            );
        }
    }
    if result.is_err() {
        crate::telemetry::metrics::reload(trigger.as_str(), false);
    }
    result
}

/// Reads, checks and commits the new config. A success is counted before the
/// new config becomes visible, so whoever sees it (a new backend in the API)
/// also sees the reload counted.
async fn apply(app: &Arc<App>, trigger: Trigger) -> Result<Summary, ReloadError> {
    let path = &app.config_path;
    let read = read_config_file(path);
    app.reloader.set_seen(fingerprint(&read));
    let text = read.map_err(|source| ConfigError::Read {
        file: path.clone(),
        source,
    })?;
    let new = Config::from_yaml(&text, path)?;
    check_files(&new, path).map_err(|e| e.located(&text))?;
    for w in warnings(&new, path, &text) {
        tracing::warn!("config warning: {w}");
    }
    let old = app.config.load_full();

    // The fallible part: bind changed addresses before anything changes.
    let bind = |key: &'static str, addr: SocketAddr| async move {
        crate::proxy::socket::bind(addr).map_err(|source| ReloadError::Bind {
            file: path.clone(),
            key,
            addr,
            source,
        })
    };
    let amqp = match (new.listen, new.listen != old.listen) {
        (Some(addr), true) => Some(bind("listen", addr).await?),
        _ => None,
    };
    let new_tls_listen = new.tls.as_ref().map(|t| t.listen);
    let tls_listen_changed = new_tls_listen != old.tls.as_ref().map(|t| t.listen);
    let tls = match (new_tls_listen, tls_listen_changed) {
        (Some(addr), true) => Some(bind("tls.listen", addr).await?),
        _ => None,
    };
    let admin = match new.admin.listen != old.admin.listen {
        true => Some(bind("admin.listen", new.admin.listen).await?),
        false => None,
    };
    // Re-reads every certificate: builds all new rustls configs, then swaps them
    // in together (or, on an error, none). The last step that can fail.
    app.tls.reload(&new).map_err(|source| ReloadError::Tls {
        file: path.clone(),
        source,
    })?;

    // From here on nothing fails.
    crate::telemetry::metrics::reload(trigger.as_str(), true);
    app.reloader.last_ok.store(true, Ordering::Relaxed);
    app.reloader
        .last_success
        .store(unix_now().to_bits(), Ordering::Relaxed);
    let mut summary = Summary {
        file: path.display().to_string(),
        tls_reloaded: new.tls.is_some() || new.backends.iter().any(|b| b.tls.is_some()),
        ..Summary::default()
    };
    if let Some(l) = amqp {
        summary.listen = l.local_addr().ok();
        app.proxy.amqp_listener.install(l);
    } else if new.listen.is_none() && old.listen.is_some() {
        app.proxy.amqp_listener.remove();
        summary.closed_listeners.push("listen");
    }
    if let Some(l) = tls {
        summary.tls_listen = l.local_addr().ok();
        app.proxy.tls_listener.install(l);
    } else if new_tls_listen.is_none() && tls_listen_changed {
        app.proxy.tls_listener.remove();
        summary.closed_listeners.push("tls.listen");
    }
    if let Some(l) = admin {
        summary.admin_listen = l.local_addr().ok();
        app.admin_listener.install(l);
    }
    if new.log.format != old.log.format {
        summary.needs_restart.push("log.format");
    }
    // The sockets of `listeners:` are bound at start-up; their TLS, PROXY and
    // advertised host are read per connection from the config in force.
    let bound = |c: &Config| -> Vec<_> {
        c.listeners
            .iter()
            .map(|l| (l.name.clone(), l.listen, l.protocol, l.node_ports.clone()))
            .collect()
    };
    if bound(&new) != bound(&old) {
        summary.needs_restart.push("listeners");
    }
    if new.log.level != old.log.level {
        crate::telemetry::logging::set_level(&new.log.level);
    }
    let new = Arc::new(new);
    app.config.store(Arc::clone(&new));
    swap_backends(app, &new, &mut summary);
    Ok(summary)
}

/// Replaces the backend set, keeping unchanged backends as they are.
fn swap_backends(app: &Arc<App>, cfg: &Config, summary: &mut Summary) {
    let old = app.balancer.backends();
    let mut next = Vec::with_capacity(cfg.backends.len());
    let mut added = Vec::new();
    for bc in &cfg.backends {
        match old.iter().find(|b| b.name() == bc.name) {
            Some(b) if b.config == *bc => {
                summary.unchanged.push(bc.name.clone());
                next.push(Arc::clone(b));
            }
            found => {
                if found.is_some() {
                    summary.changed.push(bc.name.clone());
                } else {
                    summary.added.push(bc.name.clone());
                }
                let b = Arc::new(Backend::new(bc.clone()));
                added.push(Arc::clone(&b));
                next.push(b);
            }
        }
    }
    let gone: Vec<Arc<Backend>> = old
        .iter()
        .filter(|b| !next.iter().any(|n| Arc::ptr_eq(n, b)))
        .cloned()
        .collect();
    for b in &gone {
        if !cfg.backends.iter().any(|c| c.name == b.name()) {
            summary.removed.push(b.name().to_string());
        }
    }
    let policy = Policy {
        balance: cfg.balance,
        slowstart: cfg.health.slowstart.get(),
    };
    // New connections see the new set from here on.
    app.balancer.replace(policy, next);
    for b in gone {
        act(app, &b, Action::Retire);
    }
    let any_added = !added.is_empty();
    for b in added {
        b.record_state();
        checks::spawn(Arc::clone(app), b);
    }
    if any_added {
        // Like a node that returns: existing clients can be moved onto it (if enabled).
        crate::control::rebalance::trigger(app, "backends added by a reload");
    }
}

/// Reloads on SIGHUP until shutdown.
pub fn watch_sighup(app: Arc<App>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGHUP; reload with POST /api/reload");
            return;
        }
    };
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = app.shutdown.cancelled() => return,
                r = hup.recv() => if r.is_none() { return },
            }
            tracing::info!("SIGHUP: reloading the config");
            let _ = reload(&app, Trigger::Signal).await;
        }
    });
}

/// Polls the config file while `reload.watch` is on (read live, so a reload may
/// turn it on or off) and reloads when its content changed. Polling, not inotify:
/// it follows the atomic renames of editors and the symlink swaps of Kubernetes
/// ConfigMaps without special cases.
pub fn spawn_watcher(app: Arc<App>) {
    tokio::spawn(async move {
        if app.reloader.seen().is_none() {
            let read = read_config_file(&app.config_path);
            app.reloader.set_seen(fingerprint(&read));
        }
        loop {
            let (watch, every) = {
                let c = app.config.load();
                (c.reload.watch, c.reload.watch_interval.get())
            };
            let every = if watch { every } else { Duration::from_secs(1) };
            tokio::select! {
                _ = app.shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            if !watch {
                continue;
            }
            let read = read_config_file(&app.config_path);
            if Some(fingerprint(&read)) != app.reloader.seen() {
                tracing::info!(file = %app.config_path.display(), "config file changed, reloading");
                let _ = reload(&app, Trigger::Watch).await;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_util::TempFile;
    use crate::config::{AdminConfig, MAX_SECRET_FILE};

    /// Parses and validates `s`, then checks the files it names.
    fn parse(s: &str) -> Result<Config, ConfigError> {
        let file = Path::new("test.yaml");
        let config = Config::from_yaml(s, file)?;
        check_files(&config, file)?;
        Ok(config)
    }

    #[test]
    fn tls_files_are_checked_and_named() {
        let e = parse(
            "listen: 127.0.0.1:5672\ntls:\n  listen: 127.0.0.1:5671\n  cert: /nonexistent/c.pem\n  key: /nonexistent/k.pem\nbackends:\n  - {name: a, address: 'h:5672'}\n",
        )
        .expect_err("missing certificate");
        let text = e.to_string();
        assert!(
            text.starts_with("test.yaml: key `tls.cert`: /nonexistent/c.pem"),
            "{text}"
        );
    }

    #[test]
    fn an_oversized_token_file_is_refused_by_name() {
        let f = TempFile::new("token", MAX_SECRET_FILE as usize + 1);
        let e = parse(&format!(
            "listen: 127.0.0.1:5672\nadmin: {{token_file: '{}'}}\nbackends:\n  - {{name: a, address: 'h:1'}}\n",
            f.0.display()
        ))
        .expect_err("a token file over the limit");
        let text = e.to_string();
        assert!(
            text.contains("key `admin.token_file`")
                && text.contains(&f.0.display().to_string())
                && text.contains("larger than"),
            "{text}"
        );
        assert!(!text.contains("xxxx"), "{text}");
        // At the limit it is still read.
        let f = TempFile::new("token-at-limit", MAX_SECRET_FILE as usize);
        let admin = AdminConfig {
            token_file: Some(f.0.clone()),
            ..AdminConfig::default()
        };
        assert!(admin.resolve_token().is_ok());
    }

    #[test]
    fn an_open_admin_listener_without_a_token_is_warned_about() {
        let config = |admin: &str| {
            parse(&format!(
                "listen: 127.0.0.1:5672\nadmin: {admin}\nbackends:\n  - {{name: a, address: 'h:1'}}\n"
            ))
            .expect("valid")
        };
        let token = TempFile::new("warn-token", 32);
        for quiet in [
            "{listen: '127.0.0.1:8404'}".to_string(),
            "{listen: '[::1]:8404'}".to_string(),
            format!(
                "{{listen: '0.0.0.0:8404', token_file: '{}'}}",
                token.0.display()
            ),
        ] {
            assert!(config(&quiet).warnings().is_empty(), "{quiet}");
        }
        for open in [
            "{listen: '0.0.0.0:8404'}",
            "{listen: '10.0.0.5:8404'}",
            "{listen: '[::]:8404'}",
        ] {
            let w = config(open).warnings();
            assert_eq!(w.len(), 1, "{open}");
            assert!(
                w[0].0 == "admin.listen"
                    && w[0].1.contains("no admin token")
                    && w[0].1.contains("admin.token_file"),
                "{w:?}"
            );
        }
    }

    #[test]
    fn an_unreadable_password_file_is_refused_by_key() {
        let e = parse(
            "listen: 127.0.0.1:5672\nhealth: {password_file: /nonexistent/warren/password}\nbackends:\n  - {name: a, address: 'h:1'}\n",
        )
        .expect_err("a missing password file");
        let text = e.to_string();
        assert!(
            text.starts_with(
                "test.yaml: key `health.password_file`: cannot read /nonexistent/warren/password"
            ),
            "{text}"
        );
        let f = TempFile::new("password-ok", 12);
        let ok = format!(
            "listen: 127.0.0.1:5672\nhealth: {{password_file: '{}'}}\nbackends:\n  - {{name: a, address: 'h:1'}}\n",
            f.0.display()
        );
        assert!(parse(&ok).is_ok());
    }
}
