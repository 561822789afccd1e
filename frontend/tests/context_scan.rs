//! Context scanning: trees, modes, symlinks, empty dirs, .dockerignore and
//! the stat cache.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use memobuild_frontend::{
    context_scope, plan_text, BuildOptions, ContextEntry, ContextScanner, ContextScope, DockerIgnore, Dockerfile,
    ScanStats,
};
use memobuild_proto::{Digest, DigestFunction};

fn write(root: &Path, rel: &str, data: &str) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, data).unwrap();
    // Old enough for the stat cache to trust it.
    let old = SystemTime::now() - Duration::from_secs(3600);
    fs::File::options().write(true).open(&path).unwrap().set_modified(old).unwrap();
}

fn sample() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "src/main.rs", "fn main() {}\n");
    write(root, "src/lib.rs", "pub fn f() {}\n");
    write(root, "build.sh", "#!/bin/sh\n");
    fs::set_permissions(root.join("build.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    write(root, "target/debug/big", "junk");
    write(root, "README.md", "# hi\n");
    fs::create_dir_all(root.join("empty")).unwrap();
    std::os::unix::fs::symlink("src/main.rs", root.join("link")).unwrap();
    dir
}

#[test]
fn tree_has_files_modes_symlinks_and_empty_dirs() {
    let dir = sample();
    let ignore = DockerIgnore::from_patterns(&["target"]).unwrap();
    let (ctx, stats) = ContextScanner::new(dir.path(), ignore).scan().unwrap();
    assert_eq!(stats.files, 4);
    assert!(ctx.entry("target").is_none());
    assert!(matches!(ctx.entry("empty"), Some(ContextEntry::Directory { .. })));
    assert_eq!(ctx.entry("link"), Some(&ContextEntry::Symlink { target: "src/main.rs".into() }));
    let Some(ContextEntry::File { digest, mode }) = ctx.entry("build.sh") else { panic!() };
    assert_eq!(*mode & 0o777, 0o755);
    assert_eq!(*digest, Digest::of(DigestFunction::Blake3, b"#!/bin/sh\n"));

    let root = &ctx.directories()[&ctx.root_digest()];
    let names: Vec<_> = root.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["README.md", "build.sh"]);
    assert!(root.files[1].is_executable);
    assert!(!root.files[0].is_executable);
    let dirs: Vec<_> = root.directories.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(dirs, ["empty", "src"]);
    assert_eq!(root.symlinks[0].target, "src/main.rs");
    // Every directory message is there, under its BLAKE3 digest.
    for (digest, message) in ctx.directories() {
        use prost::Message;
        assert_eq!(*digest, Digest::of(DigestFunction::Blake3, &message.encode_to_vec()));
    }
}

#[test]
fn digest_depends_on_content_not_on_scan() {
    let dir = sample();
    let a = ContextScanner::new(dir.path(), DockerIgnore::default()).scan().unwrap().0;
    let b = ContextScanner::new(dir.path(), DockerIgnore::default()).with_threads(1).scan().unwrap().0;
    assert_eq!(a.root_digest(), b.root_digest());
    write(dir.path(), "src/lib.rs", "pub fn g() {}\n");
    let c = ContextScanner::new(dir.path(), DockerIgnore::default()).scan().unwrap().0;
    assert_ne!(a.root_digest(), c.root_digest());
    assert_eq!(a.entry("README.md"), c.entry("README.md"));
    assert_ne!(a.entry("src"), c.entry("src"));
}

#[test]
fn stat_cache_skips_unchanged_files() {
    let dir = sample();
    let cache = tempfile::tempdir().unwrap();
    let scanner = ContextScanner::new(dir.path(), DockerIgnore::default()).with_cache_dir(cache.path());
    let (first, stats) = scanner.scan().unwrap();
    assert_eq!(stats.hashed, 5);
    let (second, stats) = scanner.scan().unwrap();
    assert_eq!(stats.hashed, 0, "unchanged context is not re-read");
    assert_eq!(first.root_digest(), second.root_digest());
    write(dir.path(), "README.md", "# changed\n");
    let (third, stats) = scanner.scan().unwrap();
    assert_eq!(stats.hashed, 1);
    assert_ne!(third.root_digest(), first.root_digest());
}

#[test]
fn the_stat_cache_is_rewritten_only_when_the_context_changed() {
    use std::os::unix::fs::MetadataExt;
    let dir = sample();
    let cache = tempfile::tempdir().unwrap();
    let scanner = ContextScanner::new(dir.path(), DockerIgnore::default()).with_cache_dir(cache.path());
    scanner.scan().unwrap();
    let file = || fs::read_dir(cache.path()).unwrap().map(|e| e.unwrap().path()).next().unwrap();
    let written = fs::metadata(file()).unwrap().ino();
    scanner.scan().unwrap();
    assert_eq!(fs::metadata(file()).unwrap().ino(), written, "an unchanged context left the cache as it was");
    // A file changed too recently to trust, or deleted: nothing to record.
    fs::write(dir.path().join("README.md"), "# just now\n").unwrap();
    fs::remove_file(dir.path().join("src/main.rs")).unwrap();
    assert_eq!(scanner.scan().unwrap().1.hashed, 1);
    assert_eq!(fs::metadata(file()).unwrap().ino(), written, "nothing new to remember");
    write(dir.path(), "README.md", "# changed\n");
    scanner.scan().unwrap();
    assert_ne!(fs::metadata(file()).unwrap().ino(), written, "a changed file is recorded");
    assert_eq!(scanner.scan().unwrap().1.hashed, 0);
}

#[test]
fn fresh_files_are_not_trusted_by_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("new"), "x").unwrap();
    let cache = tempfile::tempdir().unwrap();
    let scanner = ContextScanner::new(dir.path(), DockerIgnore::default()).with_cache_dir(cache.path());
    scanner.scan().unwrap();
    assert_eq!(scanner.scan().unwrap().1.hashed, 1);
}

#[test]
fn exception_inside_excluded_dir_keeps_the_dir() {
    let dir = sample();
    let ignore = DockerIgnore::from_patterns(&["target", "!target/debug/big"]).unwrap();
    let (ctx, _) = ContextScanner::new(dir.path(), ignore).scan().unwrap();
    assert!(matches!(ctx.entry("target/debug/big"), Some(ContextEntry::File { .. })));
    assert!(matches!(ctx.entry("target/debug"), Some(ContextEntry::Directory { .. })));
}

#[test]
fn resolve_and_glob() {
    let dir = sample();
    std::os::unix::fs::symlink("/etc/passwd", dir.path().join("abs")).unwrap();
    std::os::unix::fs::symlink("../../outside", dir.path().join("src/out")).unwrap();
    let (ctx, _) = ContextScanner::new(dir.path(), DockerIgnore::default()).scan().unwrap();
    assert_eq!(ctx.resolve("link").unwrap().as_deref(), Some("src/main.rs"));
    assert_eq!(ctx.resolve("/src/../README.md").unwrap().as_deref(), Some("README.md"));
    assert_eq!(ctx.resolve("nope").unwrap(), None);
    assert!(ctx.resolve("abs").unwrap_err().contains("absolute"));
    assert!(ctx.resolve("src/out").unwrap_err().contains("outside"));
    assert!(ctx.resolve("../x").unwrap_err().contains("outside"));
    assert_eq!(ctx.glob("src/*.rs").unwrap(), ["src/lib.rs", "src/main.rs"]);
    assert_eq!(ctx.glob("*.md").unwrap(), ["README.md"]);
    assert_eq!(ctx.glob("s?c/m[a-z]in.rs").unwrap(), ["src/main.rs"]);
    assert_eq!(ctx.glob("src/**.rs").unwrap(), ["src/lib.rs", "src/main.rs"], "** is two stars");
    assert!(ctx.glob("*.none").unwrap().is_empty());
}

/// Files that are hard links of one another stay a group (COPY keeps them
/// linked, as BuildKit does): by their first path, ignored members left
/// out, in the tree a remote build uploads, and in the context's digest.
#[test]
fn hard_links_are_grouped_and_survive_the_tree() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "orig", "same\n");
    write(root, "lonely", "one\n");
    write(root, "sub/a", "pair\n");
    fs::hard_link(root.join("orig"), root.join("twin")).unwrap();
    fs::hard_link(root.join("orig"), root.join("ignored")).unwrap();
    fs::hard_link(root.join("lonely"), root.join("skipped")).unwrap();
    fs::hard_link(root.join("sub/a"), root.join("b")).unwrap();
    let ignore = DockerIgnore::from_patterns(&["ignored", "skipped"]).unwrap();
    let (ctx, _) = ContextScanner::new(root, ignore).scan().unwrap();
    assert_eq!(ctx.hardlink_group("orig"), Some("orig"));
    assert_eq!(ctx.hardlink_group("twin"), Some("orig"));
    assert_eq!(ctx.hardlink_group("ignored"), None);
    assert_eq!(ctx.hardlink_group("lonely"), None, "a group of one once its link is ignored");
    assert_eq!(ctx.hardlink_group("sub/a"), Some("b"));
    assert_eq!(ctx.hardlink_group("b"), Some("b"));

    let rebuilt = memobuild_frontend::BuildContext::from_tree(&ctx.root_digest(), ctx.directories()).unwrap();
    assert_eq!(rebuilt.hardlink_group("twin"), Some("orig"));
    assert_eq!(rebuilt.hardlink_group("sub/a"), Some("b"));
    assert_eq!(rebuilt.root_digest(), ctx.root_digest());

    // The same files as copies: another context, other COPY results.
    let copies = tempfile::tempdir().unwrap();
    for (rel, data) in
        [("orig", "same\n"), ("twin", "same\n"), ("lonely", "one\n"), ("sub/a", "pair\n"), ("b", "pair\n")]
    {
        write(copies.path(), rel, data);
    }
    let (unlinked, _) = ContextScanner::new(copies.path(), DockerIgnore::default()).scan().unwrap();
    assert_eq!(unlinked.hardlink_group("twin"), None);
    assert_ne!(unlinked.root_digest(), ctx.root_digest());
}

/// A tree naming a hard link group that is not one is refused.
#[test]
fn a_tree_with_a_false_hard_link_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a", "a\n");
    write(dir.path(), "b", "b\n");
    let (ctx, _) = ContextScanner::new(dir.path(), DockerIgnore::default()).scan().unwrap();
    let mut directories = ctx.directories().clone();
    let root = directories.get_mut(&ctx.root_digest()).unwrap();
    for file in &mut root.files {
        let properties = file.node_properties.get_or_insert_with(Default::default);
        properties.properties.push(memobuild_proto::reapi::NodeProperty {
            name: memobuild_frontend::HARDLINK_PROPERTY.into(),
            value: "a".into(),
        });
    }
    use prost::Message;
    let message = root.clone();
    let digest = Digest::of(DigestFunction::Blake3, &message.encode_to_vec());
    directories.insert(digest, message);
    let error = memobuild_frontend::BuildContext::from_tree(&digest, &directories).unwrap_err();
    assert!(error.message().contains("context hard link \"b\""), "{}", error.message());
}

fn scan_part(dir: &Path, paths: &[&str], ignore: &[&str]) -> (memobuild_frontend::BuildContext, ScanStats) {
    let scope = ContextScope::of_paths(paths.iter().map(|p| p.to_string()));
    ContextScanner::new(dir, DockerIgnore::from_patterns(ignore).unwrap()).scan_within(&scope).unwrap()
}

fn step_keys(dockerfile: &str, context: &memobuild_frontend::BuildContext) -> Vec<(String, String)> {
    let graph = plan_text("Dockerfile", dockerfile, context, &BuildOptions::default()).unwrap();
    graph.steps().map(|s| (s.instruction.clone(), s.key.hex())).collect()
}

/// A build scans only the paths its Dockerfile names, and plans exactly
/// as it would with the whole context.
#[test]
fn the_part_a_dockerfile_names_is_scanned_alone_and_plans_the_same() {
    let dir = sample();
    write(dir.path(), "src/skip.key", "secret");
    let dockerfile = "FROM scratch\nCOPY src/*.rs /src/\nCOPY build.sh /\nCOPY --from=other /x /y\n";
    let parsed = Dockerfile::parse("Dockerfile", dockerfile).unwrap();
    let scope = context_scope(&parsed);
    let named = ContextScope::of_paths(["build.sh".to_string()]).with_patterns(["src/*.rs".to_string()]);
    assert_eq!(scope, named.unwrap());
    let ignore = DockerIgnore::from_patterns(&["**/*.key"]).unwrap();
    let (part, stats) = ContextScanner::new(dir.path(), ignore.clone()).scan_within(&scope).unwrap();
    assert_eq!(stats.files, 3, "src/main.rs, src/lib.rs and build.sh; not README.md, target/ or the ignored key");
    assert!(part.entry("README.md").is_none() && part.entry("src/skip.key").is_none());
    let (whole, _) = ContextScanner::new(dir.path(), ignore).scan().unwrap();
    let dockerfile = "FROM scratch\nCOPY src/*.rs /src/\nCOPY build.sh /\n";
    assert_eq!(step_keys(dockerfile, &part), step_keys(dockerfile, &whole));
    assert_eq!(part.outside_scope(), None);
}

/// `COPY package*.json ./` reads the entries of the context root that
/// match, not the rest of it (a Node project's `node_modules`), and plans
/// as the whole context would; another wildcard over that directory is
/// outside the part.
#[test]
fn a_wildcard_source_reads_only_what_it_matches() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "package.json", "{}");
    write(root, "package-lock.json", "{\"lockfileVersion\": 3}");
    write(root, "packages/inner/package.json", "{}");
    write(root, "src/index.js", "main()");
    write(root, "src/util.js", "util()");
    write(root, "src/notes.md", "# notes");
    write(root, "README.md", "# app");
    for n in 0..50 {
        write(root, &format!("node_modules/pkg{n}/index.js"), "module");
    }
    let dockerfile = "FROM scratch\nCOPY package*.json ./\nCOPY src/*.js ./src/\n";
    let scope = context_scope(&Dockerfile::parse("Dockerfile", dockerfile).unwrap());
    let (part, stats) = ContextScanner::new(root, DockerIgnore::default()).scan_within(&scope).unwrap();
    assert_eq!(stats.files, 4, "the two package files and src's two .js files");
    assert!(part.entry("packages").is_none() && part.entry("node_modules").is_none());
    let (whole, _) = ContextScanner::new(root, DockerIgnore::default()).scan().unwrap();
    assert_eq!(step_keys(dockerfile, &part), step_keys(dockerfile, &whole));
    assert_eq!(part.outside_scope(), None);
    assert!(part.glob("*.md").unwrap().is_empty());
    assert_eq!(part.outside_scope(), Some(""), "the root's other entries were not read");

    // What .dockerignore leaves out stays out; a listed directory behind
    // a symlink is read whole.
    let ignored = DockerIgnore::from_patterns(&["package-lock.json"]).unwrap();
    let (part, stats) = ContextScanner::new(root, ignored).scan_within(&scope).unwrap();
    assert_eq!((stats.files, part.entry("package-lock.json")), (3, None));
    fs::rename(root.join("src"), root.join("source")).unwrap();
    std::os::unix::fs::symlink("source", root.join("src")).unwrap();
    let (part, _) = ContextScanner::new(root, DockerIgnore::default()).scan_within(&scope).unwrap();
    assert_eq!(part.scope(), &ContextScope::Whole);
}

/// A file name that is not UTF-8 stops a scan only when a wildcard
/// matches it (a whole scan refuses it wherever it is).
#[test]
fn a_non_utf8_name_matters_only_when_a_wildcard_matches_it() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "app.json", "{}");
    fs::write(dir.path().join(std::ffi::OsStr::from_bytes(b"bad-\xff.txt")), "x").unwrap();
    let scanner = ContextScanner::new(dir.path(), DockerIgnore::default());
    let scope = |pattern: &str| ContextScope::of_paths([]).with_patterns([pattern.to_string()]).unwrap();
    assert_eq!(scanner.scan_within(&scope("*.json")).unwrap().1.files, 1);
    let error = scanner.scan_within(&scope("*.txt")).unwrap_err();
    assert!(error.message().contains("is not UTF-8"), "{}", error.message());
}

/// A lookup outside the scanned part finds nothing and is remembered, so
/// the build plans again with the whole context: a symlink leading
/// elsewhere, another file, a wildcard over an unscanned directory, the
/// context root.
#[test]
fn a_lookup_outside_the_scanned_part_is_remembered() {
    let dir = sample();
    let outside = |paths: &[&str], lookup: &dyn Fn(&memobuild_frontend::BuildContext)| {
        let (part, _) = scan_part(dir.path(), paths, &[]);
        lookup(&part);
        part.outside_scope().map(str::to_string)
    };
    let resolve =
        |path: &'static str| move |c: &memobuild_frontend::BuildContext| assert_eq!(c.resolve(path).unwrap(), None);
    assert_eq!(outside(&["link"], &resolve("link")), Some("src".into()), "link -> src/main.rs");
    assert_eq!(outside(&["src"], &resolve("README.md")), Some("README.md".into()));
    assert_eq!(outside(&["src/main.rs"], &|c| assert!(c.glob("src/*.rs").unwrap().is_empty())), Some("src".into()));
    let root = |c: &memobuild_frontend::BuildContext| {
        assert_eq!(c.selection_digest("", &DockerIgnore::default(), None), None);
    };
    assert_eq!(outside(&["src"], &root), Some(String::new()));
    assert_eq!(outside(&["src"], &resolve("src/nope.rs")), None, "a missing file in a scanned directory is missing");
    assert_eq!(outside(&["missing/file"], &resolve("missing/file")), None);
}

/// A part that cannot be read on its own is read whole: a file in it with
/// other hard links (they may be elsewhere in the context), or a symlink
/// above one of its paths.
#[test]
fn a_part_with_hard_links_or_a_symlinked_parent_is_read_whole() {
    let dir = sample();
    fs::hard_link(dir.path().join("README.md"), dir.path().join("src/readme-link.md")).unwrap();
    let (context, stats) = scan_part(dir.path(), &["src"], &[]);
    assert_eq!((stats.files, context.scope()), (6, &ContextScope::Whole));
    let dir = sample();
    std::os::unix::fs::symlink("src", dir.path().join("code")).unwrap();
    let (context, _) = scan_part(dir.path(), &["code/main.rs"], &[]);
    assert_eq!(context.scope(), &ContextScope::Whole);
}

/// A part's scan keeps the stat cache's entries of the rest, so a later
/// whole scan reads nothing again.
#[test]
fn a_part_scan_keeps_the_rest_of_the_stat_cache() {
    let dir = sample();
    let cache = tempfile::tempdir().unwrap();
    let scanner = ContextScanner::new(dir.path(), DockerIgnore::default()).with_cache_dir(cache.path());
    assert_eq!(scanner.scan().unwrap().1.hashed, 5);
    write(dir.path(), "src/main.rs", "fn main() { changed() }\n");
    let scope = ContextScope::of_paths(["src".to_string()]);
    assert_eq!(scanner.scan_within(&scope).unwrap().1.hashed, 1);
    assert_eq!(scanner.scan().unwrap().1.hashed, 0);
}
