//! Quantities as the fake API server, scheduler and kubelet read them (kept apart from dovetail's parser on
//! purpose): parsing, and the canonical form the API server writes back.

/// How a quantity was written, which decides how the API server writes it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// Ki, Mi, Gi, ... (powers of 1024)
    BinarySi,
    /// n, u, m, none, k, M, G, ... (powers of 1000)
    DecimalSi,
    /// 1e3, 5E-3
    DecimalExponent,
}

const BINARY: [(&str, u32); 6] = [
    ("Ki", 10),
    ("Mi", 20),
    ("Gi", 30),
    ("Ti", 40),
    ("Pi", 50),
    ("Ei", 60),
];
/// Decimal suffixes and their power of ten.
const DECIMAL: [(&str, i32); 10] = [
    ("n", -9),
    ("u", -6),
    ("m", -3),
    ("", 0),
    ("k", 3),
    ("M", 6),
    ("G", 9),
    ("T", 12),
    ("P", 15),
    ("E", 18),
];

/// A quantity in billionths of a unit (the API server keeps nano precision and rounds finer values up),
/// with the format it was written in. None if the text is not a quantity.
fn parse(q: &str) -> Option<(i128, Format)> {
    let q = q.trim();
    let (sign, q) = match q.strip_prefix('-') {
        Some(rest) => (-1, rest),
        None => (1, q.strip_prefix('+').unwrap_or(q)),
    };
    let digits_end = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(digits_end);
    let (format, mul, exp10): (Format, i128, i32) =
        if let Some((_, shift)) = BINARY.iter().find(|(s, _)| *s == suffix) {
            (Format::BinarySi, 1i128 << shift, 0)
        } else if let Some((_, e)) = DECIMAL.iter().find(|(s, _)| *s == suffix) {
            (Format::DecimalSi, 1, *e)
        } else if let Some(e) = suffix
            .strip_prefix('e')
            .or_else(|| suffix.strip_prefix('E'))
        {
            (Format::DecimalExponent, 1, e.parse::<i32>().ok()?)
        } else {
            return None;
        };
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if (int.is_empty() && frac.is_empty()) || frac.contains('.') {
        return None;
    }
    let digits: i128 = format!("0{int}{frac}").parse().ok()?;
    // value = digits * mul * 10^(exp10 - frac.len()) units = that * 10^9 nano-units, rounded up.
    let power = exp10 + 9 - frac.len() as i32;
    let scaled = digits.checked_mul(mul)?;
    let nano = if power >= 0 {
        scaled.checked_mul(10i128.checked_pow(power as u32)?)?
    } else {
        let div = 10i128.checked_pow((-power) as u32)?;
        (scaled + div - 1) / div
    };
    Some((sign * nano, format))
}

/// Parse a Kubernetes quantity into thousandths of a unit, rounding up. None if it is not a quantity.
pub fn milli(q: &str) -> Option<i128> {
    let (nano, _) = parse(q)?;
    Some(if nano >= 0 {
        (nano + 999_999) / 1_000_000
    } else {
        nano / 1_000_000
    })
}

/// The form the API server writes a quantity back in: no fractional digits, the largest suffix of the
/// written format that loses nothing (`1000m` → `1`, `0.5` → `500m`, `1024Mi` → `1Gi`, `1.5Ki` → `1536`).
pub fn canonical(q: &str) -> Option<String> {
    let (nano, format) = parse(q)?;
    if nano == 0 {
        return Some("0".into());
    }
    let sign = if nano < 0 { "-" } else { "" };
    let v = nano.abs();
    if format == Format::BinarySi && v % 1_000_000_000 == 0 {
        let n = v / 1_000_000_000;
        let best = BINARY
            .iter()
            .rev()
            .find(|(_, shift)| n % (1i128 << shift) == 0);
        return Some(match best {
            Some((suffix, shift)) => format!("{sign}{}{suffix}", n >> shift),
            None => format!("{sign}{n}"),
        });
    }
    // Decimal (and binary values with a fraction, which the API server writes in decimal).
    let (mantissa, exp) = (-9..=18)
        .rev()
        .step_by(3)
        .find_map(|e: i32| {
            let div = 10i128.pow((e + 9) as u32);
            (v % div == 0).then_some((v / div, e))
        })
        .unwrap_or((v, -9));
    Some(if format == Format::DecimalExponent {
        if exp == 0 {
            format!("{sign}{mantissa}")
        } else {
            format!("{sign}{mantissa}e{exp}")
        }
    } else {
        let suffix = DECIMAL
            .iter()
            .find(|(_, e)| *e == exp)
            .map_or("", |(s, _)| s);
        format!("{sign}{mantissa}{suffix}")
    })
}

#[cfg(test)]
mod tests {
    use super::{canonical, milli};

    #[test]
    fn reads_common_forms() {
        assert_eq!(milli("500m"), Some(500));
        assert_eq!(milli("2"), Some(2000));
        assert_eq!(milli("1Gi"), Some((1 << 30) * 1000));
        assert_eq!(milli("1.5"), Some(1500));
        assert_eq!(milli("1e3"), Some(1_000_000));
        assert_eq!(milli("100u"), Some(1));
        assert_eq!(milli("5OOm"), None);
        assert_eq!(milli("1.2.3"), None);
        assert_eq!(milli("Gi"), None);
    }

    #[test]
    fn writes_back_like_the_api_server() {
        for (written, stored) in [
            ("1000m", "1"),
            ("0.5", "500m"),
            ("1.5", "1500m"),
            ("1000", "1k"),
            ("1500", "1500"),
            ("1024Mi", "1Gi"),
            ("1.5Gi", "1536Mi"),
            ("1.5Ki", "1536"),
            ("0.5Gi", "512Mi"),
            ("1e3", "1e3"),
            ("2000e-3", "2"),
            ("100u", "100u"),
            ("0.1n", "1n"),
            ("0", "0"),
            ("0Gi", "0"),
            ("4Gi", "4Gi"),
            ("250m", "250m"),
        ] {
            assert_eq!(canonical(written).as_deref(), Some(stored), "{written}");
        }
        assert_eq!(canonical("one"), None);
    }
}
