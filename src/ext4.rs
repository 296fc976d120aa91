//! ext2/3/4: superblock, group descriptors, inodes, extent trees and block
//! maps, directories and xattr blocks, read without the kernel so that
//! every block's physical location is known.
//!
//! Block numbers ([`Fs::block_range`]) stay inside this module; everything
//! it hands to the map is absolute image bytes.

pub mod blockmap;
pub mod dir;
pub mod extent;
pub mod group;
pub mod inode;
pub mod superblock;
pub mod walk;
pub mod xattr;

use std::ops::Range;

use crate::error::{Error, Result};
use crate::image::ReadAt;
use superblock::Superblock;

pub use walk::walk;

/// A filesystem block number, relative to the filesystem's start.
pub type FsBlock = u64;

/// An inode number (1-based).
pub type InodeNo = u32;

/// A mounted view of one filesystem inside the image.
pub struct Fs<'a> {
    pub img: &'a dyn ReadAt,
    /// Absolute byte offset of the filesystem in the image.
    pub start: u64,
    pub sb: Superblock,
    pub block_size: u64,
}

impl Fs<'_> {
    /// Absolute byte range of `count` blocks from `block`, checked against
    /// the filesystem's block count.
    pub fn block_range(
        &self,
        what: &'static str,
        block: FsBlock,
        count: u64,
        referenced_at: u64,
    ) -> Result<Range<u64>> {
        // Checked throughout: a hostile block count lets block numbers
        // reach 2^64, whose byte offsets do not fit a u64.
        let range = block
            .checked_add(count)
            .filter(|&end| end <= self.sb.blocks_count && count > 0)
            .and_then(|end| {
                let start = self
                    .start
                    .checked_add(block.checked_mul(self.block_size)?)?;
                let end = self.start.checked_add(end.checked_mul(self.block_size)?)?;
                Some(start..end)
            });
        match range {
            Some(range) => Ok(range),
            None => Err(Error::corrupt(
                what,
                referenced_at,
                format!(
                    "blocks {block}+{count} lie outside the filesystem ({} blocks)",
                    self.sb.blocks_count
                ),
            )),
        }
    }

    /// Reads `count` blocks starting at `block`.
    pub fn read_blocks(
        &self,
        what: &'static str,
        block: FsBlock,
        count: u64,
        referenced_at: u64,
    ) -> Result<Vec<u8>> {
        let r = self.block_range(what, block, count, referenced_at)?;
        self.img.read_vec(what, r.start, r.end - r.start)
    }

    /// Absolute byte offset of a block (unchecked arithmetic is safe: block
    /// numbers reaching here went through [`Fs::block_range`]).
    pub fn block_offset(&self, block: FsBlock) -> u64 {
        self.start
            .saturating_add(block.saturating_mul(self.block_size))
    }
}
