//! Splitting instruction text into words the way Docker's parser does,
//! before any variable is expanded. Offsets are byte offsets into the text
//! passed in, so errors can point at the word.

/// A word and the byte offset where it starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Word {
    pub text: String,
    pub offset: usize,
}

/// Splits off the instruction keyword: returns the keyword, and the offset of
/// the first non-blank character after it (or the text length).
pub fn split_keyword(text: &str) -> (&str, usize) {
    let end = text.char_indices().find(|(_, c)| c.is_whitespace()).map(|(i, _)| i).unwrap_or(text.len());
    (&text[..end], skip_blanks(text, end))
}

/// The offset of the first non-whitespace character at or after `from`.
pub fn skip_blanks(text: &str, from: usize) -> usize {
    text[from..].char_indices().find(|(_, c)| !c.is_whitespace()).map(|(i, _)| from + i).unwrap_or(text.len())
}

/// Reads the leading `--name[=value]` flags of an instruction, starting at
/// `from`. Quotes around (parts of) a flag are removed and `\` escapes the
/// next character. A lone `--` ends the flags. Returns the flags (without the
/// leading `--`) and the offset where the arguments start.
pub fn extract_flags(text: &str, from: usize) -> (Vec<Word>, usize) {
    let mut flags = Vec::new();
    let mut pos = skip_blanks(text, from);
    while text[pos..].starts_with("--") {
        let start = pos;
        let mut word = String::new();
        let mut quote: Option<char> = None;
        let mut chars = text[pos..].char_indices().peekable();
        let mut end = text.len();
        while let Some((i, c)) = chars.next() {
            match quote {
                None if c.is_whitespace() => {
                    end = pos + i;
                    break;
                }
                None if c == '\'' || c == '"' => quote = Some(c),
                Some(q) if c == q => quote = None,
                _ if c == '\\' => {
                    if let Some((_, next)) = chars.next() {
                        word.push(next);
                    }
                }
                _ => word.push(c),
            }
        }
        pos = skip_blanks(text, end);
        if word == "--" {
            return (flags, pos);
        }
        flags.push(Word { text: word[2..].to_string(), offset: start });
    }
    (flags, pos)
}

/// Splits on unquoted whitespace, keeping quotes and escapes in the words
/// (Docker's `parseWords`, used by ENV, LABEL and ARG, and to find heredocs).
/// In single quotes the escape character is literal.
pub fn raw_words(text: &str, escape: char) -> Vec<Word> {
    let mut words = Vec::new();
    let mut current: Option<Word> = None;
    let mut quote: Option<char> = None;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if quote.is_none() && c.is_whitespace() {
            if let Some(w) = current.take() {
                words.push(w);
            }
            continue;
        }
        let word = current.get_or_insert_with(|| Word { text: String::new(), offset: i });
        if c == escape && quote != Some('\'') {
            match chars.next() {
                Some((_, next)) => {
                    word.text.push(c);
                    word.text.push(next);
                }
                None => {
                    // A trailing escape is dropped.
                    quote = None;
                }
            }
            continue;
        }
        match quote {
            None if c == '\'' || c == '"' => quote = Some(c),
            Some(q) if c == q => quote = None,
            _ => {}
        }
        word.text.push(c);
    }
    if let Some(w) = current.take() {
        words.push(w);
    }
    words
}

/// Splits on whitespace only (FROM, EXPOSE, the non-JSON VOLUME/COPY forms).
pub fn whitespace_words(text: &str) -> Vec<Word> {
    let mut words = Vec::new();
    let mut start: Option<usize> = None;
    for (i, c) in text.char_indices() {
        match (c.is_whitespace(), start) {
            (true, Some(s)) => {
                words.push(Word { text: text[s..i].to_string(), offset: s });
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
    }
    if let Some(s) = start {
        words.push(Word { text: text[s..].to_string(), offset: s });
    }
    words
}

/// Parses the JSON (exec) form: a JSON array of strings, nothing else.
pub fn json_array(text: &str) -> Option<Vec<String>> {
    let trimmed = text.trim();
    if !trimmed.starts_with('[') {
        return None;
    }
    let values: Vec<serde_json::Value> = serde_json::from_str(trimmed).ok()?;
    values
        .into_iter()
        .map(|v| match v {
            serde_json::Value::String(s) => Some(s),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(words: &[Word]) -> Vec<&str> {
        words.iter().map(|w| w.text.as_str()).collect()
    }

    #[test]
    fn keyword_and_rest() {
        assert_eq!(split_keyword("RUN  echo"), ("RUN", 5));
        assert_eq!(split_keyword("CMD"), ("CMD", 3));
    }

    #[test]
    fn flags_stop_at_first_argument() {
        let (flags, rest) = extract_flags("--from=b --chown=\"a b\" src dst", 0);
        assert_eq!(texts(&flags), ["from=b", "chown=a b"]);
        assert_eq!(flags[1].offset, 9);
        assert_eq!(rest, 23);
        let (flags, rest) = extract_flags("-- --notaflag x", 0);
        assert!(flags.is_empty());
        assert_eq!(rest, 3);
        let (flags, rest) = extract_flags("--link", 0);
        assert_eq!(texts(&flags), ["link"]);
        assert_eq!(rest, 6);
    }

    #[test]
    fn raw_words_keep_quotes() {
        let w = raw_words(r#"a="b c" d=e\ f 'g\' h"#, '\\');
        assert_eq!(texts(&w), [r#"a="b c""#, r"d=e\ f", r"'g\'", "h"]);
        assert_eq!(w[1].offset, 8);
    }

    #[test]
    fn json_form() {
        assert_eq!(json_array(r#" ["a", "b c"] "#), Some(vec!["a".to_string(), "b c".to_string()]));
        assert_eq!(json_array(r#"["a", 1]"#), None);
        assert_eq!(json_array(r#"["a",]"#), None);
        assert_eq!(json_array("echo [x]"), None);
    }
}
