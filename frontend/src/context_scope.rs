//! The part of a context directory a scan read: all of it, or some paths,
//! each with everything under it. A build that names only `app.txt` and
//! `src/` need not read a context of thousands of other files, as BuildKit
//! sends only the paths a build names.

use std::collections::BTreeSet;

/// What a scan of a context directory read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ContextScope {
    /// Everything.
    #[default]
    Whole,
    /// These paths (clean, relative, none under another) with everything
    /// under them, and the directories above them (but not their other
    /// entries).
    Paths(BTreeSet<String>),
}

impl ContextScope {
    /// The scope of `paths` (clean relative paths); `""` (the root) makes
    /// it whole, and a path under another adds nothing.
    pub fn of_paths(paths: impl IntoIterator<Item = String>) -> Self {
        let mut kept: BTreeSet<String> = BTreeSet::new();
        let mut sorted: Vec<String> = paths.into_iter().collect();
        sorted.sort();
        for path in sorted {
            if path.is_empty() {
                return ContextScope::Whole;
            }
            if !kept.iter().any(|k| under(&path, k)) {
                kept.insert(path);
            }
        }
        ContextScope::Paths(kept)
    }

    /// Whether `path` and everything under it was read.
    pub fn holds(&self, path: &str) -> bool {
        match self {
            ContextScope::Whole => true,
            ContextScope::Paths(paths) => paths.iter().any(|p| under(path, p)),
        }
    }

    /// Whether `path` itself was read: it is held, or is a directory above
    /// a held path.
    pub fn knows(&self, path: &str) -> bool {
        match self {
            ContextScope::Whole => true,
            ContextScope::Paths(paths) => paths.iter().any(|p| under(path, p) || under(p, path)),
        }
    }
}

/// Whether `path` is `base` or under it (`""` is above everything).
fn under(path: &str, base: &str) -> bool {
    base.is_empty() || path == base || path.strip_prefix(base).is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(paths: &[&str]) -> ContextScope {
        ContextScope::of_paths(paths.iter().map(|p| p.to_string()))
    }

    #[test]
    fn a_path_under_another_adds_nothing_and_the_root_is_everything() {
        assert_eq!(scope(&["src/main.rs", "src", "app.txt"]), scope(&["app.txt", "src"]));
        assert_eq!(scope(&["app.txt", ""]), ContextScope::Whole);
        assert_eq!(scope(&[]), ContextScope::Paths(BTreeSet::new()));
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
    }
}
