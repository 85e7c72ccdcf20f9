//! Human durations for TTLs and timeouts: `90s`, `15m`, `1h`, `2d`, or a plain number of seconds.

use std::time::Duration;

/// Parses `90`, `90s`, `15m`, `1h30m`, `2d`. Zero and overflow are refused: a TTL of
/// nothing is a mistake, not a request.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(secs) = t.parse::<u64>() {
        return nonzero(Duration::from_secs(secs), s);
    }
    let mut total: u64 = 0;
    let mut num = String::new();
    for c in t.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(format!("{s:?}: unknown unit {c:?} (use s, m, h or d)")),
        };
        let n: u64 = num
            .parse()
            .map_err(|_| format!("{s:?}: expected a number before {c:?}"))?;
        num.clear();
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("{s:?}: too long"))?;
    }
    if !num.is_empty() {
        return Err(format!(
            "{s:?}: a number needs a unit after it (s, m, h or d)"
        ));
    }
    nonzero(Duration::from_secs(total), s)
}

fn nonzero(d: Duration, s: &str) -> Result<Duration, String> {
    if d.is_zero() {
        Err(format!("{s:?}: duration must be positive"))
    } else {
        Ok(d)
    }
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
        assert_eq!(
            parse_duration(" 2d ").unwrap(),
            Duration::from_secs(172_800)
        );
        for bad in [
            "",
            "0",
            "0s",
            "h",
            "1x",
            "5h3",
            "99999999999999999999d",
            "-1s",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
