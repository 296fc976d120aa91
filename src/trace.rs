//! Block-level I/O traces: what a guest read and wrote, as recorded by
//! nbdkit's log filter, qemu's trace events, blkparse or a plain CSV.
//!
//! Every parser is a streaming iterator of [`Event`]s over a [`LineReader`],
//! so memory does not depend on the trace's length; every error names the
//! line it came from.

pub mod blkparse;
pub mod csv;
pub mod mapped;
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

/// Where the parallel parser reads a trace: at any offset, from any
/// thread. A regular file, or bytes in memory. Unlike
/// [`crate::image::ReadAt`], which reads exact ranges of an image of known
/// size, a read may come up short and a trace may grow while it is read,
/// so the end is where a read returns 0.
pub trait PositionalRead: Send + Sync {
    /// As [`std::os::unix::fs::FileExt::read_at`]: 0 at the end.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;

    /// Every byte of the source, if they are all in memory already (a
    /// mapped file): then read where they are rather than copied.
    fn whole(&self) -> Option<&[u8]> {
        None
    }

    /// Bytes `from..to` will not be read again soon: a mapped file lets go
    /// of their pages (they stay in the page cache), so that what is
    /// resident stays what is being read, not the whole file.
    fn done_with(&self, _from: u64, _to: u64) {}
}

impl PositionalRead for std::fs::File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        std::os::unix::fs::FileExt::read_at(self, buf, offset)
    }
}

impl PositionalRead for [u8] {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let start = usize::try_from(offset).map_or(self.len(), |o| o.min(self.len()));
        let n = buf.len().min(self.len() - start);
        buf[..n].copy_from_slice(&self[start..start + n]);
        Ok(n)
    }
}

/// Bytes read past a chunk's end, for its last line: most lines are under
/// 300 bytes, so one read mostly does.
const SLACK: usize = 1024;

/// Bytes read before a chunk's start: a cache line, to keep reads aligned.
const LEAD: usize = 64;

/// Bytes read at a time past a chunk's end, for a line that runs on.
/// (The chunk itself is read at once: fewer, larger reads cost less than
/// parsing each piece while the cache holds it saves.)
const STEP: usize = 64 << 10;

/// The bytes of one chunk, and of the line that may run past its end.
/// The buffer is kept from chunk to chunk, so it is allocated (and zeroed)
/// once; it never holds more than a chunk, [`MAX_LINE`] and [`SLACK`].
#[derive(Default)]
pub(crate) struct Window {
    buf: Vec<u8>,
    /// Bytes of `buf` read, from `base` in the source.
    filled: usize,
    base: u64,
    eof: bool,
}

impl Window {
    fn reset(&mut self, base: u64) {
        self.filled = 0;
        self.base = base;
        self.eof = false;
    }

    /// Reads on until `want` bytes are held or the source ends.
    fn fill<S: PositionalRead + ?Sized>(&mut self, src: &S, want: usize) -> io::Result<()> {
        if self.buf.len() < want {
            self.buf.resize(want, 0);
        }
        while self.filled < want && !self.eof {
            let Some(at) = self.base.checked_add(self.filled as u64) else {
                self.eof = true;
                break;
            };
            match src.read_at(&mut self.buf[self.filled..want], at) {
                Ok(0) => self.eof = true,
                Ok(n) => self.filled += n.min(want - self.filled),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads [`STEP`] more, or up to `limit`.
    fn grow<S: PositionalRead + ?Sized>(&mut self, src: &S, limit: usize) -> io::Result<()> {
        let want = self.filled.saturating_add(STEP).min(limit);
        self.fill(src, want.max(self.filled + 1))
    }

    /// The first newline in `buf[from..upto]`, reading on as needed.
    fn find_newline<S: PositionalRead + ?Sized>(
        &mut self,
        src: &S,
        from: usize,
        upto: usize,
    ) -> io::Result<Option<usize>> {
        let mut searched = from;
        loop {
            let held = self.filled.min(upto);
            if searched < held {
                if let Some(i) = memchr(b'\n', &self.buf[searched..held]) {
                    return Ok(Some(searched + i));
                }
                searched = held;
            }
            if held == upto || self.eof {
                return Ok(None);
            }
            self.grow(src, upto)?;
        }
    }
}

/// How a chunk ended.
pub(crate) struct ChunkEnd {
    /// Lines that began in it.
    pub lines: u64,
    /// The source ends within it: later chunks hold nothing.
    pub last: bool,
}

/// Splits chunk `k` (bytes `k * size` to `(k + 1) * size` of `src`) into
/// lines, calling `f(n, line)` for each line that begins in it, `n`
/// counting from 1 in the chunk, until `f` returns false. A line belongs to the chunk that holds its
/// first byte, and is read whole even past the chunk's end; so chunk after
/// chunk yields exactly the lines [`LineReader`] yields from the start,
/// `None` standing for a line longer than [`MAX_LINE`] (its error), whose
/// rest is skipped. Only the chunk, [`MAX_LINE`] and a little more are held
/// whatever the line lengths: a too-long line is never read whole, and the
/// chunks it spans find no line of their own with one scan each.
pub(crate) fn chunk_lines<S: PositionalRead + ?Sized>(
    src: &S,
    k: u64,
    size: usize,
    win: &mut Window,
    mut f: impl FnMut(u64, Option<&[u8]>) -> bool,
) -> io::Result<ChunkEnd> {
    chunk_lines_with(
        src,
        k,
        size,
        win,
        &mut (),
        |_, _, _| None,
        |_, n, line| f(n, line),
    )
}

/// [`chunk_lines`], with a parser that may tell where a line ends by
/// reading it: `quick(state, n, rest)` gets the rest of what was read from
/// line `n`'s start on and, if it took the line, returns the line's length
/// (its newline, which must follow, is not counted) and whether to go on.
/// It must take a line only as `f` would take it, and only a line that
/// ends in a plain `\n`: the two see the same lines, and the newlines of
/// the lines `quick` takes are not searched for.
pub(crate) fn chunk_lines_with<S: PositionalRead + ?Sized, T: ?Sized>(
    src: &S,
    k: u64,
    size: usize,
    win: &mut Window,
    state: &mut T,
    quick: impl FnMut(&mut T, u64, &[u8]) -> Option<(usize, bool)>,
    f: impl FnMut(&mut T, u64, Option<&[u8]>) -> bool,
) -> io::Result<ChunkEnd> {
    let size = size.max(1);
    let Some(start) = k.checked_mul(size as u64) else {
        return Ok(ChunkEnd {
            lines: 0,
            last: true,
        });
    };
    // A line begins at the chunk's start only if the byte before it ends
    // one. The read starts a cache line early: copies from the page cache
    // are several times quicker when the file offset and the buffer (see
    // the allocator) are both aligned.
    let base = start.saturating_sub(LEAD as u64);
    let lead = (start - base) as usize;
    let end = lead + size;
    match src.whole() {
        Some(all) => {
            let from = usize::try_from(base).map_or(all.len(), |b| b.min(all.len()));
            let mut held = Whole(&all[from..]);
            lines_held(&mut held, k, lead, end, state, quick, f)
        }
        None => {
            win.reset(base);
            win.fill(src, end + SLACK)?;
            let mut held = Reading { win, src };
            lines_held(&mut held, k, lead, end, state, quick, f)
        }
    }
}

/// Where a chunk's bytes are while its lines are read: read into a
/// [`Window`], or the source's own (a mapped file).
trait Held {
    /// The bytes held, from the chunk's base on.
    fn held(&self) -> &[u8];
    /// Whether the source ends where what is held does.
    fn ended(&self) -> bool;
    /// Holds on until `want` bytes are held or the source ends.
    fn fill(&mut self, want: usize) -> io::Result<()>;
    /// The first newline in `held()[from..upto]`, holding on as needed.
    fn find_newline(&mut self, from: usize, upto: usize) -> io::Result<Option<usize>>;
}

/// A chunk read into a window.
struct Reading<'a, S: ?Sized> {
    win: &'a mut Window,
    src: &'a S,
}

impl<S: PositionalRead + ?Sized> Held for Reading<'_, S> {
    fn held(&self) -> &[u8] {
        &self.win.buf[..self.win.filled.min(self.win.buf.len())]
    }

    fn ended(&self) -> bool {
        self.win.eof
    }

    fn fill(&mut self, want: usize) -> io::Result<()> {
        self.win.fill(self.src, want)
    }

    fn find_newline(&mut self, from: usize, upto: usize) -> io::Result<Option<usize>> {
        self.win.find_newline(self.src, from, upto)
    }
}

/// A chunk of a source whose bytes are all there: the rest of it from the
/// chunk's base.
struct Whole<'a>(&'a [u8]);

impl Held for Whole<'_> {
    fn held(&self) -> &[u8] {
        self.0
    }

    fn ended(&self) -> bool {
        true
    }

    fn fill(&mut self, _want: usize) -> io::Result<()> {
        Ok(())
    }

    fn find_newline(&mut self, from: usize, upto: usize) -> io::Result<Option<usize>> {
        let upto = upto.min(self.0.len());
        Ok(self
            .0
            .get(from..upto)
            .and_then(|b| memchr(b'\n', b))
            .map(|i| from + i))
    }
}

/// [`chunk_lines_with`] over the bytes of chunk `k` held in `h`, from
/// `lead` (where the chunk starts) to `end`.
///
/// One copy for both ways of holding a chunk (`h` is only asked for more
/// past what it holds, rarely), kept out of line: inlined into both arms
/// of [`chunk_lines_with`], the parser's `quick` was used twice and so no
/// longer inlined into the loop, and a call per line cost 5% more
/// instructions and 1.1x the summary's time.
#[inline(never)]
fn lines_held<T: ?Sized>(
    h: &mut dyn Held,
    k: u64,
    lead: usize,
    end: usize,
    state: &mut T,
    mut quick: impl FnMut(&mut T, u64, &[u8]) -> Option<(usize, bool)>,
    mut f: impl FnMut(&mut T, u64, Option<&[u8]>) -> bool,
) -> io::Result<ChunkEnd> {
    let mut p = if k == 0 {
        0
    } else {
        h.find_newline(lead - 1, end - 1)?.map_or(end, |i| i + 1)
    };
    let mut n = 0;
    // Lines whose newline is held with the chunk: taken by `quick` as it
    // reads them, or else found by searching for their newline; the rest
    // (a line running past what is held, or too long) the careful way
    // below.
    let bytes = h.held();
    let held = bytes.len();
    let mut stopped = false;
    while p < end && p < held {
        let rest = &bytes[p..held];
        // A line longer than MAX_LINE is the careful path's: its newline
        // is not in what `quick` sees, nor searched for past it.
        let seen = &rest[..rest.len().min(MAX_LINE + 1)];
        if let Some((len, go_on)) = quick(state, n + 1, seen) {
            // `quick` only takes a line whose newline it saw; checked
            // again so that a wrong length can never step past the buffer.
            debug_assert_eq!(seen.get(len), Some(&b'\n'));
            if seen.get(len) == Some(&b'\n') {
                n += 1;
                p += len + 1;
                if !go_on {
                    stopped = true;
                    break;
                }
                continue;
            }
        }
        let Some(q) = memchr::memchr(b'\n', seen) else {
            break;
        };
        n += 1;
        if !f(state, n, Some(trim_eol(&rest[..q]))) {
            stopped = true;
            break;
        }
        p += q + 1;
    }
    while p < end && !stopped {
        // A line's newline must lie within MAX_LINE bytes.
        let limit = p + MAX_LINE + 1;
        if let Some(q) = h.find_newline(p, limit)? {
            n += 1;
            if !f(state, n, Some(trim_eol(&h.held()[p..q]))) {
                break;
            }
            p = q + 1;
            continue;
        }
        let filled = h.held().len();
        if filled < limit {
            // The source ends in this line, which has no newline (or is
            // empty: then it is no line).
            if p < filled {
                n += 1;
                f(state, n, Some(trim_eol(&h.held()[p..filled])));
            }
            break;
        }
        n += 1;
        if !f(state, n, None) {
            break;
        }
        // The rest of the line is skipped, up to a newline that a line of
        // this chunk would follow.
        match h.find_newline(limit, end - 1)? {
            Some(q) => p = q + 1,
            None => break,
        }
    }
    // Whether the source goes on past the chunk.
    if h.held().len() <= end && !h.ended() {
        h.fill(end + 1)?;
    }
    Ok(ChunkEnd {
        lines: n,
        last: h.held().len() <= end,
    })
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

    /// Lines as [`LineReader`] reads them: `None` for one too long.
    fn read_lines(data: &[u8], capacity: usize) -> Vec<Option<Vec<u8>>> {
        let mut r = LineReader::new(io::BufReader::with_capacity(capacity, data));
        let mut lines = Vec::new();
        while let Some(l) = r.next_line() {
            lines.push(match l {
                Ok(l) => Some(l.to_vec()),
                Err(TraceError::LineTooLong { line, .. }) => {
                    assert_eq!(line, lines.len() as u64 + 1);
                    None
                }
                Err(e) => panic!("{e}"),
            });
        }
        lines
    }

    /// A source whose bytes are all in memory, as a mapped file's are.
    struct AllThere<'a>(&'a [u8]);

    impl PositionalRead for AllThere<'_> {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
            self.0.read_at(buf, offset)
        }

        fn whole(&self) -> Option<&[u8]> {
            Some(self.0)
        }
    }

    /// Lines as chunk after chunk yields them, checking their numbers and
    /// that no chunk past the last has any: read into a window, and read
    /// where they are (as from a mapped file), which must agree.
    fn chunked_lines(data: &[u8], size: usize) -> Vec<Option<Vec<u8>>> {
        let read = chunked_lines_of(data, data.len(), size);
        let there = chunked_lines_of(&AllThere(data), data.len(), size);
        assert_eq!(read, there, "size {size}");
        read
    }

    /// [`chunked_lines`] of `data`, `len` bytes long.
    fn chunked_lines_of<S: PositionalRead + ?Sized>(
        data: &S,
        len: usize,
        size: usize,
    ) -> Vec<Option<Vec<u8>>> {
        let mut win = Window::default();
        let mut lines = Vec::new();
        for k in 0.. {
            let before = lines.len() as u64;
            let end = chunk_lines(data, k, size, &mut win, |n, l| {
                assert_eq!(n, lines.len() as u64 - before + 1);
                lines.push(l.map(<[u8]>::to_vec));
                true
            })
            .unwrap();
            assert_eq!(end.lines, lines.len() as u64 - before);
            assert!(win.buf.len() <= size + MAX_LINE + 2 * SLACK);
            if end.last {
                assert!(k.saturating_mul(size as u64) <= len as u64);
                for later in k + 1..k + 3 {
                    let e = chunk_lines(data, later, size, &mut win, |_, _| panic!()).unwrap();
                    assert!(e.last && e.lines == 0);
                }
                break;
            }
        }
        lines
    }

    /// Chunks split a source into exactly the lines [`LineReader`] reads,
    /// whatever their size: lines across chunk ends, newlines just before
    /// or at a chunk's start, `\r\n`, lines of MAX_LINE bytes and one more,
    /// too-long lines spanning many chunks, with or without a last newline.
    #[test]
    fn chunks_split_as_the_line_reader_reads() {
        let long = |len: usize, end: &[u8]| {
            let mut l = vec![b'x'; len];
            l.extend_from_slice(end);
            l
        };
        let small: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"\n".to_vec(),
            b"\n\n".to_vec(),
            b"a".to_vec(),
            b"a\n".to_vec(),
            b"a\r\n\r\nbc\r".to_vec(),
            b"one\ntwo\n\nthree\r\nfour".to_vec(),
            (0..300u32)
                .flat_map(|i| {
                    let mut l = vec![b'y'; (i * 7 % 23) as usize];
                    l.push(if i % 5 == 0 { b'\r' } else { b'z' });
                    l.push(b'\n');
                    l
                })
                .collect(),
        ];
        let mut large = Vec::new();
        for len in [MAX_LINE - 1, MAX_LINE, MAX_LINE + 1, 3 * MAX_LINE] {
            for end in [&b"\n"[..], b"\r\n", b"\r", b""] {
                let mut d = b"first\n".to_vec();
                d.extend(long(len, end));
                if !end.is_empty() {
                    d.extend_from_slice(b"after\n");
                    d.extend(long(len, b"\n"));
                }
                large.push(d);
            }
        }
        let mut too_long = 0;
        for data in &small {
            let want = read_lines(data, 5);
            assert_eq!(want, read_lines(data, 1 << 16));
            for size in 1..=70 {
                assert_eq!(chunked_lines(data, size), want, "size {size}");
            }
        }
        for data in &large {
            let want = read_lines(data, 1000);
            too_long += want.iter().filter(|l| l.is_none()).count();
            let sizes = [
                1,
                2,
                3,
                61,
                4096,
                MAX_LINE - 1,
                MAX_LINE,
                MAX_LINE + 1,
                MAX_LINE + 2,
                1 << 20,
            ];
            for size in sizes {
                assert_eq!(chunked_lines(data, size), want, "size {size}");
            }
        }
        assert!(too_long >= 10, "{too_long}");
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_u64("0x1000"), Some(4096));
        assert_eq!(parse_u64("4096"), Some(4096));
        assert_eq!(parse_u64("0x1ffffffffffffffff"), None);
    }
}
