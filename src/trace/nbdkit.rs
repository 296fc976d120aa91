//! nbdkit's log filter (`nbdkit --filter=log PLUGIN logfile=FILE`).
//!
//! Lines as nbdkit 1.32 writes them (checked against real logs):
//!
//! ```text
//! 2026-11-21 10:54:19.690630 Ready thread_model=3
//! 2026-11-21 10:54:19.696664 connection=1 Connect export="" tls=0 size=0x4000000 minsize=0x0 ...
//! 2026-11-21 10:54:19.697058 connection=1 Write id=1 offset=0x0 count=0x1000 fua=1 ...
//! 2026-11-21 10:54:19.697754 connection=1 ...Write id=1 return=0
//! 2026-11-21 10:54:19.697986 connection=1 Zero id=3 offset=0x4000 count=0x1000 trim=0 fua=1 fast=0 ...
//! 2026-11-21 10:54:19.698185 connection=1 Flush id=4 ...
//! 2026-11-21 10:54:21.443246 connection=1 Extents id=1 offset=0x0 count=0x4000000 req_one=0 ...
//! 2026-11-21 10:54:21.443268 connection=1 ...Extents id=1 extents=(0x0 0x1000 "" ...) return=0
//! 2026-11-21 10:54:23.726811 connection=1 ...Read id=1 return=-1 error=EIO
//! 2026-11-21 10:54:19.699572 connection=1 Disconnect transactions=6
//! ```
//!
//! A request (`Read`, `Write`, `Trim`, `Zero`, `Cache`, `Flush`, `Extents`)
//! is held until its completion (`...OP id=N return=R`) with the same
//! connection and id, then emitted with the time and line of the request
//! line; a non-zero return fills `failed` with the `error=` text. A
//! completion without a request is a [`Event::Warning`]. Requests left
//! pending when their connection disconnects, or at the end of the trace,
//! are emitted with `failed = "no completion in the trace"`. At most
//! [`MAX_PENDING`] requests may be pending; a request past that is an error
//! naming its line.
//!
//! Timestamps (`YYYY-MM-DD HH:MM:SS.ffffff`, nbdkit's local time) are read
//! as UTC seconds since the epoch. Request lines without one are accepted.
//! Timestamped lines not about requests (`Ready`, `Fork`, `Preconnect`,
//! `ListExports`…) are skipped; a line that is neither is an error naming
//! it.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::io::BufRead;

use crate::trace::{Event, LineReader, Op, Request, TraceError};

/// A quick hasher for the small integer keys of the in-flight table
/// (connection and id numbers): a multiply-rotate mix finished with
/// splitmix64's finaliser. The table is bounded, and the trace is the
/// user's own, so SipHash's flooding resistance is not worth its cost here.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(23) ^ v).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    fn write_usize(&mut self, v: usize) {
        self.write_u64(v as u64);
    }
}

type Table<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// Most requests awaiting their completion at once.
pub const MAX_PENDING: usize = 1_000_000;

const NO_COMPLETION: &str = "no completion in the trace";

#[derive(Debug, Clone, Copy, PartialEq)]
struct Pending {
    line: u64,
    time: Option<f64>,
    op: Op,
    offset: u64,
    length: u64,
    connection: Option<u64>,
}

impl Pending {
    fn into_request(self, failed: Option<String>) -> Request {
        Request {
            line: self.line,
            time: self.time,
            op: self.op,
            offset: self.offset,
            length: self.length,
            connection: self.connection,
            failed,
            metadata: false,
        }
    }
}

/// What one line says.
#[derive(Debug, PartialEq)]
enum Parsed {
    Skip,
    Request {
        id: u64,
        pending: Pending,
    },
    Completion {
        connection: Option<u64>,
        op: Op,
        id: u64,
        /// `None` on success, else the error text.
        failed: Option<String>,
    },
    Connect {
        size: u64,
    },
    Disconnect {
        connection: Option<u64>,
    },
}

pub struct Parser<R> {
    lines: LineReader<R>,
    /// connection → id → request awaiting its completion.
    pending: Table<Option<u64>, Table<u64, Pending>>,
    npending: usize,
    out: VecDeque<Result<Event, TraceError>>,
    last_size: Option<u64>,
    dates: DateCache,
    finished: bool,
}

impl<R: BufRead> Parser<R> {
    pub fn new(lines: LineReader<R>) -> Self {
        Parser {
            lines,
            pending: Table::default(),
            npending: 0,
            out: VecDeque::new(),
            last_size: None,
            dates: DateCache::default(),
            finished: false,
        }
    }

    /// Reads one line, queueing what it yields.
    fn step(&mut self) {
        let n = self.lines.line() + 1;
        let parsed = match self.lines.next_line() {
            None => {
                self.finish();
                return;
            }
            Some(Err(e)) => {
                let fatal = e.is_fatal();
                self.out.push_back(Err(e));
                if fatal {
                    self.finish();
                }
                return;
            }
            Some(Ok(l)) => parse_line(l, n, &mut self.dates),
        };
        match parsed {
            Err(e) => self.out.push_back(Err(e)),
            Ok(Parsed::Skip) => {}
            Ok(Parsed::Connect { size }) => {
                if self.last_size != Some(size) {
                    self.last_size = Some(size);
                    self.out.push_back(Ok(Event::DiskSize { line: n, size }));
                }
            }
            Ok(Parsed::Disconnect { connection }) => {
                if let Some(table) = self.pending.remove(&connection) {
                    self.npending -= table.len();
                    self.emit_unfinished(table.into_values().collect());
                }
            }
            Ok(Parsed::Request { id, pending }) => {
                let table = self.pending.entry(pending.connection).or_default();
                match table.entry(id) {
                    Entry::Occupied(mut e) => {
                        // nbdkit ids are unique per connection: the old one
                        // never completed.
                        let old = e.insert(pending);
                        self.out
                            .push_back(Ok(Event::Request(old.into_request(Some(format!(
                                "no completion before id {id} was reused at line {n}"
                            ))))));
                    }
                    Entry::Vacant(_) if self.npending >= MAX_PENDING => {
                        self.out.push_back(Err(TraceError::parse(
                            n,
                            format!("more than {MAX_PENDING} requests awaiting completion"),
                        )));
                    }
                    Entry::Vacant(e) => {
                        e.insert(pending);
                        self.npending += 1;
                    }
                }
            }
            Ok(Parsed::Completion {
                connection,
                op,
                id,
                failed,
            }) => match self.pending.get_mut(&connection).map(|t| t.entry(id)) {
                Some(Entry::Occupied(e)) if e.get().op == op => {
                    let p = e.remove();
                    self.npending -= 1;
                    self.out
                        .push_back(Ok(Event::Request(p.into_request(failed))));
                }
                Some(Entry::Occupied(e)) => {
                    let p = e.get();
                    let message = format!(
                        "completion of {} id={id}{} does not match the pending {} of line {}",
                        op.as_str(),
                        conn_text(connection),
                        p.op.as_str(),
                        p.line
                    );
                    self.out.push_back(Ok(Event::Warning { line: n, message }));
                }
                Some(Entry::Vacant(_)) | None => {
                    let message = format!(
                        "completion of {} id={id}{} without its request",
                        op.as_str(),
                        conn_text(connection)
                    );
                    self.out.push_back(Ok(Event::Warning { line: n, message }));
                }
            },
        }
    }

    fn emit_unfinished(&mut self, mut left: Vec<Pending>) {
        left.sort_by_key(|p| p.line);
        for p in left {
            self.out.push_back(Ok(Event::Request(
                p.into_request(Some(NO_COMPLETION.to_string())),
            )));
        }
    }

    fn finish(&mut self) {
        self.finished = true;
        let left: Vec<Pending> = self
            .pending
            .drain()
            .flat_map(|(_, t)| t.into_values())
            .collect();
        self.npending = 0;
        self.emit_unfinished(left);
    }
}

impl<R: BufRead> Iterator for Parser<R> {
    type Item = Result<Event, TraceError>;
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(e) = self.out.pop_front() {
                return Some(e);
            }
            if self.finished {
                return None;
            }
            self.step();
        }
    }
}

fn conn_text(c: Option<u64>) -> String {
    match c {
        Some(c) => format!(" on connection {c}"),
        None => String::new(),
    }
}

fn op_of(word: &[u8]) -> Option<Op> {
    Some(match word {
        b"Read" => Op::Read,
        b"Write" => Op::Write,
        b"Trim" => Op::Trim,
        b"Zero" => Op::Zero,
        b"Cache" => Op::Cache,
        b"Flush" => Op::Flush,
        b"Extents" => Op::Extents,
        _ => return None,
    })
}

/// Splits off the first space-separated word.
fn word(s: &[u8]) -> (&[u8], &[u8]) {
    let s = trim_start(s);
    match memchr::memchr(b' ', s) {
        Some(i) => (&s[..i], &s[i + 1..]),
        None => (s, &[]),
    }
}

fn trim_start(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    s
}

/// Space-separated tokens; a `"…"` or `'…'` (nbdkit's shell quoting) is part
/// of its token even if it holds spaces.
fn tokens(s: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = s;
    std::iter::from_fn(move || {
        rest = trim_start(rest);
        if rest.is_empty() {
            return None;
        }
        let mut i = 0;
        let mut quote = None;
        while i < rest.len() {
            let b = rest[i];
            match quote {
                None if b == b' ' || b == b'\t' => break,
                None if b == b'"' || b == b'\'' => quote = Some(b),
                Some(b'"') if b == b'\\' => i += 1,
                Some(q) if b == q => quote = None,
                _ => {}
            }
            i += 1;
        }
        let i = i.min(rest.len());
        let (t, r) = rest.split_at(i);
        rest = r;
        Some(t)
    })
}

/// Decimal or `0x` hex, by hand (this is on every request line).
fn num(s: &[u8]) -> Option<u64> {
    let (digits, radix) = match s {
        [b'0', b'x' | b'X', h @ ..] => (h, 16u64),
        _ => (s, 10u64),
    };
    if digits.is_empty() {
        return None;
    }
    let mut v: u64 = 0;
    for &b in digits {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' if radix == 16 => b - b'a' + 10,
            b'A'..=b'F' if radix == 16 => b - b'A' + 10,
            _ => return None,
        };
        v = v.checked_mul(radix)?.checked_add(u64::from(d))?;
    }
    Some(v)
}

fn field<'a>(tok: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    tok.strip_prefix(key)?.strip_prefix(b"=")
}

fn need(n: u64, v: Option<&[u8]>, key: &str) -> Result<u64, TraceError> {
    match v {
        None => Err(TraceError::parse(n, format!("missing {key}="))),
        Some(v) => num(v).ok_or_else(|| {
            TraceError::parse(
                n,
                format!(
                    "bad {key}={}",
                    String::from_utf8_lossy(&v[..v.len().min(40)])
                ),
            )
        }),
    }
}

fn parse_line(l: &[u8], n: u64, cache: &mut DateCache) -> Result<Parsed, TraceError> {
    let (time, rest) = match cache.timestamp(l) {
        Some((t, r)) => (Some(t), r),
        None => (None, l),
    };
    match quick(time, rest, n) {
        Some(p) => Ok(p),
        None => parse_rest(time, rest, n),
    }
}

/// The two lines that make up nearly every trace, as nbdkit writes them:
/// `connection=N OP id=N offset=0xH count=0xH [key=value…] ...` and
/// `connection=N ...OP id=N return=0`, read in one pass. Anything else
/// (another shape, quotes, tabs, doubled spaces, a repeated key, a bad or
/// overflowing number, a failure) is `None`, and [`parse_rest`] decides:
/// what this returns is what [`parse_rest`] would.
fn quick(time: Option<f64>, rest: &[u8], n: u64) -> Option<Parsed> {
    let rest = trim_start(rest).strip_prefix(b"connection=")?;
    let (connection, rest) = decimal_then_space(rest)?;
    let connection = Some(connection);
    if let Some(done) = rest.strip_prefix(b"...") {
        let (op, args) = op_word(done)?;
        let (id, args) = decimal_then_space(args.strip_prefix(b"id=")?)?;
        return (args == b"return=0").then_some(Parsed::Completion {
            connection,
            op,
            id,
            failed: None,
        });
    }
    let (op, args) = op_word(rest)?;
    if op == Op::Flush {
        return None;
    }
    let (id, args) = decimal_then_space(args.strip_prefix(b"id=")?)?;
    let (offset, args) = number_then_space(args.strip_prefix(b"offset=")?)?;
    let (length, mut args) = number_then_space(args.strip_prefix(b"count=")?)?;
    offset.checked_add(length)?;
    // The general tokenizer stops at the first "..." token; before it,
    // tokens must be plain (no quotes or tabs) and must not repeat a key
    // read above.
    loop {
        let end = args.iter().position(|&b| b == b' ').unwrap_or(args.len());
        let tok = &args[..end];
        if tok == b"..." {
            break;
        }
        if end == args.len()
            || tok.is_empty()
            || tok.iter().any(|&b| matches!(b, b'"' | b'\'' | b'\t'))
            || tok.starts_with(b"id=")
            || tok.starts_with(b"offset=")
            || tok.starts_with(b"count=")
        {
            return None;
        }
        args = &args[end + 1..];
    }
    Some(Parsed::Request {
        id,
        pending: Pending {
            line: n,
            time,
            op,
            offset,
            length,
            connection,
        },
    })
}

/// A request's name and what follows the space after it.
fn op_word(s: &[u8]) -> Option<(Op, &[u8])> {
    let end = s.iter().take(8).position(|&b| b == b' ')?;
    Some((op_of(&s[..end])?, &s[end + 1..]))
}

/// Decimal digits then a space: the number and what follows the space.
fn decimal_then_space(s: &[u8]) -> Option<(u64, &[u8])> {
    let mut v: u64 = 0;
    for (i, &b) in s.iter().enumerate() {
        match b {
            b'0'..=b'9' => v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?,
            b' ' if i > 0 => return Some((v, &s[i + 1..])),
            _ => return None,
        }
    }
    None
}

/// A number as [`num`] reads it (decimal or `0x` hex) then a space: the
/// number and what follows the space.
fn number_then_space(s: &[u8]) -> Option<(u64, &[u8])> {
    let Some(h) = s.strip_prefix(b"0x").or_else(|| s.strip_prefix(b"0X")) else {
        return decimal_then_space(s);
    };
    let mut v: u64 = 0;
    for (i, &b) in h.iter().enumerate() {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            b' ' if i > 0 => return Some((v, &h[i + 1..])),
            _ => return None,
        };
        if v >> 60 != 0 {
            return None;
        }
        v = (v << 4) | u64::from(d);
    }
    None
}

/// Everything after the timestamp, the general way.
fn parse_rest(time: Option<f64>, rest: &[u8], n: u64) -> Result<Parsed, TraceError> {
    let mut rest = trim_start(rest);
    let mut connection = None;
    if let Some(r) = rest.strip_prefix(b"connection=") {
        let (c, r) = word(r);
        connection = Some(need(n, Some(c), "connection")?);
        rest = r;
    }
    let (action, args) = word(rest);
    if let Some(done) = action.strip_prefix(b"...") {
        let Some(op) = op_of(done) else {
            return Ok(Parsed::Skip);
        };
        let mut id = None;
        let mut ret = None;
        let mut error = None;
        for t in tokens(args) {
            if id.is_none() {
                if let Some(v) = field(t, b"id") {
                    id = Some(v);
                    continue;
                }
            }
            if let Some(v) = field(t, b"return") {
                ret = Some(v);
            } else if let Some(v) = field(t, b"error") {
                error = Some(v);
            }
        }
        let id = need(n, id, "id")?;
        let ret = ret.ok_or_else(|| TraceError::parse(n, "missing return="))?;
        let ret: i64 = std::str::from_utf8(ret)
            .ok()
            .and_then(|r| r.parse().ok())
            .ok_or_else(|| TraceError::parse(n, "bad return="))?;
        let failed = if ret == 0 {
            None
        } else {
            Some(match error {
                Some(e) if !e.is_empty() => String::from_utf8_lossy(e).into_owned(),
                _ => format!("return={ret}"),
            })
        };
        return Ok(Parsed::Completion {
            connection,
            op,
            id,
            failed,
        });
    }
    if action == b"Connect" {
        for t in tokens(args) {
            if let Some(v) = field(t, b"size") {
                return Ok(Parsed::Connect {
                    size: need(n, Some(v), "size")?,
                });
            }
        }
        return Err(TraceError::parse(n, "Connect without size="));
    }
    if action == b"Disconnect" {
        return Ok(Parsed::Disconnect { connection });
    }
    let Some(op) = op_of(action) else {
        // nbdkit stamps every line it writes: an unknown line with a
        // timestamp is nbdkit's (Ready, Fork, Preconnect…); one without is
        // not from the log filter at all.
        if time.is_none() && !rest.is_empty() {
            return Err(TraceError::parse(n, "not an nbdkit log filter line"));
        }
        return Ok(Parsed::Skip);
    };
    let mut id = None;
    let mut offset = None;
    let mut count = None;
    let mut complete = false;
    for t in tokens(args) {
        if t == b"..." {
            complete = true;
            break;
        }
        if let Some(v) = field(t, b"id") {
            id = Some(v);
        } else if let Some(v) = field(t, b"offset") {
            offset = Some(v);
        } else if let Some(v) = field(t, b"count") {
            count = Some(v);
        }
    }
    if !complete {
        return Err(TraceError::parse(
            n,
            format!(
                "{} request without its trailing \"...\" (line cut short?)",
                op.as_str()
            ),
        ));
    }
    let id = need(n, id, "id")?;
    let (offset, length) = if op == Op::Flush {
        (0, 0)
    } else {
        (need(n, offset, "offset")?, need(n, count, "count")?)
    };
    if offset.checked_add(length).is_none() {
        return Err(TraceError::parse(
            n,
            format!("offset {offset:#x} + count {length:#x} overflows"),
        ));
    }
    Ok(Parsed::Request {
        id,
        pending: Pending {
            line: n,
            time,
            op,
            offset,
            length,
            connection,
        },
    })
}

/// Reads `YYYY-MM-DD HH:MM:SS[.frac]` at the start of `l`: seconds since
/// the epoch (as UTC) and the rest of the line.
fn timestamp(l: &[u8]) -> Option<(f64, &[u8])> {
    if l.len() < 19 || !l[0].is_ascii_digit() {
        return None;
    }
    let d = |r: std::ops::Range<usize>| -> Option<i64> {
        let s = &l[r];
        if s.iter().all(u8::is_ascii_digit) {
            Some(s.iter().fold(0i64, |a, &b| a * 10 + i64::from(b - b'0')))
        } else {
            None
        }
    };
    if l[4] != b'-' || l[7] != b'-' || l[10] != b' ' || l[13] != b':' || l[16] != b':' {
        return None;
    }
    let (y, mo, da) = (d(0..4)?, d(5..7)?, d(8..10)?);
    let (h, mi, s) = (d(11..13)?, d(14..16)?, d(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&da) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let (frac, rest) = fraction(&l[19..])?;
    let secs = days_from_civil(y, mo, da) * 86400 + h * 3600 + mi * 60 + s;
    Some((secs as f64 + frac, rest))
}

/// The last `YYYY-MM-DD HH:MM:SS` read and its seconds: consecutive lines
/// mostly share it, and comparing 19 bytes is quicker than reading them.
#[derive(Default)]
struct DateCache {
    text: [u8; 19],
    secs: f64,
}

/// `l` starts with `date` (three overlapping word compares, no call).
fn same_date(l: &[u8], date: &[u8; 19]) -> bool {
    fn word(s: &[u8], at: usize) -> u64 {
        let mut w = [0u8; 8];
        w.copy_from_slice(&s[at..at + 8]);
        u64::from_ne_bytes(w)
    }
    l.len() >= 19
        && word(l, 0) == word(date, 0)
        && word(l, 8) == word(date, 8)
        && word(l, 11) == word(date, 11)
}

impl DateCache {
    fn timestamp<'a>(&mut self, l: &'a [u8]) -> Option<(f64, &'a [u8])> {
        if self.text[0] != 0 && same_date(l, &self.text) {
            let (frac, rest) = fraction(&l[19..])?;
            return Some((self.secs + frac, rest));
        }
        let (t, rest) = timestamp(l)?;
        self.text.copy_from_slice(&l[..19]);
        self.secs = t.floor();
        Some((t, rest))
    }
}

/// `SCALES[i]` is the weight of the fraction's digit `i + 1` (1-based):
/// 0.1 divided by ten `i` times, exactly as [`fraction`] once computed it.
const SCALES: [f64; 10] = {
    let mut a = [0.1f64; 10];
    let mut i = 1;
    while i < a.len() {
        a[i] = a[i - 1] / 10.0;
        i += 1;
    }
    a
};

/// `[.digits]` then a space or the end: the fraction and the rest.
fn fraction(l: &[u8]) -> Option<(f64, &[u8])> {
    let mut i = 0;
    let mut frac = 0.0;
    if l.first() == Some(&b'.') {
        i = 1;
        let mut scale = 0.1;
        while let Some(&b) = l.get(i) {
            if !b.is_ascii_digit() {
                break;
            }
            frac += f64::from(b - b'0') * scale;
            // The same values as dividing by ten each time, without a
            // division per digit.
            scale = SCALES.get(i).copied().unwrap_or(scale / 10.0);
            i += 1;
        }
    }
    match l.get(i) {
        None | Some(b' ' | b'\t') => Some((frac, &l[i..])),
        _ => None,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// True if `line` looks like a line of nbdkit's log filter.
pub fn looks_like(line: &str) -> bool {
    let l = line.trim().as_bytes();
    let (ts, rest) = match timestamp(l) {
        Some((_, r)) => (true, trim_start(r)),
        None => (false, l),
    };
    let (conn, rest) = match rest.strip_prefix(b"connection=") {
        Some(r) => {
            let (c, r) = word(r);
            if num(c).is_none() {
                return false;
            }
            (true, r)
        }
        None => (false, rest),
    };
    let (action, args) = word(rest);
    let action = action.strip_prefix(b"...").unwrap_or(action);
    let known = matches!(
        action,
        b"Ready" | b"Fork" | b"Preconnect" | b"ListExports" | b"Connect" | b"Disconnect"
    );
    let request = op_of(action).is_some()
        && tokens(args)
            .next()
            .is_some_and(|t| field(t, b"id").is_some());
    ((ts || conn) && (known || request)) || (request && args.ends_with(b"..."))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::{events, Format, ParseOptions, MAX_LINE};

    fn run(text: &str) -> Vec<Result<Event, TraceError>> {
        events(Format::Nbdkit, text.as_bytes(), &ParseOptions::default()).collect()
    }

    fn req(e: &Result<Event, TraceError>) -> &Request {
        match e {
            Ok(Event::Request(r)) => r,
            other => panic!("not a request: {other:?}"),
        }
    }

    const REAL: &str = "\
2026-11-21 10:54:19.690630 Ready thread_model=3
2026-11-21 10:54:19.691116 Fork
2026-11-21 10:54:19.696430 Preconnect id=1 readonly=0 ...
2026-11-21 10:54:19.696443 ...Preconnect id=1 return=0
2026-11-21 10:54:19.696664 connection=1 Connect export=\"\" tls=0 size=0x4000000 minsize=0x0 prefsize=0x0 maxsize=0x0 write=1 flush=1 rotational=0 trim=1 zero=2 fua=2 extents=1 cache=2 fast_zero=0
2026-11-21 10:54:19.697058 connection=1 Write id=1 offset=0x0 count=0x1000 fua=1 ...
2026-11-21 10:54:19.697754 connection=1 ...Write id=1 return=0
2026-11-21 10:54:19.697857 connection=1 Trim id=2 offset=0x2000 count=0x1000 fua=0 ...
2026-11-21 10:54:19.697884 connection=1 ...Trim id=2 return=0
2026-11-21 10:54:19.697986 connection=1 Zero id=3 offset=0x4000 count=0x1000 trim=0 fua=1 fast=0 ...
2026-11-21 10:54:19.698114 connection=1 ...Zero id=3 return=0
2026-11-21 10:54:19.698185 connection=1 Flush id=4 ...
2026-11-21 10:54:19.698265 connection=1 ...Flush id=4 return=0
2026-11-21 10:54:19.698363 connection=1 Read id=5 offset=0x0 count=0x200 ...
2026-11-21 10:54:19.698375 connection=1 ...Read id=5 return=-1 error=EIO
2026-11-21 10:54:21.443246 connection=1 Extents id=6 offset=0x0 count=0x4000000 req_one=0 ...
2026-11-21 10:54:21.443268 connection=1 ...Extents id=6 extents=(0x0 0x1000 \"\" 0x1000 0x3fff000 \"hole,zero\") return=0
2026-11-21 10:54:21.443300 connection=1 Cache id=7 offset=0x1000 count=0x1000 ...
2026-11-21 10:54:21.443310 connection=1 ...Cache id=7 return=0
2026-11-21 10:54:19.699572 connection=1 Disconnect transactions=7
";

    #[test]
    fn real_log() {
        let ev = run(REAL);
        assert_eq!(ev.len(), 8, "{ev:?}");
        assert!(matches!(
            ev[0],
            Ok(Event::DiskSize {
                line: 5,
                size: 0x4000000
            })
        ));
        let ops: Vec<_> = ev[1..].iter().map(|e| req(e).op).collect();
        assert_eq!(
            ops,
            [
                Op::Write,
                Op::Trim,
                Op::Zero,
                Op::Flush,
                Op::Read,
                Op::Extents,
                Op::Cache
            ]
        );
        let w = req(&ev[1]);
        assert_eq!(
            (w.line, w.offset, w.length, w.connection),
            (6, 0, 4096, Some(1))
        );
        assert!(w.failed.is_none());
        // 2026-11-21 10:54:19 UTC
        assert!((w.time.unwrap() - 1_795_258_459.697058).abs() < 1e-5);
        let t = req(&ev[2]);
        assert_eq!((t.offset, t.length), (0x2000, 0x1000));
        let f = req(&ev[4]);
        assert_eq!((f.offset, f.length, f.line), (0, 0, 12));
        let r = req(&ev[5]);
        assert_eq!(r.failed.as_deref(), Some("EIO"));
        assert_eq!(req(&ev[6]).length, 0x4000000);
    }

    #[test]
    fn civil_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11017);
        assert_eq!(days_from_civil(2024, 2, 29), 19782);
        let (t, rest) = timestamp(b"2023-11-14 22:13:20.5 Fork").unwrap();
        assert_eq!(t, 1_700_000_000.5);
        assert_eq!(rest, b" Fork");
        assert!(timestamp(b"2023-13-14 22:13:20 Fork").is_none());
        assert!(timestamp(b"2023-11-14 22:13").is_none());
    }

    #[test]
    fn interleaved_connections() {
        let ev = run("\
connection=1 Read id=1 offset=0x0 count=0x200 ...
connection=2 Read id=1 offset=0x1000 count=0x200 ...
connection=2 Write id=2 offset=0x2000 count=0x200 fua=0 ...
connection=1 ...Read id=1 return=0
connection=2 ...Write id=2 return=0
connection=2 ...Read id=1 return=0
");
        let got: Vec<_> = ev
            .iter()
            .map(|e| {
                let r = req(e);
                (r.line, r.connection, r.offset, r.time)
            })
            .collect();
        assert_eq!(
            got,
            [
                (1, Some(1), 0, None),
                (3, Some(2), 0x2000, None),
                (2, Some(2), 0x1000, None)
            ]
        );
    }

    #[test]
    fn unpaired_and_pending() {
        let ev = run("\
2026-11-21 10:54:19.697058 connection=1 ...Read id=9 return=0
2026-11-21 10:54:19.697058 connection=1 Read id=1 offset=0x0 count=0x200 ...
2026-11-21 10:54:19.697058 connection=2 Read id=1 offset=0x0 count=0x200 ...
2026-11-21 10:54:19.697058 connection=1 ...Write id=1 return=0
2026-11-21 10:54:19.697058 connection=2 Disconnect transactions=1
");
        assert_eq!(ev.len(), 4, "{ev:?}");
        assert!(matches!(&ev[0], Ok(Event::Warning { line: 1, .. })));
        assert!(
            matches!(&ev[1], Ok(Event::Warning { line: 4, message }) if message.contains("does not match"))
        );
        let r = req(&ev[2]);
        assert_eq!((r.line, r.failed.as_deref()), (3, Some(NO_COMPLETION)));
        let r = req(&ev[3]);
        assert_eq!((r.line, r.failed.as_deref()), (2, Some(NO_COMPLETION)));
    }

    #[test]
    fn errors_name_their_line_and_parsing_goes_on() {
        let ev = run("\
connection=1 Read id=1 offset=0xffffffffffffffff count=0x200 ...
connection=1 Read id=2 offset=0x0 cou
connection=1 Read id=3 offset=zz count=0x200 ...
connection=1 ...Read id=3 retur
garbage \u{0} \u{ff}
connection=x Read
connection=1 Read id=4 offset=0x10 count=0x10 ...
connection=1 ...Read id=4 return=0
");
        let lines: Vec<_> = ev
            .iter()
            .map(|e| match e {
                Err(TraceError::Parse { line, .. }) => *line,
                Ok(Event::Request(r)) => 100 + r.line,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(lines, [1, 2, 3, 4, 5, 6, 107]);
    }

    #[test]
    fn long_line_without_newline() {
        let mut data = b"connection=1 Read id=1 offset=0x0 count=0x200 ...\n".to_vec();
        data.extend(std::iter::repeat_n(b'a', 5 << 20));
        let ev: Vec<_> = events(Format::Nbdkit, &data[..], &ParseOptions::default()).collect();
        assert!(matches!(
            ev[0],
            Err(TraceError::LineTooLong {
                line: 2,
                max: MAX_LINE
            })
        ));
        assert_eq!(req(&ev[1]).failed.as_deref(), Some(NO_COMPLETION));
        assert_eq!(ev.len(), 2);
    }

    #[test]
    fn id_reuse_and_quoted_export() {
        let ev = run("\
connection=1 Connect export=\"a size=0x5 \\\" b\" tls=0 size=0x1000 minsize=0x0
connection=1 Read id=1 offset=0x0 count=0x200 ...
connection=1 Read id=1 offset=0x200 count=0x200 ...
connection=1 ...Read id=1 return=0
");
        assert!(matches!(
            ev[0],
            Ok(Event::DiskSize {
                line: 1,
                size: 0x1000
            })
        ));
        assert_eq!(req(&ev[1]).line, 2);
        assert!(req(&ev[1])
            .failed
            .as_deref()
            .unwrap()
            .contains("reused at line 3"));
        assert_eq!(req(&ev[2]).offset, 0x200);
    }

    /// The quick path reads what the general one reads, or leaves the
    /// line to it: every line one edit away from the common shapes.
    #[test]
    fn quick_path_agrees_with_the_general_one() {
        let templates: [&[u8]; 6] = [
            b"connection=1 Read id=12 offset=0x1f000 count=0x1000 ...",
            b"connection=2 Write id=3 offset=0xfffffffffffff000 count=0x1000 fua=1 ...",
            b"connection=1 Zero id=3 offset=0x4000 count=0x1000 trim=0 fua=1 fast=0 ...",
            b"connection=1 ...Read id=12 return=0",
            b"connection=3 ...Write id=7 return=-1 error=EIO",
            b"connection=1 Read id=1 offset=4096 count=512 ... x",
        ];
        let alphabet = b" \t\"'.=x0179afAF-";
        let mut variants: Vec<Vec<u8>> = Vec::new();
        for t in templates {
            variants.push(t.to_vec());
            for i in 0..=t.len() {
                variants.push([&t[..i], t.get(i + 1..).unwrap_or(&[])].concat());
                for &c in alphabet {
                    variants.push([&t[..i], &[c][..], &t[i..]].concat());
                    if i < t.len() {
                        variants.push([&t[..i], &[c][..], &t[i + 1..]].concat());
                    }
                }
            }
            for k in [
                "id=9",
                "offset=0x1",
                "count=0x1",
                "...",
                "\"a b\"",
                "\"... \"",
            ] {
                let cut = t.len() - 3;
                variants.push([&t[..cut], k.as_bytes(), b" ", &t[cut..]].concat());
            }
        }
        let mut quick_ones = 0;
        for v in &variants {
            if let Some(q) = quick(Some(1.5), v, 7) {
                quick_ones += 1;
                let general = parse_rest(Some(1.5), v, 7).map_err(|e| e.to_string());
                assert_eq!(Ok(q), general, "{}", String::from_utf8_lossy(v));
            }
        }
        assert!(quick_ones > 100, "{quick_ones}");
    }

    #[test]
    fn detection() {
        for l in REAL.lines() {
            assert!(looks_like(l), "{l}");
        }
        assert!(!looks_like(
            "blk_co_preadv blk 0x1 bs 0x2 offset 0 bytes 4096 flags 0x0"
        ));
        assert!(!looks_like("0,read,0,4096"));
        assert!(!looks_like("Ready"));
    }
}
