//! The nbdkit trace parser over arbitrary bytes (see trace_check.rs).
#![no_main]

use bmap::trace::{Format, ParseOptions};
use libfuzzer_sys::fuzz_target;

#[path = "trace_check.rs"]
mod trace_check;

fuzz_target!(|data: &[u8]| {
    trace_check::check(Format::Nbdkit, data, &ParseOptions::default());
});
