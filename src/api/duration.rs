//! Durations as users write them in manifests: `30s`, `5m`, `1h30m`, `250ms`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::{fmt, time::Duration};

/// Regular expression the schema enforces at admission, so a bad duration is rejected naming the field.
pub const DURATION_PATTERN: &str = r"^([0-9]+(ms|s|m|h))+$";

/// A duration written as a sequence of `<number><unit>` with units `ms`, `s`, `m`, `h`: `90s`, `1h30m`.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Dur(Duration);

impl JsonSchema for Dur {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
            "description": "A duration such as 30s, 5m, 1h30m or 250ms.",
        })
    }
    fn inline_schema() -> bool {
        true
    }
}

impl Dur {
    pub const fn from_secs(s: u64) -> Self {
        Dur(Duration::from_secs(s))
    }
    pub const fn from_millis(ms: u64) -> Self {
        Dur(Duration::from_millis(ms))
    }
    pub fn get(&self) -> Duration {
        self.0
    }
    pub fn chrono(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.0).unwrap_or(chrono::Duration::MAX)
    }
}

/// Why a duration string was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("invalid duration {0:?}: expected e.g. 30s, 5m, 1h30m, 250ms")]
pub struct DurationError(pub String);

impl std::str::FromStr for Dur {
    type Err = DurationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || DurationError(s.to_string());
        if s.is_empty() {
            return Err(err());
        }
        let mut total = Duration::ZERO;
        let mut rest = s;
        while !rest.is_empty() {
            let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
            if digits == 0 {
                return Err(err());
            }
            let n: u64 = rest[..digits].parse().map_err(|_| err())?;
            rest = &rest[digits..];
            let (unit, len) = if rest.starts_with("ms") {
                (Duration::from_millis(1), 2)
            } else if rest.starts_with('s') {
                (Duration::from_secs(1), 1)
            } else if rest.starts_with('m') {
                (Duration::from_secs(60), 1)
            } else if rest.starts_with('h') {
                (Duration::from_secs(3600), 1)
            } else {
                return Err(err());
            };
            rest = &rest[len..];
            let part = unit.checked_mul(u32::try_from(n).map_err(|_| err())?).ok_or_else(err)?;
            total = total.checked_add(part).ok_or_else(err)?;
        }
        Ok(Dur(total))
    }
}

impl TryFrom<String> for Dur {
    type Error = DurationError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Dur> for String {
    fn from(d: Dur) -> String {
        d.to_string()
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms == 0 {
            return f.write_str("0s");
        }
        if !ms.is_multiple_of(1000) {
            return write!(f, "{ms}ms");
        }
        let mut s = (ms / 1000) as u64;
        let (h, m) = (s / 3600, (s % 3600) / 60);
        s %= 60;
        if h > 0 {
            write!(f, "{h}h")?;
        }
        if m > 0 {
            write!(f, "{m}m")?;
        }
        if s > 0 {
            write!(f, "{s}s")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_round_trip() {
        for (text, secs) in [("30s", 30), ("5m", 300), ("1h30m", 5400), ("2h", 7200), ("1m5s", 65)] {
            let d: Dur = text.parse().unwrap();
            assert_eq!(d.get(), Duration::from_secs(secs), "{text}");
            assert_eq!(d.to_string(), text);
        }
        assert_eq!("250ms".parse::<Dur>().unwrap().get(), Duration::from_millis(250));
    }

    #[test]
    fn rejects_what_the_schema_pattern_rejects() {
        for bad in ["", "5", "m", "5x", "1.5s", "-1s", "5 m", "s5"] {
            assert!(bad.parse::<Dur>().is_err(), "{bad:?} should be refused");
        }
    }
}
