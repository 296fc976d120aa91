//! `bmap serve`: an NBD server that exports a disk image and says, as the
//! guest reads, which objects of the map each request touches.
//!
//! * [`nbd`]: the wire protocol, pure encoding and decoding.
//! * [`export`]: the image backend (read-only, copy-on-write overlay, or
//!   direct).
//! * [`conn`]: one connection, from handshake to disconnect.
//! * [`log`]: the live attributed log and the nbdkit-format trace.
//!
//! [`Server`] holds what the connections share and runs the accept loop:
//! one thread per connection, at most [`MAX_CONNECTIONS`] at once.

pub mod conn;
pub mod export;
pub mod log;
pub mod nbd;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::replay::MapIndex;

use export::Export;
use log::Sink;

/// Most connections served at once; a connection past that is closed at
/// once, so a flood of clients cannot exhaust threads or memory.
pub const MAX_CONNECTIONS: usize = 1024;

/// What every connection shares.
pub struct Server {
    pub export: Export,
    pub index: MapIndex,
    /// The live attributed log.
    pub log: Sink,
    /// The trace, with `--trace-out`.
    pub trace: Option<Sink>,
    next_connection: AtomicU64,
    active: AtomicUsize,
    /// Set once a log or trace write has failed (reported once).
    sink_failed: AtomicBool,
    /// Print per-connection errors (hostile clients, I/O errors) on stderr.
    pub verbose_errors: bool,
}

impl Server {
    pub fn new(export: Export, index: MapIndex, log: Sink, trace: Option<Sink>) -> Server {
        Server {
            export,
            index,
            log,
            trace,
            next_connection: AtomicU64::new(1),
            active: AtomicUsize::new(0),
            sink_failed: AtomicBool::new(false),
            verbose_errors: true,
        }
    }

    /// The transmission flags of the export.
    pub fn transmission_flags(&self) -> u16 {
        // Every connection sees the same image and overlay, and a flush
        // covers them all: several connections at once are safe.
        let mut f = nbd::FLAG_HAS_FLAGS | nbd::FLAG_SEND_FLUSH | nbd::FLAG_CAN_MULTI_CONN;
        if self.export.writable() {
            f |= nbd::FLAG_SEND_FUA | nbd::FLAG_SEND_TRIM | nbd::FLAG_SEND_WRITE_ZEROES;
        } else {
            f |= nbd::FLAG_READ_ONLY;
        }
        f
    }

    /// Connections being served now.
    pub fn active_connections(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    fn sink_error(&self, what: &str, e: &std::io::Error) {
        if !self.sink_failed.swap(true, Ordering::SeqCst) {
            eprintln!(
                "bmap: serve: writing the {what} failed: {e} (further failures not reported)"
            );
        }
    }

    fn emit_log(&self, live: &mut log::LiveLog) {
        if let Err(e) = live.emit(&self.log) {
            self.sink_error("log", &e);
        }
    }

    fn emit_trace(&self, trace: &mut log::TraceLog, sink: &Sink) {
        if let Err(e) = trace.emit(sink) {
            self.sink_error("trace", &e);
        }
    }

    /// Flushes the log and the trace (on shutdown).
    pub fn flush(&self) {
        let _ = self.log.flush();
        if let Some(t) = &self.trace {
            let _ = t.flush();
        }
    }

    /// Accepts connections until the listener fails, serving each on its
    /// own thread.
    pub fn serve<L: Listener>(self: &Arc<Self>, listener: L) -> std::io::Result<()> {
        loop {
            let stream = match listener.accept_stream() {
                Ok(s) => s,
                // A client that gave up before we accepted it, or a
                // momentary lack of descriptors: keep serving the others.
                Err(e) if transient(&e) => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    continue;
                }
                Err(e) => return Err(e),
            };
            self.spawn(stream);
        }
    }

    /// Serves `stream` on a new thread (or closes it when there are too
    /// many connections already).
    pub fn spawn<S: conn::Stream>(self: &Arc<Self>, stream: S) {
        if self.active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            self.active.fetch_sub(1, Ordering::SeqCst);
            if self.verbose_errors {
                eprintln!("bmap: serve: more than {MAX_CONNECTIONS} connections; refusing one");
            }
            return;
        }
        let id = self.next_connection.fetch_add(1, Ordering::SeqCst);
        let server = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name(format!("bmap-nbd-{id}"))
            .spawn(move || {
                // Decrements the count even if the session panics.
                struct Active<'a>(&'a AtomicUsize);
                impl Drop for Active<'_> {
                    fn drop(&mut self) {
                        self.0.fetch_sub(1, Ordering::SeqCst);
                    }
                }
                let _active = Active(&server.active);
                let mut summary = conn::Summary::default();
                if let Err(e) = conn::session(&server, id, stream, &mut summary) {
                    if server.verbose_errors && !e.is_disconnect() {
                        eprintln!(
                            "bmap: serve: connection {id}: {e} (after {} requests); connection closed",
                            summary.requests
                        );
                    }
                }
            });
        if let Err(e) = spawned {
            // The closure (and the stream in it) is dropped: the client
            // sees its connection closed.
            self.active.fetch_sub(1, Ordering::SeqCst);
            eprintln!("bmap: serve: cannot start a thread for connection {id}: {e}");
        }
    }
}

fn transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | Interrupted | WouldBlock
    ) || matches!(e.raw_os_error(), Some(23 | 24)) // ENFILE, EMFILE
}

/// A listening socket.
pub trait Listener {
    type Stream: conn::Stream;
    fn accept_stream(&self) -> std::io::Result<Self::Stream>;
}

impl Listener for std::os::unix::net::UnixListener {
    type Stream = std::os::unix::net::UnixStream;
    fn accept_stream(&self) -> std::io::Result<Self::Stream> {
        self.accept().map(|(s, _)| s)
    }
}

impl Listener for std::net::TcpListener {
    type Stream = std::net::TcpStream;
    fn accept_stream(&self) -> std::io::Result<Self::Stream> {
        let (s, _) = self.accept()?;
        // Replies are whole messages; don't hold small ones back.
        let _ = s.set_nodelay(true);
        Ok(s)
    }
}
