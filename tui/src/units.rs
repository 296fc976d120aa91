//! Sizes and offsets as people type and read them.

/// `4096` → "4 KiB", `1536` → "1.5 KiB", `100` → "100 B".
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if value.fract() == 0.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// An offset as the goto prompt accepts it: decimal, `0x` hex, or a
/// number with a size suffix (`k`, `KiB`, `M`, `MB`… all binary, as for
/// `bmap lookup`), optionally with `s` for 512-byte sectors.
pub fn parse_offset(text: &str) -> Result<u64, String> {
    let t = text.trim().replace('_', "");
    if t.is_empty() {
        return Err("type an offset: 1048576, 0x100000, 1M, 2048s".into());
    }
    if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        return u64::from_str_radix(hex, 16).map_err(|_| format!("{text:?} is not a hex offset"));
    }
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (number, suffix) = t.split_at(split);
    let multiplier: u64 = match suffix.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "s" => 512,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => return Err(format!("unknown unit {other:?} in {text:?}")),
    };
    if number.contains('.') {
        let v: f64 = number
            .parse()
            .map_err(|_| format!("{text:?} is not a number"))?;
        let bytes = v * multiplier as f64;
        if !(0.0..1.8e19).contains(&bytes) {
            return Err(format!("{text:?} is out of range"));
        }
        return Ok(bytes as u64);
    }
    number
        .parse::<u64>()
        .map_err(|_| format!("{text:?} is not a number"))?
        .checked_mul(multiplier)
        .ok_or_else(|| format!("{text:?} is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_naturally() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(4096), "4 KiB");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(64 << 20), "64 MiB");
        assert_eq!(size(u64::MAX), "16 EiB");
    }

    #[test]
    fn offsets_in_every_spelling() {
        assert_eq!(parse_offset("1048576"), Ok(1 << 20));
        assert_eq!(parse_offset("0x100000"), Ok(1 << 20));
        assert_eq!(parse_offset("1M"), Ok(1 << 20));
        assert_eq!(parse_offset("1 MiB"), Ok(1 << 20));
        assert_eq!(parse_offset("1.5k"), Ok(1536));
        assert_eq!(parse_offset("2048s"), Ok(1 << 20));
        assert_eq!(parse_offset("1_000"), Ok(1000));
    }

    #[test]
    fn bad_offsets_say_why() {
        assert!(parse_offset("").is_err());
        assert!(parse_offset("0xzz").is_err());
        assert!(parse_offset("12 parsecs").unwrap_err().contains("unit"));
        assert!(parse_offset("99999999999T").unwrap_err().contains("range"));
        assert!(parse_offset("1e400").is_err());
    }
}
