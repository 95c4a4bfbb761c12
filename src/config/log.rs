//! The `log.level` filter, parsed the way the logger will use it.

use tracing_subscriber::filter::ParseError;
use tracing_subscriber::EnvFilter;

/// Parses a `tracing` filter such as `info` or `warren=debug, hyper=info`.
///
/// Each comma-separated directive is trimmed first: tracing-subscriber 0.3
/// slices a directive at the offsets of its trimmed form, so a space after a
/// comma shifts them (`info, hyper=debug` is refused) and, before a non-ASCII
/// character, panics (`info, é=debug`; found by the `config` fuzz target).
pub fn filter(directives: &str) -> Result<EnvFilter, ParseError> {
    let trimmed: Vec<&str> = directives
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect();
    EnvFilter::try_new(trimmed.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spaces_around_directives_neither_panic_nor_shift() {
        let f = filter("info, é=debug").expect("valid filter");
        assert!(f.to_string().contains("é=debug"), "{f}");
        let f = filter(" info , hyper=debug ").expect("valid filter");
        assert!(f.to_string().contains("hyper=debug"), "{f}");
        assert!(filter("warren=loud").is_err());
    }
}
