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

use rusqlite::{Connection, OptionalExtension};

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
    mut segments: &[u8],
    mut objects: &[u8],
    strings: Vec<u8>,
    mut segment: impl FnMut(u64, u64, u32),
) -> Option<ObjectTable> {
    let mut prev_end = 0u64;
    while !segments.is_empty() {
        let start = prev_end.checked_add(take(&mut segments)?)?;
        let len = take(&mut segments)?;
        let end = start.checked_add(len).filter(|_| len > 0)?;
        let owner = u32::try_from(take(&mut segments)?).ok()?;
        segment(start, end, owner);
        prev_end = end;
    }
    let kinds: Vec<Kind> = kinds
        .split(',')
        .map(|k| Kind::parse(k).unwrap_or(Kind::Unknown))
        .collect();
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
    while !objects.is_empty() {
        let kind = *kinds.get(usize::from(take_byte(&mut objects)?))?;
        let flags = take_byte(&mut objects)?;
        let has = |f: u8| flags & f != 0;
        let partition = if has(PARTITION) {
            Some(u32::try_from(take(&mut objects)?).ok()?)
        } else {
            None
        };
        let size = if has(SIZE) {
            Some(take(&mut objects)?)
        } else {
            None
        };
        let name = next(take(&mut objects)?)?;
        let mut inner = |present: bool, inside: bool, prefix: bool| -> Option<Option<Span>> {
            if !present {
                return Some(None);
            }
            let len = usize::try_from(take(&mut objects)?).ok()?;
            if !inside {
                return next(len as u64).map(Some);
            }
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
        let device = inner(has(DEVICE), has(DEVICE_IN_NAME), true)?;
        let path = inner(has(PATH), has(PATH_IN_NAME), false)?;
        rows.push(Row::new(kind, partition, size, name, device, path));
    }
    // The spans made above lie within the arena; in ASCII text (most
    // names) every byte starts a character, so there is nothing to check.
    let ascii = strings.is_ascii();
    let table = ObjectTable::from_parts(strings, rows);
    if !ascii {
        table.check().ok()?;
    }
    Some(table)
}

/// The map's packed row, decoded: `None` when there is none or it is of
/// no use (see the module's documentation). The layout goes to the
/// callback `segments` returns, told first how many segments there are at
/// most (every one takes three bytes or more), to make room for them.
pub fn load<F: FnMut(u64, u64, u32)>(
    conn: &Connection,
    segments: impl FnOnce(usize) -> F,
) -> crate::error::Result<Option<ObjectTable>> {
    // The strings, most of the row, are read by themselves, straight into
    // the arena: as a column, SQLite would first copy them into a buffer
    // of its own (fresh memory, zeroed page by page) for us to copy again.
    let mut st = match conn.prepare(
        "SELECT format, kinds, segments, objects, typeof(strings) = 'blob', rowid \
         FROM packed_map LIMIT 1",
    ) {
        Ok(st) => st,
        // A map without the table (a hand-made one): the tables will do.
        Err(_) => return Ok(None),
    };
    let row = st
        .query_row([], |r| {
            let format: i64 = r.get(0)?;
            if format != FORMAT || !r.get::<_, bool>(4)? {
                return Ok(None);
            }
            let Some(strings) = read_strings(conn, r.get(5)?) else {
                return Ok(None);
            };
            let kinds: String = r.get(1)?;
            let blob = |i| r.get_ref(i).and_then(|v| Ok(v.as_blob()?));
            let layout = blob(2)?;
            let segment = segments(layout.len() / 3);
            Ok(Some(decode(&kinds, layout, blob(3)?, strings, segment)))
        })
        .optional();
    // A row of the wrong types is of no use either.
    Ok(row.ok().flatten().flatten().flatten())
}

/// The `strings` of `packed_map`'s row `rowid`.
fn read_strings(conn: &Connection, rowid: i64) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut blob = conn
        .blob_open(
            rusqlite::DatabaseName::Main,
            "packed_map",
            "strings",
            rowid,
            true,
        )
        .ok()?;
    // Zeroed, a large buffer is fresh pages: nothing is written twice.
    let mut buf = vec![0; blob.len()];
    blob.read_exact(&mut buf).ok()?;
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
        let ok = |k: &str, s: &[u8], o: &[u8], t: &[u8]| {
            decode(k, s, o, t.to_vec(), |s, e, _| assert!(s < e)).is_some()
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
