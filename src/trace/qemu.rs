//! Placeholder: parser for the qemu trace format (being written).

use std::io::BufRead;

use crate::trace::{Event, LineReader, TraceError};

pub struct Parser<R> {
    lines: LineReader<R>,
}

impl<R: BufRead> Parser<R> {
    pub fn new(lines: LineReader<R>) -> Self {
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
