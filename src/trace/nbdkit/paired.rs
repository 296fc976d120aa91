//! Pairing an nbdkit trace chunk by chunk, on many threads at once.
//!
//! Nearly every request of a trace completes a few lines after it was
//! issued, in the same chunk: such a pair does not depend on anything
//! outside the chunk, so a worker can pair it — and the caller attribute
//! it — without waiting for the chunks before. What does depend on them
//! is little: completions whose request lies in an earlier chunk,
//! disconnects, `Connect` lines, and requests still open at the chunk's
//! end. A worker hands those over in a [`PairedChunk`], and a [`Joiner`]
//! takes them in chunk order through the same pairing the sequential
//! parser uses, so the events that cross chunks are exactly its events.
//!
//! A chunk the joiner cannot place exactly — a bad line, a request id
//! reused within the chunk or colliding with one still open from before,
//! a completion whose op does not match its request, more requests in
//! flight than [`MAX_PENDING`] allows, a request of 4 GiB or more
//! completed within the chunk, ids
//! too scattered to keep as runs — is refused; the caller then replays
//! the trace the sequential way, which reports what is wrong with it.
//!
//! Every event, local or not, has a place in the order of the sequential
//! parser: a local event is the `r`-th of its chunk, and an event the
//! joiner yields for a chunk comes after the chunk's first `rank` local
//! events and before the next one (see [`Joiner::join`]).

use std::io;

use super::{
    visit_line, visit_quick_line, InFlight, LineCache, Pairing, Parsed, Pending, Sink, MAX_PENDING,
};
use crate::trace::{chunk_lines_with, Event, Op, PositionalRead, TraceError, Window};

/// A request of a chunk that completed in the same chunk (or was cut off
/// by a disconnect there): all that attributing it needs, in 24 bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Local {
    /// Seconds; NaN when the request line had no timestamp.
    pub time: f64,
    pub offset: u64,
    /// NBD requests are at most 4 GiB - 1 long; a chunk with a longer
    /// one is refused.
    pub length: u32,
    pub op: Op,
    /// It failed, or never completed before its connection closed.
    pub failed: bool,
}

impl Local {
    /// `p` as a local event; `None` for a request of 4 GiB or more.
    #[inline]
    fn of(p: &Pending, failed: bool) -> Option<Self> {
        Some(Local {
            time: if p.has_time { p.time } else { f64::NAN },
            offset: p.offset,
            length: u32::try_from(p.length).ok()?,
            op: p.op,
            failed,
        })
    }

    pub fn time(&self) -> Option<f64> {
        (!self.time.is_nan()).then_some(self.time)
    }
}

/// What one chunk of the trace says, paired as far as the chunk allows.
/// Its buffers are kept from chunk to chunk.
pub struct PairedChunk {
    /// Its local events, in the order the sequential parser yields them.
    pub local: Vec<Local>,
    /// Lines for the joiner, in order: the number of local events before
    /// each, its line in the chunk (from 1), what it says.
    edges: Vec<(u32, u64, Parsed)>,
    /// Requests open at the chunk's end, by line: their ids and requests
    /// (lines in the chunk).
    open: Vec<(u64, Pending)>,
    /// Per connection, the ids of its request lines, as sorted disjoint
    /// ranges: nbdkit numbers a connection's requests in turn, and its
    /// threads log them nearly in that order, so a chunk's ids are a few
    /// runs, whatever their number.
    ids: Vec<(Option<u64>, Runs)>,
    /// Connections in `ids` (its inner lists are kept for the next chunk).
    connections: usize,
    /// For connections numbered below [`NUMBERED`], 1 + where they are in
    /// `ids`, 0 if not there: a request finds its connection's runs
    /// without comparing connections (whose order, as the threads of
    /// nbdkit interleave, no branch predictor guesses).
    numbered: [u8; NUMBERED],
    /// Requests in flight within the chunk at most.
    most_pending: usize,
    /// Lines that began in the chunk.
    pub lines: u64,
    /// Something the joiner cannot place exactly (see the module's notes).
    pub odd: bool,
    /// The trace ends in this chunk.
    pub last: bool,
}

/// Connections with a place in [`PairedChunk::numbered`].
const NUMBERED: usize = 64;

impl Default for PairedChunk {
    fn default() -> Self {
        PairedChunk {
            local: Vec::new(),
            edges: Vec::new(),
            open: Vec::new(),
            ids: Vec::new(),
            connections: 0,
            numbered: [0; NUMBERED],
            most_pending: 0,
            lines: 0,
            odd: false,
            last: false,
        }
    }
}

impl PairedChunk {
    /// An empty chunk with room for the local events of `size` bytes of
    /// a usual trace (a request and its completion take some 130 bytes):
    /// grown from nothing, its table is copied into fresh pages at every
    /// doubling.
    pub fn for_size(size: usize) -> Self {
        PairedChunk {
            local: Vec::with_capacity(size / 128),
            ..PairedChunk::default()
        }
    }

    fn clear(&mut self) {
        self.local.clear();
        self.edges.clear();
        self.open.clear();
        for (connection, _) in &self.ids[..self.connections] {
            if let Some(at) = Self::numbered_at(*connection) {
                self.numbered[at] = 0;
            }
        }
        self.connections = 0;
        self.most_pending = 0;
        self.lines = 0;
        self.odd = false;
        self.last = false;
    }

    /// Where `connection` goes in [`PairedChunk::numbered`], if it has a
    /// place there.
    #[inline]
    fn numbered_at(connection: Option<u64>) -> Option<usize> {
        connection
            .and_then(|c| usize::try_from(c).ok())
            .filter(|&c| c < NUMBERED)
    }

    /// Notes request line `id` on `connection`; false if the chunk's ids
    /// are too scattered to keep ([`MAX_RUNS`] runs on one connection).
    #[inline(always)]
    fn saw_request(&mut self, connection: Option<u64>, id: u64) -> bool {
        let numbered = Self::numbered_at(connection);
        let at = match numbered.map(|c| self.numbered[c]) {
            Some(held) if held > 0 => usize::from(held - 1),
            _ => match self.ids[..self.connections]
                .iter()
                .position(|e| e.0 == connection)
            {
                Some(at) => at,
                None => self.new_connection(connection, numbered),
            },
        };
        let runs = &mut self.ids[at].1;
        // The next id of the last run, mostly.
        if let Some(last) = runs.last_mut() {
            if last.1.checked_add(1) == Some(id) {
                last.1 = id;
                return true;
            }
        }
        add_run(runs, id);
        runs.len() <= MAX_RUNS
    }

    /// Makes room in `ids` for a connection not there yet: where it is.
    #[inline(never)]
    fn new_connection(&mut self, connection: Option<u64>, numbered: Option<usize>) -> usize {
        if self.ids.len() == self.connections {
            self.ids.push((connection, Vec::new()));
        }
        let at = self.connections;
        self.connections += 1;
        let e = &mut self.ids[at];
        e.0 = connection;
        e.1.clear();
        // Chunks see a few connections: an index past 255 is only looked
        // for the slow way.
        if let (Some(c), Ok(held)) = (numbered, u8::try_from(at + 1)) {
            self.numbered[c] = held;
        }
        at
    }

    /// The number of local events so far: where an edge goes among them.
    /// A chunk has fewer lines than 2^32 (see [`ChunkPairer::pair`]).
    fn rank(&self) -> u32 {
        u32::try_from(self.local.len()).unwrap_or(u32::MAX)
    }

    /// Adds a local event; false if it cannot be one.
    #[inline]
    fn push(&mut self, p: &Pending, failed: bool) -> bool {
        match Local::of(p, failed) {
            Some(l) => {
                self.local.push(l);
                true
            }
            None => false,
        }
    }

    /// Local events of a line that yields several (a disconnect), in
    /// the order of their request lines; false if one cannot be one.
    fn push_cut_off(&mut self, mut left: Vec<Pending>) -> bool {
        left.sort_by_key(|p| p.line);
        left.iter().all(|p| self.push(p, true))
    }
}

/// Sorted, disjoint, non-adjacent ranges of ids, ends included.
type Runs = Vec<(u64, u64)>;

/// Runs of ids on one connection a chunk keeps at most: more, and it is
/// replayed in order.
const MAX_RUNS: usize = 1024;

/// Adds `id` to sorted, disjoint, non-adjacent `runs`.
fn add_run(runs: &mut Runs, id: u64) {
    let i = runs.partition_point(|r| r.1 < id);
    if runs.get(i).is_some_and(|r| r.0 <= id) {
        return;
    }
    let joins_before = i > 0 && runs[i - 1].1.checked_add(1) == Some(id);
    let joins_after = runs.get(i).is_some_and(|r| id.checked_add(1) == Some(r.0));
    match (joins_before, joins_after) {
        (true, true) => {
            runs[i - 1].1 = runs[i].1;
            runs.remove(i);
        }
        (true, false) => runs[i - 1].1 = id,
        (false, true) => runs[i].0 = id,
        (false, false) => runs.insert(i, (id, id)),
    }
}

/// Whether `id` is in `runs`.
fn in_runs(runs: &[(u64, u64)], id: u64) -> bool {
    let i = runs.partition_point(|r| r.1 < id);
    runs.get(i).is_some_and(|r| r.0 <= id)
}

/// A worker's state across the chunks it pairs.
#[derive(Default)]
pub struct ChunkPairer {
    window: Window,
    known: LineCache,
    pending: InFlight,
    npending: usize,
    scratch: Vec<(u64, Pending)>,
}

impl ChunkPairer {
    /// Reads and pairs chunk `k` (bytes `k * size` on, `size` at most
    /// 1 GiB, so that a chunk's lines and events count in 32 bits) of
    /// `src` into `out`. An error reading the trace is returned as it is.
    pub fn pair<S: PositionalRead + ?Sized>(
        &mut self,
        src: &S,
        k: u64,
        size: usize,
        out: &mut PairedChunk,
    ) -> io::Result<()> {
        out.clear();
        let size = size.clamp(1, super::MAX_CHUNK);
        let Self {
            window,
            known,
            pending,
            npending,
            scratch,
        } = self;
        let mut state = (
            known,
            Pairs {
                out: &mut *out,
                pending: &mut *pending,
                npending: &mut *npending,
                line: 0,
            },
        );
        // The usual lines are read where they start, their ends found by
        // reading them; the others once their newline is found.
        let end = chunk_lines_with(
            src,
            k,
            size,
            window,
            &mut state,
            |(known, pairs), n, rest| {
                pairs.line = n;
                let (fine, len) = visit_quick_line(rest, n, known, pairs)?;
                if !fine {
                    pairs.out.odd = true;
                }
                Some((len, fine))
            },
            |(known, pairs), n, line| {
                let Some(l) = line else {
                    pairs.out.odd = true;
                    return false;
                };
                pairs.line = n;
                let fine = visit_line(l, n, known, pairs);
                if !fine {
                    pairs.out.odd = true;
                }
                fine
            },
        );
        // Whatever is still open goes to the joiner, and the table is
        // left empty for the next chunk.
        scratch.clear();
        pending.drain_each(|id, p| scratch.push((id, p)));
        *npending = 0;
        scratch.sort_by_key(|(_, p)| p.line);
        out.open.append(scratch);
        let end = end?;
        out.lines = end.lines;
        out.last = end.last;
        Ok(())
    }
}

/// Pairs one line of a chunk into it: each method says whether the chunk
/// can still be joined (see the module's notes).
struct Pairs<'a> {
    out: &'a mut PairedChunk,
    pending: &'a mut InFlight,
    npending: &'a mut usize,
    /// The line's number in the chunk.
    line: u64,
}

impl Pairs<'_> {
    /// A completion: a local event if its request is in the chunk, an
    /// edge if it may be in an earlier one.
    #[inline(always)]
    fn completed(
        &mut self,
        connection: Option<u64>,
        op: Op,
        id: u64,
        failed: Option<String>,
    ) -> bool {
        match self.completed_here(connection, op, id, failed.is_some()) {
            Some(fine) => fine,
            None => self.completed_before(connection, op, id, failed),
        }
    }

    /// A completion whose request is in the chunk, made a local event:
    /// whether the chunk can still be joined; `None` if its request may be
    /// in an earlier chunk.
    #[inline(always)]
    fn completed_here(
        &mut self,
        connection: Option<u64>,
        op: Op,
        id: u64,
        failed: bool,
    ) -> Option<bool> {
        match self.pending.complete(connection, id, op) {
            Ok(p) => {
                *self.npending -= 1;
                Some(self.out.push(&p, failed))
            }
            Err(Some(_)) => Some(false),
            Err(None) => None,
        }
    }

    /// A completion whose request may be in an earlier chunk: an edge.
    /// Rare, and out of line, so that the usual completion carries no
    /// `String` to drop.
    #[inline(never)]
    fn completed_before(
        &mut self,
        connection: Option<u64>,
        op: Op,
        id: u64,
        failed: Option<String>,
    ) -> bool {
        let rank = self.out.rank();
        self.out.edges.push((
            rank,
            self.line,
            Parsed::Completion {
                connection,
                op,
                id,
                failed,
            },
        ));
        true
    }
}

impl Sink for Pairs<'_> {
    type Out = bool;

    #[inline(always)]
    fn request(&mut self, id: u64, p: Pending) -> bool {
        let connection = p.connection();
        if !self.out.saw_request(connection, id) {
            return false;
        }
        if !self.pending.waiting(connection).insert_new(id, p) {
            return false;
        }
        *self.npending += 1;
        self.out.most_pending = self.out.most_pending.max(*self.npending);
        true
    }

    #[inline(always)]
    fn completion(&mut self, connection: u64, op: Op, id: u64) -> bool {
        // Not `self.completed(.., None)`: its `Option<String>`'s drop stays
        // a call in the per-line loop (229.3 M against 228.7 M instructions
        // on 258,000 lines).
        let connection = Some(connection);
        match self.completed_here(connection, op, id, false) {
            Some(fine) => fine,
            None => self.completed_before(connection, op, id, None),
        }
    }

    fn other(&mut self, parsed: Result<Parsed, TraceError>) -> bool {
        match parsed {
            Ok(Parsed::Skip) => true,
            Ok(Parsed::Request { id, pending }) => self.request(id, pending),
            Ok(Parsed::Completion {
                connection,
                op,
                id,
                failed,
            }) => self.completed(connection, op, id, failed),
            Ok(Parsed::Disconnect { connection }) => {
                // Requests open from earlier chunks are cut off first
                // (their lines come first), by the joiner.
                let rank = self.out.rank();
                self.out
                    .edges
                    .push((rank, self.line, Parsed::Disconnect { connection }));
                let left = self.pending.take(connection);
                *self.npending -= left.len();
                self.out.push_cut_off(left)
            }
            Ok(connect @ Parsed::Connect { .. }) => {
                let rank = self.out.rank();
                self.out.edges.push((rank, self.line, connect));
                true
            }
            Err(_) => false,
        }
    }
}

/// Takes in the chunks' edges in chunk order (see the module's notes).
#[derive(Default)]
pub struct Joiner {
    pairing: Pairing,
    /// Lines of the trace before the next chunk.
    base: u64,
}

impl Joiner {
    /// Takes in the next chunk: appends to `out` the events its edges
    /// yield, each with the number of the chunk's local events before it.
    /// False if the chunk cannot be joined exactly; the joiner is then
    /// spoilt.
    pub fn join(
        &mut self,
        c: &mut PairedChunk,
        out: &mut Vec<(u32, Result<Event, TraceError>)>,
    ) -> bool {
        if c.odd || self.pairing.npending.saturating_add(c.most_pending) >= MAX_PENDING {
            return false;
        }
        // A request line reusing the id of a request still open from an
        // earlier chunk would cut that one off: such a chunk is refused
        // (nbdkit never reuses an id, so this is a damaged trace).
        let connections = &c.ids[..c.connections];
        if connections.iter().any(|(conn, runs)| {
            self.pairing
                .pending
                .any_pending(*conn, |id| in_runs(runs, id))
        }) {
            return false;
        }
        for (rank, n, parsed) in c.edges.drain(..) {
            let (n, parsed) = super::rebase(self.base, n, Ok(parsed));
            if let Some(e) = self.pairing.apply(n, parsed) {
                out.push((rank, e));
            }
            out.extend(self.pairing.out.drain(..).map(|e| (rank, e)));
        }
        for (id, mut p) in c.open.drain(..) {
            p.line += self.base;
            if self.pairing.request(id, p).is_some() {
                return false;
            }
        }
        self.base += c.lines;
        true
    }

    /// The trace is over: the events of what never completed.
    pub fn finish(&mut self) -> Vec<Result<Event, TraceError>> {
        self.pairing.finish();
        self.pairing.out.drain(..).collect()
    }
}

/// What [`joined_in_order`] yields.
#[derive(Debug)]
pub enum InOrder {
    /// A request paired within its chunk.
    Local(Local),
    /// An event the joiner yielded.
    Joined(Result<Event, TraceError>),
}

impl InOrder {
    /// The same text for a request whether it was paired within its
    /// chunk or by the joiner, or yielded by the sequential parser: what
    /// its local event would hold (the length in 32 bits, NaN for no
    /// time). Other events are shown as they are.
    pub fn comparable(&self) -> String {
        match self {
            InOrder::Local(l) => format!("{l:?}"),
            InOrder::Joined(e) => comparable(e),
        }
    }
}

/// [`InOrder::comparable`] for an event of the sequential parser.
pub fn comparable(e: &Result<Event, TraceError>) -> String {
    match e {
        Ok(Event::Request(r)) => format!(
            "{:?}",
            Local {
                time: r.time.unwrap_or(f64::NAN),
                offset: r.offset,
                length: u32::try_from(r.length).unwrap_or(u32::MAX),
                op: r.op,
                failed: r.failed.is_some(),
            }
        ),
        Ok(e) => format!("{e:?}"),
        Err(e) => format!("{e:?}"),
    }
}

/// The trace in `src` paired chunk by chunk (`size` bytes each) on one
/// thread and joined, every event in the place the sequential parser
/// gives it; `None` if the joiner refuses a chunk. The parallel count
/// numbers requests by this order: tests and a fuzz target hold it to the
/// sequential parser's. Holds every event of the trace in memory.
pub fn joined_in_order<S: PositionalRead + ?Sized>(src: &S, size: usize) -> Option<Vec<InOrder>> {
    let mut pairer = ChunkPairer::default();
    let mut joiner = Joiner::default();
    let mut c = PairedChunk::default();
    let mut all = Vec::new();
    let mut edges = Vec::new();
    for k in 0.. {
        pairer.pair(src, k, size, &mut c).ok()?;
        if !joiner.join(&mut c, &mut edges) {
            return None;
        }
        let mut edges = edges.drain(..).peekable();
        for (r, l) in c.local.iter().enumerate() {
            while let Some((_, e)) = edges.next_if(|(rank, _)| *rank as usize <= r) {
                all.push(InOrder::Joined(e));
            }
            all.push(InOrder::Local(*l));
        }
        all.extend(edges.map(|(_, e)| InOrder::Joined(e)));
        if c.last {
            break;
        }
    }
    all.extend(joiner.finish().into_iter().map(InOrder::Joined));
    Some(all)
}

/// A trace such as nbdkit writes, with what the joiner takes in: several
/// connections with requests in flight across chunk ends, completions in
/// any order, failures, unpaired completions, disconnects with requests
/// open, `Connect` lines of changing sizes, lines without timestamps; and,
/// in one trace of four, what makes it refuse a chunk (a reused id, a
/// completion of another op) and in another, a request of 4 GiB or more. Offsets fall within the first 64 KiB and a little
/// past.
#[cfg(test)]
pub(crate) fn test_trace(seed: u64, lines: usize) -> Vec<u8> {
    let mut rng = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut below = move |n: u64| {
        rng ^= rng >> 12;
        rng ^= rng << 25;
        rng ^= rng >> 27;
        rng.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    };
    const OPS: [&str; 7] = ["Read", "Write", "Trim", "Zero", "Cache", "Flush", "Extents"];
    let mut out = String::new();
    let mut next_id = [1u64; 4];
    let mut late: Vec<(u64, u64)> = Vec::new();
    let mut pending: Vec<(u64, u64, &str)> = Vec::new();
    let mut micros = 0u64;
    for _ in 0..lines {
        micros += below(900);
        if below(40) != 0 {
            out += &format!(
                "2026-11-21 09:{:02}:{:02}.{:06} ",
                micros / 60_000_000 % 60,
                micros / 1_000_000 % 60,
                micros % 1_000_000
            );
        }
        let c = 1 + below(3);
        match below(100) {
            0..=44 => {
                let op = OPS[[0, 0, 0, 0, 1, 1, 2, 3, 4, 5, 6][below(11) as usize]];
                // nbdkit's threads log requests nearly in the order of
                // their ids: now and then one comes a little late.
                let id = match late.iter().position(|l| l.0 == c) {
                    Some(i) if below(3) == 0 => late.swap_remove(i).1,
                    _ if below(5) == 0 => {
                        late.push((c, next_id[c as usize]));
                        next_id[c as usize] += 2;
                        next_id[c as usize] - 1
                    }
                    _ => {
                        next_id[c as usize] += 1;
                        next_id[c as usize] - 1
                    }
                };
                let args = if op == "Flush" {
                    String::new()
                } else {
                    format!("offset={:#x} count={:#x} ", below(70_000), below(9000))
                };
                out += &format!("connection={c} {op} id={id} {args}...");
                pending.push((c, id, op));
            }
            45..=88 if !pending.is_empty() => {
                // Mostly the oldest few: requests complete soon.
                let i = pending.len() - 1 - below(pending.len().min(4) as u64) as usize;
                let i = if below(3) == 0 {
                    i
                } else {
                    below(pending.len().min(2) as u64) as usize
                };
                let (c, id, op) = pending.remove(i);
                let ret = match below(25) {
                    0 => " return=-1 error=EIO",
                    1 => " return=-1",
                    _ => " return=0",
                };
                out += &format!("connection={c} ...{op} id={id}{ret}");
            }
            45..=89 => {
                out += &format!(
                    "connection={c} ...Read id={} return=0",
                    1_000_000 + below(9)
                )
            }
            90 => {
                out += &format!("connection={c} Disconnect transactions=3");
                pending.retain(|p| p.0 != c);
            }
            91 | 92 => {
                out += &format!(
                    "connection={c} Connect export=\"\" tls=0 size={:#x} minsize=0x0",
                    [0x10000, 0x10000, 0x10000, 0x20000][below(4) as usize]
                )
            }
            93 => out += "Ready thread_model=3",
            94 if seed.is_multiple_of(4) => {
                // An id reused while its request is open.
                if let Some(&(c, id, op)) = pending.first() {
                    out += &format!("connection={c} {op} id={id} offset=0x0 count=0x200 ...");
                }
            }
            95 if seed.is_multiple_of(4) => {
                // A completion naming another op.
                if let Some(&(c, id, _)) = pending.first() {
                    out += &format!("connection={c} ...Zero id={id} return=0");
                }
            }
            96 if seed % 4 == 2 => {
                let id = next_id[c as usize];
                next_id[c as usize] += 1;
                out += &format!("connection={c} Read id={id} offset=0x0 count=0x100000000 ...");
                pending.push((c, id, "Read"));
            }
            _ => {
                // Never completed.
                out += &format!("connection={c} Flush id={} ...", next_id[c as usize]);
                next_id[c as usize] += 1;
            }
        }
        out.push('\n');
    }
    out.into_bytes()
}

const _: () = assert!(std::mem::size_of::<Local>() == 24);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::{events, Format, ParseOptions};

    /// The sequential parser's events, as [`comparable`] shows them.
    fn sequential(data: &[u8]) -> Vec<String> {
        events(Format::Nbdkit, data, &ParseOptions::default())
            .map(|e| comparable(&e))
            .collect()
    }

    /// The joined events, as [`comparable`] shows them; `None` if the
    /// joiner refuses a chunk.
    fn joined(data: &[u8], size: usize) -> Option<Vec<String>> {
        Some(
            joined_in_order(data, size)?
                .iter()
                .map(InOrder::comparable)
                .collect(),
        )
    }

    /// Runs hold exactly the ids added, sorted, apart and merged.
    #[test]
    fn runs_hold_what_was_added() {
        let mut rng = crate::test_rng::XorShift(0x9e37_79b9_7f4a_7c15);
        for round in 0..200 {
            let mut runs = Vec::new();
            let mut all = std::collections::BTreeSet::new();
            for _ in 0..round {
                let x = rng.next();
                let id = [x % 40, u64::MAX - x % 3, x % 5][(x % 3) as usize];
                add_run(&mut runs, id);
                all.insert(id);
            }
            for w in runs.windows(2) {
                assert!(
                    w[0].1.checked_add(1).is_some_and(|n| n < w[1].0),
                    "{runs:?}"
                );
            }
            for id in (0..45).chain(u64::MAX - 4..=u64::MAX) {
                assert_eq!(in_runs(&runs, id), all.contains(&id), "{id} in {runs:?}");
            }
        }
    }

    /// Chunk by chunk and joined, a trace yields what the sequential
    /// parser yields, in its order, whatever the chunk size; and a trace
    /// the joiner cannot place is refused, not joined wrongly.
    #[test]
    fn joined_chunks_agree_with_the_sequential_parser() {
        let (mut accepted, mut refused, mut across) = (0, 0, 0);
        for seed in 0..60 {
            let data = test_trace(seed, 400);
            let want = sequential(&data);
            for size in [64, 333, 1000, 4096, 1 << 20] {
                match joined(&data, size) {
                    Some(got) => {
                        assert_eq!(got, want, "seed {seed}, chunk {size}");
                        accepted += 1;
                    }
                    None => refused += 1,
                }
            }
            across += want.iter().filter(|e| e.contains("Warning")).count();
        }
        assert!(accepted > 120 && refused > 60, "{accepted} {refused}");
        // Damaged copies: bytes changed, dropped or cut anywhere. Most are
        // refused; those that are not must still agree.
        let mut accepted_damaged = 0;
        for seed in 0..300u64 {
            let mut data = test_trace(seed, 120);
            let mut rng = crate::test_rng::XorShift(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            for _ in 0..1 + seed % 4 {
                let x = rng.next();
                let at = (x % data.len().max(1) as u64) as usize;
                match x % 3 {
                    0 => data[at] = b" \n.=x0123456789Rci"[(x >> 8) as usize % 18],
                    1 => {
                        data.remove(at);
                    }
                    _ => data.truncate(at),
                }
            }
            for size in [61, 700, 1 << 20] {
                if let Some(got) = joined(&data, size) {
                    assert_eq!(got, sequential(&data), "damaged seed {seed}, chunk {size}");
                    accepted_damaged += 1;
                }
            }
        }
        assert!(accepted_damaged > 100, "{accepted_damaged}");
        assert!(across > 100, "{across}");
    }

    /// Lines at the edges of the shape whose end the pairer finds by
    /// reading them (a carriage return, what follows `...`, a field
    /// missing at the end, a timestamp alone, a line too long), each in
    /// a trace of its own, read in chunks that cut it anywhere: what the
    /// joiner accepts agrees with the sequential parser.
    #[test]
    fn lines_read_to_their_end_agree_with_the_sequential_parser() {
        let t = |f: &str| format!("2026-11-21 09:30:00.{f} ");
        let long = format!("{}...\n", "k=v ".repeat(20_000));
        let variants: Vec<String> = vec![
            "connection=1 ...Read id=2 return=0\r\n".into(),
            "connection=1 ...Read id=2 return=0 \n".into(),
            "connection=1 ...Read id=2 return=00\n".into(),
            "connection=1 ...Read id=2 return=0".into(),
            "connection=1 Read id=2 offset=0x2000 count=0x1000 ...\r\n".into(),
            "connection=1 Read id=2 offset=0x2000 count=0x1000 ... more\n".into(),
            "connection=1 Read id=2 offset=0x2000 count=0x1000 ....\n".into(),
            "connection=1 Read id=2 offset=0x2000 count=0x1000\n".into(),
            "connection=1 Read id=2 offset=0x2000 count=0x1000 fua=0\n".into(),
            "connection=1 Read id=2 offset=0x2000 count=0x1000 fua=0 ...\n".into(),
            "connection=1 Read id=2 offset=0x2000 count=0x1000 ...".into(),
            format!("connection=1 Read id=2 offset=0x2000 count=0x1000 {long}"),
            "\n".into(),
            "connection=1\tRead id=2 offset=0x2000 count=0x1000 ...\n".into(),
        ];
        let (mut accepted, mut refused) = (0, 0);
        for (i, v) in variants.iter().enumerate() {
            for stamp in [true, false] {
                let mut data = String::new();
                data += &(t("100000") + "connection=1 Read id=1 offset=0x1000 count=0x1000 ...\n");
                data += &(t("100001") + "connection=1 ...Read id=1 return=0\n");
                let completion = v.starts_with("connection=1 ...");
                if completion {
                    data +=
                        &(t("100002") + "connection=1 Read id=2 offset=0x2000 count=0x1000 ...\n");
                }
                data += &(if stamp { t("100003") } else { String::new() } + v);
                if !v.ends_with('\n') {
                    data.push('\n');
                }
                if !completion {
                    data += &(t("100004") + "connection=1 ...Read id=2 return=0\n");
                }
                data += &(t("100004") + "connection=1 Read id=3 offset=0x3000 count=0x1000 ...\n");
                data += &(t("100005") + "connection=1 ...Read id=3 return=0\n");
                let data = data.into_bytes();
                let want = sequential(&data);
                for size in [1, 17, 40, 61, 64, 97, 128, 150, 200, 333, 4096, 1 << 20] {
                    match joined(&data, size) {
                        Some(got) => {
                            assert_eq!(got, want, "variant {i} (stamp {stamp}), chunk {size}");
                            accepted += 1;
                        }
                        None => refused += 1,
                    }
                }
            }
        }
        // Every variant but the five the sequential parser warns about
        // (dots missing or misspelt, a tab, a line too long), in every
        // chunk size, with and without a timestamp.
        assert_eq!((accepted, refused), (9 * 2 * 12, 5 * 2 * 12));
    }
}
