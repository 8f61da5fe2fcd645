//! Durations written as in Envoy and Istio configs: "250ms", "2s", "5m", "24h".

use std::fmt;
use std::time::Duration;

/// Parses `<digits><unit>` with unit `ms`, `s`, `m` or `h`. No fractions, no sign, no spaces,
/// so that a typo is refused instead of silently meaning something else.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let digits_end = text.find(|c: char| !c.is_ascii_digit()).ok_or(DurationError::MissingUnit)?;
    let (digits, unit) = text.split_at(digits_end);
    if digits.is_empty() {
        return Err(DurationError::MissingNumber);
    }
    let value: u64 = digits.parse().map_err(|_| DurationError::TooLarge)?;
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(DurationError::UnknownUnit),
    };
    let millis = value.checked_mul(millis_per_unit).ok_or(DurationError::TooLarge)?;
    Ok(Duration::from_millis(millis))
}

/// Whole milliseconds, saturating (a config duration is at most hours; the host clock is u64 ms).
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DurationError {
    MissingNumber,
    MissingUnit,
    UnknownUnit,
    TooLarge,
}

impl fmt::Display for DurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self {
            DurationError::MissingNumber => "a whole number is missing",
            DurationError::MissingUnit => "the unit is missing",
            DurationError::UnknownUnit => "the unit is not one of ms, s, m, h",
            DurationError::TooLarge => "the number is too large",
        };
        write!(f, "{what}: expected a duration such as \"250ms\", \"2s\", \"5m\" or \"24h\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn refuses_malformed_text() {
        assert_eq!(parse_duration(""), Err(DurationError::MissingUnit));
        assert_eq!(parse_duration("10"), Err(DurationError::MissingUnit));
        assert_eq!(parse_duration("s"), Err(DurationError::MissingNumber));
        assert_eq!(parse_duration("-1s"), Err(DurationError::MissingNumber));
        assert_eq!(parse_duration("1.5s"), Err(DurationError::UnknownUnit));
        assert_eq!(parse_duration("2 s"), Err(DurationError::UnknownUnit));
        assert_eq!(parse_duration("2d"), Err(DurationError::UnknownUnit));
        assert_eq!(parse_duration("2S"), Err(DurationError::UnknownUnit));
    }

    #[test]
    fn refuses_overflow() {
        assert_eq!(parse_duration("99999999999999999999s"), Err(DurationError::TooLarge));
        assert_eq!(parse_duration("18446744073709551615h"), Err(DurationError::TooLarge));
    }
}
