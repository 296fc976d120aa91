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
    let mut s = String::new();
    push_human(&mut s, bytes);
    s
}

/// Appends [`human`]`(bytes)` to `out`, without allocating.
pub fn push_human(out: &mut String, bytes: u64) {
    match human_scaled(bytes) {
        None => {
            push_u64(out, bytes);
            out.push_str(" B");
        }
        Some((v, unit)) => {
            push_fixed(out, v, 1);
            out.push(' ');
            out.push_str(unit);
        }
    }
}

/// The units [`human`] writes, each 1024 times the one before.
const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];

/// The number and unit [`human`] writes with one decimal; `None` under
/// 1 KiB, written as a whole number of bytes.
pub fn human_scaled(bytes: u64) -> Option<(f64, &'static str)> {
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    (i > 0).then_some((v, UNITS[i]))
}

/// `bytes` in tenths of the unit [`human`] writes it in, and the unit,
/// as `push_human` rounds it, in integers: for 1 KiB up to 2^53 bytes
/// (where the quotient a double holds is exact), and not for an exact
/// tie, which `format!` breaks to the even digit (left to
/// [`human_scaled`] and [`push_fixed`]). `None` for the others.
pub fn human_tenths(bytes: u64) -> Option<(u64, &'static str)> {
    if !(1024..1 << 53).contains(&bytes) {
        return None;
    }
    // Under 2^53: at most PiB.
    let unit = (63 - bytes.leading_zeros()) / 10;
    let shift = 10 * unit;
    // Below 2^57: no overflow.
    let scaled = bytes * 10;
    let (whole, rest) = (scaled >> shift, scaled & ((1 << shift) - 1));
    let half = 1 << (shift - 1);
    let name = *UNITS.get(usize::try_from(unit).ok()?)?;
    (rest != half).then_some((whole + u64::from(rest > half), name))
}

/// Appends `n` in decimal.
pub fn push_u64(out: &mut String, n: u64) {
    out.push_str(itoa::Buffer::new().format(n));
}

/// Appends `v` with `prec` decimals, exactly as `format!("{v:.prec$}")`
/// writes it (the correctly rounded decimal of the binary value, ties to
/// even), but quickly for the common case (see [`fixed_scaled`]); anything
/// else goes through `format!`.
pub fn push_fixed(out: &mut String, v: f64, prec: usize) {
    if let Some(r) = fixed_scaled(v, prec) {
        let p = POW10[prec];
        push_u64(out, r / p);
        if prec > 0 {
            out.push('.');
            // With `p` added, the fraction's digits are all there after a
            // leading 1, its zeros included.
            let mut buf = itoa::Buffer::new();
            out.push_str(&buf.format(r % p + p)[1..]);
        }
        return;
    }
    use std::fmt::Write;
    let _ = write!(out, "{v:.prec$}");
}

const POW10: [u64; 10] = [
    1,
    10,
    100,
    1_000,
    10_000,
    100_000,
    1_000_000,
    10_000_000,
    100_000_000,
    1_000_000_000,
];

/// `v·10^prec` rounded to an integer as `format!("{v:.prec$}")` rounds
/// it, for a non-negative `v` and `prec` under 10 whose scaled value is
/// clearly not near a rounding tie; `None` for the others, which need
/// `format!`'s exact arithmetic.
#[inline]
pub fn fixed_scaled(v: f64, prec: usize) -> Option<u64> {
    let &p = POW10.get(prec)?;
    // x is v·10^prec with one rounding: |x - v·10^prec| ≤ x·2^-53.
    // Rounding to an integer only changes at half-integers, so if none
    // lies within that error of x, x rounds as the exact value does.
    let x = v * p as f64;
    // From 2^52 on the margin below is over one half: no need to look.
    if !(v.is_sign_positive() && x < (1u64 << 52) as f64) {
        return None;
    }
    // The cast truncates, which for x ≥ 0 is the floor (and exact back as
    // a float), without the call `floor` is on baseline x86-64; to i64,
    // one instruction each way, where u64 takes a dozen.
    let whole = x as i64;
    let frac = x - whole as f64;
    let margin = x * f64::EPSILON + f64::MIN_POSITIVE;
    ((frac - 0.5).abs() > margin).then_some(whole as u64 + u64::from(frac > 0.5))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenths_are_what_push_human_writes() {
        let mut values = vec![
            1023,
            1024,
            1025,
            1280,
            1331,
            1332,
            1 << 20,
            (1 << 53) - 1,
            1 << 53,
        ];
        // Either side of every tenth's tie in each unit, and the ties.
        for shift in [10u32, 20, 30, 40, 50] {
            for tenth in [0u64, 1, 4, 5, 9, 10, 99, 9_995, 10_235, 10_239] {
                let tie = ((2 * tenth + 1) << shift) / 20;
                values.extend([tie.saturating_sub(1), tie, tie + 1]);
            }
        }
        let mut rng = crate::test_rng::XorShift(0x9e37_79b9_7f4a_7c15);
        for _ in 0..200_000 {
            let v = rng.next();
            values.push(v >> (v % 64));
        }
        let mut ties = 0;
        for bytes in values {
            let mut want = String::new();
            push_human(&mut want, bytes);
            match human_tenths(bytes) {
                Some((t, unit)) => {
                    assert_eq!(format!("{}.{} {unit}", t / 10, t % 10), want, "{bytes}")
                }
                None => ties += u64::from((1024..1 << 53).contains(&bytes)),
            }
        }
        assert!(ties > 0);
    }

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
        assert_eq!(human(0), "0 B");
        assert_eq!(human(u64::MAX), "16.0 EiB");
    }

    /// `push_fixed` writes what `format!` writes, ties and all.
    #[test]
    fn fixed_matches_format() {
        let mut rng = crate::test_rng::XorShift(0x9e37_79b9_7f4a_7c15);
        let mut next = move || rng.next();
        let mut values = vec![
            0.0,
            -0.0,
            0.05,
            0.15,
            0.25,
            0.35,
            0.45,
            0.5,
            1.5,
            2.5,
            9.95,
            99.95,
            999.9999995,
            0.0000005,
            0.0000015,
            1e-300,
            5e-324,
            1e11,
            1e12,
            1e15,
            1e300,
            -1.25,
            -0.04,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            100.0,
            33.333333333,
            1795258459.697058,
        ];
        for _ in 0..200_000 {
            let r = next();
            values.push(match r % 4 {
                0 => (r >> 11) as f64 / (1u64 << 53) as f64 * 100.0,
                1 => ((r >> 20) % 100_000_000) as f64 / 1e6,
                2 => ((r >> 20) % 100_000) as f64 / 1e3 + 0.0005,
                _ => f64::from_bits(r >> 2),
            });
        }
        let mut s = String::new();
        for v in values {
            for prec in [0, 1, 2, 6, 9, 12] {
                s.clear();
                push_fixed(&mut s, v, prec);
                assert_eq!(s, format!("{v:.prec$}"), "{v:e} .{prec}");
            }
        }
        for n in [0, 1, 9, 10, 1023, 1024, 1536, 1 << 20, u64::MAX] {
            s.clear();
            push_u64(&mut s, n);
            assert_eq!(s, n.to_string());
        }
    }
}
