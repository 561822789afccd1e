//! `memobuild build` end to end: a real containerd (a private one memobuild
//! starts under its state dir), a real registry, and the images checked
//! with skopeo, umoci and runc.
#![allow(clippy::unwrap_used)]

mod image_build {
    pub mod harness;
}

use std::os::unix::fs::MetadataExt;

use image_build::harness::{fixture, inspect, inspect_config, sh, Project, Unpacked};

fn app_dockerfile(base: &str) -> String {
    format!(
        r#"ARG BASE={base}
FROM $BASE AS build
ARG VERSION=1.0
ENV APP_HOME=/srv/app GREETING="hello ${{VERSION}}"
WORKDIR $APP_HOME
COPY src/ ./src/
RUN <<EOF
set -e
mkdir -p out
cat src/*.txt > out/combined.txt
echo "$GREETING from $BASE_VAR" > out/greeting.txt
EOF
RUN rm /etc/lower-file && echo removed > /tmp/removed-note

FROM $BASE AS docs
RUN echo "independent stage" > /docs.txt

FROM $BASE
LABEL org.example.app=demo
EXPOSE 8080
COPY --from=build /srv/app/out/ /app/
COPY --from=docs /docs.txt /app/docs.txt
COPY --chown=app:app --chmod=0750 run.sh /app/run.sh
ADD bundle.tar /opt/bundle/
COPY --from=build /etc /build-etc/
USER app
WORKDIR /app/data
CMD ["/bin/sh", "/app/run.sh"]
"#
    )
}

fn app_project() -> Project {
    let project = Project::new(&[
        ("src/a.txt", "alpha\n"),
        ("src/b.txt", "beta\n"),
        ("src/secret.key", "must not be copied\n"),
        ("run.sh", "cat /app/combined.txt /app/greeting.txt; id -u\n"),
        (".dockerignore", "**/*.key\n"),
    ]);
    let files = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(files.path().join("pkg")).unwrap();
    std::fs::write(files.path().join("pkg/data.txt"), "from the tar\n").unwrap();
    sh(
        "tar",
        &["-cf", project.path().join("bundle.tar").to_str().unwrap(), "-C", files.path().to_str().unwrap(), "pkg"],
    );
    project.write("Dockerfile", &app_dockerfile(&fixture().base()));
    project
}

#[test]
fn multi_stage_image_is_valid_and_runs() {
    let project = app_project();
    let out = project.path().join("image.tar");
    let dest = format!("type=oci,dest={}", out.display());
    let build = project.build(&["-t", "demo:1", "--output", &dest]);
    assert!(build.ok(), "{}", build.stderr());

    // skopeo reads the layout and the config as Docker writes it.
    let info = inspect(&format!("oci-archive:{}:1", out.display()));
    assert_eq!(info["Labels"]["org.example.app"], "demo");
    let config = inspect_config(&format!("oci-archive:{}:1", out.display()));
    assert_eq!(config["config"]["User"], "app");
    assert_eq!(config["config"]["WorkingDir"], "/app/data");
    assert_eq!(config["config"]["Cmd"], serde_json::json!(["/bin/sh", "/app/run.sh"]));
    assert!(config["config"]["ExposedPorts"]["8080/tcp"].is_object());
    assert!(config["config"]["Env"].as_array().unwrap().iter().any(|e| e == "BASE_VAR=from-base"));

    // umoci unpacks it; the files are what the Dockerfile says.
    let image = Unpacked::from_oci_tar(&out, "1");
    assert_eq!(image.read("/app/combined.txt"), "alpha\nbeta\n");
    assert_eq!(image.read("/app/greeting.txt"), "hello 1.0 from from-base\n");
    assert_eq!(image.read("/app/docs.txt"), "independent stage\n");
    assert_eq!(image.read("/opt/bundle/pkg/data.txt"), "from the tar\n");
    assert!(!image.exists("/srv/app/src/secret.key"));
    // The RUN that deleted a base file left a whiteout: the copied /etc lacks it.
    assert!(image.exists("/etc/lower-file"));
    assert!(!image.exists("/build-etc/lower-file"));
    assert!(image.exists("/build-etc/passwd"));
    let run_sh = std::fs::metadata(image.rootfs().join("app/run.sh")).unwrap();
    assert_eq!((run_sh.uid(), run_sh.gid(), run_sh.mode() & 0o7777), (1000, 1000, 0o750));
    // WORKDIR made its directory for the USER of that point, as BuildKit does.
    let data = std::fs::metadata(image.rootfs().join("app/data")).unwrap();
    assert_eq!((data.uid(), data.gid(), data.is_dir()), (1000, 1000, true));

    // runc runs it as the image says: user app (uid 1000), the CMD.
    assert_eq!(image.run(), "alpha\nbeta\nhello 1.0 from from-base\n1000\n");
}

#[test]
fn cache_reruns_exactly_the_steps_a_change_reaches() {
    let project = app_project();
    let first = project.build(&[]);
    assert!(first.ok(), "{}", first.stderr());
    let all = first.ran();
    assert_eq!(all.len(), 11, "every filesystem step runs once: {all:?}");

    let noop = project.build(&[]);
    assert!(noop.ok(), "{}", noop.stderr());
    assert!(noop.ran().is_empty(), "a no-op rebuild runs nothing: {:?}", noop.ran());
    assert_eq!(noop.cached(), all);

    // One copied file changes: its COPY (0.4) and what follows in that
    // stage, then the final stage from its COPY --from=build (2.3) on; the
    // docs stage and the final stage's config steps do not run.
    project.write("src/b.txt", "BETA\n");
    let changed = project.build(&[]);
    assert!(changed.ok(), "{}", changed.stderr());
    assert_eq!(changed.ran(), ["0.4", "0.5", "0.6", "2.3", "2.4", "2.5", "2.6", "2.7", "2.9"], "{}", changed.stderr());

    // A file the build ignores, or never copies, changes nothing.
    project.write("src/other.key", "ignored\n");
    project.write("README.md", "not copied by anything\n");
    assert!(project.build(&[]).ran().is_empty());

    // --no-cache runs everything again.
    let again = project.build(&["--no-cache"]);
    assert_eq!(again.ran(), all);
}

#[test]
fn explain_cache_names_the_changed_file_and_arg() {
    let project = app_project();
    assert!(project.build(&[]).ok());
    project.write("src/a.txt", "ALPHA\n");
    assert!(project.build(&["--build-arg", "VERSION=2.0"]).ok());
    let explain = project.memobuild("explain-cache", &[], &[]);
    let text = String::from_utf8_lossy(&explain.stdout);
    assert!(explain.status.success(), "{}", String::from_utf8_lossy(&explain.stderr));
    assert!(text.contains("copied file changed: src/a.txt"), "{text}");
    assert!(text.contains("environment variable VERSION changed: \"1.0\" -> \"2.0\""), "{text}");
    assert!(text.contains("its parent changed"), "{text}");
    assert!(text.contains("CACHED"), "{text}");
}

#[test]
fn target_builds_only_the_stages_it_needs() {
    let project = app_project();
    let out = project.path().join("docs.tar");
    let build = project.build(&["--target", "docs", "-t", "docs:1", "-o", &format!("type=oci,dest={}", out.display())]);
    assert!(build.ok(), "{}", build.stderr());
    assert_eq!(build.ran(), ["1.1"], "only the docs stage runs");
    let image = Unpacked::from_oci_tar(&out, "1");
    assert_eq!(image.read("/docs.txt"), "independent stage\n");
    assert!(!image.exists("/app"));
}

#[test]
fn failing_run_reports_and_exports_nothing() {
    let base = fixture().base();
    let project = Project::new(&[(
        "Dockerfile",
        &format!("FROM {base}\nRUN echo preparing\nRUN echo boom >&2; exit 3\nRUN echo never\n"),
    )]);
    let out = project.path().join("image.tar");
    let build = project.build(&["-o", &format!("type=oci,dest={}", out.display())]);
    assert!(!build.ok());
    let stderr = build.stderr();
    assert!(stderr.contains("exit code: 3"), "{stderr}");
    assert!(stderr.contains("boom"), "{stderr}");
    assert!(stderr.contains("Dockerfile:3"), "{stderr}");
    assert!(!out.exists(), "a failed build exports nothing");
    assert_eq!(build.ran(), ["0.1"]);
}

#[test]
fn outputs_docker_local_registry_and_reproducible_digests() {
    let project = app_project();
    let docker = project.path().join("docker.tar");
    let local = project.path().join("rootfs");
    let tag = format!("{}/demo/app:1", fixture().registry);
    let build = project.build_with_env(
        &[
            "-t",
            &tag,
            "-o",
            &format!("type=docker,dest={}", docker.display()),
            "-o",
            &format!("type=local,dest={}", local.display()),
            "--push",
        ],
        &[("SOURCE_DATE_EPOCH", "1700000000")],
    );
    assert!(build.ok(), "{}", build.stderr());
    let digest = String::from_utf8_lossy(&build.output.stdout).trim().to_string();
    assert!(digest.starts_with("sha256:"), "{digest}");

    let archive = inspect(&format!("docker-archive:{}", docker.display()));
    assert_eq!(archive["Labels"]["org.example.app"], "demo");
    assert_eq!(std::fs::read_to_string(local.join("app/docs.txt")).unwrap(), "independent stage\n");
    let pushed = inspect(&format!("docker://{tag}"));
    assert_eq!(pushed["Digest"], digest.as_str());
    assert_eq!(pushed["Created"], "2023-11-14T22:13:20Z");

    // The same inputs with SOURCE_DATE_EPOCH give the same image, even when
    // every step runs again.
    let again = project.build_with_env(
        &["--no-cache", "-t", &tag, "-o", &format!("type=oci,dest={}", project.path().join("again.tar").display())],
        &[("SOURCE_DATE_EPOCH", "1700000000")],
    );
    assert!(again.ok(), "{}", again.stderr());
    assert_eq!(String::from_utf8_lossy(&again.output.stdout).trim(), digest);
}

#[test]
fn oci_layout_bases_and_clear_errors() {
    let layout = fixture().layout.display().to_string();
    let project = Project::new(&[
        ("Dockerfile", "FROM base\nRUN cat /etc/lower-file > /copy\n"),
        ("Dockerfile.direct", &format!("FROM oci-layout://{layout}:busybox\nRUN true\n")),
        ("Dockerfile.missing", &format!("FROM {}/base/nothing:here\nRUN true\n", fixture().registry)),
    ]);
    let out = project.path().join("image.tar");
    let context = format!("base=oci-layout://{layout}:busybox");
    let build =
        project.build(&["--build-context", &context, "-t", "x:1", "-o", &format!("type=oci,dest={}", out.display())]);
    assert!(build.ok(), "{}", build.stderr());
    assert_eq!(Unpacked::from_oci_tar(&out, "1").read("/copy"), "from the base image\n");

    // `/copy` of the image built from `dockerfile` with `contexts`.
    let copy_built_with = |dockerfile: &str, contexts: &[String]| {
        let dockerfile = project.path().join(dockerfile).display().to_string();
        let output = format!("type=oci,dest={}", out.display());
        let mut args = vec!["-f", &dockerfile, "-t", "x:1", "-o", &output];
        for context in contexts {
            args.extend(["--build-context", context]);
        }
        let build = project.build(&args);
        assert!(build.ok(), "{}", build.stderr());
        Unpacked::from_oci_tar(&out, "1").read("/copy")
    };
    // A registry image in its place, for FROM and for COPY --from alike.
    project.write("Dockerfile.image", "FROM base\nCOPY --from=tools /etc/lower-file /tool\nRUN cat /tool > /copy\n");
    let image = format!("docker-image://{}", fixture().base());
    let contexts = [format!("base={image}"), format!("tools={image}")];
    assert_eq!(copy_built_with("Dockerfile.image", &contexts), "from the base image\n");
    // A stage of the context's name is replaced, never built (this one would fail).
    project.write(
        "Dockerfile.stage",
        "FROM scratch AS Base\nCOPY not-in-the-context /\nFROM base\nRUN cat /etc/lower-file > /copy\n",
    );
    assert_eq!(copy_built_with("Dockerfile.stage", &contexts[..1]), "from the base image\n");
    for (value, says) in [
        ("docker-image://Not/Lower", "must be lowercase"),
        ("oci-layout://", "needs a path"),
        ("ftp://example.com/x", "only docker-image://REF"),
    ] {
        let bad = project.build(&["--build-context", &format!("base={value}")]);
        assert!(!bad.ok());
        assert!(bad.stderr().contains(&format!("--build-context base={value}")), "{}", bad.stderr());
        assert!(bad.stderr().contains(says), "{}", bad.stderr());
    }

    let direct = project.build(&["-f", project.path().join("Dockerfile.direct").to_str().unwrap()]);
    assert!(direct.ok(), "{}", direct.stderr());

    let missing = project.build(&["-f", project.path().join("Dockerfile.missing").to_str().unwrap()]);
    assert!(!missing.ok());
    assert!(missing.stderr().contains("base/nothing:here"), "{}", missing.stderr());
}

#[test]
fn a_directory_as_a_named_context() {
    let tools = tempfile::tempdir().unwrap();
    let write = |path: &str, content: &str| {
        let full = tools.path().join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(full, content).unwrap();
    };
    write("bin/tool.sh", "#!/bin/sh\necho tool ran\n");
    std::os::unix::fs::symlink("bin/tool.sh", tools.path().join("tool")).unwrap();
    write("data.txt", "version 1\n");
    write("secret.txt", "never in the image\n");
    write(".dockerignore", "secret.txt\n");
    sh("chmod", &["755", tools.path().join("bin/tool.sh").to_str().unwrap()]);
    let base = fixture().base();
    // The RUN's mounts in one step: a cache mount's stage is waited for, not
    // mounted, so the bind mounts after it get their own sources.
    let project = Project::new(&[(
        "Dockerfile",
        &format!(
            "FROM tools AS t\nFROM {base} AS other\nRUN echo other > /other.txt\n\
             FROM {base}\nCOPY --from=tools / /opt/\nCOPY --from=t /bin/tool.sh /usr/local/bin/\n\
             RUN /opt/tool > /ran && ls -a /opt > /listing\n\
             RUN --mount=type=cache,from=other,target=/c --mount=from=tools,target=/t --mount=from={base},target=/b \
             cat /t/data.txt > /mounted && cat /b/etc/lower-file > /from-image\n"
        ),
    )]);
    let out = project.path().join("image.tar");
    let dest = format!("type=oci,dest={}", out.display());
    let context = format!("tools={}", tools.path().display());
    let build = project.build(&["--build-context", &context, "-t", "x:1", "-o", &dest]);
    assert!(build.ok(), "{}", build.stderr());
    let image = Unpacked::from_oci_tar(&out, "1");
    assert_eq!(image.read("/opt/data.txt"), "version 1\n");
    assert_eq!(image.read("/ran"), "tool ran\n", "the symlink and the executable mode came along");
    assert_eq!(image.read("/listing"), ".\n..\n.dockerignore\nbin\ndata.txt\ntool\n", "its .dockerignore applied");
    assert!(image.exists("/usr/local/bin/tool.sh"), "FROM the context gives a stage with its files");
    assert_eq!(image.read("/mounted"), "version 1\n", "RUN --mount=from=NAME mounts the context");
    assert_eq!(image.read("/from-image"), "from the base image\n", "RUN --mount=from=IMAGE mounts the image");

    let again = project.build(&["--build-context", &context, "-t", "x:1", "-o", &dest]);
    assert!(again.ok(), "{}", again.stderr());
    assert!(again.ran().is_empty(), "an unchanged directory re-runs nothing: {:?}", again.ran());
    write("data.txt", "version 2\n");
    let changed = project.build(&["--build-context", &context, "-t", "x:1", "-o", &dest]);
    assert!(changed.ok(), "{}", changed.stderr());
    assert!(!changed.ran().is_empty(), "a changed file re-runs the steps reading it");
    let image = Unpacked::from_oci_tar(&out, "1");
    assert_eq!(image.read("/opt/data.txt"), "version 2\n");
    assert_eq!(image.read("/mounted"), "version 2\n", "a mounted context's change re-runs the RUN");

    let missing = project.build(&["--build-context", "tools=/nonexistent/tools", "-o", &dest]);
    assert!(!missing.ok());
    assert!(
        missing.stderr().contains("--build-context tools=/nonexistent/tools: no such directory"),
        "{}",
        missing.stderr()
    );
}

#[test]
fn dry_run_tells_what_is_cached_without_running() {
    let project = app_project();
    let cold = project.build(&["--dry-run"]);
    assert!(cold.ok(), "{}", cold.stderr());
    assert!(cold.stderr().contains("not cached, would run"), "{}", cold.stderr());
    assert!(project.build(&[]).ok());
    let warm = project.build(&["--dry-run"]);
    assert!(warm.ok(), "{}", warm.stderr());
    assert!(warm.ran().is_empty(), "{}", warm.stderr());
    assert_eq!(warm.cached().len(), 11);
    project.write("src/a.txt", "changed\n");
    let changed = project.build(&["--dry-run"]);
    assert_eq!(changed.ran(), ["0.4", "0.5", "0.6", "2.3", "2.4", "2.5", "2.6", "2.7", "2.9"]);
    assert!(changed.stderr().contains("its key depends on the output of a step that runs"), "{}", changed.stderr());
}

#[test]
fn two_builds_share_one_state_dir_at_once() {
    let base = fixture().base();
    let one = Project::new(&[("Dockerfile", &format!("FROM {base}\nRUN echo one > /one && sleep 1\n"))]);
    let two = Project::new(&[("Dockerfile", &format!("FROM {base}\nRUN echo two > /two && sleep 1\n"))]);
    let state = one.state.path().to_path_buf();
    let run = |project: &Project, out: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_memobuild"))
            .args(["build", "--progress", "plain", "--state-dir", state.to_str().unwrap(), "-t", "x:1", "-o"])
            .arg(format!("type=oci,dest={}", project.path().join(out).display()))
            .arg(project.path())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let (mut a, mut b) = (run(&one, "one.tar"), run(&two, "two.tar"));
    assert!(a.wait().unwrap().success());
    assert!(b.wait().unwrap().success());
    assert_eq!(Unpacked::from_oci_tar(&one.path().join("one.tar"), "1").read("/one"), "one\n");
    assert_eq!(Unpacked::from_oci_tar(&two.path().join("two.tar"), "1").read("/two"), "two\n");
}

/// Each file under `dir`, with its inode and modification time.
fn files_and_times(dir: &std::path::Path) -> Vec<(String, u64, i64, i64)> {
    let listing = sh("find", &[dir.to_str().unwrap(), "-type", "f"]);
    let mut files: Vec<_> = listing
        .lines()
        .map(|path| {
            let meta = std::fs::metadata(path).unwrap();
            (path.to_string(), meta.ino(), meta.mtime(), meta.mtime_nsec())
        })
        .collect();
    files.sort();
    files
}

/// The `created` of each history entry of an OCI layout's image, and the
/// image's own.
fn history_times(reference: &str) -> (Vec<String>, String) {
    let config = inspect_config(reference);
    let times = config["history"].as_array().unwrap().iter().map(|h| h["created"].as_str().unwrap().into()).collect();
    (times, config["created"].as_str().unwrap().to_string())
}

/// Without SOURCE_DATE_EPOCH, a cached step keeps the time it was built,
/// so a rebuild of an unchanged context gives the same image (as
/// BuildKit keeps its image id) and leaves the outputs alone; a step that
/// runs again gets the time of the new build.
#[test]
fn an_unchanged_rebuild_gives_the_same_image_and_writes_nothing() {
    let base = fixture().base();
    let project = Project::new(&[
        (
            "Dockerfile",
            &format!(
                "FROM {base}\nENV A=1\nWORKDIR /app\nCOPY a.txt ./\nRUN cat a.txt > /copy.txt\nLABEL step=after-run\nCOPY b.txt ./\nCMD [\"cat\", \"/copy.txt\"]\n"
            ),
        ),
        ("a.txt", "alpha\n"),
        ("b.txt", "beta\n"),
    ]);
    let out = tempfile::tempdir().unwrap();
    let tar = out.path().join("image.tar");
    let layout = out.path().join("layout");
    let outputs = [
        "-t".to_string(),
        "img:1".to_string(),
        "-o".to_string(),
        format!("type=oci,dest={}", tar.display()),
        "-o".to_string(),
        format!("type=oci,dest={},tar=false", layout.display()),
    ];
    let args: Vec<&str> = outputs.iter().map(String::as_str).collect();
    let digest = |build: &image_build::harness::Build| String::from_utf8_lossy(&build.output.stdout).trim().to_string();

    let first = project.build(&args);
    assert!(first.ok(), "{}", first.stderr());
    assert_eq!(first.ran().len(), 4, "{:?}", first.ran());
    let (times, created) = history_times(&format!("oci-archive:{}:1", tar.display()));
    // Steps: ENV, WORKDIR, COPY, RUN, LABEL, COPY, CMD after the base's entries.
    let ours = &times[times.len() - 7..];
    assert_eq!(ours[0], times[times.len() - 8], "ENV takes the time of the base image's last entry");
    assert_eq!(ours[4], ours[3], "LABEL takes the time of the RUN before it");
    assert_eq!(ours[6], ours[5], "CMD takes the time of the COPY before it");
    assert_eq!(&created, ours.iter().max().unwrap(), "the image's time is its latest step's");
    let tar_before = files_and_times(out.path()).into_iter().filter(|f| f.0.ends_with("image.tar")).collect::<Vec<_>>();
    // A second apart, so that a step that runs again has a later time.
    std::thread::sleep(std::time::Duration::from_millis(1100));

    for round in 0..2 {
        let layout_before = files_and_times(&layout);
        let noop = project.build(&args);
        assert!(noop.ok(), "{}", noop.stderr());
        assert!(noop.ran().is_empty(), "no-op {round} ran {:?}", noop.ran());
        assert_eq!(digest(&noop), digest(&first), "no-op {round} made another image");
        let tar_now =
            files_and_times(out.path()).into_iter().filter(|f| f.0.ends_with("image.tar")).collect::<Vec<_>>();
        assert_eq!(tar_now, tar_before, "no-op {round} wrote the OCI tar again");
        assert_eq!(files_and_times(&layout), layout_before, "no-op {round} wrote into the OCI layout directory");
    }

    project.write("b.txt", "BETA\n");
    let changed = project.build(&args);
    assert!(changed.ok(), "{}", changed.stderr());
    assert_eq!(changed.ran().len(), 1, "only the COPY of b.txt runs: {:?}", changed.ran());
    assert_ne!(digest(&changed), digest(&first));
    let (new_times, new_created) = history_times(&format!("oci-archive:{}:1", tar.display()));
    let new_ours = &new_times[new_times.len() - 7..];
    assert_eq!(new_ours[..5], ours[..5], "the cached steps keep their times");
    assert!(new_ours[5] > ours[5], "the COPY that ran has the new build's time: {} vs {}", new_ours[5], ours[5]);
    assert_eq!(new_ours[6], new_ours[5]);
    assert_eq!(new_created, new_ours[5]);
    let (layout_times, _) = history_times(&format!("oci:{}:1", layout.display()));
    assert_eq!(layout_times, new_times, "the layout directory holds the new image");
}

/// An image of metadata over `scratch` has no step with a time: it takes
/// the Unix epoch, so rebuilding it gives the same image and leaves the
/// outputs (OCI and docker archives) alone; it took each build's time.
#[test]
fn a_metadata_only_scratch_image_is_the_same_on_every_build() {
    let project = Project::new(&[("Dockerfile", "FROM scratch\nLABEL a=b\nENV X=1\n")]);
    let out = tempfile::tempdir().unwrap();
    let (oci, docker) = (out.path().join("image.tar"), out.path().join("docker.tar"));
    let outputs = [format!("type=oci,dest={}", oci.display()), format!("type=docker,dest={}", docker.display())];
    let args = ["-t", "img:1", "-o", &outputs[0], "-o", &outputs[1]];
    let first = project.build(&args);
    assert!(first.ok(), "{}", first.stderr());
    let (times, created) = history_times(&format!("oci-archive:{}:1", oci.display()));
    assert_eq!((times.len(), created.as_str()), (2, "1970-01-01T00:00:00Z"));
    assert!(times.iter().all(|t| t == "1970-01-01T00:00:00Z"), "{times:?}");
    let written =
        |path: &std::path::Path| (std::fs::read(path).unwrap(), std::fs::metadata(path).unwrap().modified().unwrap());
    let before = [written(&oci), written(&docker)];
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let again = project.build(&args);
    assert!(again.ok(), "{}", again.stderr());
    assert_eq!(String::from_utf8_lossy(&again.output.stdout), String::from_utf8_lossy(&first.output.stdout));
    assert_eq!([written(&oci), written(&docker)], before, "the rebuild made another image or wrote an output again");
}

/// A build scans only the context paths its Dockerfile names, as BuildKit
/// sends only those: a file elsewhere that no REAPI tree can hold (a name
/// that is not UTF-8) does not stop it, nor does a wildcard that does not
/// match it, though `COPY .` is refused for it. A source that leads out of that part (a symlink) makes the build scan
/// the rest, so a change there is built, never served from the cache.
#[test]
fn a_build_scans_only_the_context_it_names() {
    use std::os::unix::ffi::OsStrExt;
    let project = Project::new(&[
        ("Dockerfile", "FROM scratch\nCOPY app.txt /\n"),
        ("app.txt", "app\n"),
        ("data/real.txt", "one\n"),
    ]);
    let junk = project.path().join(std::ffi::OsStr::from_bytes(b"junk-\xff"));
    std::fs::write(&junk, "x").unwrap();
    assert_eq!(project.built_image(&[]).read("/app.txt"), "app\n");
    // A wildcard reads what it matches in its directory.
    project.write("Dockerfile", "FROM scratch\nCOPY *.txt /\n");
    let image = project.built_image(&[]);
    assert_eq!(image.read("/app.txt"), "app\n");
    assert!(!image.exists("/real.txt"), "data/ is not matched");

    project.write("Dockerfile", "FROM scratch\nCOPY . /all/\n");
    let build = project.build(&[]);
    assert!(!build.ok());
    assert!(build.stderr().contains("is not UTF-8"), "{}", build.stderr());

    std::fs::remove_file(&junk).unwrap();
    std::os::unix::fs::symlink("data/real.txt", project.path().join("link.txt")).unwrap();
    project.write("Dockerfile", "FROM scratch\nCOPY app.txt link.txt /\n");
    let image = project.built_image(&[]);
    assert_eq!((image.read("/app.txt"), image.read("/link.txt")), ("app\n".into(), "one\n".into()));
    project.write("data/real.txt", "two\n");
    assert_eq!(project.built_image(&[]).read("/link.txt"), "two\n");
}
