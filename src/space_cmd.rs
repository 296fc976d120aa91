//! `bmap space`: free, stale and sparse bytes per filesystem, with the free
//! extent histogram, fragmentation and a minimum-size estimate.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use serde_json::{json, Value};

use bmap::space::{self, FsSpace, Report};
use bmap::store;
use bmap::units::human;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The map written by `bmap index`.
    pub map: PathBuf,
    /// The raw image [default: the path recorded in the map].
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// Print a JSON list, one object per filesystem.
    #[arg(long)]
    pub json: bool,
    /// With --json: the unpartitioned space's figures instead, as one
    /// object (the list holds filesystems only).
    #[arg(long, requires = "json")]
    pub unpartitioned: bool,
}

/// Runs `bmap space`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let conn = store::open(&args.map, false)?;
    let fp = space::fingerprint(&conn)?;
    let image = match &args.image {
        Some(p) => p.clone(),
        None if fp.image_path.is_empty() => {
            bail!(
                "{}: the map records no image path; name the image with --image",
                args.map.display()
            )
        }
        None => PathBuf::from(&fp.image_path),
    };
    check_image(&conn, &image, &fp, &args.map)?;
    let report = space::compute(&conn, &image)
        .with_context(|| format!("reading free space of {}", image.display()))?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.json {
        let value = if args.unpartitioned {
            unpartitioned_json(&report)
        } else {
            Value::Array(report.filesystems.iter().map(fs_json).collect())
        };
        serde_json::to_writer_pretty(&mut out, &value)?;
        writeln!(out)?;
    } else {
        text(&mut out, &image, &report)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The image must exist, have the size the map records and the same
/// partition tables and superblocks (see [`space::verify_image`]).
fn check_image(
    conn: &rusqlite::Connection,
    image: &Path,
    fp: &space::Fingerprint,
    map: &Path,
) -> anyhow::Result<()> {
    std::fs::metadata(image).with_context(|| {
        format!(
            "image {} (of map {}) cannot be opened; name it with --image",
            image.display(),
            map.display()
        )
    })?;
    space::verify_image(conn, image, fp)?;
    Ok(())
}

fn fs_json(f: &FsSpace) -> Value {
    let mut v = serde_json::to_value(f).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        // Field order: the required names first.
        let mut o = serde_json::Map::new();
        for k in [
            "partition",
            "device",
            "type",
            "free_bytes",
            "free_nonzero_bytes",
            "free_hole_bytes",
        ] {
            if let Some(x) = m.remove(k) {
                o.insert(k.into(), x);
            }
        }
        o.append(m);
        return Value::Object(o);
    }
    v
}

fn unpartitioned_json(r: &Report) -> Value {
    let u = &r.unpartitioned;
    json!({
        "partition": null,
        "device": null,
        "type": "unpartitioned",
        "free_bytes": u.bytes,
        "free_nonzero_bytes": u.nonzero_bytes,
        "free_hole_bytes": u.hole_bytes,
        "sparsify_bytes": u.sparsify_bytes,
        "size_bytes": u.bytes,
        "used_bytes": 0,
    })
}

fn pct(part: u64, whole: u64) -> String {
    if whole == 0 {
        "0.0%".into()
    } else {
        format!("{:.1}%", 100.0 * part as f64 / whole as f64)
    }
}

fn text(out: &mut dyn Write, image: &Path, r: &Report) -> std::io::Result<()> {
    writeln!(
        out,
        "image {} ({}, host block {} B)",
        image.display(),
        human(r.image_size),
        r.host_block_size
    )?;
    for f in &r.filesystems {
        writeln!(out)?;
        let part = f
            .partition
            .map_or("bare filesystem".to_string(), |p| format!("partition {p}"));
        writeln!(
            out,
            "{} ({part}, {}, block size {})",
            f.device, f.fs_type, f.block_size
        )?;
        writeln!(out, "  size            {:>12}", human(f.size_bytes))?;
        writeln!(
            out,
            "  used            {:>12}  {}",
            human(f.used_bytes),
            pct(f.used_bytes, f.size_bytes)
        )?;
        writeln!(
            out,
            "  free            {:>12}  {}",
            human(f.free_bytes),
            pct(f.free_bytes, f.size_bytes)
        )?;
        writeln!(
            out,
            "    non-zero      {:>12}  {} of free: stale data (zerofree's target)",
            human(f.free_nonzero_bytes),
            pct(f.free_nonzero_bytes, f.free_bytes)
        )?;
        writeln!(
            out,
            "    holes         {:>12}  {} of free: already sparse on the host",
            human(f.free_hole_bytes),
            pct(f.free_hole_bytes, f.free_bytes)
        )?;
        writeln!(
            out,
            "    sparsify      {:>12}  would return to the host (bmap sparsify)",
            human(f.sparsify_bytes)
        )?;
        writeln!(
            out,
            "  free extents    {:>12}  largest {}",
            f.free_extents,
            human(f.largest_free_extent_bytes)
        )?;
        if !f.free_extent_histogram.is_empty() {
            writeln!(out, "  free extent sizes:")?;
            writeln!(
                out,
                "    {:<21}  {:>10}  {:>10}  {:>6}",
                "free extent size", "extents", "bytes", "%"
            )?;
            for b in &f.free_extent_histogram {
                writeln!(
                    out,
                    "    {:>9} - {:<9}  {:>10}  {:>10}  {:>6.2}",
                    human(b.min_bytes),
                    human(b.max_bytes),
                    b.extents,
                    human(b.bytes),
                    b.percent
                )?;
            }
        }
        writeln!(
            out,
            "  files           {:>12}  {} non-contiguous ({:.1}%)",
            f.files_with_blocks, f.noncontiguous_files, f.noncontiguous_percent
        )?;
        if !f.worst_files.is_empty() {
            writeln!(out, "  most fragmented:")?;
            for w in &f.worst_files {
                writeln!(
                    out,
                    "    {:>6} fragments {:>6} extents  {}",
                    w.fragments, w.extents, w.path
                )?;
            }
        }
        let m = &f.min_size;
        writeln!(
            out,
            "  smallest filesystem for this data: {} ({} with 5% margin), now {}",
            human(m.estimate_bytes),
            human(m.recommended_bytes),
            human(f.size_bytes)
        )?;
        writeln!(
            out,
            "    data {} + inode tables {} + group metadata {} + journal {}",
            human(m.data_bytes),
            human(m.inode_table_bytes),
            human(m.group_metadata_bytes),
            human(m.journal_bytes)
        )?;
    }
    let u = &r.unpartitioned;
    if u.bytes > 0 {
        writeln!(out)?;
        writeln!(out, "unpartitioned   {:>12}", human(u.bytes))?;
        writeln!(
            out,
            "    non-zero      {:>12}  {}",
            human(u.nonzero_bytes),
            pct(u.nonzero_bytes, u.bytes)
        )?;
        writeln!(
            out,
            "    holes         {:>12}  {}",
            human(u.hole_bytes),
            pct(u.hole_bytes, u.bytes)
        )?;
        writeln!(
            out,
            "    sparsify      {:>12}  would return to the host",
            human(u.sparsify_bytes)
        )?;
    }
    Ok(())
}
