//! `memobuild prune` end to end: images built with a real containerd (a
//! private one under the state dir) and a real registry, pruned, rebuilt and
//! checked with umoci.
#![allow(clippy::unwrap_used)]

#[path = "image_build/harness.rs"]
mod harness;

use std::process::{Command, Output};

use harness::{fixture, Project, Unpacked};

/// `memobuild prune --state-dir STATE ARGS`, stdin not a terminal.
fn prune(project: &Project, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_memobuild"))
        .arg("prune")
        .arg("--state-dir")
        .arg(project.state_dir())
        .args(args)
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    assert!(output.status.success(), "prune failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).to_string()
}

fn stderr(output: &Output) -> String {
    assert!(!output.status.success(), "prune should fail: {}", String::from_utf8_lossy(&output.stdout));
    String::from_utf8_lossy(&output.stderr).to_string()
}

/// The number before `what` in prune's summary line (`... 3 cache entries`).
fn count(summary: &str, what: &str) -> u64 {
    let before = summary.split(what).next().unwrap();
    before.trim_end().rsplit(' ').next().unwrap().parse().unwrap_or_else(|_| panic!("{what} in {summary:?}"))
}

/// Builds the image; returns the step ids that ran and that hit the cache.
fn build(project: &Project) -> (Vec<String>, Vec<String>) {
    let out = project.path().join("image.tar");
    let build = project.build(&["-t", "pruned:1", "--output", &format!("type=oci,dest={}", out.display())]);
    assert!(build.ok(), "{}", build.stderr());
    let image = Unpacked::from_oci_tar(&out, "1");
    assert_eq!(image.read("/two.txt"), "one\ntwo\n");
    assert_eq!(image.read("/etc/lower-file"), "from the base image\n");
    (build.ran(), build.cached())
}

#[test]
fn prune_keeps_what_builds_use_and_reclaims_the_rest() {
    let dockerfile = format!(
        "FROM {}\nRUN echo one > /one.txt\nRUN cp /one.txt /two.txt && echo two >> /two.txt\n",
        fixture().base()
    );
    let project = Project::new(&[("Dockerfile", &dockerfile)]);
    let steps = vec!["0.1".to_string(), "0.2".to_string()];
    assert_eq!(build(&project), (steps.clone(), vec![]));

    // Without -f and without a terminal to ask on, nothing happens.
    let refused = stderr(&prune(&project, &["--all"]));
    assert!(refused.contains("stdin is not a terminal (pass -f/--force)"), "{refused}");

    // Never under a build: one holding the stores keeps prune out.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let held =
        runtime.block_on(memobuild_cas::FilesystemStore::open_shared(project.state_dir().join("cas"), false)).unwrap();
    let busy = stderr(&prune(&project, &["--all", "-f"]));
    assert!(busy.contains("a build is using the state dir; prune when it is done"), "{busy}");
    drop(held);

    // Everything was used within the hour: the rebuild is all cached.
    let kept = stdout(&prune(&project, &["--filter", "until=1h", "-f"]));
    assert!(kept.starts_with("reclaimed "), "{kept}");
    assert_eq!(count(&kept, "cache entries"), 0, "{kept}");
    assert_eq!(build(&project), (vec![], steps.clone()));

    // Nothing may stay: every entry goes, the steps run again.
    let listed = stdout(&prune(&project, &["--keep-storage", "0", "-f", "--verbose"]));
    let summary = listed.lines().last().unwrap();
    let entries = listed.lines().filter(|l| l.starts_with("cache entry ")).count() as u64;
    assert!(entries >= 2, "two RUN steps and the layer compressions: {listed}");
    assert_eq!(count(summary, "cache entries"), entries, "{listed}");
    assert!(count(summary, "blobs") > 0, "{listed}");
    assert_eq!(build(&project), (steps.clone(), vec![]));

    // --all also removes the unpacked layers from containerd.
    let all = stdout(&prune(&project, &["--all", "-f"]));
    assert!(count(&all, "containerd snapshots") >= 2, "the base layer and step one's: {all}");
    assert_eq!(build(&project), (steps, vec![]));
}
