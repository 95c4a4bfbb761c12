//! Config errors as an operator reads them: `FILE:LINE:COLUMN: key `PATH`:
//! what was expected`, with "did you mean" for a misspelled key or value.

use std::borrow::Cow;
use std::fmt;
use std::path::{Path, PathBuf};

use serde_saphyr::{Error as YamlError, MessageFormatter, UserMessageFormatter};

use super::locate::{Locator, Spot};

/// Errors found while loading a config file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}{}: {message}", file.display(), At(*at))]
    Parse {
        file: PathBuf,
        at: Option<Spot>,
        message: String,
    },
    #[error("{}{}: key `{key}`: {message}", file.display(), At(*at))]
    Invalid {
        file: PathBuf,
        at: Option<Spot>,
        key: String,
        message: String,
    },
}

impl ConfigError {
    /// A value refused at `key`; [`ConfigError::located`] adds its position.
    pub fn invalid(file: &Path, key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            file: file.to_path_buf(),
            at: None,
            key: key.into(),
            message: message.into(),
        }
    }

    /// The error with the position of its key in `text` (the file's text),
    /// when it has none yet.
    pub fn located(self, text: &str) -> Self {
        match self.unplaced() {
            true => self.placed(Locator::new(text).as_ref()),
            false => self,
        }
    }

    /// [`ConfigError::located`] for several errors of one file: its text is
    /// read once.
    pub fn all_located(errors: Vec<ConfigError>, text: &str) -> Vec<ConfigError> {
        if !errors.iter().any(ConfigError::unplaced) {
            return errors;
        }
        let locator = Locator::new(text);
        errors
            .into_iter()
            .map(|e| e.placed(locator.as_ref()))
            .collect()
    }

    fn unplaced(&self) -> bool {
        matches!(self, ConfigError::Invalid { at: None, .. })
    }

    fn placed(self, locator: Option<&Locator>) -> Self {
        match self {
            ConfigError::Invalid {
                file,
                at: None,
                key,
                message,
            } => ConfigError::Invalid {
                at: locator.and_then(|l| l.find(&key)),
                file,
                key,
                message,
            },
            other => other,
        }
    }

    /// The key path the error is about, if it is about one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }
}

/// `:LINE:COLUMN`, or nothing when the position is not known.
struct At(Option<Spot>);

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(s) => write!(f, ":{}:{}", s.line, s.column),
            None => Ok(()),
        }
    }
}

/// What a parse error says to an operator (the position is reported apart).
pub(crate) fn wording(e: &YamlError) -> String {
    let e = innermost(e);
    match e {
        YamlError::Budget { .. }
        | YamlError::AliasReplayLimitExceeded { .. }
        | YamlError::AliasExpansionLimitExceeded { .. }
        | YamlError::AliasReplayStackDepthExceeded { .. } => {
            "the YAML is too large or too complex for a config file".to_string()
        }
        YamlError::InvalidScalar { ty, .. } => expected_scalar(ty).to_string(),
        YamlError::DuplicateMappingKey { key: Some(k), .. } => {
            format!(
                "`{k}` is set twice in the same mapping (YAML keeps only one; remove the other)"
            )
        }
        YamlError::DuplicateMappingKey { key: None, .. } => {
            "a key is set twice in the same mapping (YAML keeps only one; remove the other)"
                .to_string()
        }
        YamlError::Unexpected { expected, .. } => match *expected {
            "mapping start" => "expected a mapping (indented `key: value` lines or `{...}`)".into(),
            "sequence start" => "expected a list (`- item` lines or `[...]`)".into(),
            other => format!("expected {other}"),
        },
        YamlError::SerdeUnknownField {
            field, expected, ..
        } => unknown("key", field, expected),
        YamlError::SerdeUnknownVariant {
            variant, expected, ..
        } => unknown("value", variant, expected),
        YamlError::SerdeMissingField { field, .. } => format!("`{field}` is required here"),
        YamlError::SerdeInvalidType {
            unexpected,
            expected,
            ..
        } => format!("expected {expected}, got {unexpected}"),
        other => sanitize(UserMessageFormatter.format_message(other)),
    }
}

/// The error under alias and snippet wrappers.
pub(crate) fn innermost(mut e: &YamlError) -> &YamlError {
    while let YamlError::AliasError { error, .. } | YamlError::WithSnippet { error, .. } = e {
        e = error;
    }
    e
}

fn expected_scalar(ty: &str) -> &'static str {
    match ty {
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "expected a whole number, 0 or more",
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "expected a whole number",
        "f32" | "f64" => "expected a number",
        "bool" => "expected `true` or `false`",
        "char" => "expected a single character",
        _ => "expected a different kind of value here",
    }
}

/// "unknown key `managment`; did you mean `management`? (expected one of ...)"
fn unknown(what: &str, got: &str, expected: &[&str]) -> String {
    let list = expected
        .iter()
        .map(|e| format!("`{e}`"))
        .collect::<Vec<_>>()
        .join(", ");
    if expected.is_empty() {
        return format!("unknown {what} `{got}`");
    }
    let hint = hint(did_you_mean(got, expected.iter().copied()));
    format!("unknown {what} `{got}`{hint} (expected one of {list})")
}

/// `; did you mean `x`?` for a suggestion, nothing without one.
pub(crate) fn hint(suggestion: Option<&str>) -> String {
    suggestion
        .map(|s| format!("; did you mean `{s}`?"))
        .unwrap_or_default()
}

/// The closest of `candidates` to `got`, when it is close enough to be a typo.
pub fn did_you_mean<'a>(
    got: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let got_lower = got.to_ascii_lowercase();
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(&got_lower, &c.to_ascii_lowercase()), c))
        .filter(|(score, _)| *score >= 0.85)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// Control characters escaped: messages reach terminals and logs.
fn sanitize(s: Cow<'_, str>) -> String {
    s.chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_debug().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_get_a_suggestion_and_unrelated_words_none() {
        let keys = ["interval", "timeout", "rise", "fall", "password_file"];
        assert_eq!(did_you_mean("intervall", keys), Some("interval"));
        assert_eq!(did_you_mean("pasword_file", keys), Some("password_file"));
        assert_eq!(did_you_mean("Timeout", keys), Some("timeout"));
        assert_eq!(did_you_mean("colour", keys), None);
    }

    #[test]
    fn positions_print_after_the_file() {
        let e = ConfigError::Invalid {
            file: PathBuf::from("w.yaml"),
            at: Some(Spot { line: 3, column: 5 }),
            key: "health.timeout".into(),
            message: "too long".into(),
        };
        assert_eq!(e.to_string(), "w.yaml:3:5: key `health.timeout`: too long");
        let e = ConfigError::invalid(Path::new("w.yaml"), "backends", "none");
        assert_eq!(e.to_string(), "w.yaml: key `backends`: none");
    }
}
