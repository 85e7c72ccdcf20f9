//! Human durations for TTLs and timeouts: `90s`, `15m`, `1h`, `2d`, or a plain number of seconds.

use std::time::Duration;

/// The longest duration [`parse_duration`] accepts: a hundred years is past any TTL, and
/// an expiry that far ahead still fits the clocks and the token file it is added to.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 86_400);

/// Parses `90` (seconds), `90s`, `15m`, `1h30m`, `2d` and whatever else `humantime`
/// reads (`500ms`, `1h 30m`, `2days`). Zero and overflow are refused: a TTL of nothing is
/// a mistake, not a request; so is anything past a hundred years (`MAX_DURATION`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("empty duration".into());
    }
    let d = match t.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(t).map_err(|e| format!("{s:?}: {e}"))?,
    };
    if d.is_zero() {
        return Err(format!("{s:?}: duration must be positive"));
    }
    if d > MAX_DURATION {
        return Err(format!("{s:?}: at most 100 years"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_refuses_nonsense() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("1h 30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(
            parse_duration(" 2d ").unwrap(),
            Duration::from_secs(172_800)
        );
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("36500d").unwrap(), MAX_DURATION);
        for bad in [
            "",
            "0",
            "0s",
            "h",
            "1x",
            "5h3",
            "99999999999999999999d",
            "-1s",
            "18446744073709551615",
            "101y",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
