//! `bmap sparsify`: finds the map, runs [`bmap::sparsify`] and reports.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use bmap::sparsify::{self, Options};
use bmap::store;
use bmap::units::human;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The raw image to sparsify, in place.
    pub image: PathBuf,
    /// The map [default: IMAGE.bmap if it exists, else the only *.bmap in
    /// the current directory].
    #[arg(long)]
    pub map: Option<PathBuf>,
    /// Say what would be released; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Where the host filesystem cannot punch holes, write zeroes.
    #[arg(long)]
    pub zero: bool,
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let map = match args.map {
        Some(m) => m,
        None => {
            let beside = PathBuf::from(format!("{}.bmap", args.image.display()));
            if beside.is_file() {
                beside
            } else {
                crate::replay_cmd::find_map()?
            }
        }
    };
    let conn = store::open(&map, false)?;
    let report = sparsify::sparsify(
        &args.image,
        &conn,
        &Options {
            dry_run: args.dry_run,
            zero: args.zero,
        },
    )
    .with_context(|| format!("sparsify {}: nothing was changed", args.image.display()))?;
    let released = report
        .allocated_before
        .saturating_sub(report.allocated_after);
    if args.json {
        let v = serde_json::json!({
            "image": args.image.display().to_string(),
            "dry_run": report.dry_run,
            "free_bytes": report.free_bytes,
            "unpartitioned_bytes": report.unpartitioned_bytes,
            "ranges": report.ranges.len(),
            "allocated_in_ranges": report.allocated_in_ranges,
            "allocated_before": report.allocated_before,
            "allocated_after": report.allocated_after,
            "released_bytes": if report.dry_run { report.allocated_in_ranges } else { released },
            "zeroed_instead": report.zeroed_instead,
        });
        println!("{v:#}");
    } else if report.dry_run {
        println!(
            "{}: would release {} to the host ({} free in the filesystems, {} unpartitioned, in {} ranges; {} of it already holes)",
            args.image.display(),
            human(report.allocated_in_ranges),
            human(report.free_bytes),
            human(report.unpartitioned_bytes),
            report.ranges.len(),
            human((report.free_bytes + report.unpartitioned_bytes).saturating_sub(report.allocated_in_ranges)),
        );
    } else {
        println!(
            "{}: released {} to the host (allocated {} before, {} after); {} free and {} unpartitioned bytes {}",
            args.image.display(),
            human(released),
            human(report.allocated_before),
            human(report.allocated_after),
            human(report.free_bytes),
            human(report.unpartitioned_bytes),
            if report.zeroed_instead { "zeroed" } else { "are holes now" },
        );
    }
    Ok(ExitCode::SUCCESS)
}
