//! Extent trees: a header and up to four entries in `i_block`, index nodes
//! in `extent-block`s below it, leaves that map logical to physical blocks.

use std::collections::HashSet;

use crate::error::{Error, Result};
use crate::ext4::{Fs, FsBlock};
use crate::image::le;

pub const MAGIC: u16 = 0xF30A;
/// The kernel never builds deeper trees (EXT4_MAX_EXTENT_DEPTH).
pub const MAX_DEPTH: u16 = 5;
/// ee_len above this marks an unwritten extent.
const INIT_MAX_LEN: u16 = 32768;

/// A run of blocks: `len` blocks from logical block `logical` live at
/// physical block `physical`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataRun {
    pub logical: u64,
    pub physical: FsBlock,
    pub len: u64,
    pub unwritten: bool,
}

/// Where an inode's data lives, and the tree blocks that say so.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockMap {
    pub runs: Vec<DataRun>,
    pub tree_blocks: Vec<FsBlock>,
}

impl BlockMap {
    /// Appends a run, merging it with the previous one when contiguous.
    pub fn push_run(&mut self, run: DataRun) {
        if let Some(last) = self.runs.last_mut() {
            if last.unwritten == run.unwritten
                && last.logical + last.len == run.logical
                && last.physical + last.len == run.physical
            {
                last.len += run.len;
                return;
            }
        }
        self.runs.push(run);
    }
}

#[derive(Debug, Clone, Copy)]
struct Header {
    entries: u16,
    depth: u16,
}

fn parse_header(node: &[u8], capacity: usize, offset: u64) -> Result<Header> {
    let magic = le::u16_at(node, 0);
    if magic != MAGIC {
        return Err(Error::corrupt(
            "extent header",
            offset,
            format!("magic 0x{magic:04x}, expected 0x{MAGIC:04x}"),
        ));
    }
    let entries = le::u16_at(node, 2);
    let max = le::u16_at(node, 4);
    let depth = le::u16_at(node, 6);
    if usize::from(max) > capacity || entries > max {
        return Err(Error::corrupt(
            "extent header",
            offset,
            format!("{entries} entries, max {max}, room for {capacity}"),
        ));
    }
    if depth > MAX_DEPTH {
        return Err(Error::corrupt(
            "extent header",
            offset,
            format!("depth {depth} exceeds {MAX_DEPTH}"),
        ));
    }
    Ok(Header { entries, depth })
}

/// Walks the extent tree rooted in `i_block`. `root_offset` is the absolute
/// byte offset of `i_block` (for errors). On corruption, what was mapped so
/// far stays in `out` and the error says where the tree broke.
pub fn walk(fs: &Fs<'_>, i_block: &[u8], root_offset: u64, out: &mut BlockMap) -> Result<()> {
    let mut visited = HashSet::new();
    walk_node(fs, i_block, root_offset, None, &mut visited, out)
}

fn walk_node(
    fs: &Fs<'_>,
    node: &[u8],
    offset: u64,
    expected_depth: Option<u16>,
    visited: &mut HashSet<FsBlock>,
    out: &mut BlockMap,
) -> Result<()> {
    let capacity = node.len().saturating_sub(12) / 12;
    let h = parse_header(node, capacity, offset)?;
    if let Some(want) = expected_depth {
        if h.depth != want {
            return Err(Error::corrupt(
                "extent header",
                offset,
                format!(
                    "depth {} where {want} was expected (a loop or a misplaced block)",
                    h.depth
                ),
            ));
        }
    }
    for i in 0..usize::from(h.entries) {
        let e = 12 + i * 12;
        let entry_offset = offset + e as u64;
        if h.depth == 0 {
            let logical = u64::from(le::u32_at(node, e));
            let raw_len = le::u16_at(node, e + 4);
            let physical =
                u64::from(le::u16_at(node, e + 6)) << 32 | u64::from(le::u32_at(node, e + 8));
            let (len, unwritten) = if raw_len > INIT_MAX_LEN {
                (raw_len - INIT_MAX_LEN, true)
            } else {
                (raw_len, false)
            };
            if len == 0 {
                continue;
            }
            fs.block_range("extent", physical, len.into(), entry_offset)?;
            out.push_run(DataRun {
                logical,
                physical,
                len: len.into(),
                unwritten,
            });
        } else {
            let child =
                u64::from(le::u16_at(node, e + 8)) << 32 | u64::from(le::u32_at(node, e + 4));
            if !visited.insert(child) {
                return Err(Error::corrupt(
                    "extent index",
                    entry_offset,
                    format!("block {child} is referenced twice in one tree"),
                ));
            }
            let bytes = fs.read_blocks("extent block", child, 1, entry_offset)?;
            out.tree_blocks.push(child);
            walk_node(
                fs,
                &bytes,
                fs.block_offset(child),
                Some(h.depth - 1),
                visited,
                out,
            )?;
        }
    }
    Ok(())
}
