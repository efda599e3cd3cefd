//! Durations as users write them in manifests: `30s`, `5m`, `1h30m`, `250ms`.
//!
//! Two layers, one grammar (`<number><unit>` repeated, units `ms`, `s`, `m`, `h`):
//!
//! - admission ([`DURATION_PATTERN`], [`DURATION_MAX_LENGTH`] and a CEL rule on the schema) admits
//!   at most 6 digits per number, 20 characters, and at most [`Dur::LIMIT`] (8760h);
//! - the parser accepts the grammar with numbers of any length and never fails on it: it
//!   saturates at [`Dur::MAX`]. The API server may hold objects admitted before the admission
//!   bounds existed (e.g. `99999999999s`); refusing one of them would fail the operator's list of
//!   every release. What is above [`Dur::LIMIT`] is then named by `engine::validate`.
//!
//! The bounds are chosen so that every string the schema admits is also a valid Go duration
//! (int64 nanoseconds, at most 2562047h): the API server's CEL `duration()` never fails on it.

use kube::core::Rule;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::{fmt, time::Duration};

/// Regular expression the schema enforces at admission, so a bad duration is rejected naming the
/// field. The parser accepts the same grammar; the `{1,6}` bound is an admission limit (see the
/// module docs).
pub const DURATION_PATTERN: &str = r"^([0-9]{1,6}(ms|s|m|h))+$";

/// The schema's `maxLength` for a duration. With at most 6 digits per number, 20 characters keep
/// every admitted string below Go's largest duration (a unit test checks it).
pub const DURATION_MAX_LENGTH: usize = 20;

const MS_PER_HOUR: u64 = 3_600_000;

/// A duration written as a sequence of `<number><unit>` with units `ms`, `s`, `m`, `h`: `90s`, `1h30m`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Dur(Duration);

/// The CEL rule on every duration: at most [`Dur::LIMIT`]. A string that does not match the
/// pattern is left to the pattern's own error (`duration()` would fail on it with a confusing one).
fn limit_rule() -> Rule {
    Rule::new(format!("!self.matches('{DURATION_PATTERN}') || duration(self) <= duration('{}')", Dur::LIMIT))
        .message(format!("must be at most {} (one year)", Dur::LIMIT).as_str())
}

/// A CEL rule for the struct owning the duration field `field` (its JSON name): at least `min`.
/// The error names the field. An absent field, or one that does not match the pattern (reported
/// by the pattern), passes.
pub fn at_least(field: &str, min: Dur) -> Rule {
    Rule::new(format!("!has(self.{field}) || !self.{field}.matches('{DURATION_PATTERN}') || duration(self.{field}) >= duration('{min}')"))
        .message(format!("must be at least {min}").as_str())
        .field_path(format!(".{field}"))
}

impl JsonSchema for Dur {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
            "maxLength": DURATION_MAX_LENGTH,
            "description": "A duration such as 30s, 5m, 1h30m or 250ms.",
            "x-kubernetes-validations": [limit_rule()],
        })
    }
    fn inline_schema() -> bool {
        true
    }
}

impl Dur {
    /// The longest duration a manifest may ask for: 8760h (one year). Admission refuses more (a
    /// CEL rule on the schema), and so does `engine::validate` for objects admitted earlier.
    pub const LIMIT: Dur = Dur::from_secs(8760 * 3600);
    /// Where parsing saturates: 87600h (ten years). Far below what `chrono` can add to a date,
    /// so no duration of a spec can overflow the engine's time arithmetic.
    pub const MAX: Dur = Dur::from_millis(87_600 * MS_PER_HOUR);

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
    /// Accepts `([0-9]+(ms|s|m|h))+` and nothing else. Never fails on a string of that grammar:
    /// each number saturates at `u64::MAX`, the total at [`Dur::MAX`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || DurationError(s.to_string());
        let b = s.as_bytes();
        if b.is_empty() {
            return Err(err());
        }
        let (mut i, mut total_ms) = (0, 0u64);
        while i < b.len() {
            let start = i;
            let mut n = 0u64;
            while let Some(d) = b.get(i).filter(|c| c.is_ascii_digit()) {
                n = n.saturating_mul(10).saturating_add(u64::from(d - b'0'));
                i += 1;
            }
            if i == start {
                return Err(err());
            }
            let (unit_ms, len) = match &b[i..] {
                [b'm', b's', ..] => (1, 2),
                [b's', ..] => (1000, 1),
                [b'm', ..] => (60_000, 1),
                [b'h', ..] => (MS_PER_HOUR, 1),
                _ => return Err(err()),
            };
            i += len;
            total_ms = total_ms.saturating_add(n.saturating_mul(unit_ms));
        }
        Ok(Dur(Duration::from_millis(total_ms)).min(Dur::MAX))
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

/// `1h30m`, `90s`, `250ms`, `1500ms`, `1h0m0s1ms` is `1h1ms`. Any `Dur` up to [`Dur::LIMIT`] prints as a
/// string the schema admits (at most `8760h59m59s999ms`, 16 characters).
impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms == 0 {
            return f.write_str("0s");
        }
        if ms < 60_000 && !ms.is_multiple_of(1000) {
            return write!(f, "{ms}ms");
        }
        let (h, m, s, ms) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
        for (n, unit) in [(h, "h"), (m, "m"), (s, "s"), (ms, "ms")] {
            if n > 0 {
                write!(f, "{n}{unit}")?;
            }
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
    use regex::Regex;

    #[test]
    fn parses_and_prints_round_trip() {
        for (text, ms) in [
            ("30s", 30_000),
            ("5m", 300_000),
            ("1h30m", 5_400_000),
            ("2h", 7_200_000),
            ("1m5s", 65_000),
            ("250ms", 250),
            ("1500ms", 1_500),
            ("1h1ms", 3_600_001),
            ("8760h", 8760 * MS_PER_HOUR),
        ] {
            let d: Dur = text.parse().unwrap();
            assert_eq!(d.get(), Duration::from_millis(ms), "{text}");
            assert_eq!(d.to_string(), text);
        }
        // Other spellings of the same durations.
        for (text, shown) in [("90s", "1m30s"), ("0h", "0s"), ("1m60s", "2m"), ("000001s", "1s"), ("1ms1m", "1m1ms"), ("61000ms", "1m1s")] {
            assert_eq!(text.parse::<Dur>().unwrap().to_string(), shown, "{text}");
        }
    }

    #[test]
    fn rejects_what_the_schema_pattern_rejects() {
        for bad in ["", "5", "m", "5x", "1.5s", "-1s", "5 m", "s5", "1hm", "1d", "5ms5", " 5s", "5s ", "1µs", "１s"] {
            assert!(bad.parse::<Dur>().is_err(), "{bad:?} should be refused");
        }
    }

    /// What the API server admits (pattern and maxLength; the CEL limit aside) the parser parses,
    /// exactly; and the parser accepts exactly the grammar without the admission bounds: the
    /// looser pattern earlier versions admitted, so no stored object fails to parse.
    #[test]
    fn the_schema_pattern_and_the_parser_agree() {
        let admitted = Regex::new(DURATION_PATTERN).unwrap();
        let grammar = Regex::new(r"^([0-9]+(ms|s|m|h))+$").unwrap();
        let check = |s: &str| {
            let parsed = s.parse::<Dur>();
            assert_eq!(parsed.is_ok(), grammar.is_match(s), "{s:?}: parser and grammar disagree");
            if admitted.is_match(s) && s.len() <= DURATION_MAX_LENGTH {
                assert!(parsed.is_ok(), "{s:?} is admitted but does not parse");
            }
        };
        // Every string of up to 5 characters over an alphabet that covers the grammar and its
        // near misses.
        let alphabet = ['0', '7', '9', 'm', 's', 'h', 'x', '.', '-', ' '];
        let mut all: Vec<String> = vec![String::new()];
        let mut layer = vec![String::new()];
        for _ in 0..5 {
            layer = layer.iter().flat_map(|s| alphabet.iter().map(move |c| format!("{s}{c}"))).collect();
            all.extend(layer.iter().cloned());
        }
        assert_eq!(all.len(), 1 + 10 + 100 + 1000 + 10_000 + 100_000);
        for s in &all {
            check(s);
        }
        // Long numbers, long strings, the admission bounds.
        for s in [
            "999999h",
            "9999999h",
            "999999h999999h99999m",
            "999999h999999h999999h",
            "2300000000h",
            "99999999999s",
            "184467440737095516160ms",
            "99999999999999999999999999999999999999h",
            "1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h",
            "9000h",
            "8760h",
            "8760h1ms",
        ] {
            check(s);
        }
        assert!(!admitted.is_match("2300000000h") && !admitted.is_match("99999999999s") && !admitted.is_match("1234567s"));
        assert!(admitted.is_match("123456s") && admitted.is_match("9000h"));
    }

    #[test]
    fn saturates_instead_of_failing() {
        for s in ["2300000000h", "99999999999s", "184467440737095516160ms", "99999999999999999999999999999999999999h", "876000h"] {
            assert_eq!(s.parse::<Dur>().unwrap(), Dur::MAX, "{s}");
        }
        assert_eq!(Dur::MAX.to_string(), "87600h");
        assert_eq!("87599h".parse::<Dur>().unwrap().to_string(), "87599h");
        // The engine adds durations to dates: the largest one must fit.
        let now = chrono::Utc::now();
        assert!(now.checked_add_signed(Dur::MAX.chrono()).is_some());
        assert!(Dur::LIMIT < Dur::MAX);
    }

    /// The API server's CEL `duration()` is Go's `time.ParseDuration`, int64 nanoseconds: every
    /// string the pattern and maxLength admit must fit, or the limit rule fails with an
    /// evaluation error instead of its message. `best[n]`: the longest duration in `n` characters.
    #[test]
    fn every_admitted_string_is_a_valid_go_duration() {
        let units: [(u128, usize); 4] = [(1_000_000, 2), (1_000_000_000, 1), (60_000_000_000, 1), (3_600_000_000_000, 1)];
        let mut best = vec![Some(0u128)];
        for n in 1..=DURATION_MAX_LENGTH + 1 {
            let mut b = None;
            for digits in 1..=6usize {
                for &(ns, len) in &units {
                    if let Some(Some(rest)) = n.checked_sub(digits + len).map(|r| best[r]) {
                        let v = (10u128.pow(digits as u32) - 1) * ns + rest;
                        b = b.max(Some(v));
                    }
                }
            }
            best.push(b);
        }
        let longest = best[..=DURATION_MAX_LENGTH].iter().flatten().max().copied().unwrap();
        assert!(longest <= i64::MAX as u128, "{longest} ns overflows a Go duration");
        // One more character would not fit: the bound is the tight one.
        assert!(best[DURATION_MAX_LENGTH + 1].unwrap() > i64::MAX as u128);
    }

    #[test]
    fn what_every_limit_prints_is_admitted() {
        let admitted = Regex::new(DURATION_PATTERN).unwrap();
        for d in [Dur::LIMIT, Dur::from_millis(Dur::LIMIT.get().as_millis() as u64 - 1), Dur::from_millis(1), Dur::from_secs(0)] {
            let s = d.to_string();
            assert!(admitted.is_match(&s) && s.len() <= DURATION_MAX_LENGTH, "{s}");
            assert_eq!(s.parse::<Dur>().unwrap(), d);
        }
    }

    #[test]
    fn the_schema_carries_the_bounds() {
        let schema = serde_json::to_value(schemars::SchemaGenerator::default().into_root_schema_for::<Dur>()).unwrap();
        assert_eq!(schema["pattern"], DURATION_PATTERN);
        assert_eq!(schema["maxLength"], DURATION_MAX_LENGTH);
        let rule = schema["x-kubernetes-validations"][0]["rule"].as_str().unwrap();
        assert_eq!(rule, "!self.matches('^([0-9]{1,6}(ms|s|m|h))+$') || duration(self) <= duration('8760h')");
        assert_eq!(schema["x-kubernetes-validations"][0]["message"], "must be at most 8760h (one year)");
        let r = at_least("interval", Dur::from_secs(1));
        assert_eq!(
            r.rule,
            "!has(self.interval) || !self.interval.matches('^([0-9]{1,6}(ms|s|m|h))+$') || duration(self.interval) >= duration('1s')"
        );
        assert_eq!(r.field_path.as_deref(), Some(".interval"));
    }
}
