//! The nbdkit trace parser: `bmap::trace::events` over arbitrary bytes, to the
//! end. Errors must name a line of the input, in order; requests must name
//! a line and a range that does not overflow.
#![no_main]

use bmap::trace::{events, Event, Format, ParseOptions, TraceError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let opts = ParseOptions::default();
    let lines = data.iter().filter(|&&b| b == b'\n').count() as u64 + 1;
    let mut last = 1;
    for e in events(Format::Nbdkit, data, &opts) {
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
