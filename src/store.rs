//! The SQLite map file: versioned schema, writing a whole map in one
//! transaction to a temporary file that is renamed into place, and opening
//! maps for reading.

use std::path::{Path, PathBuf};

use rusqlite::types::{ToSqlOutput, Value, ValueRef};
use rusqlite::{Connection, OpenFlags};

use crate::error::{Error, Result};
use crate::map::{MapBuilder, ObjectId, Segment};

/// Schema migrations, applied in order; `PRAGMA user_version` counts how
/// many a map has. Append only: a released migration never changes.
const MIGRATIONS: &[&str] = &[
    include_str!("../schema/001_initial.sql"),
    include_str!("../schema/002_traces.sql"),
    include_str!("../schema/003_views.sql"),
    include_str!("../schema/004_browse.sql"),
    include_str!("../schema/005_packed.sql"),
];

/// The schema version this bmap writes and reads.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// Migrations past this version add only derived data (the packed map),
/// which readers do without: a map this new is read as it is, not copied
/// into memory and migrated.
const READS_AS_IS_FROM: u32 = 4;

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
        if !write && version >= READS_AS_IS_FROM {
            return Ok(conn);
        }
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

/// The private file a map is written to before it is renamed into place.
pub fn temp_path(path: &Path) -> PathBuf {
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
    let mut conn = Connection::open_with_flags(
        tmp,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    // The file is private until renamed: no journal needed, and the final
    // fsync below makes it durable before it takes the map's name.
    conn.pragma_update(None, "journal_mode", "OFF")?;
    conn.pragma_update(None, "synchronous", "OFF")?;
    // Larger pages: fewer b-tree pages to split and write for a map that is
    // mostly appended in key order.
    conn.pragma_update(None, "page_size", 16384)?;
    conn.pragma_update(None, "cache_size", -32768)?;
    migrate(&mut conn)?;
    let tx = conn.transaction()?;
    let indexes = set_aside_indexes(&tx, None)?;
    insert_batched(
        &tx,
        "meta",
        "key, value",
        meta.iter().map(|(k, v)| [text(k), text(v)]),
    )?;
    insert_batched(
        &tx,
        "objects",
        "parent, kind, name, partition, device, inode, path, size, flags, detail",
        map.objects.iter().map(|o| {
            [
                opt_int(o.parent.map(row_id)),
                text(o.kind().as_str()),
                text(&o.name),
                opt_int(o.partition.map(u64::from)),
                opt_text(o.device.as_deref()),
                opt_int(o.inode),
                opt_text(o.path.as_deref()),
                opt_int(o.size),
                int(u64::from(o.flags)),
                opt_text(o.detail.as_deref()),
            ]
        }),
    )?;
    insert_batched(
        &tx,
        "links",
        "object, path",
        map.links
            .iter()
            .map(|(id, path)| [int(row_id(*id)), text(path)]),
    )?;
    // In primary-key order, so the WITHOUT ROWID b-tree is appended to
    // rather than split all over; exact duplicates (a corrupt tree that
    // lists one extent twice) are stored once.
    let mut extents: Vec<&crate::map::Extent> = map.extents.iter().collect();
    extents.sort_unstable_by_key(|e| (e.object, e.logical, e.start));
    extents.dedup_by_key(|e| (e.object, e.logical, e.start));
    insert_batched(
        &tx,
        "extents",
        "object, start, end, logical, flags",
        extents.into_iter().map(|e| {
            [
                int(row_id(e.object)),
                int(e.start),
                int(e.end),
                int(e.logical),
                int(u64::from(e.flags)),
            ]
        }),
    )?;
    insert_batched(
        &tx,
        "layout_segments",
        "start, end, object",
        layout
            .iter()
            .map(|s| [int(s.start), int(s.end), int(row_id(s.object))]),
    )?;
    insert_batched(
        &tx,
        "partitions",
        "object, number, device, scheme, role, start, end, type_id, label, uuid",
        map.partitions.iter().map(|p| {
            [
                int(row_id(p.object)),
                int(u64::from(p.number)),
                text(&p.device),
                text(p.scheme),
                text(p.role),
                int(p.start),
                int(p.end),
                text(&p.type_id),
                opt_text(p.label.as_deref()),
                opt_text(p.uuid.as_deref()),
            ]
        }),
    )?;
    insert_batched(
        &tx,
        "filesystems",
        "object, partition, device, type, start, block_size, blocks_count, free_blocks_sb, free_bytes,
         unknown_bytes, inodes_count, free_inodes_sb, groups, uuid, label, features, state, files,
         directories, symlinks, unlinked_inodes, external_journal",
        map.filesystems.iter().map(|f| {
            [
                opt_int(f.object.map(row_id)),
                opt_int(f.partition.map(u64::from)),
                text(&f.device),
                text(&f.fs_type),
                int(f.start),
                int(f.block_size),
                int(f.blocks_count),
                int(f.free_blocks_sb),
                int(f.free_bytes),
                int(f.unknown_bytes),
                int(f.inodes_count),
                int(f.free_inodes_sb),
                int(f.groups),
                text(&f.uuid),
                text(&f.label),
                text(&f.features),
                text(&f.state),
                int(f.files),
                int(f.directories),
                int(f.symlinks),
                int(f.unlinked_inodes),
                opt_text(f.external_journal.as_deref()),
            ]
        }),
    )?;
    insert_batched(
        &tx,
        "warnings",
        "offset, message",
        map.warnings
            .iter()
            .map(|w| [opt_int(w.offset), text(&w.message)]),
    )?;
    write_packed(&tx, map, layout)?;
    for sql in &indexes {
        tx.execute_batch(sql)?;
    }
    tx.commit()?;
    drop(conn);
    std::fs::File::open(tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::Map(format!("syncing {}: {e}", tmp.display())))?;
    Ok(())
}

/// Writes the packed copy of the layout and the objects (see
/// [`crate::replay::packed`]) from what was just inserted, with the values
/// the tables hold: integers past SQLite's range are clamped as [`int`]
/// clamps them, and a segment whose owner's id would not be read back is
/// left out as the table reader leaves it out.
fn write_packed(tx: &Connection, map: &MapBuilder, layout: &[Segment]) -> Result<()> {
    use crate::replay::packed;
    let segments = layout
        .iter()
        .filter_map(|s| {
            let owner = u32::try_from(row_id(s.object)).ok()?;
            Some((to_sql_u64(s.start) as u64, to_sql_u64(s.end) as u64, owner))
        })
        .filter(|(s, e, _)| s < e);
    let objects = map.objects.iter().map(|o| packed::Object {
        kind: o.kind(),
        name: &o.name,
        device: o.device.as_deref(),
        path: o.path.as_deref(),
        partition: o.partition,
        size: o.size.map(|s| to_sql_u64(s) as u64),
    });
    // A layout the reader would have to repair is not packed: the tables
    // alone are read, and they repair it.
    let Some(p) = packed::encode(segments, objects) else {
        return Ok(());
    };
    tx.execute(
        "INSERT INTO packed_map(format, kinds, segments, objects, strings) VALUES (?1, ?2, ?3, ?4, ?5)",
        rusqlite::params![packed::FORMAT, p.kinds, p.segments, p.objects, p.strings],
    )?;
    Ok(())
}

/// Drops the indexes and triggers of `table` (of every table with `None`)
/// and returns the SQL that recreates them. Filling an indexed table row by
/// row costs several times more than building each index once after a
/// bulk insert, and a trigger would run once per row; inside a
/// transaction, a failure brings them back.
fn set_aside_indexes(conn: &Connection, table: Option<&str>) -> Result<Vec<String>> {
    let found: Vec<(String, String, String)> = conn
        .prepare(
            "SELECT type, name, sql FROM sqlite_master
             WHERE type IN ('index', 'trigger') AND sql IS NOT NULL
               AND (?1 IS NULL OR tbl_name = ?1)",
        )?
        .query_map([table], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (kind, name, _) in &found {
        let kind = if kind == "index" { "INDEX" } else { "TRIGGER" };
        conn.execute_batch(&format!("DROP {kind} \"{}\"", name.replace('"', "\"\"")))?;
    }
    Ok(found.into_iter().map(|(_, _, sql)| sql).collect())
}

/// Rows per INSERT statement. One statement per row spends most of its
/// time setting up and seeking; a few hundred values per statement amortise
/// that while staying far below SQLite's limit on bound parameters.
const ROWS_PER_INSERT: usize = 128;

/// Inserts rows of `N` values into `table` with multi-row INSERTs. Table
/// and column names come from this file, never from input; values are
/// always bound.
fn insert_batched<'a, const N: usize>(
    tx: &rusqlite::Transaction<'_>,
    table: &str,
    columns: &str,
    rows: impl Iterator<Item = [ToSqlOutput<'a>; N]>,
) -> Result<()> {
    let sql = |rows: usize| {
        let one = format!("({})", vec!["?"; N].join(","));
        format!(
            "INSERT INTO {table}({columns}) VALUES {}",
            vec![one; rows].join(",")
        )
    };
    let mut full = tx.prepare(&sql(ROWS_PER_INSERT))?;
    let mut buf: Vec<ToSqlOutput<'a>> = Vec::with_capacity(ROWS_PER_INSERT * N);
    for row in rows {
        buf.extend(row);
        if buf.len() == ROWS_PER_INSERT * N {
            full.execute(rusqlite::params_from_iter(buf.iter()))?;
            buf.clear();
        }
    }
    if !buf.is_empty() {
        tx.prepare(&sql(buf.len() / N))?
            .execute(rusqlite::params_from_iter(buf.iter()))?;
    }
    Ok(())
}

/// The `objects.id` of an object: rowids are assigned 1, 2, 3… in insertion
/// order, which lets SQLite append without seeking.
fn row_id(id: ObjectId) -> u64 {
    u64::from(id.0) + 1
}

fn int(v: u64) -> ToSqlOutput<'static> {
    ToSqlOutput::Owned(Value::Integer(to_sql_u64(v)))
}

fn opt_int(v: Option<u64>) -> ToSqlOutput<'static> {
    v.map_or(ToSqlOutput::Owned(Value::Null), int)
}

fn text(s: &str) -> ToSqlOutput<'_> {
    ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes()))
}

fn opt_text(s: Option<&str>) -> ToSqlOutput<'_> {
    s.map_or(ToSqlOutput::Owned(Value::Null), text)
}

/// SQLite integers are signed 64-bit; image offsets up to 8 EiB fit, and
/// anything larger is clamped rather than wrapped to a negative number.
fn to_sql_u64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Writes one trace into a map (`bmap replay --store`), streaming: rows
/// are buffered a few hundred at a time, all in one transaction, so a
/// failure leaves the map as it was. Storing a trace with the same name or
/// the same content again replaces it.
pub struct TraceStore {
    conn: Connection,
    id: i64,
    /// Indexes of `trace_objects`, set aside during the bulk insert (its
    /// object index would otherwise be updated at random for every row).
    indexes: Vec<String>,
    requests: Vec<Value>,
    pieces: Vec<Value>,
}

const REQUEST_COLUMNS: usize = 7;
const PIECE_COLUMNS: usize = 5;

impl TraceStore {
    /// Starts storing a trace under `name`, replacing a stored trace of the
    /// same name. The content hash is only known at the end: see
    /// [`TraceStore::finish`].
    pub fn begin(
        map: &Path,
        name: &str,
        format: &str,
        path: Option<&str>,
        now: &str,
    ) -> Result<TraceStore> {
        let conn = open(map, true)?;
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let old: Vec<i64> = conn
            .prepare("SELECT id FROM traces WHERE name = ?1")?
            .query_map([name], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        Self::delete(&conn, &old)?;
        conn.execute(
            "INSERT INTO traces(name, sha256, format, path, stored_at, requests) VALUES (?1, '', ?2, ?3, ?4, 0)",
            rusqlite::params![name, format, path, now],
        )?;
        let id = conn.last_insert_rowid();
        let indexes = set_aside_indexes(&conn, Some("trace_objects"))?;
        Ok(TraceStore {
            conn,
            id,
            indexes,
            requests: Vec::with_capacity(ROWS_PER_INSERT * REQUEST_COLUMNS),
            pieces: Vec::with_capacity(ROWS_PER_INSERT * PIECE_COLUMNS),
        })
    }

    #[allow(clippy::too_many_arguments)]
    pub fn request(
        &mut self,
        seq: u64,
        time: Option<f64>,
        op: &str,
        offset: u64,
        length: u64,
        failed: Option<&str>,
    ) -> Result<()> {
        self.requests.extend([
            Value::Integer(self.id),
            Value::Integer(to_sql_u64(seq)),
            time.map_or(Value::Null, Value::Real),
            Value::Text(op.to_string()),
            Value::Integer(to_sql_u64(offset)),
            Value::Integer(to_sql_u64(length)),
            failed.map_or(Value::Null, |f| Value::Text(f.to_string())),
        ]);
        if self.requests.len() >= ROWS_PER_INSERT * REQUEST_COLUMNS {
            self.flush_requests()?;
        }
        Ok(())
    }

    /// One object a request touched; `new_bytes` is what a read had not
    /// read from it before.
    pub fn piece(
        &mut self,
        seq: u64,
        object: Option<u32>,
        bytes: u64,
        new_bytes: u64,
    ) -> Result<()> {
        self.pieces.extend([
            Value::Integer(self.id),
            Value::Integer(to_sql_u64(seq)),
            object.map_or(Value::Null, |o| Value::Integer(i64::from(o))),
            Value::Integer(to_sql_u64(bytes)),
            Value::Integer(to_sql_u64(new_bytes)),
        ]);
        if self.pieces.len() >= ROWS_PER_INSERT * PIECE_COLUMNS {
            self.flush_pieces()?;
        }
        Ok(())
    }

    fn flush(
        conn: &Connection,
        table: &str,
        columns: &str,
        n: usize,
        values: &mut Vec<Value>,
    ) -> Result<()> {
        if values.is_empty() {
            return Ok(());
        }
        let rows = values.len() / n;
        let one = format!("({})", vec!["?"; n].join(","));
        let sql = format!(
            "INSERT INTO {table}({columns}) VALUES {}",
            vec![one; rows].join(",")
        );
        conn.prepare_cached(&sql)?
            .execute(rusqlite::params_from_iter(values.iter()))?;
        values.clear();
        Ok(())
    }

    fn flush_requests(&mut self) -> Result<()> {
        Self::flush(
            &self.conn,
            "trace_requests",
            "trace, seq, time, op, offset, length, failed",
            REQUEST_COLUMNS,
            &mut self.requests,
        )
    }

    fn flush_pieces(&mut self) -> Result<()> {
        Self::flush(
            &self.conn,
            "trace_objects",
            "trace, seq, object, bytes, new_bytes",
            PIECE_COLUMNS,
            &mut self.pieces,
        )
    }

    /// Writes what is buffered and commits.
    fn delete(conn: &Connection, ids: &[i64]) -> Result<()> {
        for id in ids {
            conn.execute("DELETE FROM trace_objects WHERE trace = ?1", [id])?;
            conn.execute("DELETE FROM trace_requests WHERE trace = ?1", [id])?;
            conn.execute("DELETE FROM traces WHERE id = ?1", [id])?;
        }
        Ok(())
    }

    /// Writes what is buffered, replaces any stored trace with the same
    /// content (`sha256` of the trace's bytes, hashed while they were read)
    /// and commits.
    pub fn finish(mut self, requests: u64, sha256: &str) -> Result<()> {
        self.flush_requests()?;
        self.flush_pieces()?;
        let same: Vec<i64> = self
            .conn
            .prepare("SELECT id FROM traces WHERE sha256 = ?1 AND id != ?2")?
            .query_map(rusqlite::params![sha256, self.id], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        Self::delete(&self.conn, &same)?;
        self.conn.execute(
            "UPDATE traces SET requests = ?1, sha256 = ?2 WHERE id = ?3",
            rusqlite::params![to_sql_u64(requests), sha256, self.id],
        )?;
        for sql in &self.indexes {
            self.conn.execute_batch(sql)?;
        }
        self.conn.execute_batch("COMMIT")?;
        Ok(())
    }
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
