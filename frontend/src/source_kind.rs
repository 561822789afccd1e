//! What a COPY/ADD source names: a path, a file over HTTP(S) or a git
//! repository, told apart the way BuildKit does.

use crate::GitUrl;

/// The kind of one COPY/ADD source (after expansion).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceKind {
    /// A path or glob in the build context or the `--from` filesystem.
    Path,
    /// A file fetched over HTTP(S).
    Http,
    /// A git repository: `git://`, `ssh://`, `user@host:path`, or an
    /// HTTP(S) URL whose path ends in `.git`.
    Git(GitUrl),
}

impl SourceKind {
    /// The kind of `source`; an error only for a git URL that does not parse.
    pub fn of(source: &str) -> Result<SourceKind, String> {
        if let Some(rest) = source.strip_prefix("http://").or_else(|| source.strip_prefix("https://")) {
            let path = rest.split(['?', '#']).next().unwrap_or(rest);
            return if path.ends_with(".git") {
                GitUrl::parse(source).map(SourceKind::Git)
            } else {
                Ok(SourceKind::Http)
            };
        }
        if source.starts_with("git://") || source.starts_with("ssh://") || is_scp_like(source) {
            return GitUrl::parse(source).map(SourceKind::Git);
        }
        Ok(SourceKind::Path)
    }
}

/// `user@host:path`: git's scp-like syntax for ssh.
fn is_scp_like(source: &str) -> bool {
    let Some((user, rest)) = source.split_once('@') else { return false };
    let Some((host, _)) = rest.split_once(':') else { return false };
    let word =
        |s: &str, extra: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || extra.contains(c));
    word(user, "-_") && word(host, "-.")
}

/// The name a file fetched from `url` gets in a destination directory: the
/// last element of the URL's path, percent-decoded; `__unnamed__` when the
/// path has none (as BuildKit names it).
pub fn http_file_name(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.split(['?', '#']).next().unwrap_or(rest);
    let path = rest.find('/').map_or("", |i| &rest[i..]);
    let decoded = percent_decode(path);
    match decoded.trim_end_matches('/').rsplit('/').next() {
        Some(name) if !name.is_empty() && name != "." && name != ".." => name.to_string(),
        _ => "__unnamed__".to_string(),
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = bytes
            .get(i + 1..i + 3)
            .filter(|h| bytes[i] == b'%' && h.iter().all(u8::is_ascii_hexdigit))
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_git(source: &str) -> bool {
        matches!(SourceKind::of(source), Ok(SourceKind::Git(_)))
    }

    #[test]
    fn sources_are_told_apart_as_buildkit_does() {
        for path in ["src/", "a:b", "./git@x:y", "file.git", "*.txt", "ftp://x/y", "dir/user@host:x"] {
            assert_eq!(SourceKind::of(path), Ok(SourceKind::Path), "{path}");
        }
        for http in ["http://x/y.tar.gz", "https://x/a.git.tar", "https://x/", "https://x/y?name=a.git"] {
            assert_eq!(SourceKind::of(http), Ok(SourceKind::Http), "{http}");
        }
        for git in [
            "git://127.0.0.1:9418/repo.git#v1",
            "ssh://git@host/r.git",
            "git@github.com:moby/buildkit.git",
            "deploy_user@git.example.com:team/r#main:sub",
            "https://github.com/moby/buildkit.git#v0.14.0",
            "https://github.com/moby/buildkit.git?tag=v0.14.0&subdir=docs",
            "http://host/r.git",
        ] {
            assert!(is_git(git), "{git}");
        }
        assert_eq!(
            SourceKind::of("https://github.com/moby/buildkit.git#v0.14.0:docs"),
            Ok(SourceKind::Git(GitUrl {
                remote: "https://github.com/moby/buildkit.git".into(),
                reference: "v0.14.0".into(),
                subdir: "docs".into(),
                checksum: String::new(),
                submodules: true,
                keep_git_dir: false,
            }))
        );
        assert!(SourceKind::of("https://x/r.git?depth=1").unwrap_err().contains("depth"));
    }

    #[test]
    fn file_names_come_from_the_url_path() {
        assert_eq!(http_file_name("https://x.org/dl/tool-1.0.tar.gz"), "tool-1.0.tar.gz");
        assert_eq!(http_file_name("https://x.org/dl/a%20b.txt?sig=1#frag"), "a b.txt");
        assert_eq!(http_file_name("http://x.org/dir/"), "dir");
        assert_eq!(http_file_name("http://x.org/a%2Fb"), "b");
        assert_eq!(http_file_name("http://x.org"), "__unnamed__");
        assert_eq!(http_file_name("http://x.org/"), "__unnamed__");
        assert_eq!(http_file_name("http://x.org/%2E%2E"), "__unnamed__");
        assert_eq!(http_file_name("http://x.org/100%"), "100%");
    }
}
