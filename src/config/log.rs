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

const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// What `tracing` accepts but an operator hardly means: a bare word that is no
/// level (`warrn`) is a target at the `trace` level, so the filter parses and
/// logs next to nothing. Every directive must be a level or `target=level`.
pub fn lint(directives: &str) -> Result<(), String> {
    for d in directives
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
    {
        if d.contains('=') || d.contains('[') {
            continue;
        }
        let lower = d.to_ascii_lowercase();
        if LEVELS.contains(&lower.as_str()) || matches!(d, "0" | "1" | "2" | "3" | "4" | "5") {
            continue;
        }
        let hint = super::error::hint(super::error::did_you_mean(d, LEVELS));
        return Err(format!(
            "`{d}` is not a level{hint} (expected trace, debug, info, warn, error or off, \
             or `target=level` such as `warren=debug`)"
        ));
    }
    Ok(())
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

    #[test]
    fn bare_words_must_be_levels() {
        for ok in [
            "info",
            "WARN",
            "warren=debug",
            "info, hyper=warn",
            "warren[conn]=trace",
        ] {
            assert_eq!(lint(ok), Ok(()), "{ok}");
        }
        let e = lint("warrn").expect_err("typo");
        assert!(e.contains("did you mean `warn`?"), "{e}");
        assert!(lint("info, warren").is_err());
    }
}
