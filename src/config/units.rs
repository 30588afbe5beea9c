//! Values written the way people write them: durations (`5s`, `250ms`, `1h30m`) and sizes (`8KiB`, `1MB`).
//!
//! These are user-facing config types: they parse from strings with messages that say what was expected,
//! and describe themselves in the JSON Schema.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

// === impl DurationValue ===

/// A duration such as `250ms`, `5s`, `2m`, `1h30m` or `1d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DurationValue(pub Duration);

impl DurationValue {
    pub const fn secs(s: u64) -> Self {
        DurationValue(Duration::from_secs(s))
    }
    pub const fn millis(ms: u64) -> Self {
        DurationValue(Duration::from_millis(ms))
    }
    pub fn get(self) -> Duration {
        self.0
    }
}

impl FromStr for DurationValue {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim();
        if text.is_empty() {
            return Err("empty duration: write a number followed by a unit, e.g. 250ms, 5s, 2m".into());
        }
        // A bare number is ambiguous (seconds? milliseconds?): users of other gateways disagree, so ask.
        if text.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            return Err(format!("invalid duration \"{text}\": add a unit, e.g. {text}s or {text}ms"));
        }
        humantime::parse_duration(text).map(DurationValue).map_err(|_| {
            format!(
                "invalid duration \"{text}\": expected a number followed by ms, s, m, h or d, e.g. 250ms, 5s, 1h30m"
            )
        })
    }
}

impl fmt::Display for DurationValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d.subsec_nanos() == 0 {
            let s = d.as_secs();
            if s != 0 && s % 3600 == 0 {
                return write!(f, "{}h", s / 3600);
            }
            if s != 0 && s % 60 == 0 {
                return write!(f, "{}m", s / 60);
            }
            return write!(f, "{s}s");
        }
        if d.subsec_nanos() % 1_000_000 == 0 {
            return write!(f, "{}ms", d.as_millis());
        }
        write!(f, "{}us", d.as_micros())
    }
}

impl<'de> Deserialize<'de> for DurationValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(FromStrVisitor::<DurationValue>::new("a duration such as 5s or 250ms"))
    }
}

impl Serialize for DurationValue {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl JsonSchema for DurationValue {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "A duration: a number followed by a unit (ms, s, m, h, d), e.g. `250ms`, `5s`, `1h30m`.",
            "pattern": "^\\s*([0-9]+(\\.[0-9]+)?\\s*(ns|us|ms|s|sec|m|min|h|hr|d|days?)\\s*)+$"
        })
    }
}

// === impl ByteSize ===

/// A size in bytes such as `512`, `8KiB`, `1MiB`, `10KB` (KB = 1000, KiB = 1024).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub const fn kib(n: u64) -> Self {
        ByteSize(n * 1024)
    }
    pub const fn mib(n: u64) -> Self {
        ByteSize(n * 1024 * 1024)
    }
    pub fn get(self) -> u64 {
        self.0
    }
    /// The size as `usize`, saturating (for in-memory buffer limits).
    pub fn as_usize(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim();
        let digits_end = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
        let (number, unit) = text.split_at(digits_end);
        let bad = || {
            format!(
                "invalid size \"{text}\": expected a whole number with an optional unit B, KB, KiB, MB, MiB, GB or GiB, e.g. 8KiB"
            )
        };
        if number.is_empty() {
            return Err(bad());
        }
        let n: u64 = number.parse().map_err(|_| bad())?;
        let factor: u64 = match unit.trim() {
            "" | "B" | "b" => 1,
            "KB" | "kB" | "kb" => 1000,
            "KiB" | "K" | "k" => 1024,
            "MB" | "mb" => 1000 * 1000,
            "MiB" | "M" | "m" => 1024 * 1024,
            "GB" | "gb" => 1000 * 1000 * 1000,
            "GiB" | "G" | "g" => 1024 * 1024 * 1024,
            _ => return Err(bad()),
        };
        n.checked_mul(factor).map(ByteSize).ok_or_else(|| format!("size \"{text}\" is too large"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        const MIB: u64 = 1024 * 1024;
        if n != 0 && n % MIB == 0 {
            write!(f, "{}MiB", n / MIB)
        } else if n != 0 && n % 1024 == 0 {
            write!(f, "{}KiB", n / 1024)
        } else {
            write!(f, "{n}B")
        }
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(FromStrVisitor::<ByteSize>::new("a size such as 8KiB or 1MiB"))
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl JsonSchema for ByteSize {
    fn schema_name() -> Cow<'static, str> {
        "ByteSize".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A size in bytes, optionally with a unit: B, KB (1000), KiB (1024), MB, MiB, GB, GiB. E.g. `8KiB`.",
            "anyOf": [
                { "type": "string", "pattern": "^\\s*[0-9]+\\s*(B|b|KB|kB|kb|KiB|K|k|MB|mb|MiB|M|m|GB|gb|GiB|G|g)?\\s*$" },
                { "type": "integer", "minimum": 0 }
            ]
        })
    }
}

// === impl RateValue ===

/// A rate such as `100/s`, `5/min`, `1000/day` or `20/10s`: a count of requests per period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RateValue {
    pub count: u64,
    pub period: Duration,
}

impl FromStr for RateValue {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim();
        let bad = || {
            format!(
                "invalid rate \"{text}\": expected COUNT/PERIOD, e.g. 100/s, 5/min, 1000/day or 20/10s (units s, min, h, day)"
            )
        };
        let (count, period) = text.split_once('/').ok_or_else(bad)?;
        let count: u64 = count.trim().parse().map_err(|_| bad())?;
        if count == 0 {
            return Err(format!("rate \"{text}\" admits nothing: a limit needs a count of at least 1"));
        }
        let period = period.trim();
        let period = match period {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            "d" | "day" => Duration::from_secs(86_400),
            other => other.parse::<DurationValue>().map_err(|_| bad())?.get(),
        };
        if period < Duration::from_millis(1) {
            return Err(format!("rate \"{text}\": the period must be at least 1ms"));
        }
        if period > Duration::from_secs(366 * 86_400) {
            return Err(format!("rate \"{text}\": the period can be at most a year"));
        }
        Ok(RateValue { count, period })
    }
}

impl fmt::Display for RateValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.period.as_secs() {
            1 if self.period.subsec_nanos() == 0 => write!(f, "{}/s", self.count),
            60 if self.period.subsec_nanos() == 0 => write!(f, "{}/min", self.count),
            3600 if self.period.subsec_nanos() == 0 => write!(f, "{}/h", self.count),
            86_400 if self.period.subsec_nanos() == 0 => write!(f, "{}/day", self.count),
            _ => write!(f, "{}/{}", self.count, DurationValue(self.period)),
        }
    }
}

impl<'de> Deserialize<'de> for RateValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(FromStrVisitor::<RateValue>::new("a rate such as 100/s or 1000/day"))
    }
}

impl Serialize for RateValue {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl JsonSchema for RateValue {
    fn schema_name() -> Cow<'static, str> {
        "Rate".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "A rate: COUNT/PERIOD, where PERIOD is s, min, h, day or a duration. E.g. `100/s`, `1000/day`, `20/10s`.",
            "pattern": "^\\s*[0-9]+\\s*/\\s*\\S+\\s*$"
        })
    }
}

/// Parses any scalar through `FromStr`; integers are accepted as their decimal text so `max: 512`
/// works for sizes, while durations still insist on a unit.
struct FromStrVisitor<T> {
    expecting: &'static str,
    _marker: std::marker::PhantomData<T>,
}

impl<T> FromStrVisitor<T> {
    fn new(expecting: &'static str) -> Self {
        FromStrVisitor { expecting, _marker: std::marker::PhantomData }
    }
}

impl<T: FromStr<Err = String>> Visitor<'_> for FromStrVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        v.parse().map_err(E::custom)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        v.to_string().parse().map_err(E::custom)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        v.to_string().parse().map_err(E::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_as_people_write_them() {
        assert_eq!("5s".parse::<DurationValue>().unwrap().get(), Duration::from_secs(5));
        assert_eq!("250ms".parse::<DurationValue>().unwrap().get(), Duration::from_millis(250));
        assert_eq!("1h30m".parse::<DurationValue>().unwrap().get(), Duration::from_secs(5400));
        assert_eq!("2m".parse::<DurationValue>().unwrap().get(), Duration::from_secs(120));
        assert_eq!("1d".parse::<DurationValue>().unwrap().get(), Duration::from_secs(86400));
    }

    #[test]
    fn durations_without_unit_or_garbage_are_rejected_with_a_hint() {
        let err = "30".parse::<DurationValue>().unwrap_err();
        assert!(err.contains("30s"), "{err}");
        assert!("5x".parse::<DurationValue>().is_err());
        assert!("".parse::<DurationValue>().is_err());
        assert!("-5s".parse::<DurationValue>().is_err());
        assert!("99999999999999999999999s".parse::<DurationValue>().is_err());
    }

    #[test]
    fn durations_display_round_trips() {
        for text in ["5s", "250ms", "2m", "3h", "0s", "1500us"] {
            let d: DurationValue = text.parse().unwrap();
            assert_eq!(d.to_string().parse::<DurationValue>().unwrap(), d, "{text}");
        }
    }

    #[test]
    fn sizes_parse_with_binary_and_decimal_units() {
        assert_eq!("512".parse::<ByteSize>().unwrap().get(), 512);
        assert_eq!("8KiB".parse::<ByteSize>().unwrap().get(), 8192);
        assert_eq!("10KB".parse::<ByteSize>().unwrap().get(), 10_000);
        assert_eq!("1MiB".parse::<ByteSize>().unwrap().get(), 1 << 20);
        assert_eq!("2 GiB".parse::<ByteSize>().unwrap().get(), 2 << 30);
        assert!("8 parsecs".parse::<ByteSize>().is_err());
        assert!("KiB".parse::<ByteSize>().is_err());
        assert!("-1".parse::<ByteSize>().is_err());
        assert!("99999999999999999999GiB".parse::<ByteSize>().is_err());
        assert!("18446744073709551615GiB".parse::<ByteSize>().is_err());
    }

    #[test]
    fn rates_parse_as_people_write_them() {
        let r: RateValue = "100/s".parse().unwrap();
        assert_eq!((r.count, r.period), (100, Duration::from_secs(1)));
        assert_eq!("5/min".parse::<RateValue>().unwrap().period, Duration::from_secs(60));
        assert_eq!("1000/day".parse::<RateValue>().unwrap().period, Duration::from_secs(86_400));
        assert_eq!("20 / 10s".parse::<RateValue>().unwrap().period, Duration::from_secs(10));
        assert_eq!("3/250ms".parse::<RateValue>().unwrap().period, Duration::from_millis(250));
        for text in ["100/s", "5/min", "7/h", "1000/day", "20/10s", "3/250ms"] {
            let r: RateValue = text.parse().unwrap();
            assert_eq!(r.to_string().parse::<RateValue>().unwrap(), r, "{text}");
        }
        for bad in [
            "",
            "100",
            "/s",
            "x/s",
            "-1/s",
            "0/s",
            "10/fortnight",
            "10/0s",
            "10/400d",
            "1e3/s",
            "99999999999999999999/s",
        ] {
            assert!(bad.parse::<RateValue>().is_err(), "{bad}");
        }
    }
}
