//! Block-level I/O traces: what a guest read and wrote, as recorded by
//! nbdkit's log filter, qemu's trace events, blkparse or a plain CSV.
//!
//! Every parser is a streaming iterator of [`Event`]s over a [`LineReader`],
//! so memory does not depend on the trace's length; every error names the
//! line it came from.

pub mod blkparse;
pub mod csv;
pub mod nbdkit;
pub mod qemu;

use std::io::{self, BufRead};

/// What a request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    Read,
    Write,
    Trim,
    Zero,
    Cache,
    Flush,
    /// Block-status / extents queries: they name a range but move no data.
    Extents,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::Trim => "trim",
            Op::Zero => "zero",
            Op::Cache => "cache",
            Op::Flush => "flush",
            Op::Extents => "extents",
        }
    }

    pub fn parse(s: &str) -> Option<Op> {
        Some(match s.to_ascii_lowercase().as_str() {
            "read" | "r" => Op::Read,
            "write" | "w" => Op::Write,
            "trim" | "discard" | "d" => Op::Trim,
            "zero" | "write_zeroes" => Op::Zero,
            "cache" => Op::Cache,
            "flush" | "f" => Op::Flush,
            "extents" | "block_status" => Op::Extents,
            _ => return None,
        })
    }
}

/// One request of the guest, in the order the trace completes them.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// 1-based line of the trace where the request was issued.
    pub line: u64,
    /// Seconds, on the trace's own clock (since the epoch for nbdkit and
    /// qemu's `PID@SEC.USEC:` prefix, since the trace start for blkparse).
    pub time: Option<f64>,
    pub op: Op,
    /// Absolute byte offset in the disk image.
    pub offset: u64,
    pub length: u64,
    /// nbdkit connection number, when the trace has one.
    pub connection: Option<u64>,
    /// The error the request failed with; `None` if it succeeded (or the
    /// format does not say).
    pub failed: Option<String>,
    /// blkparse's `M` flag: the guest kernel marked this as metadata I/O.
    pub metadata: bool,
}

/// What a parser yields.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Request(Request),
    /// The size of the exported disk, when the trace states it (nbdkit's
    /// `Connect ... size=`): replay warns when it differs from the map's.
    DiskSize {
        line: u64,
        size: u64,
    },
    /// Something odd that does not stop parsing (an unpaired completion,
    /// skipped probe reads…).
    Warning {
        line: u64,
        message: String,
    },
}

/// A trace that cannot be read further.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("line {line}: {message}")]
    Parse { line: u64, message: String },
    #[error("line {line}: longer than {max} bytes")]
    LineTooLong { line: u64, max: usize },
    #[error("reading the trace: {0}")]
    Io(#[from] io::Error),
}

impl TraceError {
    /// True if reading cannot go on (the trace could not be read); a bad
    /// line only spoils itself.
    pub fn is_fatal(&self) -> bool {
        matches!(self, TraceError::Io(_))
    }

    pub fn parse(line: u64, message: impl Into<String>) -> Self {
        TraceError::Parse {
            line,
            message: message.into(),
        }
    }
}

/// Trace formats bmap reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Nbdkit,
    Qemu,
    Blkparse,
    Csv,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Nbdkit => "nbdkit",
            Format::Qemu => "qemu",
            Format::Blkparse => "blkparse",
            Format::Csv => "csv",
        }
    }
}

/// Longest line accepted. Real trace lines are under 300 bytes; a longer
/// one is garbage, and is refused without holding it in memory.
pub const MAX_LINE: usize = 64 * 1024;

/// Reads lines with a bounded buffer, counting them from 1.
///
/// A line that lies whole in the reader's buffer is handed out from there;
/// only a line that straddles two fills is copied.
pub struct LineReader<R> {
    inner: R,
    buf: Vec<u8>,
    line: u64,
    /// Bytes of `inner`'s buffer handed out as the last line, consumed on
    /// the next call.
    unconsumed: usize,
}

impl<R: BufRead> LineReader<R> {
    pub fn new(inner: R) -> Self {
        LineReader {
            inner,
            buf: Vec::with_capacity(256),
            line: 0,
            unconsumed: 0,
        }
    }

    /// Number of the line last returned.
    pub fn line(&self) -> u64 {
        self.line
    }

    /// The next line without its newline (and `\r`), or `None` at the end.
    /// A line longer than [`MAX_LINE`] is an error naming it; the rest of it
    /// is skipped so the caller may go on.
    pub fn next_line(&mut self) -> Option<Result<&[u8], TraceError>> {
        if self.unconsumed > 0 {
            self.inner.consume(self.unconsumed);
            self.unconsumed = 0;
        }
        // The common case: the whole line is in the reader's buffer.
        let whole = match self.inner.fill_buf() {
            Ok(c) => memchr(b'\n', c).filter(|&i| i <= MAX_LINE),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => None,
            Err(e) => return Some(Err(TraceError::Io(e))),
        };
        if let Some(i) = whole {
            self.line += 1;
            self.unconsumed = i + 1;
            // fill_buf again hands back the same buffered bytes (asking
            // once more keeps the borrow checker happy).
            return Some(match self.inner.fill_buf() {
                Ok(chunk) => Ok(trim_eol(chunk.get(..i).unwrap_or(chunk))),
                Err(e) => Err(TraceError::Io(e)),
            });
        }
        self.buf.clear();
        let mut too_long = false;
        loop {
            let chunk = match self.inner.fill_buf() {
                Ok(c) => c,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Some(Err(TraceError::Io(e))),
            };
            if chunk.is_empty() {
                if self.buf.is_empty() && !too_long {
                    return None;
                }
                break;
            }
            let (take, done) = match memchr(b'\n', chunk) {
                Some(i) => (i + 1, true),
                None => (chunk.len(), false),
            };
            if !too_long {
                let room = MAX_LINE.saturating_sub(self.buf.len());
                if take > room + usize::from(done) {
                    too_long = true;
                    self.buf.clear();
                } else {
                    self.buf.extend_from_slice(&chunk[..take]);
                }
            }
            self.inner.consume(take);
            if done {
                break;
            }
        }
        self.line += 1;
        if too_long {
            return Some(Err(TraceError::LineTooLong {
                line: self.line,
                max: MAX_LINE,
            }));
        }
        Some(Ok(trim_eol(&self.buf)))
    }
}

/// A line without its trailing `\n`s and `\r`s.
fn trim_eol(mut l: &[u8]) -> &[u8] {
    while let [rest @ .., b'\n' | b'\r'] = l {
        l = rest;
    }
    l
}

use memchr::memchr;

/// Knobs some formats need.
#[derive(Debug, Clone, Default)]
pub struct ParseOptions {
    /// blkparse: the action to take requests from (`D`, `Q`, `C`…);
    /// `None` means `D`.
    pub blkparse_action: Option<String>,
    /// blkparse: byte offset of the traced device in the image (when a
    /// partition, not the whole disk, was traced).
    pub blkparse_offset: u64,
}

/// A streaming parser of one trace format.
pub type Events<'a> = Box<dyn Iterator<Item = Result<Event, TraceError>> + 'a>;

/// Opens a parser for `format` over `reader`. Errors are per line: the
/// caller may report one and keep iterating.
pub fn events<'a, R: BufRead + 'a>(format: Format, reader: R, opts: &ParseOptions) -> Events<'a> {
    let lines = LineReader::new(reader);
    match format {
        Format::Nbdkit => Box::new(nbdkit::Parser::new(lines)),
        Format::Qemu => Box::new(qemu::Parser::new(lines)),
        Format::Blkparse => Box::new(blkparse::Parser::new(lines, opts)),
        Format::Csv => Box::new(csv::Parser::new(lines)),
    }
}

/// Guesses the format from the first lines of a trace: the first line that
/// one format recognises decides (nbdkit's `Ready`/`Fork`/`Preconnect`/
/// `connection=N …` lines, qemu's `blk_co_*` events, blkparse's
/// `maj,min cpu seq time pid action` lines, CSV rows or header). Lines no
/// format recognises, such as the program output on qemu's stderr, are
/// passed over.
pub fn detect(lines: &[&[u8]]) -> Option<Format> {
    for l in lines {
        let s = String::from_utf8_lossy(l);
        let t = s.trim();
        if t.is_empty() {
            continue;
        }
        if nbdkit::looks_like(t) {
            return Some(Format::Nbdkit);
        }
        if qemu::looks_like(t) {
            return Some(Format::Qemu);
        }
        if blkparse::looks_like(t) {
            return Some(Format::Blkparse);
        }
        if csv::looks_like(t) {
            return Some(Format::Csv);
        }
    }
    None
}

/// Parses a number in decimal or `0x` hex.
pub fn parse_u64(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_counted_and_bounded() {
        let mut data = b"one\r\ntwo\n".to_vec();
        data.extend(vec![b'x'; MAX_LINE + 10]);
        data.extend(b"\nfour");
        let mut r = LineReader::new(io::BufReader::with_capacity(1000, &data[..]));
        assert_eq!(r.next_line().unwrap().unwrap(), b"one");
        assert_eq!(r.next_line().unwrap().unwrap(), b"two");
        assert!(matches!(
            r.next_line().unwrap(),
            Err(TraceError::LineTooLong { line: 3, .. })
        ));
        assert_eq!(r.next_line().unwrap().unwrap(), b"four");
        assert_eq!(r.line(), 4);
        assert!(r.next_line().is_none());
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_u64("0x1000"), Some(4096));
        assert_eq!(parse_u64("4096"), Some(4096));
        assert_eq!(parse_u64("0x1ffffffffffffffff"), None);
    }
}
