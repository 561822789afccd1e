//! One conformance case: `tests/conformance/cases/<name>/` holds a
//! `Dockerfile`, its `context/`, and optionally `case.toml` (build flags,
//! expected failure) and `reference.Dockerfile` (what BuildKit builds when
//! Docker 20.10's frontend predates the syntax the case tests).

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Bumped when what a case's result holds changes, so stored results are
/// refreshed rather than compared against a different normalization.
pub const NORMALIZATION: &str = "conformance-v1";

/// Base images a Dockerfile names with `{{busybox}}` or `{{debian}}`, and
/// where `scripts/base-images.sh push REGISTRY` puts them.
pub const BASES: [(&str, &str); 2] =
    [("busybox", "memobuild-base/busybox:1"), ("debian", "memobuild-base/debian:bookworm")];

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseOptions {
    #[serde(default)]
    pub build_args: BTreeMap<String, String>,
    pub target: Option<String>,
    /// Secret id -> file in the case directory.
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
    /// `--ssh ID=KEY` ids: each gets a fresh ed25519 key, the same for both
    /// builders (no agent needed: both load the key themselves).
    #[serde(default)]
    pub ssh: Vec<String>,
    /// Context path -> octal mode to give it before building.
    #[serde(default)]
    pub modes: BTreeMap<String, String>,
    /// `[existing, new]`: `new` is made a hard link of `existing` in the context.
    #[serde(default)]
    pub hardlinks: Vec<[String; 2]>,
    /// Both builders must fail.
    #[serde(default)]
    pub fails: bool,
    /// The Dockerfile line MemoBuild's error must name.
    pub error_line: Option<usize>,
    /// Why `reference.Dockerfile` builds what BuildKit's current frontend
    /// builds from `Dockerfile`.
    pub reference: Option<String>,
    /// A difference kept on purpose or not fixed yet, and why (also in
    /// docs/compatibility.md): the table shows it, the test passes.
    pub known_difference: Option<String>,
}

pub struct Case {
    pub name: String,
    pub dir: PathBuf,
    pub options: CaseOptions,
}

/// Every case under `root`, sorted by name.
pub fn load_cases(root: &Path) -> Vec<Case> {
    let mut cases: Vec<Case> = std::fs::read_dir(root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.join("Dockerfile").is_file())
        .map(|dir| {
            let name = dir.file_name().unwrap().to_string_lossy().to_string();
            let options = match std::fs::read_to_string(dir.join("case.toml")) {
                Ok(text) => toml::from_str(&text).unwrap_or_else(|e| panic!("{name}/case.toml: {e}")),
                Err(_) => CaseOptions::default(),
            };
            assert!(
                options.reference.is_some() == dir.join("reference.Dockerfile").is_file(),
                "{name}: reference.Dockerfile and case.toml's `reference` (why it is equivalent) go together"
            );
            assert!(!options.fails || options.error_line.is_some(), "{name}: a failing case names its error_line");
            Case { name, dir, options }
        })
        .collect();
    cases.sort_by(|a, b| a.name.cmp(&b.name));
    cases
}

/// Which builder a prepared directory is for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Builder {
    MemoBuild,
    BuildKit,
}

/// A case laid out for one build: the Dockerfile with the base images'
/// addresses filled in, a copy of the context with fixed modes, and the
/// case's SSH keys.
pub struct Prepared {
    pub dockerfile: PathBuf,
    pub context: PathBuf,
    /// `--ssh` id -> private key file.
    ssh_keys: Vec<(String, PathBuf)>,
    _dir: tempfile::TempDir,
}

impl Case {
    /// sha256 of everything that decides the case's result: every file's
    /// path, kind, executable bit and content (or link target), what git
    /// keeps of it; plus the normalization version.
    pub fn input_hash(&self) -> String {
        let mut hasher = Sha256::new();
        hasher.update(NORMALIZATION.as_bytes());
        let mut files = Vec::new();
        collect_files(&self.dir, "", &mut files);
        files.sort();
        for rel in files {
            let path = self.dir.join(&rel);
            let meta = std::fs::symlink_metadata(&path).unwrap();
            hasher.update(rel.as_bytes());
            hasher.update([0]);
            if meta.file_type().is_symlink() {
                hasher.update(b"symlink\0");
                hasher.update(std::fs::read_link(&path).unwrap().to_string_lossy().as_bytes());
            } else {
                hasher.update(if meta.mode() & 0o111 != 0 { b"exec\0" } else { b"file\0" });
                let content = std::fs::read(&path).unwrap();
                hasher.update((content.len() as u64).to_le_bytes());
                hasher.update(&content);
            }
            hasher.update([0]);
        }
        hex::encode(hasher.finalize())
    }

    pub fn uses_base(&self, base: &str) -> bool {
        let token = format!("{{{{{base}}}}}");
        ["Dockerfile", "reference.Dockerfile"]
            .iter()
            .any(|f| std::fs::read_to_string(self.dir.join(f)).is_ok_and(|t| t.contains(&token)))
    }

    /// Lays the case out for `builder`, with base images from `registry`.
    pub fn prepare(&self, builder: Builder, registry: &str) -> Prepared {
        let dir = tempfile::tempdir().unwrap();
        let source = match builder {
            Builder::BuildKit if self.options.reference.is_some() => "reference.Dockerfile",
            _ => "Dockerfile",
        };
        let mut text = std::fs::read_to_string(self.dir.join(source)).unwrap();
        for (name, path) in BASES {
            text = text.replace(&format!("{{{{{name}}}}}"), &format!("{registry}/{path}"));
        }
        let dockerfile = dir.path().join("Dockerfile");
        std::fs::write(&dockerfile, text).unwrap();
        let context = dir.path().join("context");
        copy_tree(&self.dir.join("context"), &context);
        for [existing, new] in &self.options.hardlinks {
            std::fs::hard_link(context.join(existing), context.join(new)).unwrap();
        }
        for (rel, mode) in &self.options.modes {
            let mode = u32::from_str_radix(mode, 8).unwrap_or_else(|e| panic!("{}: mode {mode}: {e}", self.name));
            std::fs::set_permissions(context.join(rel), std::fs::Permissions::from_mode(mode)).unwrap();
        }
        let mut ssh_keys = Vec::new();
        for id in &self.options.ssh {
            let key = dir.path().join(format!("ssh-{id}"));
            let made = std::process::Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(&key)
                .status()
                .unwrap_or_else(|e| panic!("{}: ssh-keygen (apt-get install openssh-client): {e}", self.name));
            assert!(made.success(), "{}: ssh-keygen failed", self.name);
            ssh_keys.push((id.clone(), key));
        }
        Prepared { dockerfile, context, ssh_keys, _dir: dir }
    }

    /// `--build-arg`, `--target`, `--secret` and `--ssh` flags, the same for
    /// both builders.
    pub fn flags(&self, prepared: &Prepared) -> Vec<String> {
        let mut flags = Vec::new();
        for (k, v) in &self.options.build_args {
            flags.push("--build-arg".to_string());
            flags.push(format!("{k}={v}"));
        }
        if let Some(target) = &self.options.target {
            flags.push("--target".to_string());
            flags.push(target.clone());
        }
        for (id, file) in &self.options.secrets {
            flags.push("--secret".to_string());
            flags.push(format!("id={id},src={}", self.dir.join(file).display()));
        }
        for (id, key) in &prepared.ssh_keys {
            flags.push("--ssh".to_string());
            flags.push(format!("{id}={}", key.display()));
        }
        flags
    }
}

fn collect_files(root: &Path, rel: &str, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(root.join(rel)).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().to_string();
        let child = if rel.is_empty() { name } else { format!("{rel}/{name}") };
        if entry.file_type().unwrap().is_dir() {
            collect_files(root, &child, out);
        } else {
            out.push(child);
        }
    }
}

/// Copies a context as a fresh git checkout has it, whatever the umask:
/// directories 0755, files 0644 or 0755, symlinks as they are.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o755)).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let meta = std::fs::symlink_metadata(&src).unwrap();
        if meta.file_type().is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src).unwrap(), &dst).unwrap();
        } else if meta.is_dir() {
            copy_tree(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).unwrap();
            let mode = if meta.mode() & 0o111 != 0 { 0o755 } else { 0o644 };
            std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(mode)).unwrap();
        }
    }
}
