//! Durations as Karpenter and scenario files write them: `500ms`, `40s`, `10m`, `1h30m`, `720h`, `2.5s`.

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

/// A NodePool / NodeClaim duration field: a duration, or `Never` (returned as `None`).
pub fn parse_or_never(s: &str) -> Result<Option<Duration>, String> {
    if s.trim() == "Never" {
        return Ok(None);
    }
    parse(s).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_compounds_and_never() {
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("2.5s"), Ok(Duration::from_millis(2500)));
        assert_eq!(parse("720h"), Ok(Duration::from_secs(720 * 3600)));
        assert!(parse("10").is_err());
        assert!(parse("5x").is_err());
        assert!(parse("m").is_err());
        assert_eq!(parse_or_never("Never"), Ok(None));
        assert_eq!(parse_or_never("30s"), Ok(Some(Duration::from_secs(30))));
    }
}
