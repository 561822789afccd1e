//! `COPY --parents` end to end: sources keep their paths (below a `/./`
//! pivot, if any) under the destination, from the context and from another
//! stage; the image is unpacked with umoci and its files checked.
#![allow(clippy::unwrap_used)]

#[path = "image_build/harness.rs"]
mod harness;

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use harness::{fixture, Project, Unpacked};

#[test]
fn sources_keep_their_parent_directories() {
    let project = Project::new(&[
        ("x/a.txt", "x-a\n"),
        ("y/b.txt", "y-b\n"),
        ("y/c.txt", "y-c\n"),
        ("y/skip.md", "not a txt\n"),
        ("src/pkg/a/main.go", "package a\n"),
        ("src/pkg/a/notes.md", "excluded\n"),
        ("src/pkg/b/main.go", "package b\n"),
        (".dockerignore", "image.tar\n"),
    ]);
    std::fs::set_permissions(project.path().join("src/pkg"), std::fs::Permissions::from_mode(0o750)).unwrap();
    project.write(
        "Dockerfile",
        &format!(
            r#"FROM {base} AS build
RUN mkdir -p /out/lib/sub /out/bin && echo x > /out/lib/x.so && echo y > /out/lib/sub/y.so && echo tool > /out/bin/tool

FROM {base}
COPY --parents ./x/a.txt ./y/*.txt /flat/
COPY --parents ./src/./pkg/*/main.go /pivot
COPY --parents --chown=app:app --exclude=pkg/a/*.md ./src/./pkg/a/ /dir/
COPY --from=build --parents /out/./lib/ /out/bin/tool /staged/
COPY --from=build --parents --chmod=0640 --exclude=lib/sub/*.so /out/./lib/ /filtered/
"#,
            base = fixture().base()
        ),
    );
    let out = project.path().join("image.tar");
    let build = project.build(&["-t", "parents:1", "--output", &format!("type=oci,dest={}", out.display())]);
    assert!(build.ok(), "{}", build.stderr());
    let image = Unpacked::from_oci_tar(&out, "1");

    // Context files and glob matches keep their whole path.
    assert_eq!(image.read("/flat/x/a.txt"), "x-a\n");
    assert_eq!(image.read("/flat/y/b.txt"), "y-b\n");
    assert_eq!(image.read("/flat/y/c.txt"), "y-c\n");
    assert!(!image.exists("/flat/y/skip.md"));
    assert!(!image.exists("/flat/a.txt"), "not flattened");

    // Below the pivot only; a DEST without `/` is a directory.
    assert_eq!(image.read("/pivot/pkg/a/main.go"), "package a\n");
    assert_eq!(image.read("/pivot/pkg/b/main.go"), "package b\n");
    assert!(!image.exists("/pivot/src"));

    // A directory brings its contents under its kept path; --exclude
    // matches that path; the directories on the way keep their mode and
    // take the --chown owner.
    assert_eq!(image.read("/dir/pkg/a/main.go"), "package a\n");
    assert!(!image.exists("/dir/pkg/a/notes.md"));
    assert!(!image.exists("/dir/pkg/b"));
    let meta = |path: &str| std::fs::symlink_metadata(image.rootfs().join(path)).unwrap();
    assert_eq!((meta("dir/pkg").mode() & 0o7777, meta("dir/pkg").uid()), (0o750, 1000));
    assert_eq!(meta("dir/pkg/a/main.go").uid(), 1000);

    // From another stage: below the pivot, or the whole path without one.
    assert_eq!(image.read("/staged/lib/x.so"), "x\n");
    assert_eq!(image.read("/staged/lib/sub/y.so"), "y\n");
    assert_eq!(image.read("/staged/out/bin/tool"), "tool\n");
    assert!(!image.exists("/staged/x.so"));
    assert_eq!(image.read("/filtered/lib/x.so"), "x\n");
    assert_eq!(meta("filtered/lib/x.so").mode() & 0o7777, 0o640);
    assert!(!image.exists("/filtered/lib/sub/y.so"));
}
