//! Here-documents (`<<EOF`) of RUN, COPY and ADD.

use serde::Serialize;

use crate::words::raw_words;

/// One here-document: its delimiter and the lines up to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Heredoc {
    /// The delimiter word, unquoted (`EOF` for `<<"EOF"`).
    pub name: String,
    /// The body, each line ending in `\n`; with `<<-` leading tabs are
    /// already removed.
    pub content: String,
    /// Whether variables in the body are expanded (the delimiter was not
    /// quoted).
    pub expand: bool,
    /// `<<-`: leading tabs are stripped from the body and the delimiter line.
    pub chomp: bool,
    /// The file descriptor before `<<` (`3<<EOF`), 0 when absent.
    pub file_descriptor: u32,
}

/// A heredoc opener found in an instruction line, before its body is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeredocOpener {
    pub heredoc: Heredoc,
    /// Byte offset of the word in the logical line.
    pub offset: usize,
}

impl Heredoc {
    /// Finds the heredoc openers (`<<WORD`, `<<-WORD`, `<<'WORD'`, `2<<WORD`)
    /// among the shell words of `line`.
    pub fn find_openers(line: &str) -> Vec<HeredocOpener> {
        raw_words(line, '\\')
            .into_iter()
            .filter_map(|w| Self::parse_opener(&w.text).map(|heredoc| HeredocOpener { heredoc, offset: w.offset }))
            .collect()
    }

    /// Parses one word as a heredoc opener.
    pub fn parse_opener(word: &str) -> Option<Heredoc> {
        let digits = word.bytes().take_while(u8::is_ascii_digit).count();
        let rest = word[digits..].strip_prefix("<<")?;
        let (chomp, rest) = match rest.strip_prefix('-') {
            Some(r) => (true, r),
            None => (false, rest),
        };
        if rest.is_empty() || rest.contains('<') {
            return None;
        }
        let name = unquote(rest)?;
        if name.is_empty() || name.chars().any(char::is_whitespace) {
            return None;
        }
        let file_descriptor = if digits == 0 { 0 } else { word[..digits].parse().ok()? };
        Some(Heredoc { name, content: String::new(), expand: !rest.contains(['\'', '"']), chomp, file_descriptor })
    }

    /// Whether `line` ends this heredoc.
    pub fn is_terminator(&self, line: &str) -> bool {
        let line = if self.chomp { line.trim_start_matches('\t') } else { line };
        line == self.name
    }

    /// Appends one body line.
    pub fn push_line(&mut self, line: &str) {
        let line = if self.chomp { line.trim_start_matches('\t') } else { line };
        self.content.push_str(line);
        self.content.push('\n');
    }
}

/// Removes shell quoting from a delimiter word; `None` if a quote is open.
fn unquote(word: &str) -> Option<String> {
    let mut out = String::new();
    let mut quote: Option<char> = None;
    let mut chars = word.chars();
    while let Some(c) = chars.next() {
        match quote {
            None if c == '\'' || c == '"' => quote = Some(c),
            None if c == '\\' => out.push(chars.next()?),
            Some(q) if c == q => quote = None,
            Some('"') if c == '\\' => out.push(chars.next()?),
            _ => out.push(c),
        }
    }
    quote.is_none().then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openers() {
        let h = Heredoc::parse_opener("<<EOF").unwrap();
        assert_eq!((h.name.as_str(), h.expand, h.chomp), ("EOF", true, false));
        let h = Heredoc::parse_opener("<<-'END'").unwrap();
        assert_eq!((h.name.as_str(), h.expand, h.chomp), ("END", false, true));
        let h = Heredoc::parse_opener("3<<\"X\"").unwrap();
        assert_eq!((h.name.as_str(), h.expand, h.file_descriptor), ("X", false, 3));
        assert!(Heredoc::parse_opener("<<").is_none());
        assert!(Heredoc::parse_opener("<<<EOF").is_none());
        assert!(Heredoc::parse_opener("cat<<EOF").is_none());
        assert!(Heredoc::parse_opener("<<'EOF").is_none());
    }

    #[test]
    fn several_on_one_line() {
        let found = Heredoc::find_openers("COPY <<A <<-\"B\" /dst/");
        let names: Vec<_> = found.iter().map(|o| o.heredoc.name.as_str()).collect();
        assert_eq!(names, ["A", "B"]);
        assert_eq!(found[1].offset, 9);
        assert!(Heredoc::find_openers("RUN echo '<<EOF'").is_empty());
    }

    #[test]
    fn chomp_strips_tabs() {
        let mut h = Heredoc::parse_opener("<<-EOF").unwrap();
        h.push_line("\t\techo hi");
        assert!(h.is_terminator("\tEOF"));
        assert_eq!(h.content, "echo hi\n");
    }
}
