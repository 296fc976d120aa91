//! `bmap replay`: finds the map, opens and sniffs the trace, runs the
//! replay and turns its outcome into an exit status.

use std::collections::VecDeque;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};

use bmap::replay::{self, MapIndex, OutputFormat, ReplayOptions, View};
use bmap::store;
use bmap::trace::{self, Format, ParseOptions};

pub struct Args {
    pub trace: PathBuf,
    pub map: Option<PathBuf>,
    pub format: Option<Format>,
    pub view: View,
    pub output: OutputFormat,
    pub verbose: bool,
    pub store: bool,
    pub name: Option<String>,
    pub action: Option<String>,
    pub offset: u64,
}

/// Bytes of output buffered.
const OUT_BUFFER: usize = 256 * 1024;

/// Bytes read to guess the format.
const SNIFF_BYTES: usize = 64 * 1024;

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let map_path = match args.map.clone() {
        Some(m) => m,
        None => find_map()?,
    };
    let conn = store::open(&map_path, false)?;
    // The map is read while the trace is opened and parsed: the layout and
    // kinds (all that attributing needs) on one thread, from the packed
    // copy if the map has one, else from the tables; then the names and
    // paths (only needed to print) on another, started once the layout is
    // in: until then the workers wait for the layout, and a thread beside
    // it on the same cores only held it up (measured: the layout loaded in
    // 16-62 ms beside it, 8-20 ms without; 0.97x the summary's time).
    // --store writes to the map, so there everything is read first, by
    // one connection.
    let load_objects = (!args.store).then(|| {
        let path = map_path.clone();
        move || {
            std::thread::spawn(move || {
                let conn = store::open(&path, false)?;
                with_small_cache(&conn, MapIndex::load_objects)
            })
        }
    });
    let layout = std::thread::spawn(move || {
        let index = match load_objects {
            None => MapIndex::load(&conn),
            Some(load_objects) => {
                let layout = match with_small_cache(&conn, MapIndex::load_packed_layout) {
                    Ok(Some(index)) => Ok(index),
                    Ok(None) => MapIndex::load_layout(&conn),
                    Err(e) => Err(e),
                };
                layout.map(|index| index.objects_from(load_objects()))
            }
        };
        (conn, index)
    });
    let mut prepared = prepare(&args);
    let load = || -> anyhow::Result<(rusqlite::Connection, MapIndex)> {
        let (conn, index) = match layout.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        Ok((
            conn,
            index.with_context(|| format!("loading {}", map_path.display()))?,
        ))
    };
    // The summary and the boot list of an nbdkit trace file are counted
    // on every core while the map loads (see `replay::fused`); a trace
    // that needs it, and every other, is replayed in order.
    let counting = prepared
        .as_mut()
        .ok()
        .filter(|p| args.view != View::Log && !args.store && p.format == Format::Nbdkit)
        .and_then(|p| p.file.take());
    let mut early = None;
    let (conn, index, counted) = match counting {
        Some(file) => {
            let mut conn = None;
            // Parsed where it lies in the page cache, if it can be mapped.
            let mapped = bmap::trace::mapped::Mapped::new(&file);
            let src: &dyn bmap::trace::PositionalRead = match &mapped {
                Some(m) => m,
                None => &file,
            };
            let c =
                replay::fused::count(src, replay::fused::workers(), replay::fused::CHUNK, || {
                    load().map(|(c, index)| {
                        conn = Some(c);
                        index
                    })
                })?;
            if let Some(m) = mapped.as_ref().filter(|m| m.cut()) {
                let now = file.metadata().map_or(0, |meta| meta.len());
                bail!(
                    "{}: the trace shrank while it was read (from {} bytes to {now})",
                    args.trace.display(),
                    m.bytes().len()
                );
            }
            drop(mapped);
            if c.tally.is_none() {
                early = Some(parse_in_parallel(file, false));
            }
            let conn = conn.context("the map's connection")?;
            (conn, c.index, c.tally)
        }
        None => {
            // Parsing needs no map, so an nbdkit trace file starts being
            // parsed while the map loads.
            early = prepared
                .as_mut()
                .ok()
                .filter(|p| p.format == Format::Nbdkit && !args.store)
                .and_then(|p| p.file.take())
                .map(|file| parse_in_parallel(file, args.view == View::Log));
            let (conn, index) = load()?;
            (conn, index, None)
        }
    };
    // The process ends soon after the replay: freeing hundreds of
    // thousands of names one by one would only cost time.
    let index = std::mem::ManuallyDrop::new(index);
    let Prepared {
        input,
        format,
        popts,
        stdin,
        file: _,
    } = prepared?;
    let trace_name = args
        .name
        .clone()
        .unwrap_or_else(|| match args.trace.file_name() {
            Some(n) if !stdin => n.to_string_lossy().into_owned(),
            _ => "stdin".to_string(),
        });
    let mut trace_store = if args.store {
        if stdin {
            bail!("--store needs a trace file, not standard input");
        }
        let now = bmap::index::format_utc(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        );
        let abs = std::fs::canonicalize(&args.trace).unwrap_or_else(|_| args.trace.clone());
        Some(store::TraceStore::begin(
            &map_path,
            &trace_name,
            format.as_str(),
            Some(&abs.display().to_string()),
            &now,
        )?)
    } else {
        None
    };
    // The trace is hashed as it is read, so --store can tell a trace it
    // already holds without reading the file twice.
    let hasher = std::sync::Arc::new(std::sync::Mutex::new(Sha256::new()));
    let input: Box<dyn Read + Send> = if trace_store.is_some() {
        Box::new(Hashing {
            inner: input,
            hasher: std::sync::Arc::clone(&hasher),
        })
    } else {
        input
    };
    let opts = ReplayOptions {
        view: args.view,
        output: args.output,
        verbose: args.verbose,
        trace_name: &trace_name,
        format,
        conn: &conn,
    };
    let stdout = std::io::stdout();
    // Below the allocator's huge-page size: the summary writes its lines
    // in blocks past the buffer, and a huge page would be zeroed whole.
    let mut out = std::io::BufWriter::with_capacity(OUT_BUFFER, stdout.lock());
    let replayed = match counted {
        Some((outcome, tally)) => {
            let written = replay::write_view(&index, &opts, &mut out, &outcome, &tally);
            // As the index: freeing the numbers of every object touched,
            // and their lists of ranges one by one, would only cost time.
            std::mem::forget(tally);
            written.map(|()| outcome)
        }
        None => {
            let events = match early {
                Some(parsing) => {
                    parsing.with_context(|| format!("reading {}", args.trace.display()))?
                }
                None => Source::Boxed(parse_in_background(
                    format,
                    BufReader::with_capacity(1 << 20, input),
                    popts,
                )),
            };
            match events {
                // Its own copy of the replay loop, with the parser's code
                // inlined into it: a call through a pointer per request
                // costs more than the rest of the pairing.
                Source::Parallel(p) => {
                    replay::run(&index, *p, &opts, &mut out, trace_store.as_mut())
                }
                Source::Boxed(b) => replay::run(&index, b, &opts, &mut out, trace_store.as_mut()),
            }
        }
    };
    let outcome = match replayed {
        Ok(o) => o,
        Err(replay::ReplayError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            return Ok(ExitCode::SUCCESS)
        }
        Err(e) => return Err(e).with_context(|| format!("replaying {}", args.trace.display())),
    };
    match out.flush() {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(ExitCode::SUCCESS),
        r => r?,
    }
    if let Some(s) = trace_store {
        let sha: String = hasher
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        s.finish(outcome.totals.requests, &sha)?;
        eprintln!(
            "bmap: stored {} requests of {trace_name} in {}",
            outcome.totals.requests,
            map_path.display()
        );
    }
    let w = &outcome.warnings;
    for m in &w.first {
        eprintln!("bmap: warning: {}: {m}", args.trace.display());
    }
    if w.count > w.first.len() as u64 {
        eprintln!("bmap: … {} more warnings", w.count - w.first.len() as u64);
    }
    if outcome.totals.requests == 0 {
        eprintln!("bmap: warning: {}: no requests found", args.trace.display());
        return Ok(ExitCode::from(2));
    }
    Ok(if w.count > 0 {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

/// An opened trace, its format known.
struct Prepared {
    /// The whole trace, the bytes read to sniff it included.
    input: Box<dyn Read + Send>,
    format: Format,
    popts: ParseOptions,
    stdin: bool,
    /// The trace again, if it is a regular file: it can then be read at
    /// any offset, by several threads.
    file: Option<std::fs::File>,
}

/// `load(conn)` with SQLite's page cache cut to a few pages: the packed
/// map is read once, front to back, so pages kept would only be fresh
/// memory, faulted in and zeroed by the kernel page by page (2 MB a
/// connection; cutting it took 700 of the summary's 3,500 page faults).
/// The cache is put back after, for the lookups of `replay -v`.
fn with_small_cache<T>(
    conn: &rusqlite::Connection,
    load: impl FnOnce(&rusqlite::Connection) -> T,
) -> T {
    let before: Option<i64> = conn
        .pragma_query_value(None, "cache_size", |r| r.get(0))
        .ok();
    let _ = conn.pragma_update(None, "cache_size", 8);
    let loaded = load(conn);
    if let Some(before) = before {
        let _ = conn.pragma_update(None, "cache_size", before);
    }
    loaded
}

/// Opens the trace and settles its format.
fn prepare(args: &Args) -> anyhow::Result<Prepared> {
    let stdin = args.trace.as_os_str() == "-";
    let mut file = None;
    let mut input: Box<dyn Read + Send> = if stdin {
        Box::new(std::io::stdin())
    } else {
        let f = std::fs::File::open(&args.trace)
            .with_context(|| format!("opening {}", args.trace.display()))?;
        // A pipe or a device is read in order, as standard input is.
        if f.metadata().is_ok_and(|m| m.is_file()) {
            file = f.try_clone().ok();
        }
        Box::new(f)
    };
    let mut head = Vec::with_capacity(SNIFF_BYTES);
    input
        .by_ref()
        .take(SNIFF_BYTES as u64)
        .read_to_end(&mut head)?;
    let (format, popts) = settle(
        &args.trace,
        &head,
        stdin,
        args.format,
        args.action.clone(),
        args.offset,
    )?;
    Ok(Prepared {
        input: Box::new(std::io::Cursor::new(head).chain(input)),
        format,
        popts,
        stdin,
        file,
    })
}

/// Events per batch handed from the parsing thread to the replay.
const BATCH: usize = 4096;
/// Batches parsed ahead of the replay at most: memory stays bounded
/// whatever the trace's length (some 13 MB), yet parsing need not stop
/// while the replay waits for the names of the first objects it prints.
const BATCHES_AHEAD: usize = 32;

type Item = Result<trace::Event, trace::TraceError>;

/// Parses the trace on a thread of its own (the other core replays), in
/// order, handing batches over a bounded channel; the emptied batches go
/// back to be refilled.
fn parse_in_background<R: std::io::BufRead + Send + 'static>(
    format: Format,
    reader: R,
    popts: ParseOptions,
) -> trace::Events<'static> {
    in_background(move || trace::events(format, reader, &popts))
}

/// Runs the parser `make` makes on a thread of its own, handing its events
/// over in batches.
fn in_background(
    make: impl FnOnce() -> trace::Events<'static> + Send + 'static,
) -> trace::Events<'static> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<VecDeque<Item>>(BATCHES_AHEAD);
    let (back_tx, back_rx) = std::sync::mpsc::channel::<VecDeque<Item>>();
    // The thread ends when the trace does, or when the replay stops
    // listening (an error, a closed pipe): then its send fails.
    let mut parser = Some(std::thread::spawn(move || {
        let mut events = make();
        loop {
            let mut batch = back_rx
                .try_recv()
                .unwrap_or_else(|_| VecDeque::with_capacity(BATCH));
            batch.extend(events.by_ref().take(BATCH));
            if batch.is_empty() || tx.send(batch).is_err() {
                break;
            }
        }
    }));
    let mut current = VecDeque::new();
    Box::new(std::iter::from_fn(move || loop {
        if let Some(e) = current.pop_front() {
            return Some(e);
        }
        let Ok(next) = rx.recv() else {
            // The trace is over, or the parser panicked: then so do we,
            // as if it had run here.
            if let Some(Err(panic)) = parser.take().map(|p| p.join()) {
                std::panic::resume_unwind(panic);
            }
            return None;
        };
        let done = std::mem::replace(&mut current, next);
        if done.capacity() > 0 {
            let _ = back_tx.send(done);
        }
    }))
}

/// Worker threads of the parallel parse: the machine this was measured on
/// has two cores, and pairing and replay keep another thread busy.
const PARSE_WORKERS: usize = 2;

/// Parses an nbdkit trace file on [`PARSE_WORKERS`] threads, chunk by
/// chunk. Requests are paired with their completions on the caller's
/// thread as it takes events in, or, if `pair_apart`, on a thread of their
/// own: that costs more in all, but is quicker when the caller has much
/// else to do per request (writing the log view); measured on the 1M
/// request benchmark, each way wins where it is used.
fn parse_in_parallel(file: std::fs::File, pair_apart: bool) -> std::io::Result<Source> {
    let file = std::sync::Arc::new(file);
    if pair_apart {
        return Ok(Source::Boxed(in_background(
            move || match trace::nbdkit::parallel(file, trace::nbdkit::CHUNK, PARSE_WORKERS) {
                Ok(p) => Box::new(p),
                Err(e) => Box::new(std::iter::once(Err(trace::TraceError::Io(e)))),
            },
        )));
    }
    let parser = trace::nbdkit::parallel(file, trace::nbdkit::CHUNK, PARSE_WORKERS)?;
    Ok(Source::Parallel(Box::new(parser)))
}

/// Where the replay's events come from.
enum Source {
    /// The parallel nbdkit parser, paired on the replaying thread.
    Parallel(Box<trace::nbdkit::Parallel>),
    /// Any other parser, mostly on a thread of its own.
    Boxed(trace::Events<'static>),
}

/// The only `*.bmap` in the current directory.
pub(crate) fn find_map() -> anyhow::Result<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(".")?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "bmap") && p.is_file())
        .collect();
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => bail!("no --map given and no *.bmap file in the current directory"),
        _ => {
            bail!(
            "no --map given and several maps in the current directory: {}; choose one with --map",
            found.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        )
        }
    }
}

/// Does any blkparse line of the file have this action?
fn has_blkparse_action(path: &Path, action: &str) -> anyhow::Result<bool> {
    let mut lines = trace::LineReader::new(BufReader::with_capacity(
        1 << 20,
        std::fs::File::open(path)?,
    ));
    while let Some(line) = lines.next_line() {
        let Ok(line) = line else { continue };
        if nth_field(line, 5) == Some(action.as_bytes()) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The `n`th whitespace-separated field of a line.
fn nth_field(line: &[u8], n: usize) -> Option<&[u8]> {
    line.split(|b| b.is_ascii_whitespace())
        .filter(|f| !f.is_empty())
        .nth(n)
}

/// A reader that feeds everything it reads to a hash.
struct Hashing<R> {
    inner: R,
    hasher: std::sync::Arc<std::sync::Mutex<Sha256>>,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .update(&buf[..n]);
        Ok(n)
    }
}

/// The format of the trace file at `path` (sniffed unless `forced`) and
/// how to parse it.
pub(crate) fn sniff(
    path: &Path,
    forced: Option<Format>,
    action: Option<String>,
    offset: u64,
) -> anyhow::Result<(Format, ParseOptions)> {
    let mut head = Vec::with_capacity(SNIFF_BYTES);
    std::fs::File::open(path)
        .with_context(|| format!("opening {}", path.display()))?
        .take(SNIFF_BYTES as u64)
        .read_to_end(&mut head)?;
    settle(path, &head, false, forced, action, offset)
}

/// The format of a trace that starts with `head` (sniffed unless
/// `forced`), and for blkparse which action's lines are requests: D
/// (issued to the device) when the trace has it, else Q (queued). A file is
/// scanned whole; from standard input, the first 64 KiB decide.
fn settle(
    trace: &Path,
    head: &[u8],
    from_stdin: bool,
    forced: Option<Format>,
    action: Option<String>,
    offset: u64,
) -> anyhow::Result<(Format, ParseOptions)> {
    let format = match forced {
        Some(f) => f,
        None => {
            let lines: Vec<&[u8]> = head.split(|&b| b == b'\n').take(200).collect();
            match trace::detect(&lines) {
                Some(f) => f,
                None => bail!(
                    "{}: not a trace bmap recognises (nbdkit log filter, qemu trace events, blkparse text, CSV time,op,offset,length); use --format",
                    trace.display()
                ),
            }
        }
    };
    let mut opts = ParseOptions {
        blkparse_action: action,
        blkparse_offset: offset,
    };
    if format == Format::Blkparse && opts.blkparse_action.is_none() {
        let has_d = if from_stdin {
            head.split(|&b| b == b'\n')
                .any(|l| nth_field(l, 5) == Some(b"D".as_slice()))
        } else {
            has_blkparse_action(trace, "D")?
        };
        opts.blkparse_action = Some(if has_d { "D" } else { "Q" }.to_string());
    }
    Ok((format, opts))
}

/// Calls `f(seq, request)` for each request of a trace read by another
/// command (`tui`, `plot`), with `bmap replay`'s tolerance: unreadable
/// lines are skipped, up to [`replay::MAX_BAD_LINES`] of them.
pub(crate) fn for_each_request<R: std::io::BufRead>(
    reader: R,
    format: Format,
    opts: &ParseOptions,
    mut f: impl FnMut(usize, trace::Request),
) -> anyhow::Result<()> {
    let mut bad = 0u64;
    for (seq, event) in trace::events(format, reader, opts).enumerate() {
        match event {
            Ok(trace::Event::Request(r)) => f(seq, r),
            Ok(_) => {}
            Err(e) if e.is_fatal() => return Err(e.into()),
            Err(_) => {
                bad += 1;
                if bad > replay::MAX_BAD_LINES {
                    bail!(
                        "more than {} lines bmap could not read; run bmap replay on it to see them",
                        replay::MAX_BAD_LINES
                    );
                }
            }
        }
    }
    Ok(())
}
