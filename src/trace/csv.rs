//! A plain CSV trace: `time,op,offset,length`, one request a line.
//!
//! ```text
//! time,op,offset,length
//! 0.25,read,0,4096
//! ,write,0x100000,0x1000
//! 1.5,flush,,
//! ```
//!
//! The header line is optional (and skipped wherever it appears); `time`
//! may be empty; `op` is one of [`Op::parse`]'s names (read, write,
//! trim/discard, zero, cache, flush, extents…, any case); `offset` and
//! `length` are decimal or `0x` hex, and may be empty for a flush. Columns
//! past the fourth are ignored. Blank lines and lines starting with `#` are
//! skipped.
//!
//! Lines are read by the bounded [`LineReader`] (so line numbers are exact
//! and no line is held past [`crate::trace::MAX_LINE`]); a line with a quote
//! is split by the `csv` crate, a line without one (the common case) by
//! hand, which gives the same fields without the per-line set-up.

use std::io::BufRead;

use csv::ByteRecord;

use crate::trace::{Event, LineReader, Op, Request, TraceError};

pub struct Parser<R> {
    lines: LineReader<R>,
    record: ByteRecord,
    finished: bool,
}

impl<R: BufRead> Parser<R> {
    pub fn new(lines: LineReader<R>) -> Self {
        Parser {
            lines,
            record: ByteRecord::new(),
            finished: false,
        }
    }
}

impl<R: BufRead> Iterator for Parser<R> {
    type Item = Result<Event, TraceError>;
    fn next(&mut self) -> Option<Self::Item> {
        while !self.finished {
            let n = self.lines.line() + 1;
            let r = match self.lines.next_line() {
                None => {
                    self.finished = true;
                    return None;
                }
                Some(Err(e)) => {
                    self.finished = e.is_fatal();
                    return Some(Err(e));
                }
                Some(Ok(l)) => parse_line(l, n, &mut self.record),
            };
            match r {
                Ok(None) => continue,
                Ok(Some(r)) => return Some(Ok(Event::Request(r))),
                Err(e) => return Some(Err(e)),
            }
        }
        None
    }
}

/// Up to the first five fields of a line (the fifth only tells there are
/// more than four), trimmed.
struct Fields<'a> {
    f: [&'a [u8]; 5],
    count: usize,
}

fn trim(s: &[u8]) -> &[u8] {
    s.trim_ascii()
}

fn split<'a>(l: &'a [u8], record: &'a mut ByteRecord, n: u64) -> Result<Fields<'a>, TraceError> {
    let mut f = Fields {
        f: [&[][..]; 5],
        count: 0,
    };
    if memchr::memchr(b'"', l).is_none() {
        for (i, part) in l.split(|&b| b == b',').enumerate() {
            if i < 5 {
                f.f[i] = trim(part);
            }
            f.count = i + 1;
        }
        return Ok(f);
    }
    // The csv crate takes an unclosed quote to the end of the input; here
    // that is a line cut short (a doubled `""` keeps the count even).
    if memchr::memchr_iter(b'"', l).count() % 2 == 1 {
        return Err(TraceError::parse(n, "unclosed quote (line cut short?)"));
    }
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .buffer_capacity(l.len() + 1)
        .from_reader(l);
    match rdr.read_byte_record(record) {
        Ok(true) => {}
        Ok(false) => return Ok(f),
        Err(e) => return Err(TraceError::parse(n, format!("bad CSV: {e}"))),
    }
    for (i, part) in record.iter().enumerate() {
        if i < 5 {
            f.f[i] = trim(part);
        }
        f.count = i + 1;
    }
    Ok(f)
}

/// `op` by name, case-insensitive: the names [`Op::parse`] knows, without
/// its allocation.
fn op_of(s: &[u8]) -> Option<Op> {
    const NAMES: [(&[u8], Op); 13] = [
        (b"read", Op::Read),
        (b"r", Op::Read),
        (b"write", Op::Write),
        (b"w", Op::Write),
        (b"trim", Op::Trim),
        (b"discard", Op::Trim),
        (b"d", Op::Trim),
        (b"zero", Op::Zero),
        (b"write_zeroes", Op::Zero),
        (b"cache", Op::Cache),
        (b"flush", Op::Flush),
        (b"f", Op::Flush),
        (b"extents", Op::Extents),
    ];
    if s.eq_ignore_ascii_case(b"block_status") {
        return Some(Op::Extents);
    }
    NAMES
        .iter()
        .find(|(name, _)| s.eq_ignore_ascii_case(name))
        .map(|&(_, op)| op)
}

fn num(s: &[u8]) -> Option<u64> {
    let (digits, radix) = match s {
        [b'0', b'x' | b'X', h @ ..] => (h, 16),
        _ => (s, 10),
    };
    if digits.is_empty() || !digits.iter().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(digits).ok()?, radix).ok()
}

fn lossy(s: &[u8]) -> String {
    String::from_utf8_lossy(&s[..s.len().min(40)]).into_owned()
}

fn is_header(f: &Fields) -> bool {
    f.count >= 2 && f.f[1].eq_ignore_ascii_case(b"op")
}

fn parse_line(l: &[u8], n: u64, record: &mut ByteRecord) -> Result<Option<Request>, TraceError> {
    let t = trim(l);
    if t.is_empty() || t.starts_with(b"#") {
        return Ok(None);
    }
    let f = split(l, record, n)?;
    if is_header(&f) {
        return Ok(None);
    }
    if f.count < 4 {
        return Err(TraceError::parse(
            n,
            format!(
                "{} field{}, not time,op,offset,length",
                f.count,
                if f.count == 1 { "" } else { "s" }
            ),
        ));
    }
    let [time, op, offset, length, _] = f.f;
    let time = if time.is_empty() {
        None
    } else {
        let t: Option<f64> = std::str::from_utf8(time).ok().and_then(|t| t.parse().ok());
        match t {
            Some(t) if t.is_finite() => Some(t),
            _ => return Err(TraceError::parse(n, format!("bad time {}", lossy(time)))),
        }
    };
    let op = op_of(op).ok_or_else(|| TraceError::parse(n, format!("unknown op {}", lossy(op))))?;
    let value = |s: &[u8], what: &str| -> Result<u64, TraceError> {
        if s.is_empty() && op == Op::Flush {
            return Ok(0);
        }
        num(s).ok_or_else(|| TraceError::parse(n, format!("bad {what} {:?}", lossy(s))))
    };
    let offset = value(offset, "offset")?;
    let length = value(length, "length")?;
    if offset.checked_add(length).is_none() {
        return Err(TraceError::parse(
            n,
            format!("offset {offset} + length {length} overflows"),
        ));
    }
    Ok(Some(Request {
        line: n,
        time,
        op,
        offset,
        length,
        connection: None,
        failed: None,
        metadata: false,
    }))
}

/// True if `line` looks like the CSV header or a CSV row.
pub fn looks_like(line: &str) -> bool {
    let mut record = ByteRecord::new();
    let Ok(f) = split(line.as_bytes(), &mut record, 0) else {
        return false;
    };
    if f.count < 4 {
        return false;
    }
    if is_header(&f) && f.f[0].eq_ignore_ascii_case(b"time") {
        return true;
    }
    let numeric = |s: &[u8]| s.is_empty() || num(s).is_some();
    op_of(f.f[1]).is_some() && numeric(f.f[2]) && numeric(f.f[3])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::{events, Format, ParseOptions, MAX_LINE};

    fn run(text: &str) -> Vec<Result<Event, TraceError>> {
        events(Format::Csv, text.as_bytes(), &ParseOptions::default()).collect()
    }

    fn req(e: &Result<Event, TraceError>) -> &Request {
        match e {
            Ok(Event::Request(r)) => r,
            other => panic!("not a request: {other:?}"),
        }
    }

    #[test]
    fn with_and_without_header() {
        let body = "0.25,read,0,4096\n,Write,0x100000,0x1000\r\n1.5,flush,,\n\n# note\n\"2\",\"trim\",\"8192\",\"512\",extra\n";
        for (text, first) in [
            (format!("time,op,offset,length\n{body}"), 2),
            (body.to_string(), 1),
        ] {
            let ev = run(&text);
            let got: Vec<_> = ev
                .iter()
                .map(|e| {
                    let r = req(e);
                    (r.line, r.time, r.op, r.offset, r.length)
                })
                .collect();
            assert_eq!(
                got,
                [
                    (first, Some(0.25), Op::Read, 0, 4096),
                    (first + 1, None, Op::Write, 0x100000, 0x1000),
                    (first + 2, Some(1.5), Op::Flush, 0, 0),
                    (first + 5, Some(2.0), Op::Trim, 8192, 512),
                ]
            );
        }
    }

    #[test]
    fn op_names_match_op_parse() {
        for name in [
            "read",
            "R",
            "write",
            "w",
            "trim",
            "discard",
            "D",
            "zero",
            "write_zeroes",
            "cache",
            "flush",
            "F",
            "extents",
            "BLOCK_STATUS",
            "nope",
            "",
        ] {
            assert_eq!(op_of(name.as_bytes()), Op::parse(name), "{name}");
        }
    }

    #[test]
    fn errors_name_their_line() {
        let ev = run("\
1,read,18446744073709551615,1
1,read,0,40
1,read,4096
garbage \u{ff}
x,read,0,1
1,jump,0,1
1,read,-1,1
1,write,,1
1,read,0,\"4096
nan,read,0,1
1,read,0x,1
1,read,0x10,0x10
");
        let lines: Vec<_> = ev
            .iter()
            .map(|e| match e {
                Err(TraceError::Parse { line, .. }) => *line,
                Ok(Event::Request(r)) => 100 + r.line,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(lines, [1, 102, 3, 4, 5, 6, 7, 8, 9, 10, 11, 112]);
    }

    #[test]
    fn long_line() {
        let mut data = b"1,read,0,1\n".to_vec();
        data.extend(std::iter::repeat_n(b',', 5 << 20));
        let ev: Vec<_> = events(Format::Csv, &data[..], &ParseOptions::default()).collect();
        assert_eq!(req(&ev[0]).line, 1);
        assert!(matches!(
            ev[1],
            Err(TraceError::LineTooLong {
                line: 2,
                max: MAX_LINE
            })
        ));
        assert_eq!(ev.len(), 2);
    }

    #[test]
    fn detection() {
        assert!(looks_like("time,op,offset,length"));
        assert!(looks_like("0.5,read,0,4096"));
        assert!(looks_like(",flush,,"));
        assert!(!looks_like("0.5,jump,0,4096"));
        assert!(!looks_like(
            "4 KiB, 1 ops; 00.00 sec (20.754 MiB/sec and 5312.9317 ops/sec)"
        ));
        assert!(!looks_like(
            "  8,0    3        1     0.000000000  1234  Q   R 2048 + 8 [x]"
        ));
    }
}
