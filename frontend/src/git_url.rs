//! A git source of ADD: `REMOTE[#REF[:SUBDIR]]`, or BuildKit's query form
//! `REMOTE?KEY=VALUE&...` (Dockerfile 1.18: `ref`, `tag`, `branch`,
//! `checksum` or `commit`, `subdir`, `submodules`, `keep-git-dir`).

use std::fmt;

use serde::{Deserialize, Serialize};

/// A git repository, the ref to check out and the directory of it to add.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitUrl {
    /// What `git fetch` is given: `git://host/repo.git`, `git@host:repo`, ...
    pub remote: String,
    /// A branch, tag or commit (`refs/tags/X` for `?tag=X`); empty for the
    /// remote's default branch, or for `checksum` alone.
    pub reference: String,
    /// A directory in the repository, relative, without surrounding `/`;
    /// empty for the whole tree.
    pub subdir: String,
    /// The commit (a prefix of its hash) the checkout must be; empty for any.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub checksum: String,
    /// Whether submodules are checked out too (`?submodules=false`: not).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub submodules: bool,
    /// `?keep-git-dir=true`: as `ADD --keep-git-dir`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub keep_git_dir: bool,
}

fn yes() -> bool {
    true
}

fn is_true(value: &bool) -> bool {
    *value
}

fn is_false(value: &bool) -> bool {
    !*value
}

impl GitUrl {
    /// Reads `REMOTE#REF:SUBDIR` (split at the first `#` and the first `:`
    /// after it) or `REMOTE?QUERY`; an unknown or repeated key, or a query
    /// with a fragment too, is an error naming it.
    pub fn parse(source: &str) -> Result<GitUrl, String> {
        let (rest, fragment) = source.split_once('#').unwrap_or((source, ""));
        let (remote, query) = rest.split_once('?').map_or((rest, None), |(remote, query)| (remote, Some(query)));
        let mut url = GitUrl {
            remote: remote.to_string(),
            reference: String::new(),
            subdir: String::new(),
            checksum: String::new(),
            submodules: true,
            keep_git_dir: false,
        };
        let Some(query) = query else {
            let (reference, subdir) = fragment.split_once(':').unwrap_or((fragment, ""));
            url.reference = reference.to_string();
            url.subdir = subdir.trim_matches('/').to_string();
            return Ok(url);
        };
        if !fragment.is_empty() {
            return Err(format!("{source}: a git URL takes a ?query or a #fragment, not both"));
        }
        let mut seen = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if seen.contains(&key) {
                return Err(format!("{source}: {key:?} is given twice"));
            }
            seen.push(key);
            let bool_value = || parse_bool(value).ok_or_else(|| format!("{source}: {key}={value:?} is not a boolean"));
            match key {
                "ref" | "tag" | "branch" => {
                    if !url.reference.is_empty() {
                        return Err(format!("{source}: only one of ref, tag and branch may be given"));
                    }
                    url.reference = match key {
                        "tag" => format!("refs/tags/{value}"),
                        "branch" => format!("refs/heads/{value}"),
                        _ => value.to_string(),
                    };
                }
                "checksum" | "commit" => {
                    if !url.checksum.is_empty() {
                        return Err(format!("{source}: only one of checksum and commit may be given"));
                    }
                    if value.len() < 7 || !value.bytes().all(|b| b.is_ascii_hexdigit()) {
                        return Err(format!("{source}: {key}={value:?} is not a commit hash"));
                    }
                    url.checksum = value.to_ascii_lowercase();
                }
                "subdir" => url.subdir = value.trim_matches('/').to_string(),
                "submodules" => url.submodules = bool_value()?,
                "keep-git-dir" => url.keep_git_dir = bool_value()?,
                _ => {
                    return Err(format!(
                        "{source}: unknown git URL query key {key:?} (known: ref, tag, branch, checksum, commit, \
                         subdir, submodules, keep-git-dir)"
                    ))
                }
            }
        }
        Ok(url)
    }

    /// Whether the form [`fmt::Display`] writes is the query form.
    fn needs_query(&self) -> bool {
        !self.checksum.is_empty() || !self.submodules || self.keep_git_dir || self.reference.contains(':')
    }
}

/// Go's `strconv.ParseBool`, as BuildKit reads these values.
fn parse_bool(value: &str) -> Option<bool> {
    match value {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// `REMOTE[#REF[:SUBDIR]]`, or `REMOTE?...` when the URL has what only the
/// query form says; either reads back with [`GitUrl::parse`].
impl fmt::Display for GitUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.remote)?;
        if self.needs_query() {
            let mut pairs = Vec::new();
            if !self.reference.is_empty() {
                pairs.push(format!("ref={}", self.reference));
            }
            if !self.checksum.is_empty() {
                pairs.push(format!("checksum={}", self.checksum));
            }
            if !self.subdir.is_empty() {
                pairs.push(format!("subdir={}", self.subdir));
            }
            if !self.submodules {
                pairs.push("submodules=false".to_string());
            }
            if self.keep_git_dir {
                pairs.push("keep-git-dir=true".to_string());
            }
            return write!(f, "?{}", pairs.join("&"));
        }
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
        let url = GitUrl::parse(source).unwrap();
        (url.remote, url.reference, url.subdir)
    }

    fn owned(a: &str, b: &str, c: &str) -> (String, String, String) {
        (a.to_string(), b.to_string(), c.to_string())
    }

    #[test]
    fn fragment_is_ref_and_subdir() {
        assert_eq!(parts("git://h/r.git"), owned("git://h/r.git", "", ""));
        assert_eq!(parts("git://h/r.git#v1.0"), owned("git://h/r.git", "v1.0", ""));
        assert_eq!(parts("git://h/r.git#main:docs/api/"), owned("git://h/r.git", "main", "docs/api"));
        assert_eq!(parts("git://h/r.git#:docs"), owned("git://h/r.git", "", "docs"));
        assert_eq!(parts("git@github.com:o/r.git#dev:a:b"), owned("git@github.com:o/r.git", "dev", "a:b"));
    }

    #[test]
    fn query_keys_as_buildkit_reads_them() {
        let remote = "https://h/r.git";
        assert_eq!(parts(&format!("{remote}?tag=v1&subdir=/docs/")), owned(remote, "refs/tags/v1", "docs"));
        assert_eq!(parts(&format!("{remote}?branch=dev")), owned(remote, "refs/heads/dev", ""));
        assert_eq!(parts(&format!("{remote}?ref=pull/42/head")), owned(remote, "pull/42/head", ""));
        let url = GitUrl::parse(&format!("{remote}?commit=ABCDEF1&submodules=false&keep-git-dir=1")).unwrap();
        assert_eq!((url.reference.as_str(), url.checksum.as_str()), ("", "abcdef1"));
        assert!(!url.submodules && url.keep_git_dir);
        let plain = GitUrl::parse(&format!("{remote}?subdir=x")).unwrap();
        assert!(plain.submodules && !plain.keep_git_dir && plain.checksum.is_empty());
    }

    #[test]
    fn bad_queries_are_named() {
        let cases = [
            ("r.git?ref=a#b", "not both"),
            ("r.git?depth=1", "unknown git URL query key \"depth\""),
            ("r.git?ref=a&tag=b", "only one of ref, tag and branch"),
            ("r.git?subdir=a&subdir=b", "\"subdir\" is given twice"),
            ("r.git?checksum=xyz", "is not a commit hash"),
            ("r.git?checksum=abcdef1&commit=abcdef1", "only one of checksum and commit"),
            ("r.git?submodules=maybe", "is not a boolean"),
        ];
        for (source, expected) in cases {
            let error = GitUrl::parse(&format!("git://h/{source}")).unwrap_err();
            assert!(error.contains(expected), "{source}: {error}");
        }
    }

    #[test]
    fn display_reads_back() {
        for source in [
            "git://h/r.git",
            "git://h/r.git#v1",
            "git://h/r.git#main:docs",
            "git://h/r.git#:docs",
            "git://h/r.git?ref=refs/tags/v1&checksum=abcdef1&subdir=docs",
            "git://h/r.git?submodules=false&keep-git-dir=true",
        ] {
            let url = GitUrl::parse(source).unwrap();
            assert_eq!(url.to_string(), source);
            assert_eq!(GitUrl::parse(&url.to_string()).unwrap(), url);
        }
        // Written in the fragment form when that says it all.
        assert_eq!(GitUrl::parse("git://h/r.git?tag=v1&subdir=d").unwrap().to_string(), "git://h/r.git#refs/tags/v1:d");
    }
}
