//! Parser directives: `# syntax=...`, `# escape=...`, `# check=...` at the
//! top of a Dockerfile.

use serde::Serialize;

use crate::Location;

/// The parser directives of a Dockerfile.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Directives {
    pub syntax: Option<String>,
    /// The escape character: `\` (default) or `` ` ``.
    pub escape: char,
    pub check: Option<String>,
    /// Whether an `escape` directive was given (even if it says `\`).
    #[serde(skip)]
    escape_given: bool,
}

impl Default for Directives {
    fn default() -> Self {
        Directives { syntax: None, escape: '\\', check: None, escape_given: false }
    }
}

/// Why a directive line was rejected, with the column of the value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectiveError {
    pub location: Location,
    pub message: String,
}

impl Directives {
    /// Parses `line` as a directive (`#` name `=` value). Returns `Ok(false)`
    /// if it is not one, which ends the directive section.
    pub fn parse_line(&mut self, line: &str, number: usize) -> Result<bool, DirectiveError> {
        let Some((name, value, value_column)) = split_directive(line) else {
            return Ok(false);
        };
        let location = Location::new(number, value_column);
        let duplicate =
            || DirectiveError { location, message: format!("only one {name} parser directive can be used") };
        match name.as_str() {
            "syntax" | "check" => {
                let slot = if name == "syntax" { &mut self.syntax } else { &mut self.check };
                if slot.is_some() {
                    return Err(duplicate());
                }
                *slot = Some(value.to_string());
            }
            "escape" => {
                if self.escape_given {
                    return Err(duplicate());
                }
                self.escape = match value {
                    "\\" => '\\',
                    "`" => '`',
                    other => {
                        return Err(DirectiveError {
                            location,
                            message: format!("invalid escape token {other:?}: it must be ` or \\"),
                        })
                    }
                };
                self.escape_given = true;
            }
            // Unknown directives are comments, as in Docker.
            _ => {}
        }
        Ok(true)
    }
}

/// `# name = value` -> (lowercase name, value, 1-based column of value).
fn split_directive(line: &str) -> Option<(String, &str, usize)> {
    let rest = line.strip_prefix('#')?;
    let body = rest.trim_start_matches([' ', '\t']);
    let name_len = body
        .char_indices()
        .find(|(i, c)| !(c.is_ascii_alphabetic() || (*i > 0 && c.is_ascii_digit())))
        .map(|(i, _)| i)
        .unwrap_or(body.len());
    if name_len == 0 {
        return None;
    }
    let after = body[name_len..].trim_start_matches([' ', '\t']);
    let value_part = after.strip_prefix('=')?;
    let value_trimmed = value_part.trim_start_matches([' ', '\t']);
    let value = value_trimmed.trim_end_matches([' ', '\t']);
    if value.is_empty() {
        return None;
    }
    let value_offset = line.len() - value_trimmed.len();
    let column = line[..value_offset].chars().count() + 1;
    Some((body[..name_len].to_ascii_lowercase(), value, column))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_directives() {
        let mut d = Directives::default();
        assert_eq!(d.parse_line("# syntax=docker/dockerfile:1", 1), Ok(true));
        assert_eq!(d.parse_line("#escape = `", 2), Ok(true));
        assert_eq!(d.parse_line("# unknown=x", 3), Ok(true));
        assert_eq!(d.parse_line("# a comment", 4), Ok(false));
        assert_eq!(d.syntax.as_deref(), Some("docker/dockerfile:1"));
        assert_eq!(d.escape, '`');
    }

    #[test]
    fn rejects_bad_and_duplicate_escape() {
        let mut d = Directives::default();
        let e = d.parse_line("# escape=x", 1).unwrap_err();
        assert_eq!(e.location, Location::new(1, 10));
        assert!(d.parse_line("# escape=\\", 1).is_ok());
        let e = d.parse_line("# escape=`", 2).unwrap_err();
        assert!(e.message.contains("only one escape"), "{}", e.message);
    }
}
