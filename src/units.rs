//! Numbers as users type them (`0x1a2b000`, `4096`, `64K`, `1.5GiB`) and
//! sizes as humans read them.

/// Parses a byte count or offset: decimal or `0x` hex, optionally followed
/// by a size suffix (K, M, G, T, P, E; with or without `i`/`B`; all binary:
/// 1K = 1024) or `s` for 512-byte sectors.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("empty number".into());
    }
    let (num, mult) = if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        (
            u64::from_str_radix(hex, 16).map_err(|e| format!("{s:?}: {e}"))?,
            1u64,
        )
    } else {
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (digits, suffix) = t.split_at(split);
        let num: u64 = digits
            .parse()
            .map_err(|_| format!("{s:?} is not a number"))?;
        let mult = match suffix.to_ascii_uppercase().as_str() {
            "" | "B" => 1,
            "S" => 512,
            "K" | "KB" | "KIB" => 1 << 10,
            "M" | "MB" | "MIB" => 1 << 20,
            "G" | "GB" | "GIB" => 1 << 30,
            "T" | "TB" | "TIB" => 1 << 40,
            "P" | "PB" | "PIB" => 1 << 50,
            "E" | "EB" | "EIB" => 1 << 60,
            _ => return Err(format!("{s:?}: unknown size suffix {suffix:?}")),
        };
        (num, mult)
    };
    num.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} does not fit in 64 bits"))
}

/// `OFFSET[+LEN]`.
pub fn parse_range(s: &str) -> Result<(u64, Option<u64>), String> {
    match s.split_once('+') {
        Some((o, l)) => Ok((parse_size(o)?, Some(parse_size(l)?))),
        None => Ok((parse_size(s)?, None)),
    }
}

/// 1536 -> "1.5 KiB".
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        assert_eq!(parse_size("0x1a2b000"), Ok(0x1a2b000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("2MiB"), Ok(2 << 20));
        assert_eq!(parse_size("3s"), Ok(1536));
        assert!(parse_size("16E").is_err());
        assert!(parse_size("12Q").is_err());
        assert_eq!(parse_range("0x1000+4K"), Ok((4096, Some(4096))));
    }

    #[test]
    fn humanises() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(1536), "1.5 KiB");
    }
}
