//! Checking and reading the `--flags` of one instruction.

use std::collections::BTreeMap;

use crate::words::Word;

/// What kind of value a flag takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlagKind {
    /// `--link` or `--link=true|false`.
    Bool,
    /// `--from=x`, once.
    String,
    /// `--mount=...`, repeatable.
    Strings,
}

/// A flag error: the byte offset of the flag and the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlagError {
    pub offset: usize,
    pub message: String,
}

/// The parsed flags of one instruction.
#[derive(Clone, Debug, Default)]
pub struct FlagSet {
    values: BTreeMap<&'static str, Vec<(String, usize)>>,
    bools: BTreeMap<&'static str, bool>,
}

impl FlagSet {
    /// Checks `flags` against `spec` (name, kind) for `instruction`.
    pub fn parse(instruction: &str, flags: &[Word], spec: &[(&'static str, FlagKind)]) -> Result<Self, FlagError> {
        let mut set = FlagSet::default();
        for flag in flags {
            let (name, value) = match flag.text.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (flag.text.as_str(), None),
            };
            let err = |message: String| FlagError { offset: flag.offset, message };
            let Some(&(known, kind)) = spec.iter().find(|(n, _)| *n == name) else {
                let known: Vec<String> = spec.iter().map(|(n, _)| format!("--{n}")).collect();
                let hint = if known.is_empty() {
                    format!("{instruction} takes no flags")
                } else {
                    format!("{instruction} takes {}", known.join(", "))
                };
                return Err(err(format!("unknown flag \"--{name}\": {hint}")));
            };
            match kind {
                FlagKind::Bool => {
                    let v = match value.map(str::to_ascii_lowercase).as_deref() {
                        None | Some("") | Some("true") => true,
                        Some("false") => false,
                        Some(other) => {
                            return Err(err(format!("expecting boolean value for flag --{known}, not {other:?}")))
                        }
                    };
                    if set.bools.insert(known, v).is_some() {
                        return Err(err(format!("duplicate flag specified: --{known}")));
                    }
                }
                FlagKind::String | FlagKind::Strings => {
                    let Some(v) = value else {
                        return Err(err(format!("missing a value on flag --{known}")));
                    };
                    let entry = set.values.entry(known).or_default();
                    if kind == FlagKind::String && !entry.is_empty() {
                        return Err(err(format!("duplicate flag specified: --{known}")));
                    }
                    entry.push((v.to_string(), flag.offset));
                }
            }
        }
        Ok(set)
    }

    /// A boolean flag, false when absent.
    pub fn bool(&self, name: &str) -> bool {
        self.bools.get(name).copied().unwrap_or(false)
    }

    /// A boolean flag, `None` when absent.
    pub fn opt_bool(&self, name: &str) -> Option<bool> {
        self.bools.get(name).copied()
    }

    /// A single-valued flag and its offset.
    pub fn string(&self, name: &str) -> Option<(String, usize)> {
        self.values.get(name).and_then(|v| v.first()).cloned()
    }

    /// All values of a repeatable flag with their offsets.
    pub fn strings(&self, name: &str) -> Vec<(String, usize)> {
        self.values.get(name).cloned().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(list: &[&str]) -> Vec<Word> {
        list.iter().enumerate().map(|(i, t)| Word { text: t.to_string(), offset: i * 10 }).collect()
    }

    const SPEC: &[(&str, FlagKind)] =
        &[("from", FlagKind::String), ("link", FlagKind::Bool), ("exclude", FlagKind::Strings)];

    #[test]
    fn reads_flags() {
        let f = FlagSet::parse("COPY", &words(&["from=a", "link", "exclude=x", "exclude=y"]), SPEC).unwrap();
        assert_eq!(f.string("from"), Some(("a".into(), 0)));
        assert!(f.bool("link"));
        assert_eq!(f.strings("exclude").len(), 2);
    }

    #[test]
    fn errors() {
        let e = FlagSet::parse("COPY", &words(&["from=a", "chmodd=1"]), SPEC).unwrap_err();
        assert_eq!(e.offset, 10);
        assert!(e.message.starts_with("unknown flag \"--chmodd\""), "{}", e.message);
        let e = FlagSet::parse("COPY", &words(&["link=yes"]), SPEC).unwrap_err();
        assert!(e.message.contains("boolean"));
        let e = FlagSet::parse("COPY", &words(&["from"]), SPEC).unwrap_err();
        assert!(e.message.contains("missing a value"));
        let e = FlagSet::parse("COPY", &words(&["from=a", "from=b"]), SPEC).unwrap_err();
        assert!(e.message.contains("duplicate"));
    }
}
