//! Sizes as Docker writes them: `1024`, `64k`, `512m`, `1.5g`, `2GiB`.

/// Parses a size in bytes. Units are binary (`k` = 1024) and case-blind,
/// optionally followed by `i` and/or `b` (`m`, `mb`, `MiB`); a fraction is
/// allowed before a unit and rounds down to whole bytes.
pub fn parse_byte_size(text: &str) -> Result<u64, String> {
    let invalid = || format!("invalid size {text:?} (e.g. 1024, 64k, 512m, 1.5g)");
    let trimmed = text.trim();
    let number_len = trimmed.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(number_len);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let digits_only = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !digits_only(whole) || !digits_only(fraction) || number.ends_with('.') {
        return Err(invalid());
    }
    let unit = unit.strip_prefix(' ').unwrap_or(unit).to_ascii_lowercase();
    let (letter, rest) = match unit.chars().next() {
        Some(c) if "kmgtp".contains(c) => (Some(c), &unit[1..]),
        _ => (None, unit.as_str()),
    };
    let suffix_ok = match letter {
        Some(_) => matches!(rest, "" | "i" | "b" | "ib"),
        None => matches!(rest, "" | "b"),
    };
    if !suffix_ok {
        return Err(invalid());
    }
    let shift = match letter {
        None => 0,
        Some('k') => 10,
        Some('m') => 20,
        Some('g') => 30,
        Some('t') => 40,
        _ => 50,
    };
    let too_large = || format!("size {text:?} is too large");
    let whole: u64 = whole.parse().map_err(|_| too_large())?;
    let bytes = whole.checked_mul(1u64 << shift).ok_or_else(too_large)?;
    if fraction.is_empty() {
        return Ok(bytes);
    }
    // The fraction's share of one unit, rounded down.
    let digits = fraction.len().min(18) as u32;
    let numerator: u128 = fraction[..digits as usize].parse().map_err(|_| invalid())?;
    let part = numerator * (1u128 << shift) / 10u128.pow(digits);
    bytes.checked_add(part as u64).ok_or_else(too_large)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_as_docker_reads_them() {
        assert_eq!(parse_byte_size("1024"), Ok(1024));
        assert_eq!(parse_byte_size("100b"), Ok(100));
        assert_eq!(parse_byte_size("64k"), Ok(64 << 10));
        assert_eq!(parse_byte_size("64m"), Ok(64 << 20));
        assert_eq!(parse_byte_size("64M"), Ok(64 << 20));
        assert_eq!(parse_byte_size("64mb"), Ok(64 << 20));
        assert_eq!(parse_byte_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_byte_size("2 g"), Ok(2 << 30));
        assert_eq!(parse_byte_size("1t"), Ok(1 << 40));
        assert_eq!(parse_byte_size("1.5g"), Ok(3 << 29));
        assert_eq!(parse_byte_size("0.5k"), Ok(512));
        assert_eq!(parse_byte_size("1.0001"), Ok(1));
    }

    #[test]
    fn bad_sizes_are_refused() {
        for bad in ["", "m", "-1", "64x", "64mm", "64 m b", "1..5g", "1.g", ".5g", "64ib", "1e3"] {
            let err = parse_byte_size(bad).expect_err(bad);
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
        assert!(parse_byte_size("99999999999999999999").unwrap_err().contains("too large"));
        assert!(parse_byte_size("20000000p").unwrap_err().contains("too large"));
    }
}
