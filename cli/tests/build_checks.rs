//! BuildKit's build checks through `memobuild build` and `memobuild remote
//! build`, end to end: a busybox base from a real registry on loopback, a
//! real containerd (or a real `memobuild server`), and what a user sees on
//! stderr and in the exit code (warnings after the build, `--check`,
//! `# check=error=true`).
#![allow(clippy::unwrap_used)]

#[path = "image_build/harness.rs"]
mod harness;

use std::net::TcpListener;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use harness::{fixture, Project, Unpacked};
use serde_json::Value;

/// `memobuild build --progress plain ARGS CONTEXT`, as a user runs it.
fn plain(project: &Project, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_memobuild"))
        .args(["build", "--progress", "plain", "--state-dir"])
        .arg(project.state_dir())
        .args(args)
        .arg(project.path())
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).to_string()
}

fn warning_events(events: &[Value]) -> Vec<&Value> {
    events.iter().map(|e| &e["detail"]).filter(|d| d["event"] == "warning").collect()
}

/// A stage name in capitals (a whole-file check) and a shell-form CMD in
/// the target (a check of a stage the build needs).
fn warned_project() -> Project {
    let base = fixture().base();
    Project::new(&[("Dockerfile", &format!("FROM {base} AS Build\nRUN echo built > /built\nCMD echo hi\n"))])
}

#[test]
fn warnings_are_listed_after_a_build_that_succeeds() {
    let project = warned_project();
    let out = project.path().join("image.tar");
    let build = plain(&project, &["-t", "x:1", "-o", &format!("type=oci,dest={}", out.display())]);
    let text = stderr(&build);
    assert!(build.status.success(), "{text}");
    assert_eq!(Unpacked::from_oci_tar(&out, "1").read("/built"), "built\n");
    let summary = " 2 warnings found:\n \
                   - StageNameCasing: Stage name 'Build' should be lowercase (line 1)\n \
                   - JSONArgsRecommended: JSON arguments recommended for CMD to prevent unintended behavior \
                   related to OS signals (line 3)\n";
    assert!(text.contains(summary), "{text}");
    assert!(text.find("build finished") < text.find(" 2 warnings found:"), "{text}");

    // As JSON events: each warning once, though the build planned again
    // after resolving its base image.
    let json = project.build(&[]);
    assert!(json.ok(), "{}", json.stderr());
    let warnings = warning_events(&json.events);
    let rules: Vec<_> = warnings.iter().map(|w| (w["rule"].as_str().unwrap(), w["line"].as_u64().unwrap())).collect();
    assert_eq!(rules, [("StageNameCasing", 1), ("JSONArgsRecommended", 3)]);
    assert!(warnings.iter().all(|w| w["file"].as_str().unwrap().ends_with("Dockerfile")), "{warnings:?}");
}

#[test]
fn check_plans_every_stage_and_fails_on_a_warning_without_running_a_step() {
    let base = fixture().base();
    let project = Project::new(&[(
        "Dockerfile",
        &format!("FROM {base} AS unused\nCMD echo unused\n\nFROM {base} AS final\nRUN echo built > /built\n"),
    )]);
    // A build of the last stage does not plan the unused one.
    let build = project.build(&[]);
    assert!(build.ok(), "{}", build.stderr());
    assert!(warning_events(&build.events).is_empty(), "{}", build.stderr());

    let check = plain(&project, &["--check"]);
    let text = stderr(&check);
    assert_eq!(check.status.code(), Some(1), "{text}");
    let expected = " 1 warning found:\n - JSONArgsRecommended: JSON arguments recommended for CMD to prevent \
                    unintended behavior related to OS signals (line 2)\n";
    assert!(text.contains(expected), "{text}");
    assert!(text.contains("Check complete, 1 warning has been found!"), "{text}");
    assert!(check.stdout.is_empty(), "{}", String::from_utf8_lossy(&check.stdout));

    // buildx's spelling; nothing runs and nothing is exported.
    let out = project.path().join("checked.tar");
    let call = project.build(&["--call", "check", "-t", "x:1", "-o", &format!("type=oci,dest={}", out.display())]);
    assert!(!call.ok(), "{}", call.stderr());
    assert_eq!(warning_events(&call.events).len(), 1, "{}", call.stderr());
    assert!(call.ran().is_empty() && call.cached().is_empty(), "{}", call.stderr());
    assert!(!out.exists());
}

#[test]
fn check_of_a_clean_dockerfile_succeeds() {
    let base = fixture().base();
    let project = Project::new(&[("Dockerfile", &format!("FROM {base}\nRUN echo ok > /ok\nCMD [\"sh\"]\n"))]);
    let check = plain(&project, &["--check"]);
    let text = stderr(&check);
    assert!(check.status.success(), "{text}");
    assert!(text.contains("Check complete, no warnings found."), "{text}");
    assert!(!text.contains(" warning found:") && !text.contains(" warnings found:"), "{text}");
}

#[test]
fn check_reports_a_planning_error() {
    let project = Project::new(&[("Dockerfile", "FROM busybox:\nRUN true\n")]);
    let check = plain(&project, &["--check"]);
    let text = stderr(&check);
    assert_eq!(check.status.code(), Some(1), "{text}");
    assert!(text.contains("invalid reference format"), "{text}");
}

#[test]
fn check_error_true_fails_the_build_with_the_rule_name() {
    let base = fixture().base();
    let project = Project::new(&[(
        "Dockerfile",
        &format!("# check=error=true\nFROM {base} AS Build\nRUN echo built > /built\n"),
    )]);
    let build = project.build(&[]);
    assert!(!build.ok(), "{}", build.stderr());
    assert!(build.stderr().contains("lint violation found for rules: StageNameCasing"), "{}", build.stderr());
    assert!(build.ran().is_empty(), "{}", build.stderr());

    // The build-arg overrides the directive, as with buildx.
    let relaxed = project.build(&["--build-arg", "BUILDKIT_DOCKERFILE_CHECK=error=false"]);
    assert!(relaxed.ok(), "{}", relaxed.stderr());
    assert_eq!(warning_events(&relaxed.events).len(), 1, "{}", relaxed.stderr());
}

/// `memobuild server` on loopback with a state dir of its own; stopped
/// (by its pid) when dropped.
struct Server {
    endpoint: String,
    child: Child,
    _state: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        let state = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let address = format!("127.0.0.1:{port}");
        let child = Command::new(env!("CARGO_BIN_EXE_memobuild"))
            .args(["server", "--listen", &address, "--state-dir"])
            .arg(state.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&address).is_err() {
            assert!(Instant::now() < deadline, "memobuild server at {address} did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Server { endpoint: format!("grpc://{address}"), child, _state: state }
    }

    /// `memobuild remote build --endpoint E --progress plain ARGS CONTEXT`.
    fn check(&self, project: &Project, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_memobuild"))
            .args(["remote", "build", "--endpoint", &self.endpoint, "--progress", "plain", "--state-dir"])
            .arg(project.state_dir())
            .args(args)
            .arg(project.path())
            .output()
            .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn remote_check_reports_the_clusters_warnings() {
    let server = Server::start();
    let warned = warned_project();
    let check = server.check(&warned, &["--check"]);
    let text = stderr(&check);
    assert_eq!(check.status.code(), Some(1), "{text}");
    assert!(text.contains(" - StageNameCasing: Stage name 'Build' should be lowercase (line 1)"), "{text}");
    assert!(text.contains("Check complete, 2 warnings have been found!"), "{text}");

    let base = fixture().base();
    let clean = Project::new(&[("Dockerfile", &format!("FROM {base}\nRUN echo ok > /ok\n"))]);
    let check = server.check(&clean, &["--call", "check"]);
    let text = stderr(&check);
    assert!(check.status.success(), "{text}");
    assert!(text.contains("Check complete, no warnings found."), "{text}");
}
