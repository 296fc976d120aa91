//! `bmap index`: image -> volumes -> filesystems -> map -> layout.

use std::collections::HashMap;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::error::Result;
use crate::image::ReadAt;
use crate::map::{Kind, MapBuilder, Object, ObjectId, Segment};
use crate::volume::{self, DeviceNaming, VolumeOptions};

/// What the user chose for this run.
#[derive(Debug, Clone)]
pub struct IndexOptions {
    /// Guest disk name (`sda`, `vda`, …).
    pub device: String,
    /// Logical sector size; `None` detects it.
    pub sector_size: Option<u64>,
}

impl Default for IndexOptions {
    fn default() -> Self {
        IndexOptions {
            device: "sda".into(),
            sector_size: None,
        }
    }
}

/// A finished, not yet stored, map.
#[derive(Debug)]
pub struct Indexed {
    pub map: MapBuilder,
    pub layout: Vec<Segment>,
    pub scheme: &'static str,
    pub sector_size: u64,
    /// sha256 over partition-table structures and primary superblocks.
    pub structure_hash: String,
}

/// Maps every byte of `img`.
pub fn index(
    img: &dyn ReadAt,
    opts: &IndexOptions,
    progress: &indicatif::ProgressBar,
) -> Result<Indexed> {
    if let Some(format) = crate::image::container_format(img) {
        return Err(crate::Error::unsupported(
            "image format",
            0,
            format!("this is a {format} image, not a raw disk; convert it first: qemu-img convert -O raw IMAGE disk.img"),
        ));
    }
    let mut map = MapBuilder::new(img.size());
    let vopts = VolumeOptions {
        naming: DeviceNaming::new(&opts.device),
        sector_size: opts.sector_size,
    };
    let volumes = volume::scan(img, &mut map, &vopts)?;
    for region in &volumes.regions {
        if !volume::has_ext_magic(img, region.range.start) {
            continue;
        }
        if let Err(e) = crate::ext4::walk(img, region, &mut map, progress) {
            let msg = format!("filesystem on {} not (fully) mapped: {e}", region.device);
            map.warn(e.offset(), msg);
        }
    }
    let mut layout = map.layout(volumes.disk);
    assign_unknown(&mut map, &mut layout);
    let structure_hash = structure_hash(img, &map);
    Ok(Indexed {
        map,
        layout,
        scheme: volumes.scheme,
        sector_size: volumes.sector_size,
        structure_hash,
    })
}

/// Inside a filesystem, bytes that nothing more specific claims are
/// allocated in a bitmap (free space is claimed by `free`) yet owned by no
/// inode or metadata: they become the filesystem's `unknown` object.
fn assign_unknown(map: &mut MapBuilder, layout: &mut [Segment]) {
    let fs_index: HashMap<ObjectId, usize> = map
        .filesystems
        .iter()
        .enumerate()
        .filter_map(|(i, f)| f.object.map(|o| (o, i)))
        .collect();
    let mut unknown: HashMap<ObjectId, ObjectId> = HashMap::new();
    for seg in layout.iter_mut() {
        let Some(&fi) = fs_index.get(&seg.object) else {
            continue;
        };
        let fs_obj = seg.object;
        let id = *unknown.entry(fs_obj).or_insert_with(|| {
            let parent = map.object(fs_obj);
            let mut o = Object::new(
                Kind::Unknown,
                format!("{} unknown", parent.device.clone().unwrap_or_default()),
            );
            o.parent = Some(fs_obj);
            o.partition = parent.partition;
            o.device = parent.device.clone();
            map.add_object(o)
        });
        let logical = map.filesystems[fi].unknown_bytes;
        map.add_extent(id, seg.start..seg.end, logical, 0);
        map.filesystems[fi].unknown_bytes += seg.end - seg.start;
        seg.object = id;
    }
    for (fs_obj, id) in unknown {
        let bytes = map.filesystems[fs_index[&fs_obj]].unknown_bytes;
        map.object_mut(id).size = Some(bytes);
    }
}

/// Hashes the bytes that identify this image's structure: partition table
/// sectors and primary superblocks. A changed table or a filesystem that was
/// written to since indexing gives a different hash.
fn structure_hash(img: &dyn ReadAt, map: &MapBuilder) -> String {
    let mut h = Sha256::new();
    h.update(img.size().to_le_bytes());
    for e in &map.extents {
        let kind = map.object(e.object).kind();
        if matches!(
            kind,
            Kind::Mbr | Kind::Ebr | Kind::GptHeader | Kind::GptEntries | Kind::Superblock
        ) {
            // Every such extent is bounded by the parsers (≤ 4 MiB for GPT).
            if let Ok(bytes) = img.read_vec("fingerprint", e.start, e.end - e.start) {
                h.update(e.start.to_le_bytes());
                h.update(&bytes);
            }
        }
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// What a fresh walk of an image says about a map of it.
pub enum Verdict {
    /// The image has the map's size, partition tables and superblocks;
    /// here is the walk.
    Matches(Box<Indexed>),
    /// Why the map does not describe this image.
    Differs(String),
}

/// Walks `img` again, with the options the map `conn` was made with, and
/// compares it with the map's fingerprint (`meta`: image size and the hash
/// of partition tables and primary superblocks). Commands that act on an
/// image through its map (`space`, `sparsify`) check this first.
pub fn check_against_map(conn: &rusqlite::Connection, img: &dyn ReadAt) -> Result<Verdict> {
    use rusqlite::OptionalExtension;
    let get = |k: &str| -> Result<Option<String>> {
        Ok(conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [k], |r| r.get(0))
            .optional()?)
    };
    let size = img.size();
    let want: Option<u64> = get("image_size")?.and_then(|s| s.parse().ok());
    if want != Some(size) {
        return Ok(Verdict::Differs(format!(
            "the image has {size} bytes, the map's image {}",
            want.map_or_else(|| "an unknown number of".to_string(), |w| w.to_string())
        )));
    }
    let options: serde_json::Value = get("options")?
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default();
    let opts = IndexOptions {
        device: options["device"].as_str().unwrap_or("sda").to_string(),
        sector_size: options["sector_size"].as_u64(),
    };
    let indexed = index(img, &opts, &indicatif::ProgressBar::hidden())?;
    if get("structure_sha256")?.unwrap_or_default() != indexed.structure_hash {
        return Ok(Verdict::Differs(
            "its partition tables or superblocks changed since it was indexed".into(),
        ));
    }
    Ok(Verdict::Matches(Box::new(indexed)))
}

/// The `meta` rows for a map of `image`.
pub fn meta_rows(
    image: &Path,
    file: Option<&std::fs::File>,
    idx: &Indexed,
    opts: &IndexOptions,
) -> Vec<(String, String)> {
    let abs = std::fs::canonicalize(image).unwrap_or_else(|_| image.to_path_buf());
    let mtime = file
        .and_then(|f| f.metadata().ok())
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let options = serde_json::json!({
        "device": opts.device,
        "sector_size": opts.sector_size,
    });
    vec![
        ("bmap_version".into(), env!("CARGO_PKG_VERSION").into()),
        (
            "schema_version".into(),
            crate::store::SCHEMA_VERSION.to_string(),
        ),
        ("indexed_at".into(), format_utc(now)),
        ("options".into(), options.to_string()),
        ("image_path".into(), abs.display().to_string()),
        ("image_size".into(), idx.map.image_size.to_string()),
        ("image_mtime".into(), format_utc(mtime)),
        ("structure_sha256".into(), idx.structure_hash.clone()),
        ("partition_scheme".into(), idx.scheme.into()),
        ("sector_size".into(), idx.sector_size.to_string()),
        (
            "disk_device".into(),
            DeviceNaming::new(&opts.device).disk_path(),
        ),
    ]
}

/// Seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn format_utc(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm), valid for all u64 days
    // that fit a plausible calendar.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formatting() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_utc(1_795_219_200), "2026-11-21T00:00:00Z");
    }
}
