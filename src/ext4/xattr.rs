//! Extended attributes: the external xattr block (`i_file_acl`) and the
//! in-inode area, where inline-data files keep the part of their data
//! that does not fit `i_block` (`system.data`).

use crate::image::le;

pub const MAGIC: u32 = 0xEA02_0000;
/// Name index of the `system.` namespace.
const INDEX_SYSTEM: u8 = 7;

/// Checks an xattr block header: magic and `h_blocks == 1`. Returns the
/// reference count.
pub fn block_refcount(block: &[u8]) -> Option<u32> {
    (le::u32_at(block, 0) == MAGIC && le::u32_at(block, 8) == 1).then(|| le::u32_at(block, 4))
}

/// Finds the value of `system.data` in an inode's in-inode xattr area.
/// `inode` is the whole on-disk inode record. Every offset is checked
/// against the record; anything malformed yields `None`.
pub fn inline_data_value(inode: &[u8], extra_isize: u16) -> Option<&[u8]> {
    let start = 128usize.checked_add(usize::from(extra_isize))?;
    let area = inode.get(start..)?;
    if le::u32_at(area, 0) != MAGIC {
        return None;
    }
    let entries = area.get(4..)?;
    let mut pos = 0usize;
    // Each entry is at least 16 bytes, so this bounds the loop.
    while pos + 16 <= entries.len() {
        if le::u32_at(entries, pos) == 0 {
            return None;
        }
        let name_len = usize::from(le::u8_at(entries, pos));
        let name_index = le::u8_at(entries, pos + 1);
        let value_offs = usize::from(le::u16_at(entries, pos + 2));
        let value_inum = le::u32_at(entries, pos + 4);
        let value_size = le::u32_at(entries, pos + 8) as usize;
        let name = entries.get(pos + 16..pos + 16 + name_len)?;
        if name_index == INDEX_SYSTEM && name == b"data" && value_inum == 0 {
            return entries.get(value_offs..value_offs.checked_add(value_size)?);
        }
        pos += (16 + name_len + 3) & !3;
    }
    None
}
