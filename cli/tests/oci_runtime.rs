//! `--oci-runtime`: what containerd's runc shim runs RUN steps with. crun
//! runs the steps for real here, through a witness script named `crun` that
//! logs each call and hands it on.
#![allow(clippy::unwrap_used)]

#[path = "image_build/harness.rs"]
mod harness;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use harness::{fixture, Build, Project, Unpacked};

/// The build runs in a mount namespace of its own, with the private
/// containerd it starts: crun refuses a hybrid cgroup layout whose v2 part
/// has controllers (this machine kind's), so that part is unmounted there,
/// as on a host with cgroup v1 alone; and a system containerd is hidden, so
/// the build starts its own in the namespace.
const IN_OWN_NAMESPACE: &str = r#"
if [ "$(stat -f -c %T /sys/fs/cgroup/unified 2>/dev/null)" = cgroup2fs ]; then umount /sys/fs/cgroup/unified; fi
if [ -d /run/containerd ]; then mount -t tmpfs tmpfs /run/containerd; fi
exec "$@"
"#;

/// `memobuild build --progress json ARGS CONTEXT` in its own mount
/// namespace, with `path_first` ahead on PATH.
fn build(project: &Project, path_first: &Path, args: &[&str]) -> Build {
    let path = format!("{}:{}", path_first.display(), std::env::var("PATH").unwrap_or_default());
    let output = Command::new("unshare")
        .args(["--mount", "--propagation", "slave", "sh", "-c", IN_OWN_NAMESPACE, "sh"])
        .arg(env!("CARGO_BIN_EXE_memobuild"))
        .args(["build", "--progress", "json", "--state-dir"])
        .arg(project.state_dir())
        .args(args)
        .arg(project.path())
        .env("PATH", path)
        .env_remove("CONTAINERD_ADDRESS")
        .output()
        .unwrap();
    Build::of(output)
}

/// A directory holding `crun`: a script that logs its arguments to
/// `calls.log` beside it, then runs the real crun.
fn crun_witness() -> tempfile::TempDir {
    let real = ["/usr/bin/crun", "/usr/local/bin/crun"].into_iter().find(|p| Path::new(p).is_file());
    let real = real.expect("crun is not installed (scripts/install-deps.sh installs it)");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("calls.log");
    let script = format!("#!/bin/sh\necho \"$*\" >> {}\nexec {real} \"$@\"\n", log.display());
    let witness = dir.path().join("crun");
    std::fs::write(&witness, script).unwrap();
    std::fs::set_permissions(&witness, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn calls(witness: &Path) -> Vec<String> {
    let log = std::fs::read_to_string(witness.join("calls.log")).unwrap_or_default();
    log.lines().map(str::to_string).collect()
}

#[test]
fn auto_runs_steps_with_crun_where_it_can_and_runc_when_asked() {
    let witness = crun_witness();
    let dockerfile = format!(
        "FROM {}\nRUN grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status > /status.txt && id -u > /uid.txt\n",
        fixture().base()
    );
    let project = Project::new(&[("Dockerfile", &dockerfile)]);
    let out = project.path().join("image.tar");
    let output = format!("type=oci,dest={}", out.display());

    // auto: crun is on PATH and can manage the cgroups here.
    let built = build(&project, witness.path(), &["-t", "crun:1", "-o", &output]);
    assert!(built.ok(), "{}", built.stderr());
    assert_eq!(built.ran(), ["0.1"]);
    let created: Vec<String> = calls(witness.path()).into_iter().filter(|c| c.contains(" create ")).collect();
    assert_eq!(created.len(), 1, "crun created no container, or more than one: {:?}", calls(witness.path()));
    assert!(created[0].contains("memobuild-step-"), "{created:?}");
    // The step is hardened as under runc: no new privileges, a seccomp filter.
    let image = Unpacked::from_oci_tar(&out, "1");
    assert_eq!(image.read("/status.txt"), "NoNewPrivs:\t1\nSeccomp:\t2\n");
    assert_eq!(image.read("/uid.txt"), "0\n");

    // runc, asked for: crun is not called again.
    let before = calls(witness.path()).len();
    let built =
        build(&project, witness.path(), &["--oci-runtime", "runc", "--no-cache", "-t", "runc:1", "-o", &output]);
    assert!(built.ok(), "{}", built.stderr());
    assert_eq!(built.ran(), ["0.1"]);
    assert_eq!(calls(witness.path()).len(), before, "{:?}", calls(witness.path()));
    assert_eq!(Unpacked::from_oci_tar(&out, "1").read("/status.txt"), "NoNewPrivs:\t1\nSeccomp:\t2\n");

    // A path, given: that binary runs the step.
    let explicit = witness.path().join("crun");
    let built =
        build(&project, Path::new("/nonexistent"), &["--oci-runtime", explicit.to_str().unwrap(), "--no-cache"]);
    assert!(built.ok(), "{}", built.stderr());
    assert!(calls(witness.path()).len() > before, "the given runtime was not called");
}

#[test]
fn a_runtime_that_cannot_run_is_refused_before_the_build() {
    let project = Project::new(&[("Dockerfile", &format!("FROM {}\nRUN true\n", fixture().base()))]);
    for (runtime, said) in [
        ("/nonexistent/crun", "the OCI runtime /nonexistent/crun is not an executable file"),
        ("no-such-runtime", "the OCI runtime \"no-such-runtime\" is not on PATH"),
    ] {
        let built = project.build(&["--oci-runtime", runtime]);
        assert!(!built.ok());
        assert!(built.stderr().contains(said), "{runtime}: {}", built.stderr());
        assert!(built.ran().is_empty());
    }
    // A remote build's steps run on the cluster's workers, under their own setting.
    let remote = Command::new(env!("CARGO_BIN_EXE_memobuild"))
        .args(["remote", "build", "--endpoint", "grpc://127.0.0.1:1", "--oci-runtime", "runc"])
        .arg(project.path())
        .output()
        .unwrap();
    assert!(!remote.status.success());
    let said = String::from_utf8_lossy(&remote.stderr);
    assert!(said.contains("--oci-runtime is a setting of the cluster's workers ([worker] oci_runtime)"), "{said}");
}
