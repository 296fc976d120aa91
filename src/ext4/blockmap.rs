//! Legacy block maps (ext2/ext3, non-extent ext4 files): twelve direct
//! pointers, then single, double and triple indirect blocks.

use std::collections::HashSet;

use crate::error::{Error, Result};
use crate::ext4::extent::{BlockMap, DataRun};
use crate::ext4::Fs;
use crate::image::le;

const DIRECT: usize = 12;

/// Walks the block map in `i_block`. `limit_blocks` is the number of logical
/// blocks the file can have (from i_size), so a pointer past the end is
/// not followed into garbage.
pub fn walk(
    fs: &Fs<'_>,
    i_block: &[u8],
    root_offset: u64,
    limit_blocks: u64,
    out: &mut BlockMap,
) -> Result<()> {
    let per_block = fs.block_size / 4;
    let mut visited = HashSet::new();
    for i in 0..DIRECT {
        let ptr = u64::from(le::u32_at(i_block, i * 4));
        if ptr != 0 && (i as u64) < limit_blocks {
            data(fs, ptr, i as u64, root_offset + (i * 4) as u64, out)?;
        }
    }
    let mut base = DIRECT as u64;
    let mut span = per_block;
    for level in 1..=3u32 {
        let ptr = u64::from(le::u32_at(i_block, (DIRECT + level as usize - 1) * 4));
        let at = root_offset + ((DIRECT + level as usize - 1) * 4) as u64;
        if ptr != 0 && base < limit_blocks {
            indirect(fs, ptr, level, base, limit_blocks, at, &mut visited, out)?;
        }
        base = base.saturating_add(span);
        span = span.saturating_mul(per_block);
    }
    Ok(())
}

fn data(fs: &Fs<'_>, ptr: u64, logical: u64, at: u64, out: &mut BlockMap) -> Result<()> {
    fs.block_range("data block pointer", ptr, 1, at)?;
    out.push_run(DataRun {
        logical,
        physical: ptr,
        len: 1,
        unwritten: false,
    });
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn indirect(
    fs: &Fs<'_>,
    block: u64,
    level: u32,
    base: u64,
    limit_blocks: u64,
    at: u64,
    visited: &mut HashSet<u64>,
    out: &mut BlockMap,
) -> Result<()> {
    if !visited.insert(block) {
        return Err(Error::corrupt(
            "indirect block pointer",
            at,
            format!("block {block} is referenced twice in one file"),
        ));
    }
    let bytes = fs.read_blocks("indirect block", block, 1, at)?;
    out.tree_blocks.push(block);
    let per_block = fs.block_size / 4;
    let child_span = per_block.saturating_pow(level - 1);
    let block_offset = fs.block_offset(block);
    for i in 0..per_block {
        let logical = base.saturating_add(i.saturating_mul(child_span));
        if logical >= limit_blocks {
            break;
        }
        let ptr = u64::from(le::u32_at(&bytes, (i * 4) as usize));
        if ptr == 0 {
            continue;
        }
        let entry_at = block_offset + i * 4;
        if level == 1 {
            data(fs, ptr, logical, entry_at, out)?;
        } else {
            indirect(
                fs,
                ptr,
                level - 1,
                logical,
                limit_blocks,
                entry_at,
                visited,
                out,
            )?;
        }
    }
    Ok(())
}
