//! The on-disk inode (`struct ext4_inode`): the fields that say what an
//! inode is and where its blocks are.

use crate::image::le;

pub mod mode {
    pub const TYPE_MASK: u16 = 0xF000;
    pub const DIR: u16 = 0x4000;
    pub const REG: u16 = 0x8000;
    pub const LNK: u16 = 0xA000;
}

pub mod iflags {
    pub const INDEX: u32 = 0x1000;
    pub const HUGE_FILE: u32 = 0x40000;
    pub const EXTENTS: u32 = 0x80000;
    pub const EA_INODE: u32 = 0x200000;
    pub const INLINE_DATA: u32 = 0x1000_0000;
}

/// Length of `i_block`, the inode's 60-byte block map / extent root.
pub const I_BLOCK_LEN: usize = 60;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inode {
    pub mode: u16,
    pub size: u64,
    pub dtime: u32,
    pub links_count: u16,
    /// i_blocks in 512-byte units (or fs blocks with HUGE_FILE_FL).
    pub blocks: u64,
    pub flags: u32,
    pub i_block: [u8; I_BLOCK_LEN],
    pub file_acl: u64,
    pub extra_isize: u16,
}

impl Inode {
    /// Parses an inode record (at least 128 bytes; shorter input parses as
    /// zeros, which reads as an unused inode).
    pub fn parse(b: &[u8]) -> Inode {
        let mut i_block = [0u8; I_BLOCK_LEN];
        if let Some(s) = b.get(0x28..0x28 + I_BLOCK_LEN) {
            i_block.copy_from_slice(s);
        }
        let extra_isize = if b.len() > 128 {
            le::u16_at(b, 0x80)
        } else {
            0
        };
        Inode {
            mode: le::u16_at(b, 0x0),
            size: u64::from(le::u32_at(b, 0x4)) | u64::from(le::u32_at(b, 0x6C)) << 32,
            dtime: le::u32_at(b, 0x14),
            links_count: le::u16_at(b, 0x1A),
            blocks: u64::from(le::u32_at(b, 0x1C)) | u64::from(le::u16_at(b, 0x74)) << 32,
            flags: le::u32_at(b, 0x20),
            i_block,
            file_acl: u64::from(le::u32_at(b, 0x68)) | u64::from(le::u16_at(b, 0x76)) << 32,
            extra_isize,
        }
    }

    pub fn file_type(&self) -> u16 {
        self.mode & mode::TYPE_MASK
    }
    pub fn is_dir(&self) -> bool {
        self.file_type() == mode::DIR
    }
    pub fn is_reg(&self) -> bool {
        self.file_type() == mode::REG
    }
    pub fn is_symlink(&self) -> bool {
        self.file_type() == mode::LNK
    }
    pub fn has_flag(&self, flag: u32) -> bool {
        self.flags & flag != 0
    }

    /// A fast symlink keeps its target in `i_block` and owns no blocks
    /// (an xattr block, if any, is the only thing i_blocks may count).
    pub fn is_fast_symlink(&self, block_size: u64) -> bool {
        if !self.is_symlink()
            || self.has_flag(iflags::EXTENTS)
            || self.has_flag(iflags::INLINE_DATA)
        {
            return false;
        }
        let ea_sectors = if self.file_acl != 0 {
            block_size / 512
        } else {
            0
        };
        self.blocks.saturating_sub(ea_sectors) == 0 && self.size < I_BLOCK_LEN as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_record_is_unused() {
        let i = Inode::parse(&[0u8; 10]);
        assert_eq!(i.mode, 0);
    }
}
