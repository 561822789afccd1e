//! On a containerd it did not start, `memobuild build` does not wait for its
//! last RUN steps' tasks to be deleted, nor for its default network to be
//! removed: it hands them to `memobuild finish-steps`, which removes them
//! after the build has exited. Nothing is left behind.
#![allow(clippy::unwrap_used)]

#[path = "image_build/harness.rs"]
mod harness;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use harness::{fixture, Project, Unpacked};
use memobuild_worker::containerd::{Containerd, NAMESPACE};

fn ctr(address: &Path, args: &[&str]) -> String {
    let output = Command::new("ctr").arg("--address").arg(address).args(["--namespace", NAMESPACE]).args(args).output();
    let output = output.unwrap();
    assert!(output.status.success(), "ctr {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The command lines of the shim processes of the containerd at `address`.
fn shims(address: &Path) -> Vec<String> {
    let address = address.to_string_lossy().into_owned();
    let command_lines = std::fs::read_dir("/proc").unwrap().filter_map(|entry| {
        let path = entry.ok()?.path().join("cmdline");
        Some(String::from_utf8_lossy(&std::fs::read(path).ok()?).replace('\0', " "))
    });
    command_lines.filter(|line| line.contains("containerd-shim") && line.contains(&address)).collect()
}

/// Waits until the containerd at `address` has no container, task, active
/// snapshot or shim process left; fails at `deadline`.
fn wait_until_no_step_is_left(address: &Path, deadline: Instant) {
    loop {
        let containers = ctr(address, &["containers", "ls", "-q"]);
        let tasks = ctr(address, &["tasks", "ls", "-q"]);
        let snapshots = ctr(address, &["snapshots", "ls"]);
        let active: Vec<&str> = snapshots.lines().filter(|l| l.ends_with("Active")).collect();
        let shims = shims(address);
        if containers.trim().is_empty() && tasks.trim().is_empty() && active.is_empty() && shims.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "left behind: {containers} {tasks} {active:?} {shims:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A containerd the builds do not own, as a system one would be, with
/// its directory and the runtime that stops it.
fn private_containerd() -> (tempfile::TempDir, tokio::runtime::Runtime, Containerd) {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let containerd = runtime.block_on(Containerd::start_private(dir.path())).unwrap();
    (dir, runtime, containerd)
}

#[test]
fn the_last_steps_are_removed_after_the_build_exits() {
    let (daemon_dir, runtime, containerd) = private_containerd();
    let address = containerd.address().to_path_buf();

    let dockerfile = format!("FROM {}\nRUN echo one > /one.txt\nRUN cat /one.txt > /two.txt\n", fixture().base());
    let project = Project::new(&[("Dockerfile", &dockerfile)]);
    let out = project.path().join("image.tar");
    let build = project.build(&[
        "--containerd-address",
        address.to_str().unwrap(),
        "-t",
        "cleanup:1",
        "--output",
        &format!("type=oci,dest={}", out.display()),
    ]);
    assert!(build.ok(), "{}", build.stderr());
    assert_eq!(build.ran(), ["0.1", "0.2"]);
    assert_eq!(Unpacked::from_oci_tar(&out, "1").read("/two.txt"), "one\n");

    // The build handed its steps over; within seconds nothing of them is left.
    let log = project.state_dir().join("finish-steps.log");
    assert!(log.is_file(), "no memobuild finish-steps was started");
    let deadline = Instant::now() + Duration::from_secs(30);
    wait_until_no_step_is_left(&address, deadline);
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let rootfs: Vec<&str> = mounts.lines().filter(|l| l.contains(".rootfs-memobuild-step")).collect();
    let ours: Vec<&&str> = rootfs.iter().filter(|l| l.contains(daemon_dir.path().to_str().unwrap())).collect();
    assert!(ours.is_empty(), "rootfs mounts left: {ours:?}");
    // The default network's bridge goes last.
    let logged = loop {
        let logged = std::fs::read_to_string(&log).unwrap();
        if logged.contains("removed the build's network") {
            break logged;
        }
        assert!(Instant::now() < deadline, "the bridge was not removed: {logged}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!logged.contains("WARN") && !logged.contains("ERROR"), "{logged}");

    // The steps' snapshots were committed: a rebuild with one more step
    // runs only that step, on top of them.
    project.write("Dockerfile", &format!("{dockerfile}RUN cat /two.txt /one.txt > /three.txt\n"));
    let build = project.build(&["--containerd-address", address.to_str().unwrap()]);
    assert!(build.ok(), "{}", build.stderr());
    assert_eq!((build.ran(), build.cached()), (vec!["0.3".to_string()], vec!["0.1".to_string(), "0.2".to_string()]));
    // Stopping containerd under memobuild finish-steps would strand a shim.
    wait_until_no_step_is_left(&address, Instant::now() + Duration::from_secs(30));
    runtime.block_on(containerd.shutdown()).unwrap();
}

/// The mount points of builds whose process is gone (a build killed in
/// the middle of a RUN), in the temporary directory with the process id
/// in their names.
fn abandoned_rootfs_mounts(pid: u32) -> Vec<String> {
    let marker = format!("/memobuild.{pid}.rootfs-");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    mounts.lines().filter(|l| l.contains(&marker)).map(str::to_string).collect()
}

/// A build killed in the middle of a RUN leaves that step's rootfs
/// mounted and its task running; the next build that runs a step unmounts
/// and removes the rootfs, and kills and removes the task, container and
/// snapshot.
#[test]
fn a_killed_builds_rootfs_mount_is_removed_by_the_next_build() {
    let (_daemon_dir, runtime, containerd) = private_containerd();
    let address = containerd.address().to_path_buf();
    // A temporary directory of their own: other builds would sweep too.
    let tmp = tempfile::tempdir().unwrap();
    let project = Project::new(&[("Dockerfile", &format!("FROM {}\nRUN sleep 600\n", fixture().base()))]);
    let mut killed = Command::new(env!("CARGO_BIN_EXE_memobuild"))
        .env("TMPDIR", tmp.path())
        .args(["build", "--progress", "json", "--state-dir"])
        .arg(project.state_dir())
        .arg("--containerd-address")
        .arg(&address)
        .arg(project.path())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = killed.id();
    let deadline = Instant::now() + Duration::from_secs(60);
    // Killed once its step runs (a task that was created but never
    // started would never end).
    while abandoned_rootfs_mounts(pid).is_empty() || !ctr(&address, &["tasks", "ls"]).contains("RUNNING") {
        assert!(Instant::now() < deadline, "the RUN step never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    killed.kill().unwrap();
    killed.wait().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(abandoned_rootfs_mounts(pid).len(), 1, "the killed build's rootfs stays mounted");

    let next = Project::new(&[("Dockerfile", &format!("FROM {}\nRUN echo next > /next.txt\n", fixture().base()))]);
    let tmpdir = tmp.path().to_str().unwrap();
    let build = next.build_with_env(&["--containerd-address", address.to_str().unwrap()], &[("TMPDIR", tmpdir)]);
    assert!(build.ok(), "{}", build.stderr());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !abandoned_rootfs_mounts(pid).is_empty() {
        assert!(Instant::now() < deadline, "{:?}", abandoned_rootfs_mounts(pid));
        std::thread::sleep(Duration::from_millis(50));
    }
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with(&format!("memobuild.{pid}.")))
        .collect();
    assert!(left.is_empty(), "{left:?}");

    // The killed build's task, still running, is killed, and its
    // container, snapshot and shim go too.
    wait_until_no_step_is_left(&address, Instant::now() + Duration::from_secs(30));
    runtime.block_on(containerd.shutdown()).unwrap();
}
