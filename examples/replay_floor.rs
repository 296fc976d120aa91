//! How fast could `bmap replay --summary` be? Runs the stages of its
//! parallel path on their own, on as many threads as it uses:
//!
//!     cargo run --release --example replay_floor -- STAGE TRACE [MAP]
//!
//! - `lines`: each thread counts the newlines of its 1 MiB chunks of
//!   TRACE, mapped as the replay maps it (read with `pread` where it
//!   cannot be): the cost of reading the trace at all, with every core.
//! - `pair`: each thread reads and pairs its chunks with the replay's own
//!   `ChunkPairer` (the nbdkit parser and the per-chunk pairing), and
//!   attributes nothing.
//! - `count`: what the summary does before it writes anything: loads MAP
//!   while the threads pair, attributes every request, joins and adds up
//!   (`bmap::replay::fused::count`).
//!
//! It prints what it counted (lines; local requests and chunks handed to
//! the joiner as they are) so that a run that did nothing shows. Used by
//! bench/replay.sh: the three stages, timed next to `wc -l` and the full
//! summary, show how much of the summary's time is the trace and how much
//! is the map.

use std::fs::File;
use std::path::Path;
use std::process::ExitCode;

use bmap::replay::fused::{self, CHUNK};
use bmap::replay::MapIndex;
use bmap::trace::mapped::Mapped;
use bmap::trace::nbdkit::paired::{ChunkPairer, PairedChunk};
use bmap::trace::PositionalRead;

// bmap's own allocator (huge pages for its tables, aligned I/O buffers):
// the stages must pay for memory as `bmap replay` does.
#[path = "../src/allocator.rs"]
mod allocator;

#[global_allocator]
static ALLOCATOR: allocator::Allocator = allocator::Allocator;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: replay_floor lines|pair TRACE, or replay_floor count TRACE MAP";
    let (stage, trace, map) = match args.as_slice() {
        [stage, trace] if stage == "lines" || stage == "pair" => (stage.as_str(), trace, None),
        [stage, trace, map] if stage == "count" => (stage.as_str(), trace, Some(map)),
        _ => {
            eprintln!("{usage}");
            return ExitCode::FAILURE;
        }
    };
    let file = match File::open(trace) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{trace}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mapped = Mapped::new(&file);
    let file: &dyn PositionalRead = match &mapped {
        Some(m) => m,
        None => &file,
    };
    let workers = fused::workers();
    if let Some(map) = map {
        return count(file, workers, map);
    }
    let counts: Vec<(u64, u64)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                scope.spawn(move || match stage {
                    "lines" => count_lines(file, w, workers),
                    _ => pair(file, w, workers),
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    });
    let (a, b) = counts.iter().fold((0, 0), |(a, b), &(x, y)| (a + x, b + y));
    if stage == "lines" {
        println!("{a} lines");
    } else {
        println!("{a} requests paired within their chunk, {b} chunks");
    }
    ExitCode::SUCCESS
}

/// The summary's counting, as `bmap replay --summary` does it.
fn count(file: &dyn PositionalRead, workers: usize, map: &str) -> ExitCode {
    let load = || -> bmap::Result<MapIndex> {
        let conn = bmap::store::open(Path::new(map), false)?;
        MapIndex::load_packed(&conn)?
            .ok_or_else(|| bmap::Error::Map(format!("{map}: no packed map")))
    };
    match fused::count(file, workers, CHUNK, load) {
        Ok(counted) => match counted.tally {
            Some((outcome, _)) => {
                println!("{} requests counted", outcome.totals.requests);
                // As the replay does: hundreds of thousands of names are
                // not freed one by one.
                std::mem::forget(counted.index);
                ExitCode::SUCCESS
            }
            None => {
                eprintln!("the trace needs the in-order replay");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("{map}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Newlines in chunks `w`, `w + stride`…, where they are mapped, else
/// read one at a time into one buffer.
fn count_lines(file: &dyn PositionalRead, w: usize, stride: usize) -> (u64, u64) {
    if let Some(all) = file.whole() {
        let mut lines = 0;
        for (k, c) in all.chunks(CHUNK).enumerate().skip(w).step_by(stride) {
            lines += memchr::memchr_iter(b'\n', c).count() as u64;
            // As the replay lets go of the pages behind it.
            let at = (k * CHUNK) as u64;
            file.done_with(at, at + CHUNK as u64);
        }
        return (lines, 0);
    }
    let mut buf = vec![0u8; CHUNK];
    let (mut lines, mut k) = (0u64, w as u64);
    loop {
        let Ok(n) = file.read_at(&mut buf, k * CHUNK as u64) else {
            return (lines, 0);
        };
        if n == 0 {
            return (lines, 0);
        }
        lines += memchr::memchr_iter(b'\n', &buf[..n]).count() as u64;
        k += stride as u64;
    }
}

/// Chunks `w`, `w + stride`… paired as the replay's workers pair them:
/// the requests completed within them, and the chunks.
fn pair(file: &dyn PositionalRead, w: usize, stride: usize) -> (u64, u64) {
    let mut pairer = ChunkPairer::default();
    let mut chunk = PairedChunk::default();
    let (mut local, mut chunks, mut k) = (0u64, 0u64, w as u64);
    let mut released = 0;
    loop {
        if pairer.pair(file, k, CHUNK, &mut chunk).is_err() {
            return (local, chunks);
        }
        // As the replay lets go of the pages behind it (there, once the
        // joiner is past them): everything before the chunk before this.
        let behind = k.saturating_sub(1) * CHUNK as u64;
        file.done_with(released, behind);
        released = released.max(behind);
        local += chunk.local.len() as u64;
        chunks += 1;
        if chunk.last || chunk.odd {
            return (local, chunks);
        }
        k += stride as u64;
    }
}
