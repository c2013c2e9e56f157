//! Quantities as the fake scheduler and kubelet read them (kept apart from dovetail's parser on purpose).

/// Parse a Kubernetes quantity into thousandths of a unit, rounding up. None if it is not a quantity.
pub fn milli(q: &str) -> Option<i128> {
    const SUFFIXES: [(&str, i128, i128); 14] = [
        ("Ki", 1 << 10, 1),
        ("Mi", 1 << 20, 1),
        ("Gi", 1 << 30, 1),
        ("Ti", 1 << 40, 1),
        ("Pi", 1 << 50, 1),
        ("Ei", 1 << 60, 1),
        ("n", 1, 1_000_000_000),
        ("u", 1, 1_000_000),
        ("m", 1, 1_000),
        ("k", 1_000, 1),
        ("M", 1_000_000, 1),
        ("G", 1_000_000_000, 1),
        ("T", 1_000_000_000_000, 1),
        ("P", 1_000_000_000_000_000, 1),
    ];
    let q = q.trim();
    let (num, mul, div) = SUFFIXES
        .iter()
        .find_map(|(s, m, d)| q.strip_suffix(s).map(|n| (n, *m, *d)))
        .unwrap_or((q, 1, 1));
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if int.is_empty() && frac.is_empty()
        || !int.chars().chain(frac.chars()).all(|c| c.is_ascii_digit())
    {
        return None;
    }
    let scale = 10i128.checked_pow(frac.len() as u32)?;
    let whole: i128 = format!("0{int}{frac}").parse().ok()?;
    // whole / scale * mul / div * 1000, rounded up
    let numerator = whole.checked_mul(mul)?.checked_mul(1000)?;
    let denominator = scale.checked_mul(div)?;
    Some((numerator + denominator - 1) / denominator)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_common_forms() {
        assert_eq!(super::milli("500m"), Some(500));
        assert_eq!(super::milli("2"), Some(2000));
        assert_eq!(super::milli("1Gi"), Some((1 << 30) * 1000));
        assert_eq!(super::milli("1.5"), Some(1500));
        assert_eq!(super::milli("5OOm"), None);
    }
}
