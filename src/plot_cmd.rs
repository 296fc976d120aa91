//! `bmap plot`: reads the map's layout and partitions (and a trace, with
//! `--trace`) and writes the SVG that [`bmap::plot`] draws.

use std::io::BufReader;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};

use bmap::plot::{self, Access, Span};
use bmap::replay::MapIndex;
use bmap::store;
use bmap::trace::Op;
use bmap_tui::kinds;

/// Draw the layout as SVG (partitions labelled, a legend per kind), or
/// with --trace the accesses over time.
#[derive(Debug, clap::Args)]
pub struct Args {
    pub map: PathBuf,
    /// Where to write the SVG (`-`: standard output).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Plot this trace's accesses over time instead of the layout.
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// Cells per row of the layout grid (16 to 2048).
    #[arg(long, default_value_t = 256)]
    pub columns: u32,
    /// Rows of the layout grid at most, 1 to 8192 (cells grow to fit).
    #[arg(long, default_value_t = 128)]
    pub rows: u32,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let conn = store::open(&args.map, false)?;
    let image_size: u64 = conn
        .query_row("SELECT value FROM meta WHERE key = 'image_size'", [], |r| {
            r.get::<_, String>(0)
        })
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&n| n > 0)
        .with_context(|| format!("{}: the map records no image size", args.map.display()))?;
    let name = args
        .map
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let svg = match &args.trace {
        None => {
            let mut segments = Vec::new();
            let mut st = conn.prepare("SELECT start, end, kind FROM layout ORDER BY start")?;
            let mut rows = st.query([])?;
            while let Some(r) = rows.next()? {
                let (s, e, k): (i64, i64, String) = (r.get(0)?, r.get(1)?, r.get(2)?);
                if let (Ok(s), Ok(e)) = (u64::try_from(s), u64::try_from(e)) {
                    if s < e {
                        segments.push((s, e, kinds::id(&k)));
                    }
                }
            }
            let mut st =
                conn.prepare("SELECT device, start, end FROM partitions ORDER BY start")?;
            let partitions = st
                .query_map([], |r| {
                    Ok(Span {
                        label: r.get(0)?,
                        start: u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
                        end: u64::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            plot::layout_svg(
                &format!("bmap layout: {name}"),
                image_size,
                &segments,
                &partitions,
                args.columns,
                args.rows,
            )
        }
        Some(trace_path) => {
            let accesses = accesses(&conn, trace_path)?;
            if accesses.is_empty() {
                bail!("{}: no reads or writes to plot", trace_path.display());
            }
            let trace_name = trace_path
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
            plot::accesses_svg(
                &format!("bmap accesses: {trace_name} on {name}"),
                image_size,
                &accesses,
            )
        }
    };
    if args.output.as_os_str() == "-" {
        use std::io::Write;
        std::io::stdout().write_all(svg.as_bytes())?;
    } else {
        std::fs::write(&args.output, svg)
            .with_context(|| format!("writing {}", args.output.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The trace's successful reads and writes, each with the kind owning most
/// of its bytes; traces without times are spaced a millisecond apart.
fn accesses(conn: &rusqlite::Connection, path: &std::path::Path) -> anyhow::Result<Vec<Access>> {
    let (format, opts) = crate::replay_cmd::sniff(path, None, None, 0)?;
    let index = MapIndex::load(conn).context("loading the map")?;
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut out = Vec::new();
    let reader = BufReader::with_capacity(1 << 20, file);
    crate::replay_cmd::for_each_request(reader, format, &opts, |seq, r| {
        let write = match r.op {
            Op::Read => false,
            Op::Write | Op::Zero | Op::Trim => true,
            _ => return,
        };
        if r.failed.is_some() || r.length == 0 {
            return;
        }
        let mut best: (u64, Option<u32>) = (0, None);
        index.split(r.offset, r.length, |p| {
            if p.length > best.0 {
                best = (p.length, p.object);
            }
        });
        let kind = best
            .1
            .and_then(|id| index.kind(id))
            .map_or(kinds::OTHER, |k| kinds::id(k.as_str()));
        out.push(Access {
            time: r.time.unwrap_or(seq as f64 / 1000.0),
            offset: r.offset,
            length: r.length,
            kind,
            write,
        });
    })?;
    Ok(out)
}
