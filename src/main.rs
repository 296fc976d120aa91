//! The `bmap` command line: a thin layer over the library.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};

use bmap::image::ImageFile;
use bmap::index::{self, IndexOptions};
use bmap::units::{human, parse_range};
use bmap::{query, store};

mod allocator;
mod plot_cmd;
mod replay_cmd;
mod serve_cmd;
mod space_cmd;
mod sparsify_cmd;
mod sql_cmd;
mod tui_cmd;

// Large tables on huge pages, buffers on cache lines: see the module.
#[global_allocator]
static ALLOCATOR: allocator::Allocator = allocator::Allocator;

/// Map every byte of a VM disk image to what lives there.
#[derive(Debug, Parser)]
#[command(name = "bmap", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Read a raw disk image (read-only) and write its map.
    Index {
        /// The raw disk image (or block device).
        image: PathBuf,
        /// Where to write the map [default: IMAGE with .bmap appended].
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Replace an existing map.
        #[arg(long)]
        force: bool,
        /// The guest's name for the disk (sda, vda, nvme0n1…).
        #[arg(long, default_value = "sda")]
        device: String,
        /// Logical sector size in bytes [default: detect; 512 unless GPT
        /// is found at 4096].
        #[arg(long, value_parser = parse_sector_size)]
        sector_size: Option<u64>,
    },
    /// Summarise a map: partitions, filesystems, bytes per kind, warnings.
    Info {
        map: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Name the objects covering OFFSET[+LEN], most specific first.
    Lookup {
        map: PathBuf,
        /// Byte offsets, each optionally +length: 0x1a2b000, 1G+4K, 2048s;
        /// `-` reads them from standard input, one per line.
        #[arg(required = true)]
        ranges: Vec<String>,
        #[arg(long)]
        json: bool,
        /// At most this many layout segments.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// Join a block-level I/O trace with a map: which objects did the guest
    /// read and write, in order?
    Replay {
        /// The trace file (nbdkit log filter, qemu trace events, blkparse
        /// text, or CSV `time,op,offset,length`); `-` reads standard input.
        trace: PathBuf,
        /// The map [default: the only *.bmap in the current directory].
        #[arg(long)]
        map: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = TraceFormat::Auto)]
        format: TraceFormat,
        /// Files in order of first access, bytes per kind, reads of free space.
        #[arg(long, conflicts_with = "boot_list")]
        summary: bool,
        /// Paths in first-access order, one per line (for readahead tools).
        #[arg(long)]
        boot_list: bool,
        /// Log every piece with its disk offset, offset in the object and time.
        #[arg(short, long)]
        verbose: bool,
        #[arg(long, conflicts_with = "csv")]
        json: bool,
        #[arg(long)]
        csv: bool,
        /// Also store the trace in the map (tables behind the `accesses` and
        /// `accessed_objects` views); storing it again replaces it.
        #[arg(long)]
        store: bool,
        /// Name to store the trace under [default: the trace's file name].
        #[arg(long, requires = "store")]
        name: Option<String>,
        /// blkparse: the action whose lines are requests [default: D, or Q
        /// when the trace has no D lines].
        #[arg(long)]
        action: Option<String>,
        /// blkparse: byte offset of the traced device in the image, when a
        /// partition rather than the whole disk was traced (e.g. 1M, 2048s).
        #[arg(long, value_parser = parse_size_arg)]
        offset: Option<u64>,
    },
    /// Run SQL on a map: an aligned table, or --csv / --json for scripts.
    /// Read-only unless --write.
    Sql {
        map: PathBuf,
        /// SQL to run [default: read from standard input; several
        /// statements may follow each other].
        query: Option<String>,
        #[arg(long, conflicts_with = "json")]
        csv: bool,
        #[arg(long)]
        json: bool,
        /// Show byte counts (columns named *bytes*, *size*, *length*) as
        /// sizes: 1.5 MiB.
        #[arg(long)]
        human: bool,
        /// Allow statements that change the map.
        #[arg(long)]
        write: bool,
    },
    /// Browse a map in the terminal: the layout as a grid, the object tree,
    /// search; with a trace, watch the guest's reads replayed on the map.
    Tui {
        /// The map [default: the only *.bmap in the current directory].
        map: Option<PathBuf>,
        /// A trace file to replay, or the name of a trace stored in the map
        /// [default: the map's most recently stored trace, if any].
        #[arg(long)]
        trace: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = TraceFormat::Auto)]
        format: TraceFormat,
        /// blkparse: the action whose lines are requests (as for replay).
        #[arg(long)]
        action: Option<String>,
        /// blkparse: byte offset of the traced device in the image.
        #[arg(long, value_parser = parse_size_arg)]
        offset: Option<u64>,
        /// Glyphs and bold/reverse only (also when NO_COLOR is set).
        #[arg(long)]
        no_color: bool,
    },
    /// Export an image over NBD and log, live, which objects each request
    /// touches (virt-bmap style); optionally record a trace for replay.
    Serve(serve_cmd::Args),
    /// Draw the layout as SVG (a grid coloured by kind, partitions
    /// labelled, a legend), or with --trace the accesses over time.
    Plot(plot_cmd::Args),
    /// Free, stale and sparse bytes per filesystem: free bytes still
    /// holding data, free bytes already holes on the host, free extent
    /// sizes, fragmentation and the smallest filesystem for the data.
    Space(space_cmd::Args),
    /// Punch holes in IMAGE over filesystem-free blocks and unpartitioned
    /// space (in place, offline); refuses unless the map matches and the
    /// filesystems are clean.
    Sparsify(sparsify_cmd::Args),
    /// Write a map in another tool's format.
    Export {
        map: PathBuf,
        #[arg(long, value_enum, default_value_t = ExportFormat::VirtBmap)]
        format: ExportFormat,
        /// Output file [default: standard output].
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TraceFormat {
    Auto,
    Nbdkit,
    Qemu,
    Blkparse,
    Csv,
}

fn trace_format(format: TraceFormat) -> Option<bmap::trace::Format> {
    match format {
        TraceFormat::Auto => None,
        TraceFormat::Nbdkit => Some(bmap::trace::Format::Nbdkit),
        TraceFormat::Qemu => Some(bmap::trace::Format::Qemu),
        TraceFormat::Blkparse => Some(bmap::trace::Format::Blkparse),
        TraceFormat::Csv => Some(bmap::trace::Format::Csv),
    }
}

fn parse_size_arg(s: &str) -> Result<u64, String> {
    bmap::units::parse_size(s)
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ExportFormat {
    /// virt-bmap's `1 START END TYPE DEVICE [PATH]`, hex, END exclusive.
    VirtBmap,
}

fn parse_sector_size(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(n @ (512 | 1024 | 2048 | 4096)) => Ok(n),
        _ => Err("sector size must be 512, 1024, 2048 or 4096".into()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                if io.kind() == std::io::ErrorKind::BrokenPipe {
                    return ExitCode::SUCCESS;
                }
            }
            eprintln!("bmap: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Exit status when a map was written but parts of the image were damaged.
const EXIT_WARNINGS: u8 = 2;

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Index {
            image,
            output,
            force,
            device,
            sector_size,
        } => cmd_index(&image, output, force, device, sector_size),
        Command::Info { map, json } => cmd_info(&map, json),
        Command::Lookup {
            map,
            ranges,
            json,
            limit,
        } => cmd_lookup(&map, &ranges, json, limit),
        Command::Export {
            map,
            format,
            output,
        } => cmd_export(&map, format, output),
        Command::Sql {
            map,
            query,
            csv,
            json,
            human,
            write,
        } => sql_cmd::run(sql_cmd::Args {
            map,
            query,
            csv,
            json,
            human,
            write,
        }),
        Command::Tui {
            map,
            trace,
            format,
            action,
            offset,
            no_color,
        } => tui_cmd::run(tui_cmd::Args {
            map,
            trace,
            format: trace_format(format),
            action,
            offset: offset.unwrap_or(0),
            color: !no_color && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        }),
        Command::Serve(args) => serve_cmd::run(args),
        Command::Plot(args) => plot_cmd::run(args),
        Command::Sparsify(args) => sparsify_cmd::run(args),
        Command::Space(args) => space_cmd::run(args),
        Command::Replay {
            trace,
            map,
            format,
            summary,
            boot_list,
            verbose,
            json,
            csv,
            store,
            name,
            action,
            offset,
        } => replay_cmd::run(replay_cmd::Args {
            trace,
            map,
            format: trace_format(format),
            view: if summary {
                bmap::replay::View::Summary
            } else if boot_list {
                bmap::replay::View::BootList
            } else {
                bmap::replay::View::Log
            },
            output: if json {
                bmap::replay::OutputFormat::Json
            } else if csv {
                bmap::replay::OutputFormat::Csv
            } else {
                bmap::replay::OutputFormat::Text
            },
            verbose,
            store,
            name,
            action,
            offset: offset.unwrap_or(0),
        }),
    }
}

fn progress_bar() -> indicatif::ProgressBar {
    if std::io::stderr().is_terminal() {
        let pb = indicatif::ProgressBar::new(0);
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {msg:32} [{bar:40}] {pos}/{len} groups",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        pb
    } else {
        indicatif::ProgressBar::hidden()
    }
}

/// The last phase has no countable steps: a ticking spinner says it is alive.
fn spinner_phase(pb: &indicatif::ProgressBar, msg: &str) {
    if pb.is_hidden() {
        return;
    }
    pb.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg} {elapsed}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    pb.set_message(msg.to_string());
    pb.enable_steady_tick(std::time::Duration::from_millis(120));
}

fn cmd_index(
    image: &Path,
    output: Option<PathBuf>,
    force: bool,
    device: String,
    sector_size: Option<u64>,
) -> anyhow::Result<ExitCode> {
    let out = output.unwrap_or_else(|| {
        let mut name = image.as_os_str().to_os_string();
        name.push(".bmap");
        PathBuf::from(name)
    });
    if out.exists() && !force {
        bail!("{} exists; use --force to replace it", out.display());
    }
    // Ctrl-C must not leave the half-written temporary map behind.
    let tmp = store::temp_path(&out);
    let _ = ctrlc::set_handler(move || {
        let _ = std::fs::remove_file(&tmp);
        eprintln!("\nbmap: interrupted; no map written");
        std::process::exit(130);
    });
    let img = ImageFile::open(image).with_context(|| format!("opening {}", image.display()))?;
    let opts = IndexOptions {
        device,
        sector_size,
    };
    let pb = progress_bar();
    let idx =
        index::index(&img, &opts, &pb).with_context(|| format!("indexing {}", image.display()))?;
    spinner_phase(&pb, &format!("writing {}", out.display()));
    let meta = index::meta_rows(image, Some(img.file()), &idx, &opts);
    store::write(&out, &idx.map, &idx.layout, &meta, force)
        .with_context(|| format!("writing {}", out.display()))?;
    pb.finish_and_clear();

    let files: u64 = idx.map.filesystems.iter().map(|f| f.files).sum();
    let dirs: u64 = idx.map.filesystems.iter().map(|f| f.directories).sum();
    eprintln!(
        "bmap: {}: {} partitions, {} filesystems, {dirs} directories, {files} files; map written to {}",
        image.display(),
        idx.map.partitions.len(),
        idx.map.filesystems.len(),
        out.display()
    );
    if idx.map.warnings.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        for w in idx.map.warnings.iter().take(20) {
            match w.offset {
                Some(o) => eprintln!("bmap: warning: at byte {o} (0x{o:x}): {}", w.message),
                None => eprintln!("bmap: warning: {}", w.message),
            }
        }
        if idx.map.warnings.len() > 20 {
            eprintln!(
                "bmap: … {} more warnings in the map (bmap info)",
                idx.map.warnings.len() - 20
            );
        }
        eprintln!(
            "bmap: the map is partial: {} warnings",
            idx.map.warnings.len()
        );
        Ok(ExitCode::from(EXIT_WARNINGS))
    }
}

fn cmd_info(map: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let conn = store::open(map, false)?;
    let info = query::info(&conn)?;
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &info)?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "image:       {} ({}, {} bytes)",
        info.image_path,
        human(info.image_size),
        info.image_size
    )?;
    writeln!(out, "modified:    {}", info.image_mtime)?;
    writeln!(
        out,
        "indexed:     {} by bmap {} (schema {})",
        info.indexed_at, info.bmap_version, info.schema_version
    )?;
    writeln!(out, "structure:   sha256 {}", info.structure_sha256)?;
    writeln!(
        out,
        "table:       {} ({}-byte sectors)",
        info.partition_scheme, info.sector_size
    )?;
    if !info.partitions.is_empty() {
        writeln!(out, "\npartitions:")?;
        writeln!(
            out,
            "  {:<12} {:<9} {:>14} {:>14} {:>10}  {:<8} type",
            "device", "role", "start", "end", "size", "fs"
        )?;
        for p in &info.partitions {
            writeln!(
                out,
                "  {:<12} {:<9} {:>14} {:>14} {:>10}  {:<8} {}{}",
                p.device,
                p.role,
                p.start,
                p.end,
                human(p.end - p.start),
                p.filesystem.as_deref().unwrap_or("-"),
                p.type_id,
                p.label
                    .as_ref()
                    .map(|l| format!(" \"{l}\""))
                    .unwrap_or_default()
            )?;
        }
    }
    for f in &info.filesystems {
        writeln!(
            out,
            "\nfilesystem {} ({}, {}-byte blocks, {}):",
            f.device,
            f.fs_type,
            f.block_size,
            human(f.size_bytes)
        )?;
        writeln!(
            out,
            "  uuid {}{}",
            f.uuid,
            if f.label.is_empty() {
                String::new()
            } else {
                format!(", label \"{}\"", f.label)
            }
        )?;
        writeln!(out, "  state: {}", f.state)?;
        writeln!(out, "  features: {}", f.features)?;
        writeln!(
            out,
            "  {} files, {} directories, {} symlinks",
            f.files, f.directories, f.symlinks
        )?;
        writeln!(
            out,
            "  free: {} ({} bytes; superblock says {} blocks)",
            human(f.free_bytes),
            f.free_bytes,
            f.free_blocks_superblock
        )?;
        writeln!(
            out,
            "  unknown (allocated, claimed by nothing): {} bytes",
            f.unknown_bytes
        )?;
        if f.unlinked_inodes > 0 {
            writeln!(
                out,
                "  in-use inodes not reachable from /: {}",
                f.unlinked_inodes
            )?;
        }
        if let Some(j) = &f.external_journal {
            writeln!(out, "  {j}")?;
        }
    }
    writeln!(out, "\nlayout ({} objects):", info.objects)?;
    for k in &info.layout_by_kind {
        let pct = if info.image_size > 0 {
            k.bytes as f64 * 100.0 / info.image_size as f64
        } else {
            0.0
        };
        writeln!(
            out,
            "  {:<18} {:>12} {:>6.2}%  {:>9} segments",
            k.kind,
            human(k.bytes),
            pct,
            k.segments
        )?;
    }
    if !info.warnings.is_empty() {
        writeln!(out, "\nwarnings ({}):", info.warnings.len())?;
        for w in &info.warnings {
            match w.offset {
                Some(o) => writeln!(out, "  at byte {o} (0x{o:x}): {}", w.message)?,
                None => writeln!(out, "  {}", w.message)?,
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_lookup(map: &Path, ranges: &[String], json: bool, limit: usize) -> anyhow::Result<ExitCode> {
    let ranges: Vec<String> = if ranges == ["-"] {
        std::io::stdin()
            .lines()
            .map(|l| l.map(|l| l.trim().to_string()))
            .filter(|l| !matches!(l, Ok(l) if l.is_empty()))
            .collect::<Result<_, _>>()?
    } else {
        ranges.to_vec()
    };
    let conn = store::open(map, false)?;
    // One read transaction for all lookups: SQLite then takes its lock once
    // instead of once per statement.
    let tx = conn.unchecked_transaction()?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut docs = Vec::new();
    for range in &ranges {
        let (offset, len) = parse_range(range).map_err(|e| anyhow::anyhow!("{range}: {e}"))?;
        let (hits, truncated) = query::lookup(&tx, offset, len.unwrap_or(1), limit)
            .with_context(|| format!("looking up {range}"))?;
        if json {
            docs.push(
                serde_json::json!({ "range": range, "segments": hits, "truncated": truncated }),
            );
            continue;
        }
        if ranges.len() > 1 {
            writeln!(out, "== {range}")?;
        }
        for h in &hits {
            writeln!(
                out,
                "0x{:x}-0x{:x} ({} bytes)",
                h.start,
                h.end,
                h.end - h.start
            )?;
            for o in &h.objects {
                let mut line = format!("  {:<18} {}", o.kind, o.name);
                if let Some(i) = o.inode {
                    line.push_str(&format!("  inode {i}"));
                }
                if let Some(off) = o.offset_in_object {
                    line.push_str(&format!("  @0x{off:x}"));
                }
                writeln!(out, "{line}")?;
            }
        }
        if truncated {
            writeln!(out, "… more segments; raise --limit")?;
        }
    }
    if json {
        // One range: its object; several: a list of them.
        let doc = if docs.len() == 1 {
            docs.remove(0)
        } else {
            serde_json::Value::Array(docs)
        };
        serde_json::to_writer_pretty(&mut out, &doc)?;
        writeln!(out)?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn cmd_export(
    map: &Path,
    format: ExportFormat,
    output: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let conn = store::open(map, false)?;
    match format {
        ExportFormat::VirtBmap => {
            let mut w: Box<dyn Write> = match &output {
                Some(p) => Box::new(std::io::BufWriter::new(
                    std::fs::File::create(p)
                        .with_context(|| format!("creating {}", p.display()))?,
                )),
                None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
            };
            query::export_virt_bmap(&conn, &mut w)?;
            w.flush()?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
