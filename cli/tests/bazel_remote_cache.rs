//! Real Bazel against the real `memobuild server` binary, as a remote cache:
//! build, `bazel clean`, build again; every action must be a remote cache hit
//! and every output identical.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use memobuild_proto::{Digest, DigestFunction};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
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

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name.to_string_lossy().starts_with("bazel-") {
            continue;
        }
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            copy_tree(&entry.path(), &to.join(&name));
        } else if kind.is_file() {
            std::fs::copy(entry.path(), to.join(&name)).unwrap();
        }
    }
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

#[test]
fn bazel_remote_cache_hits_every_action_after_clean() {
    let temp = tempfile::tempdir().unwrap();
    let workspace = temp.path().join("ws");
    let root = temp.path().join("bazel-root");
    copy_tree(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/bazel-workspace"), &workspace);
    let (_server, address) = start_server(&temp.path().join("state"));
    let remote = format!("--remote_cache=grpc://{address}");

    let cold = bazel(&workspace, &root, &["build", "//...", &remote]);
    let cold_summary = process_summary(&cold);
    let bin = std::fs::canonicalize(workspace.join("bazel-bin")).unwrap();
    let outputs = file_digests(&bin);
    assert_eq!(std::fs::metadata(bin.join("big_file.bin")).unwrap().len(), 50 << 20);
    assert!(outputs.keys().any(|p| p.starts_with("tree/sub/deeper")), "output directory missing: {outputs:?}");
    assert!(outputs.contains_key(Path::new("cc/hello")));

    bazel(&workspace, &root, &["clean"]);
    let warm = bazel(&workspace, &root, &["build", "//...", &remote]);
    let warm_summary = process_summary(&warm);
    bazel(&workspace, &root, &["shutdown"]);

    // "51 processes: 39 remote cache hit, 12 internal." and nothing executed.
    let count = |summary: &str, what: &str| -> usize {
        summary
            .split([':', ','])
            .find_map(|part| part.trim().strip_suffix(what).and_then(|n| n.trim().parse().ok()))
            .unwrap_or(0)
    };
    let hits = count(&warm_summary, "remote cache hit");
    let total = warm_summary.split_whitespace().nth(1).and_then(|n| n.parse::<usize>().ok()).unwrap();
    let internal = count(&warm_summary, "internal.").max(count(&warm_summary, "internal"));
    assert!(hits >= 39, "cold: {cold_summary}\nwarm: {warm_summary}");
    assert_eq!(hits + internal, total, "some actions ran locally: {warm_summary}");
    assert_eq!(file_digests(&bin), outputs, "outputs differ after the cached rebuild");
}
