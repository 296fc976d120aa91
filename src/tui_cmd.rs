//! `bmap tui`: opens the map for the terminal UI (the `bmap-tui` crate)
//! and, given a trace file, hands it a loader that parses the trace with
//! bmap's parsers and joins it with the map on the UI's worker thread.

use std::io::{BufReader, Read};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{anyhow, Context};

use bmap::replay::MapIndex;
use bmap::store;
use bmap::trace::{self, Format};
use bmap_tui::{TraceData, TraceOp, TracePiece, TraceRequest, TraceSource};

pub struct Args {
    pub map: Option<PathBuf>,
    pub trace: Option<PathBuf>,
    pub format: Option<Format>,
    pub action: Option<String>,
    pub offset: u64,
    pub color: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let map_path = match args.map {
        Some(m) => m,
        None => crate::replay_cmd::find_map()?,
    };
    // Fail here, before the screen is taken over, if the map is unusable.
    let conn = store::open(&map_path, false)?;
    let stored: Vec<String> = {
        let mut st = conn.prepare("SELECT name FROM traces ORDER BY id")?;
        let names = st.query_map([], |r| r.get(0))?;
        names.collect::<Result<_, _>>()?
    };
    drop(conn);
    let trace = match args.trace {
        None => TraceSource::None,
        Some(path) if path.is_file() => {
            let (format, opts) =
                crate::replay_cmd::sniff(&path, args.format, args.action, args.offset)?;
            TraceSource::File(loader(map_path.clone(), path, format, opts))
        }
        Some(name) => {
            let name = name.to_string_lossy().into_owned();
            if !stored.contains(&name) {
                let known = if stored.is_empty() {
                    "the map has no stored traces".to_string()
                } else {
                    format!("stored traces: {}", stored.join(", "))
                };
                return Err(anyhow!(
                    "{name}: no such trace file, and no trace of that name in {} ({known})",
                    map_path.display()
                ));
            }
            TraceSource::Stored(name)
        }
    };
    let opener_path = map_path.clone();
    let opener: bmap_tui::Opener =
        Arc::new(move || store::open(&opener_path, false).map_err(|e| e.to_string()));
    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&interrupted);
    // In raw mode Ctrl-C is a key; a signal from elsewhere (kill, a closed
    // SSH session) must still give the terminal back. The loop notices the
    // flag within a frame; after a hangup crossterm can spin reading the
    // dead terminal and never return to the loop, so if the process is
    // still here shortly after, it restores what it can and exits.
    let _ = ctrlc::set_handler(move || {
        flag.store(true, Ordering::Relaxed);
        std::thread::sleep(std::time::Duration::from_millis(500));
        bmap_tui::restore_terminal();
        std::process::exit(0);
    });
    let title = map_path.file_name().map_or_else(
        || map_path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    bmap_tui::run(
        opener,
        bmap_tui::Options {
            title,
            trace,
            color: args.color,
            interrupted,
        },
    )
    .map_err(|e| anyhow!(e))?;
    Ok(ExitCode::SUCCESS)
}

/// Counts the bytes read, for the progress bar.
struct Counting<R> {
    inner: R,
    read: std::rc::Rc<std::cell::Cell<u64>>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.set(self.read.get() + n as u64);
        Ok(n)
    }
}

fn loader(
    map_path: PathBuf,
    trace_path: PathBuf,
    format: Format,
    opts: trace::ParseOptions,
) -> bmap_tui::TraceLoader {
    Box::new(move |progress: &dyn Fn(f64)| {
        load(&map_path, &trace_path, format, &opts, progress).map_err(|e| format!("{e:#}"))
    })
}

fn load(
    map_path: &std::path::Path,
    trace_path: &std::path::Path,
    format: Format,
    opts: &trace::ParseOptions,
    progress: &dyn Fn(f64),
) -> anyhow::Result<TraceData> {
    let conn = store::open(map_path, false)?;
    let index = MapIndex::load(&conn).with_context(|| format!("loading {}", map_path.display()))?;
    let file = std::fs::File::open(trace_path)
        .with_context(|| format!("opening {}", trace_path.display()))?;
    let total = file.metadata().map_or(0, |m| m.len()).max(1);
    let read = std::rc::Rc::new(std::cell::Cell::new(0u64));
    let reader = BufReader::with_capacity(
        1 << 20,
        Counting {
            inner: file,
            read: std::rc::Rc::clone(&read),
        },
    );
    let mut data = TraceData {
        name: trace_path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
        ..TraceData::default()
    };
    let mut too_many = false;
    crate::replay_cmd::for_each_request(reader, format, opts, |n, r| {
        let Ok(first_piece) = u32::try_from(data.pieces.len()) else {
            too_many = true;
            return;
        };
        data.requests.push(TraceRequest {
            time: r.time,
            op: TraceOp::parse(r.op.as_str()),
            offset: r.offset,
            length: r.length,
            failed: r.failed.is_some(),
            first_piece,
        });
        index.split(r.offset, r.length, |p| {
            data.pieces.push(TracePiece {
                object: p.object.map(i64::from),
                bytes: p.length,
            })
        });
        if n % 4096 == 0 {
            progress(read.get() as f64 / total as f64);
        }
    })?;
    if too_many {
        return Err(anyhow!("{}: too many requests", trace_path.display()));
    }
    Ok(data)
}
