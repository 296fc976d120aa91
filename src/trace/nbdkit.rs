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
use std::io::{self, BufRead};
use std::sync::{mpsc, Arc};

pub mod paired;

use crate::trace::{
    chunk_lines, ChunkEnd, Event, LineReader, Op, PositionalRead, Request, TraceError, Window,
    MAX_LINE,
};

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

/// A request awaiting its completion. Flags rather than `Option`s keep it
/// to 48 bytes: a million of these may be pending, and each crosses from a
/// worker to the pairing.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Pending {
    line: u64,
    /// Meaningful if `has_time`; 0 otherwise.
    time: f64,
    offset: u64,
    length: u64,
    /// Meaningful if `has_connection`; 0 otherwise.
    connection: u64,
    op: Op,
    has_time: bool,
    has_connection: bool,
}

impl Pending {
    fn new(
        line: u64,
        time: Option<f64>,
        op: Op,
        offset: u64,
        length: u64,
        connection: Option<u64>,
    ) -> Self {
        Pending {
            line,
            time: time.unwrap_or(0.0),
            offset,
            length,
            connection: connection.unwrap_or(0),
            op,
            has_time: time.is_some(),
            has_connection: connection.is_some(),
        }
    }

    fn connection(&self) -> Option<u64> {
        self.has_connection.then_some(self.connection)
    }

    fn into_request(self, failed: Option<String>) -> Request {
        Request {
            line: self.line,
            time: self.has_time.then_some(self.time),
            op: self.op,
            offset: self.offset,
            length: self.length,
            connection: self.connection(),
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

/// One connection's requests awaiting their completion, by id.
///
/// nbdkit numbers a connection's requests in turn and few are in flight
/// at once, so a request is mostly kept in the ring's slot for its id,
/// where its completion finds it with one compare; an id whose slot is
/// taken goes to the hash table. An id is in one or the other, never both.
#[derive(Default)]
struct Waiting {
    /// Empty, or [`RING`] slots.
    ring: Vec<Option<(u64, Pending)>>,
    /// Whether to make the ring at the first request: only small
    /// connection numbers have one, so the rings' memory stays bounded.
    ringed: bool,
    spill: Table<u64, Pending>,
    len: usize,
}

/// Slots of a connection's ring.
const RING: usize = 512;

impl Waiting {
    fn ringed() -> Self {
        Waiting {
            ringed: true,
            ..Waiting::default()
        }
    }

    /// The ring slot of request `id`.
    fn slot(id: u64) -> usize {
        (id % RING as u64) as usize
    }

    #[inline(always)]
    fn get_mut(&mut self, id: u64) -> Option<&mut Pending> {
        let i = Self::slot(id);
        if matches!(self.ring.get(i), Some(Some((held, _))) if *held == id) {
            return self.ring[i].as_mut().map(|(_, p)| p);
        }
        if self.spill.is_empty() {
            return None;
        }
        self.spill.get_mut(&id)
    }

    /// Keeps request `id` unless a request with that id is pending: then
    /// false, and nothing changes.
    #[inline(always)]
    fn insert_new(&mut self, id: u64, p: Pending) -> bool {
        if self.get_mut(id).is_some() {
            return false;
        }
        self.insert(id, p);
        true
    }

    /// Keeps a request whose id is not pending.
    #[inline(always)]
    fn insert(&mut self, id: u64, p: Pending) {
        if self.ring.is_empty() && self.ringed {
            self.ring.resize(RING, None);
        }
        self.len += 1;
        match self.ring.get_mut(Self::slot(id)) {
            Some(slot @ None) => *slot = Some((id, p)),
            _ => {
                self.spill.insert(id, p);
            }
        }
    }

    /// Takes out request `id` if its op is `op`; else the request pending
    /// with that id, if any.
    #[inline(always)]
    fn complete(&mut self, id: u64, op: Op) -> Result<Pending, Option<Pending>> {
        if let Some(slot) = self.ring.get_mut(Self::slot(id)) {
            if let Some((held, p)) = slot {
                if *held == id {
                    if p.op != op {
                        return Err(Some(*p));
                    }
                    let p = *p;
                    *slot = None;
                    self.len -= 1;
                    return Ok(p);
                }
            }
        }
        if self.spill.is_empty() {
            return Err(None);
        }
        match self.spill.entry(id) {
            Entry::Occupied(e) if e.get().op == op => {
                self.len -= 1;
                Ok(e.remove())
            }
            Entry::Occupied(e) => Err(Some(*e.get())),
            Entry::Vacant(_) => Err(None),
        }
    }

    /// Whether a request whose id is `wanted` is pending.
    fn any_pending(&self, wanted: impl Fn(u64) -> bool) -> bool {
        self.len > 0
            && (self.ring.iter().flatten().any(|(id, _)| wanted(*id))
                || self.spill.keys().any(|&id| wanted(id)))
    }

    /// Everything pending, taken out and handed to `put` with its id.
    fn drain(&mut self, mut put: impl FnMut(u64, Pending)) {
        let in_ring = self.len - self.spill.len();
        for (id, p) in self.ring.iter_mut().filter_map(Option::take).take(in_ring) {
            put(id, p);
        }
        for (id, p) in self.spill.drain() {
            put(id, p);
        }
        self.len = 0;
    }
}

/// Requests awaiting their completion, by connection then id. A
/// disconnect takes its connection's requests whole, whatever else is
/// pending. Connections are few and numbered from 1, so the small numbers
/// index an array.
#[derive(Default)]
struct InFlight {
    small: Vec<Waiting>,
    other: Table<Option<u64>, Waiting>,
}

/// Connections numbered below this have a slot in [`InFlight::small`].
const SMALL_CONNECTIONS: u64 = 64;

impl InFlight {
    #[inline]
    fn get_mut(&mut self, connection: Option<u64>) -> Option<&mut Waiting> {
        match connection {
            Some(c) if c < SMALL_CONNECTIONS => self.small.get_mut(c as usize),
            _ => self.other.get_mut(&connection),
        }
    }

    #[inline(always)]
    fn waiting(&mut self, connection: Option<u64>) -> &mut Waiting {
        match connection {
            Some(c) if c < SMALL_CONNECTIONS => {
                let c = c as usize;
                if self.small.len() <= c {
                    self.small.resize_with(c + 1, Waiting::ringed);
                }
                &mut self.small[c]
            }
            _ => self.other.entry(connection).or_default(),
        }
    }

    /// A connection's pending requests, taken out.
    fn take(&mut self, connection: Option<u64>) -> Vec<Pending> {
        let mut left = Vec::new();
        match connection {
            Some(c) if c < SMALL_CONNECTIONS => {
                if let Some(w) = self.small.get_mut(c as usize) {
                    w.drain(|_, p| left.push(p));
                }
            }
            _ => {
                if let Some(mut w) = self.other.remove(&connection) {
                    w.drain(|_, p| left.push(p));
                }
            }
        }
        left
    }

    fn get(&self, connection: Option<u64>) -> Option<&Waiting> {
        match connection {
            Some(c) if c < SMALL_CONNECTIONS => self.small.get(c as usize),
            _ => self.other.get(&connection),
        }
    }

    /// Whether a request on `connection` whose id is `wanted` is pending.
    fn any_pending(&self, connection: Option<u64>, wanted: impl Fn(u64) -> bool) -> bool {
        self.get(connection).is_some_and(|w| w.any_pending(wanted))
    }

    /// Takes out request `id` on `connection` if its op is `op`; else the
    /// request pending with that id, if any (see [`Waiting::complete`]).
    #[inline(always)]
    fn complete(
        &mut self,
        connection: Option<u64>,
        id: u64,
        op: Op,
    ) -> Result<Pending, Option<Pending>> {
        match self.get_mut(connection) {
            Some(w) => w.complete(id, op),
            None => Err(None),
        }
    }

    /// Everything pending, taken out and handed to `put` with its id.
    fn drain_each(&mut self, mut put: impl FnMut(u64, Pending)) {
        for w in &mut self.small {
            w.drain(&mut put);
        }
        for (_, mut w) in self.other.drain() {
            w.drain(&mut put);
        }
    }

    fn drain(&mut self) -> Vec<Pending> {
        let mut left = Vec::new();
        self.drain_each(|_, p| left.push(p));
        left
    }
}

type Item = Result<Event, TraceError>;

/// Pairs requests with their completions: what the lines of a trace say,
/// in order, turned into events. Both parsers feed it, the sequential one
/// line by line and the parallel one chunk by chunk, so they cannot
/// disagree about anything but where lines come from.
#[derive(Default)]
struct Pairing {
    pending: InFlight,
    npending: usize,
    /// Events due before the next line's, when a line yields several.
    out: VecDeque<Item>,
    last_size: Option<u64>,
}

impl Pairing {
    /// Takes in line `n`: returns the event it yields, if only one, else
    /// queues them all in `out`. Callers empty `out` first, so the order
    /// holds.
    fn apply(&mut self, n: u64, parsed: Result<Parsed, TraceError>) -> Option<Item> {
        let parsed = match parsed {
            Ok(p) => p,
            Err(e) => return Some(Err(e)),
        };
        match parsed {
            Parsed::Skip => None,
            Parsed::Connect { size } => {
                if self.last_size == Some(size) {
                    return None;
                }
                self.last_size = Some(size);
                Some(Ok(Event::DiskSize { line: n, size }))
            }
            Parsed::Disconnect { connection } => {
                let left = self.pending.take(connection);
                self.npending -= left.len();
                self.unfinished(left);
                None
            }
            Parsed::Request { id, pending } => self.request(id, pending),
            Parsed::Completion {
                connection,
                op,
                id,
                failed,
            } => self.completion(n, connection, op, id, failed),
        }
    }

    /// Request line `pending.line`.
    #[inline]
    fn request(&mut self, id: u64, pending: Pending) -> Option<Item> {
        let full = self.npending >= MAX_PENDING;
        let waiting = self.pending.waiting(pending.connection());
        if let Some(old) = waiting.get_mut(id) {
            // nbdkit ids are unique per connection: the old one never
            // completed.
            let old = std::mem::replace(old, pending);
            return Some(Ok(Event::Request(old.into_request(Some(format!(
                "no completion before id {id} was reused at line {}",
                pending.line
            ))))));
        }
        if full {
            return Some(Err(TraceError::parse(
                pending.line,
                format!("more than {MAX_PENDING} requests awaiting completion"),
            )));
        }
        waiting.insert(id, pending);
        self.npending += 1;
        None
    }

    /// Completion line `n`.
    #[inline]
    fn completion(
        &mut self,
        n: u64,
        connection: Option<u64>,
        op: Op,
        id: u64,
        failed: Option<String>,
    ) -> Option<Item> {
        match self.pending.complete(connection, id, op) {
            Ok(p) => {
                self.npending -= 1;
                Some(Ok(Event::Request(p.into_request(failed))))
            }
            Err(Some(p)) => {
                let message = format!(
                    "completion of {} id={id}{} does not match the pending {} of line {}",
                    op.as_str(),
                    conn_text(connection),
                    p.op.as_str(),
                    p.line
                );
                Some(Ok(Event::Warning { line: n, message }))
            }
            Err(None) => {
                let message = format!(
                    "completion of {} id={id}{} without its request",
                    op.as_str(),
                    conn_text(connection)
                );
                Some(Ok(Event::Warning { line: n, message }))
            }
        }
    }

    fn unfinished(&mut self, mut left: Vec<Pending>) {
        left.sort_by_key(|p| p.line);
        self.out.extend(left.into_iter().map(|p| {
            Ok(Event::Request(
                p.into_request(Some(NO_COMPLETION.to_string())),
            ))
        }));
    }

    /// The trace is over: what is still pending never completed.
    fn finish(&mut self) {
        let left = self.pending.drain();
        self.npending = 0;
        self.unfinished(left);
    }
}

/// Line `n` of a chunk whose first line is line `base + 1` of the trace,
/// renumbered as a line of the trace.
fn rebase(
    base: u64,
    n: u64,
    mut parsed: Result<Parsed, TraceError>,
) -> (u64, Result<Parsed, TraceError>) {
    match &mut parsed {
        Ok(Parsed::Request { pending, .. }) => pending.line += base,
        Err(TraceError::Parse { line, .. } | TraceError::LineTooLong { line, .. }) => *line += base,
        Ok(_) | Err(TraceError::Io(_)) => {}
    }
    (n + base, parsed)
}

/// The sequential parser, over any reader.
pub struct Parser<R> {
    lines: LineReader<R>,
    pairing: Pairing,
    known: LineCache,
    finished: bool,
}

impl<R: BufRead> Parser<R> {
    pub fn new(lines: LineReader<R>) -> Self {
        Parser {
            lines,
            pairing: Pairing::default(),
            known: LineCache::default(),
            finished: false,
        }
    }
}

impl<R: BufRead> Iterator for Parser<R> {
    type Item = Item;
    fn next(&mut self) -> Option<Item> {
        loop {
            if let Some(e) = self.pairing.out.pop_front() {
                return Some(e);
            }
            if self.finished {
                return None;
            }
            let n = self.lines.line() + 1;
            let parsed = match self.lines.next_line() {
                None => {
                    self.finished = true;
                    self.pairing.finish();
                    continue;
                }
                Some(Err(e)) if e.is_fatal() => {
                    self.finished = true;
                    self.pairing.out.push_back(Err(e));
                    self.pairing.finish();
                    continue;
                }
                Some(Err(e)) => Err(e),
                Some(Ok(l)) => parse_line(l, n, &mut self.known),
            };
            if let Some(e) = self.pairing.apply(n, parsed) {
                return Some(e);
            }
        }
    }
}

/// Bytes the parallel parser reads at a time: a chunk's parsed lines
/// (some 13 000, a megabyte) stay in the cache while pairing takes them in,
/// and memory stays small with a few chunks ahead per worker.
pub const CHUNK: usize = 1 << 20;

/// Chunks a worker may have parsed ahead of the pairing.
const CHUNKS_AHEAD: usize = 2;

/// A line that says something, as a worker hands it to the pairing: 48
/// bytes, no pointer, since every one crosses from one core's cache to
/// another's. Requests and successful completions, nearly every line of a
/// trace, are held here whole; anything else is in its chunk's `others`.
#[derive(Clone, Copy)]
struct Said {
    /// The request's or completion's id; for [`What::Other`], the index in
    /// `others`.
    id: u64,
    offset: u64,
    length: u64,
    time: f64,
    connection: u64,
    /// In the chunk, from 1.
    line: u32,
    what: What,
    op: Op,
    has_time: bool,
    has_connection: bool,
}

impl Said {
    fn new(what: What, line: u64, id: u64, p: &Pending) -> Self {
        Said {
            id,
            offset: p.offset,
            length: p.length,
            time: p.time,
            connection: p.connection,
            // Chunks are at most MAX_CHUNK bytes, so their lines fit.
            line: line as u32,
            what,
            op: p.op,
            has_time: p.has_time,
            has_connection: p.has_connection,
        }
    }

    /// The request it holds, on line `line` of the trace.
    fn pending(&self, line: u64) -> Pending {
        Pending {
            line,
            time: self.time,
            offset: self.offset,
            length: self.length,
            connection: self.connection,
            op: self.op,
            has_time: self.has_time,
            has_connection: self.has_connection,
        }
    }
}

#[derive(Clone, Copy)]
enum What {
    Request,
    Done,
    Other,
}

/// What a worker made of a chunk, or of a part of one: a chunk of short
/// bad lines makes many records, each with a message, so a worker hands
/// them over in parts of at most [`PART`] records.
#[derive(Default)]
struct Chunk {
    said: Vec<Said>,
    /// The rarer lines, numbered from 1 in the part, as `said` is.
    others: Vec<(u64, Result<Parsed, TraceError>)>,
    /// Lines in the part, said something or not.
    count: u64,
    end: End,
}

/// Records in a part at most: 3 MB of them, far more than 1 MiB of a
/// real trace makes.
const PART: usize = 1 << 16;

/// Records with a heap part (an error's message) in a part at most.
const PART_OTHERS: usize = 1 << 12;

#[derive(Default)]
enum End {
    /// The chunk goes on in the worker's next part.
    Part,
    /// The next chunk is the next worker's.
    #[default]
    More,
    /// The trace ends in this chunk.
    Last,
    Failed(io::Error),
}

/// The parallel parser: workers split and parse fixed chunks of the
/// trace, each line on its own (a line depends on no other), and the
/// pairing takes the chunks in, in order, on the caller's thread.
/// Whatever the chunk size or the number of workers, it yields what
/// [`Parser`] yields over the same bytes.
pub struct Parallel {
    /// From worker `w`, chunks `w`, `w + workers`, `w + 2 workers`…
    chunks: Vec<mpsc::Receiver<Chunk>>,
    /// Emptied parts, back to their worker to be refilled.
    spent: Vec<mpsc::Sender<Chunk>>,
    workers: Vec<Option<std::thread::JoinHandle<()>>>,
    /// The chunk to take in after the current one.
    next: u64,
    /// The part being taken in, up to `said[at]`, and its worker.
    current: Chunk,
    at: usize,
    from: Option<usize>,
    /// Lines of the trace before the current part.
    base: u64,
    pairing: Pairing,
    finished: bool,
}

/// Largest chunk: a part's line numbers must fit a `u32`.
const MAX_CHUNK: usize = 1 << 30;

/// Parses the nbdkit trace in `src` with `workers` threads reading
/// `chunk` bytes at a time. Memory depends on those, not on the trace.
pub fn parallel<S: PositionalRead + ?Sized + 'static>(
    src: Arc<S>,
    chunk: usize,
    workers: usize,
) -> io::Result<Parallel> {
    let workers = workers.max(1);
    let chunk = chunk.clamp(1, MAX_CHUNK);
    let mut p = Parallel {
        chunks: Vec::with_capacity(workers),
        spent: Vec::with_capacity(workers),
        workers: Vec::with_capacity(workers),
        next: 0,
        current: Chunk::default(),
        at: 0,
        from: None,
        base: 0,
        pairing: Pairing::default(),
        finished: false,
    };
    for w in 0..workers {
        let (chunk_tx, chunk_rx) = mpsc::sync_channel(CHUNKS_AHEAD);
        let (spent_tx, spent_rx) = mpsc::channel();
        let src = Arc::clone(&src);
        let handle = std::thread::Builder::new()
            .name(format!("bmap-parse-{w}"))
            .spawn(move || work(&*src, w as u64, workers as u64, chunk, &chunk_tx, &spent_rx))?;
        p.chunks.push(chunk_rx);
        p.spent.push(spent_tx);
        p.workers.push(Some(handle));
    }
    Ok(p)
}

/// A worker: chunks `first`, `first + stride`… until the last, or until
/// the pairing stops listening.
fn work<S: PositionalRead + ?Sized>(
    src: &S,
    first: u64,
    stride: u64,
    size: usize,
    chunks: &mpsc::SyncSender<Chunk>,
    spent: &mpsc::Receiver<Chunk>,
) {
    let mut window = Window::default();
    let mut known = LineCache::default();
    let mut k = first;
    let mut send = |c: Chunk| chunks.send(c).is_ok();
    loop {
        let fresh = || spent.try_recv().unwrap_or_default();
        let Some(last) = parse_chunk(src, k, size, &mut window, &mut known, fresh, &mut send)
        else {
            return;
        };
        if last {
            return;
        }
        match k.checked_add(stride) {
            Some(next) => k = next,
            None => return,
        }
    }
}

/// Parses chunk `k`, handing its parts to `send`, each in a [`Chunk`]
/// from `fresh`: whether it was the last (`None` if `send` failed).
fn parse_chunk<S: PositionalRead + ?Sized>(
    src: &S,
    k: u64,
    size: usize,
    window: &mut Window,
    known: &mut LineCache,
    fresh: impl Fn() -> Chunk,
    send: &mut impl FnMut(Chunk) -> bool,
) -> Option<bool> {
    let mut c = fresh();
    // Lines of the chunk in parts already sent.
    let mut sent = 0;
    let mut listening = true;
    let read = chunk_lines(src, k, size, window, |n, line| {
        let n = n - sent;
        let parsed = match line {
            Some(l) => parse_line(l, n, known),
            None => Err(TraceError::LineTooLong {
                line: n,
                max: MAX_LINE,
            }),
        };
        match parsed {
            Ok(Parsed::Skip) => {}
            Ok(Parsed::Request { id, pending }) => {
                c.said.push(Said::new(What::Request, n, id, &pending))
            }
            Ok(Parsed::Completion {
                connection,
                op,
                id,
                failed: None,
            }) => c.said.push(Said::new(
                What::Done,
                n,
                id,
                &Pending::new(n, None, op, 0, 0, connection),
            )),
            other => {
                c.said.push(Said::new(
                    What::Other,
                    n,
                    c.others.len() as u64,
                    &Pending::new(n, None, Op::Read, 0, 0, None),
                ));
                c.others.push((n, other));
            }
        }
        if c.said.len() < PART && c.others.len() < PART_OTHERS {
            return true;
        }
        let part = std::mem::replace(&mut c, fresh());
        listening = send(Chunk {
            count: n,
            end: End::Part,
            ..part
        });
        sent += n;
        listening
    });
    if !listening {
        return None;
    }
    let (count, end) = match read {
        Ok(ChunkEnd { lines, last: false }) => (lines - sent, End::More),
        Ok(ChunkEnd { lines, last: true }) => (lines - sent, End::Last),
        Err(e) => (0, End::Failed(e)),
    };
    let last = !matches!(end, End::More);
    send(Chunk { count, end, ..c }).then_some(last)
}

impl Parallel {
    /// The current part is taken in: on to the next, or to the end.
    fn advance(&mut self) {
        let same = match std::mem::take(&mut self.current.end) {
            End::Part => true,
            End::More => false,
            End::Last => {
                self.finished = true;
                self.pairing.finish();
                return;
            }
            End::Failed(e) => {
                self.finished = true;
                self.pairing.out.push_back(Err(TraceError::Io(e)));
                self.pairing.finish();
                return;
            }
        };
        self.base += self.current.count;
        if let Some(w) = self.from {
            let mut spent = std::mem::take(&mut self.current);
            spent.said.clear();
            spent.others.clear();
            // A worker that has stopped needs it no more.
            let _ = self.spent[w].send(spent);
        }
        let w = match self.from {
            Some(w) if same => w,
            _ => {
                let w = (self.next % self.chunks.len() as u64) as usize;
                self.next += 1;
                w
            }
        };
        self.from = Some(w);
        self.at = 0;
        match self.chunks[w].recv() {
            Ok(c) => self.current = c,
            Err(_) => {
                // A worker ends without sending its chunk only by
                // panicking: then so do we, as if it had run here.
                if let Some(Err(panic)) = self.workers[w].take().map(|h| h.join()) {
                    std::panic::resume_unwind(panic);
                }
                self.current = Chunk {
                    end: End::Failed(io::Error::other("a parsing thread stopped early")),
                    ..Chunk::default()
                };
            }
        }
    }
}

impl Iterator for Parallel {
    type Item = Item;
    fn next(&mut self) -> Option<Item> {
        loop {
            if let Some(e) = self.pairing.out.pop_front() {
                return Some(e);
            }
            if let Some(&said) = self.current.said.get(self.at) {
                self.at += 1;
                let line = u64::from(said.line) + self.base;
                let e = match said.what {
                    What::Request => self.pairing.request(said.id, said.pending(line)),
                    What::Done => {
                        let connection = said.has_connection.then_some(said.connection);
                        self.pairing
                            .completion(line, connection, said.op, said.id, None)
                    }
                    What::Other => {
                        let slot = &mut self.current.others[said.id as usize];
                        let (n, parsed) = std::mem::replace(slot, (0, Ok(Parsed::Skip)));
                        let (n, parsed) = rebase(self.base, n, parsed);
                        self.pairing.apply(n, parsed)
                    }
                };
                if let Some(e) = e {
                    return Some(e);
                }
                continue;
            }
            if self.finished {
                return None;
            }
            self.advance();
        }
    }
}

impl Drop for Parallel {
    /// Workers end at their next send once nobody listens; they are waited
    /// for so that none outlives the parse.
    fn drop(&mut self) {
        self.chunks.clear();
        for h in self.workers.iter_mut().filter_map(Option::take) {
            let _ = h.join();
        }
    }
}

fn conn_text(c: Option<u64>) -> String {
    match c {
        Some(c) => format!(" on connection {c}"),
        None => String::new(),
    }
}

#[inline]
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

#[inline(always)]
fn parse_line(l: &[u8], n: u64, cache: &mut LineCache) -> Result<Parsed, TraceError> {
    visit_line(l, n, cache, &mut Build)
}

/// Reads line `l` (number `n`): a request or a completion of the usual
/// shape goes to `sink`'s own methods, anything else to
/// [`Sink::other`] as [`parse_rest`] reads it.
#[inline(always)]
fn visit_line<S: Sink>(l: &[u8], n: u64, cache: &mut LineCache, sink: &mut S) -> S::Out {
    let (stamp, rest) = match cache.dates.stamp(l) {
        Some((t, r)) => (Some(t), r),
        None => (None, l),
    };
    match quick::<S, false>(stamp, rest, n, &mut cache.heads, sink) {
        Some((out, _)) => out,
        None => sink.other(parse_rest(stamp.map(Stamp::seconds), rest, n)),
    }
}

/// [`visit_line`] for a line of the quick path's shape that starts `rest`
/// and ends at a `\n` in it (which `rest` need not end at): what the sink
/// made of it and the line's length, without its newline. `None`, having
/// told the sink nothing, for any other line: [`visit_line`] then reads
/// it once its end is found.
#[inline(always)]
fn visit_quick_line<S: Sink>(
    rest: &[u8],
    n: u64,
    cache: &mut LineCache,
    sink: &mut S,
) -> Option<(S::Out, usize)> {
    // A line without a timestamp, or whose timestamp ends it, is rare:
    // the careful way, which finds its end first.
    let (stamp, after) = cache.dates.stamp(rest)?;
    let (out, tail) = quick::<S, true>(Some(stamp), after, n, &mut cache.heads, sink)?;
    Some((out, rest.len() - tail))
}

/// Where [`visit_line`] hands what it read. The two common lines go
/// straight to their own method, so that their fields stay in registers:
/// built into a [`Parsed`] and matched on, they went through memory in
/// pieces of other widths than they were read back in, and every line
/// waited on those stores (measured: a fifth of the pairing's time).
trait Sink {
    type Out;
    /// A request line: its id and request.
    fn request(&mut self, id: u64, pending: Pending) -> Self::Out;
    /// A successful completion on a connection.
    fn completion(&mut self, connection: u64, op: Op, id: u64) -> Self::Out;
    /// Any other line, read the general way.
    fn other(&mut self, parsed: Result<Parsed, TraceError>) -> Self::Out;
}

/// The sink that builds the [`Parsed`] line.
struct Build;

impl Sink for Build {
    type Out = Result<Parsed, TraceError>;

    #[inline(always)]
    fn request(&mut self, id: u64, pending: Pending) -> Self::Out {
        Ok(Parsed::Request { id, pending })
    }

    #[inline(always)]
    fn completion(&mut self, connection: u64, op: Op, id: u64) -> Self::Out {
        Ok(Parsed::Completion {
            connection: Some(connection),
            op,
            id,
            failed: None,
        })
    }

    #[inline(always)]
    fn other(&mut self, parsed: Result<Parsed, TraceError>) -> Self::Out {
        parsed
    }
}

/// A timestamp read but not yet added up: half the lines (completions)
/// never need their time, and the sum costs a division.
#[derive(Clone, Copy)]
struct Stamp {
    /// The whole seconds.
    secs: f64,
    /// The fraction's digits, and how many they are (at most 15).
    digits: u64,
    count: usize,
}

impl Stamp {
    /// Seconds since the epoch: the nearest double to the fraction, added
    /// to the whole seconds.
    #[inline]
    fn seconds(self) -> f64 {
        self.secs + self.digits as f64 / POW10[self.count]
    }
}

/// The two lines that make up nearly every trace, as nbdkit writes them:
/// `connection=N OP id=N offset=0xH count=0xH [key=value…] ...` and
/// `connection=N ...OP id=N return=0`, read in one pass. Anything else
/// (another shape, quotes, tabs, doubled spaces, a repeated key, a bad or
/// overflowing number, a failure) is `None`, and [`parse_rest`] decides:
/// what this returns is what [`parse_rest`] would. Inlined, as
/// [`DateCache::stamp`] is, so that its result stays in registers.
///
/// `rest` is the line after its timestamp or, `IN_BUFFER`, all that was
/// read from there on: the line then ends where its last field is followed
/// by a `\n`, and a line whose end the fields do not tell (what follows a
/// `...` token) is `None`. With the sink's answer comes the length of
/// `rest` after the line (0 for a line).
#[inline(always)]
fn quick<S: Sink, const IN_BUFFER: bool>(
    stamp: Option<Stamp>,
    rest: &[u8],
    n: u64,
    heads: &mut Heads,
    sink: &mut S,
) -> Option<(S::Out, usize)> {
    // Where the line ends: at the slice's end, or at a newline.
    let ends = |t: &[u8]| {
        if IN_BUFFER {
            t.first() == Some(&b'\n')
        } else {
            t.is_empty()
        }
    };
    let (head, args) = match heads.find(rest) {
        Some(found) => found,
        None => {
            let (head, args) = read_head(rest)?;
            heads.remember(rest, rest.len() - args.len(), head);
            (head, args)
        }
    };
    let (id, args) = decimal_then_space(args)?;
    if head.done {
        let tail = strip(args, b"return=0")?;
        return ends(tail).then(|| (sink.completion(head.connection, head.op, id), tail.len()));
    }
    let (connection, op) = (Some(head.connection), head.op);
    let (offset, args) = number_then_space(strip(args, b"offset=")?)?;
    let (length, mut args) = number_then_space(strip(args, b"count=")?)?;
    offset.checked_add(length)?;
    // The general tokenizer stops at the first "..." token; before it,
    // tokens must be plain (no quotes or tabs) and must not repeat a key
    // read above.
    let tail = loop {
        if let Some(tail) = strip(args, b"...").filter(|t| ends(t)) {
            break tail;
        }
        let end = args
            .iter()
            .position(|&b| b == b' ' || (IN_BUFFER && b == b'\n'))
            .unwrap_or(args.len());
        let tok = &args[..end];
        if tok == b"..." {
            // What follows is not read, so where the line ends is not
            // known here.
            if IN_BUFFER {
                return None;
            }
            break &args[args.len()..];
        }
        if end == args.len()
            || args[end] == b'\n'
            || tok.is_empty()
            || tok.iter().any(|&b| matches!(b, b'"' | b'\'' | b'\t'))
            || tok.starts_with(b"id=")
            || tok.starts_with(b"offset=")
            || tok.starts_with(b"count=")
        {
            return None;
        }
        args = &args[end + 1..];
    };
    Some((
        sink.request(
            id,
            Pending::new(n, stamp.map(Stamp::seconds), op, offset, length, connection),
        ),
        tail.len(),
    ))
}

/// What the start of a quick line says, up to its `id=`: the connection,
/// the request's name, and whether the line completes it.
#[derive(Clone, Copy)]
struct Head {
    connection: u64,
    op: Op,
    done: bool,
}

/// The start of a line of the quick path's shape, up to and with its
/// `id=`: ` connection=N OP id=` or ` connection=N ...OP id=`, what it
/// says and what follows.
#[inline(always)]
fn read_head(rest: &[u8]) -> Option<(Head, &[u8])> {
    // One space follows the timestamp; more, or a tab, is for the general
    // path.
    let rest = rest.strip_prefix(b" ").unwrap_or(rest);
    let rest = strip(rest, b"connection=")?;
    let (connection, rest) = decimal_then_space(rest)?;
    let (op, done, args) = match strip(rest, b"...") {
        Some(done) => {
            let (op, args) = op_word(done)?;
            (op, true, args)
        }
        None => {
            let (op, args) = op_word(rest)?;
            (op, false, args)
        }
    };
    // A flush is the general path's.
    if op == Op::Flush && !done {
        return None;
    }
    let head = Head {
        connection,
        op,
        done,
    };
    Some((head, strip(args, b"id=")?))
}

/// Bytes of a line's start that [`Heads`] compares at once: the longest
/// start it keeps.
const HEAD_BYTES: usize = 32;

/// Starts of lines (see [`read_head`]) read lately. A trace has a few
/// connections and a few kinds of request, so nearly every line starts as
/// one a few lines before did: comparing 32 bytes with that start, in four
/// word compares, replaces reading its connection, name and `id=`. A line
/// whose bytes match a kept start says what that start said, so what is
/// found here is what [`read_head`] would read.
///
/// A start is kept in the place a hash of its bytes picks, one to a
/// place: two starts that share one push each other out (a line each),
/// but the hash gives each of the 32 starts of 8 connections' reads and
/// writes and their completions a place of its own.
struct Heads {
    kept: [KeptHead; HEADS],
}

impl Default for Heads {
    fn default() -> Self {
        Heads {
            kept: [KeptHead::NONE; HEADS],
        }
    }
}

/// Places in [`Heads`].
const HEADS: usize = 64;

/// A start, or none (`len` 0).
#[derive(Clone, Copy)]
struct KeptHead {
    /// The start's bytes, and masks of those that are its (`len` of them).
    words: [u64; 4],
    masks: [u64; 4],
    len: usize,
    head: Head,
}

impl KeptHead {
    const NONE: KeptHead = KeptHead {
        words: [0; 4],
        masks: [0; 4],
        len: 0,
        head: Head {
            connection: 0,
            op: Op::Read,
            done: false,
        },
    };

    /// Whether the first bytes of a line, `w`, are this start.
    #[inline(always)]
    fn starts(&self, w: &[u64; 4]) -> bool {
        let differ = (0..4).fold(0, |d, i| d | ((w[i] ^ self.words[i]) & self.masks[i]));
        (differ == 0) & (self.len > 0)
    }
}

impl Heads {
    /// The first [`HEAD_BYTES`] bytes of `rest` as words, if it has them.
    #[inline(always)]
    fn words(rest: &[u8]) -> Option<[u64; 4]> {
        let (bytes, _) = rest.split_first_chunk::<HEAD_BYTES>()?;
        let (words, _) = bytes.as_chunks::<8>();
        Some([0, 1, 2, 3].map(|i| u64::from_le_bytes(words[i])))
    }

    /// Where a start whose first bytes are `w` is kept: a hash of bytes
    /// 12 to 19, where starts differ (the connection's digits, the dots, the
    /// request's name). The shortest start (` connection=1 Read id=`) has
    /// 22 bytes; bytes past a start (the id) would scatter it over many
    /// places.
    #[inline(always)]
    fn place(w: &[u64; 4]) -> usize {
        let key = (w[1] >> 32) | (w[2] << 32);
        (key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - HEADS.trailing_zeros())) as usize
    }

    /// The kept start `rest` begins with, and what follows it.
    #[inline(always)]
    fn find<'a>(&self, rest: &'a [u8]) -> Option<(Head, &'a [u8])> {
        let w = Self::words(rest)?;
        let kept = &self.kept[Self::place(&w)];
        if !kept.starts(&w) {
            return None;
        }
        Some((kept.head, rest.get(kept.len..)?))
    }

    /// Keeps the start of `rest`, `len` bytes that [`read_head`] read as
    /// `head`, in place of the one there.
    #[inline(never)]
    fn remember(&mut self, rest: &[u8], len: usize, head: Head) {
        let Some(w) = Self::words(rest).filter(|_| len <= HEAD_BYTES) else {
            return;
        };
        let masks = [0, 1, 2, 3].map(|i| match len.saturating_sub(8 * i) {
            0 => 0,
            n if n >= 8 => u64::MAX,
            n => (1u64 << (8 * n)) - 1,
        });
        let words = [0, 1, 2, 3].map(|i| w[i] & masks[i]);
        self.kept[Self::place(&w)] = KeptHead {
            words,
            masks,
            len,
            head,
        };
    }
}

/// A request's name and what follows the space after it.
#[inline(always)]
fn op_word(s: &[u8]) -> Option<(Op, &[u8])> {
    // By the first letter, then one compare of known length.
    Some(match s.first()? {
        b'R' => (Op::Read, strip(s, b"Read ")?),
        b'W' => (Op::Write, strip(s, b"Write ")?),
        b'T' => (Op::Trim, strip(s, b"Trim ")?),
        b'Z' => (Op::Zero, strip(s, b"Zero ")?),
        b'C' => (Op::Cache, strip(s, b"Cache ")?),
        b'F' => (Op::Flush, strip(s, b"Flush ")?),
        b'E' => (Op::Extents, strip(s, b"Extents ")?),
        _ => return None,
    })
}

/// `s` without `prefix`, if it starts with it: as `strip_prefix`, but the
/// length is known when compiling, so the compare is a few loads rather
/// than a call to `memcmp`.
#[inline]
fn strip<'a, const N: usize>(s: &'a [u8], prefix: &[u8; N]) -> Option<&'a [u8]> {
    match s.split_first_chunk::<N>() {
        Some((head, rest)) if head == prefix => Some(rest),
        _ => None,
    }
}

/// Decimal digits then a space: the number and what follows the space.
#[inline(always)]
fn decimal_then_space(s: &[u8]) -> Option<(u64, &[u8])> {
    // Ids and connections are short: eight bytes at once, without a
    // branch per digit (whose count no predictor guesses).
    if let Some((v, count)) = s.get(..8).and_then(short_digits) {
        return (count > 0 && s[count] == b' ').then(|| (v, &s[count + 1..]));
    }
    decimal_then_space_bytewise(s)
}

/// [`decimal_then_space`], a byte at a time.
#[inline(never)]
fn decimal_then_space_bytewise(s: &[u8]) -> Option<(u64, &[u8])> {
    let mut v: u64 = 0;
    // 19 digits cannot overflow; more are left to the general path.
    for (i, &b) in s.iter().take(20).enumerate() {
        let d = b.wrapping_sub(b'0');
        if d < 10 && i < 19 {
            v = v * 10 + u64::from(d);
        } else if b == b' ' && i > 0 {
            return Some((v, &s[i + 1..]));
        } else {
            return None;
        }
    }
    None
}

/// A number as [`num`] reads it (decimal or `0x` hex) then a space: the
/// number and what follows the space.
#[inline(always)]
fn number_then_space(s: &[u8]) -> Option<(u64, &[u8])> {
    let Some(h) = s.strip_prefix(b"0x").or_else(|| s.strip_prefix(b"0X")) else {
        return decimal_then_space(s);
    };
    hex_then_space(h)
}

/// Hex digits (at most 16) then a space: the number and what follows the
/// space. Eight bytes at a time while a line has them (offsets have 9
/// digits, lengths 4 or 5), a byte at a time otherwise.
#[inline(always)]
fn hex_then_space(h: &[u8]) -> Option<(u64, &[u8])> {
    let word = |at: usize| -> Option<u64> {
        Some(u64::from_le_bytes(h.get(at..at + 8)?.try_into().ok()?))
    };
    let Some(w) = word(0) else {
        return hex_then_space_bytewise(h);
    };
    let (v, count) = hex8(w);
    if count < 8 {
        return (count > 0 && h[count] == b' ').then(|| (v, &h[count + 1..]));
    }
    let Some(w) = word(8) else {
        return hex_then_space_bytewise(h);
    };
    let (low, count) = hex8(w);
    let end = 8 + count;
    // The 17th byte must end the number, as the bytewise reading wants.
    (h.get(end) == Some(&b' ')).then(|| ((v << (4 * count)) | low, &h[end + 1..]))
}

/// The hex digits at the start of the eight bytes of `w` (in memory
/// order): their value and how many they are (8 if all are).
#[inline(always)]
fn hex8(w: u64) -> (u64, usize) {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // Each byte's low seven bits, and the same with lower-case letters;
    // a byte with its top bit set is never a digit.
    let low7 = w & !HIGH;
    let folded = (w | (0x20 * ONES)) & !HIGH;
    // The top bit of each byte of `x` at least `k` (no borrow crosses a
    // byte: each is at least 0x80 before the subtraction).
    let at_least = |x: u64, k: u64| ((x | HIGH) - k * ONES) & HIGH;
    let digit = at_least(low7, 0x30) & !at_least(low7, 0x3a);
    let letter = at_least(folded, 0x61) & !at_least(folded, 0x67);
    let good = (digit | letter) & !w;
    let count = ((!good & HIGH).trailing_zeros() / 8) as usize;
    if count == 0 {
        return (0, 0);
    }
    // Nibble values, the first digit in the lowest byte; shifted to the
    // top and byte-swapped, the last digit is in the lowest byte, and
    // three steps pack the nibbles together.
    let nibbles = (low7 & (0x0f * ONES)) + (letter >> 7) * 9;
    let mut z = (nibbles << (8 * (8 - count))).swap_bytes();
    z = (z | (z >> 4)) & 0x00ff_00ff_00ff_00ff;
    z = (z | (z >> 8)) & 0x0000_ffff_0000_ffff;
    z = (z | (z >> 16)) & 0x0000_0000_ffff_ffff;
    (z, count)
}

/// [`hex_then_space`], a byte at a time.
#[inline(never)]
fn hex_then_space_bytewise(h: &[u8]) -> Option<(u64, &[u8])> {
    let mut v: u64 = 0;
    // 16 digits cannot overflow; more are left to the general path.
    for (i, &b) in h.iter().take(17).enumerate() {
        let d = HEX[usize::from(b)];
        if d < 16 && i < 16 {
            v = (v << 4) | u64::from(d);
        } else if b == b' ' && i > 0 {
            return Some((v, &h[i + 1..]));
        } else {
            return None;
        }
    }
    None
}

/// Each byte's value as a hex digit, or 255.
static HEX: [u8; 256] = {
    let mut a = [255u8; 256];
    let mut i = 0;
    while i < 10 {
        a[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        a[b'a' as usize + i] = 10 + i as u8;
        a[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    a
};

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
        pending: Pending::new(n, time, op, offset, length, connection),
    })
}

/// Reads `YYYY-MM-DD HH:MM:SS[.frac]` at the start of `l`: seconds since
/// the epoch (as UTC) and the rest of the line.
fn timestamp(l: &[u8]) -> Option<(f64, &[u8])> {
    let (secs, frac, rest) = timestamp_parts(l)?;
    Some((secs as f64 + frac, rest))
}

/// [`timestamp`]'s whole seconds and fraction, apart.
fn timestamp_parts(l: &[u8]) -> Option<(i64, f64, &[u8])> {
    let secs = date_seconds(l)?;
    let (frac, rest) = fraction(&l[19..])?;
    Some((secs, frac, rest))
}

/// The seconds since the epoch that the `YYYY-MM-DD HH:MM:SS` at the start
/// of `l` spells (as UTC).
fn date_seconds(l: &[u8]) -> Option<i64> {
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
    Some(days_from_civil(y, mo, da) * 86400 + h * 3600 + mi * 60 + s)
}

/// What consecutive lines mostly share, read once: their date, and
/// the starts of the usual lines.
#[derive(Default)]
struct LineCache {
    dates: DateCache,
    heads: Heads,
}

/// The last `YYYY-MM-DD HH:MM:SS` read and its seconds: consecutive lines
/// mostly share it, and comparing 19 bytes is quicker than reading them.
///
/// It holds the whole seconds as read, not the floor of a timestamp (a
/// fraction may round the sum up to the next second), so that what it
/// returns depends on the line alone: the parallel parser's workers each
/// have their own, and must agree with the sequential parser's.
#[derive(Default)]
struct DateCache {
    text: [u8; 19],
    secs: f64,
}

/// `l` starts with `date`: a compare of known length, a few loads, no
/// call (it is made for every line).
#[inline(always)]
fn same_date(l: &[u8], date: &[u8; 19]) -> bool {
    l.split_first_chunk::<19>()
        .is_some_and(|(head, _)| head == date)
}

impl DateCache {
    /// [`timestamp`], not added up. Inlined into its caller: returned
    /// through memory, its result is read back wider than it was written,
    /// which stalls the load (measured: a fifth of the pairing's time).
    #[inline(always)]
    fn stamp<'a>(&mut self, l: &'a [u8]) -> Option<(Stamp, &'a [u8])> {
        let fresh = if self.text[0] != 0 && same_date(l, &self.text) {
            None
        } else {
            Some(date_seconds(l)?)
        };
        // Both ways, `l` holds 19 bytes of date. A line whose fraction is
        // bad leaves the cache as it was.
        let ((digits, count), rest) = fraction_digits(&l[19..])?;
        if let Some(secs) = fresh {
            self.secs = secs as f64;
            self.text.copy_from_slice(&l[..19]);
        }
        Some((
            Stamp {
                secs: self.secs,
                digits,
                count,
            },
            rest,
        ))
    }

    #[cfg(test)]
    fn timestamp<'a>(&mut self, l: &'a [u8]) -> Option<(f64, &'a [u8])> {
        self.stamp(l).map(|(s, rest)| (s.seconds(), rest))
    }
}

/// Powers of ten that a double holds exactly.
const POW10: [f64; 16] = {
    let mut a = [1.0f64; 16];
    let mut i = 1;
    while i < a.len() {
        a[i] = a[i - 1] * 10.0;
        i += 1;
    }
    a
};

/// `[.digits]` then a space or the end: the fraction and the rest.
///
/// Up to 15 digits make one integer, divided once by a power of ten: both
/// exact, so the quotient is the double nearest the fraction, as
/// `str::parse` would give, for the cost of one division rather than a
/// multiply and an add per digit. Digits past the 15th cannot move a
/// double of seconds since 1970 and are only checked.
#[inline]
fn fraction(l: &[u8]) -> Option<(f64, &[u8])> {
    let ((digits, count), rest) = fraction_digits(l)?;
    Some((digits as f64 / POW10[count], rest))
}

/// [`fraction`]'s digits, as a number and how many they are (at most 15),
/// and the rest.
#[inline(always)]
fn fraction_digits(l: &[u8]) -> Option<((u64, usize), &[u8])> {
    let mut i = 0;
    let mut frac = (0, 0);
    if l.first() == Some(&b'.') {
        // nbdkit writes 6 digits: the eight bytes after the dot are looked
        // at at once, and digit by digit only if all eight are digits.
        let (v, count) = match l.get(1..9).and_then(short_digits) {
            // A non-digit follows these: no more digits to skip.
            Some((v, count)) => {
                i = 1 + count;
                (v, count)
            }
            None => {
                let mut v = 0u64;
                let mut n = 0;
                while let Some(&b) = l.get(1 + n) {
                    let d = b.wrapping_sub(b'0');
                    if d >= 10 || n >= 15 {
                        break;
                    }
                    v = v * 10 + u64::from(d);
                    n += 1;
                }
                i = 1 + n;
                while l.get(i).is_some_and(u8::is_ascii_digit) {
                    i += 1;
                }
                (v, n)
            }
        };
        frac = (v, count);
    }
    match l.get(i) {
        None | Some(b' ' | b'\t') => Some((frac, &l[i..])),
        _ => None,
    }
}

/// The decimal number that the digits at the start of `bytes` (eight of
/// them) spell, and how many they are, if fewer than eight: `None` if all
/// eight are digits.
#[inline(always)]
fn short_digits(bytes: &[u8]) -> Option<(u64, usize)> {
    let w = u64::from_le_bytes(bytes.try_into().ok()?);
    // Each digit becomes its value; any other byte gets its top bit set in
    // `odd`. A carry out of a byte that is not a digit can only spoil the
    // bytes after it, which are not looked at.
    let x = w ^ 0x3030_3030_3030_3030;
    let odd = (x.wrapping_add(0x7676_7676_7676_7676) | x) & 0x8080_8080_8080_8080;
    if odd == 0 {
        return None;
    }
    let count = (odd.trailing_zeros() / 8) as usize;
    if count == 0 {
        return Some((0, 0));
    }
    // Shifted up, the digits are an eight-digit number with leading zeros,
    // read in three multiplications (Lemire's eight-digit parse).
    let v = x << (64 - 8 * count as u32);
    let v = v.wrapping_mul(10).wrapping_add(v >> 8);
    let mask = 0x0000_00FF_0000_00FF;
    let mul1 = 100 + (1_000_000 << 32);
    let mul2 = 1 + (10_000 << 32);
    let v = ((v & mask)
        .wrapping_mul(mul1)
        .wrapping_add(((v >> 16) & mask).wrapping_mul(mul2)))
        >> 32;
    Some((v, count))
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
    use crate::trace::{events, Format, ParseOptions};

    fn run(text: &str) -> Vec<Result<Event, TraceError>> {
        events(Format::Nbdkit, text.as_bytes(), &ParseOptions::default()).collect()
    }

    fn req<E: std::fmt::Debug>(e: &Result<Event, E>) -> &Request {
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
        // Each line read afresh, and read after all the lines before it
        // (whose starts are kept), the templates first and again last.
        let mut quick_ones = 0;
        let mut kept = Heads::default();
        let mut found_kept = 0;
        let lines = templates.iter().map(|t| t.to_vec());
        for v in lines.clone().chain(variants).chain(lines) {
            let stamp = Stamp {
                secs: 1.0,
                digits: 5,
                count: 1,
            };
            let v = &v[..];
            let general = parse_rest(Some(1.5), v, 7).map_err(|e| e.to_string());
            let afresh = quick::<_, false>(Some(stamp), v, 7, &mut Heads::default(), &mut Build);
            found_kept += usize::from(kept.find(v).is_some());
            let after = quick::<_, false>(Some(stamp), v, 7, &mut kept, &mut Build);
            assert_eq!(
                afresh.is_some(),
                after.is_some(),
                "{}",
                String::from_utf8_lossy(v)
            );
            for (q, _) in afresh.into_iter().chain(after) {
                quick_ones += 1;
                let q = q.map_err(|e| e.to_string());
                assert_eq!(q, general, "{}", String::from_utf8_lossy(v));
            }
        }
        assert!(
            quick_ones > 200 && found_kept > 100,
            "{quick_ones} {found_kept}"
        );
    }

    /// Numbers read eight bytes at a time are what reading them a byte at
    /// a time gives, for every byte around the edges of the digit ranges
    /// and every count of digits, with the line ending anywhere.
    #[test]
    fn wordwise_numbers_agree_with_bytewise() {
        let edges: &[u8] = b"0123456789abcdefABCDEF/:@G`g x\t\0\x10\x19\x1a\x80\xb0\xc1\xe6\xff";
        let mut rng = crate::test_rng::XorShift(0x9e37_79b9_7f4a_7c15);
        let mut next = move || rng.next();
        let mut checked = 0;
        for _ in 0..200_000 {
            let digits = (next() % 20) as usize;
            let len = digits + (next() % 6) as usize;
            let mut v: Vec<u8> = (0..len)
                .map(|i| {
                    let r = next();
                    if i < digits && r % 8 != 0 {
                        b"0123456789abcdefABCDEF"[(r >> 8) as usize % 22]
                    } else if r % 3 == 0 {
                        b' '
                    } else {
                        edges[(r >> 8) as usize % edges.len()]
                    }
                })
                .collect();
            if next() % 4 == 0 {
                v.extend_from_slice(b" rest");
            }
            assert_eq!(
                hex_then_space(&v),
                hex_then_space_bytewise(&v),
                "{}",
                v.escape_ascii()
            );
            assert_eq!(
                decimal_then_space(&v),
                decimal_then_space_bytewise(&v),
                "{}",
                v.escape_ascii()
            );
            checked += usize::from(hex_then_space(&v).is_some());
        }
        assert!(checked > 10_000, "{checked}");
        for (text, want) in [
            (&b"1b2c3d000 count"[..], Some(0x1b2c3d000)),
            (b"ffffffffffffffff x", Some(u64::MAX)),
            (b"1ffffffffffffffff x", None),
            (b"12345678 ", Some(0x1234_5678)),
            (b"DeadBeef ", Some(0xdead_beef)),
        ] {
            assert_eq!(
                hex_then_space(text).map(|(v, _)| v),
                want,
                "{}",
                text.escape_ascii()
            );
        }
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

    /// Events with errors as text, to compare (io::Error has no `==`).
    fn comparable(ev: impl Iterator<Item = Item>) -> Vec<Result<Event, String>> {
        ev.map(|e| e.map_err(|e| format!("{e:?}"))).collect()
    }

    fn sequential(data: &[u8]) -> Vec<Result<Event, String>> {
        comparable(events(Format::Nbdkit, data, &ParseOptions::default()))
    }

    fn chunked(data: &[u8], chunk: usize, workers: usize) -> Vec<Result<Event, String>> {
        comparable(parallel(Arc::<[u8]>::from(data), chunk, workers).unwrap())
    }

    /// xorshift64*: reproducible inputs without a dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// A trace with every shape the pairing treats apart: interleaved
    /// connections, completions in any order, failures, id reuse,
    /// mismatched and unpaired completions, disconnects with requests
    /// pending, changing sizes, lines cut short, lines without timestamps,
    /// garbage, blank lines, CRLF, tabs, quotes, timestamps whose fraction
    /// rounds up, and lines just under and over MAX_LINE.
    fn random_trace(seed: u64, lines: usize, long_lines: bool) -> Vec<u8> {
        const OPS: [&str; 7] = ["Read", "Write", "Trim", "Zero", "Cache", "Flush", "Extents"];
        let mut r = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let mut out = Vec::new();
        let mut next_id = [1u64; 5];
        let mut pending: Vec<(u64, u64, &str)> = Vec::new();
        for i in 0..lines {
            let mut line = match r.below(20) {
                0 => String::new(),
                1 => format!(
                    "2026-11-21 10:{:02}:{:02}.{} ",
                    i / 600 % 60,
                    i / 10 % 60,
                    "9".repeat(12 + r.below(10) as usize)
                ),
                2 => format!("2026-11-21 10:{:02}:{:02} ", i / 600 % 60, i / 10 % 60),
                _ => format!(
                    "2026-11-21 10:{:02}:{:02}.{:06} ",
                    i / 600 % 60,
                    i / 10 % 60,
                    r.below(1_000_000)
                ),
            };
            let c = r.below(5);
            match r.below(100) {
                0..=39 => {
                    let op = OPS[r.below(7) as usize];
                    let id = if r.below(30) == 0 && !pending.is_empty() {
                        pending[r.below(pending.len() as u64) as usize].1
                    } else {
                        next_id[c as usize] += 1;
                        next_id[c as usize] + r.below(3) * 1000
                    };
                    let args = match op {
                        "Flush" => String::new(),
                        "Write" => format!(
                            "offset={:#x} count={:#x} fua={} ",
                            r.below(1 << 30),
                            r.below(1 << 20),
                            r.below(2)
                        ),
                        _ => format!(
                            "offset={:#x} count={:#x} ",
                            r.below(1 << 30),
                            r.below(1 << 20)
                        ),
                    };
                    line += &format!("connection={c} {op} id={id} {args}...");
                    pending.push((c, id, op));
                }
                40..=79 if !pending.is_empty() => {
                    let (c, id, mut op) =
                        pending.swap_remove(r.below(pending.len() as u64) as usize);
                    if r.below(20) == 0 {
                        op = OPS[r.below(7) as usize];
                    }
                    let ret = match r.below(15) {
                        0 => " return=-1 error=EIO",
                        1 => " return=-1",
                        _ => " return=0",
                    };
                    line += &format!("connection={c} ...{op} id={id}{ret}");
                }
                40..=83 => line += &format!("connection={c} ...Read id={} return=0", r.below(50)),
                84..=86 => line += &format!("connection={c} Disconnect transactions=3"),
                87..=88 => {
                    line += &format!(
                        "connection={c} Connect export=\"a b\" tls=0 size={:#x} minsize=0x0",
                        0x1000 * (1 + r.below(3))
                    )
                }
                89 => line += "Ready thread_model=3",
                90 => line += "garbage \u{0} \u{ff} ...",
                91 => line += &format!("connection={c} Read id=5 offset=0x0 cou"),
                92 => {
                    line += &format!(
                        "connection={c} Read id=5 offset=0xffffffffffffffff count=0x10 ..."
                    )
                }
                93 => line += &format!("connection={c}\tRead id=6 offset=0x0 count=0x10 ..."),
                94 => line += &format!("connection={c} ...Write id=7 retur"),
                95 if long_lines => {
                    let head = format!(
                        "connection={c} Read id={} offset=0x0 count=0x1 ",
                        100_000 + i
                    );
                    let len = [
                        MAX_LINE - 1,
                        MAX_LINE,
                        MAX_LINE + 1,
                        MAX_LINE + 7,
                        3 * MAX_LINE,
                    ][r.below(5) as usize];
                    line = head;
                    while line.len() + 4 < len {
                        line.push(' ');
                    }
                    line.truncate(len.saturating_sub(4).max(line.len()));
                    line += " ...";
                    while line.len() < len {
                        line.push('.');
                    }
                }
                _ => line += &format!("connection={c} Flush id={} ...", 50_000 + i),
            }
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(if r.below(10) == 0 { b"\r\n" } else { b"\n" });
        }
        out
    }

    /// Bytes changed, dropped and cut, as a damaged log would have them.
    fn mutate(data: &[u8], seed: u64) -> Vec<u8> {
        let mut r = Rng(seed | 1);
        let mut d = data.to_vec();
        let alphabet = b" \n\r\t.=x0123456789abcdefRWconid\"'";
        for _ in 0..1 + r.below(6) {
            if d.is_empty() {
                break;
            }
            let at = r.below(d.len() as u64) as usize;
            match r.below(3) {
                0 => d[at] = alphabet[r.below(alphabet.len() as u64) as usize],
                1 => {
                    d.remove(at);
                }
                _ => d.truncate(at),
            }
        }
        d
    }

    /// The parallel parser yields what the sequential one yields, line
    /// numbers included, whatever the chunk size and worker count. Tiny
    /// chunks cost a thread handoff per byte, so only small traces get them
    /// (trace::tests checks the splitting alone on every size).
    #[test]
    fn parallel_agrees_with_sequential() {
        let boot = include_bytes!("../../sample-maps/boot.nbdkit.log");
        let mut small: Vec<Vec<u8>> = vec![
            REAL.as_bytes().to_vec(),
            boot[..boot.len() - 7].to_vec(),
            Vec::new(),
            b"\n".to_vec(),
            b"\n\n\n".to_vec(),
            b"connection=1 Read id=1 offset=0x0 count=0x200 ...".to_vec(),
        ];
        for seed in 0..3 {
            let t = random_trace(seed, 50, false);
            small.push(mutate(&t, seed));
            small.push(t);
        }
        let mut large: Vec<Vec<u8>> = vec![
            boot.to_vec(),
            boot.iter()
                .flat_map(|&b| {
                    if b == b'\n' {
                        b"\r\n".to_vec()
                    } else {
                        vec![b]
                    }
                })
                .collect(),
        ];
        for seed in 3..15 {
            let t = random_trace(seed, 300, false);
            large.push(mutate(&t, seed));
            large.push(t);
        }
        let mut requests = 0;
        let mut problems = 0;
        let mut check = |data: &[u8], sizes: &[usize], workers: &[usize]| {
            let want = sequential(data);
            for e in &want {
                match e {
                    Ok(Event::Request(_)) => requests += 1,
                    Ok(Event::Warning { .. }) | Err(_) => problems += 1,
                    Ok(Event::DiskSize { .. }) => {}
                }
            }
            for &size in sizes {
                for &w in workers {
                    assert!(
                        chunked(data, size, w) == want,
                        "chunk {size}, {w} workers, over:\n{}",
                        String::from_utf8_lossy(data)
                    );
                }
            }
        };
        for data in &small {
            check(data, &[1, 2, 3, 7], &[2]);
            check(data, &[64], &[1, 2, 3]);
        }
        let sizes = [61, 4096, MAX_LINE - 1, MAX_LINE, MAX_LINE + 1, 1 << 20];
        for data in &large {
            check(data, &sizes, &[1, 2, 3]);
        }
        assert!(requests > 2000 && problems > 500, "{requests} {problems}");
    }

    /// The same over traces with lines around MAX_LINE, cut anywhere.
    #[test]
    fn parallel_agrees_with_sequential_on_long_lines() {
        let mut too_long = 0;
        for seed in 0..4 {
            let t = random_trace(100 + seed, 400, true);
            for data in [mutate(&t, seed), t] {
                let want = sequential(&data);
                too_long += want
                    .iter()
                    .filter(|e| matches!(e, Err(m) if m.starts_with("LineTooLong")))
                    .count();
                for size in [1000, 4096, MAX_LINE, MAX_LINE + 1, 1 << 20] {
                    assert!(chunked(&data, size, 2) == want, "seed {seed}, chunk {size}");
                }
            }
        }
        assert!(too_long > 10, "{too_long}");
    }

    /// Short bad lines, or very many requests, in one chunk: it is handed
    /// over in parts of bounded size, with the same outcome.
    #[test]
    fn many_records_in_one_chunk() {
        let mut bad = String::new();
        for i in 0..3 * PART_OTHERS {
            bad += "x\n";
            if i % 1000 == 0 {
                bad += &format!("connection=1 Read id={i} offset=0x0 count=0x1 ...\n");
            }
            if i % 1000 == 500 {
                bad += &format!("connection=1 ...Read id={} return=0\n", i - 500);
            }
        }
        let mut many = String::new();
        for i in 0..PART + 5 {
            many += &format!("connection=1 Flush id={i} ...\n");
        }
        many += "connection=1 ...Flush id=7 return=0\n";
        for text in [bad, many] {
            let data = text.as_bytes();
            let mut window = Window::default();
            let mut known = LineCache::default();
            let mut parts = Vec::new();
            let last = parse_chunk(
                data,
                0,
                8 << 20,
                &mut window,
                &mut known,
                Chunk::default,
                &mut |c| {
                    assert!(c.said.len() <= PART && c.others.len() <= PART_OTHERS);
                    parts.push((c.count, matches!(c.end, End::Part)));
                    true
                },
            );
            assert_eq!(last, Some(true));
            assert!(parts.len() >= 2, "{parts:?}");
            assert!(parts[..parts.len() - 1].iter().all(|p| p.1) && !parts[parts.len() - 1].1);
            let lines = data.iter().filter(|&&b| b == b'\n').count() as u64;
            assert_eq!(parts.iter().map(|p| p.0).sum::<u64>(), lines);
            let want = sequential(data);
            assert!(chunked(data, 8 << 20, 2) == want);
            assert!(chunked(data, 100_000, 3) == want);
        }
    }

    /// A request and its completion in different chunks, however far apart,
    /// and a line number that only the chunks before it can tell.
    #[test]
    fn pairs_across_chunks() {
        let mut text = String::from("connection=1 Read id=1 offset=0x0 count=0x200 ...\n");
        for i in 0..2000 {
            text +=
                &format!("connection=2 Flush id={i} ...\nconnection=2 ...Flush id={i} return=0\n");
        }
        text += "connection=1 ...Read id=1 return=-1 error=EIO\nbad\n";
        let want = sequential(text.as_bytes());
        assert_eq!(want.len(), 2002);
        let r = req(&want[2000]);
        assert_eq!((r.line, r.failed.as_deref()), (1, Some("EIO")));
        assert!(
            matches!(&want[2001], Err(m) if m.contains("line: 4003")),
            "{:?}",
            want[2001]
        );
        for size in [13, 100, 4096] {
            assert!(chunked(text.as_bytes(), size, 2) == want, "chunk {size}");
        }
    }

    /// A 5 MB line without a newline, alone or after a request: one error,
    /// as from the sequential parser, and memory for a chunk and MAX_LINE.
    #[test]
    fn huge_line_without_newline() {
        let mut data = b"connection=1 Read id=1 offset=0x0 count=0x200 ...\n".to_vec();
        data.extend(std::iter::repeat_n(b'a', 5 << 20));
        for d in [&data[..], &data[51..]] {
            let want = sequential(d);
            for size in [4096, MAX_LINE, 1 << 20] {
                assert!(chunked(d, size, 2) == want, "chunk {size}");
            }
        }
        let mut win = Window::default();
        for k in 0..(5 << 20) / 4096 {
            crate::trace::chunk_lines(&data[..], k, 4096, &mut win, |_, _| true).unwrap();
        }
        assert!(
            win.buf.len() <= 4096 + MAX_LINE + 2 * crate::trace::SLACK,
            "{}",
            win.buf.len()
        );
    }

    /// The cache's seconds are those of the line, not the floor of the
    /// first timestamp it read (whose fraction may round it up).
    #[test]
    fn date_cache_depends_on_the_line_alone() {
        let lines: [&[u8]; 3] = [
            b"2026-11-21 10:54:19.99999999999999999 Fork",
            b"2026-11-21 10:54:19.5 Fork",
            b"2026-11-21 10:54:19 Fork",
        ];
        for first in lines {
            for l in lines {
                let mut cache = DateCache::default();
                cache.timestamp(first).unwrap();
                assert_eq!(cache.timestamp(l), timestamp(l));
                let (secs, frac, _) = timestamp_parts(l).unwrap();
                assert_eq!(timestamp(l).unwrap().0, secs as f64 + frac);
            }
        }
        // The case the old cache got wrong: 1795258459 + 0.99999999999999999
        // rounds to 1795258460.
        let mut cache = DateCache::default();
        assert_eq!(cache.timestamp(lines[0]).unwrap().0, 1_795_258_460.0);
        assert_eq!(cache.timestamp(lines[1]).unwrap().0, 1_795_258_459.5);
    }

    /// The eight-bytes-at-once reading of a fraction agrees with reading
    /// it digit by digit, whatever byte ends the digits, whatever follows,
    /// and wherever the line ends.
    #[test]
    fn fractions_read_at_once_agree_with_digit_by_digit() {
        fn slow(l: &[u8]) -> Option<(f64, usize)> {
            if l.first() != Some(&b'.') {
                return matches!(l.first(), None | Some(b' ' | b'\t')).then_some((0.0, 0));
            }
            let mut i = 1;
            let mut v = 0u64;
            while i < l.len() && l[i].is_ascii_digit() && i <= 15 {
                v = v * 10 + u64::from(l[i] - b'0');
                i += 1;
            }
            let frac = v as f64 / POW10[i - 1];
            while i < l.len() && l[i].is_ascii_digit() {
                i += 1;
            }
            matches!(l.get(i), None | Some(b' ' | b'\t')).then_some((frac, i))
        }
        let mut r = Rng(11);
        for len in 0..=18 {
            for end in 0..=255u8 {
                for tail in [&b""[..], b" x", b"99999999"] {
                    let mut l = vec![b'.'];
                    l.extend((0..len).map(|_| b'0' + r.below(10) as u8));
                    l.push(end);
                    l.extend_from_slice(tail);
                    for cut in [l.len(), len + 1, len + 2] {
                        let l = &l[..cut.min(l.len())];
                        let got = fraction(l).map(|(f, rest)| (f, l.len() - rest.len()));
                        assert_eq!(got, slow(l), "{:?}", String::from_utf8_lossy(l));
                    }
                }
            }
        }
    }

    /// A fraction is the double nearest its digits, as Rust reads them.
    #[test]
    fn fractions_are_the_nearest_double() {
        let mut r = Rng(7);
        for len in 1..=15 {
            for _ in 0..3000 {
                let digits: String = (0..len)
                    .map(|_| char::from(b'0' + r.below(10) as u8))
                    .collect();
                let want: f64 = format!("0.{digits}").parse().unwrap();
                let text = format!(".{digits} rest");
                let (got, rest) = fraction(text.as_bytes()).unwrap();
                assert_eq!(got.to_bits(), want.to_bits(), "{digits}");
                assert_eq!(rest, b" rest");
            }
        }
        // Longer fractions: the first 15 digits count, the rest is checked.
        let (f, rest) = fraction(b".1234567890123456789 x").unwrap();
        assert_eq!(f, 0.123456789012345);
        assert_eq!(rest, b" x");
        assert!(fraction(b".12345678901234567x").is_none());
        assert_eq!(fraction(b"."), Some((0.0, &b""[..])));
        assert_eq!(fraction(b" a"), Some((0.0, &b" a"[..])));
        assert!(fraction(b".5x").is_none());
    }

    /// A read error ends the parse with that error, then what is pending.
    #[test]
    fn read_error_is_fatal() {
        struct Failing(Vec<u8>);
        impl PositionalRead for Failing {
            fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
                if offset + buf.len() as u64 > 3000 {
                    return Err(io::Error::other("disk on fire"));
                }
                self.0[..].read_at(buf, offset)
            }
        }
        let mut text = String::new();
        for i in 0..200 {
            text += &format!("connection=1 Read id={i} offset=0x0 count=0x200 ...\n");
        }
        let ev: Vec<_> = parallel(Arc::new(Failing(text.into_bytes())), 512, 2)
            .unwrap()
            .collect();
        let fatal: Vec<_> = ev
            .iter()
            .enumerate()
            .filter(|(_, e)| matches!(e, Err(e) if e.is_fatal()))
            .collect();
        assert_eq!(fatal.len(), 1, "{ev:?}");
        assert!(fatal[0]
            .1
            .as_ref()
            .unwrap_err()
            .to_string()
            .contains("disk on fire"));
        assert!(ev[fatal[0].0 + 1..]
            .iter()
            .all(|e| req(e).failed.as_deref() == Some(NO_COMPLETION)));
    }

    /// A worker's panic reaches the caller, as if the parse ran there.
    #[test]
    fn worker_panic_propagates() {
        struct Panicking;
        impl PositionalRead for Panicking {
            fn read_at(&self, _: &mut [u8], _: u64) -> io::Result<usize> {
                panic!("worker blew up");
            }
        }
        let p = std::panic::catch_unwind(|| parallel(Arc::new(Panicking), 64, 2).unwrap().count());
        let msg = p.unwrap_err();
        assert_eq!(msg.downcast_ref::<&str>(), Some(&"worker blew up"));
    }

    /// A caller that stops early does not wait for the rest of the trace:
    /// the workers stop at their next chunk.
    #[test]
    fn early_stop_ends_the_workers() {
        let mut text = String::new();
        for i in 0..100_000 {
            text += &format!("connection=1 Read id={i} offset=0x0 count=0x200 ...\nconnection=1 ...Read id={i} return=0\n");
        }
        let src: Arc<[u8]> = Arc::from(text.into_bytes());
        let mut p = parallel(Arc::clone(&src), 4096, 2).unwrap();
        assert!(p.next().is_some());
        drop(p);
        // The workers held the only other references to the trace.
        assert_eq!(Arc::strong_count(&src), 1);
    }
}
