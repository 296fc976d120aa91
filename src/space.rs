//! Free, stale and sparse space, per filesystem, from a map and its image.
//!
//! [`compute`] reads the map's free-space extents (`free_space`), the
//! `unpartitioned` layout segments and the file extents, then reads the
//! image over the free extents only: holes in the host file are found with
//! `SEEK_DATA`/`SEEK_HOLE` and never read; data regions are read with large
//! positional reads and tested for non-zero bytes block by block. Nothing
//! here prints; `bmap space` formats the [`Report`].
//!
//! Granularity, which the figures depend on:
//! - `free_nonzero_bytes` counts whole filesystem blocks: a free block with
//!   any non-zero byte counts as `block_size` bytes (zerofree's unit).
//!   Unpartitioned space is counted per sector.
//! - `free_hole_bytes` counts bytes exactly, as the host reports holes.
//! - `sparsify_bytes` counts only whole host blocks (the image's
//!   `st_blksize`) that lie inside a free extent and are allocated on the
//!   host: what punching holes over the free extents can return.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use rusqlite::{Connection, OptionalExtension};
use serde::Serialize;

use crate::error::{Error, Result};

/// Bytes read per positional read over free extents.
const CHUNK: u64 = 8 << 20;
/// Files listed as the most fragmented.
pub const WORST_FILES: usize = 10;
/// Safety margin on the minimum size, after seed 000 (djwong: "adding 5%
/// overhead will be more than enough for ext4").
const MARGIN_PERCENT: u64 = 5;

/// One power-of-two bucket of free extent sizes, like e2freefrag's.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Bucket {
    /// Smallest extent size in the bucket, bytes (inclusive).
    pub min_bytes: u64,
    /// Upper bound, bytes (exclusive).
    pub max_bytes: u64,
    /// Free extents in the bucket.
    pub extents: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Share of the filesystem's free bytes, percent.
    pub percent: f64,
}

/// A file with many fragments.
#[derive(Debug, Clone, Serialize)]
pub struct WorstFile {
    pub path: String,
    pub inode: Option<u64>,
    pub size: Option<u64>,
    /// Extents in the map (an ext4 extent holds at most 32768 blocks).
    pub extents: u64,
    /// Physically discontiguous runs, in logical order (1: contiguous).
    pub fragments: u64,
}

/// The smallest ext4 filesystem that would hold this one's data, reasoned
/// as in seed 000: data + inode tables + group metadata + journal.
#[derive(Debug, Clone, Serialize)]
pub struct MinSize {
    /// File, directory and symlink data plus extent, indirect and xattr
    /// blocks and special inodes: everything allocated that is not fixed
    /// group metadata or the journal.
    pub data_bytes: u64,
    /// Inode tables for the estimate's inode count (this filesystem's bytes
    /// per inode, and at least the inodes in use).
    pub inode_table_bytes: u64,
    /// Superblock and descriptor backups, bitmaps, reserved GDT blocks.
    pub group_metadata_bytes: u64,
    /// The journal as it is now.
    pub journal_bytes: u64,
    /// The sum, rounded up to whole blocks.
    pub estimate_bytes: u64,
    /// `estimate_bytes` plus 5 %.
    pub recommended_bytes: u64,
}

/// Figures for one filesystem.
#[derive(Debug, Clone, Serialize)]
pub struct FsSpace {
    /// 1-based partition number; `None` for a bare filesystem.
    pub partition: Option<u32>,
    pub device: String,
    #[serde(rename = "type")]
    pub fs_type: String,
    /// Byte offset of the filesystem in the image.
    pub start: u64,
    pub block_size: u64,
    pub size_bytes: u64,
    pub used_bytes: u64,
    /// Free bytes, from the block bitmaps.
    pub free_bytes: u64,
    /// Free bytes in blocks holding any non-zero byte.
    pub free_nonzero_bytes: u64,
    /// Free bytes that are holes in the host file.
    pub free_hole_bytes: u64,
    /// Free bytes allocated on the host, in whole host blocks: what
    /// `bmap sparsify` would return.
    pub sparsify_bytes: u64,
    /// Free extents (contiguous runs of free blocks).
    pub free_extents: u64,
    pub largest_free_extent_bytes: u64,
    pub free_extent_histogram: Vec<Bucket>,
    /// Files, directories and symlinks with at least one block.
    pub files_with_blocks: u64,
    /// Those whose blocks are not one contiguous run.
    pub noncontiguous_files: u64,
    pub noncontiguous_percent: f64,
    pub worst_files: Vec<WorstFile>,
    pub min_size: MinSize,
}

/// Space outside every partition (the `unpartitioned` layout kind).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Unpartitioned {
    pub bytes: u64,
    /// Counted per sector.
    pub nonzero_bytes: u64,
    pub hole_bytes: u64,
    pub sparsify_bytes: u64,
}

/// The whole answer.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub image_size: u64,
    /// Host block size (`st_blksize`) used for `sparsify_bytes`.
    pub host_block_size: u64,
    pub filesystems: Vec<FsSpace>,
    pub unpartitioned: Unpartitioned,
}

fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn map_err(msg: String) -> Error {
    Error::Map(msg)
}

/// The image's fingerprint as the map records it.
#[derive(Debug, Clone)]
pub struct Fingerprint {
    pub image_path: String,
    pub image_size: u64,
    pub image_mtime: String,
}

/// Reads the image path, size and mtime recorded in the map's `meta`.
pub fn fingerprint(conn: &Connection) -> Result<Fingerprint> {
    let get = |k: &str| -> Result<String> {
        Ok(conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [k], |r| r.get(0))
            .optional()?
            .unwrap_or_default())
    };
    let size = get("image_size")?;
    Ok(Fingerprint {
        image_path: get("image_path")?,
        image_size: size
            .parse()
            .map_err(|_| map_err(format!("meta image_size {size:?} is not a number")))?,
        image_mtime: get("image_mtime")?,
    })
}

/// Checks that `image` is the image the map describes: the same size and
/// the same hash of partition tables and primary superblocks as recorded
/// at index time (the image's structures are walked again, in memory). A
/// filesystem written since indexing has a different superblock.
pub fn verify_image(conn: &Connection, image: &Path, fp: &Fingerprint) -> Result<()> {
    let img =
        crate::image::ImageFile::open(image).map_err(|source| Error::Io { offset: 0, source })?;
    let size = crate::image::ReadAt::size(&img);
    if size != fp.image_size {
        return Err(map_err(format!(
            "image {} has {size} bytes but the map describes an image of {} bytes: not the indexed image",
            image.display(),
            fp.image_size
        )));
    }
    match crate::index::check_against_map(conn, &img)? {
        crate::index::Verdict::Matches(_) => Ok(()),
        crate::index::Verdict::Differs(why) => Err(map_err(format!(
            "image {} does not match the map: {why} (re-run bmap index)",
            image.display()
        ))),
    }
}

/// What the reader found over a set of byte ranges.
#[derive(Debug, Default, Clone, Copy)]
struct Scan {
    nonzero: u64,
    holes: u64,
    sparsify: u64,
}

/// Reads free ranges of one image, skipping host holes.
struct Scanner<'a> {
    file: &'a File,
    size: u64,
    host_block: u64,
    buf: Vec<u8>,
}

impl Scanner<'_> {
    /// Next data offset at or after `off`, or `None` if only a hole follows.
    fn seek_data(&self, off: u64) -> Result<Option<u64>> {
        match rustix::fs::seek(self.file, rustix::fs::SeekFrom::Data(off)) {
            Ok(o) => Ok(Some(o)),
            Err(rustix::io::Errno::NXIO) => Ok(None),
            // Hosts without SEEK_DATA: all data.
            Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOTSUP) => Ok(Some(off)),
            Err(e) => Err(Error::Io {
                offset: off,
                source: e.into(),
            }),
        }
    }

    fn seek_hole(&self, off: u64) -> Result<u64> {
        match rustix::fs::seek(self.file, rustix::fs::SeekFrom::Hole(off)) {
            Ok(o) => Ok(o),
            Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOTSUP) => Ok(self.size),
            Err(e) => Err(Error::Io {
                offset: off,
                source: e.into(),
            }),
        }
    }

    /// Scans `[start, end)`, counting non-zero bytes in units of `unit`
    /// bytes aligned at `origin` (a unit is counted once even if it spans
    /// two data regions).
    fn scan(&mut self, start: u64, end: u64, origin: u64, unit: u64) -> Result<Scan> {
        let mut s = Scan::default();
        if start >= end {
            return Ok(s);
        }
        if end > self.size {
            return Err(map_err(format!(
                "range {start}..{end} lies beyond the end of the image ({} bytes)",
                self.size
            )));
        }
        let unit = unit.max(1);
        let hb = self.host_block.max(1);
        // Whole host blocks inside [start, end).
        let a_start = start.div_ceil(hb).saturating_mul(hb);
        let a_end = end / hb * hb;
        let mut last_counted: Option<u64> = None;
        let mut pos = start;
        // Each turn moves past one data region: at most one turn per host
        // block, so bounded by the range.
        while pos < end {
            let data = match self.seek_data(pos)? {
                Some(d) if d < end => d.max(pos),
                _ => {
                    s.holes += end - pos;
                    break;
                }
            };
            s.holes += data - pos;
            let hole = self.seek_hole(data)?.clamp(data + 1, end);
            // Sparsify: the allocated part of the aligned range.
            let (x, y) = (data.max(a_start), hole.min(a_end));
            if x < y {
                s.sparsify += y - x;
            }
            // Non-zero units.
            let mut off = data;
            while off < hole {
                let n = (hole - off).min(CHUNK);
                let len = usize::try_from(n).map_err(|_| map_err("chunk too large".into()))?;
                if self.buf.len() < len {
                    self.buf.resize(len, 0);
                }
                let buf = &mut self.buf[..len];
                self.file
                    .read_exact_at(buf, off)
                    .map_err(|source| Error::Io {
                        offset: off,
                        source,
                    })?;
                let mut b = off;
                while b < off + n {
                    let unit_idx = (b - origin) / unit;
                    let unit_end = (origin + (unit_idx + 1) * unit).min(off + n);
                    if last_counted != Some(unit_idx) {
                        let lo = usize::try_from(b - off).unwrap_or(0);
                        let hi = usize::try_from(unit_end - off).unwrap_or(0);
                        if !is_zero(&buf[lo..hi]) {
                            last_counted = Some(unit_idx);
                            let u_lo = (origin + unit_idx * unit).max(start);
                            let u_hi = (origin + (unit_idx + 1) * unit).min(end);
                            s.nonzero += u_hi - u_lo;
                        }
                    }
                    b = unit_end;
                }
                off += n;
            }
            pos = hole;
        }
        Ok(s)
    }
}

/// True when every byte is zero; compares 16 bytes at a time.
fn is_zero(b: &[u8]) -> bool {
    let mut chunks = b.chunks_exact(16);
    let wide = chunks
        .by_ref()
        .all(|c| u128::from_ne_bytes(c.try_into().unwrap_or([1; 16])) == 0);
    wide && chunks.remainder().iter().all(|&x| x == 0)
}

/// Power-of-two histogram of extent lengths, from `block_size` up.
fn histogram(lengths: &[u64], block_size: u64, free: u64) -> Vec<Bucket> {
    let mut buckets: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
    let base = block_size.max(1);
    for &len in lengths {
        let k = (len / base).max(1).ilog2();
        let e = buckets.entry(k).or_default();
        e.0 += 1;
        e.1 += len;
    }
    buckets
        .into_iter()
        .map(|(k, (extents, bytes))| Bucket {
            min_bytes: base.saturating_mul(1u64 << k.min(63)),
            max_bytes: base.saturating_mul(1u64 << (k + 1).min(63)),
            extents,
            bytes,
            percent: if free == 0 {
                0.0
            } else {
                (10000.0 * bytes as f64 / free as f64).round() / 100.0
            },
        })
        .collect()
}

struct FsRow {
    object: i64,
    partition: Option<u32>,
    device: String,
    fs_type: String,
    start: u64,
    block_size: u64,
    blocks_count: u64,
    free_bytes: u64,
    inodes_count: u64,
    free_inodes: u64,
    groups: u64,
    features: String,
}

/// Computes the report for the map `conn` of the image `image`. The caller
/// has checked that the image is the one the map describes.
pub fn compute(conn: &Connection, image: &Path) -> Result<Report> {
    let file = File::open(image).map_err(|source| Error::Io { offset: 0, source })?;
    let md = file
        .metadata()
        .map_err(|source| Error::Io { offset: 0, source })?;
    let size = md.len();
    let host_block = md.blksize().clamp(512, 1 << 20);
    let mut scanner = Scanner {
        file: &file,
        size,
        host_block,
        buf: Vec::new(),
    };
    let rows: Vec<FsRow> = conn
        .prepare(
            "SELECT object, partition, device, type, start, block_size, blocks_count, free_bytes,
                    inodes_count, free_inodes_sb, groups, features
             FROM filesystems ORDER BY start",
        )?
        .query_map([], |r| {
            Ok(FsRow {
                object: r.get(0)?,
                partition: r
                    .get::<_, Option<i64>>(1)?
                    .and_then(|p| u32::try_from(p).ok()),
                device: r.get(2)?,
                fs_type: r.get(3)?,
                start: u(r.get(4)?),
                block_size: u(r.get(5)?),
                blocks_count: u(r.get(6)?),
                free_bytes: u(r.get(7)?),
                inodes_count: u(r.get(8)?),
                free_inodes: u(r.get(9)?),
                groups: u(r.get(10)?),
                features: r.get(11)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut filesystems = Vec::with_capacity(rows.len());
    for row in &rows {
        filesystems.push(one_fs(conn, row, &mut scanner)?);
    }
    // Unpartitioned space: counted per sector.
    let sector: u64 = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'sector_size'",
            [],
            |r| r.get::<_, String>(0),
        )
        .optional()?
        .and_then(|s| s.parse().ok())
        .filter(|s: &u64| (512..=65536).contains(s))
        .unwrap_or(512);
    let mut unpartitioned = Unpartitioned::default();
    let segs: Vec<(u64, u64)> = conn
        .prepare("SELECT start, end FROM layout WHERE kind = 'unpartitioned' ORDER BY start")?
        .query_map([], |r| Ok((u(r.get(0)?), u(r.get(1)?))))?
        .collect::<rusqlite::Result<_>>()?;
    for (s, e) in segs {
        check_range("unpartitioned segment", s, e, size)?;
        let sc = scanner.scan(s, e, 0, sector)?;
        unpartitioned.bytes += e - s;
        unpartitioned.nonzero_bytes += sc.nonzero;
        unpartitioned.hole_bytes += sc.holes;
        unpartitioned.sparsify_bytes += sc.sparsify;
    }
    Ok(Report {
        image_size: size,
        host_block_size: host_block,
        filesystems,
        unpartitioned,
    })
}

fn check_range(what: &str, s: u64, e: u64, size: u64) -> Result<()> {
    if s >= e || e > size {
        return Err(map_err(format!(
            "{what} {s}..{e} is empty or lies beyond the end of the image ({size} bytes)"
        )));
    }
    Ok(())
}

fn one_fs(conn: &Connection, row: &FsRow, scanner: &mut Scanner) -> Result<FsSpace> {
    let bs = row.block_size;
    if !bs.is_power_of_two() || !(1024..=65536).contains(&bs) {
        return Err(map_err(format!(
            "{}: block size {bs} in the map is not a power of two in 1 KiB..64 KiB",
            row.device
        )));
    }
    let size_bytes = row.blocks_count.saturating_mul(bs);
    let fs_end = row.start.saturating_add(size_bytes);
    // Free extents, merged where adjacent.
    let mut runs: Vec<(u64, u64)> = Vec::new();
    {
        let mut st = conn.prepare(
            "SELECT e.start, e.end FROM extents e JOIN objects o ON o.id = e.object
             WHERE o.kind = 'free' AND o.parent = ?1 ORDER BY e.start",
        )?;
        let mut rows = st.query([row.object])?;
        while let Some(r) = rows.next()? {
            let (s, e) = (u(r.get(0)?), u(r.get(1)?));
            check_range(&format!("{}: free extent", row.device), s, e, scanner.size)?;
            if s < row.start || e > fs_end {
                return Err(map_err(format!(
                    "{}: free extent {s}..{e} lies outside the filesystem ({}..{fs_end})",
                    row.device, row.start
                )));
            }
            match runs.last_mut() {
                Some(last) if last.1 == s => last.1 = e,
                Some(last) if last.1 > s => {
                    return Err(map_err(format!(
                        "{}: free extents overlap at byte {s}",
                        row.device
                    )))
                }
                _ => runs.push((s, e)),
            }
        }
    }
    let mut scan = Scan::default();
    for &(s, e) in &runs {
        let sc = scanner.scan(s, e, row.start, bs)?;
        scan.nonzero += sc.nonzero;
        scan.holes += sc.holes;
        scan.sparsify += sc.sparsify;
    }
    let extent_free: u64 = runs.iter().map(|r| r.1 - r.0).sum();
    let lengths: Vec<u64> = runs.iter().map(|r| r.1 - r.0).collect();
    let (files_with_blocks, noncontiguous, worst) = fragmentation(conn, row)?;
    let min_size = min_size(conn, row)?;
    Ok(FsSpace {
        partition: row.partition,
        device: row.device.clone(),
        fs_type: row.fs_type.clone(),
        start: row.start,
        block_size: bs,
        size_bytes,
        used_bytes: size_bytes.saturating_sub(row.free_bytes),
        free_bytes: row.free_bytes,
        free_nonzero_bytes: scan.nonzero,
        free_hole_bytes: scan.holes,
        sparsify_bytes: scan.sparsify,
        free_extents: runs.len() as u64,
        largest_free_extent_bytes: lengths.iter().copied().max().unwrap_or(0),
        free_extent_histogram: histogram(&lengths, bs, extent_free),
        files_with_blocks,
        noncontiguous_files: noncontiguous,
        noncontiguous_percent: if files_with_blocks == 0 {
            0.0
        } else {
            (1000.0 * noncontiguous as f64 / files_with_blocks as f64).round() / 10.0
        },
        worst_files: worst,
        min_size,
    })
}

/// e2fsck's count: inodes with blocks, and those whose blocks (in logical
/// order) are not one physically contiguous run; plus the worst files.
fn fragmentation(conn: &Connection, row: &FsRow) -> Result<(u64, u64, Vec<WorstFile>)> {
    let mut st = conn.prepare(
        "SELECT o.id, e.start, e.end FROM objects o JOIN extents e ON e.object = o.id
         WHERE o.kind IN ('file', 'directory', 'symlink') AND o.partition IS ?1
         ORDER BY o.id, e.logical",
    )?;
    let mut rows = st.query([row.partition])?;
    let mut files = 0u64;
    let mut noncontig = 0u64;
    // (fragments, extents, id), the worst WORST_FILES kept.
    let mut worst: Vec<(u64, u64, i64)> = Vec::new();
    let mut cur: Option<(i64, u64, u64, u64)> = None; // id, prev end, extents, fragments
    let mut finish = |c: (i64, u64, u64, u64), worst: &mut Vec<(u64, u64, i64)>| {
        files += 1;
        if c.3 > 1 {
            noncontig += 1;
            worst.push((c.3, c.2, c.0));
            if worst.len() > 4 * WORST_FILES {
                worst.sort_by(|a, b| b.cmp(a));
                worst.truncate(WORST_FILES);
            }
        }
    };
    while let Some(r) = rows.next()? {
        let (id, s, e): (i64, u64, u64) = (r.get(0)?, u(r.get(1)?), u(r.get(2)?));
        match cur.as_mut() {
            Some(c) if c.0 == id => {
                c.2 += 1;
                if s != c.1 {
                    c.3 += 1;
                }
                c.1 = e;
            }
            _ => {
                if let Some(c) = cur.take() {
                    finish(c, &mut worst);
                }
                cur = Some((id, e, 1, 1));
            }
        }
    }
    if let Some(c) = cur.take() {
        finish(c, &mut worst);
    }
    worst.sort_by(|a, b| b.cmp(a));
    worst.truncate(WORST_FILES);
    let mut out = Vec::with_capacity(worst.len());
    for (fragments, extents, id) in worst {
        let (path, inode, size): (Option<String>, Option<i64>, Option<i64>) = conn.query_row(
            "SELECT coalesce(path, name), inode, size FROM objects WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        out.push(WorstFile {
            path: path.unwrap_or_default(),
            inode: inode.map(u),
            size: size.map(u),
            extents,
            fragments,
        });
    }
    Ok((files, noncontig, out))
}

/// Seed 000's estimate of the smallest filesystem that holds this data.
fn min_size(conn: &Connection, row: &FsRow) -> Result<MinSize> {
    let bs = row.block_size;
    let mut by_kind: BTreeMap<String, u64> = BTreeMap::new();
    let mut st =
        conn.prepare("SELECT kind, bytes FROM metadata WHERE partition IS ?1 AND device = ?2")?;
    let mut rows = st.query(rusqlite::params![row.partition, row.device])?;
    while let Some(r) = rows.next()? {
        by_kind.insert(r.get(0)?, u(r.get(1)?));
    }
    let k = |name: &str| by_kind.get(name).copied().unwrap_or(0);
    let fixed: u64 = [
        "boot-block",
        "superblock",
        "superblock-backup",
        "group-descriptors",
        "reserved-gdt",
        "block-bitmap",
        "inode-bitmap",
        "inode-table",
        "journal",
    ]
    .iter()
    .map(|n| k(n))
    .sum();
    let size_bytes = row.blocks_count.saturating_mul(bs);
    let used = size_bytes.saturating_sub(row.free_bytes);
    let data_bytes = used.saturating_sub(fixed);
    let journal_bytes = k("journal");
    let inode_size = k("inode-table")
        .checked_div(row.inodes_count)
        .map_or(256, |n| n.clamp(128, 65536));
    let bytes_per_inode = size_bytes
        .checked_div(row.inodes_count)
        .map_or(16384, |n| n.max(bs));
    let used_inodes = row.inodes_count.saturating_sub(row.free_inodes);
    let blocks_per_group = 8 * bs;
    let group_bytes = blocks_per_group * bs;
    let groups_now = row.groups.max(1);
    let reserved_gdt_per_backup = k("reserved-gdt") / backup_groups(groups_now, &row.features);
    let desc = if row.features.split_whitespace().any(|f| f == "64bit") {
        64
    } else {
        32
    };
    let mut total = data_bytes + journal_bytes;
    let mut parts = (0, 0);
    // Fixed point: metadata grows with the size; ten turns is plenty.
    for _ in 0..10 {
        let groups = total.div_ceil(group_bytes).max(1);
        let inodes = (total / bytes_per_inode).max(used_inodes + 11);
        let ipg = inodes.div_ceil(groups);
        let itable_blocks_per_group = (ipg * inode_size).div_ceil(bs);
        let inode_table = groups * itable_blocks_per_group * bs;
        let gdt_blocks = (groups * desc).div_ceil(bs);
        let backups = backup_groups(groups, &row.features);
        let group_meta = backups * (bs + gdt_blocks * bs)
            + backups * reserved_gdt_per_backup
            + groups * 2 * bs
            + if bs == 1024 { 1024 } else { 0 };
        let next = data_bytes + journal_bytes + inode_table + group_meta;
        parts = (inode_table, group_meta);
        if next == total {
            break;
        }
        total = next;
    }
    let estimate = total.div_ceil(bs) * bs;
    Ok(MinSize {
        data_bytes,
        inode_table_bytes: parts.0,
        group_metadata_bytes: parts.1,
        journal_bytes,
        estimate_bytes: estimate,
        recommended_bytes: (estimate + estimate * MARGIN_PERCENT / 100).div_ceil(bs) * bs,
    })
}

/// Groups holding superblock backups (with group 0): all of them without
/// sparse_super, else 0, 1 and powers of 3, 5 and 7.
fn backup_groups(groups: u64, features: &str) -> u64 {
    let has = |f: &str| features.split_whitespace().any(|x| x == f);
    if has("sparse_super2") {
        return groups.min(3);
    }
    if !has("sparse_super") {
        return groups.max(1);
    }
    let mut n = 1 + u64::from(groups > 1);
    for base in [3u64, 5, 7] {
        let mut p = base;
        while p < groups {
            n += 1;
            p = p.saturating_mul(base);
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_test() {
        assert!(is_zero(&[0; 33]));
        let mut b = [0u8; 33];
        b[32] = 1;
        assert!(!is_zero(&b));
        b[32] = 0;
        b[3] = 1;
        assert!(!is_zero(&b));
    }

    #[test]
    fn scan_counts_units_once_and_skips_holes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        let f = File::create(&path).unwrap();
        f.set_len(256 << 10).unwrap();
        // Two bytes in one 64 KiB unit, 56 KiB apart (a hole between them
        // on hosts with 4 KiB blocks), and one in another unit.
        f.write_all_at(&[1], 65536 + 100).unwrap();
        f.write_all_at(&[2], 65536 + 60000).unwrap();
        f.write_all_at(&[3], 200_000).unwrap();
        f.sync_all().unwrap();
        let f = File::open(&path).unwrap();
        let mut sc = Scanner {
            file: &f,
            size: 256 << 10,
            host_block: 4096,
            buf: Vec::new(),
        };
        let s = sc.scan(0, 256 << 10, 0, 65536).unwrap();
        assert_eq!(s.nonzero, 2 * 65536);
        assert!(s.holes <= (256 << 10) - 3 * 4096);
        assert_eq!(s.sparsify, (256 << 10) - s.holes);
        // A sub-range: units clipped to it.
        let s = sc.scan(65536 + 4096, 65536 + 65536, 0, 65536).unwrap();
        assert_eq!(s.nonzero, 65536 - 4096);
        // Beyond the end: an error, not a panic.
        assert!(sc.scan(0, (256 << 10) + 1, 0, 4096).is_err());
    }

    #[test]
    fn buckets() {
        let h = histogram(&[4096, 8192, 12288, 4096 * 100], 4096, 4096 * 106);
        assert_eq!(h[0].min_bytes, 4096);
        assert_eq!(h[0].extents, 1);
        assert_eq!(h[1].extents, 2);
        assert_eq!(h[1].bytes, 8192 + 12288);
        assert_eq!(h.iter().map(|b| b.bytes).sum::<u64>(), 4096 * 106);
    }

    #[test]
    fn backups() {
        assert_eq!(backup_groups(1, "sparse_super"), 1);
        // 0, 1, 3, 5, 7, 9, 25, 27, 49
        assert_eq!(backup_groups(64, "sparse_super"), 9);
        assert_eq!(backup_groups(4, ""), 4);
    }
}
