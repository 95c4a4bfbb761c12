//! Logs with `tracing`: text on a terminal, JSON when configured; `RUST_LOG`
//! overrides the configured level. A reload may change the level (not the format).
//!
//! Secrets never reach a log line: the config holds them as `Secret` (redacted in
//! `Debug` and serialisation), credentials in management URLs are refused by the
//! config check, and the proxy never logs payload bytes (AMQP credentials travel
//! in `connection.start-ok`).

use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

use crate::config::log::filter;
use crate::config::{LogConfig, LogFormat};

/// Set when the level comes from the config (not from `RUST_LOG`), so a reload may change it.
static LEVEL: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Installs the global subscriber; a second call is a no-op.
pub fn init(cfg: &LogConfig) {
    let from_env = std::env::var(EnvFilter::DEFAULT_ENV)
        .ok()
        .and_then(|env| filter(&env).ok());
    let env_set = from_env.is_some();
    let filter = from_env
        .or_else(|| filter(&cfg.level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let registry = tracing_subscriber::registry().with(filter);
    let installed = match cfg.format {
        LogFormat::Json => registry
            .with(fmt.json().flatten_event(true).with_current_span(true))
            .try_init(),
        LogFormat::Text => registry.with(fmt).try_init(),
    };
    if installed.is_ok() && !env_set {
        let _ = LEVEL.set(handle);
    }
}

/// Applies a new configured level (reload). False when `RUST_LOG` is in charge,
/// logging was not initialised here, or the filter does not parse.
pub fn set_level(level: &str) -> bool {
    let (Some(handle), Ok(filter)) = (LEVEL.get(), filter(level)) else {
        return false;
    };
    handle.reload(filter).is_ok()
}
