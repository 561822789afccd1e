//! A git source of ADD: `REMOTE[#REF[:SUBDIR]]`.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A git repository, the ref to check out and the directory of it to add.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitUrl {
    /// What `git fetch` is given: `git://host/repo.git`, `git@host:repo`, ...
    pub remote: String,
    /// A branch, tag or commit; empty for the remote's default branch.
    pub reference: String,
    /// A directory in the repository, relative, without surrounding `/`;
    /// empty for the whole tree.
    pub subdir: String,
}

impl GitUrl {
    /// Splits `REMOTE#REF:SUBDIR` at the first `#` and the first `:` after it.
    pub fn parse(source: &str) -> GitUrl {
        let (remote, fragment) = source.split_once('#').unwrap_or((source, ""));
        let (reference, subdir) = fragment.split_once(':').unwrap_or((fragment, ""));
        GitUrl {
            remote: remote.to_string(),
            reference: reference.to_string(),
            subdir: subdir.trim_matches('/').to_string(),
        }
    }
}

/// `REMOTE[#REF[:SUBDIR]]`, the form [`GitUrl::parse`] reads.
impl fmt::Display for GitUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.remote)?;
        if !self.reference.is_empty() || !self.subdir.is_empty() {
            write!(f, "#{}", self.reference)?;
        }
        if !self.subdir.is_empty() {
            write!(f, ":{}", self.subdir)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(source: &str) -> (String, String, String) {
        let url = GitUrl::parse(source);
        (url.remote, url.reference, url.subdir)
    }

    #[test]
    fn fragment_is_ref_and_subdir() {
        let owned = |a: &str, b: &str, c: &str| (a.to_string(), b.to_string(), c.to_string());
        assert_eq!(parts("git://h/r.git"), owned("git://h/r.git", "", ""));
        assert_eq!(parts("git://h/r.git#v1.0"), owned("git://h/r.git", "v1.0", ""));
        assert_eq!(parts("git://h/r.git#main:docs/api/"), owned("git://h/r.git", "main", "docs/api"));
        assert_eq!(parts("git://h/r.git#:docs"), owned("git://h/r.git", "", "docs"));
        assert_eq!(parts("git@github.com:o/r.git#dev:a:b"), owned("git@github.com:o/r.git", "dev", "a:b"));
    }

    #[test]
    fn display_reads_back() {
        for source in ["git://h/r.git", "git://h/r.git#v1", "git://h/r.git#main:docs", "git://h/r.git#:docs"] {
            assert_eq!(GitUrl::parse(source).to_string(), source);
            assert_eq!(GitUrl::parse(&GitUrl::parse(source).to_string()), GitUrl::parse(source));
        }
    }
}
