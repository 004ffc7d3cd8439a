//! Sizes as people write them: `4096`, `64MiB`, `1G`, `10GB`.

/// Parse a size. Binary suffixes `K/KiB/M/MiB/G/GiB/T/TiB` (1024-based) and
/// decimal `KB/MB/GB/TB` (1000-based), case-insensitive; a bare number is
/// bytes. Zero, garbage and overflow are errors.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(format!(
            "invalid size {s:?}: expected a number like 64MiB or 1GiB"
        ));
    }
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?}: number too large"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        other => {
            return Err(format!(
                "invalid size {s:?}: unknown unit {other:?} (use K, KiB, M, MiB, G, GiB, T, TiB, KB, MB, GB, TB)"
            ))
        }
    };
    let v = n
        .checked_mul(mult)
        .ok_or_else(|| format!("invalid size {s:?}: too large"))?;
    if v == 0 {
        return Err(format!("invalid size {s:?}: must be more than zero"));
    }
    Ok(v)
}

/// Render bytes the way `parse_size` reads them back, exactly when possible.
pub fn format_size(v: u64) -> String {
    for (unit, m) in [
        ("TiB", 1u64 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ] {
        if v >= m && v % m == 0 {
            return format!("{}{unit}", v / m);
        }
    }
    format!("{v}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("64m"), Ok(64 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("2 TiB"), Ok(2 << 40));
        assert_eq!(parse_size("10GB"), Ok(10_000_000_000));
        assert_eq!(parse_size("5kb"), Ok(5000));
        assert_eq!(parse_size(" 512B "), Ok(512));
    }

    #[test]
    fn errors() {
        for bad in [
            "",
            "MiB",
            "-1",
            "1.5G",
            "12XB",
            "0",
            "0GiB",
            "99999999999999999999",
            "20000000TiB",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_size("12XB").unwrap_err().contains("unknown unit"));
    }

    #[test]
    fn format_round_trips() {
        for v in [1u64, 4096, 64 << 20, 1 << 30, 3 << 40, 1_000_000_007] {
            assert_eq!(parse_size(&format_size(v)), Ok(v));
        }
    }
}
