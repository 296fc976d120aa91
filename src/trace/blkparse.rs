//! Placeholder: parser for blkparse's default text output (being written).

use std::io::BufRead;

use crate::trace::{Event, LineReader, ParseOptions, TraceError};

pub struct Parser<R> {
    lines: LineReader<R>,
}

impl<R: BufRead> Parser<R> {
    pub fn new(lines: LineReader<R>, _opts: &ParseOptions) -> Self {
        Parser { lines }
    }
}

impl<R: BufRead> Iterator for Parser<R> {
    type Item = Result<Event, TraceError>;
    fn next(&mut self) -> Option<Self::Item> {
        let _ = self.lines.next_line()?;
        None
    }
}

/// True if `line` looks like blkparse's default output.
pub fn looks_like(_line: &str) -> bool {
    false
}
