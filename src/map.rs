//! The map model: objects in a containment tree, the extents that tie them
//! to absolute byte ranges of the image, and the disjoint layout derived
//! from them.
//!
//! Walkers only ever add objects and extents; the layout is computed once at
//! the end by a sweep over all extent boundaries, so the rule "the most
//! specific object owns a byte" lives in exactly one place ([`Kind::rank`]).

use std::cmp::Reverse;
use std::collections::BTreeSet;
use std::ops::Range;

/// What an object is. Stored as text in the map; the strings are part of the
/// public SQL surface, so they are extended, never renamed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Disk,
    Mbr,
    Ebr,
    GptHeader,
    GptEntries,
    Partition,
    Unpartitioned,
    Filesystem,
    BootBlock,
    Superblock,
    SuperblockBackup,
    GroupDescriptors,
    ReservedGdt,
    BlockBitmap,
    InodeBitmap,
    InodeTable,
    Journal,
    Mmp,
    SpecialInode,
    Free,
    Directory,
    File,
    Symlink,
    ExtentBlock,
    IndirectBlock,
    XattrBlock,
    #[default]
    Unknown,
}

impl Kind {
    /// Every kind, for documentation and tests.
    pub const ALL: [Kind; 27] = [
        Kind::Disk,
        Kind::Mbr,
        Kind::Ebr,
        Kind::GptHeader,
        Kind::GptEntries,
        Kind::Partition,
        Kind::Unpartitioned,
        Kind::Filesystem,
        Kind::BootBlock,
        Kind::Superblock,
        Kind::SuperblockBackup,
        Kind::GroupDescriptors,
        Kind::ReservedGdt,
        Kind::BlockBitmap,
        Kind::InodeBitmap,
        Kind::InodeTable,
        Kind::Journal,
        Kind::Mmp,
        Kind::SpecialInode,
        Kind::Free,
        Kind::Directory,
        Kind::File,
        Kind::Symlink,
        Kind::ExtentBlock,
        Kind::IndirectBlock,
        Kind::XattrBlock,
        Kind::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Disk => "disk",
            Kind::Mbr => "mbr",
            Kind::Ebr => "ebr",
            Kind::GptHeader => "gpt-header",
            Kind::GptEntries => "gpt-entries",
            Kind::Partition => "partition",
            Kind::Unpartitioned => "unpartitioned",
            Kind::Filesystem => "filesystem",
            Kind::BootBlock => "boot-block",
            Kind::Superblock => "superblock",
            Kind::SuperblockBackup => "superblock-backup",
            Kind::GroupDescriptors => "group-descriptors",
            Kind::ReservedGdt => "reserved-gdt",
            Kind::BlockBitmap => "block-bitmap",
            Kind::InodeBitmap => "inode-bitmap",
            Kind::InodeTable => "inode-table",
            Kind::Journal => "journal",
            Kind::Mmp => "mmp",
            Kind::SpecialInode => "special-inode",
            Kind::Free => "free",
            Kind::Directory => "directory",
            Kind::File => "file",
            Kind::Symlink => "symlink",
            Kind::ExtentBlock => "extent-block",
            Kind::IndirectBlock => "indirect-block",
            Kind::XattrBlock => "xattr-block",
            Kind::Unknown => "unknown",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// virt-bmap's one-letter type, for the kinds it knew.
    pub fn virt_bmap_letter(self) -> Option<char> {
        match self {
            Kind::Disk => Some('v'),
            Kind::Partition => Some('p'),
            Kind::Directory => Some('d'),
            Kind::File | Kind::Symlink => Some('f'),
            _ => None,
        }
    }

    /// How specific an object of this kind is when several cover one byte:
    /// file data beats tree blocks beats metadata beats free space beats the
    /// filesystem beats partitions beats the disk. Only corrupt images make
    /// objects of the same tier overlap.
    pub fn rank(self) -> u8 {
        match self {
            Kind::Disk => 0,
            Kind::Partition | Kind::Unpartitioned => 1,
            Kind::Mbr | Kind::Ebr | Kind::GptHeader | Kind::GptEntries => 2,
            Kind::Filesystem => 3,
            Kind::Free | Kind::Unknown => 4,
            Kind::BootBlock
            | Kind::Superblock
            | Kind::SuperblockBackup
            | Kind::GroupDescriptors
            | Kind::ReservedGdt
            | Kind::BlockBitmap
            | Kind::InodeBitmap
            | Kind::InodeTable
            | Kind::Mmp => 5,
            Kind::ExtentBlock | Kind::IndirectBlock | Kind::XattrBlock => 6,
            Kind::Journal | Kind::SpecialInode | Kind::Directory | Kind::File | Kind::Symlink => 7,
        }
    }

    /// True for kinds whose data extents appear in `file_extents`.
    pub fn is_file_like(self) -> bool {
        matches!(self, Kind::File | Kind::Directory | Kind::Symlink)
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Index of an object in a [`MapBuilder`]; becomes the `objects.id` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId(pub u32);

/// Extent flags (bit set stored in `extents.flags`).
pub mod flags {
    /// Allocated but unwritten (ext4 uninitialised extent): reads as zeros.
    pub const UNWRITTEN: u32 = 1;
}

/// Object flags (bit set stored in `objects.flags`).
pub mod object_flags {
    /// The file's data lives inside its inode: it has no extents.
    pub const INLINE_DATA: u32 = 1;
    /// A fast symlink: the target lives inside the inode.
    pub const FAST_SYMLINK: u32 = 2;
    /// A hashed-tree (htree) directory.
    pub const HTREE: u32 = 4;
    /// Found in the inode table but not reachable from the root directory.
    pub const UNLINKED: u32 = 8;
}

/// Something that lives in the image.
#[derive(Debug, Clone, Default)]
pub struct Object {
    pub parent: Option<ObjectId>,
    pub kind: Kind,
    /// Display name, unique enough to read in a log: `/dev/sda1 /etc/fstab`,
    /// `/dev/sda1 inode-table group 3`.
    pub name: String,
    /// 1-based partition number of the partition it lives in.
    pub partition: Option<u32>,
    /// The guest's name of the device it lives on (`/dev/sda1`).
    pub device: Option<String>,
    pub inode: Option<u64>,
    /// Primary path inside its filesystem (first name found).
    pub path: Option<String>,
    /// Logical size in bytes (i_size for inodes).
    pub size: Option<u64>,
    pub flags: u32,
    /// Free-form detail for humans (partition type, feature list…).
    pub detail: Option<String>,
}

impl Object {
    pub fn new(kind: Kind, name: impl Into<String>) -> Self {
        Object {
            kind,
            name: name.into(),
            ..Object::default()
        }
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }
}

/// A byte range of the image that belongs to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub object: ObjectId,
    pub start: u64,
    pub end: u64,
    /// Offset of `start` inside the object (file offset for inode data).
    pub logical: u64,
    pub flags: u32,
}

/// One piece of the disjoint tiling of the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub start: u64,
    pub end: u64,
    pub object: ObjectId,
}

/// A damaged structure that did not stop the walk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub offset: Option<u64>,
    pub message: String,
}

/// A partition as the table describes it (for `bmap info`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    pub object: ObjectId,
    pub number: u32,
    pub device: String,
    pub scheme: &'static str,
    pub start: u64,
    pub end: u64,
    /// MBR type byte as hex, or the GPT type GUID.
    pub type_id: String,
    pub label: Option<String>,
    pub uuid: Option<String>,
    pub role: &'static str,
}

/// A filesystem and its counters (for `bmap info` and tests).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FilesystemInfo {
    pub object: Option<ObjectId>,
    pub partition: Option<u32>,
    pub device: String,
    pub fs_type: String,
    pub start: u64,
    pub block_size: u64,
    pub blocks_count: u64,
    pub free_blocks_sb: u64,
    pub free_bytes: u64,
    /// Allocated in a bitmap but claimed by nothing.
    pub unknown_bytes: u64,
    pub inodes_count: u64,
    pub free_inodes_sb: u64,
    pub groups: u64,
    pub uuid: String,
    pub label: String,
    pub features: String,
    pub files: u64,
    pub directories: u64,
    pub symlinks: u64,
    pub unlinked_inodes: u64,
    pub external_journal: Option<String>,
    pub state: String,
}

/// Collects what the walkers find.
#[derive(Debug, Default)]
pub struct MapBuilder {
    pub image_size: u64,
    pub objects: Vec<Object>,
    pub extents: Vec<Extent>,
    /// Names of inode objects beyond their first (`Object::path`): hard links.
    pub links: Vec<(ObjectId, String)>,
    pub warnings: Vec<Warning>,
    pub partitions: Vec<PartitionInfo>,
    pub filesystems: Vec<FilesystemInfo>,
}

/// Warnings past this many are counted but not stored one by one, so a
/// thoroughly corrupt image cannot produce a map of nothing but warnings.
const MAX_STORED_WARNINGS: usize = 10_000;

impl MapBuilder {
    pub fn new(image_size: u64) -> Self {
        MapBuilder {
            image_size,
            ..MapBuilder::default()
        }
    }

    pub fn add_object(&mut self, object: Object) -> ObjectId {
        let id = ObjectId(u32::try_from(self.objects.len()).unwrap_or(u32::MAX));
        self.objects.push(object);
        id
    }

    pub fn object(&self, id: ObjectId) -> &Object {
        &self.objects[id.0 as usize]
    }

    pub fn object_mut(&mut self, id: ObjectId) -> &mut Object {
        &mut self.objects[id.0 as usize]
    }

    /// Adds an extent, clipping it to the image. Empty ranges are dropped.
    pub fn add_extent(&mut self, object: ObjectId, range: Range<u64>, logical: u64, flags: u32) {
        let end = range.end.min(self.image_size);
        if range.start >= end {
            return;
        }
        self.extents.push(Extent {
            object,
            start: range.start,
            end,
            logical,
            flags,
        });
    }

    /// Adds ranges as consecutive pieces of one object: each extent's logical
    /// offset continues where the previous one ended.
    pub fn add_concatenated(
        &mut self,
        object: ObjectId,
        ranges: impl IntoIterator<Item = Range<u64>>,
    ) {
        let mut logical = 0;
        for r in ranges {
            let len = r.end.saturating_sub(r.start);
            self.add_extent(object, r, logical, 0);
            logical += len;
        }
    }

    /// Records a further name (hard link) of an inode object.
    pub fn add_link(&mut self, object: ObjectId, path: String) {
        self.links.push((object, path));
    }

    pub fn warn(&mut self, offset: Option<u64>, message: impl Into<String>) {
        if self.warnings.len() < MAX_STORED_WARNINGS {
            self.warnings.push(Warning {
                offset,
                message: message.into(),
            });
        } else if self.warnings.len() == MAX_STORED_WARNINGS {
            self.warnings.push(Warning {
                offset: None,
                message: "too many warnings; the rest were not recorded".into(),
            });
        }
    }

    /// Depth of an object in the containment tree (the disk is 0).
    fn depth(&self, id: ObjectId) -> u32 {
        let mut depth = 0;
        let mut cur = self.object(id).parent;
        // Parents always have smaller ids, so this terminates; the bound is
        // belt and braces.
        while let Some(p) = cur {
            depth += 1;
            if depth as usize > self.objects.len() {
                break;
            }
            cur = self.object(p).parent;
        }
        depth
    }

    /// The disjoint tiling of `[0, image_size)`: each byte goes to the
    /// covering object with the highest (rank, depth); among equals, the one
    /// added first. Bytes nothing covers belong to `fallback` (the disk).
    /// Overlaps between objects of the same rank above free space (cross-
    /// linked blocks) are reported as warnings.
    pub fn layout(&mut self, fallback: ObjectId) -> Vec<Segment> {
        // Priority of each object, computed once.
        let prio: Vec<(u8, u32)> = (0..self.objects.len())
            .map(|i| {
                let id = ObjectId(i as u32);
                (self.object(id).kind().rank(), self.depth(id))
            })
            .collect();
        // Events: (position, is_start, extent index). Ends sort before starts
        // at the same position so touching extents do not overlap.
        let mut events: Vec<(u64, bool, u32)> = Vec::with_capacity(self.extents.len() * 2);
        for (i, e) in self.extents.iter().enumerate() {
            events.push((e.start, true, i as u32));
            events.push((e.end, false, i as u32));
        }
        events.sort_unstable();

        type Key = ((u8, u32), Reverse<u32>);
        let mut active: BTreeSet<Key> = BTreeSet::new();
        let key = |i: u32, extents: &[Extent]| -> Key {
            (prio[extents[i as usize].object.0 as usize], Reverse(i))
        };
        let mut segments: Vec<Segment> = Vec::new();
        let mut conflicts = 0u64;
        let mut first_conflict: Option<(u64, ObjectId, ObjectId)> = None;
        let mut pos = 0u64;
        let mut idx = 0;
        let size = self.image_size;
        while pos < size {
            while idx < events.len() && events[idx].0 <= pos {
                let (_, is_start, i) = events[idx];
                if is_start {
                    active.insert(key(i, &self.extents));
                } else {
                    active.remove(&key(i, &self.extents));
                }
                idx += 1;
            }
            let next = events.get(idx).map_or(size, |e| e.0.min(size));
            let mut top = active.iter().rev();
            let owner = match top.next() {
                Some(&(p, Reverse(i))) => {
                    if let Some(&(q, Reverse(j))) = top.next() {
                        let a = self.extents[i as usize].object;
                        let b = self.extents[j as usize].object;
                        if p.0 == q.0 && p.0 > Kind::Free.rank() && a != b {
                            conflicts += 1;
                            first_conflict.get_or_insert((pos, b, a));
                        }
                    }
                    self.extents[i as usize].object
                }
                None => fallback,
            };
            match segments.last_mut() {
                Some(last) if last.object == owner && last.end == pos => last.end = next,
                _ => segments.push(Segment {
                    start: pos,
                    end: next,
                    object: owner,
                }),
            }
            pos = next;
        }
        if let Some((offset, a, b)) = first_conflict {
            let message = format!(
                "{conflicts} ranges are claimed twice (cross-linked); first: {} and {}",
                self.object(a).name,
                self.object(b).name
            );
            self.warn(Some(offset), message);
        }
        segments
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiles(segments: &[Segment], size: u64) -> bool {
        let mut pos = 0;
        for s in segments {
            if s.start != pos || s.start >= s.end {
                return false;
            }
            pos = s.end;
        }
        pos == size
    }

    #[test]
    fn most_specific_wins() {
        let mut m = MapBuilder::new(100);
        let disk = m.add_object(Object::new(Kind::Disk, "/dev/sda"));
        let mut p = Object::new(Kind::Partition, "/dev/sda1");
        p.parent = Some(disk);
        let part = m.add_object(p);
        let mut f = Object::new(Kind::File, "f");
        f.parent = Some(part);
        let file = m.add_object(f);
        m.add_extent(disk, 0..100, 0, 0);
        m.add_extent(part, 10..90, 0, 0);
        m.add_extent(file, 20..30, 0, 0);
        let l = m.layout(disk);
        assert!(tiles(&l, 100));
        let owners: Vec<_> = l.iter().map(|s| (s.start, s.end, s.object.0)).collect();
        assert_eq!(
            owners,
            vec![
                (0, 10, 0),
                (10, 20, 1),
                (20, 30, 2),
                (30, 90, 1),
                (90, 100, 0)
            ]
        );
        assert!(m.warnings.is_empty());
    }

    #[test]
    fn cross_linked_is_warned_and_first_wins() {
        let mut m = MapBuilder::new(50);
        let disk = m.add_object(Object::new(Kind::Disk, "d"));
        let a = m.add_object(Object::new(Kind::File, "a"));
        let b = m.add_object(Object::new(Kind::File, "b"));
        m.add_extent(disk, 0..50, 0, 0);
        m.add_extent(a, 0..20, 0, 0);
        m.add_extent(b, 10..30, 0, 0);
        let l = m.layout(disk);
        assert!(tiles(&l, 50));
        assert_eq!(l[0].object, a);
        assert_eq!(l[0].end, 20);
        assert_eq!(m.warnings.len(), 1);
    }

    proptest::proptest! {
        /// The sweep agrees with a slow per-byte model.
        #[test]
        fn layout_matches_per_byte_model(
            extents in proptest::collection::vec((0u64..64, 1u64..16, 0usize..4), 0..24)
        ) {
            let size = 64;
            let mut m = MapBuilder::new(size);
            let disk = m.add_object(Object::new(Kind::Disk, "d"));
            let kinds = [Kind::Partition, Kind::Filesystem, Kind::Free, Kind::File];
            let mut objs = Vec::new();
            for (n, k) in kinds.iter().enumerate() {
                let mut o = Object::new(*k, format!("o{n}"));
                o.parent = Some(disk);
                objs.push(m.add_object(o));
            }
            m.add_extent(disk, 0..size, 0, 0);
            for &(start, len, which) in &extents {
                m.add_extent(objs[which], start..start + len, 0, 0);
            }
            let l = m.layout(disk);
            proptest::prop_assert!(tiles(&l, size));
            for byte in 0..size {
                let want = m.extents.iter().enumerate()
                    .filter(|(_, e)| e.start <= byte && byte < e.end)
                    .max_by_key(|(i, e)| (m.object(e.object).kind().rank(), Reverse(*i)))
                    .map(|(_, e)| e.object)
                    .unwrap_or(disk);
                let got = l.iter().find(|s| s.start <= byte && byte < s.end).map(|s| s.object);
                proptest::prop_assert_eq!(Some(want), got);
            }
        }
    }
}
