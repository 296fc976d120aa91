//! Block group descriptors (`struct ext4_group_desc`, 32 or 64 bytes) and
//! where each group's fixed metadata lives: superblock copies, descriptor
//! blocks (classic or meta_bg), reserved GDT blocks.

use crate::error::{Error, Result};
use crate::ext4::superblock::{incompat, Superblock};
use crate::ext4::{Fs, FsBlock};
use crate::image::le;

pub mod bg_flags {
    pub const INODE_UNINIT: u16 = 0x1;
    pub const BLOCK_UNINIT: u16 = 0x2;
}

/// One group descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupDesc {
    pub block_bitmap: FsBlock,
    pub inode_bitmap: FsBlock,
    pub inode_table: FsBlock,
    pub free_blocks: u32,
    pub free_inodes: u32,
    pub flags: u16,
    pub itable_unused: u32,
    /// Absolute byte offset of this descriptor, for error messages.
    pub offset: u64,
}

impl GroupDesc {
    pub fn parse(b: &[u8], wide: bool, offset: u64) -> GroupDesc {
        let lohi32 = |lo: usize, hi: usize| {
            u64::from(le::u32_at(b, lo))
                | if wide {
                    u64::from(le::u32_at(b, hi)) << 32
                } else {
                    0
                }
        };
        let lohi16 = |lo: usize, hi: usize| {
            u32::from(le::u16_at(b, lo))
                | if wide {
                    u32::from(le::u16_at(b, hi)) << 16
                } else {
                    0
                }
        };
        GroupDesc {
            block_bitmap: lohi32(0x0, 0x20),
            inode_bitmap: lohi32(0x4, 0x24),
            inode_table: lohi32(0x8, 0x28),
            free_blocks: lohi16(0xC, 0x2C),
            free_inodes: lohi16(0xE, 0x2E),
            flags: le::u16_at(b, 0x12),
            itable_unused: lohi16(0x1C, 0x32),
            offset,
        }
    }

    pub fn has_flag(&self, sb: &Superblock, flag: u16) -> bool {
        sb.has_group_csum() && self.flags & flag != 0
    }
}

/// Where the descriptor block holding `desc_block`'s group descriptors
/// lives. Classic layout: right after the primary superblock. meta_bg: in
/// the first group of each meta group (backups in the second and last).
pub fn descriptor_block_location(sb: &Superblock, desc_block: u64) -> FsBlock {
    let first_meta_bg = if sb.has_incompat(incompat::META_BG) {
        sb.first_meta_bg
    } else {
        u64::MAX
    };
    if desc_block < first_meta_bg {
        sb.group_first_block(0) + 1 + desc_block
    } else {
        let group = desc_block * sb.descs_per_block();
        sb.group_first_block(group) + u64::from(sb.group_has_super(group))
    }
}

/// Reads every group descriptor from the primary copies.
pub fn read_descriptors(fs: &Fs<'_>, groups: u64) -> Result<Vec<GroupDesc>> {
    let sb = &fs.sb;
    let per_block = sb.descs_per_block();
    let desc_size = sb.desc_size as usize;
    let wide = sb.has_incompat(incompat::BIT64) && sb.desc_size >= 64;
    let mut out = Vec::new();
    let blocks = groups.div_ceil(per_block);
    let mut b = 0;
    while b < blocks {
        // Classic tables are contiguous: read them in runs of up to 256
        // blocks instead of one at a time.
        let loc = descriptor_block_location(sb, b);
        let mut run = 1;
        while b + run < blocks && run < 256 && descriptor_block_location(sb, b + run) == loc + run {
            run += 1;
        }
        let sb_offset = fs.start + 1024;
        let bytes = fs.read_blocks("group descriptor table", loc, run, sb_offset)?;
        let base = fs.block_offset(loc);
        for (i, chunk) in bytes.chunks_exact(desc_size).enumerate() {
            if out.len() as u64 >= groups {
                break;
            }
            out.push(GroupDesc::parse(chunk, wide, base + (i * desc_size) as u64));
        }
        b += run;
    }
    if (out.len() as u64) < groups {
        return Err(Error::corrupt(
            "group descriptor table",
            fs.start + 1024,
            format!("read {} descriptors of {groups}", out.len()),
        ));
    }
    Ok(out)
}

/// The fixed metadata blocks of one group, as block ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupLayout {
    /// Superblock copy at the group's first block (group 0: primary).
    pub superblock: Option<FsBlock>,
    /// Descriptor blocks stored in this group (first block, count).
    pub descriptors: Vec<(FsBlock, u64)>,
    /// Reserved GDT blocks (first block, count).
    pub reserved_gdt: Option<(FsBlock, u64)>,
}

/// Computes the fixed metadata of `group` from the superblock alone; this
/// is what dumpe2fs reports as "superblock at", "Group descriptors at" and
/// "Reserved GDT blocks at".
pub fn group_layout(sb: &Superblock, group: u64) -> GroupLayout {
    let mut l = GroupLayout::default();
    let first = sb.group_first_block(group);
    let has_super = sb.group_has_super(group);
    if has_super {
        l.superblock = Some(first);
    }
    let meta_bg = sb.has_incompat(incompat::META_BG);
    let per = sb.descs_per_block();
    let meta_group = group / per;
    // Classic descriptor copies (and the reserved GDT after them) live in
    // groups with a superblock, except in meta groups past s_first_meta_bg.
    let classic_here = !meta_bg || meta_group < sb.first_meta_bg;
    if has_super && classic_here {
        let classic_blocks = if meta_bg {
            sb.first_meta_bg.min(sb.gdt_blocks())
        } else {
            sb.gdt_blocks()
        };
        if classic_blocks > 0 {
            l.descriptors.push((first + 1, classic_blocks));
        }
        if sb.reserved_gdt_blocks > 0 {
            l.reserved_gdt = Some((first + 1 + classic_blocks, sb.reserved_gdt_blocks));
        }
    }
    if meta_bg && !classic_here {
        let index = group % per;
        if index == 0 || index == 1 || index == per - 1 {
            l.descriptors.push((first + u64::from(has_super), 1));
        }
    }
    l
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wide_descriptor() {
        let mut b = [0u8; 64];
        b[0..4].copy_from_slice(&5u32.to_le_bytes());
        b[0x20..0x24].copy_from_slice(&1u32.to_le_bytes());
        b[0x12] = 0x3;
        let d = GroupDesc::parse(&b, true, 0);
        assert_eq!(d.block_bitmap, (1 << 32) | 5);
        assert_eq!(d.flags, 3);
        let narrow = GroupDesc::parse(&b, false, 0);
        assert_eq!(narrow.block_bitmap, 5);
    }
}
