//! The Bazel test workspace (`tests/bazel-workspace`), copied for one test.
#![allow(clippy::unwrap_used, dead_code)]

use std::path::Path;

/// Copies the workspace, without the `bazel-*` links a local run leaves, to `to`.
pub fn copy_workspace(to: &Path) {
    copy_tree(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/bazel-workspace"), to);
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
