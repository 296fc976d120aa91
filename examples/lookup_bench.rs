//! Times bmap's own point lookup (`bmap::query::lookup`, what `bmap lookup`
//! runs) in one process, on a warm map:
//!
//!     cargo run --release --example lookup_bench -- [--txn] MAP [COUNT] [SEED]
//!
//! Opens MAP read-only with `bmap::store::open`, does 1,000 untimed warm-up
//! lookups, then COUNT (default 10,000) lookups of one byte each at random
//! offsets in [0, image size) (xorshift64*, SEED default 1), and prints the
//! mean time per lookup in microseconds. Used by bench/sql.sh.
//!
//! With `--txn`, each lookup runs inside one read transaction (BEGIN …
//! COMMIT around the call): a diagnostic. Without it, each of lookup's
//! statements takes and drops SQLite's shared lock on its own (fcntl locks,
//! a hot-journal check, a re-read of the file header), which costs more than
//! the b-tree searches themselves.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform enough in [0, n) for a benchmark.
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
}

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let txn = args.iter().any(|a| a == "--txn");
    args.retain(|a| a != "--txn");
    let Some(map) = args.first().map(PathBuf::from) else {
        eprintln!("usage: lookup_bench [--txn] MAP [COUNT] [SEED]");
        return ExitCode::from(2);
    };
    let count: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let seed: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1);
    match run(&map, count, seed, txn) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lookup_bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(
    map: &std::path::Path,
    count: usize,
    seed: u64,
    txn: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let t_open = Instant::now();
    let conn = bmap::store::open(map, false)?;
    let open_us = t_open.elapsed().as_secs_f64() * 1e6;
    let size: u64 = conn
        .query_row("SELECT value FROM meta WHERE key = 'image_size'", [], |r| {
            r.get::<_, String>(0)
        })?
        .parse()?;
    if size == 0 {
        return Err("map has image_size 0".into());
    }
    let mut rng = XorShift(seed.max(1).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let offsets: Vec<u64> = (0..count).map(|_| rng.below(size)).collect();
    // warm-up: the map's pages into SQLite's cache, the statement cache
    let mut warm = XorShift(0xdead_beef);
    for _ in 0..1000 {
        bmap::query::lookup(&conn, warm.below(size), 1, 1)?;
    }
    let mut objects = 0usize;
    let mut chain = 0usize;
    let t = Instant::now();
    for &off in &offsets {
        let tx = if txn {
            Some(conn.unchecked_transaction()?)
        } else {
            None
        };
        let (hits, _truncated) = bmap::query::lookup(&conn, off, 1, 1)?;
        drop(tx); // a read-only transaction: rolling back = committing
        objects += hits.len();
        chain += hits.iter().map(|h| h.objects.len()).sum::<usize>();
    }
    let secs = t.elapsed().as_secs_f64();
    if objects != count {
        return Err(format!("{objects} hits for {count} lookups (expected one each)").into());
    }
    println!(
        "lookup_bench{}: {count} lookups in {:.3} s: {:.2} us/lookup ({:.0} lookups/s); \
         {:.2} objects per containment chain; map opened in {open_us:.0} us",
        if txn { " --txn" } else { "" },
        secs,
        secs * 1e6 / count as f64,
        count as f64 / secs,
        chain as f64 / count as f64,
    );
    Ok(())
}
