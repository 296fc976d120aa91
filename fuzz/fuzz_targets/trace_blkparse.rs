//! The blkparse trace parser over arbitrary bytes (see trace_check.rs).
#![no_main]

use bmap::trace::{Format, ParseOptions};
use libfuzzer_sys::fuzz_target;

#[path = "trace_check.rs"]
mod trace_check;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the action and the offset of the device.
    let (opts, data) = match data.split_first() {
        Some((b, rest)) => (
            ParseOptions {
                blkparse_action: Some(["D", "Q", "C", "A"][usize::from(b % 4)].to_string()),
                blkparse_offset: if b & 4 != 0 {
                    u64::MAX - 4096
                } else {
                    u64::from(*b) << 20
                },
            },
            rest,
        ),
        None => (ParseOptions::default(), data),
    };
    trace_check::check(Format::Blkparse, data, &opts);
});
