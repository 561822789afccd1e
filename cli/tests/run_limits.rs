//! `memobuild build --memory/--cpu-*/--shm-size`: what a RUN step sees of
//! its limits, read from inside the container into the image and checked
//! with umoci. Limits are not part of the cache key.
#![allow(clippy::unwrap_used)]

#[path = "image_build/harness.rs"]
mod harness;

use harness::{fixture, Project, Unpacked};

/// Writes the step's cgroup limits to `/limits/*` in the image, in cgroup
/// v2's form whatever this machine has: `memory` (bytes), `cpu` (`QUOTA
/// PERIOD`), `swap` (the swap on top of memory), and `shm` (the /dev/shm
/// line of /proc/mounts).
const DOCKERFILE: &str = r#"RUN mkdir /limits && cd /sys/fs/cgroup && \
    if [ -f cpu.max ]; then \
      cat memory.max > /limits/memory && cat cpu.max > /limits/cpu && cat memory.swap.max > /limits/swap; \
    else \
      cat memory/memory.limit_in_bytes > /limits/memory && \
      echo "$(cat cpu/cpu.cfs_quota_us) $(cat cpu/cpu.cfs_period_us)" > /limits/cpu && \
      if [ -f memory/memory.memsw.limit_in_bytes ]; then \
        echo $(( $(cat memory/memory.memsw.limit_in_bytes) - $(cat memory/memory.limit_in_bytes) )) > /limits/swap; \
      fi; \
    fi && \
    grep ' /dev/shm ' /proc/mounts > /limits/shm
"#;

#[test]
fn run_steps_get_the_limits_asked_for() {
    let project = Project::new(&[("Dockerfile", &format!("FROM {}\n{DOCKERFILE}", fixture().base()))]);
    let out = project.path().join("image.tar");
    let dest = format!("type=oci,dest={}", out.display());
    let build = project.build(&[
        "-t",
        "limits:1",
        "--output",
        &dest,
        "--memory",
        "64m",
        "--cpu-quota",
        "50000",
        "--cpu-period",
        "100000",
        "--shm-size",
        "16m",
    ]);
    assert!(build.ok(), "{}", build.stderr());
    let image = Unpacked::from_oci_tar(&out, "1");
    assert_eq!(image.read("/limits/memory").trim(), (64u64 << 20).to_string());
    assert_eq!(image.read("/limits/cpu").trim(), "50000 100000");
    if image.exists("/limits/swap") {
        // Without --memory-swap, as much swap as memory (Docker's default).
        assert_eq!(image.read("/limits/swap").trim(), (64u64 << 20).to_string());
    }
    let shm = image.read("/limits/shm");
    assert!(shm.contains("size=16384k"), "/dev/shm is 16m: {shm}");

    // Other limits do not change the step's key.
    let again = project.build(&["--memory", "128m", "--cpu-shares", "512"]);
    assert!(again.ok(), "{}", again.stderr());
    assert!(again.ran().is_empty(), "ran {:?}", again.ran());
    assert_eq!(again.cached(), ["0.1"]);
}

#[test]
fn bad_limits_are_refused_naming_the_flag() {
    let project = Project::new(&[("Dockerfile", &format!("FROM {}\nRUN true\n", fixture().base()))]);
    for (args, flag) in [
        (&["--memory", "64q"][..], "--memory"),
        (&["--memory-swap", "1g"], "--memory-swap"),
        (&["--cpu-period", "10"], "--cpu-period"),
        (&["--cpuset-cpus", "1-"], "--cpuset-cpus"),
        (&["--shm-size", "big"], "--shm-size"),
    ] {
        let build = project.build(args);
        assert!(!build.ok(), "{args:?} was accepted");
        assert!(build.stderr().contains(flag), "{args:?}: {}", build.stderr());
        assert!(build.ran().is_empty(), "{args:?} ran {:?}", build.ran());
    }
}

#[test]
fn a_step_over_its_memory_limit_fails_naming_the_oom_killer() {
    // dd's 256 MiB buffer is touched as /dev/zero fills it.
    let dockerfile = format!("FROM {}\nRUN dd if=/dev/zero of=/dev/null bs=256M count=1\n", fixture().base());
    let project = Project::new(&[("Dockerfile", &dockerfile)]);
    let build = project.build(&["--memory", "32m", "--memory-swap", "32m"]);
    assert!(!build.ok(), "the step stayed under 32 MiB");
    let stderr = build.stderr();
    assert!(stderr.contains("exit code: 137"), "{stderr}");
    assert!(stderr.contains("OOM killer at the step's memory limit of 32 MiB (--memory)"), "{stderr}");
}
