//! The text of a Dockerfile split into physical lines, used to point at
//! errors.

use memobuild_proto::Error;

use crate::Location;

/// A named source file and its physical lines (without line terminators).
#[derive(Clone, Debug)]
pub struct SourceText {
    name: String,
    lines: Vec<String>,
}

impl SourceText {
    /// Splits `text` into lines on `\n`, dropping a trailing `\r` from each
    /// line and a UTF-8 byte-order mark from the first.
    pub fn new(name: impl Into<String>, text: &str) -> Self {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut lines: Vec<String> = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l).to_string()).collect();
        if text.ends_with('\n') {
            lines.pop();
        }
        SourceText { name: name.into(), lines }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    /// The physical line `line` (1-based), or "" past the end.
    pub fn line(&self, line: usize) -> &str {
        line.checked_sub(1).and_then(|i| self.lines.get(i)).map(String::as_str).unwrap_or("")
    }

    /// The 1-based character column of byte offset `byte` in line `line`.
    pub fn column_of(&self, line: usize, byte: usize) -> usize {
        let text = self.line(line);
        let byte = byte.min(text.len());
        let mut end = byte;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text[..end].chars().count() + 1
    }

    /// Renders `message` at `location` the way compilers do:
    ///
    /// ```text
    /// Dockerfile:3:1: unknown instruction "RUNN"
    ///   3 | RUNN echo hi
    ///     | ^
    /// ```
    pub fn render(&self, location: Location, message: &str) -> String {
        let mut out = format!("{}:{}: {}", self.name, location, message);
        if location.line == 0 || location.line > self.lines.len() {
            return out;
        }
        let text = self.line(location.line);
        let number = location.line.to_string();
        let pad = " ".repeat(number.len());
        // Keep tabs in the caret line so the caret lines up under tabs.
        let lead: String =
            text.chars().take(location.column.saturating_sub(1)).map(|c| if c == '\t' { '\t' } else { ' ' }).collect();
        out.push_str(&format!("\n {number} | {text}\n {pad} | {lead}^"));
        out
    }

    /// An `INVALID_ARGUMENT` error carrying the rendered message.
    pub fn error(&self, location: Location, message: impl AsRef<str>) -> Error {
        Error::invalid_argument(self.render(location, message.as_ref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_caret_under_column() {
        let src = SourceText::new("Dockerfile", "FROM a\n\tRUNN x\n");
        let r = src.render(Location::new(2, 2), "unknown instruction \"RUNN\"");
        assert_eq!(r, "Dockerfile:2:2: unknown instruction \"RUNN\"\n 2 | \tRUNN x\n   | \t^");
    }

    #[test]
    fn crlf_and_bom_are_dropped() {
        let src = SourceText::new("D", "\u{feff}FROM a\r\nRUN b\r\n");
        assert_eq!(src.lines(), ["FROM a", "RUN b"]);
    }

    #[test]
    fn column_counts_chars() {
        let src = SourceText::new("D", "RUN é x");
        assert_eq!(src.column_of(1, 7), 7);
        assert_eq!(src.column_of(1, 6), 6);
    }
}
