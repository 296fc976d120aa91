//! Walks one ext2/3/4 filesystem and adds everything in it to the map:
//! group metadata, every in-use inode with its data and tree blocks, names
//! from the directory tree, xattr blocks and free space from the bitmaps.
//!
//! Damage confined to one inode, directory block or group becomes a warning
//! that names its byte offset, and the walk goes on; damage to the
//! superblock or descriptor table stops this filesystem with an error.

use std::collections::{HashMap, VecDeque};
use std::ops::Range;

use crate::error::Result;
use crate::ext4::dir::{self, DirEntry};
use crate::ext4::extent::{self, BlockMap};
use crate::ext4::group::{self, bg_flags, GroupDesc};
use crate::ext4::inode::{iflags, Inode, I_BLOCK_LEN};
use crate::ext4::superblock::{
    self, compat, format_uuid, incompat, Superblock, SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE,
};
use crate::ext4::{blockmap, xattr, Fs, FsBlock, InodeNo};
use crate::image::ReadAt;
use crate::map::{flags, object_flags, FilesystemInfo, Kind, MapBuilder, Object, ObjectId};
use crate::volume::Region;

const ROOT_INO: InodeNo = 2;
const BAD_BLOCKS_INO: InodeNo = 1;
const BOOT_LOADER_INO: InodeNo = 5;
const RESIZE_INO: InodeNo = 7;
/// Largest single read of inode table or directory data, to keep memory
/// flat however large a group or directory claims to be.
const MAX_READ_BYTES: u64 = 4 << 20;

/// What the walk keeps of one in-use inode until names are known.
struct InodeRec {
    ino: InodeNo,
    kind: Kind,
    size: u64,
    flags: u32,
    map: BlockMap,
    tree_kind: Kind,
    xattr_block: Option<(FsBlock, u64)>,
    /// Inline directory data: (bytes, absolute offset) pieces.
    inline_dir: Vec<(Vec<u8>, u64)>,
    special: Option<&'static str>,
}

/// Maps the filesystem in `region`. The filesystem object and whatever was
/// mapped before an error stay in the map.
pub fn walk(
    img: &dyn ReadAt,
    region: &Region,
    map: &mut MapBuilder,
    progress: &indicatif::ProgressBar,
) -> Result<()> {
    let sb_offset = region.range.start + SUPERBLOCK_OFFSET;
    let (sb, backup) = superblock::read(img, region.range.start)?;
    if let Some(at) = backup {
        // Say what is wrong with the primary, at its own offset.
        let why = img
            .read_vec("ext superblock", sb_offset, SUPERBLOCK_SIZE as u64)
            .and_then(|b| Superblock::parse(&b, sb_offset))
            .err();
        map.warn(
            why.as_ref().and_then(|e| e.offset()).or(Some(sb_offset)),
            format!(
                "{}: primary superblock is damaged ({}); using the backup in group 1 at byte {at}",
                region.device,
                why.map_or_else(String::new, |e| e.to_string())
            ),
        );
    }
    let block_size = sb.block_size();
    let fs = Fs {
        img,
        start: region.range.start,
        sb,
        block_size,
    };
    let sb = &fs.sb;
    let region_len = region.range.end - region.range.start;
    let fs_bytes = sb.blocks_count.saturating_mul(block_size);
    let mut groups = sb.groups();
    if fs_bytes > region_len {
        map.warn(
            Some(sb_offset + 4),
            format!(
                "filesystem on {} claims {fs_bytes} bytes but its container has {region_len}; only the groups that start inside it are mapped",
                region.device
            ),
        );
        groups = region_len
            .saturating_sub(sb.first_data_block * block_size)
            .div_ceil(block_size * sb.blocks_per_group)
            .min(groups);
    }
    let expected_inodes = groups.saturating_mul(u64::from(sb.inodes_per_group));
    if fs_bytes <= region_len && expected_inodes != u64::from(sb.inodes_count) {
        map.warn(
            Some(sb_offset),
            format!(
                "inode count {} is not {groups} groups × {} inodes",
                sb.inodes_count, sb.inodes_per_group
            ),
        );
    }

    let fs_type = sb.fs_type();
    let mut fs_obj = Object::new(Kind::Filesystem, format!("{} {fs_type}", region.device));
    fs_obj.parent = Some(region.parent);
    fs_obj.partition = region.partition;
    fs_obj.device = Some(region.device.clone());
    fs_obj.size = Some(fs_bytes);
    fs_obj.detail = Some(sb.feature_names().join(" "));
    let fs_id = map.add_object(fs_obj);
    map.add_extent(
        fs_id,
        fs.start..fs.start.saturating_add(fs_bytes.min(region_len)),
        0,
        0,
    );

    let mut info = FilesystemInfo {
        object: Some(fs_id),
        partition: region.partition,
        device: region.device.clone(),
        fs_type: fs_type.to_string(),
        start: fs.start,
        block_size,
        blocks_count: sb.blocks_count,
        free_blocks_sb: sb.free_blocks_count,
        inodes_count: u64::from(sb.inodes_count),
        free_inodes_sb: u64::from(sb.free_inodes_count),
        groups,
        uuid: format_uuid(&sb.uuid),
        label: sb.volume_name.clone(),
        features: sb.feature_names().join(" "),
        state: if sb.has_incompat(incompat::RECOVER) {
            "needs journal recovery".into()
        } else if sb.state & 1 == 0 {
            "not clean".into()
        } else if sb.state & 2 != 0 {
            "clean with errors".into()
        } else {
            "clean".into()
        },
        ..FilesystemInfo::default()
    };
    if sb.has_compat(compat::HAS_JOURNAL) && sb.journal_inum == 0 {
        let ext = format!(
            "external journal, device 0x{:x}, uuid {}",
            sb.journal_dev,
            format_uuid(&sb.journal_uuid)
        );
        // Not damage: the journal simply lives on another device.
        info.external_journal = Some(ext);
    }

    let descs = group::read_descriptors(&fs, groups)?;
    let mut w = Walker {
        fs: &fs,
        region,
        map,
        fs_id,
        meta_blocks: Vec::new(),
        xattr_blocks: HashMap::new(),
    };
    w.add_group_metadata(&descs);
    progress.set_length(groups);
    progress.set_position(0);
    progress.set_message(format!("{} inode tables", region.device));
    let inodes = w.read_inodes(&descs, progress);
    progress.set_message(format!("{} directories", region.device));
    let entries = w.read_directories(&inodes);
    let counts = w.add_inode_objects(inodes, entries);
    info.files = counts.0;
    info.directories = counts.1;
    info.symlinks = counts.2;
    info.unlinked_inodes = counts.3;
    progress.set_position(0);
    progress.set_message(format!("{} block bitmaps", region.device));
    info.free_bytes = w.add_free_space(&descs, progress);
    w.map.filesystems.push(info);
    Ok(())
}

struct Walker<'a, 'm> {
    fs: &'a Fs<'a>,
    region: &'a Region,
    map: &'m mut MapBuilder,
    fs_id: ObjectId,
    /// Block ranges of all fixed metadata, for groups whose bitmap is
    /// uninitialised (their used blocks are exactly the metadata in them).
    meta_blocks: Vec<Range<FsBlock>>,
    /// Xattr blocks already mapped, by block number (they may be shared).
    xattr_blocks: HashMap<FsBlock, ObjectId>,
}

impl Walker<'_, '_> {
    fn device(&self) -> &str {
        &self.region.device
    }

    fn new_object(&mut self, kind: Kind, name: &str, parent: ObjectId) -> ObjectId {
        let mut o = Object::new(kind, format!("{} {name}", self.region.device));
        o.parent = Some(parent);
        o.partition = self.region.partition;
        o.device = Some(self.region.device.clone());
        self.map.add_object(o)
    }

    /// Adds a metadata object covering `count` blocks from `block`, if they
    /// lie inside the filesystem; otherwise warns, naming `referenced_at`.
    fn add_meta(
        &mut self,
        kind: Kind,
        name: String,
        block: FsBlock,
        count: u64,
        referenced_at: u64,
    ) {
        match self.fs.block_range("metadata", block, count, referenced_at) {
            Ok(r) => {
                let id = self.new_object(kind, &name, self.fs_id);
                self.map.object_mut(id).size = Some(r.end - r.start);
                self.map.add_extent(id, r, 0, 0);
                self.meta_blocks.push(block..block + count);
            }
            Err(e) => self.map.warn(
                e.offset(),
                format!("{}: {kind} {name}: {e}", self.region.device),
            ),
        }
    }

    fn add_group_metadata(&mut self, descs: &[GroupDesc]) {
        let fs = self.fs;
        let sb = &fs.sb;
        let bs = fs.block_size;
        // Bytes before the superblock: the boot block (1 KiB); with 1 KiB
        // blocks it is block 0, which no group covers.
        let boot = self.new_object(Kind::BootBlock, "boot block", self.fs_id);
        self.map.add_extent(boot, fs.start..fs.start + 1024, 0, 0);
        let primary = self.new_object(Kind::Superblock, "superblock", self.fs_id);
        let sb_end = if bs == 1024 {
            fs.start + 2048
        } else {
            fs.start + bs
        };
        self.map.add_extent(primary, fs.start + 1024..sb_end, 0, 0);
        self.meta_blocks.push(0..sb.first_data_block + 1);

        let sb_offset = fs.start + SUPERBLOCK_OFFSET;
        for (g, d) in descs.iter().enumerate() {
            let g = g as u64;
            let layout = group::group_layout(sb, g);
            if let Some(b) = layout.superblock {
                if g > 0 {
                    self.add_meta(
                        Kind::SuperblockBackup,
                        format!("superblock backup group {g}"),
                        b,
                        1,
                        sb_offset,
                    );
                }
            }
            // With meta_bg the first group of each meta group holds the
            // primary copy of that meta group's descriptor block.
            let per = sb.descs_per_block();
            let meta_primary = sb.has_incompat(incompat::META_BG)
                && g.is_multiple_of(per)
                && g / per >= sb.first_meta_bg;
            for (b, n) in layout.descriptors {
                let name = if g == 0 {
                    "group-descriptors".to_string()
                } else if meta_primary {
                    format!("group-descriptors group {g}")
                } else {
                    format!("group-descriptors backup group {g}")
                };
                self.add_meta(Kind::GroupDescriptors, name, b, n, sb_offset);
            }
            if let Some((b, n)) = layout.reserved_gdt {
                self.add_meta(
                    Kind::ReservedGdt,
                    format!("reserved-gdt group {g}"),
                    b,
                    n,
                    sb_offset + 0xCE,
                );
            }
            self.add_meta(
                Kind::BlockBitmap,
                format!("block-bitmap group {g}"),
                d.block_bitmap,
                1,
                d.offset,
            );
            self.add_meta(
                Kind::InodeBitmap,
                format!("inode-bitmap group {g}"),
                d.inode_bitmap,
                1,
                d.offset + 4,
            );
            let itable_blocks = (u64::from(sb.inodes_per_group) * sb.inode_size).div_ceil(bs);
            self.add_meta(
                Kind::InodeTable,
                format!("inode-table group {g}"),
                d.inode_table,
                itable_blocks,
                d.offset + 8,
            );
        }
        if sb.has_incompat(incompat::MMP) && sb.mmp_block != 0 {
            self.add_meta(
                Kind::Mmp,
                "mmp block".into(),
                sb.mmp_block,
                1,
                sb_offset + 0x168,
            );
        }
    }

    /// Reads the inode bitmap and the used part of every group's inode
    /// table and returns the in-use inodes with their block maps.
    fn read_inodes(
        &mut self,
        descs: &[GroupDesc],
        progress: &indicatif::ProgressBar,
    ) -> Vec<InodeRec> {
        let fs = self.fs;
        let sb = &fs.sb;
        let ipg = u64::from(sb.inodes_per_group);
        let isz = sb.inode_size;
        let special = self.special_inodes();
        let mut out = Vec::new();
        // Inode tables are disjoint blocks of the filesystem, so together
        // they cannot be larger than it. Descriptors that all point at the
        // same blocks would otherwise cost time quadratic in the image size.
        let mut table_budget = (self.region.range.end - self.region.range.start)
            .min(sb.blocks_count.saturating_mul(fs.block_size));
        for (g, d) in descs.iter().enumerate() {
            progress.inc(1);
            let g = g as u64;
            if d.has_flag(sb, bg_flags::INODE_UNINIT) {
                continue;
            }
            let bitmap = match fs.read_blocks("inode bitmap", d.inode_bitmap, 1, d.offset + 4) {
                Ok(b) => b,
                Err(e) => {
                    self.map
                        .warn(e.offset(), format!("{}: group {g}: {e}", self.device()));
                    continue;
                }
            };
            let used = if sb.has_group_csum() {
                ipg.saturating_sub(u64::from(d.itable_unused))
            } else {
                ipg
            };
            let per_read = (MAX_READ_BYTES / isz).max(1);
            let mut first = 0;
            while first < used {
                let n = per_read.min(used - first);
                let table_offset = fs.block_offset(d.inode_table) + first * isz;
                let table_end = fs
                    .start
                    .saturating_add(sb.blocks_count.saturating_mul(fs.block_size));
                if fs
                    .block_range("inode table", d.inode_table, 1, d.offset + 8)
                    .is_err()
                    || table_offset.saturating_add(n * isz) > table_end
                {
                    self.map.warn(
                        Some(d.offset + 8),
                        format!(
                            "{}: group {g}: inode table lies outside the filesystem",
                            self.device()
                        ),
                    );
                    break;
                }
                if n * isz > table_budget {
                    self.map.warn(
                        Some(fs.start + SUPERBLOCK_OFFSET + 0x28),
                        format!(
                            "{}: group {g}: the inode tables ({} inodes per group) add up to more than the filesystem; the rest are not read",
                            self.device(),
                            sb.inodes_per_group
                        ),
                    );
                    return out;
                }
                let bytes = match fs.img.read_vec("inode table", table_offset, n * isz) {
                    Ok(b) => {
                        table_budget -= n * isz;
                        b
                    }
                    Err(e) => {
                        self.map
                            .warn(e.offset(), format!("{}: group {g}: {e}", self.device()));
                        break;
                    }
                };
                for i in 0..n {
                    let index = first + i;
                    let in_use = bitmap
                        .get((index / 8) as usize)
                        .is_some_and(|byte| byte & (1 << (index % 8)) != 0);
                    if !in_use {
                        continue;
                    }
                    let Ok(ino) = InodeNo::try_from(g * ipg + index + 1) else {
                        continue;
                    };
                    let start = (i * isz) as usize;
                    let raw = &bytes[start..start + isz as usize];
                    if let Some(rec) = self.read_inode(ino, raw, table_offset + i * isz, &special) {
                        out.push(rec);
                    }
                }
                first += n;
            }
        }
        out
    }

    /// Reserved and superblock-named inodes, with their display names.
    /// A handful of entries: a linear scan beats hashing every inode.
    fn special_inodes(&self) -> Vec<(InodeNo, &'static str)> {
        let sb = &self.fs.sb;
        let mut m = vec![
            (BAD_BLOCKS_INO, "bad blocks inode"),
            (BOOT_LOADER_INO, "boot loader inode"),
            (RESIZE_INO, "resize inode"),
        ];
        for (ino, name) in [
            (sb.usr_quota_inum, "user quota"),
            (sb.grp_quota_inum, "group quota"),
            (sb.prj_quota_inum, "project quota"),
            (sb.orphan_file_inum, "orphan file"),
        ] {
            if ino != 0 {
                m.push((ino, name));
            }
        }
        if sb.has_compat(compat::HAS_JOURNAL) && sb.journal_inum != 0 {
            m.push((sb.journal_inum, "journal"));
        }
        m
    }

    fn read_inode(
        &mut self,
        ino: InodeNo,
        raw: &[u8],
        offset: u64,
        special: &[(InodeNo, &'static str)],
    ) -> Option<InodeRec> {
        let fs = self.fs;
        let sb = &fs.sb;
        let inode = Inode::parse(raw);
        let special_name = special
            .iter()
            .find(|(n, _)| *n == ino)
            .map(|(_, name)| *name);
        let reserved = ino < sb.first_ino && ino != ROOT_INO;
        if reserved && special_name.is_none() {
            return None;
        }
        if reserved || special_name.is_some() {
            if inode.blocks == 0 && inode.size == 0 {
                return None;
            }
        } else if inode.mode == 0 || (inode.links_count == 0 && inode.dtime != 0) {
            return None;
        }
        // An EA inode (ea_inode feature) stores one large xattr value; its
        // owner's xattr entry names it, no directory does.
        let ea_inode = special_name.is_none()
            && sb.has_incompat(incompat::EA_INODE)
            && inode.has_flag(iflags::EA_INODE);
        let kind = match special_name {
            Some("journal") => Kind::Journal,
            Some(_) => Kind::SpecialInode,
            None if ea_inode => Kind::XattrBlock,
            None if inode.is_dir() => Kind::Directory,
            None if inode.is_symlink() => Kind::Symlink,
            None => Kind::File,
        };
        let mut rec = InodeRec {
            ino,
            kind,
            size: inode.size,
            flags: 0,
            map: BlockMap::default(),
            tree_kind: Kind::ExtentBlock,
            xattr_block: None,
            inline_dir: Vec::new(),
            special: special_name.or(ea_inode.then_some("xattr value inode")),
        };
        let i_block_offset = offset + 0x28;
        let bs = fs.block_size;
        let result = if ino == RESIZE_INO {
            // The resize inode's double-indirect block is its own; the
            // blocks below it are the reserved GDT blocks, mapped as such.
            rec.tree_kind = Kind::IndirectBlock;
            let dind = u64::from(crate::image::le::u32_at(&inode.i_block, 13 * 4));
            if dind != 0 {
                fs.block_range("resize inode", dind, 1, i_block_offset + 52)
                    .map(|_| rec.map.tree_blocks.push(dind))
            } else {
                Ok(())
            }
        } else if inode.has_flag(iflags::INLINE_DATA) {
            rec.flags |= object_flags::INLINE_DATA;
            if inode.is_dir() {
                let len = usize::try_from(inode.size).map_or(I_BLOCK_LEN, |n| n.min(I_BLOCK_LEN));
                // The first four bytes are the parent's inode number.
                if len > 4 {
                    rec.inline_dir
                        .push((inode.i_block[4..len].to_vec(), i_block_offset + 4));
                }
                if let Some(v) = xattr::inline_data_value(raw, inode.extra_isize) {
                    rec.inline_dir.push((v.to_vec(), offset));
                }
            }
            Ok(())
        } else if inode.is_fast_symlink(bs) {
            rec.flags |= object_flags::FAST_SYMLINK;
            Ok(())
        } else if inode.has_flag(iflags::EXTENTS) {
            extent::walk(fs, &inode.i_block, i_block_offset, &mut rec.map)
        } else {
            rec.tree_kind = Kind::IndirectBlock;
            let limit = inode.size.div_ceil(bs);
            blockmap::walk(fs, &inode.i_block, i_block_offset, limit, &mut rec.map)
        };
        if let Err(e) = result {
            self.map.warn(
                e.offset(),
                format!(
                    "{}: inode {ino}: {e}; its map may be incomplete",
                    self.device()
                ),
            );
        }
        if inode.is_dir() && inode.has_flag(iflags::INDEX) {
            rec.flags |= object_flags::HTREE;
        }
        if inode.file_acl != 0 {
            match fs.block_range("xattr block", inode.file_acl, 1, offset + 0x68) {
                Ok(_) => rec.xattr_block = Some((inode.file_acl, offset + 0x68)),
                Err(e) => self
                    .map
                    .warn(e.offset(), format!("{}: inode {ino}: {e}", self.device())),
            }
        }
        Some(rec)
    }

    /// Reads every directory's entries.
    fn read_directories(&mut self, inodes: &[InodeRec]) -> HashMap<InodeNo, Vec<DirEntry>> {
        let fs = self.fs;
        let bs = fs.block_size;
        let mut out = HashMap::new();
        // Each block belongs to at most one directory: directories that
        // claim more than the filesystem holds share (cross-link) blocks,
        // and reading on would cost time quadratic in the image size.
        let mut dir_budget = (self.region.range.end - self.region.range.start)
            .min(fs.sb.blocks_count.saturating_mul(bs));
        for rec in inodes.iter().filter(|r| r.kind == Kind::Directory) {
            let mut entries = Vec::new();
            for (bytes, offset) in &rec.inline_dir {
                if let Err(e) = dir::parse_block(bytes, *offset, &mut entries) {
                    self.map.warn(
                        e.offset(),
                        format!("{}: directory inode {}: {e}", self.device(), rec.ino),
                    );
                }
            }
            let size_blocks = rec.size.div_ceil(bs);
            for run in rec.map.runs.iter().filter(|r| !r.unwritten) {
                let len = run.len.min(size_blocks.saturating_sub(run.logical));
                let chunk = (MAX_READ_BYTES / bs).max(1);
                let mut done = 0;
                while done < len {
                    let n = chunk.min(len - done);
                    let first = run.physical + done;
                    if n * bs > dir_budget {
                        self.map.warn(
                            Some(fs.block_offset(first)),
                            format!(
                                "{}: directory inode {}: directories claim more blocks than the filesystem has (cross-linked); the rest are not read",
                                self.device(),
                                rec.ino
                            ),
                        );
                        out.insert(rec.ino, entries);
                        return out;
                    }
                    match fs.read_blocks("directory block", first, n, fs.block_offset(first)) {
                        Ok(bytes) => {
                            dir_budget -= n * bs;
                            for (i, block) in bytes.chunks_exact(bs as usize).enumerate() {
                                let at = fs.block_offset(first + i as u64);
                                if let Err(e) = dir::parse_block(block, at, &mut entries) {
                                    self.map.warn(
                                        e.offset(),
                                        format!(
                                            "{}: directory inode {}: {e}",
                                            self.device(),
                                            rec.ino
                                        ),
                                    );
                                }
                            }
                        }
                        Err(e) => self.map.warn(
                            e.offset(),
                            format!("{}: directory inode {}: {e}", self.device(), rec.ino),
                        ),
                    }
                    done += n;
                }
            }
            out.insert(rec.ino, entries);
        }
        out
    }

    /// Names every inode by walking the tree from the root, then adds the
    /// objects and their extents. Returns (files, directories, symlinks,
    /// unlinked).
    fn add_inode_objects(
        &mut self,
        inodes: Vec<InodeRec>,
        mut entries: HashMap<InodeNo, Vec<DirEntry>>,
    ) -> (u64, u64, u64, u64) {
        // Inodes arrive in inode-number order, so a binary search over their
        // numbers finds a directory entry's target without hashing.
        // One object per inode, one extent per run: reserving once avoids
        // copying these large vectors over and over as they grow.
        let runs: usize = inodes
            .iter()
            .map(|r| r.map.runs.len() + r.map.tree_blocks.len())
            .sum();
        self.map.objects.reserve(inodes.len());
        self.map.extents.reserve(runs);
        let numbers: Vec<InodeNo> = inodes.iter().map(|r| r.ino).collect();
        debug_assert!(numbers.windows(2).all(|w| w[0] < w[1]));
        let mut recs: Vec<Option<InodeRec>> = inodes.into_iter().map(Some).collect();
        let mut objects: Vec<Option<ObjectId>> = vec![None; recs.len()];
        let slot = |ino: InodeNo| numbers.binary_search(&ino).ok();
        let mut counts = (0, 0, 0, 0);
        let mut dangling = 0u64;
        let mut first_dangling = None;

        if let Some(root_slot) = slot(ROOT_INO).filter(|&i| recs[i].is_some()) {
            let root = recs[root_slot].take().expect("checked above");
            let id = self.add_inode(root, Some("/".into()), self.fs_id, &mut counts);
            objects[root_slot] = Some(id);
            let mut queue = VecDeque::from([(root_slot, "/".to_string())]);
            while let Some((dir_slot, dir_path)) = queue.pop_front() {
                let Some(dir_obj) = objects[dir_slot] else {
                    continue;
                };
                let dir_ino = numbers[dir_slot];
                for e in entries.remove(&dir_ino).unwrap_or_default() {
                    if e.name == b"." || e.name == b".." {
                        continue;
                    }
                    let name = String::from_utf8_lossy(&e.name);
                    let path = if dir_path == "/" {
                        format!("/{name}")
                    } else {
                        format!("{dir_path}/{name}")
                    };
                    let Some(child_slot) = slot(e.inode) else {
                        dangling += 1;
                        first_dangling.get_or_insert((dir_ino, path, e.inode));
                        continue;
                    };
                    if let Some(id) = objects[child_slot] {
                        // A further name of an inode already placed: a hard
                        // link (directories cannot have them; a second name
                        // for one would be a loop, so it is not followed).
                        if self.map.object(id).kind() != Kind::Directory {
                            self.map.add_link(id, path);
                        }
                        continue;
                    }
                    let Some(rec) = recs[child_slot].take() else {
                        continue;
                    };
                    let is_dir = rec.kind == Kind::Directory;
                    let id = self.add_inode(rec, Some(path.clone()), dir_obj, &mut counts);
                    objects[child_slot] = Some(id);
                    if is_dir {
                        queue.push_back((child_slot, path));
                    }
                }
            }
        } else {
            self.map.warn(
                Some(self.fs.start),
                format!(
                    "{}: the root directory (inode 2) is not in use",
                    self.device()
                ),
            );
        }
        if let Some((dir, path, ino)) = first_dangling {
            self.map.warn(
                None,
                format!("{}: {dangling} directory entries name unused inodes; first: {path} -> inode {ino} in directory inode {dir}", self.device()),
            );
        }
        // In use but not reachable: special inodes, and orphans a finding.
        for rec in recs.into_iter().flatten() {
            if rec.special.is_none() {
                counts.3 += 1;
            }
            self.add_inode(rec, None, self.fs_id, &mut counts);
        }
        counts
    }

    fn add_inode(
        &mut self,
        rec: InodeRec,
        path: Option<String>,
        parent: ObjectId,
        counts: &mut (u64, u64, u64, u64),
    ) -> ObjectId {
        let bs = self.fs.block_size;
        let unnamed;
        let display = match (&path, rec.special) {
            (Some(p), _) => p.as_str(),
            (None, Some(s)) if rec.kind == Kind::XattrBlock => {
                unnamed = format!("{s} {}", rec.ino);
                &unnamed
            }
            (None, Some(s)) => s,
            (None, None) => {
                unnamed = format!("<unlinked inode {}>", rec.ino);
                &unnamed
            }
        };
        let tree_label = (!rec.map.tree_blocks.is_empty()).then(|| {
            let what = if rec.tree_kind == Kind::ExtentBlock {
                "extent tree"
            } else {
                "indirect blocks"
            };
            format!("{display} ({what})")
        });
        let id = self.new_object(rec.kind, display, parent);
        {
            let o = self.map.object_mut(id);
            o.inode = Some(u64::from(rec.ino));
            o.flags = rec.flags
                | if path.is_none() && rec.special.is_none() {
                    object_flags::UNLINKED
                } else {
                    0
                };
            o.path = path;
            o.size = Some(rec.size);
        }
        match rec.kind {
            Kind::File => counts.0 += 1,
            Kind::Directory => counts.1 += 1,
            Kind::Symlink => counts.2 += 1,
            _ => {}
        }
        let mut runs = rec.map.runs;
        runs.sort_by_key(|r| r.logical);
        for r in &runs {
            let start = self.fs.block_offset(r.physical);
            let flag = if r.unwritten { flags::UNWRITTEN } else { 0 };
            self.map
                .add_extent(id, start..start + r.len * bs, r.logical * bs, flag);
        }
        if let Some(name) = tree_label {
            let tree = self.new_object(rec.tree_kind, &name, id);
            self.map.object_mut(tree).inode = Some(u64::from(rec.ino));
            let ranges: Vec<Range<u64>> = rec
                .map
                .tree_blocks
                .iter()
                .map(|&b| {
                    let s = self.fs.block_offset(b);
                    s..s + bs
                })
                .collect();
            self.map.add_concatenated(tree, ranges);
        }
        if let Some((block, at)) = rec.xattr_block {
            self.add_xattr_block(id, rec.ino, block, at);
        }
        id
    }

    /// One object per xattr block, however many inodes share it; the first
    /// inode that names it is its parent.
    fn add_xattr_block(&mut self, owner: ObjectId, ino: InodeNo, block: FsBlock, at: u64) {
        let start = self.fs.block_offset(block);
        if let Some(&id) = self.xattr_blocks.get(&block) {
            let o = self.map.object_mut(id);
            let shared = o.size.unwrap_or(1) + 1;
            o.size = Some(shared);
            o.detail = Some(format!("shared by {shared} inodes"));
            return;
        }
        match self.fs.read_blocks("xattr block", block, 1, at) {
            Ok(b) if xattr::block_refcount(&b).is_none() => {
                self.map.warn(
                    Some(start),
                    format!(
                        "{}: inode {ino}: xattr block {block} has no valid header",
                        self.device()
                    ),
                );
            }
            Err(e) => self
                .map
                .warn(e.offset(), format!("{}: inode {ino}: {e}", self.device())),
            Ok(_) => {}
        }
        let id = self.new_object(Kind::XattrBlock, &format!("xattr block {block}"), owner);
        self.map.object_mut(id).size = Some(1);
        self.map.object_mut(id).detail = Some("shared by 1 inode".into());
        self.map
            .add_extent(id, start..start + self.fs.block_size, 0, 0);
        self.xattr_blocks.insert(block, id);
    }

    /// Adds free space from the block bitmaps; returns free bytes.
    fn add_free_space(&mut self, descs: &[GroupDesc], progress: &indicatif::ProgressBar) -> u64 {
        let fs = self.fs;
        let sb = &fs.sb;
        let bs = fs.block_size;
        self.meta_blocks.sort_by_key(|r| r.start);
        let mut free_runs: Vec<Range<u64>> = Vec::new();
        let push = |runs: &mut Vec<Range<u64>>, b: Range<u64>| match runs.last_mut() {
            Some(last) if last.end == b.start => last.end = b.end,
            _ => runs.push(b),
        };
        for (g, d) in descs.iter().enumerate() {
            progress.inc(1);
            let g = g as u64;
            let first = sb.group_first_block(g);
            let count = sb.group_blocks(g);
            if d.has_flag(sb, bg_flags::BLOCK_UNINIT) {
                // Everything but this group's share of the fixed metadata.
                let mut pos = first;
                let end = first + count;
                let i = self.meta_blocks.partition_point(|r| r.end <= first);
                for r in self.meta_blocks[i..].iter().take_while(|r| r.start < end) {
                    if r.start > pos {
                        push(&mut free_runs, pos..r.start);
                    }
                    pos = pos.max(r.end);
                }
                if pos < end {
                    push(&mut free_runs, pos..end);
                }
                continue;
            }
            let bitmap = match fs.read_blocks("block bitmap", d.block_bitmap, 1, d.offset) {
                Ok(b) => b,
                Err(e) => {
                    self.map
                        .warn(e.offset(), format!("{}: group {g}: {e}", self.device()));
                    continue;
                }
            };
            let mut run_start = None;
            for i in 0..count {
                let used = bitmap
                    .get((i / 8) as usize)
                    .is_none_or(|byte| byte & (1 << (i % 8)) != 0);
                match (used, run_start) {
                    (false, None) => run_start = Some(i),
                    (true, Some(s)) => {
                        push(&mut free_runs, first + s..first + i);
                        run_start = None;
                    }
                    _ => {}
                }
            }
            if let Some(s) = run_start {
                push(&mut free_runs, first + s..first + count);
            }
        }
        let free_blocks: u64 = free_runs.iter().map(|r| r.end - r.start).sum();
        if free_blocks != sb.free_blocks_count {
            self.map.warn(
                Some(fs.start + SUPERBLOCK_OFFSET + 0xC),
                format!(
                    "{}: bitmaps show {free_blocks} free blocks, the superblock says {}",
                    self.device(),
                    sb.free_blocks_count
                ),
            );
        }
        if !free_runs.is_empty() {
            let id = self.new_object(Kind::Free, "free", self.fs_id);
            self.map.object_mut(id).size = Some(free_blocks * bs);
            let ranges: Vec<Range<u64>> = free_runs
                .iter()
                .map(|r| fs.block_offset(r.start)..fs.block_offset(r.end))
                .collect();
            self.map.add_concatenated(id, ranges);
        }
        free_blocks * bs
    }
}
