//! `bmap replay`: joins a trace with a map. Each request is split over the
//! layout and its bytes are attributed to the most specific object, with
//! the offset inside it.
//!
//! The map's layout and object table are loaded once into flat vectors, so
//! attributing a request is a binary search and a short walk; everything
//! per request is streamed, and what the views keep grows with the number
//! of objects touched, never with the length of the trace.

use rusqlite::Connection;

use crate::error::Result;
use crate::map::Kind;
use crate::trace::{Op, Request};

/// What the replay needs to know about one object.
#[derive(Debug, Clone, Default)]
pub struct ObjectInfo {
    pub kind: Kind,
    /// Display name: `/dev/sda2 /etc/fstab`.
    pub name: String,
    pub device: Option<String>,
    pub path: Option<String>,
    pub partition: Option<u32>,
    pub size: Option<u64>,
}

impl ObjectInfo {
    /// The name without its device prefix or a leading repeat of its kind:
    /// `/etc/fstab`, `group 3`.
    pub fn label(&self) -> &str {
        let mut label = self.name.as_str();
        if let Some(d) = &self.device {
            label = label.strip_prefix(d.as_str()).unwrap_or(label).trim_start();
        }
        // "GPT header" and "boot block" repeat the kind (gpt-header,
        // boot-block): compare ignoring case and '-' against ' '.
        let kind = self.kind.as_str().as_bytes();
        let bytes = label.as_bytes();
        let same = |a: u8, b: u8| a.eq_ignore_ascii_case(&b) || (a == b'-' && b == b' ');
        if bytes.len() >= kind.len()
            && kind.iter().zip(bytes).all(|(&k, &l)| same(k, l))
            && bytes.get(kind.len()).is_none_or(|&c| c == b' ')
        {
            return label[kind.len()..].trim_start();
        }
        label
    }

    /// virt-bmap's one-letter code where it had one, else the kind.
    pub fn code(&self) -> &'static str {
        match self.kind {
            Kind::Disk => "v",
            Kind::Partition => "p",
            Kind::Directory => "d",
            Kind::File | Kind::Symlink => "f",
            k => k.as_str(),
        }
    }
}

/// The layout of a map, ready for lookups.
///
/// Attributing bytes needs only the layout and each object's kind; names
/// and paths are needed only to print. So [`MapIndex::load_layout`] reads
/// the former, and the object table (the larger part of a map) may be
/// read by another thread meanwhile and handed over with
/// [`MapIndex::objects_from`]; [`MapIndex::load`] reads everything at once.
pub struct MapIndex {
    pub image_size: u64,
    starts: Vec<u64>,
    ends: Vec<u64>,
    owners: Vec<u32>,
    /// Indexed by `objects.id`; index 0 is unused.
    kinds: Vec<Kind>,
    /// Indexed by `objects.id` as `kinds` is, once loaded.
    objects: std::sync::OnceLock<Vec<ObjectInfo>>,
    /// Where the objects come from when they are not loaded yet.
    loader: std::sync::Mutex<Option<ObjectLoader>>,
}

/// A thread reading the object table.
pub type ObjectLoader = std::thread::JoinHandle<Result<Vec<ObjectInfo>>>;

/// A piece of a request that falls on one object (or past the image).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    /// `objects.id`, or `None` beyond the end of the image.
    pub object: Option<u32>,
    pub disk_offset: u64,
    pub length: u64,
}

/// Ids are dense (1, 2, 3…); a hand-edited map with a huge id must not
/// make us allocate for it. Rows are read in id order, so the ids kept
/// depend only on the ids before them: the kinds and the object table
/// keep the same ones.
fn usable_id(id: i64, len: usize) -> Option<usize> {
    let id = usize::try_from(id).ok()?;
    (id <= len + 1_000_000).then_some(id)
}

/// The kind in column `i`: text naming a kind, else `unknown`; not text
/// at all is rusqlite's error for reading it as a `String`.
fn kind_at(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Kind> {
    if let rusqlite::types::ValueRef::Text(t) = r.get_ref(i)? {
        if let Ok(s) = std::str::from_utf8(t) {
            return Ok(Kind::parse(s).unwrap_or(Kind::Unknown));
        }
    }
    Ok(Kind::parse(&r.get::<_, String>(i)?).unwrap_or(Kind::Unknown))
}

/// [`kind_at`], remembering the last text read and its kind in `last`.
fn cached_kind_at(
    r: &rusqlite::Row<'_>,
    i: usize,
    last: &mut (Vec<u8>, Kind),
) -> rusqlite::Result<Kind> {
    if let rusqlite::types::ValueRef::Text(t) = r.get_ref(i)? {
        if t == last.0.as_slice() {
            return Ok(last.1);
        }
    }
    let k = kind_at(r, i)?;
    if let rusqlite::types::ValueRef::Text(t) = r.get_ref(i)? {
        *last = (t.to_vec(), k);
    }
    Ok(k)
}

impl MapIndex {
    /// Loads the layout and the object table.
    pub fn load(conn: &Connection) -> Result<MapIndex> {
        let objects = Self::load_objects(conn)?;
        let index = Self::load_layout(conn)?;
        let _ = index.objects.set(objects);
        Ok(index)
    }

    /// Loads the layout and the kind of every object; the rest of the
    /// object table comes from [`MapIndex::objects_from`].
    pub fn load_layout(conn: &Connection) -> Result<MapIndex> {
        let image_size: u64 = conn
            .query_row("SELECT value FROM meta WHERE key = 'image_size'", [], |r| {
                r.get::<_, String>(0)
            })?
            .parse()
            .unwrap_or(0);
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
            let kind = cached_kind_at(r, 1, &mut last)?;
            kinds[id] = kind;
        }
        let mut starts = Vec::new();
        let mut ends = Vec::new();
        let mut owners = Vec::new();
        let mut st =
            conn.prepare("SELECT start, end, object FROM layout_segments ORDER BY start")?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            let (s, e, o): (i64, i64, i64) = (r.get(0)?, r.get(1)?, r.get(2)?);
            let (Ok(s), Ok(e), Ok(o)) = (u64::try_from(s), u64::try_from(e), u32::try_from(o))
            else {
                continue;
            };
            if s < e && starts.last().is_none_or(|&prev| prev < s) {
                starts.push(s);
                ends.push(e);
                owners.push(o);
            }
        }
        Ok(MapIndex {
            image_size,
            starts,
            ends,
            owners,
            kinds,
            objects: std::sync::OnceLock::new(),
            loader: std::sync::Mutex::new(None),
        })
    }

    /// Reads the object table: names, devices, paths, partitions, sizes,
    /// indexed by `objects.id`.
    pub fn load_objects(conn: &Connection) -> Result<Vec<ObjectInfo>> {
        let mut objects: Vec<ObjectInfo> = Vec::new();
        let mut st = conn.prepare(
            "SELECT id, kind, name, device, path, partition, size FROM objects ORDER BY id",
        )?;
        let mut rows = st.query([])?;
        // Most objects of a filesystem share its device name, and kinds
        // repeat.
        let mut device: Option<String> = None;
        let mut last: (Vec<u8>, Kind) = (Vec::new(), Kind::Unknown);
        while let Some(r) = rows.next()? {
            let Some(id) = usable_id(r.get(0)?, objects.len()) else {
                continue;
            };
            if objects.len() <= id {
                objects.resize(id + 1, ObjectInfo::default());
            }
            let kind = cached_kind_at(r, 1, &mut last)?;
            let name: String = r.get(2)?;
            let dev = match r.get_ref(3)? {
                rusqlite::types::ValueRef::Text(t)
                    if device.as_deref().map(str::as_bytes) == Some(t) =>
                {
                    device.clone()
                }
                _ => {
                    device = r.get(3)?;
                    device.clone()
                }
            };
            objects[id] = ObjectInfo {
                kind,
                name,
                device: dev,
                path: r.get(4)?,
                partition: r.get(5)?,
                size: r
                    .get::<_, Option<i64>>(6)?
                    .and_then(|s| u64::try_from(s).ok()),
            };
        }
        Ok(objects)
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
    pub fn objects(&self) -> Result<&[ObjectInfo]> {
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
        Ok(self.objects.get_or_init(Vec::new))
    }

    /// The object `id`, once the object table is loaded.
    pub fn object(&self, id: u32) -> Option<&ObjectInfo> {
        self.objects.get()?.get(id as usize)
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
    pub fn split(&self, offset: u64, length: u64, mut f: impl FnMut(Piece)) {
        let end = offset.saturating_add(length);
        let mut pos = offset;
        let mut i = self.starts.partition_point(|&s| s <= pos).saturating_sub(1);
        while pos < end && pos < self.image_size {
            // Segments tile the image; a gap (hand-edited map) is skipped.
            while i < self.starts.len() && self.ends[i] <= pos {
                i += 1;
            }
            let Some(&start) = self.starts.get(i) else {
                break;
            };
            if start > pos {
                pos = start.min(end);
                continue;
            }
            let piece_end = self.ends[i].min(end);
            f(Piece {
                object: Some(self.owners[i]),
                disk_offset: pos,
                length: piece_end - pos,
            });
            pos = piece_end;
            i += 1;
        }
        let past = offset.max(self.image_size);
        if end > past {
            f(Piece {
                object: None,
                disk_offset: past,
                length: end - past,
            });
        }
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
/// order. A dense slot table makes the per-piece update an array index.
#[derive(Debug, Default)]
pub struct Touched {
    slot: Vec<u32>,
    stats: Vec<(u32, ObjectStats)>,
}

impl Touched {
    fn with_objects(n: usize) -> Self {
        Touched {
            slot: vec![u32::MAX; n],
            stats: Vec::new(),
        }
    }

    fn entry(&mut self, o: u32, init: impl FnOnce() -> ObjectStats) -> &mut ObjectStats {
        let i = o as usize;
        if i >= self.slot.len() {
            self.slot.resize(i + 1, u32::MAX);
        }
        if self.slot[i] == u32::MAX {
            self.slot[i] = u32::try_from(self.stats.len()).unwrap_or(u32::MAX - 1);
            self.stats.push((o, init()));
        }
        let s = self.slot[i] as usize;
        &mut self.stats[s].1
    }

    /// Objects in order of first access.
    pub fn iter(&self) -> impl Iterator<Item = &(u32, ObjectStats)> {
        self.stats.iter()
    }
}

/// Byte ranges already read from one object, merged, to tell first reads
/// from re-reads. Reads are mostly sequential, so appending is the common
/// case.
#[derive(Debug, Default, Clone)]
pub struct Coverage {
    ranges: Vec<(u64, u64)>,
}

impl Coverage {
    /// Adds `[start, end)`; returns how many of its bytes were new.
    pub fn add(&mut self, start: u64, end: u64) -> u64 {
        if start >= end {
            return 0;
        }
        if let Some(last) = self.ranges.last_mut() {
            if start >= last.1 {
                if start == last.1 {
                    last.1 = end;
                } else {
                    self.ranges.push((start, end));
                }
                return end - start;
            }
        } else {
            self.ranges.push((start, end));
            return end - start;
        }
        // General case: merge with every overlapping or touching range.
        let i = self.ranges.partition_point(|r| r.1 < start);
        let mut j = i;
        let mut new_start = start;
        let mut new_end = end;
        let mut covered = 0;
        while j < self.ranges.len() && self.ranges[j].0 <= end {
            let (s, e) = self.ranges[j];
            covered += e.min(end).saturating_sub(s.max(start));
            new_start = new_start.min(s);
            new_end = new_end.max(e);
            j += 1;
        }
        self.ranges.splice(i..j, [(new_start, new_end)]);
        (end - start) - covered
    }

    pub fn bytes(&self) -> u64 {
        self.ranges.iter().map(|(s, e)| e - s).sum()
    }
}

/// Per-object numbers for the summary.
#[derive(Debug, Clone, Default)]
pub struct ObjectStats {
    pub first_seq: u64,
    pub first_time: Option<f64>,
    pub requests: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub reread_bytes: u64,
    pub coverage: Coverage,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index() -> MapIndex {
        MapIndex {
            image_size: 100,
            starts: vec![0, 10, 40],
            ends: vec![10, 40, 100],
            owners: vec![1, 2, 3],
            kinds: Vec::new(),
            objects: std::sync::OnceLock::new(),
            loader: std::sync::Mutex::new(None),
        }
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

    #[test]
    fn labels() {
        let o = ObjectInfo {
            kind: Kind::InodeTable,
            name: "/dev/sda2 inode-table group 3".into(),
            device: Some("/dev/sda2".into()),
            ..ObjectInfo::default()
        };
        assert_eq!(o.label(), "group 3");
        assert_eq!(o.code(), "inode-table");
        let f = ObjectInfo {
            kind: Kind::File,
            name: "/dev/sda2 /etc/fstab".into(),
            device: Some("/dev/sda2".into()),
            ..ObjectInfo::default()
        };
        assert_eq!(f.label(), "/etc/fstab");
        assert_eq!(f.code(), "f");
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
    events: crate::trace::Events<'_>,
    opts: &ReplayOptions<'_>,
    out: &mut dyn std::io::Write,
    mut trace_store: Option<&mut crate::store::TraceStore>,
) -> Result<Outcome, ReplayError> {
    use crate::trace::Event;
    let mut outcome = Outcome::default();
    let mut log = LogState::new(opts, out)?;
    let mut touched = Touched::with_objects(index.object_count());
    let mut kind_bytes = [(0u64, 0u64); GROUPS.len()];
    let mut free_reads = FreeReads::default();
    let mut bad_lines = 0u64;
    let mut seq = 0u64;
    // The streaming log keeps nothing per object, so its memory stays flat.
    let keep_stats = opts.view != View::Log || trace_store.is_some();
    for event in events {
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
            Event::DiskSize { line, size } => {
                if size != index.image_size {
                    outcome.warnings.push(format!(
                        "line {line}: the traced disk has {size} bytes but the map's image has {}; is this the right map?",
                        index.image_size
                    ));
                }
                continue;
            }
            Event::Warning { line, message } => {
                outcome.warnings.push(format!("line {line}: {message}"));
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
        let t = &mut outcome.totals;
        t.requests += 1;
        if r.time.is_some() {
            t.first_time = t.first_time.or(r.time);
            t.last_time = r.time;
        }
        if let Some(err) = &r.failed {
            t.failed += 1;
            if let Some(s) = store.as_mut() {
                s.request(seq, r.time, r.op.as_str(), r.offset, r.length, Some(err))?;
            }
            log.failed(seq, &r, err)?;
            continue;
        }
        match r.op {
            Op::Read => {
                t.reads += 1;
                t.bytes_read += r.length;
            }
            Op::Write | Op::Zero | Op::Trim => {
                t.writes += 1;
                t.bytes_written += r.length;
            }
            _ => t.other += 1,
        }
        if let Some(s) = store.as_mut() {
            s.request(seq, r.time, r.op.as_str(), r.offset, r.length, None)?;
        }
        let moves_data = matches!(r.op, Op::Read | Op::Write | Op::Zero | Op::Trim);
        if !moves_data {
            continue;
        }
        let mut result: Result<(), ReplayError> = Ok(());
        let mut last_object = None;
        index.split(r.offset, r.length, |p| {
            if result.is_err() {
                return;
            }
            let kind = p.object.and_then(|o| index.kind(o));
            let entry = &mut kind_bytes[kind_group(kind)];
            if r.op == Op::Read {
                entry.0 += p.length;
            } else {
                entry.1 += p.length;
            }
            if r.op == Op::Read && kind == Some(Kind::Free) {
                free_reads.add(seq, p.disk_offset, p.length);
            }
            let mut new_bytes = 0;
            if let (Some(o), true) = (p.object, keep_stats) {
                let st = touched.entry(o, || ObjectStats {
                    first_seq: seq,
                    first_time: r.time,
                    ..ObjectStats::default()
                });
                if last_object != Some(o) {
                    st.requests += 1;
                }
                if r.op == Op::Read {
                    st.bytes_read += p.length;
                    new_bytes = st.coverage.add(p.disk_offset, p.disk_offset + p.length);
                    st.reread_bytes += p.length - new_bytes;
                } else {
                    st.bytes_written += p.length;
                }
                last_object = Some(o);
            }
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
    log.finish()?;
    let out = log.into_out()?;
    if opts.view != View::Log {
        index.objects()?;
    }
    match opts.view {
        View::Log => {}
        View::Summary => write_summary(
            index,
            opts,
            out,
            &outcome,
            &touched,
            &kind_bytes,
            &free_reads,
        )?,
        View::BootList => write_boot_list(index, opts, out, &touched)?,
    }
    Ok(outcome)
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
    fn add(&mut self, seq: u64, offset: u64, length: u64) {
        if self.last_seq != seq {
            self.requests += 1;
            self.last_seq = seq;
        }
        self.bytes += length;
        if self.first.len() < 10 {
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
        let structured = self.output != OutputFormat::Text;
        if !self.verbose && !structured && self.last == Some((r.op, p.object)) {
            return Ok(());
        }
        let info = match p.object {
            Some(o) => index.objects()?.get(o as usize),
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
                        let dev = i.device.as_deref().unwrap_or("");
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
                    "object": info.map(|i| i.name.as_str()),
                    "partition": info.and_then(|i| i.partition),
                    "path": info.and_then(|i| i.path.as_deref()),
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
                    info.map(|i| i.name.clone()).unwrap_or_default(),
                    info.and_then(|i| i.partition)
                        .map(|n| n.to_string())
                        .unwrap_or_default(),
                    info.and_then(|i| i.path.clone()).unwrap_or_default(),
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

fn file_rows<'a>(
    index: &'a MapIndex,
    touched: &'a Touched,
) -> impl Iterator<Item = FileRow<'a>> + 'a {
    touched.iter().filter_map(move |(o, st)| {
        let info = index.object(*o)?;
        if !info.kind.is_file_like() {
            return None;
        }
        let unique = st.coverage.bytes();
        Some(FileRow {
            first_seq: st.first_seq,
            first_time: st.first_time,
            kind: info.kind.as_str(),
            device: info.device.as_deref(),
            partition: info.partition,
            path: info.path.as_deref().unwrap_or(info.name.as_str()),
            size: info.size,
            requests: st.requests,
            bytes_read: st.bytes_read,
            unique_bytes_read: unique,
            percent_read: info
                .size
                .filter(|&s| s > 0)
                .map(|s| (unique.min(s) as f64) * 100.0 / s as f64),
            reread_bytes: st.reread_bytes,
            bytes_written: st.bytes_written,
        })
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
    use crate::units::{human, push_fixed, push_human, push_u64};
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
            // One reused buffer per column: this runs once per file.
            let mut line = String::with_capacity(256);
            let mut cell = String::with_capacity(32);
            let mut num = String::with_capacity(32);
            for row in file_rows(index, touched) {
                line.clear();
                line.push_str("  ");
                // Seconds since the first request read better than the
                // trace's own clock (often seconds since 1970).
                cell.clear();
                match row.first_time {
                    Some(t) => {
                        cell.push('+');
                        push_fixed(&mut cell, t - first_time.unwrap_or(t).min(t), 6);
                    }
                    None => cell.push('-'),
                }
                num.clear();
                push_u64(&mut num, row.first_seq);
                push_right(&mut line, &num, 8);
                line.push(' ');
                push_right(&mut line, &cell, 12);
                line.push(' ');
                num.clear();
                push_u64(&mut num, row.requests);
                push_right(&mut line, &num, 8);
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
                line.push_str(row.device.unwrap_or(""));
                line.push(' ');
                line.push_str(row.path);
                if row.kind == "directory" {
                    line.push('/');
                }
                line.push('\n');
                out.write_all(line.as_bytes())?;
            }
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

/// Appends `s` right-aligned in `width` columns, as `{:>width}` does.
fn push_right(out: &mut String, s: &str, width: usize) {
    for _ in s.chars().count()..width {
        out.push(' ');
    }
    out.push_str(s);
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
