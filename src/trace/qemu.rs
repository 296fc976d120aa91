//! qemu's block-layer trace events, log backend (`qemu-io --trace
//! 'blk_co_p*' …`, `qemu-system-x86_64 -trace blk_co_preadv …`).
//!
//! Lines as qemu 10.0 prints them (checked against `qemu-io` and the format
//! strings in its binary), with and without the `PID@SEC.USEC:` prefix that
//! `-msg timestamp=on` adds:
//!
//! ```text
//! blk_co_preadv blk 0x55f9d17ba5b0 bs 0x55f9d17adb20 offset 0 bytes 4096 flags 0x0
//! 12345@1700000000.123456:blk_co_pwritev blk 0x55f9d17ba5b0 bs 0x55f9d17adb20 offset 8192 bytes 4096 flags 0x2
//! ```
//!
//! `blk_co_preadv` is a read, `blk_co_pwritev` a write, or a zero write when
//! its flags have `BDRV_REQ_ZERO_WRITE` (0x2, what `qemu-io -c "write -z"`
//! gives). qemu 10 has no blk-level trace event for discards or flushes;
//! `blk_co_pwrite_zeroes`, `blk_co_pdiscard` and `blk_co_flush` lines are
//! read too, should a qemu print them. Other lines (the traced program's own
//! output on the same stderr, other trace events such as `bdrv_*`, which
//! describe a lower layer) are skipped. qemu's trace has no completions:
//! `failed` is always `None`.
//!
//! # qemu's format probe
//!
//! Without an explicit format, qemu first reads the start of the image
//! through a temporary BlockBackend (its own `blk` pointer) to guess the
//! format, before the device's BlockBackend starts. Those reads are not the
//! guest's. The rule, bounded:
//!
//! * the requests of the first `blk` pointer are held back while they are
//!   at most [`PROBE_MAX`] reads, each ending below [`PROBE_END`];
//! * if a request from a different `blk` then arrives, the held ones are
//!   dropped with one [`Event::Warning`] naming their lines (they were the
//!   probe), and the new `blk` is the device;
//! * otherwise (a fifth request, a write, a read past 64 KiB, or the end of
//!   the trace) the first `blk` is the device and the held requests are
//!   emitted as normal.
//!
//! After that, requests from any `blk` other than the device's are skipped,
//! with one warning per new pointer (another disk, or a qemu-internal
//! user such as a block job). The caveat: a trace of a VM with an explicit
//! format and several disks whose first disk reads only its first sectors
//! before another disk is touched would lose those few reads (with the
//! warning saying so).

use std::collections::{HashSet, VecDeque};
use std::io::BufRead;

use crate::trace::{Event, LineReader, Op, Request, TraceError};

/// Most requests held back as a possible format probe.
pub const PROBE_MAX: usize = 4;
/// Probe reads end at or below this byte.
pub const PROBE_END: u64 = 64 * 1024;
/// Most other `blk` pointers remembered for their one warning each.
const MAX_OTHERS: usize = 1024;

/// `BDRV_REQ_ZERO_WRITE` in `blk_co_pwritev`'s flags.
const REQ_ZERO_WRITE: u64 = 0x2;

enum State {
    Start,
    Probing { blk: u64, held: Vec<Request> },
    Device(u64),
}

pub struct Parser<R> {
    lines: LineReader<R>,
    state: State,
    others: HashSet<u64>,
    others_full: bool,
    out: VecDeque<Result<Event, TraceError>>,
    finished: bool,
}

impl<R: BufRead> Parser<R> {
    pub fn new(lines: LineReader<R>) -> Self {
        Parser {
            lines,
            state: State::Start,
            others: HashSet::new(),
            others_full: false,
            out: VecDeque::new(),
            finished: false,
        }
    }

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
            Some(Ok(l)) => parse_line(l, n),
        };
        match parsed {
            Err(e) => self.out.push_back(Err(e)),
            Ok(None) => {}
            Ok(Some((blk, r))) => self.request(blk, r),
        }
    }

    fn request(&mut self, blk: u64, r: Request) {
        let probe_like = r.op == Op::Read && r.offset + r.length <= PROBE_END;
        match &mut self.state {
            State::Start => {
                if probe_like {
                    let mut held = Vec::with_capacity(PROBE_MAX);
                    held.push(r);
                    self.state = State::Probing { blk, held };
                } else {
                    self.state = State::Device(blk);
                    self.emit(r);
                }
            }
            State::Probing { blk: first, held } if *first == blk => {
                if probe_like && held.len() < PROBE_MAX {
                    held.push(r);
                } else {
                    let held = std::mem::take(held);
                    self.state = State::Device(blk);
                    for h in held {
                        self.emit(h);
                    }
                    self.emit(r);
                }
            }
            State::Probing { blk: first, held } => {
                let lines: Vec<String> = held.iter().map(|h| h.line.to_string()).collect();
                let message = format!(
                    "dropped {} read{} at line{} {} as qemu's format probe (blk {:#x}; the device's blk is {:#x})",
                    held.len(),
                    if held.len() == 1 { "" } else { "s" },
                    if held.len() == 1 { "" } else { "s" },
                    lines.join(", "),
                    first,
                    blk
                );
                self.out.push_back(Ok(Event::Warning {
                    line: held[0].line,
                    message,
                }));
                self.state = State::Device(blk);
                self.emit(r);
            }
            State::Device(dev) if *dev == blk => self.emit(r),
            State::Device(dev) => {
                let dev = *dev;
                if self.others.contains(&blk) || self.others_full {
                    return;
                }
                let message = if self.others.len() >= MAX_OTHERS {
                    self.others_full = true;
                    format!(
                        "requests from more than {MAX_OTHERS} other blk pointers: skipped without further warnings"
                    )
                } else {
                    self.others.insert(blk);
                    format!(
                        "requests from blk {blk:#x} skipped: not the device's blk {dev:#x} (another disk, or qemu itself)"
                    )
                };
                self.out.push_back(Ok(Event::Warning {
                    line: r.line,
                    message,
                }));
            }
        }
    }

    fn emit(&mut self, r: Request) {
        self.out.push_back(Ok(Event::Request(r)));
    }

    fn finish(&mut self) {
        self.finished = true;
        if let State::Probing { blk, held } = &mut self.state {
            let held = std::mem::take(held);
            self.state = State::Device(*blk);
            for h in held {
                self.emit(h);
            }
        }
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

/// Splits `PID@SEC.USEC:` off the start of `l`: the time and the rest.
fn prefix(l: &[u8]) -> Option<(f64, &[u8])> {
    let at = memchr::memchr(b'@', l)?;
    if at == 0 || !l[..at].iter().all(u8::is_ascii_digit) {
        return None;
    }
    let colon = at + 1 + memchr::memchr(b':', &l[at + 1..])?;
    let t = &l[at + 1..colon];
    let dot = memchr::memchr(b'.', t)?;
    if dot == 0
        || dot + 1 == t.len()
        || !t[..dot].iter().all(u8::is_ascii_digit)
        || !t[dot + 1..].iter().all(u8::is_ascii_digit)
    {
        return None;
    }
    let time: f64 = std::str::from_utf8(t).ok()?.parse().ok()?;
    time.is_finite().then_some((time, &l[colon + 1..]))
}

/// The op of a `blk_co_*` trace event, `None` for other names.
fn event_op(name: &[u8]) -> Option<Op> {
    Some(match name {
        b"blk_co_preadv" => Op::Read,
        b"blk_co_pwritev" => Op::Write,
        b"blk_co_pwrite_zeroes" => Op::Zero,
        b"blk_co_pdiscard" => Op::Trim,
        b"blk_co_flush" => Op::Flush,
        _ => return None,
    })
}

fn pointer(s: &[u8]) -> Option<u64> {
    if s == b"(nil)" {
        return Some(0);
    }
    let h = s.strip_prefix(b"0x")?;
    u64::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok()
}

fn number(s: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(s).ok()?;
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None if s.bytes().all(|b| b.is_ascii_digit()) => s.parse().ok(),
        None => None,
    }
}

/// Splits a trace line into its event name and arguments, or `None` if it is
/// not a trace event line (program output).
fn split_event(l: &[u8]) -> Option<(Option<f64>, &[u8], &[u8])> {
    let (time, rest) = match prefix(l) {
        Some((t, r)) => (Some(t), r),
        None => (None, l),
    };
    let (name, args) = match memchr::memchr(b' ', rest) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    Some((time, name, args))
}

/// One line: `Ok(None)` if not a request of a `blk_co_*` event.
fn parse_line(l: &[u8], n: u64) -> Result<Option<(u64, Request)>, TraceError> {
    let Some((time, name, args)) = split_event(l) else {
        return Ok(None);
    };
    let Some(mut op) = event_op(name) else {
        return Ok(None);
    };
    let bad =
        |what: &str| TraceError::parse(n, format!("{}: {what}", String::from_utf8_lossy(name)));
    let mut blk = None;
    let mut offset = None;
    let mut bytes = None;
    let mut flags = None;
    let mut it = args.split(|&b| b == b' ').filter(|t| !t.is_empty());
    while let Some(key) = it.next() {
        let Some(value) = it.next() else {
            return Err(bad(&format!(
                "{} without a value (line cut short?)",
                String::from_utf8_lossy(&key[..key.len().min(40)])
            )));
        };
        let slot = match key {
            b"blk" => {
                blk = Some(pointer(value).ok_or_else(|| bad("bad blk pointer"))?);
                continue;
            }
            b"bs" => continue,
            b"offset" => &mut offset,
            b"bytes" => &mut bytes,
            b"flags" => &mut flags,
            _ => continue,
        };
        *slot = Some(number(value).ok_or_else(|| {
            bad(&format!(
                "bad {} {}",
                String::from_utf8_lossy(key),
                String::from_utf8_lossy(&value[..value.len().min(40)])
            ))
        })?);
    }
    let blk = blk.ok_or_else(|| bad("missing blk"))?;
    let (offset, length) = match (offset, bytes) {
        (Some(o), Some(b)) => (o, b),
        (None, None) if op == Op::Flush => (0, 0),
        (None, _) => return Err(bad("missing offset")),
        (_, None) => return Err(bad("missing bytes (line cut short?)")),
    };
    if op == Op::Write && flags.unwrap_or(0) & REQ_ZERO_WRITE != 0 {
        op = Op::Zero;
    }
    if offset.checked_add(length).is_none() {
        return Err(bad(&format!("offset {offset} + bytes {length} overflows")));
    }
    Ok(Some((
        blk,
        Request {
            line: n,
            time,
            op,
            offset,
            length,
            connection: None,
            failed: None,
            metadata: false,
        },
    )))
}

/// True if `line` is one of the `blk_co_*` trace events this parser reads.
pub fn looks_like(line: &str) -> bool {
    match split_event(line.trim().as_bytes()) {
        Some((_, name, args)) => event_op(name).is_some() && args.starts_with(b"blk "),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::{events, Format, ParseOptions, MAX_LINE};

    fn run(text: &str) -> Vec<Result<Event, TraceError>> {
        events(Format::Qemu, text.as_bytes(), &ParseOptions::default()).collect()
    }

    fn req(e: &Result<Event, TraceError>) -> &Request {
        match e {
            Ok(Event::Request(r)) => r,
            other => panic!("not a request: {other:?}"),
        }
    }

    /// `qemu-io --trace 'blk_co_*' -f raw IMG -c "read 0 4096" -c "write 4096
    /// 4096" -c "write -z 8192 4096" -c "discard 0 4096" -c flush -c
    /// "aio_write 0 512"`, stderr and stdout together.
    const RAW: &str = "\
blk_co_preadv blk 0x55f9d17ba5b0 bs 0x55f9d17adb20 offset 0 bytes 4096 flags 0x0
blk_co_pwritev blk 0x55f9d17ba5b0 bs 0x55f9d17adb20 offset 4096 bytes 4096 flags 0x0
blk_co_pwritev blk 0x55f9d17ba5b0 bs 0x55f9d17adb20 offset 8192 bytes 4096 flags 0x2
blk_co_pwritev blk 0x55f9d17ba5b0 bs 0x55f9d17adb20 offset 0 bytes 512 flags 0x0
read 4096/4096 bytes at offset 0
4 KiB, 1 ops; 00.00 sec (20.754 MiB/sec and 5312.9317 ops/sec)
wrote 4096/4096 bytes at offset 4096
";

    #[test]
    fn real_output() {
        let ev = run(RAW);
        let got: Vec<_> = ev
            .iter()
            .map(|e| {
                let r = req(e);
                (r.line, r.op, r.offset, r.length, r.time)
            })
            .collect();
        assert_eq!(
            got,
            [
                (1, Op::Read, 0, 4096, None),
                (2, Op::Write, 4096, 4096, None),
                (3, Op::Zero, 8192, 4096, None),
                (4, Op::Write, 0, 512, None)
            ]
        );
    }

    #[test]
    fn timestamp_prefix() {
        let ev = run("12345@1700000000.123456:blk_co_preadv blk 0x1 bs 0x2 offset 1048576 bytes 512 flags 0x0\n\
                      12345@1700000001.000001:blk_co_pdiscard blk 0x1 bs 0x2 offset 0 bytes 512\n\
                      12345@1700000001.000002:blk_co_flush blk 0x1 bs 0x2\n");
        let r = req(&ev[0]);
        assert_eq!(
            (r.op, r.offset, r.time),
            (Op::Read, 1 << 20, Some(1_700_000_000.123456))
        );
        assert_eq!(req(&ev[1]).op, Op::Trim);
        assert_eq!((req(&ev[2]).op, req(&ev[2]).length), (Op::Flush, 0));
    }

    /// `qemu-io --trace 'blk_co_p*' -r IMG -c "read 8192 512"`: the first
    /// line is the format probe.
    #[test]
    fn probe_dropped() {
        let ev = run("\
blk_co_preadv blk 0x5608f32961a0 bs 0x5608f3290e80 offset 0 bytes 512 flags 0x0
blk_co_preadv blk 0x5608f32968e0 bs 0x5608f3288b00 offset 8192 bytes 512 flags 0x0
read 512/512 bytes at offset 8192
blk_co_preadv blk 0x5608f32961a0 bs 0x5608f3290e80 offset 0 bytes 512 flags 0x0
blk_co_preadv blk 0x77 bs 0x5608f3290e80 offset 0 bytes 512 flags 0x0
blk_co_preadv blk 0x77 bs 0x5608f3290e80 offset 0 bytes 512 flags 0x0
");
        assert_eq!(ev.len(), 4, "{ev:?}");
        assert!(
            matches!(&ev[0], Ok(Event::Warning { line: 1, message }) if message.contains("probe") && message.contains("line 1"))
        );
        assert_eq!((req(&ev[1]).line, req(&ev[1]).offset), (2, 8192));
        assert!(matches!(&ev[2], Ok(Event::Warning { line: 4, .. })));
        assert!(matches!(&ev[3], Ok(Event::Warning { line: 5, .. })));
    }

    #[test]
    fn probe_kept() {
        // Buffer full: five small reads of one blk, then another blk.
        let mut t = String::new();
        for _ in 0..5 {
            t.push_str("blk_co_preadv blk 0x1 bs 0x2 offset 0 bytes 512 flags 0x0\n");
        }
        t.push_str("blk_co_preadv blk 0x9 bs 0x2 offset 0 bytes 512 flags 0x0\n");
        let ev = run(&t);
        assert_eq!(
            ev.iter()
                .filter(|e| matches!(e, Ok(Event::Request(_))))
                .count(),
            5
        );
        // A write confirms the device.
        let ev = run(
            "blk_co_preadv blk 0x1 bs 0x2 offset 0 bytes 512 flags 0x0\n\
                      blk_co_pwritev blk 0x1 bs 0x2 offset 0 bytes 512 flags 0x0\n\
                      blk_co_preadv blk 0x9 bs 0x2 offset 0 bytes 512 flags 0x0\n",
        );
        assert_eq!(req(&ev[0]).line, 1);
        assert_eq!(req(&ev[1]).line, 2);
        assert!(matches!(ev[2], Ok(Event::Warning { line: 3, .. })));
        // A read past 64 KiB confirms the device.
        let ev = run(
            "blk_co_preadv blk 0x1 bs 0x2 offset 0 bytes 512 flags 0x0\n\
                      blk_co_preadv blk 0x1 bs 0x2 offset 65536 bytes 512 flags 0x0\n",
        );
        assert_eq!(ev.len(), 2);
        // End of trace.
        let ev = run("blk_co_preadv blk 0x1 bs 0x2 offset 0 bytes 512 flags 0x0\n");
        assert_eq!(req(&ev[0]).line, 1);
    }

    #[test]
    fn errors_name_their_line() {
        let ev = run("\
blk_co_preadv blk 0x1 bs 0x2 offset 18446744073709551615 bytes 4096 flags 0x0
blk_co_preadv blk 0x1 bs 0x2 offset 0 byt
blk_co_preadv blk 0x1 bs 0x2 offset -5 bytes 1 flags 0x0
blk_co_preadv blk zz bs 0x2 offset 0 bytes 1 flags 0x0
blk_co_preadv bs 0x2 offset 0 bytes 1 flags 0x0
blk_co_preadv
\u{ff}\u{0} garbage
blk_co_pwritev blk 0x1 bs 0x2 offset 65536 bytes 1 flags 0x0
");
        let lines: Vec<_> = ev
            .iter()
            .map(|e| match e {
                Err(TraceError::Parse { line, .. }) => *line,
                Ok(Event::Request(r)) => 100 + r.line,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(lines, [1, 2, 3, 4, 5, 6, 108]);
    }

    #[test]
    fn long_line() {
        let mut data = b"blk_co_pwritev blk 0x1 bs 0x2 offset 65536 bytes 1 flags 0x0\n".to_vec();
        data.extend(std::iter::repeat_n(b'x', 5 << 20));
        let ev: Vec<_> = events(Format::Qemu, &data[..], &ParseOptions::default()).collect();
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
        assert!(looks_like(RAW.lines().next().unwrap()));
        assert!(looks_like(
            "1@2.3:blk_co_pwritev blk 0x1 bs 0x2 offset 0 bytes 1 flags 0x0"
        ));
        assert!(!looks_like("read 4096/4096 bytes at offset 0"));
        assert!(!looks_like(
            "bdrv_co_preadv_part bs 0x1 offset 0 bytes 1 flags 0x0"
        ));
    }
}

#[cfg(test)]
mod detect_tests {
    use crate::trace::{detect, Format};

    fn det(text: &str) -> Option<Format> {
        let lines: Vec<&[u8]> = text.lines().map(str::as_bytes).collect();
        detect(&lines)
    }

    #[test]
    fn each_format_from_its_real_first_lines() {
        assert_eq!(
            det("2026-11-21 10:54:19.690630 Ready thread_model=3\n2026-11-21 10:54:19.691116 Fork\n"),
            Some(Format::Nbdkit)
        );
        assert_eq!(
            det("2026-11-21 10:54:19.691116 Fork\n"),
            Some(Format::Nbdkit)
        );
        assert_eq!(
            det("2026-11-21 10:54:19.696430 Preconnect id=1 readonly=0 ...\n"),
            Some(Format::Nbdkit)
        );
        assert_eq!(
            det("qemu-io: warning: something\nread 512/512 bytes at offset 8192\n512 bytes, 1 ops; 00.00 sec (7.301 MiB/sec and 14952.3767 ops/sec)\nblk_co_preadv blk 0x5608f32961a0 bs 0x5608f3290e80 offset 0 bytes 512 flags 0x0\n"),
            Some(Format::Qemu)
        );
        assert_eq!(
            det("1@1700000000.000001:blk_co_pwritev blk 0x1 bs 0x2 offset 0 bytes 1 flags 0x0\n"),
            Some(Format::Qemu)
        );
        assert_eq!(
            det("  8,0    3        1     0.000000000  1234  Q   R 2048 + 8 [qemu-system-x86]\n"),
            Some(Format::Blkparse)
        );
        assert_eq!(
            det("time,op,offset,length\n0,read,0,1\n"),
            Some(Format::Csv)
        );
        assert_eq!(det("\n0.5,write,0x1000,4096\n"), Some(Format::Csv));
        assert_eq!(det("hello\nworld\n"), None);
    }
}
