//! The blkparse trace parser: `bmap::trace::events` over arbitrary bytes, to the
//! end. Errors must name a line of the input, in order; requests must name
//! a line and a range that does not overflow.
#![no_main]

use bmap::trace::{events, Event, Format, ParseOptions, TraceError};
use libfuzzer_sys::fuzz_target;

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
    let lines = data.iter().filter(|&&b| b == b'\n').count() as u64 + 1;
    let mut last = 1;
    for e in events(Format::Blkparse, data, &opts) {
        match e {
            Err(TraceError::Parse { line, .. }) | Err(TraceError::LineTooLong { line, .. }) => {
                assert!(line >= last && line <= lines, "error at line {line}");
                last = line;
            }
            Err(TraceError::Io(e)) => panic!("reading a slice failed: {e}"),
            Ok(Event::Request(r)) => {
                assert!(r.line >= 1 && r.line <= lines);
                assert!(r.offset.checked_add(r.length).is_some());
            }
            Ok(Event::DiskSize { line, .. }) | Ok(Event::Warning { line, .. }) => {
                assert!(line >= 1 && line <= lines);
            }
        }
    }
});
