//! The nbdkit trace parser over arbitrary bytes (see trace_check.rs), and
//! the parallel parser against the sequential one, in chunks whose size
//! the input's first byte picks.
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
});
