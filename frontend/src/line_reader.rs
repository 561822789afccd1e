//! Turns a Dockerfile's physical lines into logical lines: parser
//! directives, comments, line continuations (with the escape character in
//! force) and heredoc bodies.

use memobuild_proto::Result;

use crate::words::{extract_flags, json_array, split_keyword};
use crate::{Directives, Heredoc, Location, LogicalLine, SourceText};

/// Reads logical lines out of a [`SourceText`].
pub struct LineReader<'a> {
    source: &'a SourceText,
    directives: Directives,
    next: usize,
}

impl<'a> LineReader<'a> {
    /// Reads the parser directives at the top of `source`.
    pub fn new(source: &'a SourceText) -> Result<Self> {
        let mut directives = Directives::default();
        for (i, line) in source.lines().iter().enumerate() {
            match directives.parse_line(line, i + 1) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => return Err(source.error(e.location, e.message)),
            }
        }
        Ok(LineReader { source, directives, next: 0 })
    }

    /// Reads `source` as a piece of a Dockerfile whose escape character is
    /// `escape` (an ONBUILD trigger): it has no parser directives of its own.
    pub fn with_escape(source: &'a SourceText, escape: char) -> Self {
        let mut directives = Directives::default();
        directives.escape = escape;
        LineReader { source, directives, next: 0 }
    }

    pub fn directives(&self) -> &Directives {
        &self.directives
    }

    /// Reads every logical line.
    pub fn read_all(mut self) -> Result<(Directives, Vec<LogicalLine>)> {
        let mut out = Vec::new();
        while let Some(line) = self.next_line()? {
            out.push(line);
        }
        Ok((self.directives, out))
    }

    /// The next logical line, or `None` at the end.
    pub fn next_line(&mut self) -> Result<Option<LogicalLine>> {
        let lines = self.source.lines();
        while self.next < lines.len() {
            let number = self.next + 1;
            let raw = &lines[self.next];
            self.next += 1;
            let trimmed = raw.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let mut logical = LogicalLine::new(number);
            let (piece, mut continues) = self.trim_continuation(trimmed);
            logical.push(piece, number, raw.len() - trimmed.len());
            while continues {
                let Some(raw) = lines.get(self.next) else {
                    logical.continued_to_eof = true;
                    break;
                };
                let number = self.next + 1;
                self.next += 1;
                let trimmed = raw.trim_start();
                // Comments and blank lines inside a continuation are dropped.
                if trimmed.is_empty() || trimmed.starts_with('#') {
                    logical.empty_continuation |= trimmed.is_empty();
                    continue;
                }
                let (piece, more) = self.trim_continuation(raw);
                logical.push(piece, number, 0);
                continues = more;
            }
            if logical.text.trim().is_empty() {
                continue;
            }
            self.read_heredocs(&mut logical)?;
            return Ok(Some(logical));
        }
        Ok(None)
    }

    /// Strips a trailing escape character (and the blanks after it).
    fn trim_continuation<'l>(&self, line: &'l str) -> (&'l str, bool) {
        let body = line.trim_end_matches([' ', '\t']);
        match body.strip_suffix(self.directives.escape) {
            Some(rest) => (rest, true),
            None => (line, false),
        }
    }

    /// Reads the bodies of the heredocs opened on a RUN, COPY or ADD line.
    fn read_heredocs(&mut self, logical: &mut LogicalLine) -> Result<()> {
        let (keyword, after) = split_keyword(&logical.text);
        if !["RUN", "COPY", "ADD"].iter().any(|k| k.eq_ignore_ascii_case(keyword)) {
            return Ok(());
        }
        let (_, args) = extract_flags(&logical.text, after);
        if json_array(&logical.text[args..]).is_some() {
            return Ok(());
        }
        let openers = Heredoc::find_openers(&logical.text[args..]);
        let lines = self.source.lines();
        for opener in openers {
            let mut heredoc = opener.heredoc;
            let mut terminated = false;
            while let Some(raw) = lines.get(self.next) {
                self.next += 1;
                logical.last_line = self.next;
                if heredoc.is_terminator(raw) {
                    terminated = true;
                    break;
                }
                heredoc.push_line(raw);
            }
            if !terminated {
                let location: Location = logical.location(self.source, args + opener.offset);
                return Err(self.source.error(
                    location,
                    format!(
                        "unterminated heredoc {:?}: no line {:?} before the end of the file",
                        heredoc.name, heredoc.name
                    ),
                ));
            }
            logical.heredocs.push(heredoc);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Vec<LogicalLine> {
        let src = SourceText::new("Dockerfile", text);
        LineReader::new(&src).unwrap().read_all().unwrap().1
    }

    #[test]
    fn continuations_comments_and_blanks() {
        let lines = read("FROM a\n  RUN echo a \\\n# c\n\n   b \\  \n c\nCMD x\n");
        let texts: Vec<_> = lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["FROM a", "RUN echo a    b  c", "CMD x"]);
        assert_eq!((lines[1].first_line, lines[1].last_line), (2, 6));
        assert_eq!(lines[1].position(4), (2, 6));
        assert_eq!(lines[1].position(11), (5, 0));
    }

    #[test]
    fn backtick_escape() {
        let lines = read("# escape=`\nFROM a\nRUN dir c:\\ `\n  x\n");
        assert_eq!(lines[1].text, "RUN dir c:\\   x");
    }

    #[test]
    fn heredoc_bodies() {
        let lines = read("FROM a\nRUN <<A cat - <<-B\none\nA\n\ttwo\n\tB\nCMD x\n");
        assert_eq!(lines[1].heredocs.len(), 2);
        assert_eq!(lines[1].heredocs[0].content, "one\n");
        assert_eq!(lines[1].heredocs[1].content, "two\n");
        assert_eq!(lines[1].last_line, 6);
        assert_eq!(lines[2].text, "CMD x");
    }

    #[test]
    fn unterminated_heredoc() {
        let src = SourceText::new("Dockerfile", "FROM a\nRUN <<EOF\necho\n");
        let e = LineReader::new(&src).unwrap().read_all().unwrap_err();
        assert!(e.message().starts_with("Dockerfile:2:5: unterminated heredoc \"EOF\""), "{}", e.message());
    }

    #[test]
    fn continuation_at_eof() {
        let lines = read("FROM a\nRUN echo \\");
        assert!(lines[1].continued_to_eof);
    }
}
