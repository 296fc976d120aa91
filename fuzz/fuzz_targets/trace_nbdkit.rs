//! The nbdkit trace parser over arbitrary bytes (see trace_check.rs); the
//! parallel parser, and the chunk-by-chunk pairing the parallel count
//! uses (unless it refuses the trace), against the sequential parser, in
//! chunks whose size the input's first byte picks.
#![no_main]

use std::sync::Arc;

use bmap::trace::{events, nbdkit, Format, ParseOptions};
use libfuzzer_sys::fuzz_target;

#[path = "trace_check.rs"]
mod trace_check;

fuzz_target!(|data: &[u8]| {
    trace_check::check(Format::Nbdkit, data, &ParseOptions::default());
    let want: Vec<String> = events(Format::Nbdkit, data, &ParseOptions::default())
        .map(|e| format!("{e:?}"))
        .collect();
    let chunk = 1 + usize::from(data.first().copied().unwrap_or(0)) * 7;
    let got: Vec<String> = nbdkit::parallel(Arc::<[u8]>::from(data), chunk, 2)
        .expect("starting the parse threads")
        .map(|e| format!("{e:?}"))
        .collect();
    assert_eq!(got, want, "chunks of {chunk} bytes");
    if let Some(joined) = nbdkit::paired::joined_in_order(data, chunk) {
        let joined: Vec<String> = joined.iter().map(|e| e.comparable()).collect();
        let want: Vec<String> = events(Format::Nbdkit, data, &ParseOptions::default())
            .map(|e| nbdkit::paired::comparable(&e))
            .collect();
        assert_eq!(joined, want, "paired in chunks of {chunk} bytes");
    }
});
