//! `SOURCE_DATE_EPOCH` end to end (issue 20): a cache hit gives the same
//! image as a fresh build. For RUN, COPY (a file and a directory), ADD of a
//! local tar, WORKDIR and a multi-stage COPY --from, the epoch builds on a
//! state dir that built without the epoch, on a fresh one, and on another
//! fresh one that builds in another order from a copy of the context that
//! differs only in what a build must ignore (file times, owners, xattrs,
//! the builder's umask, time zone and locale) all give the same OCI image.
#![allow(clippy::unwrap_used)]

#[path = "image_build/harness.rs"]
mod harness;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use harness::{fixture, sh, Build};
use serde_json::Value;

const EPOCH: &str = "1700000000";

/// The Dockerfiles, by name: one kind of step each (and a RUN that records
/// what a container sees of the machine).
fn dockerfiles() -> Vec<(&'static str, String)> {
    let base = fixture().base();
    vec![
        (
            "run",
            format!(
                "FROM {base}\nRUN mkdir -p /out/sub && echo hi > /out/x && touch /out/sub/y && ln -s x /out/link && ln /out/x /out/hard && rm /etc/lower-file\n"
            ),
        ),
        ("copy", format!("FROM {base}\nCOPY f.txt /out/\nCOPY tree/ /out/tree/\nCOPY tool.sh /usr/local/bin/\n")),
        ("add", format!("FROM {base}\nADD bundle.tar /opt/bundle/\n")),
        ("workdir", format!("FROM {base}\nWORKDIR /srv/app/data\nWORKDIR /etc\n")),
        (
            "multistage",
            format!(
                "FROM {base} AS build\nRUN mkdir -p /out/lib && echo built > /out/lib/a.so && echo tool > /out/tool\n\nFROM {base}\nCOPY --from=build /out/ /app/\nCOPY --from=build /out/tool /usr/bin/tool\n"
            ),
        ),
        (
            "rename",
            format!(
                "FROM {base}\nRUN mkdir -p /d/sub && echo a > /d/sub/f && echo b > /d/g\nRUN mv /d /e && chmod 600 /etc/lower-file\n"
            ),
        ),
        (
            "probe",
            format!(
                "FROM {base}\nRUN mkdir /probe && cd /probe && hostname > hostname && umask > umask && env | sort > env && date +%Z > tz && id > id && touch file && mkdir dir\n"
            ),
        ),
    ]
}

/// A context with every Dockerfile and the files they copy; modes are set
/// explicitly (they are an input: part of the key, kept in the layer).
fn context(archive: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let write = |path: &str, content: &str, mode: u32| {
        let full = dir.path().join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(&full, content).unwrap();
        std::fs::set_permissions(&full, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    write("f.txt", "a file\n", 0o644);
    write("tree/a.txt", "a\n", 0o644);
    write("tree/sub/b.txt", "b\n", 0o600);
    write("tool.sh", "#!/bin/sh\necho tool\n", 0o755);
    for d in ["tree", "tree/sub"] {
        std::fs::set_permissions(dir.path().join(d), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::os::unix::fs::symlink("a.txt", dir.path().join("tree/link")).unwrap();
    std::fs::copy(archive, dir.path().join("bundle.tar")).unwrap();
    std::fs::set_permissions(dir.path().join("bundle.tar"), std::fs::Permissions::from_mode(0o644)).unwrap();
    for (name, dockerfile) in dockerfiles() {
        write(&format!("{name}.Dockerfile"), &dockerfile, 0o644);
    }
    dir
}

/// A local tar archive, made once so both contexts hold the same bytes.
fn archive(dir: &Path) -> PathBuf {
    let files = dir.join("files");
    std::fs::create_dir_all(files.join("pkg/sub")).unwrap();
    std::fs::write(files.join("pkg/data.txt"), "from the tar\n").unwrap();
    std::fs::write(files.join("pkg/sub/more.txt"), "more\n").unwrap();
    let tar = dir.join("bundle.tar");
    sh("tar", &["-cf", tar.to_str().unwrap(), "-C", files.to_str().unwrap(), "pkg"]);
    tar
}

/// Makes `dir` differ from its twin only in what must not reach an image:
/// every file's times (atime, mtime, and so ctime), its owner, and an
/// extended attribute.
fn scramble_metadata(dir: &Path) {
    sh("find", &[dir.to_str().unwrap(), "-exec", "touch", "-h", "-d", "2001-02-03 04:05:06", "{}", "+"]);
    sh("chown", &["-R", "-h", "1234:4321", dir.to_str().unwrap()]);
    sh(
        "python3",
        &[
            "-c",
            "import os,sys; os.setxattr(sys.argv[1], 'user.memobuild-test', b'1')",
            dir.join("f.txt").to_str().unwrap(),
        ],
    );
    sh("find", &[dir.to_str().unwrap(), "-exec", "touch", "-h", "-a", "-d", "2030-01-01", "{}", "+"]);
}

/// `memobuild build` of `NAME.Dockerfile` in `context` on `state`, with
/// `-o type=oci`; `env` is added to the builder's environment and `umask`
/// set for it.
fn build(context: &Path, state: &Path, name: &str, env: &[(&str, &str)], umask: &str) -> (Build, Option<String>) {
    let out = tempfile::tempdir().unwrap();
    let oci = out.path().join("image.tar");
    let script = r#"umask "$1"; shift; exec "$@""#;
    let mut cmd = Command::new("sh");
    cmd.args(["-c", script, "sh", umask, env!("CARGO_BIN_EXE_memobuild"), "build", "--progress", "json"])
        .arg("--state-dir")
        .arg(state)
        .arg("-f")
        .arg(context.join(format!("{name}.Dockerfile")))
        .arg("-o")
        .arg(format!("type=oci,dest={}", oci.display()))
        .arg(context);
    cmd.env_remove("SOURCE_DATE_EPOCH");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let output = cmd.output().unwrap();
    let events =
        String::from_utf8_lossy(&output.stderr).lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).collect();
    let build = Build { output, events };
    assert!(build.ok(), "{name}: {}", build.stderr());
    (build, manifest_digest(&oci))
}

/// The digest of the image manifest in an OCI layout tar.
fn manifest_digest(oci: &Path) -> Option<String> {
    let index = sh("tar", &["-xOf", oci.to_str()?, "index.json"]);
    let index: Value = serde_json::from_str(&index).ok()?;
    index["manifests"][0]["digest"].as_str().map(str::to_string)
}

#[test]
fn epoch_builds_give_one_image_whatever_the_cache_and_the_machine() {
    let scratch = tempfile::tempdir().unwrap();
    let archive = archive(scratch.path());
    let first = context(&archive);
    let twin = context(&archive);
    scramble_metadata(twin.path());
    let epoch = [("SOURCE_DATE_EPOCH", EPOCH)];
    let names: Vec<&str> = dockerfiles().iter().map(|(n, _)| *n).collect();

    // (a) Without the epoch, then with it, on one state dir; and with it on a
    // fresh one. (c) Again on that fresh one: all cached, the same image.
    let mut digests = Vec::new();
    for name in &names {
        let warm = tempfile::tempdir().unwrap();
        let (plain, _) = build(first.path(), warm.path(), name, &[], "022");
        assert!(!plain.ran().is_empty(), "{name}: the first build runs its steps");
        let (after_plain, on_warm) = build(first.path(), warm.path(), name, &epoch, "022");
        assert!(
            !after_plain.ran().is_empty(),
            "{name}: a layer made without the epoch served an epoch build (cached: {:?})",
            after_plain.cached()
        );
        let fresh = tempfile::tempdir().unwrap();
        let (_, on_fresh) = build(first.path(), fresh.path(), name, &epoch, "022");
        assert!(on_fresh.is_some(), "{name}: no manifest in the OCI output");
        assert_eq!(on_warm, on_fresh, "{name}: the epoch build on a warm cache differs from a fresh one");
        let (again, on_again) = build(first.path(), fresh.path(), name, &epoch, "022");
        assert!(again.ran().is_empty(), "{name}: a second epoch build ran {:?}", again.ran());
        assert!(!again.cached().is_empty(), "{name}: a second epoch build used no cache");
        assert_eq!(on_again, on_fresh, "{name}: the cached epoch build differs");
        digests.push(on_fresh);
    }

    // (b) Another fresh state dir, the Dockerfiles in the other order, from
    // the twin context (other times, owners, xattrs), with another umask,
    // time zone and locale in the builder's environment.
    let other = tempfile::tempdir().unwrap();
    let machine =
        [("SOURCE_DATE_EPOCH", EPOCH), ("TZ", "Asia/Tokyo"), ("LANG", "de_DE.UTF-8"), ("LC_ALL", "de_DE.UTF-8")];
    for (name, digest) in names.iter().zip(&digests).rev() {
        let (_, on_other) = build(twin.path(), other.path(), name, &machine, "077");
        assert_eq!(&on_other, digest, "{name}: another state dir, order and machine gave another image");
    }
}

#[test]
fn a_run_step_sees_no_trace_of_the_builder() {
    let scratch = tempfile::tempdir().unwrap();
    let context = context(&archive(scratch.path()));
    let state = tempfile::tempdir().unwrap();
    let rootfs = scratch.path().join("rootfs");
    let output = Command::new("sh")
        .args(["-c", r#"umask 077; exec "$@""#, "sh", env!("CARGO_BIN_EXE_memobuild"), "build", "--progress", "json"])
        .arg("--state-dir")
        .arg(state.path())
        .arg("-f")
        .arg(context.path().join("probe.Dockerfile"))
        .arg("-o")
        .arg(format!("type=local,dest={}", rootfs.display()))
        .arg(context.path())
        .env("TZ", "Asia/Tokyo")
        .env("LANG", "de_DE.UTF-8")
        .env("HOSTNAME", "builder-host")
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let read = |p: &str| std::fs::read_to_string(rootfs.join("probe").join(p)).unwrap();
    assert_eq!(read("hostname"), "memobuild\n");
    assert_eq!(read("umask"), "0022\n", "the step's umask is Docker's, not the builder's");
    assert_eq!(read("tz"), "UTC\n");
    assert_eq!(read("id"), "uid=0(root) gid=0(root)\n");
    let env = read("env");
    for leaked in ["TZ=", "LANG=", "builder-host"] {
        assert!(!env.contains(leaked), "the builder's {leaked} reached the step:\n{env}");
    }
    let mode = |p: &str| std::fs::symlink_metadata(rootfs.join("probe").join(p)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("file"), 0o644);
    assert_eq!(mode("dir"), 0o755);
}

/// A RUN that renames a directory of its parent, or changes only the mode
/// of a parent's file, gives a layer with their whole content, whatever
/// overlay features the kernel turns on by default.
#[test]
fn renamed_directories_and_chmod_of_lower_files_keep_their_content() {
    let scratch = tempfile::tempdir().unwrap();
    let context = context(&archive(scratch.path()));
    let state = tempfile::tempdir().unwrap();
    let rootfs = scratch.path().join("rootfs");
    let output = Command::new(env!("CARGO_BIN_EXE_memobuild"))
        .args(["build", "--progress", "json", "--state-dir"])
        .arg(state.path())
        .arg("-f")
        .arg(context.path().join("rename.Dockerfile"))
        .arg("-o")
        .arg(format!("type=local,dest={}", rootfs.display()))
        .arg(context.path())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(std::fs::read_to_string(rootfs.join("e/sub/f")).unwrap(), "a\n");
    assert_eq!(std::fs::read_to_string(rootfs.join("e/g")).unwrap(), "b\n");
    assert!(!rootfs.join("d").exists(), "the old name is gone");
    assert_eq!(std::fs::read_to_string(rootfs.join("etc/lower-file")).unwrap(), "from the base image\n");
    let mode = std::fs::metadata(rootfs.join("etc/lower-file")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

/// A context file's mode reaches the layer, so it is part of the key; its
/// times and owner do not, so changing them keeps the build a cache hit.
#[test]
fn context_modes_are_keyed_and_times_and_owners_are_not() {
    let scratch = tempfile::tempdir().unwrap();
    let context = context(&archive(scratch.path()));
    let state = tempfile::tempdir().unwrap();
    let epoch = [("SOURCE_DATE_EPOCH", EPOCH)];
    let (_, first) = build(context.path(), state.path(), "copy", &epoch, "022");
    scramble_metadata(context.path());
    let (touched, same) = build(context.path(), state.path(), "copy", &epoch, "022");
    assert!(touched.ran().is_empty(), "new times and owners ran {:?}", touched.ran());
    assert_eq!(same, first);
    std::fs::set_permissions(context.path().join("f.txt"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (chmodded, other) = build(context.path(), state.path(), "copy", &epoch, "022");
    assert_eq!(chmodded.ran().first().map(String::as_str), Some("0.1"), "the COPY of f.txt runs again");
    assert_ne!(other, first);
}
