//! `bmap replay`: joins a trace with a map. Each request is split over the
//! layout and its bytes are attributed to the most specific object, with
//! the offset inside it.
//!
//! The map's layout and object table are loaded once into flat vectors
//! (from the map's packed copy when it has one, see [`packed`]), so
//! attributing a request is a table lookup and a short walk; everything
//! per request is streamed, and what the views keep grows with the number
//! of objects touched, never with the length of the trace.

mod apart;
pub mod fused;
pub mod objects;
pub mod packed;

use rusqlite::Connection;

use self::objects::{cached_kind_at, usable_id, LineText};
pub use self::objects::{ObjectInfo, ObjectTable};
use crate::error::Result;
use crate::map::Kind;
use crate::prefetch::prefetch;
use crate::trace::{Op, Request};

/// The layout of a map, ready for lookups.
///
/// Attributing bytes needs only the layout and each object's kind; names
/// and paths are needed only to print. [`MapIndex::load_packed_layout`]
/// (from the packed copy) or [`MapIndex::load_layout`] (from the tables)
/// reads the former, and the object table may be read by another thread
/// meanwhile ([`MapIndex::load_objects`]) and handed over with
/// [`MapIndex::objects_from`]; [`MapIndex::load`] reads everything at once.
pub struct MapIndex {
    pub image_size: u64,
    /// Sorted by start, disjoint (see [`Segment`]).
    segments: Vec<Segment>,
    /// `buckets[b]` is the first segment ending after byte `b << shift`:
    /// a lookup is one read here and a search among the few segments of
    /// one bucket, instead of a binary search over the whole layout, whose
    /// every step would miss the cache.
    buckets: Vec<u32>,
    shift: u32,
    /// Indexed by `objects.id`; index 0 is unused.
    kinds: Vec<Kind>,
    /// Indexed by `objects.id` as `kinds` is, once loaded.
    objects: std::sync::OnceLock<ObjectTable>,
    /// Where the objects come from when they are not loaded yet.
    loader: std::sync::Mutex<Option<ObjectLoader>>,
}

/// One run of the layout, with its owner's kind beside it so that
/// attributing a piece reads one cache line.
#[derive(Debug, Clone, Copy)]
struct Segment {
    start: u64,
    end: u64,
    owner: u32,
    kind: Option<Kind>,
}

/// A thread reading the object table.
pub type ObjectLoader = std::thread::JoinHandle<Result<ObjectTable>>;

/// A piece of a request that falls on one object (or past the image).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    /// `objects.id`, or `None` beyond the end of the image.
    pub object: Option<u32>,
    /// The object's kind; `None` beyond the end, or for an id the map's
    /// object table lacks.
    pub kind: Option<Kind>,
    pub disk_offset: u64,
    pub length: u64,
}

fn image_size(conn: &Connection) -> Result<u64> {
    Ok(conn
        .query_row("SELECT value FROM meta WHERE key = 'image_size'", [], |r| {
            r.get::<_, String>(0)
        })?
        .parse()
        .unwrap_or(0))
}

impl MapIndex {
    /// Loads the layout and the object table: the packed copy if the map
    /// has a usable one, else the tables.
    pub fn load(conn: &Connection) -> Result<MapIndex> {
        if let Some(index) = Self::load_packed(conn)? {
            return Ok(index);
        }
        let objects = Self::load_objects(conn)?;
        let index = Self::load_layout(conn)?;
        let _ = index.objects.set(objects);
        Ok(index)
    }

    /// Loads everything from the map's packed copy; `None` when it has no
    /// usable one.
    pub fn load_packed(conn: &Connection) -> Result<Option<MapIndex>> {
        let image_size = image_size(conn)?;
        let mut segments = Vec::new();
        let Some(objects) = packed::load(conn, &mut segments)? else {
            return Ok(None);
        };
        let index = Self::from_packed(image_size, segments, objects.kinds());
        let _ = index.objects.set(objects);
        Ok(Some(index))
    }

    /// Loads the layout and the kind of every object from the map's packed
    /// copy, as [`MapIndex::load_layout`] does from the tables: attributing
    /// can start while [`MapIndex::load_objects`] reads the names (most of
    /// the map's memory) on another thread. `None` when the map has no
    /// usable packed copy.
    pub fn load_packed_layout(conn: &Connection) -> Result<Option<MapIndex>> {
        let image_size = image_size(conn)?;
        let mut segments = Vec::new();
        let Some(kinds) = packed::load_layout(conn, &mut segments)? else {
            return Ok(None);
        };
        Ok(Some(Self::from_packed(image_size, segments, kinds)))
    }

    /// The index of a packed layout: the segments come before the objects
    /// in the blob, so their kinds are filled in after.
    fn from_packed(image_size: u64, mut segments: Vec<Segment>, kinds: Vec<Kind>) -> MapIndex {
        for seg in &mut segments {
            seg.kind = kinds.get(seg.owner as usize).copied();
        }
        Self::from_parts(image_size, segments, kinds)
    }

    /// Loads the layout and the kind of every object from the tables; the
    /// rest of the object table comes from [`MapIndex::objects_from`].
    pub fn load_layout(conn: &Connection) -> Result<MapIndex> {
        let image_size = image_size(conn)?;
        let mut kinds: Vec<Kind> = Vec::new();
        let mut st = conn.prepare("SELECT id, kind FROM objects ORDER BY id")?;
        let mut rows = st.query([])?;
        // Kinds repeat: remember the last text and what it parsed to.
        let mut last: (Vec<u8>, Kind) = (Vec::new(), Kind::Unknown);
        while let Some(r) = rows.next()? {
            let Some(id) = usable_id(r.get(0)?, kinds.len()) else {
                continue;
            };
            if kinds.len() <= id {
                kinds.resize(id + 1, Kind::default());
            }
            kinds[id] = cached_kind_at(r, 1, &mut last)?;
        }
        let mut segments: Vec<Segment> = Vec::new();
        let mut st =
            conn.prepare("SELECT start, end, object FROM layout_segments ORDER BY start")?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            let (s, e, o): (i64, i64, i64) = (r.get(0)?, r.get(1)?, r.get(2)?);
            let (Ok(s), Ok(e), Ok(o)) = (u64::try_from(s), u64::try_from(e), u32::try_from(o))
            else {
                continue;
            };
            if s >= e || segments.last().is_some_and(|prev| prev.start >= s) {
                continue;
            }
            // Overlaps only come from a hand-edited map: the later segment
            // wins from its start on, so that ends stay sorted.
            if let Some(prev) = segments.last_mut() {
                prev.end = prev.end.min(s);
            }
            segments.push(Segment {
                start: s,
                end: e,
                owner: o,
                kind: kinds.get(o as usize).copied(),
            });
        }
        Ok(Self::from_parts(image_size, segments, kinds))
    }

    fn from_parts(image_size: u64, segments: Vec<Segment>, kinds: Vec<Kind>) -> MapIndex {
        // About one bucket per segment, at least 4 KiB each.
        let per_segment = image_size / (segments.len() as u64).max(1);
        let shift = (u64::BITS - per_segment.leading_zeros()).clamp(12, 63);
        let count = usize::try_from(image_size.div_ceil(1 << shift)).unwrap_or(0);
        let mut buckets = Vec::with_capacity(count);
        let mut i = 0;
        for b in 0..count as u64 {
            let at = b << shift;
            while i < segments.len() && segments[i].end <= at {
                i += 1;
            }
            buckets.push(u32::try_from(i).unwrap_or(u32::MAX));
        }
        MapIndex {
            image_size,
            segments,
            buckets,
            shift,
            kinds,
            objects: std::sync::OnceLock::new(),
            loader: std::sync::Mutex::new(None),
        }
    }

    /// The bucket of byte `pos`; perhaps past the last one.
    fn bucket_of(&self, pos: u64) -> usize {
        usize::try_from(pos >> self.shift).unwrap_or(usize::MAX)
    }

    /// The first segment ending after `pos`.
    pub(crate) fn first_ending_after(&self, pos: u64) -> usize {
        let segs = &self.segments;
        let b = self.bucket_of(pos);
        let (lo, hi) = match self.buckets.get(b) {
            // The segment holding the next bucket's first byte ends after
            // `pos` too, so the answer is at most that one.
            Some(&lo) => (
                lo as usize,
                self.buckets
                    .get(b + 1)
                    .map_or(segs.len(), |&h| (h as usize + 1).min(segs.len())),
            ),
            None => (0, segs.len()),
        };
        let lo = lo.min(hi);
        lo + segs[lo..hi].partition_point(|s| s.end <= pos)
    }

    /// Starts fetching the bucket of byte `pos`.
    #[inline]
    pub(crate) fn prefetch_bucket(&self, pos: u64) {
        if let Some(b) = self.buckets.get(self.bucket_of(pos)) {
            prefetch(b);
        }
    }

    /// Starts fetching the segments among which the search for byte `pos`
    /// looks (see [`MapIndex::first_ending_after`]): the first and the last
    /// of them, mostly one or two apart. Its bucket is best fetched first
    /// (see [`MapIndex::prefetch_bucket`]).
    #[inline]
    pub(crate) fn prefetch_segment(&self, pos: u64) {
        let b = self.bucket_of(pos);
        let Some(&lo) = self.buckets.get(b) else {
            return;
        };
        let hi = self.buckets.get(b.wrapping_add(1)).map_or(lo, |&h| h);
        for i in [lo, hi] {
            if let Some(seg) = self.segments.get(i as usize) {
                prefetch(seg);
            }
        }
    }

    /// The owner of segment `i`.
    #[inline]
    pub(crate) fn owner_at(&self, i: usize) -> Option<u32> {
        self.segments.get(i).map(|s| s.owner)
    }

    /// Reads the object table: from the map's packed copy if it has a
    /// usable one, else from the `objects` table.
    pub fn load_objects(conn: &Connection) -> Result<ObjectTable> {
        match packed::load_objects(conn)? {
            Some(objects) => Ok(objects),
            None => ObjectTable::load(conn),
        }
    }

    /// Takes the object table from a thread reading it (see
    /// [`MapIndex::load_objects`]); it is waited for when first needed.
    pub fn objects_from(self, loader: ObjectLoader) -> MapIndex {
        if self.objects.get().is_none() {
            *self.loader.lock().unwrap_or_else(|e| e.into_inner()) = Some(loader);
        }
        self
    }

    /// The object table, waiting for its loader if need be.
    pub fn objects(&self) -> Result<&ObjectTable> {
        if let Some(o) = self.objects.get() {
            return Ok(o);
        }
        // Held while waiting, so that a second caller waits too.
        let mut loader = self.loader.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(handle) = loader.take() {
            let objects = match handle.join() {
                Ok(o) => o?,
                Err(panic) => std::panic::resume_unwind(panic),
            };
            let _ = self.objects.set(objects);
        }
        drop(loader);
        Ok(self.objects.get_or_init(ObjectTable::default))
    }

    /// The object `id`, once the object table is loaded.
    pub fn object(&self, id: u32) -> Option<ObjectInfo<'_>> {
        self.objects.get()?.get(id)
    }

    /// The kind of object `id`; `None` for an id the map does not have.
    pub fn kind(&self, id: u32) -> Option<Kind> {
        self.kinds.get(id as usize).copied()
    }

    /// One more than the largest object id.
    pub fn object_count(&self) -> usize {
        self.kinds.len()
    }

    /// Splits `[offset, offset + length)` over the layout, calling `f` for
    /// each piece in order. Bytes past the image end form one last piece
    /// with no object.
    pub fn split(&self, offset: u64, length: u64, f: impl FnMut(Piece)) {
        self.split_from(None, offset, length, f);
    }

    /// [`MapIndex::split`], given `first_ending_after(offset)` if known.
    #[inline(always)]
    pub(crate) fn split_from(
        &self,
        first: Option<usize>,
        offset: u64,
        length: u64,
        mut f: impl FnMut(Piece),
    ) {
        let end = offset.saturating_add(length);
        let past = offset.max(self.image_size);
        let mut pos = offset;
        let mut in_image = pos < end && pos < self.image_size;
        let mut i = if in_image {
            first.unwrap_or_else(|| self.first_ending_after(pos))
        } else {
            0
        };
        let mut past_told = false;
        // One call of `f`, so that it can be inlined here.
        loop {
            let piece = if in_image && pos < end && pos < self.image_size {
                // Segments tile the image; a gap (hand-edited map) is skipped.
                let Some(seg) = self.segments.get(i) else {
                    in_image = false;
                    continue;
                };
                if seg.start > pos {
                    pos = seg.start.min(end);
                    continue;
                }
                let piece_end = seg.end.min(end);
                let piece = Piece {
                    object: Some(seg.owner),
                    kind: seg.kind,
                    disk_offset: pos,
                    length: piece_end - pos,
                };
                pos = piece_end;
                i += 1;
                piece
            } else {
                // Bytes past the image's end, if any, are one last piece.
                if past_told || end <= past {
                    break;
                }
                past_told = true;
                Piece {
                    object: None,
                    kind: None,
                    disk_offset: past,
                    length: end - past,
                }
            };
            f(piece);
        }
    }
}

impl packed::Segments for Vec<Segment> {
    fn reserve(&mut self, at_most: usize) {
        // Room made at once: growing would copy the segments read so far,
        // again and again.
        Vec::reserve(self, at_most);
    }

    fn push(&mut self, start: u64, end: u64, owner: u32) {
        Vec::push(
            self,
            Segment {
                start,
                end,
                owner,
                kind: None,
            },
        );
    }
}

/// The groups bytes are counted in for the summary, in report order.
pub const GROUPS: [&str; 12] = [
    "file data",
    "directories",
    "inode tables",
    "bitmaps",
    "journal",
    "free space",
    "extent and indirect blocks",
    "other filesystem metadata",
    "unknown (allocated, unclaimed)",
    "partition tables",
    "unmapped (no filesystem object)",
    "beyond the end of the image",
];

/// Index into [`GROUPS`] of the group a kind's bytes count in.
pub fn kind_group(kind: Option<Kind>) -> usize {
    match kind {
        Some(Kind::File | Kind::Symlink) => 0,
        Some(Kind::Directory) => 1,
        Some(Kind::InodeTable) => 2,
        Some(Kind::BlockBitmap | Kind::InodeBitmap) => 3,
        Some(Kind::Journal) => 4,
        Some(Kind::Free) => 5,
        Some(Kind::ExtentBlock | Kind::IndirectBlock) => 6,
        Some(
            Kind::Superblock
            | Kind::SuperblockBackup
            | Kind::GroupDescriptors
            | Kind::ReservedGdt
            | Kind::BootBlock
            | Kind::Mmp
            | Kind::XattrBlock
            | Kind::SpecialInode,
        ) => 7,
        Some(Kind::Unknown) => 8,
        Some(Kind::Mbr | Kind::Ebr | Kind::GptHeader | Kind::GptEntries) => 9,
        Some(Kind::Partition | Kind::Filesystem | Kind::Unpartitioned | Kind::Disk) => 10,
        None => 11,
    }
}

/// Per-object numbers of the objects a trace touched, in first-access
/// order.
///
/// The numbers are packed in the order objects are first touched, found
/// through a table of 4 bytes per object of the map: on the virtual
/// machines bmap runs in, each fresh page of memory costs a fault that
/// takes microseconds, so a trace touching part of a map pays for what it
/// touched, not for 64 bytes per object of the map; and objects touched
/// about the same time sit side by side.
#[derive(Debug, Default)]
pub struct Touched {
    /// Indexed by `objects.id`: where the object's numbers are (see
    /// [`Place`]), 0 for one not touched.
    slots: Vec<u32>,
    /// The same for owners beyond `slots` (ids the map's object table
    /// lacks, in hand-edited maps): too sparse to index by id.
    far: std::collections::HashMap<u32, u32>,
    stats: Vec<ObjectStats>,
    /// Another table's numbers, taken over whole by [`Touched::add_numbers`]
    /// rather than copied (copies would be fresh pages).
    extra: Vec<ObjectStats>,
    /// Objects in order of first access, and their first sequence numbers:
    /// tables are joined by walking these, not by looking objects up. A
    /// sum of tables keeps the order only.
    order: Vec<u32>,
    firsts: Vec<u64>,
}

/// Objects between the stages of [`Touched::add_numbers`]' pipeline.
const ADD_STAGE: usize = 8;

/// Objects whose numbers a table makes room for at once (64 MiB of address
/// space): more are made room for as they come.
const RESERVED_OBJECTS: usize = 1 << 20;

/// A slot: 1 + the index in `stats`, or [`EXTRA`] + 1 + the index in
/// `extra`.
const EXTRA: u32 = 1 << 31;

/// Where an object's numbers are.
#[derive(Clone, Copy)]
enum Place {
    Stats(usize),
    Extra(usize),
}

impl Place {
    fn of(slot: u32) -> Option<Place> {
        let i = (slot & !EXTRA).checked_sub(1)? as usize;
        Some(if slot & EXTRA == 0 {
            Place::Stats(i)
        } else {
            Place::Extra(i)
        })
    }
}

impl Touched {
    fn with_objects(n: usize) -> Self {
        // Room for every object's numbers is only address space until
        // written; growing the tables instead remaps them, and each remap
        // holds up every thread's page faults (measured: several ms a run
        // on a virtual machine).
        let room = n.min(RESERVED_OBJECTS);
        Touched {
            slots: vec![0; n],
            stats: Vec::with_capacity(room),
            order: Vec::with_capacity(room),
            firsts: Vec::with_capacity(room),
            ..Touched::default()
        }
    }

    fn slot_mut(&mut self, o: u32) -> &mut u32 {
        match self.slots.get_mut(o as usize) {
            Some(s) => s,
            None => self.far.entry(o).or_default(),
        }
    }

    fn at(&self, place: Place) -> Option<&ObjectStats> {
        match place {
            Place::Stats(i) => self.stats.get(i),
            Place::Extra(i) => self.extra.get(i),
        }
    }

    /// Object `o`'s numbers, made (first touched by request `seq`, at
    /// `time`) if it was not touched before; `None` only past 2^31
    /// objects.
    #[inline]
    fn entry(&mut self, o: u32, seq: u64, time: Option<f64>) -> Option<&mut ObjectStats> {
        let (slot, made) = self.slot_made(o, seq, time)?;
        if made {
            self.order.push(o);
            self.firsts.push(seq);
        }
        self.at_mut(Place::of(slot)?)
    }

    /// Starts fetching object `o`'s slot.
    #[inline]
    pub(crate) fn prefetch_slot(&self, o: u32) {
        if let Some(s) = self.slots.get(o as usize) {
            prefetch(s);
        }
    }

    /// Starts fetching object `o`'s numbers, if it has any (its slot is
    /// best fetched first, see [`Touched::prefetch_slot`]).
    #[inline]
    pub(crate) fn prefetch_numbers(&self, o: u32) {
        if let Some(st) = Place::of(self.slot_of(o)).and_then(|p| self.at(p)) {
            prefetch(st);
        }
    }

    /// Object `o`'s slot (see [`Place`]), 0 for one not touched.
    fn slot_of(&self, o: u32) -> u32 {
        match self.slots.get(o as usize) {
            Some(&s) => s,
            None => self.far.get(&o).copied().unwrap_or(0),
        }
    }

    /// Requests so far on the object with slot `slot`.
    fn requests_at(&self, slot: u32) -> u64 {
        Place::of(slot)
            .and_then(|p| self.at(p))
            .map_or(0, |s| s.requests)
    }

    fn get(&self, o: u32) -> Option<&ObjectStats> {
        self.at(Place::of(self.slot_of(o))?)
    }

    /// Object `o`'s slot, made (first touched by request `seq`, at
    /// `time`) if it was not touched before, without noting it in the
    /// first-access order; and whether it was made. `None` only past
    /// 2^31 objects.
    #[inline]
    fn slot_made(&mut self, o: u32, seq: u64, time: Option<f64>) -> Option<(u32, bool)> {
        let slot = *self.slot_mut(o);
        if slot != 0 {
            return Some((slot, false));
        }
        let slot = u32::try_from(self.stats.len() + 1)
            .ok()
            .filter(|&n| n < EXTRA)?;
        *self.slot_mut(o) = slot;
        self.stats.push(ObjectStats {
            first_seq: seq,
            first_time: time.unwrap_or(f64::NAN),
            ..ObjectStats::default()
        });
        Some((slot, true))
    }

    fn at_mut(&mut self, place: Place) -> Option<&mut ObjectStats> {
        match place {
            Place::Stats(i) => self.stats.get_mut(i),
            Place::Extra(i) => self.extra.get_mut(i),
        }
    }

    /// Adds up `tables`, as if one table had seen the requests of all in
    /// order of their sequence numbers (no request is in two). Tables
    /// after the first must not have absorbed a table themselves.
    ///
    /// This is the serial end of a parallel count, so its two halves run
    /// side by side: the first-access orders are merged on one thread
    /// while the numbers are added on this one.
    fn sum(tables: Vec<Touched>) -> Touched {
        let mut tables = tables.into_iter();
        let Some(mut total) = tables.next() else {
            return Touched::default();
        };
        let mut rest: Vec<Touched> = tables.collect();
        if rest.is_empty() {
            return total;
        }
        let ids = rest
            .iter()
            .map(|t| t.slots.len())
            .fold(total.slots.len(), usize::max);
        let orders: Vec<(Vec<u32>, Vec<u64>)> = std::iter::once(&mut total)
            .chain(&mut rest)
            .map(|t| (std::mem::take(&mut t.order), std::mem::take(&mut t.firsts)))
            .collect();
        let order = std::thread::scope(|scope| {
            let merging = scope.spawn(|| merge_orders(&orders, ids));
            for (other, (order, _)) in rest.into_iter().zip(&orders[1..]) {
                total.add_numbers(other, order);
            }
            match merging.join() {
                Ok(merged) => merged,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        });
        // The merged first numbers are the objects' own (`first_seq`),
        // so none are kept beside the order: another table of them would
        // be megabytes of fresh memory, never read.
        total.order = order;
        total
    }

    /// Adds in `other`'s numbers, whose objects in first-access order are
    /// `order`, where this table keeps them: in place for objects in both,
    /// and for the others where `other` keeps them, taken over whole if
    /// this table has no such second table yet. The first-access order is
    /// [`merge_orders`]'s to make.
    fn add_numbers(&mut self, mut other: Touched, order: &[u32]) {
        let take_over = self.extra.is_empty() && other.extra.is_empty();
        // Each object of `other` is two cache misses here, its slot and the
        // numbers it points to: fetched in a pipeline (as in
        // `fused::attribute`), the slot of the object `2 * ADD_STAGE`
        // ahead of the one added, the numbers of the one `ADD_STAGE` ahead.
        for t in 0..order.len() + 2 * ADD_STAGE {
            if let Some(&o) = order.get(t) {
                self.prefetch_slot(o);
            }
            let at = |stage: usize| t.checked_sub(stage * ADD_STAGE);
            if let Some(&o) = at(1).and_then(|j| order.get(j)) {
                self.prefetch_numbers(o);
            }
            let Some((i, &o)) = at(2).and_then(|i| Some((i, order.get(i)?))) else {
                continue;
            };
            let Some(theirs) = other.stats.get_mut(i) else {
                continue;
            };
            let into = match Place::of(self.slot_of(o)) {
                Some(Place::Stats(j)) => self.stats.get_mut(j),
                Some(Place::Extra(j)) => self.extra.get_mut(j),
                None if take_over => {
                    // Indices of `other.stats` are below 2^31, as its
                    // slots were.
                    *self.slot_mut(o) = EXTRA | (i as u32 + 1);
                    continue;
                }
                None => self
                    .slot_made(o, theirs.first_seq, theirs.first_time())
                    .and_then(|(slot, _)| self.at_mut(Place::of(slot)?)),
            };
            let Some(into) = into else { continue };
            if theirs.first_seq < into.first_seq {
                into.first_seq = theirs.first_seq;
                into.first_time = theirs.first_time;
            }
            into.requests += theirs.requests;
            into.bytes_read += theirs.bytes_read;
            into.bytes_written += theirs.bytes_written;
            into.coverage.absorb(&theirs.coverage);
        }
        if take_over {
            self.extra = other.stats;
        }
    }

    /// Objects in order of first access.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &ObjectStats)> {
        self.order.iter().filter_map(|&o| Some((o, self.get(o)?)))
    }
}

/// The first-access orders `orders` (objects and their first sequence
/// numbers, each by first access) made one: the objects in order of their
/// earliest first access. `ids` bounds the object ids a bitmap
/// tells apart; others go to a hash set.
fn merge_orders(orders: &[(Vec<u32>, Vec<u64>)], ids: usize) -> Vec<u32> {
    let mut seen = vec![0u64; ids.div_ceil(64)];
    let mut seen_far = std::collections::HashSet::new();
    let mut first_time = |o: u32| match seen.get_mut(o as usize / 64) {
        Some(word) => {
            let bit = 1u64 << (o % 64);
            let new = *word & bit == 0;
            *word |= bit;
            new
        }
        None => seen_far.insert(o),
    };
    let total = orders.iter().map(|(o, _)| o.len()).sum();
    let mut order = Vec::with_capacity(total);
    // Entries are pairs of an object and its number: a table's extra
    // objects or numbers are none.
    let lens: Vec<usize> = orders.iter().map(|(o, f)| o.len().min(f.len())).collect();
    let mut heads = vec![0usize; orders.len()];
    loop {
        // The earliest head, on a tie (one request first touching objects
        // of two tables cannot happen, as no request is in two) the first
        // table's; and the earliest of the other tables' heads. A worker's
        // table comes in runs of a chunk's requests: the picked table's
        // entries go in one after another while they come before that.
        let mut next: Option<(usize, u64)> = None;
        let mut limit = u64::MAX;
        for (t, ((_, f), &h)) in orders.iter().zip(&heads).enumerate() {
            let Some(&at) = f.get(h).filter(|_| h < lens[t]) else {
                continue;
            };
            match next {
                Some((_, best)) if at >= best => limit = limit.min(at),
                _ => {
                    if let Some((_, best)) = next {
                        limit = limit.min(best);
                    }
                    next = Some((t, at));
                }
            }
        }
        let Some((t, _)) = next else { break };
        let (objects, at) = &orders[t];
        let start = heads[t];
        let mut h = start;
        while h < lens[t] && (h == start || at[h] < limit) {
            if first_time(objects[h]) {
                order.push(objects[h]);
            }
            h += 1;
        }
        heads[t] = h;
    }
    order
}

/// Byte ranges already read from one object, merged, to tell first reads
/// from re-reads. The last range (the highest) is kept inline, the ones
/// before it in a list made only when there are any: most reads of an
/// object are of its last range or just past it (a sequential sweep, a
/// directory block read again), and those never touch the list, which is
/// two more cache misses away (measured on the bench's 1M trace: of
/// 686,000 reads of objects with a list, 538,000 overlapped its last
/// range).
#[derive(Debug, Default, Clone)]
pub struct Coverage {
    /// The last range (empty when `start == end`: nothing read yet).
    last: (u64, u64),
    /// The ranges before `last`, each ending before the next starts, the
    /// last of them before `last` does. Boxed: a pointer here, not a
    /// whole `Vec`, keeps every object's numbers in one cache line.
    #[allow(clippy::box_collection)]
    before: Option<Box<Vec<(u64, u64)>>>,
}

impl Coverage {
    /// Adds `[start, end)`; returns how many of its bytes were new.
    pub fn add(&mut self, start: u64, end: u64) -> u64 {
        if start >= end {
            return 0;
        }
        let (s, e) = self.last;
        if s == e {
            self.last = (start, end);
            return end - start;
        }
        if start >= s {
            // Nothing before `last` is reached: ranges there end before
            // `s`.
            if start <= e {
                self.last.1 = e.max(end);
                return end.saturating_sub(e);
            }
            // Past a gap: `last` joins the ones before.
            self.before.get_or_insert_default().push(self.last);
            self.last = (start, end);
            return end - start;
        }
        // Before `last`: merged in the list, whose last range is then the
        // last one.
        let ranges = self.before.get_or_insert_default();
        ranges.push(self.last);
        let new = add_range(ranges, start, end);
        if let Some(l) = ranges.pop() {
            self.last = l;
        }
        new
    }

    /// Adds every range of `other`.
    fn absorb(&mut self, other: &Coverage) {
        for &(s, e) in other.before.iter().flat_map(|b| b.iter()) {
            self.add(s, e);
        }
        self.add(other.last.0, other.last.1);
    }

    pub fn bytes(&self) -> u64 {
        let before: u64 = self
            .before
            .iter()
            .flat_map(|b| b.iter())
            .map(|(s, e)| e - s)
            .sum();
        before + (self.last.1 - self.last.0)
    }
}

/// Adds `[start, end)` to sorted, merged `ranges`; returns how many of its
/// bytes were new.
fn add_range(ranges: &mut Vec<(u64, u64)>, start: u64, end: u64) -> u64 {
    if let Some(last) = ranges.last_mut() {
        if start >= last.1 {
            if start == last.1 {
                last.1 = end;
            } else {
                ranges.push((start, end));
            }
            return end - start;
        }
    }
    // General case: merge with every overlapping or touching range.
    let i = ranges.partition_point(|r| r.1 < start);
    let mut j = i;
    let mut new_start = start;
    let mut new_end = end;
    let mut covered = 0;
    while j < ranges.len() && ranges[j].0 <= end {
        let (s, e) = ranges[j];
        covered += e.min(end).saturating_sub(s.max(start));
        new_start = new_start.min(s);
        new_end = new_end.max(e);
        j += 1;
    }
    // Mostly one range grows or one is added: no splice for those.
    match j - i {
        0 => ranges.insert(i, (new_start, new_end)),
        1 => ranges[i] = (new_start, new_end),
        _ => {
            ranges[i] = (new_start, new_end);
            ranges.drain(i + 1..j);
        }
    }
    (end - start) - covered
}

// One cache line per object: updating an object's numbers is one miss.
const _: () = assert!(std::mem::size_of::<ObjectStats>() == 64);

impl ObjectStats {
    /// Time of the first access, if the trace has times.
    pub fn first_time(&self) -> Option<f64> {
        (!self.first_time.is_nan()).then_some(self.first_time)
    }
}

/// Per-object numbers for the summary. Bytes read again are
/// `bytes_read - coverage.bytes()`: the coverage is the union of reads.
#[derive(Debug, Clone, Default)]
#[repr(align(64))]
pub struct ObjectStats {
    pub first_seq: u64,
    /// NaN for none (no parser yields a NaN time): a plain `f64` keeps
    /// the numbers to one cache line.
    first_time: f64,
    pub requests: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub coverage: Coverage,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index() -> MapIndex {
        let seg = |start, end, owner| Segment {
            start,
            end,
            owner,
            kind: None,
        };
        MapIndex::from_parts(
            100,
            vec![seg(0, 10, 1), seg(10, 40, 2), seg(40, 100, 3)],
            Vec::new(),
        )
    }

    #[test]
    fn split_walks_segments_and_reports_bytes_past_the_end() {
        let mut got = Vec::new();
        index().split(5, 200, |p| got.push((p.object, p.disk_offset, p.length)));
        assert_eq!(
            got,
            vec![
                (Some(1), 5, 5),
                (Some(2), 10, 30),
                (Some(3), 40, 60),
                (None, 100, 105)
            ]
        );
        let mut past = Vec::new();
        index().split(150, 10, |p| past.push((p.object, p.disk_offset, p.length)));
        assert_eq!(past, vec![(None, 150, 10)]);
        let mut overflow = Vec::new();
        index().split(u64::MAX - 5, 100, |p| overflow.push(p.length));
        assert_eq!(overflow, vec![5]);
    }

    /// What [`merge_orders`] makes, by sorting: every entry that has both
    /// an object and a number, by number, then table, then place (each
    /// table's numbers never decrease), the first of each object kept.
    fn merge_by_sorting(orders: &[(Vec<u32>, Vec<u64>)]) -> Vec<u32> {
        let mut all: Vec<(u64, usize, usize, u32)> = Vec::new();
        for (t, (objects, at)) in orders.iter().enumerate() {
            for (h, (&o, &first)) in objects.iter().zip(at).enumerate() {
                all.push((first, t, h, o));
            }
        }
        all.sort_unstable();
        let mut seen = std::collections::HashSet::new();
        all.into_iter()
            .filter(|&(_, _, _, o)| seen.insert(o))
            .map(|(_, _, _, o)| o)
            .collect()
    }

    /// Merged in runs, the first-access orders come out as sorting them
    /// gives: tables of runs long and short, ties between and within
    /// tables, objects in several tables and past the bitmap, a table
    /// whose objects and numbers differ in length.
    #[test]
    fn orders_merge_in_runs_as_sorting_them() {
        let mut rng = crate::test_rng::XorShift(0x9e37_79b9_7f4a_7c15);
        for case in 0..3000 {
            let tables = 1 + (rng.next() % 4) as usize;
            let ids = 1 + (rng.next() % 200) as usize;
            let mut orders = Vec::new();
            let mut at = 0u64;
            let runs = (rng.next() % 8) as usize;
            let mut made: Vec<(Vec<u32>, Vec<u64>)> = vec![(Vec::new(), Vec::new()); tables];
            for _ in 0..runs * tables {
                let t = (rng.next() % tables as u64) as usize;
                for _ in 0..(rng.next() % 40) {
                    // Now and then the same number as another table's.
                    at += rng.next() % 3;
                    made[t].0.push((rng.next() % (ids as u64 + 20)) as u32);
                    made[t].1.push(at);
                }
            }
            for (mut o, mut f) in made {
                if case % 50 == 0 {
                    // A table out of step with itself.
                    if rng.next().is_multiple_of(2) {
                        o.pop();
                    } else {
                        f.pop();
                    }
                }
                orders.push((o, f));
            }
            assert_eq!(
                merge_orders(&orders, ids),
                merge_by_sorting(&orders),
                "case {case}"
            );
        }
    }

    /// The summary's lines of a map of more files than several blocks
    /// of lines hold, touched out of id order, are written by the
    /// writer and its helpers (pinned apart) in the order one thread
    /// makes them.
    #[test]
    fn summary_lines_keep_their_order_across_blocks_and_threads() {
        use crate::replay::objects::{Row, Span};
        let n = 3 * LINES_BLOCK + 100;
        let mut strings = String::new();
        let mut rows = vec![Row::default()];
        let mut kinds = vec![Kind::default()];
        let mut segments = Vec::new();
        for i in 1..=n {
            let at = strings.len();
            let name = format!("/dev/sda /d/f{i}");
            strings += &name;
            let span = |from: usize, to: usize| Span::new(at + from, at + to);
            let (device, path) = (span(0, 8), span(9, name.len()));
            let whole = span(0, name.len()).unwrap_or_default();
            rows.push(Row::new(
                Kind::File,
                Some(1),
                Some(4096),
                whole,
                device,
                path,
            ));
            kinds.push(Kind::File);
            let start = i as u64 * 4096;
            segments.push(Segment {
                start,
                end: start + 4096,
                owner: i as u32,
                kind: Some(Kind::File),
            });
        }
        let index = MapIndex::from_parts((n as u64 + 1) * 4096, segments, kinds);
        let _ = index.objects.set(ObjectTable::from_parts(strings, rows));
        let mut tally = Tally::new(&index, true);
        // Every file read once, in an order far from the ids' (7919 is a
        // prime that does not divide `n`), some of them twice.
        for (j, seq) in (0..n + n / 3).zip(1u64..) {
            let id = (j * 7919) % n + 1;
            let time = Some(seq as f64 / 1000.0);
            let (offset, length) = (id as u64 * 4096 + (j % 3) as u64 * 512, 2048);
            assert!(tally.request(seq, time, Op::Read, length, false));
            let mut last = None;
            index.split(offset, length, |p| {
                tally.piece(seq, time, Op::Read, &p, &mut last);
            });
        }
        let touched = &tally.touched;
        assert_eq!(touched.order.len(), n);
        let mut one_thread = Vec::new();
        file_lines(
            &mut one_thread,
            &index,
            touched,
            &touched.order,
            Some(0.001),
        );
        let mut written = Vec::new();
        write_file_lines(&mut written, &index, touched, Some(0.001)).unwrap();
        assert_eq!(one_thread.iter().filter(|&&b| b == b'\n').count(), n);
        assert!(written == one_thread, "lines out of order");
    }

    #[test]
    fn digits_are_eight_bytes_of_ascii() {
        let mut rng = crate::test_rng::XorShift(0x1234_5678_9abc_def1);
        let check = |n: u32| {
            let (w, digits) = blanked(n);
            assert_eq!(w.to_le_bytes(), *format!("{n:>8}").as_bytes(), "{n}");
            assert_eq!(digits, n.to_string().len());
            let d = digit_bytes(n) + 0x30 * ONES;
            assert_eq!(d.to_le_bytes(), *format!("{n:08}").as_bytes(), "{n}");
        };
        for n in (0..200_000).chain(99_800_000..100_000_000) {
            check(n);
        }
        for _ in 0..1_000_000 {
            check((rng.next() % 100_000_000) as u32);
        }
    }

    /// The summary's quick line writer writes what the general one does,
    /// or leaves the line to it.
    #[test]
    fn fast_heads_match_slow_ones() {
        let mut rng = crate::test_rng::XorShift(0x2545_f491_4f6c_dd1d);
        let mut next = move || rng.next();
        let (mut fast, mut slow) = (0, 0);
        for i in 0..100_000 {
            let r = next();
            // Small numbers mostly, wide ones sometimes, to take both ways.
            let big = i % 10 == 0;
            let mut num = |max: u64| if big { next() } else { next() % max };
            let size = num(1 << 30);
            let read = num(1 << 34);
            let unique = read.min(num(1 << 34));
            let row = FileRow {
                first_seq: num(100_000_000),
                first_time: (r % 5 != 0).then(|| (num(1 << 33) as f64) / 1e6 + 1.7e9),
                kind: "file",
                device: Some("/dev/sda"),
                partition: None,
                path: "/a",
                size: Some(size),
                requests: num(1000),
                bytes_read: read,
                unique_bytes_read: unique,
                percent_read: (r % 7 != 0 && size > 0)
                    .then(|| (unique.min(size) as f64) * 100.0 / size as f64),
                reread_bytes: read - unique,
                bytes_written: 0,
            };
            let first = (r % 3 != 0).then_some(1.7e9);
            let row = LineNumbers {
                first_seq: row.first_seq,
                first_time: row.first_time,
                requests: row.requests,
                bytes_read: row.bytes_read,
                percent_read: row.percent_read,
                reread_bytes: row.reread_bytes,
            };
            let mut want = Vec::new();
            slow_head(&mut want, &row, first);
            let mut line: Head = [b' '; 64];
            match fast_head(&mut line, &row, first) {
                Some(()) => {
                    fast += 1;
                    assert_eq!(
                        String::from_utf8_lossy(&line),
                        String::from_utf8_lossy(&want),
                        "{row:?}"
                    );
                }
                None => slow += 1,
            }
        }
        assert!(fast > 50_000 && slow > 1000, "{fast} {slow}");
        // Each number at the edges of its column and of its units.
        let edges = [
            0,
            1,
            9,
            10,
            1023,
            1024,
            1279,
            1280,
            1281,
            99_999_999,
            100_000_000,
        ];
        for (i, &n) in edges.iter().enumerate() {
            for (j, &m) in edges.iter().enumerate() {
                let row = LineNumbers {
                    first_seq: n,
                    first_time: Some(1.7e9 + [0.0, 9_999.999_999, 10_000.0, 0.000_000_5][i % 4]),
                    requests: m,
                    bytes_read: n * 1024 + m,
                    percent_read: [None, Some(100.0), Some(0.05), Some(99.95)][j % 4],
                    reread_bytes: m.min(n * 1024 + m),
                };
                let mut want = Vec::new();
                slow_head(&mut want, &row, Some(1.7e9));
                let mut line: Head = [b' '; 64];
                if fast_head(&mut line, &row, Some(1.7e9)).is_some() {
                    assert_eq!(line.as_slice(), want.as_slice(), "{row:?}");
                }
            }
        }
    }

    #[test]
    fn coverage_counts_new_bytes() {
        let mut c = Coverage::default();
        assert_eq!(c.add(0, 10), 10);
        assert_eq!(c.add(10, 20), 10);
        assert_eq!(c.add(5, 15), 0);
        assert_eq!(c.add(30, 40), 10);
        assert_eq!(c.add(25, 35), 5);
        assert_eq!(c.add(0, 50), 15);
        assert_eq!(c.bytes(), 50);
    }

    /// New bytes and the covered total agree with a byte-by-byte model,
    /// over random ranges that touch, overlap, swallow and fall between
    /// one another; tables added up agree with one that saw every range.
    #[test]
    fn coverage_agrees_with_a_byte_model() {
        let mut rng = crate::test_rng::XorShift(0x2545_f491_4f6c_dd1d);
        let mut next = move |n: u64| rng.next() % n;
        for _ in 0..300 {
            let (mut c, mut half, mut model) =
                (Coverage::default(), Coverage::default(), vec![false; 600]);
            for k in 0..next(60) + 1 {
                let start = next(590);
                let longest = if next(4) == 0 { 200 } else { 12 };
                let end = (start + 1 + next(longest)).min(600);
                let new = (start..end).filter(|&b| !model[b as usize]).count() as u64;
                for b in start..end {
                    model[b as usize] = true;
                }
                assert_eq!(c.add(start, end), new, "adding {start}..{end}");
                if k % 2 == 0 {
                    half.add(start, end);
                }
            }
            let total = model.iter().filter(|&&b| b).count() as u64;
            assert_eq!(c.bytes(), total);
            if let Some(r) = &c.before {
                let mut all = r.to_vec();
                all.push(c.last);
                assert!(all.windows(2).all(|w| w[0].1 < w[1].0), "{all:?}");
            }
            half.absorb(&c);
            assert_eq!(half.bytes(), total);
        }
    }
}

/// Which report `bmap replay` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// virt-bmap's log: one line each time the object changes.
    Log,
    /// Files in order of first access, bytes per kind, free-space reads.
    Summary,
    /// Paths in first-access order, for readahead tools.
    BootList,
}

/// How the report is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Text,
    /// Log: one JSON object per line; summary and boot list: one document.
    Json,
    Csv,
}

/// What can stop a replay.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Trace(#[from] crate::trace::TraceError),
    #[error("writing output: {0}")]
    Output(#[from] std::io::Error),
    #[error(transparent)]
    Map(#[from] crate::error::Error),
    #[error("{0}")]
    Csv(#[from] csv::Error),
    #[error("more than {0} unreadable lines; is this the right --format?")]
    TooManyBadLines(u64),
}

/// Lines the replay could not use, and other oddities; the first few are
/// kept for the report, all are counted.
#[derive(Debug, Default)]
pub struct Warnings {
    pub count: u64,
    pub first: Vec<String>,
}

impl Warnings {
    const KEEP: usize = 20;

    /// Notes an event that is not a request: a warning of the parser, or
    /// a disk size that is not the map's.
    pub(crate) fn note(&mut self, index: &MapIndex, event: crate::trace::Event) {
        use crate::trace::Event;
        match event {
            Event::Request(_) => {}
            Event::DiskSize { line, size } => {
                if size != index.image_size {
                    self.push(format!(
                        "line {line}: the traced disk has {size} bytes but the map's image has {}; is this the right map?",
                        index.image_size
                    ));
                }
            }
            Event::Warning { line, message } => self.push(format!("line {line}: {message}")),
        }
    }

    pub fn push(&mut self, message: String) {
        self.count += 1;
        if self.first.len() < Self::KEEP {
            self.first.push(message);
        }
    }
}

/// A trace with more bad lines than this is not of the format we think.
pub const MAX_BAD_LINES: u64 = 10_000;

/// Totals that every view reports.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Totals {
    pub requests: u64,
    pub reads: u64,
    pub writes: u64,
    pub other: u64,
    pub failed: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub first_time: Option<f64>,
    pub last_time: Option<f64>,
}

/// Options of one replay run.
pub struct ReplayOptions<'a> {
    pub view: View,
    pub output: OutputFormat,
    pub verbose: bool,
    pub trace_name: &'a str,
    pub format: crate::trace::Format,
    pub conn: &'a Connection,
}

/// The result of a run, for the exit status.
#[derive(Debug, Default)]
pub struct Outcome {
    pub totals: Totals,
    pub warnings: Warnings,
}

/// Replays `events` against `index`, writing the chosen view to `out`
/// and, with `store`, the trace into the map.
pub fn run(
    index: &MapIndex,
    events: impl Iterator<Item = Result<crate::trace::Event, crate::trace::TraceError>>,
    opts: &ReplayOptions<'_>,
    out: &mut dyn std::io::Write,
    mut trace_store: Option<&mut crate::store::TraceStore>,
) -> Result<Outcome, ReplayError> {
    use crate::trace::Event;
    let mut outcome = Outcome::default();
    let mut log = LogState::new(opts, out)?;
    let mut bad_lines = 0u64;
    let mut seq = 0u64;
    // The streaming log keeps nothing per object, so its memory stays flat.
    let keep_stats = opts.view != View::Log || trace_store.is_some();
    let mut tally = Tally::new(index, keep_stats);
    let mut events = events;
    let mut batch = Vec::with_capacity(WARM_AHEAD);
    loop {
        batch.extend(events.by_ref().take(WARM_AHEAD));
        if batch.is_empty() {
            break;
        }
        let mut at = [None; WARM_AHEAD];
        for (e, at) in batch.iter().zip(&mut at) {
            if let Ok(crate::trace::Event::Request(r)) = e {
                *at = Some(r.offset);
            }
        }
        let firsts = warm(index, &tally.touched, &at);
        for (event, first) in batch.drain(..).zip(firsts) {
            let event = match event {
                Ok(e) => e,
                Err(e) if e.is_fatal() => return Err(e.into()),
                Err(e) => {
                    bad_lines += 1;
                    outcome.warnings.push(e.to_string());
                    if bad_lines > MAX_BAD_LINES {
                        return Err(ReplayError::TooManyBadLines(MAX_BAD_LINES));
                    }
                    continue;
                }
            };
            let r = match event {
                Event::Request(r) => r,
                other => {
                    outcome.warnings.note(index, other);
                    continue;
                }
            };
            seq += 1;
            // SQLite integers are signed: a request reaching past 2^63 cannot
            // be stored faithfully (it is past any real image anyway).
            let storable = i64::try_from(r.offset.saturating_add(r.length)).is_ok();
            if trace_store.is_some() && !storable {
                outcome.warnings.push(format!(
                    "line {}: offset 0x{:x}+{} does not fit a signed 64-bit integer; not stored",
                    r.line, r.offset, r.length
                ));
            }
            let mut store = trace_store.as_deref_mut().filter(|_| storable);
            let moves_data = tally.request(seq, r.time, r.op, r.length, r.failed.is_some());
            if let Some(err) = &r.failed {
                if let Some(s) = store.as_mut() {
                    s.request(seq, r.time, r.op.as_str(), r.offset, r.length, Some(err))?;
                }
                log.failed(seq, &r, err)?;
                continue;
            }
            if let Some(s) = store.as_mut() {
                s.request(seq, r.time, r.op.as_str(), r.offset, r.length, None)?;
            }
            if !moves_data {
                continue;
            }
            let mut result: Result<(), ReplayError> = Ok(());
            let mut last_object = None;
            index.split_from(first, r.offset, r.length, |p| {
                if result.is_err() {
                    return;
                }
                let new_bytes = tally.piece(seq, r.time, r.op, &p, &mut last_object);
                if let Some(s) = store.as_mut() {
                    if let Err(e) = s.piece(seq, p.object, p.length, new_bytes) {
                        result = Err(e.into());
                        return;
                    }
                }
                if let Err(e) = log.piece(index, seq, &r, &p) {
                    result = Err(e);
                }
            });
            result?;
        }
    }
    log.finish()?;
    let out = log.into_out()?;
    outcome.totals = tally.totals.clone();
    write_view(index, opts, out, &outcome, &tally)?;
    Ok(outcome)
}

/// Writes the summary or the boot list (the log is written as it goes).
pub fn write_view(
    index: &MapIndex,
    opts: &ReplayOptions<'_>,
    out: &mut dyn std::io::Write,
    outcome: &Outcome,
    tally: &Tally,
) -> Result<(), ReplayError> {
    if opts.view != View::Log {
        index.objects()?;
    }
    match opts.view {
        View::Log => {}
        View::Summary => write_summary(
            index,
            opts,
            out,
            outcome,
            &tally.touched,
            &tally.kind_bytes,
            &tally.free_reads,
        )?,
        View::BootList => write_boot_list(index, opts, out, &tally.touched)?,
    }
    Ok(())
}

/// What the views count, request by request: the totals, bytes per kind
/// and per object, reads of free space. A replay of one thread has one;
/// the parallel replay has one per worker, added up at the end.
pub struct Tally {
    pub(crate) totals: Totals,
    pub(crate) kind_bytes: [(u64, u64); GROUPS.len()],
    pub(crate) free_reads: FreeReads,
    pub(crate) touched: Touched,
    keep_stats: bool,
    /// The sequence numbers of the first and last requests with a time:
    /// `totals.first_time` and `last_time` are theirs.
    first_timed: u64,
    last_timed: u64,
}

impl Tally {
    pub(crate) fn new(index: &MapIndex, keep_stats: bool) -> Self {
        Tally::with_objects(
            if keep_stats { index.object_count() } else { 0 },
            keep_stats,
        )
    }

    /// A tally whose objects' numbers are kept in a hash table: for one
    /// that sees few requests.
    pub(crate) fn sparse() -> Self {
        Tally::with_objects(0, true)
    }

    fn with_objects(n: usize, keep_stats: bool) -> Self {
        Tally {
            totals: Totals::default(),
            kind_bytes: [(0, 0); GROUPS.len()],
            free_reads: FreeReads::default(),
            touched: Touched::with_objects(n),
            keep_stats,
            first_timed: 0,
            last_timed: 0,
        }
    }

    /// Counts request `seq` in the totals: whether its bytes are to be
    /// attributed, piece by piece (it did not fail, and moves data).
    #[inline]
    pub(crate) fn request(
        &mut self,
        seq: u64,
        time: Option<f64>,
        op: Op,
        length: u64,
        failed: bool,
    ) -> bool {
        let t = &mut self.totals;
        t.requests += 1;
        if time.is_some() {
            if t.first_time.is_none() {
                t.first_time = time;
                self.first_timed = seq;
            }
            t.last_time = time;
            self.last_timed = seq;
        }
        if failed {
            t.failed += 1;
            return false;
        }
        match op {
            Op::Read => {
                t.reads += 1;
                t.bytes_read += length;
            }
            Op::Write | Op::Zero | Op::Trim => {
                t.writes += 1;
                t.bytes_written += length;
            }
            _ => t.other += 1,
        }
        matches!(op, Op::Read | Op::Write | Op::Zero | Op::Trim)
    }

    /// Counts piece `p` of request `seq`; `last_object` is the object of
    /// the request's piece before (`None` for its first). Returns how many
    /// of the piece's bytes were read for the first time.
    #[inline(always)]
    pub(crate) fn piece(
        &mut self,
        seq: u64,
        time: Option<f64>,
        op: Op,
        p: &Piece,
        last_object: &mut Option<u32>,
    ) -> u64 {
        let kind = p.kind;
        let entry = &mut self.kind_bytes[kind_group(kind)];
        if op == Op::Read {
            entry.0 += p.length;
        } else {
            entry.1 += p.length;
        }
        if op == Op::Read && kind == Some(Kind::Free) {
            self.free_reads.add(seq, p.disk_offset, p.length);
        }
        let mut new_bytes = 0;
        if let (Some(o), true) = (p.object, self.keep_stats) {
            let Some(st) = self.touched.entry(o, seq, time) else {
                return 0;
            };
            if *last_object != Some(o) {
                st.requests += 1;
            }
            if op == Op::Read {
                st.bytes_read += p.length;
                new_bytes = st.coverage.add(p.disk_offset, p.disk_offset + p.length);
            } else {
                st.bytes_written += p.length;
            }
            *last_object = Some(o);
        }
        new_bytes
    }

    /// Renumbers the requests counted: `seq` becomes `renumber(seq)`,
    /// which must keep their order.
    pub(crate) fn renumber(&mut self, renumber: impl Fn(u64) -> u64) {
        let t = &mut self.touched;
        for f in &mut t.firsts {
            *f = renumber(*f);
        }
        // A table counted request by request made each object's numbers
        // as it first touched it: the numbers are in first-access order,
        // and their first requests are `firsts`, renumbered already.
        if t.extra.is_empty() && t.stats.len() == t.firsts.len() {
            for (st, &first) in t.stats.iter_mut().zip(&t.firsts) {
                st.first_seq = first;
            }
        } else {
            for st in t.stats.iter_mut().chain(&mut t.extra) {
                st.first_seq = renumber(st.first_seq);
            }
        }
        for f in &mut self.free_reads.first {
            f.0 = renumber(f.0);
        }
        if self.totals.first_time.is_some() {
            self.first_timed = renumber(self.first_timed);
            self.last_timed = renumber(self.last_timed);
        }
    }

    /// Adds up `tallies`, whose requests are none of another's: as if one
    /// tally had seen all their requests in order of their sequence
    /// numbers. Tallies after the first must not be sums themselves.
    pub(crate) fn sum(tallies: Vec<Tally>) -> Option<Tally> {
        let mut tallies = tallies.into_iter();
        let mut sum = tallies.next()?;
        let mut tables = vec![std::mem::take(&mut sum.touched)];
        for mut other in tallies {
            tables.push(std::mem::take(&mut other.touched));
            sum.add_counts(other);
        }
        sum.touched = Touched::sum(tables);
        Some(sum)
    }

    /// Adds in `other`'s counts but its per-object numbers (see
    /// [`Touched::sum`]).
    fn add_counts(&mut self, other: Tally) {
        let (t, o) = (&mut self.totals, &other.totals);
        t.requests += o.requests;
        t.reads += o.reads;
        t.writes += o.writes;
        t.other += o.other;
        t.failed += o.failed;
        t.bytes_read += o.bytes_read;
        t.bytes_written += o.bytes_written;
        if o.first_time.is_some() {
            if t.first_time.is_none() || other.first_timed < self.first_timed {
                t.first_time = o.first_time;
                self.first_timed = other.first_timed;
            }
            if t.last_time.is_none() || other.last_timed > self.last_timed {
                t.last_time = o.last_time;
                self.last_timed = other.last_timed;
            }
        }
        for (mine, theirs) in self.kind_bytes.iter_mut().zip(other.kind_bytes) {
            mine.0 += theirs.0;
            mine.1 += theirs.1;
        }
        self.free_reads.absorb(other.free_reads);
    }
}

/// Requests looked at ahead of their turn by [`warm`].
const WARM_AHEAD: usize = 32;

/// Reads the memory the next requests will need (the layout segment of
/// each one's first byte, and the numbers of its owner) in a loop whose
/// iterations do not wait for each other, so that the CPU fetches them
/// all at once; request by request, every one of them is a cache miss
/// waited for in turn.
fn warm(
    index: &MapIndex,
    touched: &Touched,
    at: &[Option<u64>; WARM_AHEAD],
) -> [Option<usize>; WARM_AHEAD] {
    // In passes, each of whose loads depends on the pass before and not on
    // one another: the bucket of each request's first byte, then the
    // segments that bucket points to, then their owners' numbers. The
    // segments found are handed back, so the split does not look again.
    let mut sum = 0u64;
    for &pos in at.iter().flatten() {
        let b = index.buckets.get(index.bucket_of(pos)).copied();
        sum = sum.wrapping_add(u64::from(b.unwrap_or(0)));
    }
    let mut firsts = [None; WARM_AHEAD];
    for (pos, first) in at.iter().zip(&mut firsts) {
        *first = pos.map(|pos| index.first_ending_after(pos));
    }
    // The owners' places among the numbers, then the numbers: each pass
    // only waits for the one before.
    let mut places = [0u32; WARM_AHEAD];
    for (first, place) in firsts.iter().zip(&mut places) {
        if let Some(seg) = first.and_then(|i| index.segments.get(i)) {
            *place = touched.slot_of(seg.owner);
        }
    }
    for &place in &places {
        sum = sum.wrapping_add(touched.requests_at(place));
    }
    std::hint::black_box(sum);
    firsts
}

/// Reads that landed on free space: usually stale data a tool scanned, or
/// a filesystem driver reading ahead; worth a look either way.
#[derive(Debug, Default, serde::Serialize)]
pub struct FreeReads {
    pub requests: u64,
    pub bytes: u64,
    pub first: Vec<(u64, u64, u64)>,
    #[serde(skip)]
    last_seq: u64,
}

impl FreeReads {
    /// Reads listed by offset at most.
    const KEEP: usize = 10;

    /// Adds in `other`'s reads, none of which are this one's requests.
    fn absorb(&mut self, other: FreeReads) {
        self.requests += other.requests;
        self.bytes += other.bytes;
        self.first.extend(other.first);
        self.first.sort_by_key(|f| f.0);
        self.first.truncate(Self::KEEP);
    }

    fn add(&mut self, seq: u64, offset: u64, length: u64) {
        if self.last_seq != seq {
            self.requests += 1;
            self.last_seq = seq;
        }
        self.bytes += length;
        if self.first.len() < Self::KEEP {
            self.first.push((seq, offset, length));
        }
    }
}

/// The streaming log view.
struct LogState<'o> {
    view: View,
    output: OutputFormat,
    verbose: bool,
    out: Sink<'o>,
    last: Option<(Op, Option<u32>)>,
    conn: &'o Connection,
    null: std::io::Sink,
}

/// Where the log goes: straight to the output, or through a CSV writer.
enum Sink<'o> {
    Plain(&'o mut dyn std::io::Write),
    Csv(Box<csv::Writer<&'o mut dyn std::io::Write>>),
}

impl<'o> LogState<'o> {
    fn new(opts: &ReplayOptions<'o>, out: &'o mut dyn std::io::Write) -> Result<Self, ReplayError> {
        let out = if opts.view == View::Log && opts.output == OutputFormat::Csv {
            let mut w = csv::Writer::from_writer(out);
            w.write_record([
                "seq",
                "time",
                "op",
                "kind",
                "object",
                "partition",
                "path",
                "disk_offset",
                "length",
                "object_offset",
                "failed",
            ])?;
            Sink::Csv(Box::new(w))
        } else {
            Sink::Plain(out)
        };
        Ok(LogState {
            view: opts.view,
            output: opts.output,
            verbose: opts.verbose,
            out,
            last: None,
            conn: opts.conn,
            null: std::io::sink(),
        })
    }

    fn plain(&mut self) -> &mut dyn std::io::Write {
        match &mut self.out {
            Sink::Plain(w) => &mut **w,
            // Text and JSON never go through a CSV sink.
            Sink::Csv(_) => &mut self.null,
        }
    }

    fn csv_row(&mut self, row: [String; 11]) -> Result<(), ReplayError> {
        if let Sink::Csv(w) = &mut self.out {
            w.write_record(row)?;
        }
        Ok(())
    }

    fn failed(&mut self, seq: u64, r: &Request, err: &str) -> Result<(), ReplayError> {
        if self.view != View::Log {
            return Ok(());
        }
        self.last = None;
        match self.output {
            OutputFormat::Text => writeln!(
                self.plain(),
                "{} failed ({err}) at 0x{:x}+{} (line {})",
                r.op.as_str(),
                r.offset,
                r.length,
                r.line
            )?,
            OutputFormat::Json => {
                // The same keys as a piece, so every line has one shape.
                let v = serde_json::json!({
                    "seq": seq,
                    "time": r.time,
                    "op": r.op.as_str(),
                    "kind": null,
                    "object": null,
                    "partition": null,
                    "path": null,
                    "disk_offset": r.offset,
                    "length": r.length,
                    "object_offset": null,
                    "failed": err,
                    "line": r.line,
                });
                writeln!(self.plain(), "{v}")?;
            }
            OutputFormat::Csv => self.csv_row([
                seq.to_string(),
                r.time.map(|t| t.to_string()).unwrap_or_default(),
                r.op.as_str().to_string(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                r.offset.to_string(),
                r.length.to_string(),
                String::new(),
                err.to_string(),
            ])?,
        }
        Ok(())
    }

    /// Prints piece `p` of request `r`, in the log view. Inlined, so that
    /// the other views pay a compare per piece, not a call.
    #[inline]
    fn piece(
        &mut self,
        index: &MapIndex,
        seq: u64,
        r: &Request,
        p: &Piece,
    ) -> Result<(), ReplayError> {
        if self.view != View::Log {
            return Ok(());
        }
        self.print_piece(index, seq, r, p)
    }

    fn print_piece(
        &mut self,
        index: &MapIndex,
        seq: u64,
        r: &Request,
        p: &Piece,
    ) -> Result<(), ReplayError> {
        let structured = self.output != OutputFormat::Text;
        if !self.verbose && !structured && self.last == Some((r.op, p.object)) {
            return Ok(());
        }
        let info = match p.object {
            Some(o) => index.objects()?.get(o),
            None => None,
        };
        self.last = Some((r.op, p.object));
        let verbose = self.verbose;
        let object_offset = if verbose {
            p.object
                .and_then(|o| object_offset(self.conn, o, p.disk_offset))
        } else {
            None
        };
        match self.output {
            OutputFormat::Text => {
                let op = r.op.as_str();
                let out = self.plain();
                match info {
                    Some(i) => {
                        let dev = i.device.unwrap_or("");
                        let label = i.label();
                        write!(out, "{op} {} {dev}", i.code())?;
                        if !label.is_empty() {
                            write!(out, " {label}")?;
                        }
                    }
                    None => write!(out, "{op} beyond-end (past the end of the image)")?,
                }
                if verbose {
                    write!(out, "  @0x{:x}+{}", p.disk_offset, p.length)?;
                    if let Some(off) = object_offset {
                        write!(out, " offset 0x{off:x}")?;
                    }
                    if let Some(t) = r.time {
                        write!(out, " t={t:.6}")?;
                    }
                }
                writeln!(out)?;
            }
            OutputFormat::Json => {
                let v = serde_json::json!({
                    "seq": seq,
                    "time": r.time,
                    "op": r.op.as_str(),
                    "kind": info.map_or("beyond-end", |i| i.kind.as_str()),
                    "object": info.map(|i| i.name),
                    "partition": info.and_then(|i| i.partition),
                    "path": info.and_then(|i| i.path),
                    "disk_offset": p.disk_offset,
                    "length": p.length,
                    "object_offset": object_offset,
                    "failed": null,
                    "line": r.line,
                });
                writeln!(self.plain(), "{v}")?;
            }
            OutputFormat::Csv => {
                self.csv_row([
                    seq.to_string(),
                    r.time.map(|t| t.to_string()).unwrap_or_default(),
                    r.op.as_str().to_string(),
                    info.map_or("beyond-end", |i| i.kind.as_str()).to_string(),
                    info.map(|i| i.name.to_string()).unwrap_or_default(),
                    info.and_then(|i| i.partition)
                        .map(|n| n.to_string())
                        .unwrap_or_default(),
                    info.and_then(|i| i.path.map(str::to_string))
                        .unwrap_or_default(),
                    p.disk_offset.to_string(),
                    p.length.to_string(),
                    object_offset.map(|o| o.to_string()).unwrap_or_default(),
                    String::new(),
                ])?;
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), ReplayError> {
        if let Sink::Csv(w) = &mut self.out {
            w.flush()?;
        }
        Ok(())
    }

    fn into_out(self) -> Result<&'o mut dyn std::io::Write, ReplayError> {
        match self.out {
            Sink::Plain(w) => Ok(w),
            Sink::Csv(w) => w
                .into_inner()
                .map_err(|e| ReplayError::Output(e.into_error())),
        }
    }
}

/// Offset of `disk_offset` inside object `o`, from its extents.
fn object_offset(conn: &Connection, o: u32, disk_offset: u64) -> Option<u64> {
    let at = i64::try_from(disk_offset).ok()?;
    conn.prepare_cached(
        "SELECT start, logical FROM extents WHERE object = ?1 AND start <= ?2 AND end > ?2 LIMIT 1",
    )
    .ok()?
    .query_row(rusqlite::params![o, at], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
    })
    .ok()
    .and_then(|(s, l)| Some(u64::try_from(l).ok()? + (disk_offset - u64::try_from(s).ok()?)))
}

/// One file-like object's line in the summary.
#[derive(Debug, serde::Serialize)]
struct FileRow<'a> {
    first_seq: u64,
    first_time: Option<f64>,
    kind: &'static str,
    device: Option<&'a str>,
    partition: Option<u32>,
    path: &'a str,
    size: Option<u64>,
    requests: u64,
    bytes_read: u64,
    unique_bytes_read: u64,
    percent_read: Option<f64>,
    reread_bytes: u64,
    bytes_written: u64,
}

/// The numbers of a summary line, as [`fast_head`] and [`slow_head`]
/// write them.
#[derive(Debug)]
struct LineNumbers {
    first_seq: u64,
    first_time: Option<f64>,
    requests: u64,
    bytes_read: u64,
    percent_read: Option<f64>,
    reread_bytes: u64,
}

impl LineNumbers {
    /// The numbers of an object of `size` bytes (if known).
    fn of(st: &ObjectStats, size: Option<u64>) -> LineNumbers {
        let unique = st.coverage.bytes();
        LineNumbers {
            first_seq: st.first_seq,
            first_time: st.first_time(),
            requests: st.requests,
            bytes_read: st.bytes_read,
            // The share of the object its bytes read (once) are.
            percent_read: size
                .filter(|&s| s > 0)
                .map(|s| (unique.min(s) as f64) * 100.0 / s as f64),
            reread_bytes: st.bytes_read - unique,
        }
    }
}

fn file_rows<'a>(
    index: &'a MapIndex,
    touched: &'a Touched,
) -> impl Iterator<Item = FileRow<'a>> + 'a {
    file_rows_of(index, touched, &touched.order)
}

/// [`file_rows`] of the objects `ids`, in that order.
fn file_rows_of<'a>(
    index: &'a MapIndex,
    touched: &'a Touched,
    ids: &'a [u32],
) -> impl Iterator<Item = FileRow<'a>> + 'a {
    ids.iter().filter_map(move |&o| file_row(index, touched, o))
}

/// Object `o`'s row of the summary, if it is a file or directory the
/// trace touched.
fn file_row<'a>(index: &'a MapIndex, touched: &'a Touched, o: u32) -> Option<FileRow<'a>> {
    let st = touched.get(o)?;
    let info = index.object(o)?;
    if !info.kind.is_file_like() {
        return None;
    }
    let n = LineNumbers::of(st, info.size);
    Some(FileRow {
        first_seq: n.first_seq,
        first_time: n.first_time,
        kind: info.kind.as_str(),
        device: info.device,
        partition: info.partition,
        path: info.path.unwrap_or(info.name),
        size: info.size,
        requests: n.requests,
        bytes_read: n.bytes_read,
        unique_bytes_read: n.bytes_read - n.reread_bytes,
        percent_read: n.percent_read,
        reread_bytes: n.reread_bytes,
        bytes_written: st.bytes_written,
    })
}

#[allow(clippy::too_many_arguments)]
fn write_summary(
    index: &MapIndex,
    opts: &ReplayOptions<'_>,
    out: &mut dyn std::io::Write,
    outcome: &Outcome,
    touched: &Touched,
    kind_bytes: &[(u64, u64); GROUPS.len()],
    free_reads: &FreeReads,
) -> Result<(), ReplayError> {
    use crate::units::human;
    let t = &outcome.totals;
    match opts.output {
        OutputFormat::Json => {
            let files: Vec<FileRow<'_>> = file_rows(index, touched).collect();
            let kinds: Vec<serde_json::Value> = GROUPS
                .iter()
                .zip(kind_bytes)
                .filter(|(_, (r, w))| r + w > 0)
                .map(|(k, (r, w))| serde_json::json!({"kind": k, "bytes_read": r, "bytes_written": w}))
                .collect();
            let v = serde_json::json!({
                "trace": opts.trace_name,
                "format": opts.format.as_str(),
                "totals": t,
                "files": files,
                "kinds": kinds,
                "free_space_reads": {
                    "requests": free_reads.requests,
                    "bytes": free_reads.bytes,
                    "first": free_reads.first.iter().map(|(s, o, l)| serde_json::json!({"seq": s, "offset": o, "length": l})).collect::<Vec<_>>(),
                },
                "warnings": outcome.warnings.count,
            });
            serde_json::to_writer_pretty(&mut *out, &v).map_err(std::io::Error::from)?;
            writeln!(out)?;
        }
        OutputFormat::Csv => {
            let mut w = csv::Writer::from_writer(out);
            for row in file_rows(index, touched) {
                w.serialize(row)?;
            }
            w.flush()?;
        }
        OutputFormat::Text => {
            let span = match (t.first_time, t.last_time) {
                (Some(a), Some(b)) => format!(", {:.3} s of trace time", b - a),
                _ => String::new(),
            };
            writeln!(
                out,
                "trace {} ({}): {} requests — {} reads ({}), {} writes ({}), {} other, {} failed{span}",
                opts.trace_name,
                opts.format.as_str(),
                t.requests,
                t.reads,
                human(t.bytes_read),
                t.writes,
                human(t.bytes_written),
                t.other,
                t.failed
            )?;
            let first_time = t.first_time;
            writeln!(
                out,
                "\nfiles in order of first access (time: seconds since the first request):"
            )?;
            writeln!(
                out,
                "  {:>8} {:>12} {:>8} {:>10} {:>7} {:>10}  path",
                "seq", "time", "requests", "read", "%read", "re-read"
            )?;
            write_file_lines(out, index, touched, first_time)?;
            writeln!(out, "\nbytes by kind:")?;
            writeln!(out, "  {:<34} {:>12} {:>12}", "kind", "read", "written")?;
            for (k, (r, w)) in GROUPS
                .iter()
                .zip(kind_bytes)
                .filter(|(_, (r, w))| r + w > 0)
            {
                writeln!(out, "  {k:<34} {:>12} {:>12}", human(*r), human(*w))?;
            }
            if free_reads.requests > 0 {
                writeln!(
                    out,
                    "\nreads of free space: {} requests, {} (stale data or read-ahead):",
                    free_reads.requests,
                    human(free_reads.bytes)
                )?;
                for (s, o, l) in &free_reads.first {
                    writeln!(out, "  request {s}: 0x{o:x}+{l}")?;
                }
            }
        }
    }
    Ok(())
}

/// Files per block of the summary's lines: some 100 KB of text. The
/// blocks' buffers are made as the first blocks are, so they are fresh
/// pages, faulted in one by one: 4,096 files a block (some 400 KB) took
/// 500 of the summary's 2,700 page faults.
const LINES_BLOCK: usize = 1024;

/// Writes the summary's file lines. Each takes a few cache misses (its
/// numbers, its row, its name, all at random places), so the lines are
/// made by as many threads as there are cores (at most 4), a block at a
/// time in turn, and written in order. The blocks' buffers go back to be
/// filled again: small and reused, they stay in the cache, where large
/// ones would be fresh pages, each zeroed by the kernel (on a virtual
/// machine, often slowly).
fn write_file_lines(
    out: &mut dyn std::io::Write,
    index: &MapIndex,
    touched: &Touched,
    first_time: Option<f64>,
) -> std::io::Result<()> {
    let blocks: Vec<&[u32]> = touched.order.chunks(LINES_BLOCK).collect();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    let threads = cores.min(blocks.len()).max(1);
    // Pinned apart while they pass blocks (see `apart`), let go of after.
    let apart = (threads > 1).then(apart::Apart::pin_here).flatten();
    std::thread::scope(|scope| {
        let mut made = Vec::with_capacity(threads - 1);
        for helper in 1..threads {
            // Two blocks ready ahead of the writer at most, per helper.
            let (block_tx, block_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(2);
            let (back_tx, back_rx) = std::sync::mpsc::channel::<Vec<u8>>();
            let blocks = &blocks;
            let apart = &apart;
            scope.spawn(move || {
                if let Some(a) = apart {
                    a.helper();
                }
                for ids in blocks.iter().skip(helper).step_by(threads) {
                    let mut text = back_rx.try_recv().unwrap_or_default();
                    file_lines(&mut text, index, touched, ids, first_time);
                    // The writer stopped (an output error): so does this.
                    if block_tx.send(text).is_err() {
                        return;
                    }
                }
            });
            made.push((block_rx, back_tx));
        }
        let mut mine = Vec::new();
        for (i, ids) in blocks.iter().enumerate() {
            match (i % threads).checked_sub(1) {
                None => {
                    file_lines(&mut mine, index, touched, ids, first_time);
                    out.write_all(&mine)?;
                }
                Some(helper) => {
                    let (block_rx, back_tx) = &made[helper];
                    // A helper stops without its block only if it
                    // panicked; the scope raises its panic.
                    let Ok(text) = block_rx.recv() else {
                        break;
                    };
                    out.write_all(&text)?;
                    let _ = back_tx.send(text);
                }
            }
        }
        Ok(())
    })
}

/// Appends `s` right-aligned in `width` columns, as `{:>width}` does for
/// ASCII text (every cell of the summary's numbers is).
fn push_right(out: &mut String, s: &str, width: usize) {
    debug_assert!(s.is_ascii());
    const SPACES: &str = "                ";
    let mut pad = width.saturating_sub(s.len());
    while pad > 0 {
        let n = pad.min(SPACES.len());
        out.push_str(&SPACES[..n]);
        pad -= n;
    }
    out.push_str(s);
}

/// A summary line up to its path: two spaces, then seq, time, requests,
/// read, %read and re-read, right-aligned in 8, 12, 8, 10, 7 and 10
/// columns one space apart, then two spaces.
type Head = [u8; 64];

/// Where each cell of a [`Head`] ends.
const SEQ_END: usize = 10;
const TIME_END: usize = 23;
const REQUESTS_END: usize = 32;
const READ_END: usize = 43;
const PERCENT_END: usize = 51;
const REREAD_END: usize = 62;

const ONES: u64 = 0x0101_0101_0101_0101;

/// The eight decimal digits of `n` (under 10^8), the first in the lowest
/// byte, as values 0-9: four divisions done in every byte at once
/// (multiplications by reciprocals, exact for these ranges), rather than
/// eight done one after the other.
#[inline(always)]
fn digit_bytes(n: u32) -> u64 {
    // Two 32-bit halves: the first four digits, the last four.
    let halves = u64::from(n / 10_000) | (u64::from(n % 10_000) << 32);
    // Each half (under 10,000) by 100: 16-bit quarters under 100.
    let hundreds = ((halves * 10_486) >> 20) & 0x0000_007f_0000_007f;
    let quarters = hundreds | ((halves - 100 * hundreds) << 16);
    // Each quarter by 10: bytes under 10.
    let tens = ((quarters * 103) >> 10) & 0x000f_000f_000f_000f;
    tens | ((quarters - 10 * tens) << 8)
}

/// `n` (under 10^8) in ASCII, right-aligned in eight bytes with its
/// leading zeros blanked (a zero is one `0`): the bytes to store, and how
/// many digits it has.
#[inline(always)]
fn blanked(n: u32) -> (u64, usize) {
    let d = digit_bytes(n);
    let zeros = ((d | (1 << 56)).trailing_zeros() / 8) as usize;
    let blank = (1u64 << (8 * zeros)) - 1;
    let ascii = d + 0x30 * ONES;
    ((ascii & !blank) | ((0x20 * ONES) & blank), 8 - zeros)
}

/// Stores the eight bytes `w` (in memory order) to end at `end`.
#[inline(always)]
fn put8(line: &mut Head, end: usize, w: u64) {
    line[end - 8..end].copy_from_slice(&w.to_le_bytes());
}

/// Writes `bytes` as `push_human` does, right-aligned to end at `end` in a
/// 10-column cell; `None` when only `push_human` can (a rounding tie,
/// 2^53 bytes or more).
#[inline(always)]
fn put_human(line: &mut Head, end: usize, bytes: u64) -> Option<()> {
    if bytes < 1024 {
        line[end - 2..end].copy_from_slice(b" B");
        put8(line, end - 2, blanked(bytes as u32).0);
        return Some(());
    }
    let (tenths, unit) = crate::units::human_tenths(bytes)?;
    // At most 1024.0: four digits, a point, a digit, a space, the unit.
    line[end - 3..end].copy_from_slice(unit.as_bytes().get(..3)?);
    line[end - 5] = b'0' + (tenths % 10) as u8;
    line[end - 6] = b'.';
    put8(line, end - 6, blanked((tenths / 10) as u32).0);
    Some(())
}

/// `row`'s line up to its path, in `line` (all blanks); `None` when a
/// number does not fit its column (or is a rounding case only `format!`
/// gets right), for [`slow_head`] to write.
///
/// Each number is written as one 8-byte store of its digits, blanks to
/// their left, which may reach into the cell to its left: the cells are
/// written right to left, each over what the one to its right spilled.
fn fast_head(line: &mut Head, row: &LineNumbers, first_time: Option<f64>) -> Option<()> {
    put_human(line, REREAD_END, row.reread_bytes)?;
    match row.percent_read {
        Some(p) => {
            // Five digits before the point fill its seven columns.
            let tenths = crate::units::fixed_scaled(p, 1).filter(|&t| t < 1_000_000)?;
            line[PERCENT_END - 1] = b'0' + (tenths % 10) as u8;
            line[PERCENT_END - 2] = b'.';
            put8(line, PERCENT_END - 2, blanked((tenths / 10) as u32).0);
        }
        None => line[PERCENT_END - 1] = b'-',
    }
    put_human(line, READ_END, row.bytes_read)?;
    let requests = u32::try_from(row.requests)
        .ok()
        .filter(|&n| n < 100_000_000)?;
    put8(line, REQUESTS_END, blanked(requests).0);
    match row.first_time {
        // Seconds since the first request read better than the trace's
        // own clock (often seconds since 1970): `+S.ffffff`, four digits
        // of seconds at most.
        Some(t) => {
            let micros = crate::units::fixed_scaled(t - first_time.unwrap_or(t).min(t), 6)?;
            let secs = u32::try_from(micros / 1_000_000)
                .ok()
                .filter(|&s| s < 10_000)?;
            let fraction = (micros % 1_000_000) as u32;
            // "00ffffff": the two zeros become the point and the last
            // digit of the seconds.
            put8(line, TIME_END, digit_bytes(fraction) + 0x30 * ONES);
            line[TIME_END - 7] = b'.';
            let (w, digits) = blanked(secs);
            put8(line, TIME_END - 7, w);
            line[TIME_END - 8 - digits] = b'+';
        }
        None => line[TIME_END - 1] = b'-',
    }
    let seq = u32::try_from(row.first_seq)
        .ok()
        .filter(|&n| n < 100_000_000)?;
    put8(line, SEQ_END, blanked(seq).0);
    Some(())
}

/// `row`'s line up to its path, however wide its numbers.
fn slow_head(text: &mut Vec<u8>, row: &LineNumbers, first_time: Option<f64>) {
    use crate::units::{push_fixed, push_human};
    let mut line = String::from("  ");
    let mut cell = String::new();
    match row.first_time {
        Some(t) => {
            cell.push('+');
            push_fixed(&mut cell, t - first_time.unwrap_or(t).min(t), 6);
        }
        None => cell.push('-'),
    }
    push_right(&mut line, &row.first_seq.to_string(), 8);
    line.push(' ');
    push_right(&mut line, &cell, 12);
    line.push(' ');
    push_right(&mut line, &row.requests.to_string(), 8);
    line.push(' ');
    cell.clear();
    push_human(&mut cell, row.bytes_read);
    push_right(&mut line, &cell, 10);
    line.push(' ');
    cell.clear();
    match row.percent_read {
        Some(p) => push_fixed(&mut cell, p, 1),
        None => cell.push('-'),
    }
    push_right(&mut line, &cell, 7);
    line.push(' ');
    cell.clear();
    push_human(&mut cell, row.reread_bytes);
    push_right(&mut line, &cell, 10);
    line.push_str("  ");
    text.extend_from_slice(line.as_bytes());
}

/// Ids between the stages of [`file_lines`]' pipeline.
const LINE_STAGE: usize = 8;

/// The summary's lines for the files among `ids`, in place of `text`'s.
///
/// Each line reads an object's slot, numbers, row and name, at random
/// places: they are fetched in a pipeline (as in `fused::attribute`), the
/// slot and row of the object `2 * LINE_STAGE` ahead of the one written,
/// the numbers and name of the one `LINE_STAGE` ahead.
fn file_lines(
    text: &mut Vec<u8>,
    index: &MapIndex,
    touched: &Touched,
    ids: &[u32],
    first_time: Option<f64>,
) {
    text.clear();
    // Lines are about 100 bytes; a buffer grown later is copied whole.
    text.reserve(ids.len() * 128);
    let objects = index.objects.get();
    let at = |t: usize, stage: usize| t.checked_sub(stage * LINE_STAGE).and_then(|j| ids.get(j));
    for t in 0..ids.len() + 2 * LINE_STAGE {
        if let Some(&o) = ids.get(t) {
            touched.prefetch_slot(o);
            if let Some(objects) = objects {
                objects.prefetch_row(o);
            }
        }
        if let Some(&o) = at(t, 1) {
            touched.prefetch_numbers(o);
            if let Some(objects) = objects {
                objects.prefetch_name(o);
            }
        }
        // What `file_row` gives, without the `str`s it makes.
        let Some((st, parts)) = at(t, 2).and_then(|&o| {
            let parts = objects?.line_parts(o).filter(|p| p.kind.is_file_like())?;
            Some((touched.get(o)?, parts))
        }) else {
            continue;
        };
        let numbers = LineNumbers::of(st, parts.size);
        let mut line: Head = [b' '; 64];
        match fast_head(&mut line, &numbers, first_time) {
            Some(()) => text.extend_from_slice(&line),
            None => slow_head(text, &numbers, first_time),
        }
        match parts.text {
            LineText::Whole(t) => text.extend_from_slice(t),
            LineText::Parts(device, path) => {
                text.extend_from_slice(device);
                text.push(b' ');
                text.extend_from_slice(path);
            }
        }
        if parts.kind == Kind::Directory {
            text.push(b'/');
        }
        text.push(b'\n');
    }
}

fn write_boot_list(
    index: &MapIndex,
    opts: &ReplayOptions<'_>,
    out: &mut dyn std::io::Write,
    touched: &Touched,
) -> Result<(), ReplayError> {
    // Readahead tools want the files that were read, not written.
    let rows = file_rows(index, touched).filter(|r| r.kind != "directory" && r.bytes_read > 0);
    match opts.output {
        OutputFormat::Text => {
            for r in rows {
                writeln!(out, "{}", r.path)?;
            }
        }
        OutputFormat::Json => {
            let v: Vec<serde_json::Value> = rows
                .map(|r| serde_json::json!({"path": r.path, "device": r.device, "partition": r.partition}))
                .collect();
            serde_json::to_writer_pretty(&mut *out, &v).map_err(std::io::Error::from)?;
            writeln!(out)?;
        }
        OutputFormat::Csv => {
            let mut w = csv::Writer::from_writer(out);
            w.write_record(["device", "partition", "path"])?;
            for r in rows {
                w.write_record([
                    r.device.unwrap_or(""),
                    &r.partition.map(|p| p.to_string()).unwrap_or_default(),
                    r.path,
                ])?;
            }
            w.flush()?;
        }
    }
    Ok(())
}
