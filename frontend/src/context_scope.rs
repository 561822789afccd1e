//! The part of a context directory a scan read: all of it, or some paths
//! and the entries some wildcards match, each with everything under it. A
//! build that names only `app.txt`, `src/` and `package*.json` need not
//! read a context of thousands of other files, as BuildKit sends only the
//! paths a build names.

use std::collections::{BTreeMap, BTreeSet};

use crate::build_context::has_wildcard;
use crate::IgnorePattern;

/// The most patterns a part may have: each lookup tries those of its
/// directory, and a part may come from the network.
pub const MAX_SCOPE_PATTERNS: usize = 1024;
/// The longest pattern of one path element (a file name has at most 255
/// bytes): matching costs its length times the name's.
const MAX_PATTERN_BYTES: usize = 1024;

/// What a scan of a context directory read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ContextScope {
    /// Everything.
    #[default]
    Whole,
    /// Some of it.
    Part(ScopePart),
}

/// Paths and the entries that patterns match, each with everything under
/// it, and the directories above them (but not their other entries).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScopePart {
    /// Clean relative paths, none under another.
    paths: BTreeSet<String>,
    /// Per directory (clean, relative, `""` for the root), the patterns of
    /// one path element (Go filepath.Match) whose matching entries were
    /// read.
    patterns: BTreeMap<String, Vec<IgnorePattern>>,
}

impl ContextScope {
    /// The scope of `paths` (clean relative paths); `""` (the root) makes
    /// it whole, and a path under another adds nothing.
    pub fn of_paths(paths: impl IntoIterator<Item = String>) -> Self {
        let mut sorted: Vec<String> = paths.into_iter().collect();
        // A directory sorts before what is under it.
        sorted.sort();
        let mut kept: BTreeSet<String> = BTreeSet::new();
        for path in sorted {
            if path.is_empty() {
                return ContextScope::Whole;
            }
            if !held_in(&kept, &path) {
                kept.insert(path);
            }
        }
        ContextScope::Part(ScopePart { paths: kept, patterns: BTreeMap::new() })
    }

    /// The same scope with the entries `patterns` match added: each a
    /// clean relative path whose last element alone may hold wildcards
    /// (`src/*.go`, `package*.json`).
    pub fn with_patterns(self, patterns: impl IntoIterator<Item = String>) -> Result<Self, String> {
        let ContextScope::Part(mut part) = self else { return Ok(self) };
        let mut count = part.patterns.values().map(Vec::len).sum::<usize>();
        for pattern in patterns {
            let (dir, element) = pattern.rsplit_once('/').unwrap_or(("", &pattern));
            if dir.split('/').any(has_wildcard) {
                return Err(format!("context pattern {pattern:?}: only its last element may hold wildcards"));
            }
            if element.len() > MAX_PATTERN_BYTES {
                return Err(format!("a context pattern's last element is longer than {MAX_PATTERN_BYTES} bytes"));
            }
            let globs = part.patterns.entry(dir.to_string()).or_default();
            if globs.iter().any(|g| g.text == element) {
                continue;
            }
            count += 1;
            if count > MAX_SCOPE_PATTERNS {
                return Err(format!("a context part has more than {MAX_SCOPE_PATTERNS} patterns"));
            }
            globs.push(IgnorePattern::glob(element).map_err(|e| format!("context {e}"))?);
        }
        Ok(ContextScope::Part(part))
    }

    /// Whether `path` and everything under it was read.
    pub fn holds(&self, path: &str) -> bool {
        match self {
            ContextScope::Whole => true,
            ContextScope::Part(part) => part.holds(path),
        }
    }

    /// Whether `path` itself was read: it is held, or is a directory above
    /// a held path or one whose entries a pattern matched.
    pub fn knows(&self, path: &str) -> bool {
        match self {
            ContextScope::Whole => true,
            ContextScope::Part(part) if path.is_empty() => !part.paths.is_empty() || !part.patterns.is_empty(),
            ContextScope::Part(part) => {
                part.holds(path) || part.patterns.contains_key(path) || above(&part.paths, path) || {
                    let below = format!("{path}/");
                    part.patterns.range(below.clone()..).next().is_some_and(|(dir, _)| dir.starts_with(&below))
                }
            }
        }
    }

    /// Whether every entry of directory `dir` that the path element
    /// `element` (a pattern) matches was read.
    pub fn lists(&self, dir: &str, element: &str) -> bool {
        match self {
            ContextScope::Whole => true,
            ContextScope::Part(part) => {
                part.holds(dir) || part.patterns.get(dir).is_some_and(|globs| globs.iter().any(|g| g.text == element))
            }
        }
    }
}

impl ScopePart {
    /// The paths, each with everything under it.
    pub fn paths(&self) -> &BTreeSet<String> {
        &self.paths
    }

    /// The patterns, as given to [`ContextScope::with_patterns`].
    pub fn patterns(&self) -> impl Iterator<Item = String> + '_ {
        self.patterns.iter().flat_map(|(dir, globs)| {
            globs.iter().map(move |g| if dir.is_empty() { g.text.clone() } else { format!("{dir}/{}", g.text) })
        })
    }

    /// The directories whose entries patterns match.
    pub fn listed_dirs(&self) -> impl Iterator<Item = &String> {
        self.patterns.keys()
    }

    /// Whether a pattern of directory `dir` matches its entry `name`.
    pub fn matches(&self, dir: &str, name: &str) -> bool {
        self.patterns.get(dir).is_some_and(|globs| globs.iter().any(|g| g.matches(name)))
    }

    /// Whether `path` or a directory above it is a path of the part or
    /// matched by a pattern: a lookup per level.
    fn holds(&self, path: &str) -> bool {
        held_in(&self.paths, path)
            || levels(path).any(|p| {
                let (dir, name) = p.rsplit_once('/').unwrap_or(("", p));
                self.matches(dir, name)
            })
    }
}

/// `path` and the directories above it, the shortest first.
fn levels(path: &str) -> impl Iterator<Item = &str> {
    path.match_indices('/').map(|(at, _)| &path[..at]).chain(std::iter::once(path))
}

/// Whether `path` or a directory above it is in `paths`: a lookup per
/// level, so a scope of many paths (a request's) costs no more per path.
fn held_in(paths: &BTreeSet<String>, path: &str) -> bool {
    levels(path).any(|p| paths.contains(p))
}

/// Whether `path` is a directory above one of `paths`.
fn above(paths: &BTreeSet<String>, path: &str) -> bool {
    let below = format!("{path}/");
    paths.range(below.clone()..).next().is_some_and(|p| p.starts_with(&below))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn scope(paths: &[&str]) -> ContextScope {
        ContextScope::of_paths(paths.iter().map(|p| p.to_string()))
    }

    fn with_patterns(paths: &[&str], patterns: &[&str]) -> ContextScope {
        scope(paths).with_patterns(patterns.iter().map(|p| p.to_string())).unwrap()
    }

    #[test]
    fn a_path_under_another_adds_nothing_and_the_root_is_everything() {
        assert_eq!(scope(&["src/main.rs", "src", "app.txt"]), scope(&["app.txt", "src"]));
        assert_eq!(scope(&["app.txt", ""]), ContextScope::Whole);
        assert_eq!(scope(&[]), ContextScope::Part(ScopePart::default()));
    }

    #[test]
    fn held_paths_and_the_directories_above_them_are_known() {
        let s = scope(&["data/f0007.bin", "config"]);
        for held in ["config", "config/app.conf", "data/f0007.bin"] {
            assert!(s.holds(held), "{held}");
            assert!(s.knows(held), "{held}");
        }
        assert!(s.knows("data") && !s.holds("data"));
        assert!(s.knows("") && !s.holds(""));
        for outside in ["data/f0008.bin", "configs", "data/f0007.bin2", "other"] {
            assert!(!s.knows(outside), "{outside}");
        }
        assert!(ContextScope::Whole.holds("") && ContextScope::Whole.knows("anything"));
        assert!(!scope(&[]).knows(""));
    }

    /// `a-x` sorts between `a` and `a/b`; a request may name very many
    /// paths, and each costs a lookup per level, not one per other path.
    #[test]
    fn sibling_names_and_many_paths() {
        assert_eq!(scope(&["a/b", "a-x", "a"]), scope(&["a", "a-x"]));
        let s = scope(&["a-x/f"]);
        assert!(s.knows("a-x") && !s.knows("a"));
        let many: Vec<String> = (0..200_000).map(|n| format!("d{}/f{n}", n % 100)).collect();
        let s = ContextScope::of_paths(many.clone().into_iter().chain(["d7".to_string()]));
        let ContextScope::Part(part) = &s else { panic!("{s:?}") };
        assert_eq!(part.paths.len(), 200_000 - 2_000 + 1, "d7's files are under d7");
        assert!(many.iter().all(|p| s.holds(p)));
        assert!(s.knows("d8") && !s.holds("d8") && !s.knows("d8/g"));
    }

    /// `package*.json` and `src/*.go`: the matches are held with what is
    /// under them, the directories on the way are known, and only those
    /// directories' listings for those patterns were read.
    #[test]
    fn patterns_hold_their_matches_and_list_their_directory_for_themselves() {
        let s = with_patterns(&["app.txt"], &["package*.json", "src/cmd/*.go"]);
        for held in ["package.json", "package-lock.json", "src/cmd/main.go", "src/cmd/x.go/inner", "app.txt"] {
            assert!(s.holds(held) && s.knows(held), "{held}");
        }
        for known in ["", "src", "src/cmd"] {
            assert!(s.knows(known) && !s.holds(known), "{known:?}");
        }
        for outside in ["README.md", "src/lib.rs", "src/cmd/main.rs", "node_modules", "src/other/main.go"] {
            assert!(!s.knows(outside), "{outside}");
        }
        assert!(s.lists("", "package*.json") && s.lists("src/cmd", "*.go"));
        assert!(!s.lists("", "*.json") && !s.lists("src", "*.go") && !s.lists("src/cmd", "*.rs"));
        assert!(with_patterns(&["src"], &[]).lists("src/cmd", "*.rs"), "a held directory lists everything");
        let ContextScope::Part(part) = &s else { panic!("{s:?}") };
        assert_eq!(part.patterns().collect::<Vec<_>>(), ["package*.json", "src/cmd/*.go"]);
        assert_eq!(with_patterns(&[], &["*.json", "*.json"]), with_patterns(&[], &["*.json"]));
        assert_eq!(with_patterns(&[""], &["*.json"]), ContextScope::Whole);
    }

    /// Patterns come from requests too: one with a wildcard above its last
    /// element, a bad character class, a very long one or too many is
    /// refused.
    #[test]
    fn bad_or_too_many_patterns_are_refused() {
        let refused = |patterns: Vec<String>| scope(&[]).with_patterns(patterns).unwrap_err();
        assert!(refused(vec!["*/main.go".into()]).contains("only its last element"));
        assert!(refused(vec!["src/[a-".into()]).contains("[a-"));
        let many = (0..=MAX_SCOPE_PATTERNS).map(|n| format!("d{n}/*.go")).collect();
        assert!(refused(many).contains("more than 1024 patterns"));
        assert!(refused(vec!["*".repeat(MAX_PATTERN_BYTES + 1)]).contains("longer than 1024 bytes"));
    }
}
