//! The source paths of `COPY --parents`: which part of a matched path is
//! kept under the destination.

/// A `COPY --parents` source split at its pivot. A `/./` in the path marks
/// where the kept part starts (`src/./pkg/a` keeps `pkg/a`); without one
/// the whole path is kept. Both parts are clean, relative and may hold
/// wildcards; `..` is refused, as the kept part could not say where its
/// files land.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParentsPath {
    /// The components above the pivot (none without a pivot).
    pub root: Vec<String>,
    /// The components that land under the destination.
    pub kept: Vec<String>,
}

impl ParentsPath {
    pub fn parse(path: &str) -> std::result::Result<ParentsPath, String> {
        let parts: Vec<&str> = path.split('/').collect();
        if parts.contains(&"..") {
            return Err(format!("{path:?}: \"..\" is not allowed in a --parents source"));
        }
        // A `.` with a `/` on both sides; a leading `./` is not a pivot.
        let pivot = (1..parts.len().saturating_sub(1)).find(|&i| parts[i] == ".").unwrap_or(0);
        let clean = |parts: &[&str]| -> Vec<String> {
            parts.iter().filter(|p| !p.is_empty() && **p != ".").map(|p| p.to_string()).collect()
        };
        Ok(ParentsPath { root: clean(&parts[..pivot]), kept: clean(&parts[pivot..]) })
    }

    /// The kept part of `matched`, a clean relative path this source matched
    /// (wildcards expanded, one component each): `""` for the root itself.
    pub fn kept_part(&self, matched: &str) -> String {
        let parts: Vec<&str> = matched.split('/').filter(|p| !p.is_empty() && *p != ".").collect();
        parts.get(self.root.len()..).unwrap_or_default().join("/")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn split(path: &str) -> (String, String) {
        let p = ParentsPath::parse(path).unwrap();
        (p.root.join("/"), p.kept.join("/"))
    }

    #[test]
    fn without_a_pivot_the_whole_path_is_kept() {
        assert_eq!(split("./x/a.txt"), ("".into(), "x/a.txt".into()));
        assert_eq!(split("x/a.txt"), ("".into(), "x/a.txt".into()));
        assert_eq!(split("/usr/lib/"), ("".into(), "usr/lib".into()));
        assert_eq!(split("x/."), ("".into(), "x".into()));
        assert_eq!(split("."), ("".into(), "".into()));
    }

    #[test]
    fn a_pivot_starts_the_kept_part() {
        assert_eq!(split("./src/./pkg/a/"), ("src".into(), "pkg/a".into()));
        assert_eq!(split("/usr/./lib/x.so"), ("usr".into(), "lib/x.so".into()));
        assert_eq!(split("/./etc/hosts"), ("".into(), "etc/hosts".into()));
        assert_eq!(split("a/b/./"), ("a/b".into(), "".into()));
        // The first pivot counts; later ones are only `.`.
        assert_eq!(split("a/./b/./c"), ("a".into(), "b/c".into()));
    }

    #[test]
    fn globs_stay_in_their_part() {
        assert_eq!(split("./y/*.txt"), ("".into(), "y/*.txt".into()));
        assert_eq!(split("apps/*/./src/*.rs"), ("apps/*".into(), "src/*.rs".into()));
        let p = ParentsPath::parse("apps/*/./src/*.rs").unwrap();
        assert_eq!(p.kept_part("apps/web/src/main.rs"), "src/main.rs");
        assert_eq!(ParentsPath::parse("./y/*.txt").unwrap().kept_part("y/b.txt"), "y/b.txt");
        assert_eq!(ParentsPath::parse("a/./").unwrap().kept_part("a"), "");
    }

    #[test]
    fn dot_dot_is_refused() {
        for path in ["../x", "a/../b", "a/./../b", "a/b/.."] {
            let err = ParentsPath::parse(path).unwrap_err();
            assert!(err.contains("\"..\" is not allowed"), "{path}: {err}");
        }
        assert!(ParentsPath::parse("a/..b/c").is_ok(), "only a whole `..` component");
    }
}
