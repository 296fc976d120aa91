//! A trace joined with the map, ready to be played back: requests in
//! order, the objects each one touched, and what the guest had read by any
//! point of the timeline.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::ops::Range;

use crate::kinds::{self, KindId};
use crate::mapdb::{DbResult, MapDb};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceOp {
    Read,
    Write,
    Other,
}

impl TraceOp {
    pub fn parse(op: &str) -> TraceOp {
        match op {
            "read" => TraceOp::Read,
            "write" | "trim" | "zero" => TraceOp::Write,
            _ => TraceOp::Other,
        }
    }
}

/// One request of the trace.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceRequest {
    /// Seconds on the trace's clock, if it has one.
    pub time: Option<f64>,
    pub op: TraceOp,
    pub offset: u64,
    pub length: u64,
    pub failed: bool,
    /// This request's pieces are `pieces[first_piece..next.first_piece]`.
    pub first_piece: u32,
}

/// The bytes of a request that fell on one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TracePiece {
    /// `objects.id`; `None` past the end of the image.
    pub object: Option<i64>,
    pub bytes: u64,
}

/// A trace as the TUI receives it: from `bmap replay`'s parsers (a trace
/// file) or from the map (a stored trace).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TraceData {
    pub name: String,
    pub requests: Vec<TraceRequest>,
    pub pieces: Vec<TracePiece>,
}

impl TraceData {
    pub fn pieces_of(&self, i: usize) -> &[TracePiece] {
        let Some(r) = self.requests.get(i) else {
            return &[];
        };
        let start = r.first_piece as usize;
        let end = self
            .requests
            .get(i + 1)
            .map_or(self.pieces.len(), |n| n.first_piece as usize);
        self.pieces.get(start..end.max(start)).unwrap_or(&[])
    }
}

/// Loads a trace file on the worker thread; reports progress in [0, 1].
pub type TraceLoader = Box<dyn FnOnce(&dyn Fn(f64)) -> Result<TraceData, String> + Send>;

/// Where the replay's byte counters go; the groups of `bmap replay
/// --summary`, with shorter names to fit one line.
pub const GROUPS: [&str; 10] = [
    "file",
    "directory",
    "inode-table",
    "bitmaps",
    "journal",
    "other metadata",
    "free",
    "partition tables",
    "unmapped",
    "beyond the image",
];

fn group(kind: Option<KindId>) -> usize {
    let Some(kind) = kind else { return 9 };
    match kinds::name(kind) {
        "file" | "symlink" => 0,
        "directory" => 1,
        "inode-table" => 2,
        "block-bitmap" | "inode-bitmap" => 3,
        "journal" => 4,
        "free" => 6,
        "mbr" | "ebr" | "gpt-header" | "gpt-entries" => 7,
        "disk" | "partition" | "unpartitioned" | "filesystem" | "other" => 8,
        _ => 5,
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TouchedObject {
    pub id: i64,
    pub kind: KindId,
    pub name: String,
}

/// A trace with every object it touched resolved against the map.
pub struct Replay {
    pub trace: TraceData,
    /// Kind and display name per object id.
    pub objects: HashMap<i64, TouchedObject>,
    /// Files (and symlinks) read, in first-access order, with the index
    /// of the request that first read each.
    pub first_reads: Vec<(usize, i64)>,
    /// Time of the first request, the playback's zero.
    pub t0: Option<f64>,
    /// The [`GROUPS`] index of each piece's object.
    piece_groups: Vec<u8>,
}

impl Replay {
    pub fn new(trace: TraceData, db: &MapDb, progress: &dyn Fn(f64)) -> DbResult<Replay> {
        let mut objects: HashMap<i64, TouchedObject> = HashMap::new();
        let mut read_before: HashSet<i64> = HashSet::new();
        let mut first_reads = Vec::new();
        let n = trace.requests.len();
        for i in 0..n {
            let request = &trace.requests[i];
            let is_read = request.op == TraceOp::Read && !request.failed;
            for piece in trace.pieces_of(i) {
                let Some(id) = piece.object else { continue };
                let object = match objects.entry(id) {
                    Entry::Occupied(o) => o.into_mut(),
                    Entry::Vacant(v) => {
                        let (kind, name) = match db.object(id)? {
                            Some(o) => (kinds::id(&o.kind), o.name),
                            None => (kinds::OTHER, format!("object {id}")),
                        };
                        v.insert(TouchedObject { id, kind, name })
                    }
                };
                let is_file = matches!(kinds::name(object.kind), "file" | "symlink");
                if is_read && is_file && read_before.insert(id) {
                    first_reads.push((i, id));
                }
            }
            if i.is_multiple_of(8192) {
                progress(i as f64 / n.max(1) as f64);
            }
        }
        let t0 = trace.requests.iter().find_map(|r| r.time);
        let piece_groups = trace
            .pieces
            .iter()
            .map(|p| {
                let kind = p
                    .object
                    .map(|id| objects.get(&id).map_or(kinds::OTHER, |o| o.kind));
                group(kind) as u8
            })
            .collect();
        Ok(Replay {
            trace,
            objects,
            first_reads,
            t0,
            piece_groups,
        })
    }

    pub fn len(&self) -> usize {
        self.trace.requests.len()
    }

    pub fn is_empty(&self) -> bool {
        self.trace.requests.is_empty()
    }

    /// How many files the first `shown` requests read.
    pub fn files_read(&self, shown: usize) -> usize {
        self.first_reads.partition_point(|&(i, _)| i < shown)
    }

    /// Bytes read and written per [`GROUPS`] entry by the first `shown`
    /// requests.
    pub fn counters(&self, shown: usize) -> [(u64, u64); GROUPS.len()] {
        let mut out = [(0u64, 0u64); GROUPS.len()];
        self.count(0..shown, &mut out, true);
        out
    }

    /// Adds (or with `add` false, takes away) requests `range`'s bytes to
    /// `counters`: stepping through a long trace costs the step, not the
    /// trace so far.
    pub fn count(&self, range: Range<usize>, counters: &mut [(u64, u64); GROUPS.len()], add: bool) {
        let end = range.end.min(self.len());
        for i in range.start.min(end)..end {
            let request = &self.trace.requests[i];
            if request.failed || request.op == TraceOp::Other {
                continue;
            }
            let first = request.first_piece as usize;
            for (k, piece) in self.trace.pieces_of(i).iter().enumerate() {
                let g = self
                    .piece_groups
                    .get(first + k)
                    .map_or(8, |&g| usize::from(g));
                let slot = &mut counters[g];
                let value = if request.op == TraceOp::Read {
                    &mut slot.0
                } else {
                    &mut slot.1
                };
                *value = if add {
                    value.saturating_add(piece.bytes)
                } else {
                    value.saturating_sub(piece.bytes)
                };
            }
        }
    }

    /// Seconds from the first request to request `i`; traces without times
    /// play at one request per millisecond.
    pub fn seconds_of(&self, i: usize) -> f64 {
        match (self.t0, self.trace.requests.get(i).and_then(|r| r.time)) {
            (Some(t0), Some(t)) => (t - t0).max(0.0),
            _ => i as f64 / 1000.0,
        }
    }

    /// How many requests had been issued `seconds` after the first.
    pub fn shown_at(&self, seconds: f64) -> usize {
        // Times only go forward in the traces bmap reads (completion order
        // of a log); a partition point over them is a binary search.
        let n = self.len();
        let (mut lo, mut hi) = (0usize, n);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.seconds_of(mid) <= seconds {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// The first `shown` requests that moved data over `[a, b)`, as
    /// (request index, byte range, op).
    pub fn touching(
        &self,
        shown: usize,
        a: u64,
        b: u64,
    ) -> impl Iterator<Item = (usize, Range<u64>, TraceOp)> + '_ {
        let end = shown.min(self.len());
        self.trace.requests[..end]
            .iter()
            .enumerate()
            .filter(move |(_, r)| {
                r.op != TraceOp::Other
                    && !r.failed
                    && r.offset < b
                    && r.offset.saturating_add(r.length) > a
            })
            .map(|(i, r)| (i, r.offset..r.offset.saturating_add(r.length), r.op))
    }
}
