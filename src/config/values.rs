//! Value types of the config (durations, counts, addresses, secrets) and the
//! bounded reading of the files it names.

use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration written the human way in YAML (`2s`, `500ms`, `1m`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub const fn secs(s: u64) -> Self {
        HumanDuration(Duration::from_secs(s))
    }
    pub const fn millis(ms: u64) -> Self {
        HumanDuration(Duration::from_millis(ms))
    }
    pub fn get(self) -> Duration {
        self.0
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(s.trim())
            .map(HumanDuration)
            .map_err(|_| {
                serde::de::Error::custom(format!(
                    "expected a duration such as `2s` or `500ms`, got `{s}`"
                ))
            })
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

/// A [`HumanDuration`] greater than zero (an interval or a timeout that zero
/// would make spin or fail at once).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct PositiveDuration(HumanDuration);

impl PositiveDuration {
    /// `s` seconds; 0 is taken as 1 ms (only constants call this).
    pub const fn secs(s: u64) -> Self {
        PositiveDuration::millis(s.saturating_mul(1000))
    }
    /// `ms` milliseconds; 0 is taken as 1.
    pub const fn millis(ms: u64) -> Self {
        PositiveDuration(HumanDuration::millis(if ms == 0 { 1 } else { ms }))
    }
    pub fn get(self) -> Duration {
        self.0.get()
    }
}

impl<'de> Deserialize<'de> for PositiveDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let h = HumanDuration::deserialize(d)?;
        if h.get().is_zero() {
            return Err(serde::de::Error::custom(
                "expected a duration greater than 0",
            ));
        }
        Ok(PositiveDuration(h))
    }
}

impl fmt::Display for PositiveDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A count greater than zero, with an error that says so.
pub(crate) fn non_zero<'de, D: Deserializer<'de>>(d: D) -> Result<NonZeroU32, D::Error> {
    let n = u32::deserialize(d)?;
    NonZeroU32::new(n).ok_or_else(|| serde::de::Error::custom("expected a number greater than 0"))
}

/// `ip:port`, with an error that says so.
pub(crate) fn socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let s = String::deserialize(d)?;
    s.trim().parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "expected an `ip:port` address such as 127.0.0.1:5672, got `{s}`"
        ))
    })
}

/// An optional `ip:port` (absent key: `None`).
pub(crate) fn opt_socket_addr<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<SocketAddr>, D::Error> {
    socket_addr(d).map(Some)
}

/// Config files larger than this are refused before they are parsed.
pub const MAX_CONFIG_FILE: u64 = 1024 * 1024;

/// Files that hold one secret (`admin.token_file`, `health.password_file`,
/// `cluster.erlang_cookie_file`) are read up to this size; a larger one is refused.
pub const MAX_SECRET_FILE: u64 = 64 * 1024;

/// Reads `path` whole if it holds at most `limit` bytes. A larger file, or an
/// endless one such as `/dev/zero`, is an error that says so (reading stops
/// after `limit + 1` bytes); no error quotes the content.
pub fn read_limited(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut data = Vec::new();
    std::fs::File::open(path)?
        .take(limit.saturating_add(1))
        .read_to_end(&mut data)?;
    if data.len() as u64 > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::FileTooLarge,
            format!("the file is larger than {limit} bytes"),
        ));
    }
    Ok(data)
}

/// [`read_limited`] for text files.
pub fn read_limited_to_string(path: &Path, limit: u64) -> std::io::Result<String> {
    String::from_utf8(read_limited(path, limit)?).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the file is not UTF-8 text",
        )
    })
}

/// A string that never shows in logs, `Debug` output or `warren check`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}
