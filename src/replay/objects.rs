//! The object table as replay prints it: each object's kind, names and
//! size, indexed by `objects.id`. Every string lives in one arena, so a
//! table of millions of objects is a few allocations, not millions.

use rusqlite::Connection;

use crate::error::{Error, Result};
use crate::map::Kind;
use crate::prefetch::prefetch;

/// What the replay needs to know about one object.
#[derive(Debug, Clone, Copy)]
pub struct ObjectInfo<'a> {
    pub kind: Kind,
    /// Display name: `/dev/sda2 /etc/fstab`.
    pub name: &'a str,
    pub device: Option<&'a str>,
    pub path: Option<&'a str>,
    pub partition: Option<u32>,
    pub size: Option<u64>,
}

impl<'a> ObjectInfo<'a> {
    /// The name without its device prefix or a leading repeat of its kind:
    /// `/etc/fstab`, `group 3`.
    pub fn label(&self) -> &'a str {
        let mut label = self.name;
        if let Some(d) = self.device {
            label = label.strip_prefix(d).unwrap_or(label).trim_start();
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

/// A byte range of the arena, in 32-bit offsets: a row stays 40 bytes,
/// which for millions of objects is memory and cache misses saved. An
/// arena that would pass 4 GiB is refused as it is built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Span {
    start: u32,
    end: u32,
}

impl Span {
    /// `None` past 4 GiB.
    pub(crate) fn new(start: usize, end: usize) -> Option<Span> {
        Some(Span {
            start: u32::try_from(start).ok()?,
            end: u32::try_from(end).ok()?,
        })
    }

    pub(crate) fn start(self) -> usize {
        self.start as usize
    }

    pub(crate) fn end(self) -> usize {
        self.end as usize
    }
}

/// One object, its strings as spans of the arena. Flags stand for the
/// `Option`s, which would double its size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Row {
    size: u64,
    name: Span,
    device: Span,
    path: Span,
    partition: u32,
    kind: Kind,
    flags: u8,
}

const HAS_SIZE: u8 = 1;
const HAS_PARTITION: u8 = 2;
const HAS_DEVICE: u8 = 4;
const HAS_PATH: u8 = 8;

const _: () = assert!(std::mem::size_of::<Row>() == 40);

impl Row {
    pub(crate) fn new(
        kind: Kind,
        partition: Option<u32>,
        size: Option<u64>,
        name: Span,
        device: Option<Span>,
        path: Option<Span>,
    ) -> Row {
        let flag = |present: bool, f: u8| if present { f } else { 0 };
        Row {
            size: size.unwrap_or(0),
            name,
            device: device.unwrap_or_default(),
            path: path.unwrap_or_default(),
            partition: partition.unwrap_or(0),
            kind,
            flags: flag(size.is_some(), HAS_SIZE)
                | flag(partition.is_some(), HAS_PARTITION)
                | flag(device.is_some(), HAS_DEVICE)
                | flag(path.is_some(), HAS_PATH),
        }
    }

    fn has(&self, f: u8) -> bool {
        self.flags & f != 0
    }

    fn size(&self) -> Option<u64> {
        self.has(HAS_SIZE).then_some(self.size)
    }

    fn partition(&self) -> Option<u32> {
        self.has(HAS_PARTITION).then_some(self.partition)
    }

    fn device(&self) -> Option<Span> {
        self.has(HAS_DEVICE).then_some(self.device)
    }

    fn path(&self) -> Option<Span> {
        self.has(HAS_PATH).then_some(self.path)
    }
}

/// What the summary prints of an object after its numbers.
pub(crate) struct LineParts<'a> {
    pub kind: Kind,
    pub size: Option<u64>,
    pub text: LineText<'a>,
}

/// The device, a space and the path (the name where the object has no
/// path; nothing before the space where it has no device).
pub(crate) enum LineText<'a> {
    /// All three, as they stand in the name.
    Whole(&'a [u8]),
    /// The device and the path, to be joined by a space.
    Parts(&'a [u8], &'a [u8]),
}

/// Objects indexed by `objects.id` (index 0 is unused, as the ids start
/// at 1).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ObjectTable {
    strings: String,
    rows: Vec<Row>,
}

/// Ids are dense (1, 2, 3…); a hand-edited map with a huge id must not
/// make us allocate for it. Rows are read in id order, so the ids kept
/// depend only on the ids before them: the kinds and the object table
/// keep the same ones.
pub(crate) fn usable_id(id: i64, len: usize) -> Option<usize> {
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
pub(crate) fn cached_kind_at(
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

/// Text in column `i`; anything else is rusqlite's error for reading it as
/// a `String`, as before the arena.
fn str_at<'r>(r: &'r rusqlite::Row<'_>, i: usize) -> rusqlite::Result<&'r str> {
    if let rusqlite::types::ValueRef::Text(t) = r.get_ref(i)? {
        if let Ok(s) = std::str::from_utf8(t) {
            return Ok(s);
        }
    }
    r.get::<_, String>(i)?;
    Err(rusqlite::Error::InvalidColumnType(
        i,
        String::new(),
        rusqlite::types::Type::Text,
    ))
}

/// [`str_at`], or `None` for NULL.
fn opt_str_at<'r>(r: &'r rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Option<&'r str>> {
    match r.get_ref(i)? {
        rusqlite::types::ValueRef::Null => Ok(None),
        _ => str_at(r, i).map(Some),
    }
}

impl ObjectTable {
    /// Builds a table from its parts; see [`crate::replay::packed`].
    pub(crate) fn from_parts(strings: String, rows: Vec<Row>) -> Self {
        ObjectTable { strings, rows }
    }

    /// Reads the `objects` table.
    pub fn load(conn: &Connection) -> Result<ObjectTable> {
        let mut table = ObjectTable::default();
        let mut st = conn.prepare(
            "SELECT id, kind, name, device, path, partition, size FROM objects ORDER BY id",
        )?;
        let mut rows = st.query([])?;
        // Most objects of a filesystem share its device name, and kinds
        // repeat.
        let mut device: Option<Span> = None;
        let mut last: (Vec<u8>, Kind) = (Vec::new(), Kind::Unknown);
        while let Some(r) = rows.next()? {
            let Some(id) = usable_id(r.get(0)?, table.rows.len()) else {
                continue;
            };
            if table.rows.len() <= id {
                table.rows.resize(id + 1, Row::default());
            }
            let kind = cached_kind_at(r, 1, &mut last)?;
            let name = table.push(str_at(r, 2)?)?;
            let dev = match opt_str_at(r, 3)? {
                None => None,
                Some(d) => match device {
                    Some(s) if table.strings.get(s.start()..s.end()) == Some(d) => device,
                    _ => {
                        device = Some(table.push(d)?);
                        device
                    }
                },
            };
            let path = opt_str_at(r, 4)?.map(|p| table.push(p)).transpose()?;
            table.rows[id] = Row::new(
                kind,
                r.get(5)?,
                r.get::<_, Option<i64>>(6)?
                    .and_then(|s| u64::try_from(s).ok()),
                name,
                dev,
                path,
            );
        }
        Ok(table)
    }

    fn push(&mut self, s: &str) -> Result<Span> {
        let start = self.strings.len();
        self.strings.push_str(s);
        Span::new(start, self.strings.len())
            .ok_or_else(|| Error::Map("more than 4 GiB of object names".to_string()))
    }

    fn text(&self, s: Span) -> &str {
        self.strings.get(s.start()..s.end()).unwrap_or("")
    }

    /// The object `id`; `None` for an id the map does not have.
    pub fn get(&self, id: u32) -> Option<ObjectInfo<'_>> {
        let r = self.rows.get(id as usize)?;
        Some(ObjectInfo {
            kind: r.kind,
            name: self.text(r.name),
            device: r.device().map(|s| self.text(s)),
            path: r.path().map(|s| self.text(s)),
            partition: r.partition(),
            size: r.size(),
        })
    }

    /// What a summary line prints of object `id` (see [`LineParts`]).
    pub(crate) fn line_parts(&self, id: u32) -> Option<LineParts<'_>> {
        let r = self.rows.get(id as usize)?;
        let bytes = self.strings.as_bytes();
        // Bytes, not `str`s: the line is bytes, and slicing a `str`
        // checks both ends for a character's start.
        let span = |s: Span| bytes.get(s.start()..s.end()).unwrap_or_default();
        let path = r.path().unwrap_or(r.name);
        let text = match r.device() {
            // The usual name is the device, a space and the path: one
            // copy rather than three.
            Some(d)
                if d.start == r.name.start
                    && path.end == r.name.end
                    && d.end.checked_add(1) == Some(path.start)
                    && bytes.get(d.end()) == Some(&b' ') =>
            {
                LineText::Whole(span(r.name))
            }
            d => LineText::Parts(d.map_or(&[][..], span), span(path)),
        };
        Some(LineParts {
            kind: r.kind,
            size: r.size(),
            text,
        })
    }

    /// Starts fetching object `id`'s row: both of its ends, as a 40-byte
    /// row straddles two cache lines half the time.
    pub(crate) fn prefetch_row(&self, id: u32) {
        if let Some(r) = self.rows.get(id as usize) {
            prefetch(r);
            // The line of its end, if another: where the next row starts.
            let in_line = (r as *const Row as usize) % 64;
            if in_line + std::mem::size_of::<Row>() > 64 {
                if let Some(next) = self.rows.get(id as usize + 1) {
                    prefetch(next);
                }
            }
        }
    }

    /// Starts fetching the bytes at both ends of object `id`'s name, whose
    /// `str` boundaries [`get`](Self::get) checks (the device and the path
    /// are mostly the name's prefix and suffix); its row is best fetched
    /// first (see [`ObjectTable::prefetch_row`]).
    pub(crate) fn prefetch_name(&self, id: u32) {
        if let Some(r) = self.rows.get(id as usize) {
            let bytes = self.strings.as_bytes();
            for i in [r.name.start(), r.name.end()] {
                if let Some(b) = bytes.get(i) {
                    prefetch(b);
                }
            }
        }
    }

    /// One more than the largest object id.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Every object's kind, indexed by id.
    pub fn kinds(&self) -> Vec<Kind> {
        self.rows.iter().map(|r| r.kind).collect()
    }

    /// Checks that every span is a whole `str` of the arena.
    pub(crate) fn check(&self) -> Result<()> {
        // In ASCII text (most names) every byte starts a character.
        let ascii = self.strings.is_ascii();
        let ok = |s: Span| {
            s.start <= s.end
                && s.end() <= self.strings.len()
                && (ascii
                    || (self.strings.is_char_boundary(s.start())
                        && self.strings.is_char_boundary(s.end())))
        };
        for (id, r) in self.rows.iter().enumerate() {
            if !(ok(r.name) && r.device().is_none_or(ok) && r.path().is_none_or(ok)) {
                return Err(Error::Map(format!(
                    "packed object {id}: a name out of range"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info<'a>(kind: Kind, name: &'a str, device: &'a str) -> ObjectInfo<'a> {
        ObjectInfo {
            kind,
            name,
            device: Some(device),
            path: None,
            partition: None,
            size: None,
        }
    }

    #[test]
    fn labels() {
        let o = info(
            Kind::InodeTable,
            "/dev/sda2 inode-table group 3",
            "/dev/sda2",
        );
        assert_eq!(o.label(), "group 3");
        assert_eq!(o.code(), "inode-table");
        let f = info(Kind::File, "/dev/sda2 /etc/fstab", "/dev/sda2");
        assert_eq!(f.label(), "/etc/fstab");
        assert_eq!(f.code(), "f");
        let g = info(Kind::GptHeader, "/dev/sda GPT header", "/dev/sda");
        assert_eq!(g.label(), "");
    }
}
