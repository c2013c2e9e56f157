//! Durations as scenario files write them: `500ms`, `40s`, `10m`, `1h30m`, `2.5s`; ranges `3s..12s`.

use std::time::Duration;

pub use dovetail::duration::parse;

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
    fn parses_ranges() {
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
