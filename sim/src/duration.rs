//! Durations as scenario files write them: `500ms`, `40s`, `10m`, `1h30m`, `2.5s`; ranges `3s..12s`.

use std::time::Duration;

/// Parse `1h30m`, `45s`, `250ms`, `1.5m`. Units are required so that `10` is never ambiguous.
pub fn parse(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(num_end);
        if num.is_empty() {
            return Err(format!(
                "`{s}` is not a duration: expected a number before `{tail}` (e.g. 90s, 10m, 1h30m)"
            ));
        }
        let unit_end = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_end);
        let value: f64 = num
            .parse()
            .map_err(|_| format!("`{s}` is not a duration: bad number `{num}`"))?;
        let scale = match unit {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            "" => {
                return Err(format!(
                    "`{s}` needs a unit: ms, s, m, h or d (e.g. `{num}s`)"
                ));
            }
            other => {
                return Err(format!(
                    "`{s}`: unknown unit `{other}`; use ms, s, m, h or d"
                ));
            }
        };
        total += value * scale;
        rest = next;
    }
    // Whole milliseconds keep every derived time exact and the trace stable.
    Ok(Duration::from_millis((total * 1000.0).round() as u64))
}

/// `3s..12s` (inclusive) or a single duration meaning a fixed value.
pub fn parse_range(s: &str) -> Result<(Duration, Duration), String> {
    match s.split_once("..") {
        Some((lo, hi)) => {
            let (lo, hi) = (parse(lo)?, parse(hi)?);
            if hi < lo {
                return Err(format!("`{s}`: the range ends before it starts"));
            }
            Ok((lo, hi))
        }
        None => parse(s).map(|d| (d, d)),
    }
}

/// `+HH:MM:SS.mmm`, the trace's time column.
pub fn stamp(d: Duration) -> String {
    let ms = d.as_millis();
    format!(
        "+{:02}:{:02}:{:02}.{:03}",
        ms / 3_600_000,
        (ms / 60_000) % 60,
        (ms / 1000) % 60,
        ms % 1000
    )
}

/// A short human form for summaries: `1m05s`, `3.2s`.
pub fn human(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 60.0 {
        format!("{secs:.1}s")
    } else {
        let s = d.as_secs();
        if s < 3600 {
            format!("{}m{:02}s", s / 60, s % 60)
        } else {
            format!("{}h{:02}m{:02}s", s / 3600, (s / 60) % 60, s % 60)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_compounds() {
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("2.5s"), Ok(Duration::from_millis(2500)));
        assert!(parse("10").is_err());
        assert!(parse("5x").is_err());
        assert!(parse("m").is_err());
        assert_eq!(
            parse_range("3s..12s"),
            Ok((Duration::from_secs(3), Duration::from_secs(12)))
        );
        assert!(parse_range("12s..3s").is_err());
    }

    #[test]
    fn stamps() {
        assert_eq!(stamp(Duration::from_millis(3_723_004)), "+01:02:03.004");
    }
}
