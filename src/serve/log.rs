//! What `bmap serve` writes while it serves: the live attributed log and
//! the trace.
//!
//! * The live log is `bmap replay`'s virt-bmap-style view, one line each
//!   time a connection's requests move to another object (or another op):
//!   `[c1] read f /dev/sda2 /etc/fstab`. The `[cN]` prefix is the
//!   connection, so the lines of clients reading at once stay readable.
//! * The trace is nbdkit's log-filter format, which `bmap replay` detects
//!   on its own: a request line and a completion line per request,
//!   `Connect` and `Disconnect` lines per connection.
//!
//! Each connection builds its lines in its own buffer and writes them with
//! one call under the sink's lock, flushing before the reply is sent: a
//! client that has its answer finds the request in both files, and a
//! Ctrl-C or a dropped connection loses nothing already answered.

use std::io::Write;
use std::sync::Mutex;

use crate::replay::MapIndex;
use crate::trace::Op;

/// A shared output: the lock keeps each connection's lines together.
pub struct Sink {
    out: Mutex<Box<dyn Write + Send>>,
}

impl Sink {
    pub fn new(out: Box<dyn Write + Send>) -> Sink {
        Sink {
            out: Mutex::new(out),
        }
    }

    /// Writes `bytes` and flushes. Nothing to write costs nothing.
    pub fn write(&self, bytes: &[u8]) -> std::io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        out.write_all(bytes)?;
        out.flush()
    }

    /// Flushes whatever is buffered (there is nothing between requests,
    /// but a shutdown flushes anyway). Taking the lock also waits for a
    /// connection in the middle of writing.
    pub fn flush(&self) -> std::io::Result<()> {
        self.out.lock().unwrap_or_else(|e| e.into_inner()).flush()
    }
}

/// One connection's state in the live log.
pub struct LiveLog {
    prefix: String,
    last: Option<(Op, Option<u32>)>,
    buf: Vec<u8>,
}

impl LiveLog {
    pub fn new(connection: u64) -> LiveLog {
        LiveLog {
            prefix: format!("[c{connection}] "),
            last: None,
            buf: Vec::with_capacity(256),
        }
    }

    /// Adds the lines for a request that succeeded: one per change of
    /// object (or op) since this connection's previous line.
    pub fn request(&mut self, index: &MapIndex, op: Op, offset: u64, len: u64) {
        let Self { prefix, last, buf } = self;
        index.split(offset, len, |p| {
            if *last == Some((op, p.object)) {
                return;
            }
            *last = Some((op, p.object));
            buf.extend_from_slice(prefix.as_bytes());
            buf.extend_from_slice(op.as_str().as_bytes());
            match p.object.and_then(|o| index.object(o)) {
                Some(i) => {
                    buf.push(b' ');
                    buf.extend_from_slice(i.code().as_bytes());
                    buf.push(b' ');
                    buf.extend_from_slice(i.device.unwrap_or("").as_bytes());
                    let label = i.label();
                    if !label.is_empty() {
                        buf.push(b' ');
                        buf.extend_from_slice(label.as_bytes());
                    }
                }
                None if p.object.is_some() => {
                    buf.extend_from_slice(b" unknown-object");
                }
                None => buf.extend_from_slice(b" beyond-end (past the end of the image)"),
            }
            buf.push(b'\n');
        });
    }

    /// Adds the line for a request answered with an error.
    pub fn failed(&mut self, op: &str, offset: u64, len: u64, error: &str) {
        self.last = None;
        let _ = writeln!(
            self.buf,
            "{}{op} failed ({error}) at 0x{offset:x}+{len}",
            self.prefix
        );
    }

    /// Writes what was added to `sink`.
    pub fn emit(&mut self, sink: &Sink) -> std::io::Result<()> {
        let r = sink.write(&self.buf);
        self.buf.clear();
        r
    }
}

/// A request as the trace records it.
#[derive(Debug, Clone, Copy)]
pub struct TraceRecord<'a> {
    /// nbdkit's name: `Read`, `Write`, `Flush`, `Trim`, `Zero`.
    pub op: &'a str,
    pub id: u64,
    pub offset: u64,
    pub len: u64,
    pub fua: bool,
    /// When the request was received and when it was answered.
    pub start: std::time::SystemTime,
    pub end: std::time::SystemTime,
    /// `None` for success, else the error name (`EINVAL`).
    pub error: Option<&'a str>,
}

/// One connection's trace lines, in nbdkit's log-filter format.
pub struct TraceLog {
    connection: u64,
    buf: Vec<u8>,
}

impl TraceLog {
    pub fn new(connection: u64) -> TraceLog {
        TraceLog {
            connection,
            buf: Vec::with_capacity(256),
        }
    }

    /// The `Connect` line: the export's size and what it can do.
    pub fn connect(&mut self, size: u64, writable: bool) {
        let w = u8::from(writable);
        let _ = writeln!(
            self.buf,
            "{} connection={} Connect export=\"\" tls=0 size=0x{size:x} minsize=0x1 prefsize=0x1000 \
             maxsize=0x{:x} write={w} flush=1 rotational=0 trim={w} zero={w} fua={w} extents=0 cache=0 fast_zero=0",
            timestamp(std::time::SystemTime::now()),
            self.connection,
            super::nbd::MAX_REQUEST,
        );
    }

    /// The request line and its completion line.
    pub fn request(&mut self, r: &TraceRecord<'_>) {
        let c = self.connection;
        let _ = write!(
            self.buf,
            "{} connection={c} {} id={}",
            timestamp(r.start),
            r.op,
            r.id
        );
        let fua = u8::from(r.fua);
        let _ = match r.op {
            "Flush" => writeln!(self.buf, " ..."),
            "Read" => writeln!(self.buf, " offset=0x{:x} count=0x{:x} ...", r.offset, r.len),
            "Zero" => writeln!(
                self.buf,
                " offset=0x{:x} count=0x{:x} trim=0 fua={fua} fast=0 ...",
                r.offset, r.len
            ),
            _ => writeln!(
                self.buf,
                " offset=0x{:x} count=0x{:x} fua={fua} ...",
                r.offset, r.len
            ),
        };
        let _ = write!(
            self.buf,
            "{} connection={c} ...{} id={} ",
            timestamp(r.end),
            r.op,
            r.id
        );
        let _ = match r.error {
            None => writeln!(self.buf, "return=0"),
            Some(e) => writeln!(self.buf, "return=-1 error={e}"),
        };
    }

    /// The `Disconnect` line.
    pub fn disconnect(&mut self, transactions: u64) {
        let _ = writeln!(
            self.buf,
            "{} connection={} Disconnect transactions={transactions}",
            timestamp(std::time::SystemTime::now()),
            self.connection
        );
    }

    /// Writes what was added to `sink`.
    pub fn emit(&mut self, sink: &Sink) -> std::io::Result<()> {
        let r = sink.write(&self.buf);
        self.buf.clear();
        r
    }
}

/// The first line of a trace, as nbdkit starts its log.
pub fn trace_header() -> String {
    format!(
        "{} Ready thread_model=3\n",
        timestamp(std::time::SystemTime::now())
    )
}

/// `YYYY-MM-DD HH:MM:SS.ffffff` in UTC, the form nbdkit's log filter
/// stamps its lines with (it uses local time; `bmap replay` reads either
/// as UTC, and UTC does not jump when daylight saving time does).
pub fn timestamp(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (y, m, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{day:02} {:02}:{:02}:{:02}.{:06}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_micros()
    )
}

/// Year, month, day of a count of days since 1970-01-01 (Howard Hinnant's
/// civil-from-days).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn timestamps() {
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01 00:00:00.000000");
        // 2026-11-21 10:54:19.690630 UTC
        let t = UNIX_EPOCH + Duration::from_micros(1_795_258_459_690_630);
        assert_eq!(timestamp(t), "2026-11-21 10:54:19.690630");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(timestamp(t), "2000-02-29 00:00:00.000000");
    }

    /// The trace must be what bmap replay's nbdkit parser reads.
    #[test]
    fn trace_lines_parse_as_nbdkit() {
        let mut t = TraceLog::new(3);
        let now = std::time::SystemTime::now();
        t.connect(1 << 26, false);
        for (op, error) in [
            ("Read", None),
            ("Write", Some("EPERM")),
            ("Flush", None),
            ("Zero", None),
            ("Trim", None),
            ("Read", Some("EINVAL")),
        ] {
            t.request(&TraceRecord {
                op,
                id: 7,
                offset: 0x1000,
                len: 0x200,
                fua: false,
                start: now,
                end: now,
                error,
            });
        }
        t.disconnect(6);
        let mut text = trace_header().into_bytes();
        text.extend_from_slice(&t.buf);
        let lines: Vec<&[u8]> = text.split(|&b| b == b'\n').collect();
        assert_eq!(
            crate::trace::detect(&lines),
            Some(crate::trace::Format::Nbdkit)
        );
        let reader = crate::trace::LineReader::new(std::io::BufReader::new(&text[..]));
        let events: Vec<_> = crate::trace::nbdkit::Parser::new(reader)
            .map(|e| e.unwrap())
            .collect();
        let reqs: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                crate::trace::Event::Request(r) => Some(r),
                _ => None,
            })
            .collect();
        assert_eq!(reqs.len(), 6);
        assert_eq!(reqs[0].op, Op::Read);
        assert_eq!((reqs[0].offset, reqs[0].length), (0x1000, 0x200));
        assert_eq!(reqs[0].connection, Some(3));
        assert_eq!(reqs[0].failed, None);
        assert_eq!(reqs[1].failed.as_deref(), Some("EPERM"));
        assert_eq!(reqs[2].op, Op::Flush);
        assert_eq!(reqs[3].op, Op::Zero);
        assert_eq!(reqs[4].op, Op::Trim);
        assert_eq!(reqs[5].failed.as_deref(), Some("EINVAL"));
        assert!(events
            .iter()
            .any(|e| matches!(e, crate::trace::Event::DiskSize { size, .. } if *size == 1 << 26)));
    }
}
