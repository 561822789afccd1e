//! One instruction's text after comments and line continuations are
//! removed, with a map back to physical positions.

use crate::{Heredoc, Location, SourceText};

/// Where a piece of the logical text came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Segment {
    /// Byte offset in the logical text where this piece starts.
    logical: usize,
    /// 1-based physical line.
    line: usize,
    /// Byte offset in the physical line where this piece starts.
    byte: usize,
}

/// An instruction's joined text and its heredoc bodies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogicalLine {
    pub text: String,
    segments: Vec<Segment>,
    /// First physical line (1-based).
    pub first_line: usize,
    /// Last physical line, heredoc bodies included.
    pub last_line: usize,
    pub heredocs: Vec<Heredoc>,
    /// The last line ended with the escape character and the file ended.
    pub continued_to_eof: bool,
    /// A blank line sat inside the continuation (BuildKit's
    /// NoEmptyContinuation warning).
    pub empty_continuation: bool,
}

impl LogicalLine {
    pub fn new(first_line: usize) -> Self {
        LogicalLine {
            text: String::new(),
            segments: Vec::new(),
            first_line,
            last_line: first_line,
            heredocs: Vec::new(),
            continued_to_eof: false,
            empty_continuation: false,
        }
    }

    /// Appends `piece`, which starts at byte `byte` of physical line `line`.
    pub fn push(&mut self, piece: &str, line: usize, byte: usize) {
        self.segments.push(Segment { logical: self.text.len(), line, byte });
        self.text.push_str(piece);
        self.last_line = line;
    }

    /// The physical line and byte offset of logical byte `offset`.
    pub fn position(&self, offset: usize) -> (usize, usize) {
        let segment = self.segments.iter().rev().find(|s| s.logical <= offset).or(self.segments.first());
        match segment {
            Some(s) => (s.line, s.byte + offset.saturating_sub(s.logical)),
            None => (self.first_line, 0),
        }
    }

    /// The location of logical byte `offset`, with a character column.
    pub fn location(&self, source: &SourceText, offset: usize) -> Location {
        let (line, byte) = self.position(offset);
        Location::new(line, source.column_of(line, byte))
    }

    /// The original physical lines of the instruction, heredocs included.
    pub fn original(&self, source: &SourceText) -> String {
        (self.first_line..=self.last_line).map(|l| source.line(l)).collect::<Vec<_>>().join("\n")
    }
}
