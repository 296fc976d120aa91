//! blkparse's default text output (`blktrace -d DEV -o - | blkparse -i -`).
//!
//! ```text
//!   8,0    3        1     0.000000000  1234  Q   R 2048 + 8 [qemu-system-x86]
//!   8,0    3        4     0.000012000  1234  D  RM 4096 + 16 [kworker]
//!   8,0    3        5     0.000100000     0  C   R 2048 + 8 [0]
//!   8,0    3        6     0.000200000   321  D FWS [jbd2/sda1-8]
//!   8,0    3        2     0.000001000  1234  A   R 2048 + 8 <- (8,1) 0
//!   8,0    3        3     0.000002000  1234  P   N [qemu-system-x86]
//! ```
//!
//! Fields: `maj,min cpu seq sec.nsec pid ACTION RWBS [sector + count]
//! [(elapsed)] [comm]` (`[error]` for completions). Only lines of one action
//! are requests: [`ParseOptions::blkparse_action`], `D` (issued to the
//! device) by default. Sectors are 512 bytes, relative to the traced device;
//! [`ParseOptions::blkparse_offset`] is added. `time` is blkparse's
//! `sec.nsec`, relative to the start of the trace.
//!
//! RWBS (as blkparse writes it): an optional leading `F` (pre-flush), then
//! `R` read, `W` write, `D` discard (→ trim) or `N` (no data), then flags:
//! `F` FUA, `A` readahead, `S` sync, `M` metadata (→ `metadata`), `E`
//! secure erase. A flush with no data (`FWS`, `FN`, `F` with no sector) is
//! an [`Op::Flush`] at offset 0, length 0. `N` lines without a flush are not
//! requests; neither are packet commands (`D   R 36 (12 00 …) [comm]`).
//! A completion's non-zero `[error]` fills `failed`: requests are held
//! (in issue order, at most [`WINDOW`] of them) until their `C` line with
//! the same operation, sector and count, so a failed I/O is not counted as
//! data read.
//!
//! Lines that do not start with `maj,min` (the per-CPU summary blkparse
//! prints at the end: `CPU0 (8,0):`, ` Reads Queued: …`, `Total (8,0):`,
//! `Throughput (R/W): …`, `Events (8,0): …`) are skipped. Requests come from
//! the first device seen; other devices' lines are skipped with one warning
//! each.

use std::collections::VecDeque;
use std::io::BufRead;

use crate::trace::{Event, LineReader, Op, ParseOptions, Request, TraceError};

/// `maj,min`.
type Device = (u32, u32);

/// Most other devices remembered for their one warning each.
const MAX_OTHERS: usize = 64;

pub struct Parser<R> {
    lines: LineReader<R>,
    action: Vec<u8>,
    offset: u64,
    device: Option<(u32, u32)>,
    others: Vec<(u32, u32)>,
    out: VecDeque<Result<Event, TraceError>>,
    /// Requests not yet emitted, in issue order, each with whether its
    /// completion has been seen; see [`WINDOW`].
    window: VecDeque<(Request, bool)>,
    finished: bool,
}

/// Requests are held back until their completion (`C`) line, so a failed
/// completion can mark its request failed, but never more than this many:
/// a trace without completions still streams, and memory stays bounded.
pub const WINDOW: usize = 4096;

/// How far into the window a completion looks for its request.
const MAX_IN_FLIGHT: usize = 1024;

impl<R: BufRead> Parser<R> {
    pub fn new(lines: LineReader<R>, opts: &ParseOptions) -> Self {
        let action = match opts.blkparse_action.as_deref().map(str::trim) {
            None | Some("") => b"D".to_vec(),
            Some(a) => a.as_bytes().to_vec(),
        };
        Parser {
            lines,
            action,
            offset: opts.blkparse_offset,
            device: None,
            others: Vec::new(),
            out: VecDeque::new(),
            window: VecDeque::new(),
            finished: false,
        }
    }

    /// Moves finished requests (and any beyond the window) to the output,
    /// keeping issue order.
    fn drain(&mut self, all: bool) {
        while let Some((_, done)) = self.window.front() {
            if !(*done || all || self.window.len() > WINDOW) {
                break;
            }
            if let Some((r, _)) = self.window.pop_front() {
                self.out.push_back(Ok(Event::Request(r)));
            }
        }
    }

    fn step(&mut self) -> Option<Result<Event, TraceError>> {
        let n = self.lines.line() + 1;
        let parsed = match self.lines.next_line() {
            None => {
                self.finished = true;
                self.drain(true);
                return None;
            }
            Some(Err(e)) => {
                if e.is_fatal() {
                    self.finished = true;
                    self.drain(true);
                }
                return Some(Err(e));
            }
            Some(Ok(l)) => parse_line(l, n, &self.action, self.offset),
        };
        let (dev, r, is_completion) = match parsed {
            Err(e) => return Some(Err(e)),
            Ok(None) => return None,
            Ok(Some(Line::Request(dev, r))) => (dev, r, false),
            Ok(Some(Line::Completion(dev, r))) => (dev, r, true),
        };
        match self.device {
            None if is_completion => return None,
            None => self.device = Some(dev),
            Some(d) if d == dev => {}
            Some(_) if is_completion => return None,
            Some(d) => {
                if self.others.contains(&dev) || self.others.len() >= MAX_OTHERS {
                    return None;
                }
                self.others.push(dev);
                return Some(Ok(Event::Warning {
                    line: n,
                    message: format!(
                        "requests of device {},{} skipped: the trace's device is {},{}",
                        dev.0, dev.1, d.0, d.1
                    ),
                }));
            }
        }
        if is_completion {
            // A device has at most a few hundred requests in flight; looking
            // further would let unmatched completions cost quadratic time.
            let pending = self
                .window
                .iter_mut()
                .take(MAX_IN_FLIGHT)
                .find(|(p, done)| {
                    !done && p.op == r.op && p.offset == r.offset && p.length == r.length
                });
            if let Some((p, done)) = pending {
                *done = true;
                p.failed = r.failed;
            }
        } else {
            self.window.push_back((r, false));
        }
        self.drain(false);
        None
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
            if let Some(e) = self.step() {
                return Some(e);
            }
        }
    }
}

fn is_space(b: &u8) -> bool {
    *b == b' ' || *b == b'\t'
}

fn dec(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    s.iter().try_fold(0u64, |a, &b| {
        a.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

fn device(s: &[u8]) -> Option<(u32, u32)> {
    let comma = memchr::memchr(b',', s)?;
    let maj = u32::try_from(dec(&s[..comma])?).ok()?;
    let min = u32::try_from(dec(&s[comma + 1..])?).ok()?;
    Some((maj, min))
}

/// `sec.nsec` as seconds.
fn seconds(s: &[u8]) -> Option<f64> {
    let (a, b) = match memchr::memchr(b'.', s) {
        Some(i) => (&s[..i], &s[i + 1..]),
        None => (s, &[][..]),
    };
    let whole = dec(a)?;
    let mut frac = 0.0;
    let mut scale = 0.1;
    for &d in b {
        if !d.is_ascii_digit() {
            return None;
        }
        frac += f64::from(d - b'0') * scale;
        scale /= 10.0;
    }
    Some(whole as f64 + frac)
}

/// What RWBS says the request is.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Data(Op),
    /// No data (`N`), pre-flush or not.
    None,
}

/// Parses RWBS: (kind, pre-flush, metadata).
fn rwbs(s: &[u8]) -> Option<(Kind, bool, bool)> {
    let (preflush, rest) = match s.split_first() {
        Some((b'F', r)) => (true, r),
        Some(_) => (false, s),
        None => return None,
    };
    let (kind, flags) = match rest.split_first() {
        None if preflush => (Kind::None, rest),
        None => return None,
        Some((b'R', f)) => (Kind::Data(Op::Read), f),
        Some((b'W', f)) => (Kind::Data(Op::Write), f),
        Some((b'D', f)) => (Kind::Data(Op::Trim), f),
        Some((b'N', f)) => (Kind::None, f),
        Some(_) => return None,
    };
    if !flags.iter().all(u8::is_ascii_uppercase) {
        return None;
    }
    Some((kind, preflush, flags.contains(&b'M')))
}

fn err(n: u64, msg: impl Into<String>) -> TraceError {
    TraceError::parse(n, msg)
}

fn lossy(s: &[u8]) -> String {
    String::from_utf8_lossy(&s[..s.len().min(40)]).into_owned()
}

/// What a line says about requests of the chosen action.
enum Line {
    Request(Device, Request),
    /// The completion (`C`) of a request of another action: its error
    /// decides whether that request failed.
    Completion(Device, Request),
}

fn parse_line(l: &[u8], n: u64, action: &[u8], base: u64) -> Result<Option<Line>, TraceError> {
    let mut it = l.split(is_space).filter(|t| !t.is_empty());
    let Some(dev) = it.next().and_then(device) else {
        return Ok(None);
    };
    let mut fields = [&[][..]; 5];
    for (i, f) in fields.iter_mut().enumerate() {
        *f = it.next().ok_or_else(|| {
            let what = ["cpu", "sequence number", "time", "pid", "action"][i];
            err(n, format!("no {what} (line cut short?)"))
        })?;
    }
    let [_cpu, _seq, time, _pid, act] = fields;
    let completion = act == b"C" && action != b"C";
    if act != action && !completion {
        return Ok(None);
    }
    let time = seconds(time).ok_or_else(|| err(n, format!("bad time {}", lossy(time))))?;
    let rw = it
        .next()
        .ok_or_else(|| err(n, "no RWBS (line cut short?)"))?;
    let (kind, preflush, metadata) =
        rwbs(rw).ok_or_else(|| err(n, format!("bad RWBS {}", lossy(rw))))?;
    // [sector + count]
    let mut next = it.next();
    let mut range = None;
    if let Some(t) = next {
        if !t.starts_with(b"[") && !t.starts_with(b"(") {
            let sector = dec(t).ok_or_else(|| err(n, format!("bad sector {}", lossy(t))))?;
            match it.next() {
                Some(b"+") => {}
                Some(p) if p.starts_with(b"(") => return Ok(None), // packet command
                Some(p) => {
                    return Err(err(
                        n,
                        format!("expected '+' after the sector, not {}", lossy(p)),
                    ))
                }
                None => return Err(err(n, "no '+ count' after the sector (line cut short?)")),
            }
            let c = it
                .next()
                .ok_or_else(|| err(n, "no count (line cut short?)"))?;
            let count = dec(c).ok_or_else(|| err(n, format!("bad count {}", lossy(c))))?;
            range = Some((sector, count));
            next = it.next();
        }
    }
    // What follows: `(elapsed)`, then `[comm]` or `[error]`, or `<- (maj,min) sector`.
    let mut error = None;
    let mut rest = next;
    loop {
        match rest {
            None => return Err(err(n, "no [comm] at the end (line cut short?)")),
            Some(t) if t.starts_with(b"(") => {
                // `(elapsed)`, maybe padded: `(     123)`.
                let mut t = t;
                while !t.contains(&b')') {
                    match it.next() {
                        Some(u) => t = u,
                        None => return Err(err(n, "unclosed '(' (line cut short?)")),
                    }
                }
                rest = it.next();
            }
            Some(t) if t.starts_with(b"[") => {
                if act == b"C" {
                    let e = t.strip_prefix(b"[").and_then(|e| e.strip_suffix(b"]"));
                    error = e.and_then(|e| {
                        let (neg, d) = match e.split_first() {
                            Some((b'-', d)) => (true, d),
                            _ => (false, e),
                        };
                        dec(d).map(|v| (neg, v))
                    });
                }
                break;
            }
            Some(_) => break, // `<-` of a remap, or anything blkparse adds
        }
    }
    let (op, offset, length) = match (kind, range) {
        _ if preflush && range.is_none_or(|(_, c)| c == 0) => (Op::Flush, 0, 0),
        (Kind::None, _) | (_, None) => return Ok(None),
        (Kind::Data(op), Some((sector, count))) => {
            let offset = sector
                .checked_mul(512)
                .and_then(|o| o.checked_add(base))
                .ok_or_else(|| err(n, format!("sector {sector} overflows")))?;
            let length = count
                .checked_mul(512)
                .ok_or_else(|| err(n, format!("count {count} overflows")))?;
            if offset.checked_add(length).is_none() {
                return Err(err(n, format!("sector {sector} + {count} overflows")));
            }
            (op, offset, length)
        }
    };
    let failed = match error {
        Some((_, 0)) | None => None,
        Some((neg, e)) => Some(errno_text(neg, e)),
    };
    let r = Request {
        line: n,
        time: Some(time),
        op,
        offset,
        length,
        connection: None,
        failed,
        metadata,
    };
    Ok(Some(if completion {
        Line::Completion(dev, r)
    } else {
        Line::Request(dev, r)
    }))
}

fn errno_text(neg: bool, e: u64) -> String {
    let name = match e {
        5 => " (EIO)",
        28 => " (ENOSPC)",
        61 => " (ENODATA)",
        95 => " (EOPNOTSUPP)",
        110 => " (ETIMEDOUT)",
        _ => "",
    };
    format!("error {}{e}{name}", if neg { "-" } else { "" })
}

/// True if `line` looks like blkparse's default output.
pub fn looks_like(line: &str) -> bool {
    let mut it = line.split_ascii_whitespace();
    let ok = (|| {
        device(it.next()?.as_bytes())?;
        dec(it.next()?.as_bytes())?; // cpu
        dec(it.next()?.as_bytes())?; // sequence
        seconds(it.next()?.as_bytes())?;
        dec(it.next()?.as_bytes())?; // pid
        let act = it.next()?;
        if act.is_empty() || act.len() > 2 || !act.bytes().all(|b| b.is_ascii_alphabetic()) {
            return None;
        }
        Some(())
    })();
    ok.is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::{events, Format, MAX_LINE};

    const TRACE: &str = "\
  8,0    3        1     0.000000000  1234  Q   R 2048 + 8 [qemu-system-x86]
  8,0    3        2     0.000001000  1234  A   R 2048 + 8 <- (8,1) 0
  8,0    3        3     0.000002000  1234  P   N [qemu-system-x86]
  8,0    3        4     0.000012000  1234  D  RM 4096 + 16 [kworker]
  8,0    3        5     0.000013000  1234  U   N [qemu-system-x86] 1
  8,0    3        6     0.000014000  1234  D  WS 100 + 8 (     123) [kworker]
  8,0    3        7     0.000100000     0  C   R 2048 + 8 [0]
  8,0    3        8     0.000200000     0  C  WS 100 + 8 (     186) [-5]
  8,0    3        9     0.000300000   321  D FWS [jbd2/sda1-8]
  8,0    3       10     0.000400000   321  D   D 0 + 2048 [fstrim]
  8,0    3       11     0.000500000   321  D   R 36 (12 00 00 00 24 00) [sg_inq]
  8,0    3       12     0.000600000   321  D   N 0 + 0 [x]
  8,0    3       13     0.000700000   321  D FWFS 64 + 8 [jbd2/sda1-8]
CPU3 (8,0):
 Reads Queued:           1,        4KiB\t Writes Queued:           0,        0KiB
 Read Dispatches:        1,        8KiB\t Write Dispatches:        1,        4KiB
Total (8,0):
 Reads Queued:           1,        4KiB\t Writes Queued:           0,        0KiB

Throughput (R/W): 40000KiB/s / 0KiB/s
Events (8,0): 13 entries
Skips: 0 forward (0 -   0.0%)
";

    fn run(text: &str, opts: &ParseOptions) -> Vec<Result<Event, TraceError>> {
        events(Format::Blkparse, text.as_bytes(), opts).collect()
    }

    fn req(e: &Result<Event, TraceError>) -> &Request {
        match e {
            Ok(Event::Request(r)) => r,
            other => panic!("not a request: {other:?}"),
        }
    }

    #[test]
    fn issued_by_default() {
        let ev = run(TRACE, &ParseOptions::default());
        let got: Vec<_> = ev
            .iter()
            .map(|e| {
                let r = req(e);
                (r.line, r.op, r.offset, r.length, r.metadata)
            })
            .collect();
        assert_eq!(
            got,
            [
                (4, Op::Read, 4096 * 512, 16 * 512, true),
                (6, Op::Write, 100 * 512, 8 * 512, false),
                (9, Op::Flush, 0, 0, false),
                (10, Op::Trim, 0, 2048 * 512, false),
                (13, Op::Write, 64 * 512, 8 * 512, false),
            ]
        );
        assert_eq!(req(&ev[0]).time, Some(0.000012));
    }

    #[test]
    fn other_actions_and_offset() {
        let opts = ParseOptions {
            blkparse_action: Some("C".into()),
            blkparse_offset: 1 << 20,
        };
        let ev = run(TRACE, &opts);
        assert_eq!(ev.len(), 2);
        let r = req(&ev[0]);
        assert_eq!(
            (r.line, r.offset, r.failed.as_deref()),
            (7, (1 << 20) + 2048 * 512, None)
        );
        let r = req(&ev[1]);
        assert_eq!((r.line, r.failed.as_deref()), (8, Some("error -5 (EIO)")));
        let opts = ParseOptions {
            blkparse_action: Some("Q".into()),
            ..Default::default()
        };
        let ev = run(TRACE, &opts);
        assert_eq!(ev.len(), 1);
        assert_eq!(req(&ev[0]).line, 1);
        let opts = ParseOptions {
            blkparse_action: Some("A".into()),
            ..Default::default()
        };
        assert_eq!(req(&run(TRACE, &opts)[0]).line, 2);
    }

    #[test]
    fn errors_name_their_line() {
        let text = "\
  8,0    3        1     0.000000000  1234  D   R 36028797018963968 + 8 [x]
  8,0    3        2     0.000000000  1234  D   R 2048 + 8
  8,0    3        3     0.000000000  1234  D   R 2048 +
  8,0    3        4     0.000000000  1234  D   R 2048
  8,0    3        5     0.000000000  1234  D   Q 2048 + 8 [x]
  8,0    3        6     0.0000x0000  1234  D   R 2048 + 8 [x]
  8,0    3        7     0.000000000
  8,0    3        8     0.000000000  1234  D   R 2048 - 8 [x]
  8,0    3        9     0.000000000  1234  D   R 2048 + 99999999999999999999 [x]
garbage \u{ff}
  8,0    3       11     0.000000000  1234  D   R 2048 + 8 [x]
";
        let ev = run(text, &ParseOptions::default());
        let lines: Vec<_> = ev
            .iter()
            .map(|e| match e {
                Err(TraceError::Parse { line, .. }) => *line,
                Ok(Event::Request(r)) => 100 + r.line,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(lines, [1, 2, 3, 4, 5, 6, 7, 8, 9, 111]);
        let opts = ParseOptions {
            blkparse_offset: u64::MAX - 100,
            ..Default::default()
        };
        assert!(matches!(
            run(text, &opts)[9],
            Err(TraceError::Parse { line: 11, .. })
        ));
    }

    #[test]
    fn other_devices() {
        let ev = run(
            "  8,0 0 1 0.1 1 D R 0 + 8 [a]\n  8,16 0 2 0.2 1 D R 0 + 8 [a]\n  8,16 0 3 0.3 1 D R 0 + 8 [a]\n  8,0 0 4 0.4 1 D W 8 + 8 [a]\n",
            &ParseOptions::default(),
        );
        // Requests wait for their completion (none here) until the end;
        // the warning does not.
        assert_eq!(ev.len(), 3);
        assert!(matches!(ev[0], Ok(Event::Warning { line: 2, .. })));
        assert_eq!(req(&ev[1]).line, 1);
        assert_eq!(req(&ev[2]).line, 4);
    }

    #[test]
    fn long_line() {
        let mut data = TRACE.lines().nth(3).unwrap().as_bytes().to_vec();
        data.push(b'\n');
        data.extend(std::iter::repeat_n(b' ', 5 << 20));
        let ev: Vec<_> = events(Format::Blkparse, &data[..], &ParseOptions::default()).collect();
        assert_eq!(req(&ev[1]).line, 1);
        assert!(matches!(
            ev[0],
            Err(TraceError::LineTooLong {
                line: 2,
                max: MAX_LINE
            })
        ));
        assert_eq!(ev.len(), 2);
    }

    #[test]
    fn detection() {
        for l in TRACE.lines().take(13) {
            assert!(looks_like(l), "{l}");
        }
        assert!(!looks_like("CPU3 (8,0):"));
        assert!(!looks_like("0.5,read,0,4096"));
        assert!(!looks_like(
            "blk_co_preadv blk 0x1 bs 0x2 offset 0 bytes 1 flags 0x0"
        ));
    }
}
