//! Variable substitution and quote removal, as Docker applies them to the
//! arguments of ADD, COPY, ENV, EXPOSE, FROM, LABEL, STOPSIGNAL, USER,
//! VOLUME, WORKDIR and ARG.
//!
//! Supported: `$v`, `${v}`, `${v:-w}`, `${v-w}`, `${v:+w}`, `${v+w}`,
//! `${v:?m}`, `${v?m}`, `${v#p}`, `${v##p}`, `${v%p}`, `${v%%p}`,
//! `${v/p/r}`, `${v//p/r}`; single quotes (literal), double quotes (only `$`
//! and escapes of `"`, `$` and the escape character are special) and the
//! escape character (`\` or the one set by `# escape=`).

/// Looks a variable up; `None` when unset.
pub type Lookup<'a> = &'a mut dyn FnMut(&str) -> Option<String>;

/// A shell-word processor for one escape character.
#[derive(Clone, Copy, Debug)]
pub struct ShellLexer {
    escape: char,
}

impl ShellLexer {
    pub fn new(escape: char) -> Self {
        ShellLexer { escape }
    }

    /// Processes `word` as one word: quotes removed, variables expanded,
    /// whitespace kept.
    pub fn process_word(&self, word: &str, lookup: Lookup<'_>) -> Result<String, String> {
        let mut scan = Scan::new(word, self.escape, lookup);
        let (text, _) = scan.process_until(None, false)?;
        Ok(text)
    }

    /// Processes `text` and splits it into words on unquoted whitespace,
    /// including whitespace produced by expanding an unquoted variable.
    pub fn process_words(&self, text: &str, lookup: Lookup<'_>) -> Result<Vec<String>, String> {
        let mut scan = Scan::new(text, self.escape, lookup);
        let (_, words) = scan.process_until(None, false)?;
        Ok(words.finish())
    }

    /// Expands a heredoc body the way a shell expands an unquoted heredoc:
    /// quotes are ordinary characters, the escape character only escapes
    /// `$` and itself.
    pub fn process_heredoc(&self, body: &str, lookup: Lookup<'_>) -> Result<String, String> {
        let mut scan = Scan::new(body, self.escape, lookup);
        let mut out = String::new();
        while let Some(c) = scan.peek() {
            if c == '$' {
                out.push_str(&scan.dollar()?);
                continue;
            }
            scan.pos += 1;
            if c == self.escape {
                if let Some(n) = scan.peek().filter(|n| *n == '$' || *n == self.escape) {
                    scan.pos += 1;
                    out.push(n);
                    continue;
                }
            }
            out.push(c);
        }
        Ok(out)
    }

    /// Escapes `text` so that [`ShellLexer::process_word`] gives it back.
    pub fn escape(&self, text: &str) -> String {
        let mut out = String::new();
        for c in text.chars() {
            if matches!(c, '$' | '\'' | '"') || c == self.escape {
                out.push(self.escape);
            }
            out.push(c);
        }
        out
    }
}

/// Word splitting state for `process_words`.
#[derive(Default)]
struct Words {
    words: Vec<String>,
    word: String,
    in_word: bool,
}

impl Words {
    fn add_char(&mut self, c: char) {
        if c.is_whitespace() {
            if self.in_word && !self.word.is_empty() {
                self.words.push(std::mem::take(&mut self.word));
                self.in_word = false;
            }
        } else {
            self.add_raw_char(c);
        }
    }

    fn add_raw_char(&mut self, c: char) {
        self.word.push(c);
        self.in_word = true;
    }

    fn add_string(&mut self, s: &str) {
        s.chars().for_each(|c| self.add_char(c));
    }

    fn add_raw_string(&mut self, s: &str) {
        self.word.push_str(s);
        self.in_word = true;
    }

    fn finish(mut self) -> Vec<String> {
        if !self.word.is_empty() {
            self.words.push(self.word);
        }
        self.words
    }
}

struct Scan<'a, 'l> {
    chars: Vec<char>,
    pos: usize,
    escape: char,
    lookup: &'a mut (dyn FnMut(&str) -> Option<String> + 'l),
}

impl<'a, 'l> Scan<'a, 'l> {
    fn new(text: &str, escape: char, lookup: &'a mut (dyn FnMut(&str) -> Option<String> + 'l)) -> Self {
        Scan { chars: text.chars().collect(), pos: 0, escape, lookup }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek();
        if c.is_some() {
            self.pos += 1;
        }
        c
    }

    /// Processes up to (and consuming) `stop`, or to the end when `None`.
    fn process_until(&mut self, stop: Option<char>, raw_escapes: bool) -> Result<(String, Words), String> {
        let mut out = String::new();
        let mut words = Words::default();
        while let Some(c) = self.peek() {
            if Some(c) == stop {
                self.pos += 1;
                return Ok((out, words));
            }
            match c {
                '\'' => {
                    let s = self.single_quoted()?;
                    out.push_str(&s);
                    words.add_raw_string(&s);
                }
                '"' => {
                    let s = self.double_quoted()?;
                    out.push_str(&s);
                    words.add_raw_string(&s);
                }
                '$' => {
                    let s = self.dollar()?;
                    out.push_str(&s);
                    words.add_string(&s);
                }
                _ => {
                    self.pos += 1;
                    if c == self.escape {
                        if raw_escapes {
                            out.push(c);
                        }
                        let Some(next) = self.next() else { break };
                        out.push(next);
                        words.add_raw_char(next);
                    } else {
                        out.push(c);
                        words.add_char(c);
                    }
                }
            }
        }
        match stop {
            Some(s) => Err(format!("unexpected end of statement while looking for matching {s}")),
            None => Ok((out, words)),
        }
    }

    fn single_quoted(&mut self) -> Result<String, String> {
        self.pos += 1;
        let mut out = String::new();
        loop {
            match self.next() {
                None => return Err("unexpected end of statement while looking for matching single-quote".into()),
                Some('\'') => return Ok(out),
                Some(c) => out.push(c),
            }
        }
    }

    fn double_quoted(&mut self) -> Result<String, String> {
        self.pos += 1;
        let mut out = String::new();
        loop {
            match self.peek() {
                None => return Err("unexpected end of statement while looking for matching double-quote".into()),
                Some('"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some('$') => out.push_str(&self.dollar()?),
                Some(c) => {
                    self.pos += 1;
                    if c == self.escape {
                        match self.peek() {
                            None => continue,
                            Some(n) if n == '"' || n == '$' || n == self.escape => {
                                self.pos += 1;
                                out.push(n);
                                continue;
                            }
                            Some(_) => {}
                        }
                    }
                    out.push(c);
                }
            }
        }
    }

    fn name(&mut self) -> String {
        let mut name = String::new();
        if let Some(c) = self.peek() {
            if c.is_ascii_digit() {
                while let Some(d) = self.peek().filter(char::is_ascii_digit) {
                    self.pos += 1;
                    name.push(d);
                }
                return name;
            }
            if "@*#?-$!0".contains(c) {
                self.pos += 1;
                return c.to_string();
            }
        }
        while let Some(c) = self.peek().filter(|c| c.is_alphanumeric() || *c == '_') {
            self.pos += 1;
            name.push(c);
        }
        name
    }

    fn get(&mut self, name: &str) -> Option<String> {
        (self.lookup)(name)
    }

    fn dollar(&mut self) -> Result<String, String> {
        self.pos += 1;
        if self.peek() != Some('{') {
            let name = self.name();
            if name.is_empty() {
                return Ok("$".into());
            }
            return Ok(self.get(&name).unwrap_or_default());
        }
        self.pos += 1;
        match self.peek() {
            None => return Err("syntax error: missing '}'".into()),
            Some('{' | '}' | ':') => return Err("syntax error: bad substitution".into()),
            _ => {}
        }
        let name = self.name();
        let Some(op) = self.next() else {
            return Err("syntax error: missing '}'".into());
        };
        let value = self.get(&name);
        match op {
            '}' => Ok(value.unwrap_or_default()),
            ':' | '+' | '-' | '?' | '#' | '%' => {
                let null_is_unset = op == ':';
                let modifier = if null_is_unset { self.next().ok_or("syntax error: missing '}'")? } else { op };
                if null_is_unset && !matches!(modifier, '+' | '-' | '?') {
                    return Err(format!("unsupported modifier (:{modifier}) in substitution"));
                }
                let raw = matches!(modifier, '#' | '%');
                let (word, _) = self.process_until(Some('}'), raw).map_err(|e| {
                    if self.peek().is_none() {
                        "syntax error: missing '}'".to_string()
                    } else {
                        e
                    }
                })?;
                let unset = value.is_none() || (null_is_unset && value.as_deref() == Some(""));
                match modifier {
                    '-' => Ok(if unset { word } else { value.unwrap_or_default() }),
                    '+' => Ok(if unset { String::new() } else { word }),
                    '?' => match value {
                        Some(v) if !unset => Ok(v),
                        _ => {
                            let what = if value.is_none() { "unset" } else { "empty" };
                            let message = if word.is_empty() { format!("is not allowed to be {what}") } else { word };
                            Err(format!("{name}: {message}"))
                        }
                    },
                    '#' | '%' => {
                        let value = value.unwrap_or_default();
                        let (greedy, pattern) = match word.strip_prefix(modifier) {
                            Some(p) => (true, p),
                            None => (false, word.as_str()),
                        };
                        Ok(trim_pattern(&value, pattern, modifier == '#', greedy))
                    }
                    _ => Err(format!("unsupported modifier ({modifier}) in substitution")),
                }
            }
            '/' => {
                let all = self.peek() == Some('/');
                if all {
                    self.pos += 1;
                }
                let (pattern, _) =
                    self.process_until(Some('/'), true).map_err(|_| "syntax error: missing '}'".to_string())?;
                let (replacement, _) =
                    self.process_until(Some('}'), true).map_err(|_| "syntax error: missing '}'".to_string())?;
                Ok(replace_pattern(&value.unwrap_or_default(), &pattern, &replacement, all))
            }
            other => Err(format!("unsupported modifier ({other}) in substitution")),
        }
    }
}

/// Removes the shortest (or longest, when `greedy`) prefix or suffix of
/// `value` matching the shell pattern.
fn trim_pattern(value: &str, pattern: &str, prefix: bool, greedy: bool) -> String {
    let chars: Vec<char> = value.chars().collect();
    if prefix {
        // One pass: which prefixes match.
        let matches = match_prefixes(pattern, &chars);
        let mut lengths = (0..=chars.len()).filter(|&j| matches[j]);
        let cut = if greedy { lengths.next_back() } else { lengths.next() };
        return match cut {
            Some(j) => chars[j..].iter().collect(),
            None => value.to_string(),
        };
    }
    let starts: Vec<usize> = if greedy { (0..=chars.len()).collect() } else { (0..=chars.len()).rev().collect() };
    for i in starts {
        if match_prefixes(pattern, &chars[i..])[chars.len() - i] {
            return chars[..i].iter().collect();
        }
    }
    value.to_string()
}

fn replace_pattern(value: &str, pattern: &str, replacement: &str, all: bool) -> String {
    if pattern.is_empty() {
        return value.to_string();
    }
    let chars: Vec<char> = value.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        // The longest non-empty match starting at i.
        let matches = match_prefixes(pattern, &chars[i..]);
        match (1..matches.len()).rev().find(|&j| matches[j]) {
            Some(len) => {
                out.push_str(replacement);
                i += len;
                if !all {
                    out.extend(&chars[i..]);
                    return out;
                }
            }
            None => {
                out.push(chars[i]);
                i += 1;
            }
        }
    }
    out
}

/// Shell pattern match (`*`, `?`, `[...]`, `\x`) of every prefix of `text`:
/// element `j` says whether `text[..j]` matches. O(len(pattern) * len(text)).
fn match_prefixes(pattern: &str, text: &[char]) -> Vec<bool> {
    let p: Vec<char> = pattern.chars().collect();
    let t = text;
    let mut dp = vec![false; t.len() + 1];
    dp[0] = true;
    let mut i = 0;
    while i < p.len() {
        let mut next = vec![false; t.len() + 1];
        match p[i] {
            '*' => {
                let mut any = false;
                for j in 0..=t.len() {
                    any |= dp[j];
                    next[j] = any;
                }
                i += 1;
            }
            '[' => {
                let (class, len) = parse_class(&p[i..]);
                for j in 0..t.len() {
                    if dp[j] && class.as_ref().map_or(t[j] == '[', |c| c.matches(t[j])) {
                        next[j + 1] = true;
                    }
                }
                i += len;
            }
            c => {
                let (lit, len) = if c == '\\' && i + 1 < p.len() {
                    (Some(p[i + 1]), 2)
                } else if c == '?' {
                    (None, 1)
                } else {
                    (Some(c), 1)
                };
                for j in 0..t.len() {
                    if dp[j] && lit.is_none_or(|l| l == t[j]) {
                        next[j + 1] = true;
                    }
                }
                i += len;
            }
        }
        dp = next;
    }
    dp
}

struct CharClass {
    negated: bool,
    ranges: Vec<(char, char)>,
}

impl CharClass {
    fn matches(&self, c: char) -> bool {
        self.ranges.iter().any(|&(a, b)| a <= c && c <= b) != self.negated
    }
}

/// Parses `[...]` at the start of `p`; `None` (and length 1) if unterminated.
fn parse_class(p: &[char]) -> (Option<CharClass>, usize) {
    let mut i = 1;
    let negated = matches!(p.get(1), Some('!' | '^'));
    if negated {
        i += 1;
    }
    let mut ranges = Vec::new();
    let mut first = true;
    while i < p.len() {
        if p[i] == ']' && !first {
            return (Some(CharClass { negated, ranges }), i + 1);
        }
        first = false;
        let lo = p[i];
        if i + 2 < p.len() && p[i + 1] == '-' && p[i + 2] != ']' {
            ranges.push((lo, p[i + 2]));
            i += 3;
        } else {
            ranges.push((lo, lo));
            i += 1;
        }
    }
    (None, 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn expand(word: &str) -> Result<String, String> {
        let env: HashMap<&str, &str> =
            [("a", "A"), ("empty", ""), ("path", "/usr/local/bin"), ("sp", "x  y")].into_iter().collect();
        ShellLexer::new('\\').process_word(word, &mut |n| env.get(n).map(|v| v.to_string()))
    }

    #[test]
    fn docker_substitution_table() {
        for (input, want) in [
            ("$a", "A"),
            ("${a}", "A"),
            ("pre${a}post", "preApost"),
            ("$unset", ""),
            ("${unset:-d}", "d"),
            ("${empty:-d}", "d"),
            ("${empty-d}", ""),
            ("${unset-d}", "d"),
            ("${a:-d}", "A"),
            ("${a:+x}", "x"),
            ("${empty:+x}", ""),
            ("${empty+x}", "x"),
            ("${unset+x}", ""),
            ("${unset:-${a}}", "A"),
            ("\\$a", "$a"),
            ("'$a'", "$a"),
            ("\"$a\"", "A"),
            ("\"\\$a\"", "$a"),
            ("\"a\\b\"", "a\\b"),
            ("a\\ b", "a b"),
            ("$", "$"),
            ("$1", ""),
            ("${path#*/}", "usr/local/bin"),
            ("${path##*/}", "bin"),
            ("${path%/*}", "/usr/local"),
            ("${path%%/l*}", "/usr"),
            ("${path/usr/opt}", "/opt/local/bin"),
            ("${path//l/L}", "/usr/LocaL/bin"),
            ("${a:?}", "A"),
        ] {
            assert_eq!(expand(input).as_deref(), Ok(want), "{input}");
        }
    }

    #[test]
    fn substitution_errors() {
        for (input, want) in [
            ("${a", "missing '}'"),
            ("${}", "bad substitution"),
            ("${:a}", "bad substitution"),
            ("'abc", "single-quote"),
            ("\"abc", "double-quote"),
            ("${unset:?must be set}", "unset: must be set"),
            ("${empty:?}", "empty: is not allowed to be empty"),
            ("${unset?}", "unset: is not allowed to be unset"),
            ("${a:#x}", "unsupported modifier"),
        ] {
            let e = expand(input).unwrap_err();
            assert!(e.contains(want), "{input}: {e}");
        }
    }

    #[test]
    fn words_split_on_expanded_whitespace() {
        let lexer = ShellLexer::new('\\');
        let words = lexer.process_words("80 $sp \"$sp\" ''", &mut |n| (n == "sp").then(|| "x  y".to_string())).unwrap();
        assert_eq!(words, ["80", "x", "y", "x  y"]);
    }

    #[test]
    fn heredoc_bodies_keep_quotes() {
        let lexer = ShellLexer::new('\\');
        let out = lexer.process_heredoc("echo \"$a\" '\\$a' \\\\\n", &mut |_| Some("A".into())).unwrap();
        assert_eq!(out, "echo \"A\" '$a' \\\n");
    }

    #[test]
    fn backtick_escape() {
        let lexer = ShellLexer::new('`');
        let out = lexer.process_word("c:\\dir `$x", &mut |_| None).unwrap();
        assert_eq!(out, "c:\\dir $x");
    }
}
