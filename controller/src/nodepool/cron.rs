//! Five-field cron schedules (UTC) as NodePool disruption budgets use them, with the `@daily`-style macros.

use jiff::Timestamp;
use jiff::tz::TimeZone;

/// One parsed schedule: the minutes, hours, days of month, months and weekdays it fires on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    minutes: Vec<bool>,
    hours: Vec<bool>,
    days: Vec<bool>,
    months: Vec<bool>,
    weekdays: Vec<bool>,
    /// Cron's rule: when both day fields are restricted, either may match.
    days_restricted: bool,
    weekdays_restricted: bool,
}

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const WEEKDAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

fn value(s: &str, names: &[&str], first: u32) -> Result<u32, String> {
    if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
        return Ok(i as u32 + first);
    }
    s.parse().map_err(|_| {
        format!(
            "`{s}` is not a number{}",
            if names.is_empty() { "" } else { " or a name" }
        )
    })
}

/// One field (`*`, `*/15`, `1-5`, `MON-FRI`, `0,30`) as a table of allowed values `lo..=hi`.
fn field(
    text: &str,
    lo: u32,
    hi: u32,
    names: &[&str],
    what: &str,
) -> Result<(Vec<bool>, bool), String> {
    let mut set = vec![false; hi as usize + 1];
    let restricted = text != "*";
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s
                    .parse()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| format!("{what}: step `{s}` must be a positive number"))?;
                (r, step)
            }
            None => (part, 1),
        };
        let (a, b) = if range == "*" {
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            (
                value(a, names, lo).map_err(|e| format!("{what}: {e}"))?,
                value(b, names, lo).map_err(|e| format!("{what}: {e}"))?,
            )
        } else {
            let v = value(range, names, lo).map_err(|e| format!("{what}: {e}"))?;
            // `5/10` means from 5 to the end in steps of 10.
            (v, if step > 1 { hi } else { v })
        };
        if a < lo || b > hi || a > b {
            return Err(format!("{what}: `{part}` is outside {lo}-{hi}"));
        }
        let mut v = a;
        while v <= b {
            set[v as usize] = true;
            v += step;
        }
    }
    Ok((set, restricted))
}

impl Cron {
    /// Parse `m h dom mon dow` or a macro (`@yearly`, `@monthly`, `@weekly`, `@daily`, `@hourly`).
    pub fn parse(text: &str) -> Result<Cron, String> {
        let expanded = match text.trim() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other => other,
        };
        let parts: Vec<&str> = expanded.split_whitespace().collect();
        let [m, h, dom, mon, dow] = parts.as_slice() else {
            return Err(format!(
                "`{text}` has {} fields; a schedule has five (minute hour day-of-month month day-of-week) or is a macro such as @daily",
                parts.len()
            ));
        };
        let (minutes, _) = field(m, 0, 59, &[], "minute")?;
        let (hours, _) = field(h, 0, 23, &[], "hour")?;
        let (days, days_restricted) = field(dom, 1, 31, &[], "day of month")?;
        let (months, _) = field(mon, 1, 12, &MONTHS, "month")?;
        let (mut weekdays, weekdays_restricted) = field(dow, 0, 7, &WEEKDAYS, "day of week")?;
        // 7 is Sunday too.
        if weekdays[7] {
            weekdays[0] = true;
        }
        Ok(Cron {
            minutes,
            hours,
            days,
            months,
            weekdays,
            days_restricted,
            weekdays_restricted,
        })
    }

    /// Whether the schedule fires at the minute containing `t` (UTC).
    pub fn fires_at(&self, t: Timestamp) -> bool {
        let z = t.to_zoned(TimeZone::UTC);
        let day_ok = self.days[z.day() as usize];
        let weekday_ok = self.weekdays[z.weekday().to_sunday_zero_offset() as usize];
        let day_match = match (self.days_restricted, self.weekdays_restricted) {
            (true, true) => day_ok || weekday_ok,
            _ => day_ok && weekday_ok,
        };
        self.minutes[z.minute() as usize]
            && self.hours[z.hour() as usize]
            && self.months[z.month() as usize]
            && day_match
    }

    /// Whether a window of `minutes` opened by this schedule covers `t`: it fired at some minute in
    /// `(t - minutes, t]`.
    pub fn active(&self, t: Timestamp, minutes: u32) -> bool {
        (0..minutes).any(|back| {
            t.checked_sub(jiff::SignedDuration::from_secs(60 * back as i64))
                .is_ok_and(|s| self.fires_at(s))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn fields_macros_and_names() {
        let c = Cron::parse("*/15 9-17 * * MON-FRI").unwrap();
        assert!(c.fires_at(t("2026-01-05T09:45:00Z"))); // a Monday
        assert!(!c.fires_at(t("2026-01-05T09:46:00Z")));
        assert!(!c.fires_at(t("2026-01-04T09:45:00Z"))); // a Sunday
        assert!(!c.fires_at(t("2026-01-05T18:00:00Z")));
        let d = Cron::parse("@daily").unwrap();
        assert!(d.fires_at(t("2026-03-01T00:00:30Z")));
        assert!(!d.fires_at(t("2026-03-01T00:01:00Z")));
        assert!(
            Cron::parse("0 0 * * 7")
                .unwrap()
                .fires_at(t("2026-01-04T00:00:00Z"))
        );
        // Both day fields restricted: either matches.
        let either = Cron::parse("0 0 13 * FRI").unwrap();
        assert!(either.fires_at(t("2026-01-13T00:00:00Z"))); // a Tuesday the 13th
        assert!(either.fires_at(t("2026-01-02T00:00:00Z"))); // a Friday
    }

    #[test]
    fn windows() {
        let c = Cron::parse("0 9 * * *").unwrap();
        assert!(c.active(t("2026-01-01T09:00:00Z"), 60));
        assert!(c.active(t("2026-01-01T09:59:59Z"), 60));
        assert!(!c.active(t("2026-01-01T10:00:00Z"), 60));
        assert!(!c.active(t("2026-01-01T08:59:00Z"), 60));
    }

    #[test]
    fn bad_schedules_say_why() {
        assert!(Cron::parse("0 9 * *").unwrap_err().contains("five"));
        assert!(Cron::parse("61 * * * *").unwrap_err().contains("minute"));
        assert!(
            Cron::parse("* * * * FUNDAY")
                .unwrap_err()
                .contains("day of week")
        );
        assert!(Cron::parse("*/0 * * * *").unwrap_err().contains("step"));
    }
}
