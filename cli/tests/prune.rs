//! `memobuild prune` end to end: images built with a real containerd (a
//! private one under the state dir) and a real registry, pruned, rebuilt and
//! checked with umoci.
#![allow(clippy::unwrap_used)]

#[path = "image_build/harness.rs"]
mod harness;

use std::collections::BTreeSet;
use std::process::{Command, Output};

use harness::{fixture, Project, Unpacked};
use memobuild_worker::containerd::{Containerd, NAMESPACE, SNAPSHOTTER};

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

/// A client of the state dir's private containerd: while it is held, the
/// daemon keeps running between commands; dropping it leaves.
struct Joined {
    runtime: tokio::runtime::Runtime,
    containerd: Containerd,
}

impl Joined {
    fn new(project: &Project) -> Joined {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let containerd = runtime.block_on(Containerd::connect_or_start(None, project.state_dir())).unwrap();
        Joined { runtime, containerd }
    }
}

impl Drop for Joined {
    fn drop(&mut self) {
        if let Err(e) = self.runtime.block_on(self.containerd.shutdown()) {
            eprintln!("leaving the private containerd: {e}");
        }
    }
}

/// memobuild's committed snapshots, as `ctr snapshots ls` lists them.
fn snapshots(joined: &Joined) -> BTreeSet<String> {
    let output = Command::new("ctr")
        .arg("--address")
        .arg(joined.containerd.address())
        .args(["--namespace", NAMESPACE, "snapshots", "--snapshotter", SNAPSHOTTER, "ls"])
        .output()
        .unwrap();
    assert!(output.status.success(), "ctr failed: {}", String::from_utf8_lossy(&output.stderr));
    // KEY PARENT KIND, the parent blank for a bottom layer.
    let listing = String::from_utf8_lossy(&output.stdout).to_string();
    let committed = listing.lines().skip(1).filter(|line| line.split_whitespace().last() == Some("Committed"));
    committed.filter_map(|line| line.split_whitespace().next()).map(str::to_string).collect()
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
    let containerd = Joined::new(&project);
    let built = snapshots(&containerd);
    assert!(built.len() >= 2, "the base layer and step one's: {built:?}");

    // Without -f and without a terminal to ask on, nothing happens.
    let refused = stderr(&prune(&project, &["--all"]));
    assert!(refused.contains("stdin is not a terminal (pass -f/--force)"), "{refused}");

    // Never under a build: one holding the stores keeps prune out.
    let held = containerd
        .runtime
        .block_on(memobuild_cas::FilesystemStore::open_shared(project.state_dir().join("cas"), false))
        .unwrap();
    let busy = stderr(&prune(&project, &["--all", "-f"]));
    assert!(busy.contains("a build is using the state dir; prune when it is done"), "{busy}");
    drop(held);

    // Everything was used within the hour: the rebuild is all cached.
    let kept = stdout(&prune(&project, &["--filter", "until=1h", "-f"]));
    assert!(kept.starts_with("reclaimed "), "{kept}");
    assert_eq!(count(&kept, "cache entries"), 0, "{kept}");
    assert!(!kept.contains("containerd snapshots"), "{kept}");
    assert_eq!(snapshots(&containerd), built, "the cached steps' snapshots stay");
    assert_eq!(build(&project), (vec![], steps.clone()));

    // Nothing may stay: every entry goes, the steps run again.
    let listed = stdout(&prune(&project, &["--keep-storage", "0", "-f", "--verbose"]));
    let summary = listed.lines().last().unwrap();
    let entries = listed.lines().filter(|l| l.starts_with("cache entry ")).count() as u64;
    assert!(entries >= 2, "two RUN steps and the layer compressions: {listed}");
    assert_eq!(count(summary, "cache entries"), entries, "{listed}");
    assert!(count(summary, "blobs") > 0, "{listed}");
    assert_eq!(count(summary, "containerd snapshots"), built.len() as u64, "{listed}");
    assert_eq!(snapshots(&containerd), BTreeSet::new(), "no remaining step uses a snapshot");
    assert_eq!(build(&project), (steps.clone(), vec![]));
    assert_eq!(snapshots(&containerd).len(), built.len(), "the rebuild unpacks its layers again");

    // --all also removes the unpacked layers from containerd.
    let all = stdout(&prune(&project, &["--all", "-f"]));
    assert!(count(&all, "containerd snapshots") >= 2, "the base layer and step one's: {all}");
    assert_eq!(snapshots(&containerd), BTreeSet::new());
    assert_eq!(build(&project), (steps, vec![]));
}
