//! The SQLite map file: versioned schema, writing a whole map in one
//! transaction to a temporary file that is renamed into place, and opening
//! maps for reading.

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OpenFlags};

use crate::error::{Error, Result};
use crate::map::{MapBuilder, Segment};

/// Schema migrations, applied in order; `PRAGMA user_version` counts how
/// many a map has. Append only: a released migration never changes.
const MIGRATIONS: &[&str] = &[include_str!("../schema/001_initial.sql")];

/// The schema version this bmap writes and reads.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// Brings a database up to [`SCHEMA_VERSION`], refusing newer ones.
pub fn migrate(conn: &mut Connection) -> Result<()> {
    let version: u32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(Error::Map(format!(
            "this map has schema version {version}, written by a newer bmap; this bmap reads up to version {SCHEMA_VERSION}"
        )));
    }
    let tx = conn.transaction()?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i as u32 + 1)?;
    }
    tx.commit()?;
    Ok(())
}

/// Opens a map for reading (read-only unless `write`), checking that it is
/// a bmap map of a schema version this bmap understands.
pub fn open(path: &Path, write: bool) -> Result<Connection> {
    if !path.exists() {
        return Err(Error::Map(format!("{}: no such map file", path.display())));
    }
    let flags = if write {
        OpenFlags::SQLITE_OPEN_READ_WRITE
    } else {
        OpenFlags::SQLITE_OPEN_READ_ONLY
    } | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut conn = Connection::open_with_flags(path, flags)?;
    let version: u32 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| Error::Map(format!("{}: not a bmap map ({e})", path.display())))?;
    let is_map: bool = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = 'layout_segments'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n > 0)
        .unwrap_or(false);
    if version == 0 || !is_map {
        return Err(Error::Map(format!("{}: not a bmap map", path.display())));
    }
    if version > SCHEMA_VERSION {
        return Err(Error::Map(format!(
            "{}: schema version {version} is newer than this bmap understands ({SCHEMA_VERSION}); upgrade bmap",
            path.display()
        )));
    }
    if version < SCHEMA_VERSION {
        if !write {
            // Reading an old map: migrate a private in-memory copy so the
            // user's file is not changed behind their back.
            let mut mem = Connection::open_in_memory()?;
            {
                let backup = rusqlite::backup::Backup::new(&conn, &mut mem)?;
                backup.run_to_completion(1024, std::time::Duration::ZERO, None)?;
            }
            migrate(&mut mem)?;
            return Ok(mem);
        }
        migrate(&mut conn)?;
    }
    Ok(conn)
}

/// Writes `map` and its layout to `path`. Everything goes to a temporary
/// file in the same directory first, so a failure never leaves a half map
/// and an existing map survives until the new one is complete.
pub fn write(
    path: &Path,
    map: &MapBuilder,
    layout: &[Segment],
    meta: &[(String, String)],
    force: bool,
) -> Result<()> {
    if path.exists() && !force {
        return Err(Error::Map(format!(
            "{} exists; use --force to replace it",
            path.display()
        )));
    }
    let tmp = temp_path(path);
    let _ = std::fs::remove_file(&tmp);
    let result = write_to(&tmp, map, layout, meta).and_then(|()| {
        std::fs::rename(&tmp, path).map_err(|e| {
            Error::Map(format!(
                "renaming {} to {}: {e}",
                tmp.display(),
                path.display()
            ))
        })
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".tmp-{}", std::process::id()));
    path.with_file_name(name)
}

fn write_to(
    tmp: &Path,
    map: &MapBuilder,
    layout: &[Segment],
    meta: &[(String, String)],
) -> Result<()> {
    let mut conn = Connection::open(tmp)?;
    // The file is private until renamed: no journal needed, and the final
    // fsync below makes it durable before it takes the map's name.
    conn.pragma_update(None, "journal_mode", "OFF")?;
    conn.pragma_update(None, "synchronous", "OFF")?;
    migrate(&mut conn)?;
    // Filling indexed tables row by row costs several times more than
    // building each index once at the end: set them aside and recreate them
    // from their own definitions after the bulk insert.
    let indexes: Vec<(String, String)> = conn
        .prepare("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let tx = conn.transaction()?;
    for (name, _) in &indexes {
        tx.execute_batch(&format!("DROP INDEX \"{}\"", name.replace('"', "\"\"")))?;
    }
    {
        let mut st = tx.prepare("INSERT INTO meta(key, value) VALUES (?1, ?2)")?;
        for (k, v) in meta {
            st.execute(params![k, v])?;
        }
        let mut st = tx.prepare(
            "INSERT INTO objects(id, parent, kind, name, partition, device, inode, path, size, flags, detail)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        )?;
        for (i, o) in map.objects.iter().enumerate() {
            st.execute(params![
                i as i64,
                o.parent.map(|p| p.0),
                o.kind().as_str(),
                o.name,
                o.partition,
                o.device,
                o.inode.map(|n| n as i64),
                o.path,
                o.size.map(to_sql_u64),
                o.flags,
                o.detail,
            ])?;
        }
        let mut st = tx.prepare("INSERT INTO names(object, path) VALUES (?1, ?2)")?;
        for (id, path) in &map.names {
            st.execute(params![id.0, path])?;
        }
        let mut st = tx.prepare(
            "INSERT INTO extents(object, start, end, logical, flags) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for e in &map.extents {
            st.execute(params![
                e.object.0,
                to_sql_u64(e.start),
                to_sql_u64(e.end),
                to_sql_u64(e.logical),
                e.flags
            ])?;
        }
        let mut st =
            tx.prepare("INSERT INTO layout_segments(start, end, object) VALUES (?1, ?2, ?3)")?;
        for s in layout {
            st.execute(params![to_sql_u64(s.start), to_sql_u64(s.end), s.object.0])?;
        }
        let mut st = tx.prepare(
            "INSERT INTO partitions(object, number, device, scheme, role, start, end, type_id, label, uuid)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?;
        for p in &map.partitions {
            st.execute(params![
                p.object.0,
                p.number,
                p.device,
                p.scheme,
                p.role,
                to_sql_u64(p.start),
                to_sql_u64(p.end),
                p.type_id,
                p.label,
                p.uuid
            ])?;
        }
        let mut st = tx.prepare(
            "INSERT INTO filesystems(object, partition, device, type, start, block_size, blocks_count, free_blocks_sb,
                 free_bytes, unknown_bytes, inodes_count, free_inodes_sb, groups, uuid, label, features, state,
                 files, directories, symlinks, unlinked_inodes, external_journal)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22)",
        )?;
        for f in &map.filesystems {
            st.execute(params![
                f.object.map(|o| o.0),
                f.partition,
                f.device,
                f.fs_type,
                to_sql_u64(f.start),
                to_sql_u64(f.block_size),
                to_sql_u64(f.blocks_count),
                to_sql_u64(f.free_blocks_sb),
                to_sql_u64(f.free_bytes),
                to_sql_u64(f.unknown_bytes),
                to_sql_u64(f.inodes_count),
                to_sql_u64(f.free_inodes_sb),
                to_sql_u64(f.groups),
                f.uuid,
                f.label,
                f.features,
                f.state,
                to_sql_u64(f.files),
                to_sql_u64(f.directories),
                to_sql_u64(f.symlinks),
                to_sql_u64(f.unlinked_inodes),
                f.external_journal,
            ])?;
        }
        let mut st = tx.prepare("INSERT INTO warnings(offset, message) VALUES (?1, ?2)")?;
        for w in &map.warnings {
            st.execute(params![w.offset.map(to_sql_u64), w.message])?;
        }
    }
    for (_, sql) in &indexes {
        tx.execute_batch(sql)?;
    }
    tx.commit()?;
    conn.execute_batch("ANALYZE")?;
    drop(conn);
    std::fs::File::open(tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::Map(format!("syncing {}: {e}", tmp.display())))?;
    Ok(())
}

/// SQLite integers are signed 64-bit; image offsets up to 8 EiB fit, and
/// anything larger is clamped rather than wrapped to a negative number.
fn to_sql_u64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_apply_and_newer_is_refused() {
        let mut c = Connection::open_in_memory().unwrap();
        migrate(&mut c).unwrap();
        let v: u32 = c
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        c.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        assert!(matches!(migrate(&mut c), Err(Error::Map(_))));
    }
}
