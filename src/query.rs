//! Reading maps back: the summary for `bmap info`, point and range lookups,
//! and virt-bmap's text format for `bmap export`.

use std::io::Write;

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use crate::error::{Error, Result};

/// One partition row for `info`.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionRow {
    pub number: u32,
    pub device: String,
    pub scheme: String,
    pub role: String,
    pub start: u64,
    pub end: u64,
    pub type_id: String,
    pub label: Option<String>,
    pub filesystem: Option<String>,
}

/// One filesystem row for `info`.
#[derive(Debug, Clone, Serialize)]
pub struct FilesystemRow {
    pub device: String,
    pub partition: Option<u32>,
    #[serde(rename = "type")]
    pub fs_type: String,
    pub start: u64,
    pub block_size: u64,
    pub blocks_count: u64,
    pub size_bytes: u64,
    pub free_bytes: u64,
    pub free_blocks_superblock: u64,
    pub unknown_bytes: u64,
    pub inodes_count: u64,
    pub files: u64,
    pub directories: u64,
    pub symlinks: u64,
    pub unlinked_inodes: u64,
    pub uuid: String,
    pub label: String,
    pub features: String,
    pub state: String,
    pub external_journal: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct KindBytes {
    pub kind: String,
    pub bytes: u64,
    pub segments: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct WarningRow {
    pub offset: Option<u64>,
    pub message: String,
}

/// Everything `bmap info` shows.
#[derive(Debug, Clone, Serialize)]
pub struct Info {
    pub image_path: String,
    pub image_size: u64,
    pub image_mtime: String,
    pub structure_sha256: String,
    pub indexed_at: String,
    pub bmap_version: String,
    pub schema_version: u32,
    pub partition_scheme: String,
    pub sector_size: u64,
    pub partitions: Vec<PartitionRow>,
    pub filesystems: Vec<FilesystemRow>,
    pub layout_by_kind: Vec<KindBytes>,
    pub objects: u64,
    pub warnings: Vec<WarningRow>,
}

fn meta(conn: &Connection, key: &str) -> Result<String> {
    Ok(conn
        .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
        .query_row([key], |r| r.get(0))
        .optional()?
        .unwrap_or_default())
}

fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Reads the summary of a map.
pub fn info(conn: &Connection) -> Result<Info> {
    let mut partitions = Vec::new();
    let mut st = conn.prepare(
        "SELECT p.number, p.device, p.scheme, p.role, p.start, p.end, p.type_id, p.label, p.object
         FROM partitions p ORDER BY p.number",
    )?;
    let rows = st.query_map([], |r| {
        Ok((
            PartitionRow {
                number: r.get(0)?,
                device: r.get(1)?,
                scheme: r.get(2)?,
                role: r.get(3)?,
                start: u(r.get(4)?),
                end: u(r.get(5)?),
                type_id: r.get(6)?,
                label: r.get(7)?,
                filesystem: None,
            },
            r.get::<_, i64>(8)?,
        ))
    })?;
    for row in rows {
        let (mut p, obj) = row?;
        let fs: Option<String> = conn
            .query_row("SELECT f.type FROM filesystems f JOIN objects o ON o.id = f.object WHERE o.parent = ?1", [obj], |r| r.get(0))
            .optional()?;
        p.filesystem = fs;
        partitions.push(p);
    }
    let mut st = conn.prepare(
        "SELECT device, partition, type, start, block_size, blocks_count, free_bytes, free_blocks_sb, unknown_bytes,
                inodes_count, files, directories, symlinks, unlinked_inodes, uuid, label, features, state, external_journal
         FROM filesystems ORDER BY start",
    )?;
    let filesystems = st
        .query_map([], |r| {
            let block_size = u(r.get(4)?);
            let blocks_count = u(r.get(5)?);
            Ok(FilesystemRow {
                device: r.get(0)?,
                partition: r.get(1)?,
                fs_type: r.get(2)?,
                start: u(r.get(3)?),
                block_size,
                blocks_count,
                size_bytes: block_size.saturating_mul(blocks_count),
                free_bytes: u(r.get(6)?),
                free_blocks_superblock: u(r.get(7)?),
                unknown_bytes: u(r.get(8)?),
                inodes_count: u(r.get(9)?),
                files: u(r.get(10)?),
                directories: u(r.get(11)?),
                symlinks: u(r.get(12)?),
                unlinked_inodes: u(r.get(13)?),
                uuid: r.get(14)?,
                label: r.get(15)?,
                features: r.get(16)?,
                state: r.get(17)?,
                external_journal: r.get(18)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    let layout_by_kind = conn
        .prepare(
            "SELECT o.kind, sum(s.end - s.start), count(*) FROM layout_segments s JOIN objects o ON o.id = s.object
             GROUP BY o.kind ORDER BY 2 DESC",
        )?
        .query_map([], |r| {
            Ok(KindBytes {
                kind: r.get(0)?,
                bytes: u(r.get(1)?),
                segments: u(r.get(2)?),
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    let warnings = conn
        .prepare("SELECT offset, message FROM warnings ORDER BY seq")?
        .query_map([], |r| {
            Ok(WarningRow {
                offset: r.get::<_, Option<i64>>(0)?.map(u),
                message: r.get(1)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    let objects: i64 = conn.query_row("SELECT count(*) FROM objects", [], |r| r.get(0))?;
    Ok(Info {
        image_path: meta(conn, "image_path")?,
        image_size: meta(conn, "image_size")?.parse().unwrap_or(0),
        image_mtime: meta(conn, "image_mtime")?,
        structure_sha256: meta(conn, "structure_sha256")?,
        indexed_at: meta(conn, "indexed_at")?,
        bmap_version: meta(conn, "bmap_version")?,
        schema_version: conn.query_row("PRAGMA user_version", [], |r| r.get(0))?,
        partition_scheme: meta(conn, "partition_scheme")?,
        sector_size: meta(conn, "sector_size")?.parse().unwrap_or(0),
        partitions,
        filesystems,
        layout_by_kind,
        objects: u(objects),
        warnings,
    })
}

/// One object covering a looked-up range.
#[derive(Debug, Clone, Serialize)]
pub struct Covering {
    pub id: i64,
    pub kind: String,
    pub name: String,
    pub path: Option<String>,
    pub inode: Option<u64>,
    pub partition: Option<u32>,
    /// Offset of the segment's first looked-up byte inside the object.
    pub offset_in_object: Option<u64>,
}

/// One layout segment that a lookup touched, with the objects covering it
/// (most specific first).
#[derive(Debug, Clone, Serialize)]
pub struct LookupHit {
    pub start: u64,
    pub end: u64,
    pub objects: Vec<Covering>,
}

/// Finds the layout segments intersecting `[offset, offset + len)` (at most
/// `limit`) and the containment chain of each one's owner.
pub fn lookup(
    conn: &Connection,
    offset: u64,
    len: u64,
    limit: usize,
) -> Result<(Vec<LookupHit>, bool)> {
    let size: u64 = meta(conn, "image_size")?.parse().unwrap_or(0);
    if offset >= size {
        return Err(Error::Map(format!(
            "offset {offset} (0x{offset:x}) is past the end of the image ({size} bytes)"
        )));
    }
    let end = offset.saturating_add(len.max(1)).min(size);
    let first_start: i64 = conn
        .prepare_cached(
            "SELECT start FROM layout_segments WHERE start <= ?1 ORDER BY start DESC LIMIT 1",
        )?
        .query_row([i64::try_from(offset).unwrap_or(i64::MAX)], |r| r.get(0))?;
    let mut st = conn.prepare_cached(
        "SELECT start, end, object FROM layout_segments WHERE start >= ?1 AND start < ?2 ORDER BY start LIMIT ?3",
    )?;
    let rows: Vec<(i64, i64, i64)> = st
        .query_map(
            params![
                first_start,
                i64::try_from(end).unwrap_or(i64::MAX),
                limit as i64 + 1
            ],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?
        .collect::<rusqlite::Result<_>>()?;
    let truncated = rows.len() > limit;
    let mut hits = Vec::new();
    for (start, seg_end, object) in rows.into_iter().take(limit) {
        let at = u(start).max(offset);
        hits.push(LookupHit {
            start: u(start),
            end: u(seg_end),
            objects: chain(conn, object, at)?,
        });
    }
    Ok((hits, truncated))
}

/// The object and its ancestors, with the offset of `at` inside each one.
fn chain(conn: &Connection, object: i64, at: u64) -> Result<Vec<Covering>> {
    let mut out = Vec::new();
    let mut cur = Some(object);
    let mut obj_st = conn.prepare_cached(
        "SELECT kind, name, path, inode, partition, parent FROM objects WHERE id = ?1",
    )?;
    let mut ext_st = conn.prepare_cached(
        "SELECT start, logical FROM extents WHERE object = ?1 AND start <= ?2 AND end > ?2 LIMIT 1",
    )?;
    // Parents have smaller ids than their children, so the chain ends; the
    // bound guards against a hand-edited map.
    for _ in 0..64 {
        let Some(id) = cur else { break };
        let row = obj_st
            .query_row([id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, Option<i64>>(3)?,
                    r.get::<_, Option<u32>>(4)?,
                    r.get::<_, Option<i64>>(5)?,
                ))
            })
            .optional()?;
        let Some((kind, name, path, inode, partition, parent)) = row else {
            break;
        };
        let at_sql = i64::try_from(at).unwrap_or(i64::MAX);
        let offset_in_object = ext_st
            .query_row(params![id, at_sql], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
            })
            .optional()?
            .map(|(start, logical)| u(logical) + (at - u(start)));
        out.push(Covering {
            id,
            kind,
            name,
            path,
            inode: inode.map(u),
            partition,
            offset_in_object,
        });
        cur = parent;
    }
    Ok(out)
}

/// Writes virt-bmap's map format: `1 START END TYPE DEVICE [PATH]`, hex,
/// END exclusive, for the disk (v), partitions (p), directories (d) and
/// files (f). Returns the number of lines.
pub fn export_virt_bmap(conn: &Connection, out: &mut dyn Write) -> Result<u64> {
    let mut st = conn.prepare(
        "SELECT e.start, e.end, o.kind, coalesce(o.device, o.name), o.path
         FROM extents e JOIN objects o ON o.id = e.object
         WHERE o.kind IN ('disk', 'partition', 'directory', 'file', 'symlink')
         ORDER BY e.start, CASE o.kind WHEN 'disk' THEN 0 WHEN 'partition' THEN 1 ELSE 2 END",
    )?;
    let mut rows = st.query([])?;
    let mut n = 0;
    let io = |e: std::io::Error| Error::Map(format!("writing export: {e}"));
    while let Some(r) = rows.next()? {
        let start = u(r.get(0)?);
        let end = u(r.get(1)?);
        let kind: String = r.get(2)?;
        let device: String = r.get(3)?;
        let path: Option<String> = r.get(4)?;
        let letter = match kind.as_str() {
            "disk" => 'v',
            "partition" => 'p',
            "directory" => 'd',
            _ => 'f',
        };
        match path {
            Some(p) if letter == 'd' || letter == 'f' => {
                writeln!(out, "1 {start:x} {end:x} {letter} {device} {p}").map_err(io)?
            }
            _ if letter == 'd' || letter == 'f' => continue,
            _ => writeln!(out, "1 {start:x} {end:x} {letter} {device}").map_err(io)?,
        }
        n += 1;
    }
    Ok(n)
}

/// Adds bmap's SQL functions to a connection on the map at `path`:
/// `object_at(offset)`, the display name of the most specific object at a
/// byte, and `hsize(bytes)`, a size for humans (`1.5 MiB`).
pub fn register_functions(conn: &Connection, path: &std::path::Path) -> Result<()> {
    use rusqlite::functions::FunctionFlags;
    let flags = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC;
    conn.create_scalar_function("hsize", 1, flags, |ctx| {
        Ok(ctx.get::<Option<i64>>(0)?.map(|v| match u64::try_from(v) {
            Ok(v) => crate::units::human(v),
            Err(_) => format!("-{}", crate::units::human(v.unsigned_abs())),
        }))
    })?;
    // A function cannot query the connection that calls it without unsafe
    // code; a second read-only connection to the same map can.
    let side = Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.create_scalar_function("object_at", 1, FunctionFlags::SQLITE_UTF8, move |ctx| {
        let Some(offset) = ctx.get::<Option<i64>>(0)? else {
            return Ok(None);
        };
        side.prepare_cached(
            "SELECT o.name, s.end FROM layout_segments s JOIN objects o ON o.id = s.object
             WHERE s.start <= ?1 ORDER BY s.start DESC LIMIT 1",
        )?
        .query_row([offset], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })
        .optional()
        .map(|hit| hit.filter(|(_, end)| offset < *end).map(|(name, _)| name))
    })?;
    Ok(())
}
