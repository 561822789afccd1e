//! Real Bazel against the real `memobuild server` binary, as a remote cache
//! and as a remote executor: build, `bazel clean`, build again; every action
//! must then be a remote cache hit and every output identical.
#![allow(clippy::unwrap_used)]

#[path = "common/bazel_workspace.rs"]
mod bazel_workspace;
#[path = "image_build/harness.rs"]
mod harness;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use bazel_workspace::copy_workspace;
use memobuild_proto::{Digest, DigestFunction};

struct Server(Child);

impl Drop for Server {
    /// SIGTERM, as an operator stops it, so the server also stops the
    /// private containerd its worker started for Dockerfile steps.
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while matches!(self.0.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the binary on a free port; returns it and its gRPC address.
fn start_server(state_dir: &Path) -> (Server, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_memobuild"))
        .args(["server", "--listen", "127.0.0.1:0", "--state-dir"])
        .arg(state_dir)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let address = loop {
        let line = lines.next().expect("server exited before listening").unwrap();
        if line.contains("memobuild listening") {
            break line.rsplit("address=").next().unwrap().trim().to_string();
        }
    };
    // Keep draining the log so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (Server(child), address)
}

/// Runs bazel; returns its combined output. Panics with it on failure.
fn bazel(workspace: &Path, root: &Path, args: &[&str]) -> String {
    let output = Command::new("bazel")
        .arg(format!("--output_user_root={}", root.display()))
        .args(args)
        .current_dir(workspace)
        .output()
        .expect("bazel is not installed: run scripts/test.sh, which installs Debian's bazel-bootstrap");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "bazel {args:?} failed:\n{text}");
    text
}

/// The "N processes: ..." summary line of a build.
fn process_summary(output: &str) -> String {
    output
        .lines()
        .find(|l| l.contains(" processes: "))
        .unwrap_or_else(|| panic!("no process summary in:\n{output}"))
        .to_string()
}

/// Digest of every regular file under `dir`, by relative path.
fn file_digests(dir: &Path) -> BTreeMap<PathBuf, Digest> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        for entry in std::fs::read_dir(&current).unwrap() {
            let entry = entry.unwrap();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                let data = std::fs::read(entry.path()).unwrap();
                out.insert(
                    entry.path().strip_prefix(dir).unwrap().to_path_buf(),
                    Digest::of(DigestFunction::Sha256, &data),
                );
            }
        }
    }
    out
}

/// "51 processes: 39 remote cache hit, 12 internal." -> the count before `what`.
fn count(summary: &str, what: &str) -> usize {
    summary
        .split([':', ','])
        .find_map(|part| part.trim().trim_end_matches('.').strip_suffix(what).and_then(|n| n.trim().parse().ok()))
        .unwrap_or(0)
}

/// A workspace copy, a Bazel output root and a running server.
struct Setup {
    /// Dropped first: the server stops before its state dir goes.
    _server: Server,
    _temp: tempfile::TempDir,
    workspace: PathBuf,
    root: PathBuf,
    address: String,
}

impl Setup {
    fn new() -> Self {
        let temp = tempfile::tempdir().unwrap();
        let workspace = temp.path().join("ws");
        let root = temp.path().join("bazel-root");
        copy_workspace(&workspace);
        let (server, address) = start_server(&temp.path().join("state"));
        Setup { workspace, root, _server: server, address, _temp: temp }
    }

    fn bazel(&self, args: &[&str]) -> String {
        bazel(&self.workspace, &self.root, args)
    }

    fn outputs(&self) -> BTreeMap<PathBuf, Digest> {
        file_digests(&std::fs::canonicalize(self.workspace.join("bazel-bin")).unwrap())
    }

    /// Cleans and rebuilds with `remote`: every action must be a remote cache hit.
    fn rebuild_all_cached(&self, remote: &str, before: &BTreeMap<PathBuf, Digest>) {
        self.bazel(&["clean"]);
        let warm = process_summary(&self.bazel(&["build", "//...", remote]));
        self.bazel(&["shutdown"]);
        let total: usize = warm.split_whitespace().nth(1).and_then(|n| n.parse().ok()).unwrap();
        let hits = count(&warm, "remote cache hit");
        assert!(hits >= 39, "{warm}");
        assert_eq!(hits + count(&warm, "internal"), total, "some actions ran again: {warm}");
        assert_eq!(&self.outputs(), before, "outputs differ after the cached rebuild");
    }
}

fn check_outputs(outputs: &BTreeMap<PathBuf, Digest>, bin: &Path) {
    assert_eq!(std::fs::metadata(bin.join("big_file.bin")).unwrap().len(), 50 << 20);
    assert!(outputs.keys().any(|p| p.starts_with("tree/sub/deeper")), "output directory missing: {outputs:?}");
    assert!(outputs.contains_key(Path::new("cc/hello")));
    assert!(outputs.contains_key(Path::new("tree_manifest.txt")), "the directory-consuming action did not run");
}

#[test]
fn bazel_remote_cache_hits_every_action_after_clean() {
    let setup = Setup::new();
    let remote = format!("--remote_cache=grpc://{}", setup.address);
    setup.bazel(&["build", "//...", &remote]);
    let outputs = setup.outputs();
    check_outputs(&outputs, &std::fs::canonicalize(setup.workspace.join("bazel-bin")).unwrap());
    setup.rebuild_all_cached(&remote, &outputs);
}

#[test]
fn bazel_remote_execution_runs_every_action_on_the_cluster() {
    let setup = Setup::new();
    let remote = format!("--remote_executor=grpc://{}", setup.address);
    let cold = process_summary(&setup.bazel(&["build", "//...", &remote]));
    assert!(count(&cold, "remote") >= 39, "not executed remotely: {cold}");
    assert_eq!(count(&cold, "linux-sandbox") + count(&cold, "local"), 0, "ran locally: {cold}");
    let outputs = setup.outputs();
    check_outputs(&outputs, &std::fs::canonicalize(setup.workspace.join("bazel-bin")).unwrap());

    // The sh_test runs remotely and passes.
    let tested = setup.bazel(&["test", "//...", &remote, "--test_output=errors"]);
    assert!(tested.contains("1 test passes") || tested.contains("PASSED"), "{tested}");

    // A failing action: its exit code and stderr reach Bazel.
    let output = Command::new("bazel")
        .arg(format!("--output_user_root={}", setup.root.display()))
        .args(["build", "//:expected_failure", &remote])
        .current_dir(&setup.workspace)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(!output.status.success(), "{text}");
    assert!(text.contains("memobuild-expected-failure"), "stderr did not reach Bazel: {text}");
    assert!(text.contains("Exit 3"), "exit code did not reach Bazel: {text}");

    setup.rebuild_all_cached(&remote, &outputs);
}

/// Runs `memobuild ARGS` against the setup's server; returns its stderr.
fn memobuild(setup: &Setup, args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_memobuild"))
        .args(args)
        .env("MEMOBUILD_ENDPOINT", format!("grpc://{}", setup.address))
        .env("MEMOBUILD_STATE_DIR", setup.root.join("memobuild-client"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(output.status.success(), "memobuild {args:?} failed:\n{stderr}");
    stderr
}

#[test]
fn bazel_and_dockerfile_builds_share_one_cluster_cache() {
    let setup = Setup::new();
    let remote = format!("--remote_executor=grpc://{}", setup.address);
    setup.bazel(&["build", "//...", &remote]);
    let outputs = setup.outputs();

    let context = setup.root.join("docker-context");
    std::fs::create_dir_all(&context).unwrap();
    std::fs::write(context.join("Dockerfile"), "FROM scratch\nCOPY app.txt /app/\nWORKDIR /app\n").unwrap();
    std::fs::write(context.join("app.txt"), "shared cache\n").unwrap();
    let dir = context.to_str().unwrap();
    let cold = memobuild(&setup, &["remote", "build", "--progress", "plain", dir]);
    assert!(cold.contains("2 steps ran, 0 cached"), "{cold}");

    // The Dockerfile's steps are REAPI actions in the cache Bazel uses: a
    // dry run names their keys, and the ActionCache serves their results.
    let dry = memobuild(&setup, &["remote", "build", "--dry-run", "--progress", "plain", dir]);
    let keys: Vec<&str> = dry.lines().filter_map(|l| l.split("key ").nth(1)?.strip_suffix(": cached")).collect();
    assert_eq!(keys.len(), 2, "{dry}");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for key in keys {
        let digest: Digest = key.parse().unwrap();
        let result = runtime.block_on(async {
            let channel = memobuild_cas::grpc_channel(&format!("grpc://{}", setup.address)).unwrap();
            let mut client = memobuild_proto::reapi::action_cache_client::ActionCacheClient::new(channel);
            let request = memobuild_proto::reapi::GetActionResultRequest {
                action_digest: Some(digest.to_proto()),
                ..Default::default()
            };
            client.get_action_result(request).await
        });
        let result = result.unwrap_or_else(|e| panic!("step {key} is not in the action cache: {e}")).into_inner();
        assert_eq!(result.exit_code, 0);
    }

    // And both are cached for each other's next build.
    let warm = memobuild(&setup, &["remote", "build", "--progress", "plain", dir]);
    assert!(warm.contains("0 steps ran, 2 cached"), "{warm}");
    setup.rebuild_all_cached(&remote, &outputs);
}

/// The Debian g++ image of `scripts/base-images.sh gcc` plus a marker file
/// holding `marker`, built by `memobuild build` and pushed to the test
/// registry; returns it pinned as Bazel's RBE configs name images.
fn toolchain_image(marker: &str) -> String {
    let cache = std::env::var("MEMOBUILD_BASE_CACHE").unwrap_or_else(|_| "/var/cache/memobuild/base-images".into());
    let layout = Path::new(&cache).join("oci");
    let tags = Command::new("umoci").args(["ls", "--layout"]).arg(&layout).output().unwrap();
    assert!(
        String::from_utf8_lossy(&tags.stdout).lines().any(|t| t == "gcc"),
        "no gcc image in {}: run `scripts/base-images.sh gcc` (scripts/test.sh does)",
        layout.display()
    );
    let registry = &harness::fixture().registry;
    let tag = format!("{registry}/toolchain/gcc:{marker}");
    let project = harness::Project::new(&[
        ("Dockerfile", "FROM toolchain\nCOPY marker /etc/memobuild-toolchain\n"),
        ("marker", marker),
    ]);
    let build = project.build(&[
        "--build-context",
        &format!("toolchain=oci-layout://{}:gcc", layout.display()),
        "-t",
        &tag,
        "--push",
    ]);
    assert!(build.ok(), "building the toolchain image failed:\n{}", build.stderr());
    let inspect = harness::sh("skopeo", &["inspect", "--tls-verify=false", &format!("docker://{tag}")]);
    let digest = serde_json::from_str::<serde_json::Value>(&inspect).unwrap()["Digest"].as_str().unwrap().to_string();
    format!("docker://{registry}/toolchain/gcc@{digest}")
}

#[test]
fn bazel_builds_cpp_remotely_inside_a_container_image() {
    let marker = uuid::Uuid::new_v4().simple().to_string();
    let image = toolchain_image(&marker);
    let setup = Setup::new();
    let remote = format!("--remote_executor=grpc://{}", setup.address);
    let properties = format!("--remote_default_exec_properties=container-image={image}");
    let targets = ["//cc:hello", "//:hello_output", "//:toolchain_id"];
    let built = setup.bazel(&[&["build", &remote, &properties][..], &targets].concat());
    let summary = process_summary(&built);
    assert_eq!(count(&summary, "linux-sandbox") + count(&summary, "local"), 0, "ran locally: {summary}");
    assert!(count(&summary, "remote") >= 4, "not executed remotely: {summary}");

    // The actions saw the image's filesystem, not the host's.
    let bin = std::fs::canonicalize(setup.workspace.join("bazel-bin")).unwrap();
    assert_eq!(std::fs::read_to_string(bin.join("toolchain_id.txt")).unwrap(), marker);
    // The image's g++ compiled and linked a binary that runs, there and here.
    let expected = "hello, memobuild (checksum 1711727988)\n";
    assert_eq!(std::fs::read_to_string(bin.join("hello_output.txt")).unwrap(), expected);
    let here = Command::new(bin.join("cc/hello")).arg("memobuild").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&here.stdout), expected);
    setup.bazel(&["shutdown"]);
}
