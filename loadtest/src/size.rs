//! Byte counts as people type them: `1048576`, `64KiB`, `256MiB`, `1GB`.

/// Parses a whole number of bytes with an optional unit. Binary units
/// (`KiB`, `MiB`, `GiB`, `TiB`) are powers of 1024, decimal ones (`KB`, `MB`,
/// `GB`, `TB`, or just `K`, `M`, `G`, `T`) powers of 1000. Units are case
/// insensitive; a space between number and unit is allowed.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    if number.is_empty() {
        return Err(format!("size {text:?} does not start with a number (e.g. 256MiB)"));
    }
    let number: u64 = number.parse().map_err(|_| format!("size {text:?}: {number} is too large"))?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "t" | "tb" => 1_000_000_000_000,
        "ki" | "kib" => 1 << 10,
        "mi" | "mib" => 1 << 20,
        "gi" | "gib" => 1 << 30,
        "ti" | "tib" => 1 << 40,
        other => return Err(format!("size {text:?}: unknown unit {other:?} (use B, KiB, MiB, GiB, KB, MB, GB)")),
    };
    number.checked_mul(multiplier).ok_or_else(|| format!("size {text:?} does not fit in 64 bits"))
}

/// A byte count in the largest binary unit that keeps it readable.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else if value.fract() == 0.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.2} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_plain_binary_and_decimal_sizes() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("256mib"), Ok(256 << 20));
        assert_eq!(parse_size("1 MiB"), Ok(1 << 20));
        assert_eq!(parse_size("4KiB"), Ok(4096));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_size("10K"), Ok(10_000));
        assert_eq!(parse_size(" 7B "), Ok(7));
    }

    #[test]
    fn rejects_what_is_not_a_size_with_a_reason() {
        assert!(parse_size("").unwrap_err().contains("does not start with a number"));
        assert!(parse_size("MiB").unwrap_err().contains("does not start with a number"));
        assert!(parse_size("-1").unwrap_err().contains("does not start with a number"));
        assert!(parse_size("1.5GiB").unwrap_err().contains("unknown unit"));
        assert!(parse_size("3 parsecs").unwrap_err().contains("unknown unit"));
        assert!(parse_size("99999999999999999999").unwrap_err().contains("too large"));
        assert!(parse_size("20000000TiB").unwrap_err().contains("64 bits"));
    }

    #[test]
    fn formats_round_trip_for_whole_units() {
        assert_eq!(format_size(512), "512 B");
        assert_eq!(format_size(1 << 20), "1 MiB");
        assert_eq!(format_size(256 << 20), "256 MiB");
        assert_eq!(format_size(1536), "1.50 KiB");
        assert_eq!(parse_size("256 MiB"), Ok(256 << 20));
    }
}
