//! What every trace fuzz target checks: the parser runs to the end over
//! arbitrary bytes; errors name lines of the input, in order; requests name
//! a line and a range that does not overflow.

use bmap::trace::{events, Event, Format, ParseOptions, TraceError};

pub fn check(format: Format, data: &[u8], opts: &ParseOptions) {
    let lines = data.iter().filter(|&&b| b == b'\n').count() as u64 + 1;
    let mut last = 1;
    for e in events(format, data, opts) {
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
}
