//! Every question the TUI asks the map, as SQL over the schema's public
//! views (`layout_objects`, `object_tree`, `object_extents`, `names`,
//! `trace_pieces`, `accesses`). Nothing here knows how the map was made.

use std::ops::Range;
use std::sync::Arc;

use rusqlite::{params, Connection, OptionalExtension};

use crate::kinds::{self, KindId};

/// Opens a connection to the map; called once for the UI thread and once
/// for the worker. The caller decides how (read-only, migrating an old map
/// in memory, …).
pub type Opener = Arc<dyn Fn() -> Result<Connection, String> + Send + Sync>;

pub type DbResult<T> = Result<T, rusqlite::Error>;

pub struct MapDb {
    conn: Connection,
}

/// What the TUI needs to know about the map before anything is drawn.
#[derive(Debug, Clone)]
pub struct MapSummary {
    pub image_size: u64,
    /// The smallest filesystem block size: the finest zoom.
    pub min_block: u64,
    /// Names of traces stored in the map, oldest first.
    pub traces: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ObjectRow {
    pub id: i64,
    pub parent: Option<i64>,
    pub kind: String,
    pub name: String,
    pub device: Option<String>,
    pub inode: Option<i64>,
    pub path: Option<String>,
    pub size: Option<i64>,
    pub children: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub logical: u64,
    pub disk: u64,
    pub length: u64,
}

/// An object's extents: the first ones, and totals over all of them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExtentSummary {
    pub first: Vec<Extent>,
    pub count: u64,
    pub allocated: u64,
    pub largest: u64,
}

/// The objects owning the bytes of a range, most bytes first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Owners {
    pub top: Vec<(i64, u64)>,
    /// Distinct owners in the range, counted up to a cap.
    pub count: u64,
    pub capped: bool,
}

const OBJECT_COLUMNS: &str = "id, parent, kind, name, device, inode, path, size, children";

fn object_row(r: &rusqlite::Row<'_>) -> DbResult<ObjectRow> {
    Ok(ObjectRow {
        id: r.get(0)?,
        parent: r.get(1)?,
        kind: r.get(2)?,
        name: r.get(3)?,
        device: r.get(4)?,
        inode: r.get(5)?,
        path: r.get(6)?,
        size: r.get(7)?,
        children: r.get(8)?,
    })
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// SQLite integers are signed; offsets past 2^63 cannot be in a map.
fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Segments are disjoint and sorted by `start` (its primary key), so the
/// ones overlapping `[a, b)` start at the last segment starting at or
/// before `a`: bounding the scan from below keeps it to what overlaps,
/// where `end > a` alone would scan from the start of the disk.
const OVERLAP: &str = "start >= coalesce((SELECT max(start) FROM layout_objects WHERE start <= ?1), 0) AND start < ?2";

impl MapDb {
    pub fn new(conn: Connection) -> MapDb {
        MapDb { conn }
    }

    pub fn summary(&self) -> DbResult<MapSummary> {
        let image_size: Option<String> = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'image_size'", [], |r| {
                r.get(0)
            })
            .optional()?;
        let image_size = image_size.and_then(|s| s.parse().ok()).unwrap_or(0);
        let min_block: Option<i64> =
            self.conn
                .query_row("SELECT min(block_size) FROM filesystems", [], |r| r.get(0))?;
        let min_block = min_block
            .and_then(|b| u64::try_from(b).ok())
            .filter(|b| b.is_power_of_two())
            .unwrap_or(512);
        let mut st = self.conn.prepare("SELECT name FROM traces ORDER BY id")?;
        let traces = st
            .query_map([], |r| r.get(0))?
            .collect::<DbResult<Vec<String>>>()?;
        Ok(MapSummary {
            image_size,
            min_block,
            traces,
        })
    }

    /// Calls `f(start, end, kind)` for every layout segment, in order.
    pub fn for_each_segment(&self, mut f: impl FnMut(u64, u64, KindId)) -> DbResult<()> {
        self.segments_in(0, u64::MAX, &mut f)
    }

    /// Calls `f(start, end, kind)` for each segment overlapping `[a, b)`.
    pub fn segments_in(&self, a: u64, b: u64, f: &mut dyn FnMut(u64, u64, KindId)) -> DbResult<()> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT start, end, kind FROM layout_objects WHERE {OVERLAP} ORDER BY start"
        ))?;
        let mut rows = st.query(params![to_i64(a), to_i64(b)])?;
        let mut last_kind = String::new();
        let mut last_id = kinds::OTHER;
        while let Some(r) = rows.next()? {
            let (s, e): (i64, i64) = (r.get(0)?, r.get(1)?);
            let kind = r.get_ref(2)?.as_str().unwrap_or("other");
            // Neighbouring segments mostly share a kind; skip the lookup.
            if kind != last_kind {
                last_kind.clear();
                last_kind.push_str(kind);
                last_id = kinds::id(kind);
            }
            let (s, e) = (to_u64(s), to_u64(e));
            if s < e {
                f(s, e, last_id);
            }
        }
        Ok(())
    }

    /// Who owns the bytes of `[a, b)`, looking at no more than `cap`
    /// layout segments (a zoomed-out cell can hold a million).
    pub fn owners(&self, a: u64, b: u64, cap: u64) -> DbResult<Owners> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT object_id, sum(min(end, ?2) - max(start, ?1)) AS bytes, count(*)
             FROM (SELECT start, end, object_id FROM layout_objects WHERE {OVERLAP} LIMIT ?3)
             WHERE end > ?1
             GROUP BY object_id ORDER BY bytes DESC, object_id DESC"
        ))?;
        let mut rows = st.query(params![to_i64(a), to_i64(b), to_i64(cap)])?;
        let mut out = Owners::default();
        let mut segments = 0u64;
        while let Some(r) = rows.next()? {
            let (id, bytes, n): (i64, i64, i64) = (r.get(0)?, r.get(1)?, r.get(2)?);
            out.count += 1;
            segments += to_u64(n);
            if out.top.len() < 3 {
                out.top.push((id, to_u64(bytes)));
            }
        }
        // The segment before `a` can be in the sample without overlapping.
        out.capped = segments + 1 >= cap;
        Ok(out)
    }

    pub fn object(&self, id: i64) -> DbResult<Option<ObjectRow>> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {OBJECT_COLUMNS} FROM object_tree WHERE id = ?1"
        ))?;
        st.query_row([id], object_row).optional()
    }

    /// `id` and its ancestors, most specific first. Bounded: a hand-made
    /// map with a parent cycle must not hang the UI.
    pub fn chain(&self, id: i64) -> DbResult<Vec<ObjectRow>> {
        let mut out: Vec<ObjectRow> = Vec::new();
        let mut next = Some(id);
        while let Some(id) = next {
            if out.len() >= 64 || out.iter().any(|o| o.id == id) {
                break;
            }
            let Some(row) = self.object(id)? else { break };
            next = row.parent;
            out.push(row);
        }
        Ok(out)
    }

    /// Children of `parent` (roots when `None`): containers and directories
    /// first, then files, then filesystem metadata, each by name.
    pub fn children(&self, parent: Option<i64>, limit: u64) -> DbResult<Vec<ObjectRow>> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {OBJECT_COLUMNS} FROM object_tree
             WHERE parent IS ?1
             ORDER BY CASE kind WHEN 'partition' THEN 0 WHEN 'filesystem' THEN 0
                                WHEN 'directory' THEN 1 WHEN 'file' THEN 2 WHEN 'symlink' THEN 2
                                ELSE 3 END,
                      name, id
             LIMIT ?2"
        ))?;
        let rows = st.query_map(params![parent, to_i64(limit)], object_row)?;
        rows.collect()
    }

    pub fn extents(&self, id: i64, first: u64) -> DbResult<ExtentSummary> {
        let mut out = ExtentSummary::default();
        let (count, allocated, largest): (i64, Option<i64>, Option<i64>) =
            self.conn.prepare_cached(
                "SELECT count(*), sum(length), max(length) FROM object_extents WHERE object_id = ?1",
            )?
            .query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        out.count = to_u64(count);
        out.allocated = allocated.map_or(0, to_u64);
        out.largest = largest.map_or(0, to_u64);
        let mut st = self.conn.prepare_cached(
            "SELECT logical_offset, disk_offset, length FROM object_extents
             WHERE object_id = ?1 ORDER BY logical_offset, disk_offset LIMIT ?2",
        )?;
        let rows = st.query_map(params![id, to_i64(first)], |r| {
            Ok(Extent {
                logical: to_u64(r.get(0)?),
                disk: to_u64(r.get(1)?),
                length: to_u64(r.get(2)?),
            })
        })?;
        out.first = rows.collect::<DbResult<_>>()?;
        Ok(out)
    }

    /// The byte ranges of `id`'s extents that overlap `[a, b)`, at most
    /// `limit` of them.
    pub fn extents_in(&self, id: i64, a: u64, b: u64, limit: u64) -> DbResult<Vec<Range<u64>>> {
        let mut st = self.conn.prepare_cached(
            "SELECT disk_offset, disk_offset + length FROM object_extents
             WHERE object_id = ?1 AND disk_offset < ?3 AND disk_offset + length > ?2
             ORDER BY disk_offset LIMIT ?4",
        )?;
        let rows = st.query_map(params![id, to_i64(a), to_i64(b), to_i64(limit)], |r| {
            Ok(to_u64(r.get(0)?)..to_u64(r.get(1)?))
        })?;
        rows.collect()
    }

    /// The first disk byte of `id`, if it has extents; else where its
    /// layout segments start.
    pub fn first_byte(&self, id: i64) -> DbResult<Option<u64>> {
        let from_extents: Option<i64> = self
            .conn
            .prepare_cached("SELECT min(disk_offset) FROM object_extents WHERE object_id = ?1")?
            .query_row([id], |r| r.get(0))?;
        if let Some(v) = from_extents {
            return Ok(Some(to_u64(v)));
        }
        let from_layout: Option<i64> = self
            .conn
            .prepare_cached("SELECT min(start) FROM layout_objects WHERE object_id = ?1")?
            .query_row([id], |r| r.get(0))?;
        Ok(from_layout.map(to_u64))
    }

    /// Names containing `needle` (case-insensitive), in path order, with
    /// the device the guest sees them on.
    pub fn search(&self, needle: &str, limit: u64) -> DbResult<Vec<(i64, String)>> {
        let mut st = self.conn.prepare_cached(
            "SELECT n.object, coalesce(o.device || ' ', '') || n.path
             FROM names n JOIN object_tree o ON o.id = n.object
             WHERE instr(lower(n.path), lower(?1)) > 0
             ORDER BY o.device, n.path LIMIT ?2",
        )?;
        let rows = st.query_map(params![needle, to_i64(limit)], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
        rows.collect()
    }

    /// Loads a trace stored by `bmap replay --store`.
    pub fn stored_trace(
        &self,
        name: &str,
        progress: &dyn Fn(f64),
    ) -> DbResult<crate::replay::TraceData> {
        use crate::replay::{TraceData, TraceOp, TracePiece, TraceRequest};
        let total: i64 = self.conn.query_row(
            "SELECT count(*) FROM accesses WHERE trace = ?1",
            [name],
            |r| r.get(0),
        )?;
        let mut data = TraceData {
            name: name.to_string(),
            ..TraceData::default()
        };
        let mut requests = self.conn.prepare(
            "SELECT r.seq, r.time, r.op, r.offset, r.length, r.failed
             FROM trace_requests r JOIN traces t ON t.id = r.trace
             WHERE t.name = ?1 ORDER BY r.seq",
        )?;
        let mut pieces = self.conn.prepare(
            "SELECT seq, object_id, bytes FROM trace_pieces WHERE trace = ?1 ORDER BY seq",
        )?;
        let mut piece_rows = pieces.query([name])?;
        let mut pending: Option<(i64, Option<i64>, i64)> = None;
        let mut rows = requests.query([name])?;
        let mut n = 0i64;
        while let Some(r) = rows.next()? {
            let seq: i64 = r.get(0)?;
            let op: String = r.get(2)?;
            let failed: Option<String> = r.get(5)?;
            data.requests.push(TraceRequest {
                time: r.get(1)?,
                op: TraceOp::parse(&op),
                offset: to_u64(r.get(3)?),
                length: to_u64(r.get(4)?),
                failed: failed.is_some(),
                first_piece: u32::try_from(data.pieces.len()).unwrap_or(u32::MAX),
            });
            // Both queries walk the trace in seq order: merge them.
            loop {
                let p = match pending.take() {
                    Some(p) => p,
                    None => match piece_rows.next()? {
                        Some(pr) => (pr.get(0)?, pr.get(1)?, pr.get(2)?),
                        None => break,
                    },
                };
                if p.0 < seq {
                    continue;
                }
                if p.0 > seq {
                    pending = Some(p);
                    break;
                }
                data.pieces.push(TracePiece {
                    object: p.1,
                    bytes: to_u64(p.2),
                });
            }
            n += 1;
            if n % 8192 == 0 {
                progress(n as f64 / total.max(1) as f64);
            }
        }
        Ok(data)
    }
}
