//! `.dockerignore` pattern tables, checked against Docker's semantics.
#![allow(clippy::unwrap_used)]

use memobuild_frontend::DockerIgnore;

/// (patterns, path, excluded?)
const TABLE: &[(&[&str], &str, bool)] = &[
    // Plain names match the path and everything under it.
    (&["foo"], "foo", true),
    (&["foo"], "foo/bar", true),
    (&["foo"], "foo/bar/baz.txt", true),
    (&["foo"], "a/foo", false),
    (&["foo"], "foobar", false),
    // `*` stays inside one path element.
    (&["*.go"], "main.go", true),
    (&["*.go"], "cmd/main.go", false),
    (&["*/*.go"], "cmd/main.go", true),
    (&["*/*.go"], "main.go", false),
    (&["*"], "anything", true),
    (&["*"], "dir/sub", true),
    // `?` is one character, never `/`.
    (&["a?c"], "abc", true),
    (&["a?c"], "a/c", false),
    (&["a?c"], "abbc", false),
    // Character classes.
    (&["file[0-9].txt"], "file7.txt", true),
    (&["file[0-9].txt"], "filex.txt", false),
    (&["file[^0-9].txt"], "filex.txt", true),
    (&["file[^0-9].txt"], "file1.txt", false),
    (&["[ab]*"], "bcd", true),
    // `**` spans any number of directories, including none.
    (&["**/*.go"], "main.go", true),
    (&["**/*.go"], "a/b/c/main.go", true),
    (&["**/*.go"], "a/b/c/main.rs", false),
    (&["**"], "x/y/z", true),
    (&["a/**/b"], "a/b", true),
    (&["a/**/b"], "a/x/y/b", true),
    (&["a/**/b"], "a/x/y/bc", false),
    (&["a/**"], "a/x", true),
    (&["a/**"], "a", false),
    (&["**/node_modules"], "web/app/node_modules/x/y.js", true),
    (&["**/.git"], ".git/config", true),
    // Leading `/` and `./` are cleaned away; trailing `/` too.
    (&["/foo"], "foo", true),
    (&["./foo"], "foo/x", true),
    (&["foo/"], "foo/x", true),
    (&["foo/../bar"], "bar", true),
    // Exceptions: the last matching pattern wins.
    (&["*.md", "!README.md"], "README.md", false),
    (&["*.md", "!README.md"], "CHANGES.md", true),
    (&["*.md", "!README.md", "README*"], "README.md", true),
    (&["docs", "!docs/keep.txt"], "docs/keep.txt", false),
    (&["docs", "!docs/keep.txt"], "docs/drop.txt", true),
    (&["**", "!src"], "src/main.rs", false),
    (&["**", "!src"], "target/debug", true),
    (&["**", "!src", "src/gen"], "src/gen/x.rs", true),
    (&["!foo"], "foo", false),
    // Escapes.
    (&["\\*"], "*", true),
    (&["\\*"], "a", false),
    // Comments do not apply here (from_patterns); spaces are trimmed.
    (&["  foo  "], "foo", true),
];

#[test]
fn pattern_table() {
    for (patterns, path, want) in TABLE {
        let ignore = DockerIgnore::from_patterns(patterns).unwrap();
        assert_eq!(ignore.is_excluded(path), *want, "patterns {patterns:?} on {path:?}");
    }
}

#[test]
fn file_syntax() {
    let ignore =
        DockerIgnore::parse("# comment\n\n*.log\n  # not a comment: a pattern named '# not...'\n!keep.log\n/build/\n")
            .unwrap();
    assert!(ignore.is_excluded("x.log"));
    assert!(!ignore.is_excluded("keep.log"));
    assert!(ignore.is_excluded("build/out"));
    assert!(!ignore.is_excluded("src/x.log"));
    assert!(ignore.has_exclusions());
}

#[test]
fn bad_pattern_names_the_line() {
    let e = DockerIgnore::parse("ok\n[unterminated\n").unwrap_err();
    assert!(e.starts_with("line 2:"), "{e}");
}

#[test]
fn dockerfile_specific_ignore_file_wins() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(".dockerignore"), "a\n").unwrap();
    std::fs::write(dir.path().join("app.Dockerfile.dockerignore"), "b\n").unwrap();
    let df = dir.path().join("app.Dockerfile");
    let ignore = DockerIgnore::load(dir.path(), Some(&df)).unwrap();
    assert!(ignore.is_excluded("b"));
    assert!(!ignore.is_excluded("a"));
    let other = dir.path().join("Dockerfile");
    let ignore = DockerIgnore::load(dir.path(), Some(&other)).unwrap();
    assert!(ignore.is_excluded("a"));
}
