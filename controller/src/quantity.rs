//! Kubernetes resource quantities (`1475m`, `1686Mi`, `30Gi`, `100M`, `1e3`) in exact integer milli-units.

use std::fmt;

/// A quantity in thousandths of the base unit (millicores for cpu, millibytes for memory), so that every
/// quantity Kubernetes accepts for requests adds and compares without rounding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Milli(pub i128);

impl Milli {
    pub const ZERO: Milli = Milli(0);

    pub fn from_units(units: i128) -> Milli {
        Milli(units * 1000)
    }

    /// Whole base units, rounded down.
    pub fn units(self) -> i128 {
        self.0.div_euclid(1000)
    }

    pub fn saturating_sub(self, other: Milli) -> Milli {
        Milli((self.0 - other.0).max(0))
    }
}

impl std::ops::Add for Milli {
    type Output = Milli;
    fn add(self, rhs: Milli) -> Milli {
        Milli(self.0 + rhs.0)
    }
}

impl std::ops::AddAssign for Milli {
    fn add_assign(&mut self, rhs: Milli) {
        self.0 += rhs.0;
    }
}

impl std::ops::Sub for Milli {
    type Output = Milli;
    fn sub(self, rhs: Milli) -> Milli {
        Milli(self.0 - rhs.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("empty quantity")]
    Empty,
    #[error(
        "`{0}` is not a quantity: expected a number with an optional suffix such as 500m, 2, 1.5Gi or 100M"
    )]
    Malformed(String),
    #[error("`{0}` is too large")]
    TooLarge(String),
    #[error("`{0}` is negative; resource requests cannot be negative")]
    Negative(String),
}

/// Parse a quantity string. Fractions finer than a milli-unit round up, as Kubernetes does for requests.
pub fn parse(input: &str) -> Result<Milli, QuantityError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(QuantityError::Empty);
    }
    let malformed = || QuantityError::Malformed(input.to_string());
    let (negative, body) = match s.as_bytes()[0] {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let number_end = body
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(body.len());
    let (number, suffix) = body.split_at(number_end);
    if number.is_empty() || number == "." || number.matches('.').count() > 1 {
        return Err(malformed());
    }
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));

    // value = digits * 10^exp10 * 2^exp2, with digits the decimal digits of int_part+frac_part.
    let mut exp10: i32 = -(frac_part.len() as i32);
    let mut exp2: u32 = 0;
    match suffix {
        "" => {}
        "n" => exp10 -= 9,
        "u" => exp10 -= 6,
        "m" => exp10 -= 3,
        "k" => exp10 += 3,
        "M" => exp10 += 6,
        "G" => exp10 += 9,
        "T" => exp10 += 12,
        "P" => exp10 += 15,
        "E" => exp10 += 18,
        "Ki" => exp2 = 10,
        "Mi" => exp2 = 20,
        "Gi" => exp2 = 30,
        "Ti" => exp2 = 40,
        "Pi" => exp2 = 50,
        "Ei" => exp2 = 60,
        other if other.starts_with(['e', 'E']) => {
            let e: i32 = other[1..].parse().map_err(|_| malformed())?;
            if !(-30..=30).contains(&e) {
                return Err(QuantityError::TooLarge(input.to_string()));
            }
            exp10 += e;
        }
        _ => return Err(malformed()),
    }
    let digits = format!("{int_part}{frac_part}");
    let digits = digits.trim_start_matches('0');
    if digits.len() > 30 {
        return Err(QuantityError::TooLarge(input.to_string()));
    }
    let mantissa: i128 = if digits.is_empty() {
        0
    } else {
        digits.parse().map_err(|_| malformed())?
    };
    if negative && mantissa != 0 {
        return Err(QuantityError::Negative(input.to_string()));
    }
    // milli = mantissa * 2^exp2 * 10^(exp10 + 3), rounded up.
    let too_large = || QuantityError::TooLarge(input.to_string());
    let mut value = mantissa.checked_mul(1i128 << exp2).ok_or_else(too_large)?;
    let scale = exp10 + 3;
    if scale >= 0 {
        value = value
            .checked_mul(10i128.checked_pow(scale as u32).ok_or_else(too_large)?)
            .ok_or_else(too_large)?;
    } else {
        let div = 10i128.checked_pow((-scale) as u32).unwrap_or(i128::MAX);
        value = (value + div - 1) / div;
    }
    Ok(Milli(value))
}

/// Cores with up to three decimals, without trailing zeros: `7.2`, `0.5`, `16`.
pub struct Cores(pub Milli);

impl fmt::Display for Cores {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0.0;
        let whole = m / 1000;
        let frac = m % 1000;
        if frac == 0 {
            write!(f, "{whole}")
        } else {
            let s = format!("{frac:03}");
            write!(f, "{whole}.{}", s.trim_end_matches('0'))
        }
    }
}

/// Bytes as GiB with one decimal: `14.5Gi`.
pub struct Gibibytes(pub Milli);

impl fmt::Display for Gibibytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.0.units();
        // Tenths of a GiB, rounded half up, in integers so the trace never depends on float formatting.
        let tenths = (bytes * 10 + (1 << 29)) >> 30;
        write!(f, "{}.{}Gi", tenths / 10, tenths % 10)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_kubernetes_accepts() {
        assert_eq!(parse("1475m"), Ok(Milli(1475)));
        assert_eq!(parse("2"), Ok(Milli(2000)));
        assert_eq!(parse("0.5"), Ok(Milli(500)));
        assert_eq!(parse("1686Mi"), Ok(Milli(1686 * 1024 * 1024 * 1000)));
        assert_eq!(parse("30Gi"), Ok(Milli(30 * (1 << 30) * 1000)));
        assert_eq!(parse("100M"), Ok(Milli(100_000_000_000)));
        assert_eq!(parse("1e3"), Ok(Milli(1_000_000)));
        assert_eq!(parse("1.5Gi"), Ok(Milli(3 * (1 << 29) * 1000)));
        assert_eq!(parse("0.1m"), Ok(Milli(1)), "sub-milli rounds up");
        assert_eq!(parse("100n"), Ok(Milli(1)));
        assert_eq!(parse("0"), Ok(Milli(0)));
    }

    #[test]
    fn rejects_what_kubernetes_rejects() {
        for bad in ["5OOm", "", "m", "1.2.3", "1Kb", "ten", "1 Gi", "-1"] {
            assert!(parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn formats_for_the_trace() {
        assert_eq!(Cores(Milli(7200)).to_string(), "7.2");
        assert_eq!(Cores(Milli(16000)).to_string(), "16");
        assert_eq!(Cores(Milli(250)).to_string(), "0.25");
        assert_eq!(Gibibytes(parse("14.5Gi").unwrap()).to_string(), "14.5Gi");
        assert_eq!(Gibibytes(parse("1Gi").unwrap()).to_string(), "1.0Gi");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        #[test]
        fn binary_and_decimal_suffixes_scale_exactly(n in 0u32..100_000) {
            let n = n as i128;
            proptest::prop_assert_eq!(parse(&format!("{n}Ki")).unwrap(), Milli(n * 1024 * 1000));
            proptest::prop_assert_eq!(parse(&format!("{n}k")).unwrap(), Milli(n * 1_000_000));
            proptest::prop_assert_eq!(parse(&format!("{n}m")).unwrap(), Milli(n));
        }
    }
}
