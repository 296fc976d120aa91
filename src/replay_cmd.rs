//! `bmap replay`: finds the map, opens and sniffs the trace, runs the
//! replay and turns its outcome into an exit status.

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

/// Bytes read to guess the format.
const SNIFF_BYTES: usize = 64 * 1024;

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let map_path = match args.map {
        Some(m) => m,
        None => find_map()?,
    };
    let conn = store::open(&map_path, false)?;
    let index = MapIndex::load(&conn).with_context(|| format!("loading {}", map_path.display()))?;
    let stdin = args.trace.as_os_str() == "-";
    let mut input: Box<dyn Read> = if stdin {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(
            std::fs::File::open(&args.trace)
                .with_context(|| format!("opening {}", args.trace.display()))?,
        )
    };
    let mut head = Vec::with_capacity(SNIFF_BYTES);
    input
        .by_ref()
        .take(SNIFF_BYTES as u64)
        .read_to_end(&mut head)?;
    let format = match args.format {
        Some(f) => f,
        None => {
            let lines: Vec<&[u8]> = head.split(|&b| b == b'\n').take(200).collect();
            match trace::detect(&lines) {
                Some(f) => f,
                None => bail!(
                    "{}: not a trace bmap recognises (nbdkit log filter, qemu trace events, blkparse text, CSV time,op,offset,length); use --format",
                    args.trace.display()
                ),
            }
        }
    };
    let mut popts = ParseOptions {
        blkparse_action: args.action.clone(),
        blkparse_offset: args.offset,
    };
    if format == Format::Blkparse && popts.blkparse_action.is_none() {
        // D (issued to the device) when the trace has it, else Q (queued).
        // A file is scanned whole; from standard input, the first 64 KiB
        // decide.
        let has_d = if stdin {
            head.split(|&b| b == b'\n')
                .any(|l| nth_field(l, 5) == Some(b"D".as_slice()))
        } else {
            has_blkparse_action(&args.trace, "D")?
        };
        popts.blkparse_action = Some(if has_d { "D" } else { "Q" }.to_string());
    }
    let trace_name = args.name.clone().unwrap_or_else(|| {
        args.trace
            .file_name()
            .map_or_else(|| "stdin".to_string(), |n| n.to_string_lossy().into_owned())
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
    let hasher = std::rc::Rc::new(std::cell::RefCell::new(Sha256::new()));
    let input = Hashing {
        inner: std::io::Cursor::new(head).chain(input),
        hasher: std::rc::Rc::clone(&hasher),
    };
    let reader = BufReader::with_capacity(1 << 20, input);
    let events = trace::events(format, reader, &popts);
    let opts = ReplayOptions {
        view: args.view,
        output: args.output,
        verbose: args.verbose,
        trace_name: &trace_name,
        format,
        conn: &conn,
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
    let outcome = match replay::run(&index, events, &opts, &mut out, trace_store.as_mut()) {
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
            .borrow_mut()
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
    hasher: std::rc::Rc<std::cell::RefCell<Sha256>>,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.borrow_mut().update(&buf[..n]);
        Ok(n)
    }
}

/// The format of the trace file at `path` (sniffed unless `forced`) and
/// how to parse it; for blkparse, which action's lines are requests.
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
    let format = match forced {
        Some(f) => f,
        None => {
            let lines: Vec<&[u8]> = head.split(|&b| b == b'\n').take(200).collect();
            trace::detect(&lines).with_context(|| {
                format!(
                    "{}: not a trace bmap recognises (nbdkit log filter, qemu trace events, blkparse text, CSV time,op,offset,length); use --format",
                    path.display()
                )
            })?
        }
    };
    let mut opts = ParseOptions {
        blkparse_action: action,
        blkparse_offset: offset,
    };
    if format == Format::Blkparse && opts.blkparse_action.is_none() {
        let has_d = has_blkparse_action(path, "D")?;
        opts.blkparse_action = Some(if has_d { "D" } else { "Q" }.to_string());
    }
    Ok((format, opts))
}
