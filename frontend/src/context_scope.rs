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
        ContextScope::Paths(kept)
    }

    /// Whether `path` and everything under it was read.
    pub fn holds(&self, path: &str) -> bool {
        match self {
            ContextScope::Whole => true,
            ContextScope::Paths(paths) => held_in(paths, path),
        }
    }

    /// Whether `path` itself was read: it is held, or is a directory above
    /// a held path.
    pub fn knows(&self, path: &str) -> bool {
        match self {
            ContextScope::Whole => true,
            ContextScope::Paths(paths) if path.is_empty() => !paths.is_empty(),
            ContextScope::Paths(paths) => {
                let below = format!("{path}/");
                held_in(paths, path) || paths.range(below.clone()..).next().is_some_and(|p| p.starts_with(&below))
            }
        }
    }
}

/// Whether `path` or a directory above it is in `paths`: a lookup per
/// level, so a scope of many paths (a request's) costs no more per path.
fn held_in(paths: &BTreeSet<String>, path: &str) -> bool {
    path.match_indices('/').map(|(at, _)| &path[..at]).chain(std::iter::once(path)).any(|p| paths.contains(p))
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
        let ContextScope::Paths(kept) = &s else { panic!("{s:?}") };
        assert_eq!(kept.len(), 200_000 - 2_000 + 1, "d7's files are under d7");
        assert!(many.iter().all(|p| s.holds(p)));
        assert!(s.knows("d8") && !s.holds("d8") && !s.knows("d8/g"));
    }
}
