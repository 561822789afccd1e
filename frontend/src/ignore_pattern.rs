//! One `.dockerignore` pattern, matched the way Docker matches them:
//! `*` is any run of characters but `/`, `?` one character but `/`,
//! `[...]` a character class, `**` any number of directories (`**/` may
//! match nothing), `\` escapes the next character.

/// A compiled pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IgnorePattern {
    /// `!pattern`: re-includes what earlier patterns excluded.
    pub exclusion: bool,
    /// The cleaned pattern text (without `!`).
    pub text: String,
    tokens: Vec<Token>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Literal(char),
    /// `?`
    AnyChar,
    /// `*`
    Star,
    /// `**` followed by more pattern: `(.*/)?`
    Dirs,
    /// `**` at the end: `.*`
    Everything,
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

impl IgnorePattern {
    /// Compiles a pattern (`!` prefix allowed). The text is cleaned like Go's
    /// `filepath.Clean`, and a leading `/` is dropped.
    pub fn new(pattern: &str) -> Result<Self, String> {
        let pattern = pattern.trim();
        let (exclusion, body) = match pattern.strip_prefix('!') {
            Some(rest) => (true, rest.trim()),
            None => (false, pattern),
        };
        if exclusion && body.is_empty() {
            return Err("illegal exclusion pattern: \"!\"".into());
        }
        let mut text = clean_path(body);
        if text.len() > 1 && text.starts_with('/') {
            text.remove(0);
        }
        let tokens = compile(&text).map_err(|e| format!("pattern {pattern:?}: {e}"))?;
        Ok(IgnorePattern { exclusion, text, tokens })
    }

    /// Compiles one path element of a COPY source as a Go `filepath.Match`
    /// pattern (no `!`, no cleaning), as BuildKit matches them: `**` is two
    /// stars, not any number of directories.
    pub fn glob(element: &str) -> Result<Self, String> {
        let tokens = compile(element)
            .map_err(|e| format!("pattern {element:?}: {e}"))?
            .into_iter()
            .map(|token| match token {
                Token::Dirs | Token::Everything => Token::Star,
                other => other,
            })
            .collect();
        Ok(IgnorePattern { exclusion: false, text: element.to_string(), tokens })
    }

    /// Whether the pattern matches `path` (relative, `/`-separated) itself.
    pub fn matches(&self, path: &str) -> bool {
        let text: Vec<char> = path.chars().collect();
        // reach[j]: the tokens so far can match text[..j].
        let mut reach = vec![false; text.len() + 1];
        reach[0] = true;
        for token in &self.tokens {
            let mut next = vec![false; text.len() + 1];
            match token {
                Token::Star => {
                    // text[..j] is matched when some reach[i], i <= j, has
                    // no `/` in text[i..j]: one pass, not one per i.
                    let mut open = false;
                    for j in 0..=text.len() {
                        open = (open && text[j - 1] != '/') || reach[j];
                        next[j] = open;
                    }
                }
                Token::Everything => {
                    if let Some(first) = reach.iter().position(|&r| r) {
                        next[first..].iter_mut().for_each(|n| *n = true);
                    }
                }
                Token::Dirs => {
                    let mut any = false;
                    for j in 0..=text.len() {
                        if reach[j] {
                            next[j] = true;
                        }
                        if any && j > 0 && text[j - 1] == '/' {
                            next[j] = true;
                        }
                        any |= reach[j];
                    }
                }
                single => {
                    for j in 0..text.len() {
                        if reach[j] && single_matches(single, text[j]) {
                            next[j + 1] = true;
                        }
                    }
                }
            }
            reach = next;
        }
        reach[text.len()]
    }
}

fn single_matches(token: &Token, c: char) -> bool {
    match token {
        Token::Literal(l) => *l == c,
        Token::AnyChar => c != '/',
        Token::Class { negated, ranges } => ranges.iter().any(|&(a, b)| a <= c && c <= b) != *negated,
        _ => false,
    }
}

fn compile(pattern: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '*' if chars.get(i + 1) == Some(&'*') => {
                i += 2;
                if chars.get(i) == Some(&'/') {
                    i += 1;
                }
                tokens.push(if i >= chars.len() { Token::Everything } else { Token::Dirs });
            }
            '*' => {
                tokens.push(Token::Star);
                i += 1;
            }
            '?' => {
                tokens.push(Token::AnyChar);
                i += 1;
            }
            '\\' => {
                tokens.push(Token::Literal(chars.get(i + 1).copied().unwrap_or('\\')));
                i += 2;
            }
            '[' => {
                let (token, len) = class(&chars[i..])?;
                tokens.push(token);
                i += len;
            }
            c => {
                tokens.push(Token::Literal(c));
                i += 1;
            }
        }
    }
    Ok(tokens)
}

/// Parses `[...]` (Go's filepath.Match syntax: `^` negates, `a-z` ranges,
/// `\` escapes).
fn class(chars: &[char]) -> Result<(Token, usize), String> {
    let mut i = 1;
    let negated = chars.get(1) == Some(&'^');
    if negated {
        i += 1;
    }
    let mut ranges = Vec::new();
    let read = |i: &mut usize| -> Result<char, String> {
        let mut c = *chars.get(*i).ok_or("unterminated character class")?;
        if c == '\\' {
            *i += 1;
            c = *chars.get(*i).ok_or("unterminated character class")?;
        }
        *i += 1;
        Ok(c)
    };
    loop {
        match chars.get(i) {
            None => return Err("unterminated character class".into()),
            Some(']') if !ranges.is_empty() => return Ok((Token::Class { negated, ranges }, i + 1)),
            Some(']') => return Err("empty character class".into()),
            Some(_) => {
                let lo = read(&mut i)?;
                let hi = if chars.get(i) == Some(&'-') && chars.get(i + 1) != Some(&']') {
                    i += 1;
                    read(&mut i)?
                } else {
                    lo
                };
                if hi < lo {
                    return Err(format!("bad range {lo}-{hi} in character class"));
                }
                ranges.push((lo, hi));
            }
        }
    }
}

/// Go's `filepath.Clean` for `/`-separated paths.
pub fn clean_path(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|p| *p != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            p => parts.push(p),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".into(),
        (false, false) => joined,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean() {
        for (input, want) in [
            ("a//b/./c/", "a/b/c"),
            ("./a", "a"),
            ("a/../b", "b"),
            ("../a", "../a"),
            ("/../a", "/a"),
            ("", "."),
            ("/", "/"),
        ] {
            assert_eq!(clean_path(input), want, "{input}");
        }
    }

    #[test]
    fn stars_match_runs_without_a_slash() {
        let glob = |p: &str| IgnorePattern::glob(p).expect("pattern");
        for (pattern, name, want) in [
            ("package*.json", "package.json", true),
            ("package*.json", "package-lock.json", true),
            ("package*.json", "packages", false),
            ("*", "", true),
            ("a*", "a/b", false),
            ("*/b", "a/b", true),
            ("*/b", "a/c/b", false),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("**.go", "main.go", true),
            ("src**", "src-old", true),
        ] {
            assert_eq!(glob(pattern).matches(name), want, "{pattern} ~ {name}");
        }
    }

    #[test]
    fn bad_patterns() {
        assert!(IgnorePattern::new("a[").is_err());
        assert!(IgnorePattern::new("[]a").is_err());
        assert!(IgnorePattern::new("!").is_err());
        assert!(IgnorePattern::new("[z-a]").is_err());
    }
}
