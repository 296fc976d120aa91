//! One client connection: the fixed newstyle handshake, option haggling,
//! then requests until the client disconnects.
//!
//! Every number the client sends is checked before it is used: option
//! payloads are capped at [`nbd::MAX_OPTION_LEN`], request lengths at
//! [`nbd::MAX_REQUEST`] (the connection's buffer never grows past that),
//! ranges against the export size. A request the server refuses gets an
//! NBD error and the connection carries on; only bytes that cannot be
//! understood (wrong magic) end it, because after them there is no telling
//! where the next request starts.
//!
//! A WRITE longer than the advertised maximum is answered with `EINVAL`
//! after its payload has been read and thrown away in bounded chunks, so
//! the stream stays in step and the client may go on.

use std::io::{BufReader, BufWriter, Read, Write};
use std::time::{Duration, SystemTime};

use super::log::{LiveLog, TraceLog, TraceRecord};
use super::nbd::{self, ProtoError, Request};
use super::Server;
use crate::trace::Op;

/// How long a client may take over the handshake; a connection that
/// never says anything would otherwise hold its thread for good. Once in
/// transmission a guest may be idle as long as it likes.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);

/// Most options one connection may send before it is cut off: haggling
/// that goes on forever is not a client.
const MAX_OPTIONS: u32 = 1024;

/// Largest request buffer a connection keeps between requests.
const KEEP_BUFFER: usize = 4 << 20;

/// Chunk in which refused write payloads are read and discarded.
const DISCARD_CHUNK: usize = 64 * 1024;

/// A byte stream a client is connected by (Unix or TCP socket).
pub trait Stream: Read + Write + Send + Sized + 'static {
    fn try_clone(&self) -> std::io::Result<Self>;
    fn set_read_timeout(&self, d: Option<Duration>) -> std::io::Result<()>;
}

impl Stream for std::os::unix::net::UnixStream {
    fn try_clone(&self) -> std::io::Result<Self> {
        std::os::unix::net::UnixStream::try_clone(self)
    }
    fn set_read_timeout(&self, d: Option<Duration>) -> std::io::Result<()> {
        std::os::unix::net::UnixStream::set_read_timeout(self, d)
    }
}

impl Stream for std::net::TcpStream {
    fn try_clone(&self) -> std::io::Result<Self> {
        std::net::TcpStream::try_clone(self)
    }
    fn set_read_timeout(&self, d: Option<Duration>) -> std::io::Result<()> {
        std::net::TcpStream::set_read_timeout(self, d)
    }
}

/// Why a connection ended other than by the client's choice.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Proto(#[from] ProtoError),
    #[error("more than {MAX_OPTIONS} options during the handshake")]
    TooManyOptions,
}

impl SessionError {
    /// The client went away (at any point): not worth a message.
    pub fn is_disconnect(&self) -> bool {
        matches!(self, SessionError::Io(e) if matches!(
            e.kind(),
            std::io::ErrorKind::UnexpectedEof
                | std::io::ErrorKind::BrokenPipe
                | std::io::ErrorKind::ConnectionReset
        ))
    }
}

/// How a session ended.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Entered transmission (else: ended during the handshake).
    pub transmission: bool,
    pub requests: u64,
}

/// Serves one connection to its end.
pub fn session<S: Stream>(
    server: &Server,
    connection: u64,
    stream: S,
    summary: &mut Summary,
) -> Result<(), SessionError> {
    stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
    let mut rd = BufReader::with_capacity(64 * 1024, stream.try_clone()?);
    let mut wr = BufWriter::with_capacity(64 * 1024, stream);
    if !handshake(server, &mut rd, &mut wr)? {
        return Ok(());
    }
    wr.get_ref().set_read_timeout(None)?;
    summary.transmission = true;
    let mut trace = TraceLog::new(connection);
    if let Some(t) = &server.trace {
        trace.connect(server.export.size(), server.export.writable());
        server.emit_trace(&mut trace, t);
    }
    let r = transmission(server, connection, &mut rd, &mut wr, &mut trace, summary);
    if let Some(t) = &server.trace {
        trace.disconnect(summary.requests);
        server.emit_trace(&mut trace, t);
    }
    r
}

/// The handshake: `Ok(true)` when the client chose the export, `Ok(false)`
/// when it aborted.
fn handshake<R: Read, W: Write>(
    server: &Server,
    rd: &mut R,
    wr: &mut W,
) -> Result<bool, SessionError> {
    wr.write_all(&nbd::greeting())?;
    wr.flush()?;
    let mut cf = [0u8; 4];
    rd.read_exact(&mut cf)?;
    let no_zeroes = nbd::parse_client_flags(cf)? & nbd::FLAG_C_NO_ZEROES != 0;
    let size = server.export.size();
    let flags = server.transmission_flags();
    let mut out = Vec::with_capacity(256);
    for _ in 0..MAX_OPTIONS {
        let mut h = [0u8; 16];
        rd.read_exact(&mut h)?;
        let hdr = match nbd::parse_option_header(&h) {
            Ok(h) => h,
            Err(e @ ProtoError::OptionTooLong { option, .. }) => {
                // Say why, then close: the payload is not read.
                out.clear();
                nbd::option_reply(&mut out, option, nbd::REP_ERR_TOO_BIG, b"option too long");
                let _ = wr.write_all(&out).and_then(|()| wr.flush());
                return Err(e.into());
            }
            Err(e) => return Err(e.into()),
        };
        // At most MAX_OPTION_LEN bytes, checked by the parser above.
        let mut data = vec![0u8; hdr.len as usize];
        rd.read_exact(&mut data)?;
        out.clear();
        let opt = hdr.option;
        match opt {
            nbd::OPT_EXPORT_NAME => {
                // One export, whatever its name (as nbdkit's file plugin).
                wr.write_all(&nbd::export_name_reply(size, flags, no_zeroes))?;
                wr.flush()?;
                return Ok(true);
            }
            nbd::OPT_ABORT => {
                nbd::option_reply(&mut out, opt, nbd::REP_ACK, &[]);
                let _ = wr.write_all(&out).and_then(|()| wr.flush());
                return Ok(false);
            }
            nbd::OPT_LIST if data.is_empty() => {
                nbd::option_reply(&mut out, opt, nbd::REP_SERVER, &nbd::list_entry(b""));
                nbd::option_reply(&mut out, opt, nbd::REP_ACK, &[]);
            }
            nbd::OPT_LIST => {
                nbd::option_reply(&mut out, opt, nbd::REP_ERR_INVALID, b"LIST takes no data");
            }
            nbd::OPT_INFO | nbd::OPT_GO => match nbd::parse_info_request(opt, &data) {
                Ok(_) => {
                    // Export and block size are sent whether asked for or
                    // not; the protocol allows it and clients rely on it.
                    nbd::option_reply(&mut out, opt, nbd::REP_INFO, &nbd::info_export(size, flags));
                    nbd::option_reply(&mut out, opt, nbd::REP_INFO, &nbd::info_block_size());
                    nbd::option_reply(&mut out, opt, nbd::REP_ACK, &[]);
                    if opt == nbd::OPT_GO {
                        wr.write_all(&out)?;
                        wr.flush()?;
                        return Ok(true);
                    }
                }
                Err(e) => {
                    let msg = e.to_string();
                    nbd::option_reply(&mut out, opt, nbd::REP_ERR_INVALID, msg.as_bytes());
                }
            },
            // Structured replies, TLS, meta contexts and anything newer:
            // declined, and the client falls back to simple replies.
            _ => nbd::option_reply(&mut out, opt, nbd::REP_ERR_UNSUP, &[]),
        }
        wr.write_all(&out)?;
        wr.flush()?;
    }
    Err(SessionError::TooManyOptions)
}

/// Reads exactly `buf`, or nothing at all: `Ok(false)` on a clean end of
/// stream before the first byte.
fn read_or_eof<R: Read>(rd: &mut R, buf: &mut [u8]) -> std::io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match rd.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Reads and drops `len` bytes, a bounded chunk at a time.
fn discard<R: Read>(rd: &mut R, len: u64) -> std::io::Result<()> {
    let mut chunk = [0u8; DISCARD_CHUNK];
    let mut left = len;
    while left > 0 {
        let n = left.min(DISCARD_CHUNK as u64) as usize;
        rd.read_exact(&mut chunk[..n])?;
        left -= n as u64;
    }
    Ok(())
}

fn io_errno(e: &std::io::Error) -> u32 {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => nbd::EPERM,
        std::io::ErrorKind::StorageFull => nbd::ENOSPC,
        std::io::ErrorKind::OutOfMemory => nbd::ENOMEM,
        _ => nbd::EIO,
    }
}

fn transmission<R: Read, S: Stream>(
    server: &Server,
    connection: u64,
    rd: &mut BufReader<R>,
    wr: &mut BufWriter<S>,
    trace: &mut TraceLog,
    summary: &mut Summary,
) -> Result<(), SessionError> {
    let export = &server.export;
    let size = export.size();
    let mut live = LiveLog::new(connection);
    // Reply header followed by read data, so a reply is one write; it
    // grows to the largest request seen, at most MAX_REQUEST.
    let mut buf: Vec<u8> = vec![0u8; nbd::REPLY_LEN + nbd::PREFERRED_BLOCK as usize];
    loop {
        let mut h = [0u8; nbd::REQUEST_LEN];
        if !read_or_eof(rd, &mut h)? {
            return Ok(());
        }
        let start = SystemTime::now();
        let req: Request = nbd::parse_request(&h)?;
        let len = u64::from(req.len);
        let fua = req.flags & nbd::CMD_FLAG_FUA != 0;
        summary.requests += 1;
        let (name, op) = match req.kind {
            nbd::CMD_READ => ("Read", Some(Op::Read)),
            nbd::CMD_WRITE => ("Write", Some(Op::Write)),
            nbd::CMD_FLUSH => ("Flush", Some(Op::Flush)),
            nbd::CMD_TRIM => ("Trim", Some(Op::Trim)),
            nbd::CMD_WRITE_ZEROES => ("Zero", Some(Op::Zero)),
            nbd::CMD_DISC => {
                wr.flush()?;
                return Ok(());
            }
            _ => ("Unknown", None),
        };
        let mut data_len = 0usize;
        let result: Result<(), u32> = match req.kind {
            nbd::CMD_READ => nbd::check_range(&req, size).and_then(|()| {
                let n = req.len as usize;
                if buf.len() < nbd::REPLY_LEN + n {
                    buf.resize(nbd::REPLY_LEN + n, 0);
                }
                export
                    .read_at(&mut buf[nbd::REPLY_LEN..nbd::REPLY_LEN + n], req.offset)
                    .map(|()| data_len = n)
                    .map_err(|e| io_errno(&e))
            }),
            nbd::CMD_WRITE => {
                if req.len > nbd::MAX_REQUEST {
                    discard(rd, len)?;
                    Err(nbd::EINVAL)
                } else {
                    let n = req.len as usize;
                    if buf.len() < nbd::REPLY_LEN + n {
                        buf.resize(nbd::REPLY_LEN + n, 0);
                    }
                    let payload = &mut buf[nbd::REPLY_LEN..nbd::REPLY_LEN + n];
                    rd.read_exact(payload)?;
                    nbd::check_range(&req, size)
                        .and_then(|()| writable(server))
                        .and_then(|()| {
                            export
                                .write_at(payload, req.offset)
                                .and_then(|()| if fua { export.flush() } else { Ok(()) })
                                .map_err(|e| io_errno(&e))
                        })
                }
            }
            nbd::CMD_FLUSH => export.flush().map_err(|e| io_errno(&e)),
            // Trim is advisory: the data may stay, and here it does.
            nbd::CMD_TRIM => nbd::check_range(&req, size).and_then(|()| writable(server)),
            nbd::CMD_WRITE_ZEROES => nbd::check_range(&req, size)
                .and_then(|()| writable(server))
                .and_then(|()| {
                    export
                        .write_zeroes(req.offset, len)
                        .and_then(|()| if fua { export.flush() } else { Ok(()) })
                        .map_err(|e| io_errno(&e))
                }),
            // Unknown command: refused; if it had a payload the next
            // header's magic will not match and the connection ends.
            _ => Err(nbd::EINVAL),
        };
        // Log and trace before the reply: once a client has its answer,
        // the request is on disk.
        let error = result.err().map(nbd::error_name);
        let (offset, len) = if req.kind == nbd::CMD_FLUSH {
            (0, 0)
        } else {
            (req.offset, len)
        };
        match (op, error) {
            (Some(Op::Flush), None) => {}
            (Some(op), None) => live.request(&server.index, op, offset, len),
            (_, Some(e)) => live.failed(&name.to_ascii_lowercase(), offset, len, e),
            (None, None) => {}
        }
        server.emit_log(&mut live);
        if let (Some(t), Some(_)) = (&server.trace, op) {
            trace.request(&TraceRecord {
                op: name,
                id: summary.requests,
                offset,
                len,
                fua,
                start,
                end: SystemTime::now(),
                error,
            });
            server.emit_trace(trace, t);
        }
        let mut hdr = [0u8; nbd::REPLY_LEN];
        nbd::simple_reply(&mut hdr, result.err().unwrap_or(0), req.cookie);
        buf[..nbd::REPLY_LEN].copy_from_slice(&hdr);
        wr.write_all(&buf[..nbd::REPLY_LEN + data_len])?;
        // Pipelined requests already received are answered before the
        // replies go out together; otherwise the client is waiting.
        if rd.buffer().len() < nbd::REQUEST_LEN {
            wr.flush()?;
        }
        // Requests past KEEP_BUFFER are rare (qemu uses 2 MiB, nbdcopy
        // 256 KiB): give their memory back rather than hold up to 32 MiB
        // per idle connection.
        if buf.len() > nbd::REPLY_LEN + KEEP_BUFFER {
            buf.truncate(nbd::REPLY_LEN + nbd::PREFERRED_BLOCK as usize);
            buf.shrink_to_fit();
        }
    }
}

fn writable(server: &Server) -> Result<(), u32> {
    if server.export.writable() {
        Ok(())
    } else {
        Err(nbd::EPERM)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::export::{Export, Mode};
    use crate::serve::log::Sink;
    use std::os::unix::net::UnixStream;
    use std::sync::{Arc, Mutex};

    /// A log that the test can read back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    const SIZE: u64 = 1 << 20;

    /// A 1 MiB image whose map has two files, and a server over it.
    fn server(dir: &std::path::Path) -> (Arc<Server>, Shared) {
        let img = dir.join("img");
        let data: Vec<u8> = (0..SIZE).map(|i| (i % 251) as u8).collect();
        std::fs::write(&img, data).unwrap();
        let db = dir.join("map");
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch(&format!(
            "CREATE TABLE meta(key TEXT, value TEXT);
             INSERT INTO meta VALUES ('image_size', '{SIZE}');
             CREATE TABLE objects(id INTEGER, kind TEXT, name TEXT, device TEXT,
                                  path TEXT, partition INTEGER, size INTEGER);
             INSERT INTO objects VALUES (1, 'disk', '/dev/sda', '/dev/sda', NULL, NULL, {SIZE}),
               (2, 'file', '/dev/sda /a', '/dev/sda', '/a', NULL, 4096),
               (3, 'file', '/dev/sda /b', '/dev/sda', '/b', NULL, 4096);
             CREATE TABLE layout_segments(start INTEGER, \"end\" INTEGER, object INTEGER);
             INSERT INTO layout_segments VALUES (0, 4096, 2), (4096, 8192, 3), (8192, {SIZE}, 1);"
        ))
        .unwrap();
        let index = crate::replay::MapIndex::load(&conn).unwrap();
        let export = Export::open(&img, &Mode::ReadOnly).unwrap();
        let log = Shared::default();
        let mut s = Server::new(export, index, Sink::new(Box::new(log.clone())), None);
        s.verbose_errors = false;
        (Arc::new(s), log)
    }

    fn start(server: &Arc<Server>) -> (UnixStream, std::thread::JoinHandle<Summary>) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let server = Arc::clone(server);
        let t = std::thread::spawn(move || {
            let mut summary = Summary::default();
            let _ = session(&server, 1, b, &mut summary);
            summary
        });
        (a, t)
    }

    fn option(c: &mut UnixStream, opt: u32, data: &[u8]) {
        let mut m = nbd::IHAVEOPT.to_be_bytes().to_vec();
        m.extend_from_slice(&opt.to_be_bytes());
        m.extend_from_slice(&(data.len() as u32).to_be_bytes());
        m.extend_from_slice(data);
        c.write_all(&m).unwrap();
    }

    fn read_n(c: &mut UnixStream, n: usize) -> Vec<u8> {
        let mut b = vec![0u8; n];
        c.read_exact(&mut b).unwrap();
        b
    }

    fn request(c: &mut UnixStream, kind: u16, offset: u64, len: u32) {
        let mut r = nbd::REQUEST_MAGIC.to_be_bytes().to_vec();
        r.extend_from_slice(&[0, 0]);
        r.extend_from_slice(&kind.to_be_bytes());
        r.extend_from_slice(&42u64.to_be_bytes());
        r.extend_from_slice(&offset.to_be_bytes());
        r.extend_from_slice(&len.to_be_bytes());
        c.write_all(&r).unwrap();
    }

    #[test]
    fn export_name_pads_unless_no_zeroes_and_logs_by_object() {
        let dir = tempfile::tempdir().unwrap();
        let (srv, log) = server(dir.path());
        let (mut c, t) = start(&srv);
        read_n(&mut c, 18);
        c.write_all(&nbd::FLAG_C_FIXED_NEWSTYLE.to_be_bytes())
            .unwrap();
        option(&mut c, nbd::OPT_EXPORT_NAME, b"whatever");
        let r = read_n(&mut c, 134);
        assert_eq!(u64::from_be_bytes(r[..8].try_into().unwrap()), SIZE);
        let flags = u16::from_be_bytes([r[8], r[9]]);
        assert_ne!(flags & nbd::FLAG_READ_ONLY, 0);
        assert!(r[10..].iter().all(|&b| b == 0));
        // Three objects in one read, then the same file again: one line
        // per change of object.
        request(&mut c, nbd::CMD_READ, 100, 9000);
        let h = read_n(&mut c, 16);
        assert_eq!(&h[4..8], &[0, 0, 0, 0]);
        let data = read_n(&mut c, 9000);
        assert_eq!(data[0], 100);
        request(&mut c, nbd::CMD_READ, 8192, 10);
        read_n(&mut c, 16 + 10);
        request(&mut c, nbd::CMD_WRITE_ZEROES, 0, 10);
        assert_eq!(&read_n(&mut c, 16)[4..8], &nbd::EPERM.to_be_bytes());
        request(&mut c, nbd::CMD_DISC, 0, 0);
        let summary = t.join().unwrap();
        assert!(summary.transmission);
        assert_eq!(summary.requests, 4);
        let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
        assert_eq!(
            text,
            "[c1] read f /dev/sda /a\n[c1] read f /dev/sda /b\n[c1] read v /dev/sda\n\
             [c1] zero failed (EPERM) at 0x0+10\n"
        );
        assert_eq!(srv.active_connections(), 0);
    }

    #[test]
    fn endless_options_are_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let (srv, _) = server(dir.path());
        let (mut c, t) = start(&srv);
        read_n(&mut c, 18);
        c.write_all(&3u32.to_be_bytes()).unwrap();
        for _ in 0..MAX_OPTIONS {
            option(&mut c, 0x1234, b"");
            let r = read_n(&mut c, 20);
            assert_eq!(&r[12..16], &nbd::REP_ERR_UNSUP.to_be_bytes());
        }
        // The server has closed already (or does on this one).
        let mut m = nbd::IHAVEOPT.to_be_bytes().to_vec();
        m.extend_from_slice(&[0, 0, 0x12, 0x34, 0, 0, 0, 0]);
        let _ = c.write_all(&m);
        let mut rest = Vec::new();
        let _ = c.read_to_end(&mut rest);
        assert!(rest.is_empty());
        assert!(!t.join().unwrap().transmission);
    }

    #[test]
    fn abort_is_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let (srv, _) = server(dir.path());
        let (mut c, t) = start(&srv);
        read_n(&mut c, 18);
        c.write_all(&3u32.to_be_bytes()).unwrap();
        option(&mut c, nbd::OPT_ABORT, b"");
        let r = read_n(&mut c, 20);
        assert_eq!(&r[12..16], &nbd::REP_ACK.to_be_bytes());
        assert!(!t.join().unwrap().transmission);
    }
}
