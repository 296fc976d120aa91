//! The summary and the boot list of an nbdkit trace file, counted on
//! every core.
//!
//! The other replay parses on worker threads but pairs and attributes
//! every request on one thread, which bounds its speed. Here each worker
//! takes the next chunk of the trace as it is free, pairs it (see
//! [`paired`]) and attributes the requests that complete within it into a
//! [`Tally`] of its own; the calling thread only joins what crosses chunk
//! boundaries — a few requests per chunk — and attributes those. The
//! tallies are then added up, each request renumbered to its place in the
//! sequential order, so that the views print exactly what the sequential
//! replay prints.
//!
//! A trace the joiner cannot place exactly (bad lines, reused ids, a read
//! error…) makes [`count`] return no tally, and the caller replays it the
//! sequential way, which reports what is wrong with it.
//!
//! [`paired`]: crate::trace::nbdkit::paired

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Condvar, Mutex, OnceLock};

use super::{MapIndex, Outcome, Tally};
use crate::trace::nbdkit::paired::{ChunkPairer, Joiner, Local, PairedChunk};
use crate::trace::{Event, PositionalRead};

/// Bytes of the trace a worker pairs at a time: some 13,000 lines, whose
/// requests nearly all complete within the chunk.
pub const CHUNK: usize = 1 << 20;

/// Worker threads for [`count`]: one per core (the calling thread only
/// joins what crosses chunks), at most 8.
pub fn workers() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().clamp(1, 8))
}

/// Chunks per worker the workers may have in hand past the one the joiner
/// waits for, besides the early ones (see [`Window`]). One worker may run
/// ahead of another (descheduled, or waiting for a page) by that much;
/// chunks are recycled, so this costs no memory the early chunks did not.
const AHEAD: usize = 8;

/// Chunks a worker may pair while the map's layout loads, before it waits
/// for it: some 2.5 MB of events. The layout of a map of 200,000 files
/// mostly loads in the time a worker pairs 8 chunks, but in a virtual
/// machine whose fresh memory is slow at times, in several times that,
/// and then both workers stood waiting (6-40 ms in half the runs, measured
/// from scheduler switches). 16 against 8 measured 0.92x and 0.93x the
/// wall time at such times, 1.00x at others (21 pairs each); 32 the same
/// as 16. The trace is mapped, so its chunks cost no buffers, only their
/// events.
const EARLY: usize = 16;

/// The order key of local event `r` of chunk `k`: increasing with `(k,
/// r)`, never 0 (a tally's "not touched").
fn key(k: u64, r: usize) -> u64 {
    ((k << 32) | r as u64) + 1
}

/// What the caller gets: the loaded map and, unless the trace needs the
/// sequential replay, what it counted.
pub struct Counted {
    pub index: MapIndex,
    pub tally: Option<(Outcome, Tally)>,
}

/// The map, once the caller has it: workers pair chunks while it loads,
/// and wait for it to attribute them.
struct Gate {
    /// `None` while loading; then whether the map is there.
    state: Mutex<Option<bool>>,
    changed: Condvar,
}

impl Gate {
    fn open(&self, loaded: bool) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = Some(loaded);
        self.changed.notify_all();
    }

    fn peek(&self) -> Option<bool> {
        *self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(loaded) = *state {
                return loaded;
            }
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// What a worker leaves: its tally (none if it attributed nothing) and
/// the last chunk it attributed.
struct Left {
    tally: Option<Tally>,
    last_chunk: Option<u64>,
}

/// Counts the nbdkit trace in `src` with `workers` threads while `load`
/// loads the map on the calling thread; the map's loading error is
/// returned as it is.
pub fn count<S, E>(
    src: &S,
    workers: usize,
    chunk: usize,
    load: impl FnOnce() -> Result<MapIndex, E>,
) -> Result<Counted, E>
where
    S: PositionalRead + ?Sized,
{
    let workers = workers.max(1);
    let slot = OnceLock::new();
    let gate = Gate {
        state: Mutex::new(None),
        changed: Condvar::new(),
    };
    let stop = AtomicBool::new(false);
    let window = Window::new(workers);
    let shared = Shared {
        slot: &slot,
        gate: &gate,
        stop: &stop,
        window: &window,
        next: AtomicU64::new(0),
        chunk,
        spent: Mutex::new(Vec::new()),
    };
    let tally = std::thread::scope(|scope| {
        // Room for every chunk the window lets the workers have in hand:
        // none of them waits to hand one over.
        let (chunk_tx, chunk_rx) = mpsc::sync_channel(window.size);
        let shared = &shared;
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                let chunks = chunk_tx.clone();
                scope.spawn(move || work(src, shared, &chunks))
            })
            .collect();
        drop(chunk_tx);
        let index = match load() {
            Ok(index) => index,
            Err(e) => {
                stop.store(true, Ordering::Relaxed);
                gate.open(false);
                return Err(e);
            }
        };
        let index = slot.get_or_init(|| index);
        gate.open(true);
        let joined = join(src, index, &chunk_rx, shared);
        // Workers past the last chunk stop at their next chunk or send.
        stop.store(true, Ordering::Relaxed);
        window.close();
        drop(chunk_rx);
        let mut lefts = Vec::with_capacity(workers);
        for h in handles {
            match h.join() {
                Ok(left) => lefts.push(left),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        Ok(joined.and_then(|j| j.add_up(lefts)))
    })?;
    let Some(index) = slot.into_inner() else {
        unreachable!("the map is loaded before the tally is made")
    };
    Ok(Counted { index, tally })
}

/// What the workers share: the map once loaded, the next chunk to take,
/// and the chunks the joiner is done with, to be filled again.
struct Shared<'a> {
    slot: &'a OnceLock<MapIndex>,
    gate: &'a Gate,
    stop: &'a AtomicBool,
    window: &'a Window,
    next: AtomicU64,
    chunk: usize,
    spent: Mutex<Vec<PairedChunk>>,
}

/// The chunks the workers may have in hand: each takes the next chunk
/// as it is free (so both end together, whatever else runs on their
/// cores), but none more than `size` chunks past the one the joiner
/// waits for, so that memory stays bounded.
struct Window {
    /// The chunk the joiner waits for, and whether it has stopped.
    state: Mutex<(u64, bool)>,
    moved: Condvar,
    size: usize,
}

impl Window {
    fn new(workers: usize) -> Self {
        Window {
            state: Mutex::new((0, false)),
            moved: Condvar::new(),
            // Every early chunk, so that no worker waits here with early
            // chunks in hand (the joiner would wait for them), and a few
            // more each.
            size: workers * (EARLY + AHEAD),
        }
    }

    /// Waits until chunk `k` is within the window; false if the joiner
    /// has stopped.
    fn wait_for(&self, k: u64) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let (wanted, closed) = *state;
            if closed {
                return false;
            }
            if k < wanted.saturating_add(self.size as u64) {
                return true;
            }
            state = self.moved.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// The joiner now waits for chunk `k`.
    fn advance(&self, k: u64) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).0 = k;
        self.moved.notify_all();
    }

    fn close(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).1 = true;
        self.moved.notify_all();
    }
}

/// A worker: takes the next chunk, pairs it, attributes its local
/// requests once the map is there, and hands it to the joiner, until the
/// trace ends or nobody listens.
fn work<S: PositionalRead + ?Sized>(
    src: &S,
    shared: &Shared<'_>,
    chunks: &mpsc::SyncSender<(u64, PairedChunk)>,
) -> Left {
    let mut pairer = ChunkPairer::default();
    let mut left = Left {
        tally: None,
        last_chunk: None,
    };
    // Chunks paired while the map loads, not attributed yet.
    let mut early: Vec<(u64, PairedChunk)> = Vec::new();
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            return left;
        }
        let k = shared.next.fetch_add(1, Ordering::Relaxed);
        // Early chunks are all within the window (see `Window::new`).
        if early.is_empty() && !shared.window.wait_for(k) {
            return left;
        }
        let spent = shared.spent.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut c = spent.unwrap_or_else(|| PairedChunk::for_size(shared.chunk));
        // A read error is the sequential replay's to report; so is a
        // trace of more chunks than a key can number (petabytes).
        if pairer.pair(src, k, shared.chunk, &mut c).is_err() || k > u64::from(u32::MAX) {
            c.odd = true;
        }
        let ends = c.last || c.odd;
        early.push((k, c));
        let loaded = match shared.gate.peek() {
            Some(loaded) => loaded,
            None if early.len() < EARLY && !ends => continue,
            None => shared.gate.wait(),
        };
        let Some(index) = shared.slot.get().filter(|_| loaded) else {
            return left;
        };
        let tally = left.tally.get_or_insert_with(|| Tally::new(index, true));
        for (k, c) in early.drain(..) {
            if !c.odd && c.lines > 0 {
                attribute(index, tally, k, &c.local);
                left.last_chunk = left.last_chunk.max(Some(k));
            }
            if chunks.send((k, c)).is_err() {
                return left;
            }
        }
        if ends {
            return left;
        }
    }
}

/// Requests between the stages of [`attribute`]'s pipeline.
const STAGE: usize = 6;

/// Where [`attribute`] keeps each request's first segment from the stage
/// that finds it to the one that counts it: more than `2 * STAGE`.
const FIRSTS: usize = 32;

/// Counts chunk `k`'s local events, numbered by [`key`].
///
/// Counting a request reads its bucket, its segment, its owner's slot and
/// its owner's numbers, each a likely cache miss found from the one
/// before. The chunk's offsets are all known, so the four are fetched in
/// a pipeline: while request `j` is counted, the numbers of request
/// `j + STAGE` are being fetched, the slot of `j + 2 * STAGE`, and so on,
/// every miss in flight alongside the others instead of waited for in
/// turn.
fn attribute(index: &MapIndex, tally: &mut Tally, k: u64, local: &[Local]) {
    let mut firsts = [0usize; FIRSTS];
    let n = local.len();
    let lead = 4 * STAGE;
    // While the pipeline fills and drains some stages have no request;
    // in between, every stage has one, and the loop checks nothing.
    for t in 0..lead {
        pipeline_step(index, tally, k, local, &mut firsts, t);
    }
    for t in lead..n {
        let j = |stage: usize| t - stage * STAGE;
        index.prefetch_bucket(local[t].offset);
        index.prefetch_segment(local[j(1)].offset);
        find_first(index, tally, &mut firsts, j(2), &local[j(2)]);
        fetch_numbers(index, tally, &firsts, j(3));
        count_request(index, tally, k, &firsts, j(4), &local[j(4)]);
    }
    for t in lead.max(n)..n + lead {
        pipeline_step(index, tally, k, local, &mut firsts, t);
    }
}

/// Step `t` of [`attribute`]'s pipeline, each stage given its request if
/// it has one.
#[inline(always)]
fn pipeline_step(
    index: &MapIndex,
    tally: &mut Tally,
    k: u64,
    local: &[Local],
    firsts: &mut [usize; FIRSTS],
    t: usize,
) {
    let at = |stage: usize| {
        t.checked_sub(stage * STAGE)
            .and_then(|j| Some((j, local.get(j)?)))
    };
    if let Some((_, ev)) = at(0) {
        index.prefetch_bucket(ev.offset);
    }
    if let Some((_, ev)) = at(1) {
        index.prefetch_segment(ev.offset);
    }
    if let Some((j, ev)) = at(2) {
        find_first(index, tally, firsts, j, ev);
    }
    if let Some((j, _)) = at(3) {
        fetch_numbers(index, tally, firsts, j);
    }
    if let Some((j, ev)) = at(4) {
        count_request(index, tally, k, firsts, j, ev);
    }
}

/// Finds request `j`'s first segment, and fetches its owner's slot.
#[inline(always)]
fn find_first(index: &MapIndex, tally: &Tally, firsts: &mut [usize; FIRSTS], j: usize, ev: &Local) {
    let first = index.first_ending_after(ev.offset);
    firsts[j % FIRSTS] = first;
    if let Some(o) = index.owner_at(first) {
        tally.touched.prefetch_slot(o);
    }
}

/// Fetches the numbers of request `j`'s first owner.
#[inline(always)]
fn fetch_numbers(index: &MapIndex, tally: &Tally, firsts: &[usize; FIRSTS], j: usize) {
    if let Some(o) = index.owner_at(firsts[j % FIRSTS]) {
        tally.touched.prefetch_numbers(o);
    }
}

/// Counts request `j`.
#[inline(always)]
fn count_request(
    index: &MapIndex,
    tally: &mut Tally,
    k: u64,
    firsts: &[usize; FIRSTS],
    j: usize,
    ev: &Local,
) {
    let seq = key(k, j);
    let time = ev.time();
    let length = u64::from(ev.length);
    if tally.request(seq, time, ev.op, length, ev.failed) {
        let mut last_object = None;
        index.split_from(Some(firsts[j % FIRSTS]), ev.offset, length, |p| {
            tally.piece(seq, time, ev.op, &p, &mut last_object);
        });
    }
}

/// What the joiner made of the chunks: the requests that crossed chunk
/// boundaries, counted, and where they fall among the local ones.
struct Joined {
    outcome: Outcome,
    tally: Tally,
    /// Per chunk: the sequence number of the request before its first,
    /// and the ranks its joined requests come before (see [`key`]).
    chunks: Vec<(u64, Vec<u32>)>,
    last_chunk: u64,
}

/// Takes in the chunks in order; `None` if the trace needs the
/// sequential replay.
fn join<S: PositionalRead + ?Sized>(
    src: &S,
    index: &MapIndex,
    chunks: &mpsc::Receiver<(u64, PairedChunk)>,
    shared: &Shared<'_>,
) -> Option<Joined> {
    let mut joiner = Joiner::default();
    let mut joined = Joined {
        outcome: Outcome::default(),
        tally: Tally::sparse(),
        chunks: Vec::new(),
        last_chunk: 0,
    };
    let mut events = Vec::new();
    // Chunks that came before their turn.
    let mut waiting: std::collections::HashMap<u64, PairedChunk> = std::collections::HashMap::new();
    // Requests before the current chunk.
    let mut seq = 0u64;
    for k in 0u64.. {
        shared.window.advance(k);
        let mut c = match waiting.remove(&k) {
            Some(c) => c,
            None => loop {
                // A worker stops without its chunk only if it panicked;
                // its panic is raised when it is joined.
                let (got, c) = chunks.recv().ok()?;
                if got == k {
                    break c;
                }
                waiting.insert(got, c);
            },
        };
        if !joiner.join(&mut c, &mut events) {
            return None;
        }
        // Every chunk before this one is paired: their bytes are not read
        // again (this one's first line may still be read from the one
        // before, which stays until the next).
        let size = shared.chunk as u64;
        src.done_with(
            k.saturating_sub(1).saturating_mul(size),
            k.saturating_mul(size),
        );
        let mut ranks = Vec::new();
        for (rank, item) in events.drain(..) {
            match item.ok()? {
                Event::Request(r) => {
                    let at = seq + u64::from(rank) + ranks.len() as u64 + 1;
                    ranks.push(rank);
                    joined.count(index, at, &r);
                }
                other => joined.outcome.warnings.note(index, other),
            }
        }
        let before = seq;
        seq += c.local.len() as u64 + ranks.len() as u64;
        joined.chunks.push((before, ranks));
        let last = c.last;
        shared
            .spent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(c);
        if last {
            joined.last_chunk = k;
            break;
        }
    }
    for item in joiner.finish() {
        if let Event::Request(r) = item.ok()? {
            seq += 1;
            joined.count(index, seq, &r);
        }
    }
    Some(joined)
}

impl Joined {
    fn count(&mut self, index: &MapIndex, seq: u64, r: &crate::trace::Request) {
        let tally = &mut self.tally;
        if tally.request(seq, r.time, r.op, r.length, r.failed.is_some()) {
            let mut last_object = None;
            index.split(r.offset, r.length, |p| {
                tally.piece(seq, r.time, r.op, &p, &mut last_object);
            });
        }
    }

    /// The sequence number of the request [`key`] `key` stands for.
    /// Every chunk a worker counted was joined ([`Joined::add_up`] checks
    /// it first), so every key has its chunk.
    fn seq_of(&self, key: u64) -> u64 {
        let k = key.saturating_sub(1) >> 32;
        let r = key.saturating_sub(1) & 0xffff_ffff;
        let Some((before, ranks)) = usize::try_from(k).ok().and_then(|k| self.chunks.get(k)) else {
            return key;
        };
        let joined_before = ranks.partition_point(|&b| u64::from(b) <= r);
        before + r + joined_before as u64 + 1
    }

    /// Adds the workers' tallies to the joiner's; `None` if a worker
    /// counted a chunk past the trace's end (the file grew meanwhile).
    fn add_up(mut self, lefts: Vec<Left>) -> Option<(Outcome, Tally)> {
        let mut tallies = Vec::with_capacity(lefts.len() + 1);
        for left in lefts {
            let Some(tally) = left.tally else {
                continue;
            };
            if left.last_chunk.is_some_and(|k| k > self.last_chunk) {
                return None;
            }
            tallies.push(tally);
        }
        // Each worker's numbers are renumbered on a thread of their own.
        if let Some((first, rest)) = tallies.split_first_mut() {
            let this = &self;
            std::thread::scope(|scope| {
                for t in rest {
                    scope.spawn(move || t.renumber(|key| this.seq_of(key)));
                }
                first.renumber(|key| this.seq_of(key));
            });
        }
        tallies.push(std::mem::replace(&mut self.tally, Tally::sparse()));
        let tally = Tally::sum(tallies)?;
        self.outcome.totals = tally.totals.clone();
        Some((self.outcome, tally))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::map::Kind;
    use crate::replay::objects::{ObjectTable, Row, Span};
    use crate::replay::{OutputFormat, ReplayOptions, Segment, View};
    use crate::trace::nbdkit::paired::test_trace;
    use crate::trace::{events, Format, ParseOptions};

    /// A 64 KiB disk: an inode table, a file in two pieces, a directory,
    /// free space, another file, and the rest of the disk; an object id
    /// (7) the object table lacks, as in a hand-edited map.
    fn index() -> MapIndex {
        let objects = [
            (Kind::Disk, "/dev/sda", None),
            (Kind::File, "/dev/sda /a", Some(30_000)),
            (Kind::Directory, "/dev/sda /d", Some(4096)),
            (Kind::Free, "free", None),
            (Kind::InodeTable, "inode table", None),
            (Kind::File, "/dev/sda /d/b", Some(9000)),
        ];
        let mut strings = String::new();
        let mut rows = vec![Row::default()];
        let mut kinds = vec![Kind::default()];
        for (kind, name, size) in objects {
            let span = |s: &str, at: usize| Span::new(at, at + s.len());
            let at = strings.len();
            strings += name;
            let (device, path) = match name.split_once(' ') {
                Some((d, p)) => (span(d, at), span(p, at + d.len() + 1)),
                None => (None, None),
            };
            let name = span(name, at).unwrap_or_default();
            rows.push(Row::new(kind, None, size, name, device, path));
            kinds.push(kind);
        }
        let seg = |start, end, owner: u32| Segment {
            start,
            end,
            owner,
            kind: kinds.get(owner as usize).copied(),
        };
        let segments = vec![
            seg(0, 4096, 5),
            seg(4096, 20_000, 2),
            seg(20_000, 24_000, 3),
            seg(24_000, 30_000, 4),
            seg(30_000, 40_000, 6),
            seg(40_000, 50_000, 2),
            seg(50_000, 52_000, 7),
            seg(52_000, 65_536, 1),
        ];
        let index = MapIndex::from_parts(65_536, segments, kinds);
        let _ = index.objects.set(ObjectTable::from_parts(strings, rows));
        index
    }

    /// The view as the sequential replay writes it, and its warnings.
    fn sequential(data: &[u8], opts: &ReplayOptions<'_>) -> (Vec<u8>, String) {
        let mut out = Vec::new();
        let parsed = events(Format::Nbdkit, data, &ParseOptions::default());
        let outcome = crate::replay::run(&index(), parsed, opts, &mut out, None).unwrap();
        (out, format!("{:?}", outcome.warnings))
    }

    /// The same, counted in parallel, from `data` in memory and from a file
    /// of it mapped as `bmap replay` maps a trace, which must agree; `None`
    /// if it needs the sequential replay.
    fn parallel(
        data: &[u8],
        opts: &ReplayOptions<'_>,
        workers: usize,
        chunk: usize,
    ) -> Option<(Vec<u8>, String)> {
        let read = parallel_from(data, opts, workers, chunk);
        let mut file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut file, data).unwrap();
        if let Some(mapped) = crate::trace::mapped::Mapped::new(&file) {
            assert!(mapped.whole().is_some());
            assert_eq!(read, parallel_from(&mapped, opts, workers, chunk));
        } else {
            assert!(data.is_empty());
        }
        read
    }

    fn parallel_from<S: PositionalRead + ?Sized>(
        data: &S,
        opts: &ReplayOptions<'_>,
        workers: usize,
        chunk: usize,
    ) -> Option<(Vec<u8>, String)> {
        let counted = count(data, workers, chunk, || Ok::<_, ()>(index())).unwrap();
        let (outcome, tally) = counted.tally?;
        let mut out = Vec::new();
        crate::replay::write_view(&counted.index, opts, &mut out, &outcome, &tally).unwrap();
        Some((out, format!("{:?}", outcome.warnings)))
    }

    /// Whatever the chunk size and the number of workers, the summary and
    /// the boot list are what the sequential replay writes, byte for
    /// byte, and so are the warnings; or the trace is handed back.
    #[test]
    fn counts_agree_with_the_sequential_replay() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let (mut same, mut handed_back) = (0, 0);
        for seed in 0..24 {
            let data = test_trace(seed, 600);
            for (view, output) in [
                (View::Summary, OutputFormat::Text),
                (View::Summary, OutputFormat::Json),
                (View::BootList, OutputFormat::Csv),
            ] {
                let opts = ReplayOptions {
                    view,
                    output,
                    verbose: false,
                    trace_name: "t",
                    format: Format::Nbdkit,
                    conn: &conn,
                };
                let want = sequential(&data, &opts);
                for (workers, chunk) in [(1, 97), (2, 500), (3, 2000), (2, 1 << 20)] {
                    match parallel(&data, &opts, workers, chunk) {
                        Some(got) => {
                            assert!(
                                got == want,
                                "seed {seed}, {workers} workers, chunk {chunk}:\n{}\n---\n{}",
                                String::from_utf8_lossy(&got.0),
                                String::from_utf8_lossy(&want.0)
                            );
                            same += 1;
                        }
                        None => handed_back += 1,
                    }
                }
            }
        }
        assert!(same > 120 && handed_back > 40, "{same} {handed_back}");
    }

    /// A map that fails to load stops the workers wherever they are
    /// (pairing early chunks, waiting for the map) and its error comes
    /// back as it is.
    #[test]
    fn a_map_that_fails_to_load_stops_the_workers() {
        let data = test_trace(7, 3000);
        for (workers, chunk) in [(1, 97), (2, 500), (3, 64), (2, 1 << 20)] {
            let counted = count(&data[..], workers, chunk, || Err::<MapIndex, _>("no map"));
            assert!(
                matches!(counted, Err("no map")),
                "{workers} workers, chunk {chunk}"
            );
        }
    }
}
