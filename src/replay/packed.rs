//! The packed map: a compact copy of `layout_segments` and of the object
//! columns replay prints, kept in the `packed_map` table
//! (`schema/005_packed.sql`). `bmap index` writes it so that replay,
//! serve, plot and the TUI load the layout of a map with millions of
//! objects in milliseconds, instead of stepping SQLite through every row.
//!
//! It is derived data. Triggers delete it whenever a table it copies
//! changes, and a reader that finds no row, another format, or a blob
//! that does not decode reads the tables instead; the tables stay the
//! truth.
//!
//! Format 1 (integers are unsigned LEB128):
//! - `kinds`: the kind names, comma-separated; an object's kind is a byte
//!   indexing this list, so the blob does not depend on the order of
//!   [`Kind::ALL`].
//! - `segments`, per segment in disk order: the gap from the previous
//!   segment's end (from 0 for the first), the length (not 0), the owner.
//! - `objects`, per object from id 1 in id order: kind byte, flags byte
//!   (`PARTITION`, `SIZE`, `DEVICE`, `PATH`, `DEVICE_IN_NAME`,
//!   `PATH_IN_NAME`), the partition and size if flagged, the name's
//!   length, then the device and the path if flagged: a length, which
//!   for `…_IN_NAME` is that of the name's prefix (device) or suffix
//!   (path) they equal, so that the usual `/dev/sda2 /etc/fstab` stores
//!   its text once.
//! - `strings`: the UTF-8 text of every name, device and path not in a
//!   name, in the order `objects` reads them.

use rusqlite::Connection;

use super::objects::{ObjectTable, Row, Span};
use crate::map::Kind;

/// The format this bmap writes and reads.
pub const FORMAT: i64 = 1;

const PARTITION: u8 = 1;
const SIZE: u8 = 2;
const DEVICE: u8 = 4;
const PATH: u8 = 8;
const DEVICE_IN_NAME: u8 = 16;
const PATH_IN_NAME: u8 = 32;

/// One object as [`encode`] takes it: what replay reads back.
pub use super::objects::ObjectInfo as Object;

/// The columns of a `packed_map` row.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Packed {
    pub kinds: String,
    pub segments: Vec<u8>,
    pub objects: Vec<u8>,
    pub strings: Vec<u8>,
}

fn put(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// Reads one LEB128 integer; `None` past the end or beyond 64 bits.
#[inline]
fn take(buf: &mut &[u8]) -> Option<u64> {
    // Most integers here (owners' deltas, lengths, kinds) fit in one byte.
    if let Some((&b, rest)) = buf.split_first() {
        if b < 0x80 {
            *buf = rest;
            return Some(u64::from(b));
        }
    }
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = buf.split_first()?;
        *buf = rest;
        let bits = u64::from(b & 0x7f);
        if shift == 63 && bits > 1 {
            return None;
        }
        v |= bits << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

fn take_byte(buf: &mut &[u8]) -> Option<u8> {
    let (&b, rest) = buf.split_first()?;
    *buf = rest;
    Some(b)
}

/// Packs a layout (segments as `(start, end, owner)`, sorted, disjoint,
/// none empty) and the objects from id 1 on; `None` if the layout is not
/// like that.
pub fn encode<'a>(
    segments: impl IntoIterator<Item = (u64, u64, u32)>,
    objects: impl IntoIterator<Item = Object<'a>>,
) -> Option<Packed> {
    let mut p = Packed {
        kinds: Kind::ALL.map(Kind::as_str).join(","),
        ..Packed::default()
    };
    let mut prev_end = 0;
    for (start, end, owner) in segments {
        if start < prev_end || end <= start {
            return None;
        }
        put(&mut p.segments, start - prev_end);
        put(&mut p.segments, end - start);
        put(&mut p.segments, u64::from(owner));
        prev_end = end;
    }
    for o in objects {
        let kind = Kind::ALL.iter().position(|&k| k == o.kind)?;
        let mut flags = 0;
        let device_in_name = o.device.is_some_and(|d| o.name.starts_with(d));
        let path_in_name = o.path.is_some_and(|q| o.name.ends_with(q));
        for (present, flag) in [
            (o.partition.is_some(), PARTITION),
            (o.size.is_some(), SIZE),
            (o.device.is_some(), DEVICE),
            (o.path.is_some(), PATH),
            (device_in_name, DEVICE_IN_NAME),
            (path_in_name, PATH_IN_NAME),
        ] {
            if present {
                flags |= flag;
            }
        }
        p.objects.push(kind as u8);
        p.objects.push(flags);
        if let Some(n) = o.partition {
            put(&mut p.objects, u64::from(n));
        }
        if let Some(s) = o.size {
            put(&mut p.objects, s);
        }
        put(&mut p.objects, o.name.len() as u64);
        p.strings.extend_from_slice(o.name.as_bytes());
        for (text, inside) in [(o.device, device_in_name), (o.path, path_in_name)] {
            if let Some(t) = text {
                put(&mut p.objects, t.len() as u64);
                if !inside {
                    p.strings.extend_from_slice(t.as_bytes());
                }
            }
        }
    }
    Some(p)
}

/// Unpacks the layout, calling `segment(start, end, owner)` in disk order,
/// and returns the object table; `None` if anything is out of place.
pub fn decode(
    kinds: &str,
    segments: &[u8],
    objects: &[u8],
    strings: Vec<u8>,
    segment: impl FnMut(u64, u64, u32),
) -> Option<ObjectTable> {
    decode_segments(segments, segment)?;
    decode_objects(kinds, objects, strings)
}

/// A record of the `segments` or `objects` blob is at most this long: two
/// bytes and five integers of at most ten bytes.
const MAX_RECORD: usize = 64;

/// Bytes that a decoder reads a record at a time: a blob in memory, or
/// one of the map's read a piece at a time ([`BlobRecords`]).
trait Records {
    /// How many bytes there are.
    fn len(&self) -> usize;

    /// Calls `record` until every byte is taken: each call takes one
    /// record (at most [`MAX_RECORD`] bytes) off the front of what it is
    /// given, or says that the bytes are out of place.
    fn each(self, record: impl FnMut(&mut &[u8]) -> Option<()>) -> Option<()>;
}

impl Records for &[u8] {
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }

    fn each(mut self, mut record: impl FnMut(&mut &[u8]) -> Option<()>) -> Option<()> {
        records_in(&mut self, 0, &mut record)
    }
}

/// Takes records off the front of `rest` while more than `keep` bytes are
/// left; `None` if one is out of place or takes no byte (a loop would
/// never end).
fn records_in(
    rest: &mut &[u8],
    keep: usize,
    record: &mut impl FnMut(&mut &[u8]) -> Option<()>,
) -> Option<()> {
    while rest.len() > keep {
        let before = rest.len();
        record(rest)?;
        if rest.len() == before {
            return None;
        }
    }
    Some(())
}

/// A blob column of the packed row, read through SQLite's incremental
/// blob I/O a piece at a time into one small buffer, and decoded from
/// there. Read as a column, a blob is first copied whole into a buffer of
/// SQLite's, megabytes of fresh pages that the kernel faults in and zeroes
/// one by one, to be read once: the summary of the bench's 1M trace took
/// 4,300 page faults that way, 3,500 this way.
struct BlobRecords<'conn> {
    blob: rusqlite::blob::Blob<'conn>,
}

/// Bytes of a blob read at a time.
const PIECE: usize = 64 << 10;

impl BlobRecords<'_> {
    fn open<'conn>(
        conn: &'conn Connection,
        column: &str,
        rowid: i64,
    ) -> Option<BlobRecords<'conn>> {
        Some(BlobRecords {
            blob: open_blob(conn, column, rowid)?,
        })
    }
}

/// Blob `column` of `packed_map`'s row `rowid`, opened to be read.
fn open_blob<'conn>(
    conn: &'conn Connection,
    column: &str,
    rowid: i64,
) -> Option<rusqlite::blob::Blob<'conn>> {
    conn.blob_open(
        rusqlite::DatabaseName::Main,
        "packed_map",
        column,
        rowid,
        true,
    )
    .ok()
}

impl Records for BlobRecords<'_> {
    fn len(&self) -> usize {
        self.blob.len()
    }

    fn each(self, mut record: impl FnMut(&mut &[u8]) -> Option<()>) -> Option<()> {
        let total = self.blob.len();
        let mut buf = vec![0u8; PIECE];
        // `buf[..held]` is read and not yet decoded; `read` bytes of the
        // blob have been read.
        let (mut held, mut read) = (0, 0);
        loop {
            let more = (PIECE - held).min(total - read);
            self.blob
                .read_at_exact(&mut buf[held..held + more], read)
                .ok()?;
            read += more;
            held += more;
            let last = read == total;
            let mut rest = &buf[..held];
            // Short of the blob's end, a record is decoded only when the
            // whole of it is surely in the buffer.
            records_in(
                &mut rest,
                if last { 0 } else { MAX_RECORD - 1 },
                &mut record,
            )?;
            if last {
                return Some(());
            }
            let left = rest.len();
            buf.copy_within(held - left..held, 0);
            held = left;
        }
    }
}

/// Unpacks the layout, calling `segment(start, end, owner)` in disk order;
/// `None` if anything is out of place.
fn decode_segments(segments: impl Records, mut segment: impl FnMut(u64, u64, u32)) -> Option<()> {
    let mut prev_end = 0u64;
    segments.each(|segments| {
        let start = prev_end.checked_add(take(segments)?)?;
        let len = take(segments)?;
        let end = start.checked_add(len).filter(|_| len > 0)?;
        let owner = u32::try_from(take(segments)?).ok()?;
        segment(start, end, owner);
        prev_end = end;
        Some(())
    })
}

/// The kinds the `kinds` column names, in its order.
fn kind_list(kinds: &str) -> Vec<Kind> {
    kinds
        .split(',')
        .map(|k| Kind::parse(k).unwrap_or(Kind::Unknown))
        .collect()
}

/// One object of the `objects` blob, its text not yet found: the lengths
/// of its name, device and path (see the module's notes).
struct Record {
    kind: Kind,
    flags: u8,
    partition: Option<u32>,
    size: Option<u64>,
    name: u64,
    device: Option<u64>,
    path: Option<u64>,
}

impl Record {
    /// The next object of `objects`; `None` if it is cut short or out of
    /// place.
    fn take(objects: &mut &[u8], kinds: &[Kind]) -> Option<Record> {
        let kind = *kinds.get(usize::from(take_byte(objects)?))?;
        let flags = take_byte(objects)?;
        let has = |f: u8| flags & f != 0;
        let maybe = |objects: &mut &[u8], present: bool| -> Option<Option<u64>> {
            if present {
                take(objects).map(Some)
            } else {
                Some(None)
            }
        };
        let partition = match maybe(objects, has(PARTITION))? {
            Some(p) => Some(u32::try_from(p).ok()?),
            None => None,
        };
        let size = maybe(objects, has(SIZE))?;
        let name = take(objects)?;
        let device = maybe(objects, has(DEVICE))?;
        let path = maybe(objects, has(PATH))?;
        Some(Record {
            kind,
            flags,
            partition,
            size,
            name,
            device,
            path,
        })
    }
}

/// Every object's kind, indexed by id (0 unused, as in the object table),
/// read from the `objects` blob without its text: what attributing needs,
/// before the names are read. `None` if the blob is out of place.
pub fn decode_kinds(kinds: &str, objects: &[u8]) -> Option<Vec<Kind>> {
    kinds_of(kinds, objects)
}

fn kinds_of(kinds: &str, objects: impl Records) -> Option<Vec<Kind>> {
    let list = kind_list(kinds);
    // Every object takes at least three bytes.
    let mut out = Vec::with_capacity(1 + objects.len() / 3);
    // The object table's unused row 0 is a default one.
    out.push(Kind::default());
    objects.each(|objects| {
        out.push(Record::take(objects, &list)?.kind);
        Some(())
    })?;
    Some(out)
}

/// The object table the `objects` blob and the `strings` arena spell;
/// `None` if anything is out of place.
fn decode_objects(kinds: &str, objects: impl Records, strings: Vec<u8>) -> Option<ObjectTable> {
    let kinds = kind_list(kinds);
    let strings = String::from_utf8(strings).ok()?;
    // Every object takes at least three bytes.
    let mut rows = Vec::with_capacity(1 + objects.len() / 3);
    rows.push(Row::default());
    let mut at = 0usize;
    let mut next = |len: u64| -> Option<Span> {
        let start = at;
        at = at.checked_add(usize::try_from(len).ok()?)?;
        (at <= strings.len()).then_some(Span::new(start, at)?)
    };
    objects.each(|objects| {
        let r = Record::take(objects, &kinds)?;
        let name = next(r.name)?;
        // The device is the name's prefix or text of its own, the path
        // its suffix or text of its own.
        let mut inner = |len: Option<u64>, inside: bool, prefix: bool| -> Option<Option<Span>> {
            let Some(len) = len else {
                return Some(None);
            };
            if !inside {
                return next(len).map(Some);
            }
            let len = usize::try_from(len).ok()?;
            if len > name.end() - name.start() {
                return None;
            }
            let span = if prefix {
                Span::new(name.start(), name.start() + len)
            } else {
                Span::new(name.end() - len, name.end())
            };
            span.map(Some)
        };
        let device = inner(r.device, r.flags & DEVICE_IN_NAME != 0, true)?;
        let path = inner(r.path, r.flags & PATH_IN_NAME != 0, false)?;
        rows.push(Row::new(r.kind, r.partition, r.size, name, device, path));
        Some(())
    })?;
    // The spans made above lie within the arena; in ASCII text (most
    // names) every byte starts a character, so there is nothing to check.
    let ascii = strings.is_ascii();
    let table = ObjectTable::from_parts(strings, rows);
    if !ascii {
        table.check().ok()?;
    }
    Some(table)
}

/// Where [`load`] and [`load_layout`] put the layout.
pub trait Segments {
    /// Told first: how many segments there are at most (every one takes
    /// three bytes or more), to make room for them at once.
    fn reserve(&mut self, at_most: usize);
    /// Each segment, in disk order.
    fn push(&mut self, start: u64, end: u64, owner: u32);
}

/// Unpacks the layout into `out`.
fn decode_into(layout: impl Records, out: &mut impl Segments) -> Option<()> {
    out.reserve(layout.len() / 3);
    decode_segments(layout, |s, e, o| out.push(s, e, o))
}

/// The map's packed row, decoded, the layout into `segments`: `None` when
/// there is none or it is of no use (see the module's documentation).
pub fn load(
    conn: &Connection,
    segments: &mut impl Segments,
) -> crate::error::Result<Option<ObjectTable>> {
    Ok(packed_row(conn).and_then(|(kinds, rowid)| {
        decode_into(BlobRecords::open(conn, "segments", rowid)?, segments)?;
        objects_of(conn, &kinds, rowid)
    }))
}

/// The layout (into `segments`, as [`load`] puts it) and every object's kind (see
/// [`decode_kinds`]), without the names: `None` when the map has no
/// usable packed row. [`load_objects`] reads the rest.
pub fn load_layout(
    conn: &Connection,
    segments: &mut impl Segments,
) -> crate::error::Result<Option<Vec<Kind>>> {
    Ok(packed_row(conn).and_then(|(kinds, rowid)| {
        let kinds = kinds_of(&kinds, BlobRecords::open(conn, "objects", rowid)?)?;
        decode_into(BlobRecords::open(conn, "segments", rowid)?, segments)?;
        Some(kinds)
    }))
}

/// The object table of the map's packed row; `None` when it has no usable
/// one.
pub fn load_objects(conn: &Connection) -> crate::error::Result<Option<ObjectTable>> {
    Ok(packed_row(conn).and_then(|(kinds, rowid)| objects_of(conn, &kinds, rowid)))
}

/// The object table of packed row `rowid`, whose kinds are `kinds`.
fn objects_of(conn: &Connection, kinds: &str, rowid: i64) -> Option<ObjectTable> {
    let strings = read_strings(conn, rowid)?;
    decode_objects(kinds, BlobRecords::open(conn, "objects", rowid)?, strings)
}

/// The map's packed row, if there is one of the format this bmap reads
/// with blobs where it keeps them: its kinds and rowid.
fn packed_row(conn: &Connection) -> Option<(String, i64)> {
    // A map without the table (a hand-made one) or with a row of the
    // wrong types: the tables will do.
    let mut st = conn
        .prepare(
            "SELECT format, kinds, rowid FROM packed_map \
             WHERE typeof(segments) = 'blob' AND typeof(objects) = 'blob' \
             AND typeof(strings) = 'blob' LIMIT 1",
        )
        .ok()?;
    let row = st
        .query_row([], |r| {
            let format: i64 = r.get(0)?;
            Ok((format == FORMAT).then(|| (r.get::<_, String>(1), r.get::<_, i64>(2))))
        })
        .ok()??;
    Some((row.0.ok()?, row.1.ok()?))
}

/// The `strings` of `packed_map`'s row `rowid`, read straight into the
/// arena: as a column, SQLite would first copy them into a buffer of its
/// own (fresh memory, zeroed page by page) for us to copy again.
fn read_strings(conn: &Connection, rowid: i64) -> Option<Vec<u8>> {
    let blob = open_blob(conn, "strings", rowid)?;
    // Zeroed, a large buffer is fresh pages: nothing is written twice.
    let mut buf = vec![0; blob.len()];
    blob.read_at_exact(&mut buf, 0).ok()?;
    Some(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (Vec<(u64, u64, u32)>, Vec<Object<'static>>) {
        let segs = vec![(0, 512, 1), (512, 1024, 2), (4096, 8192, 3)];
        let objs = vec![
            Object {
                kind: Kind::Disk,
                name: "/dev/sda",
                device: Some("/dev/sda"),
                path: None,
                partition: None,
                size: Some(1 << 40),
            },
            Object {
                kind: Kind::File,
                name: "/dev/sda2 /etc/fstab",
                device: Some("/dev/sda2"),
                path: Some("/etc/fstab"),
                partition: Some(2),
                size: Some(u64::MAX),
            },
            Object {
                kind: Kind::Directory,
                name: "odd ☃ name",
                device: Some("/dev/other"),
                path: Some("/elsewhere"),
                partition: None,
                size: None,
            },
        ];
        (segs, objs)
    }

    #[test]
    fn round_trip() {
        let (segs, objs) = sample();
        let p = encode(segs.clone(), objs.clone()).unwrap();
        let mut got = Vec::new();
        let table = decode(
            &p.kinds,
            &p.segments,
            &p.objects,
            p.strings.clone(),
            |s, e, o| got.push((s, e, o)),
        )
        .unwrap();
        assert_eq!(got, segs);
        assert_eq!(table.len(), 4);
        assert_eq!(
            decode_kinds(&p.kinds, &p.objects),
            Some(vec![
                Kind::default(),
                Kind::Disk,
                Kind::File,
                Kind::Directory
            ])
        );
        assert_eq!(table.kinds(), decode_kinds(&p.kinds, &p.objects).unwrap());
        for (i, o) in objs.iter().enumerate() {
            let g = table.get(i as u32 + 1).unwrap();
            assert_eq!(
                (g.kind, g.name, g.device, g.path, g.partition, g.size),
                (o.kind, o.name, o.device, o.path, o.partition, o.size)
            );
        }
        // The common file stores its text once.
        assert_eq!(
            p.strings.len(),
            "/dev/sda/dev/sda2 /etc/fstabodd ☃ name/dev/other/elsewhere".len()
        );
    }

    #[test]
    fn bad_layouts_are_not_packed() {
        let (_, objs) = sample();
        assert!(encode([(0, 10, 1), (5, 20, 2)], objs.clone()).is_none());
        assert!(encode([(10, 10, 1)], objs).is_none());
    }

    #[test]
    fn every_truncation_and_mutation_is_refused_or_decodes() {
        let (segs, objs) = sample();
        let p = encode(segs, objs).unwrap();
        // Whenever the objects decode, the kinds read without their text
        // are theirs.
        let ok = |k: &str, s: &[u8], o: &[u8], t: &[u8]| {
            let table = decode(k, s, o, t.to_vec(), |s, e, _| assert!(s < e));
            if let Some(table) = &table {
                assert_eq!(decode_kinds(k, o).as_ref(), Some(&table.kinds()));
            }
            table.is_some()
        };
        assert!(ok(&p.kinds, &p.segments, &p.objects, &p.strings));
        for cut in 0..p.objects.len() {
            // Cut inside an object: refused; at an object's end: fewer objects.
            let _ = ok(&p.kinds, &p.segments, &p.objects[..cut], &p.strings);
        }
        for cut in 0..p.strings.len() {
            assert!(!ok(&p.kinds, &p.segments, &p.objects, &p.strings[..cut]));
        }
        for i in 0..p.objects.len() {
            for b in [0u8, 1, 0x7f, 0x80, 0xff] {
                let mut o = p.objects.clone();
                o[i] = b;
                let _ = ok(&p.kinds, &p.segments, &o, &p.strings);
            }
        }
        // A snowman cut in half is not text.
        let mut t = p.strings.clone();
        let at = t.windows(3).position(|w| w == "☃".as_bytes()).unwrap();
        t[at + 1] = b' ';
        assert!(!ok(&p.kinds, &p.segments, &p.objects, &t));
        // Overflowing integers.
        assert!(!ok(&p.kinds, &[0xff; 11], &p.objects, &p.strings));
        assert!(!ok(
            &p.kinds,
            &[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x02, 1, 1],
            &p.objects,
            &p.strings
        ));
        // An empty segment.
        assert!(!ok(&p.kinds, &[0, 0, 1], &p.objects, &p.strings));
    }
}
