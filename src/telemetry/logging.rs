//! Logs with `tracing`: text on a terminal, JSON when configured; `RUST_LOG`
//! overrides the configured level. A reload may change the level (not the format).
//!
//! Fields are logged with `Display` (`%`, [`list`], [`duration`]), never with
//! `Debug` (`?`): a JSON line holds the values an operator wrote or reads in the
//! API, not Rust's `None` or `[]`. A unit test reads the sources for `?` fields.
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

/// A list as a log field: its items joined with `,` (absent when empty), so a
/// JSON log never carries Rust's `Debug` text such as `"[]"`.
pub fn list<T: std::fmt::Display>(items: &[T]) -> Option<tracing::field::DisplayValue<String>> {
    if items.is_empty() {
        return None;
    }
    let joined = items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    Some(tracing::field::display(joined))
}

/// A duration as a log field, written the way the config writes them (`1s`,
/// `250ms`).
pub fn duration(
    d: std::time::Duration,
) -> tracing::field::DisplayValue<humantime::FormattedDuration> {
    tracing::field::display(humantime::format_duration(d))
}

/// Applies a new configured level (reload). False when `RUST_LOG` is in charge,
/// logging was not initialised here, or the filter does not parse.
pub fn set_level(level: &str) -> bool {
    let (Some(handle), Ok(filter)) = (LEVEL.get(), filter(level)) else {
        return false;
    };
    handle.reload(filter).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_display_values() {
        assert!(list::<String>(&[]).is_none(), "an empty list is no field");
        let l = list(&["a", "b"]).map(|v| format!("{v:?}"));
        assert_eq!(l.as_deref(), Some("a,b"));
        let d = format!("{:?}", duration(std::time::Duration::from_millis(1500)));
        assert_eq!(d, "1s 500ms");
    }

    /// No log field is recorded with `Debug` (`?x`, `x = ?y`): in a JSON line
    /// that writes `"[]"`, `"None"` or `"Some(..)"` where a user expects a value.
    #[test]
    fn no_log_field_is_recorded_with_debug() {
        let mut found = Vec::new();
        let mut dirs = vec![std::path::PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src"
        ))];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).expect("src is readable").flatten() {
                let path = entry.path();
                if path.is_dir() {
                    dirs.push(path);
                    continue;
                }
                if path.extension().is_none_or(|e| e != "rs") {
                    continue;
                }
                let text = std::fs::read_to_string(&path).expect("a source file");
                for (i, line) in text.lines().enumerate() {
                    if debug_field(line) {
                        found.push(format!("{}:{}: {}", path.display(), i + 1, line.trim()));
                    }
                }
            }
        }
        assert!(
            found.is_empty(),
            "fields logged with `?`:\n{}",
            found.join("\n")
        );
    }

    /// A `?` that starts a field: after `= `, `(`, `, ` or the indentation, and
    /// before a name (the `?` operator follows an expression instead).
    fn debug_field(line: &str) -> bool {
        let code = line.trim_start();
        // Comments, and this test's own examples.
        if code.starts_with("//") || code.contains("debug_field(\"") {
            return false;
        }
        let b = line.as_bytes();
        (0..b.len()).any(|i| {
            let starts_name = b
                .get(i + 1)
                .is_some_and(|c| c.is_ascii_alphabetic() || *c == b'&' || *c == b'_');
            let mut before = &b[..i];
            while let [rest @ .., b' '] = before {
                before = rest;
            }
            b[i] == b'?'
                && starts_name
                && (before.ends_with(b"=") && !before.ends_with(b"==")
                    || before.ends_with(b"(")
                    || before.ends_with(b",")
                    || before.is_empty())
        })
    }

    #[test]
    fn debug_fields_are_recognised() {
        assert!(debug_field("tracing::info!(x = ?y, \"m\");"));
        assert!(debug_field("tracing::info!(?y, \"m\");"));
        assert!(debug_field("    ?counts,"));
        assert!(!debug_field("let x = f()?;"));
        assert!(!debug_field("let x = a.get(0)?.parse().ok()?;"));
        assert!(!debug_field("format!(\"{x:?}\")"));
        assert!(!debug_field("// x = ?y"));
    }
}
