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
//! Format 2 (integers little-endian, of fixed width: a record is a few
//! loads, where format 1's LEB128 took a loop per integer and the map of
//! the replay benchmark's 200,000 files spent 122 M instructions
//! decoding, 7% of the whole summary's; 42 M now):
//! - `kinds`: the kind names, comma-separated; an object's kind is a byte
//!   indexing this list, so the blob does not depend on the order of
//!   [`Kind::ALL`].
//! - `segments`, per segment in disk order, [`SEGMENT`] bytes: its start
//!   and end (u64, end past start, start not before the previous end) and
//!   its owner (u32).
//! - `objects`, for N objects, ids 1 to N: first the N kind bytes, so that
//!   attributing, which needs only the kinds, reads them alone; then N
//!   records of [`OBJECT`] bytes: a flags byte (`PARTITION`, `SIZE`,
//!   `DEVICE`, `PATH`, `DEVICE_IN_NAME`, `PATH_IN_NAME`), the partition
//!   (u32) and the size (u64), 0 where the flag is not set, and the
//!   lengths (u32) of the name, the device and the path (0 where not
//!   set). The device's length, with `DEVICE_IN_NAME`, is that of the
//!   name's prefix it equals, the path's, with `PATH_IN_NAME`, that of the
//!   name's suffix, so that the usual `/dev/sda2 /etc/fstab` stores its
//!   text once.
//! - `strings`: the UTF-8 text of every name, device and path not in a
//!   name, in the order `objects` reads them.

use rusqlite::Connection;

use super::objects::{ObjectTable, Row, Span};
use crate::map::Kind;

/// The format this bmap writes and reads. A map of another (an older
/// bmap's) is read from its tables until `bmap index` writes it again.
pub const FORMAT: i64 = 2;

const PARTITION: u8 = 1;
const SIZE: u8 = 2;
const DEVICE: u8 = 4;
const PATH: u8 = 8;
const DEVICE_IN_NAME: u8 = 16;
const PATH_IN_NAME: u8 = 32;

/// Bytes of a segment's record.
pub const SEGMENT: usize = 20;

/// Bytes of an object's record, after the kind bytes.
pub const OBJECT: usize = 25;

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

/// Packs a layout (segments as `(start, end, owner)`, sorted, disjoint,
/// none empty) and the objects from id 1 on; `None` if the layout is not
/// like that, or a name is longer than a record can say (4 GiB).
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
        p.segments.extend_from_slice(&start.to_le_bytes());
        p.segments.extend_from_slice(&end.to_le_bytes());
        p.segments.extend_from_slice(&owner.to_le_bytes());
        prev_end = end;
    }
    let mut records = Vec::new();
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
        let length = |t: Option<&str>| u32::try_from(t.map_or(0, str::len)).ok();
        p.objects.push(u8::try_from(kind).ok()?);
        records.push(flags);
        records.extend_from_slice(&o.partition.unwrap_or(0).to_le_bytes());
        records.extend_from_slice(&o.size.unwrap_or(0).to_le_bytes());
        for text in [Some(o.name), o.device, o.path] {
            records.extend_from_slice(&length(text)?.to_le_bytes());
        }
        p.strings.extend_from_slice(o.name.as_bytes());
        for (text, inside) in [(o.device, device_in_name), (o.path, path_in_name)] {
            if let (Some(t), false) = (text, inside) {
                p.strings.extend_from_slice(t.as_bytes());
            }
        }
    }
    p.objects.extend_from_slice(&records);
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

/// A blob to decode: in memory, or one of the map's, read through
/// SQLite's incremental blob I/O.
trait Source {
    /// How many bytes there are.
    fn len(&self) -> usize;
    /// Fills `buf` from byte `at` on; `None` past the end or on an error.
    fn read_at(&self, buf: &mut [u8], at: usize) -> Option<()>;
}

impl Source for [u8] {
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }

    fn read_at(&self, buf: &mut [u8], at: usize) -> Option<()> {
        let end = at.checked_add(buf.len())?;
        buf.copy_from_slice(self.get(at..end)?);
        Some(())
    }
}

impl<T: Source + ?Sized> Source for &T {
    fn len(&self) -> usize {
        (**self).len()
    }

    fn read_at(&self, buf: &mut [u8], at: usize) -> Option<()> {
        (**self).read_at(buf, at)
    }
}

/// A blob column of the packed row. Read as a column, a blob is first
/// copied whole into a buffer of SQLite's, megabytes of fresh pages that
/// the kernel faults in and zeroes one by one, to be read once: the
/// summary of the bench's 1M trace took 4,300 page faults that way, 3,500
/// reading blobs a piece at a time.
struct Blob<'conn>(rusqlite::blob::Blob<'conn>);

impl Source for Blob<'_> {
    fn len(&self) -> usize {
        self.0.len()
    }

    fn read_at(&self, buf: &mut [u8], at: usize) -> Option<()> {
        self.0.read_at_exact(buf, at).ok()
    }
}

/// Bytes of a blob read at a time.
const PIECE: usize = 64 << 10;

/// Calls `record` on each of the `count` records of `R` bytes that start
/// at byte `from` of `src`, read a piece at a time into one small buffer;
/// `None` if they are not there, or as soon as `record` says one is out
/// of place.
fn each_record<const R: usize>(
    src: &impl Source,
    from: usize,
    count: usize,
    mut record: impl FnMut(&[u8; R]) -> Option<()>,
) -> Option<()> {
    let per_piece = PIECE / R;
    let mut buf = vec![0u8; per_piece * R];
    let mut done = 0;
    while done < count {
        let n = per_piece.min(count - done);
        let piece = &mut buf[..n * R];
        src.read_at(piece, from.checked_add(done.checked_mul(R)?)?)?;
        let (records, _) = piece.as_chunks::<R>();
        for r in records {
            record(r)?;
        }
        done += n;
    }
    Some(())
}

/// Blob `column` of `packed_map`'s row `rowid`, opened to be read.
fn open_blob<'conn>(conn: &'conn Connection, column: &str, rowid: i64) -> Option<Blob<'conn>> {
    conn.blob_open(
        rusqlite::DatabaseName::Main,
        "packed_map",
        column,
        rowid,
        true,
    )
    .ok()
    .map(Blob)
}

fn u32_at(r: &[u8], at: usize) -> u32 {
    let mut b = [0; 4];
    b.copy_from_slice(&r[at..at + 4]);
    u32::from_le_bytes(b)
}

fn u64_at(r: &[u8], at: usize) -> u64 {
    let mut b = [0; 8];
    b.copy_from_slice(&r[at..at + 8]);
    u64::from_le_bytes(b)
}

/// Unpacks the layout, calling `segment(start, end, owner)` in disk order;
/// `None` if anything is out of place.
fn decode_segments(segments: impl Source, mut segment: impl FnMut(u64, u64, u32)) -> Option<()> {
    let len = segments.len();
    if !len.is_multiple_of(SEGMENT) {
        return None;
    }
    let mut prev_end = 0u64;
    each_record::<SEGMENT>(&segments, 0, len / SEGMENT, |r| {
        let (start, end, owner) = (u64_at(r, 0), u64_at(r, 8), u32_at(r, 16));
        if start < prev_end || end <= start {
            return None;
        }
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

/// How many objects an `objects` blob of `len` bytes holds; `None` if no
/// whole number do.
fn object_count(len: usize) -> Option<usize> {
    len.is_multiple_of(1 + OBJECT).then_some(len / (1 + OBJECT))
}

/// Every object's kind, indexed by id (0 unused, as in the object table),
/// read from the `objects` blob without its text: what attributing needs,
/// before the names are read. `None` if the blob is out of place.
pub fn decode_kinds(kinds: &str, objects: &[u8]) -> Option<Vec<Kind>> {
    kinds_of(kinds, objects)
}

fn kinds_of(kinds: &str, objects: impl Source) -> Option<Vec<Kind>> {
    let list = kind_list(kinds);
    let n = object_count(objects.len())?;
    let mut bytes = vec![0u8; n];
    objects.read_at(&mut bytes, 0)?;
    let mut out = Vec::with_capacity(n + 1);
    // The object table's unused row 0 is a default one.
    out.push(Kind::default());
    for &b in &bytes {
        out.push(*list.get(usize::from(b))?);
    }
    Some(out)
}

/// The object table the `objects` blob and the `strings` arena spell;
/// `None` if anything is out of place.
fn decode_objects(kinds: &str, objects: impl Source, strings: Vec<u8>) -> Option<ObjectTable> {
    let kinds = kinds_of(kinds, &objects)?;
    let n = kinds.len() - 1;
    let strings = String::from_utf8(strings).ok()?;
    let mut rows = Vec::with_capacity(n + 1);
    rows.push(Row::default());
    let mut at = 0usize;
    let mut next = |len: u32| -> Option<Span> {
        let start = at;
        at = at.checked_add(usize::try_from(len).ok()?)?;
        (at <= strings.len()).then_some(Span::new(start, at)?)
    };
    each_record::<OBJECT>(&objects, n, n, |r| {
        let flags = r[0];
        let has = |f: u8| flags & f != 0;
        let kind = *kinds.get(rows.len())?;
        let name = next(u32_at(r, 13))?;
        // The device is the name's prefix or text of its own, the path
        // its suffix or text of its own.
        let mut inner = |len: u32, present: bool, inside: bool, prefix: bool| {
            if !present {
                return Some(None);
            }
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
        let device = inner(u32_at(r, 17), has(DEVICE), has(DEVICE_IN_NAME), true)?;
        let path = inner(u32_at(r, 21), has(PATH), has(PATH_IN_NAME), false)?;
        rows.push(Row::new(
            kind,
            has(PARTITION).then(|| u32_at(r, 1)),
            has(SIZE).then(|| u64_at(r, 5)),
            name,
            device,
            path,
        ));
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
    /// Told first: how many segments there are, to make room for them at
    /// once.
    fn reserve(&mut self, count: usize);
    /// Each segment, in disk order.
    fn push(&mut self, start: u64, end: u64, owner: u32);
}

/// Unpacks the layout into `out`.
fn decode_into(layout: impl Source, out: &mut impl Segments) -> Option<()> {
    out.reserve(layout.len() / SEGMENT);
    decode_segments(layout, |s, e, o| out.push(s, e, o))
}

/// The map's packed row, decoded, the layout into `segments`: `None` when
/// there is none or it is of no use (see the module's documentation).
pub fn load(
    conn: &Connection,
    segments: &mut impl Segments,
) -> crate::error::Result<Option<ObjectTable>> {
    Ok(packed_row(conn).and_then(|(kinds, rowid)| {
        decode_into(open_blob(conn, "segments", rowid)?, segments)?;
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
        let kinds = kinds_of(&kinds, open_blob(conn, "objects", rowid)?)?;
        decode_into(open_blob(conn, "segments", rowid)?, segments)?;
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
    decode_objects(kinds, open_blob(conn, "objects", rowid)?, strings)
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
    blob.read_at(&mut buf, 0)?;
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
        for cut in 1..p.objects.len() {
            // Short of a whole number of objects, refused.
            assert!(!ok(&p.kinds, &p.segments, &p.objects[..cut], &p.strings));
        }
        for cut in 1..p.segments.len() {
            let whole = cut % SEGMENT == 0;
            assert_eq!(
                ok(&p.kinds, &p.segments[..cut], &p.objects, &p.strings),
                whole
            );
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
        for i in 0..p.segments.len() {
            for b in [0u8, 1, 0x7f, 0x80, 0xff] {
                let mut s = p.segments.clone();
                s[i] = b;
                let _ = ok(&p.kinds, &s, &p.objects, &p.strings);
            }
        }
        // A kind the list does not have.
        let mut o = p.objects.clone();
        o[0] = p.kinds.split(',').count() as u8;
        assert!(!ok(&p.kinds, &p.segments, &o, &p.strings));
        // A name running past the arena.
        let mut o = p.objects.clone();
        let name_len = 3 + 13;
        o[name_len..name_len + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(!ok(&p.kinds, &p.segments, &o, &p.strings));
        // A snowman cut in half is not text.
        let mut t = p.strings.clone();
        let at = t.windows(3).position(|w| w == "☃".as_bytes()).unwrap();
        t[at + 1] = b' ';
        assert!(!ok(&p.kinds, &p.segments, &p.objects, &t));
        // An empty segment, one ending before it starts, and one before
        // the end of the one before.
        let seg = |start: u64, end: u64| {
            let mut v = start.to_le_bytes().to_vec();
            v.extend_from_slice(&end.to_le_bytes());
            v.extend_from_slice(&1u32.to_le_bytes());
            v
        };
        assert!(ok(&p.kinds, &seg(0, 1), &p.objects, &p.strings));
        assert!(!ok(&p.kinds, &seg(5, 5), &p.objects, &p.strings));
        assert!(!ok(&p.kinds, &seg(6, 5), &p.objects, &p.strings));
        let overlapping = [seg(0, 10), seg(9, 20)].concat();
        assert!(!ok(&p.kinds, &overlapping, &p.objects, &p.strings));
    }

    #[test]
    fn blobs_are_read_across_pieces() {
        // More segments and objects than one piece holds.
        let segs: Vec<(u64, u64, u32)> = (0..10_000u64).map(|i| (i * 10, i * 10 + 7, 1)).collect();
        let names: Vec<String> = (0..10_000).map(|i| format!("/dev/sda /f{i}")).collect();
        let objs: Vec<Object<'_>> = names
            .iter()
            .map(|n| Object {
                kind: Kind::File,
                name: n,
                device: Some("/dev/sda"),
                path: Some(&n[9..]),
                partition: None,
                size: Some(n.len() as u64),
            })
            .collect();
        let p = encode(segs.clone(), objs).unwrap();
        assert!(p.segments.len() > PIECE && p.objects.len() > PIECE);
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
        for (i, n) in names.iter().enumerate() {
            let o = table.get(i as u32 + 1).unwrap();
            assert_eq!(
                (o.name, o.path, o.size),
                (n.as_str(), Some(&n[9..]), Some(n.len() as u64))
            );
        }
    }
}
