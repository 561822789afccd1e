//! Shared helpers: a counting CAS wrapper and proto builders.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use memobuild_cas::{BlobStore, BlobStream, ByteRange, MemoryStore};
use memobuild_proto::reapi::command::EnvironmentVariable;
use memobuild_proto::reapi::{platform, Action, Command, Directory, DirectoryNode, FileNode, Platform, SymlinkNode};
use memobuild_proto::{Digest, DigestFunction, Result};
use memobuild_worker::{ActionExecutor, HostRunner};
use parking_lot::Mutex;
use prost::Message;
use tempfile::TempDir;

pub const F: DigestFunction = DigestFunction::Sha256;

/// A MemoryStore that counts `get`s per digest.
#[derive(Default)]
pub struct CountingStore {
    inner: MemoryStore,
    pub gets: Mutex<HashMap<Digest, usize>>,
}

impl CountingStore {
    pub fn total_gets(&self) -> usize {
        self.gets.lock().values().sum()
    }

    pub fn reset(&self) {
        self.gets.lock().clear();
    }
}

#[async_trait]
impl BlobStore for CountingStore {
    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>> {
        self.inner.find_missing(digests).await
    }
    async fn get(&self, digest: &Digest, range: ByteRange) -> Result<BlobStream> {
        *self.gets.lock().entry(*digest).or_default() += 1;
        self.inner.get(digest, range).await
    }
    async fn put(&self, digest: &Digest, data: BlobStream) -> Result<()> {
        self.inner.put(digest, data).await
    }
    async fn delete(&self, digest: &Digest) -> Result<bool> {
        self.inner.delete(digest).await
    }
}

pub struct Fixture {
    pub cas: Arc<CountingStore>,
    pub dir: TempDir,
    pub executor: ActionExecutor,
}

impl Fixture {
    pub async fn new() -> Self {
        Self::with_cache(64 << 20).await
    }

    pub async fn with_cache(cache_max_bytes: u64) -> Self {
        Self::with_runner(cache_max_bytes, HostRunner::new()).await
    }

    pub async fn with_runner(cache_max_bytes: u64, runner: HostRunner) -> Self {
        Self::in_dir(tempfile::tempdir().unwrap(), cache_max_bytes, runner).await
    }

    /// The worker's state in `dir`.
    pub async fn in_dir(dir: TempDir, cache_max_bytes: u64, runner: HostRunner) -> Self {
        let cas = Arc::new(CountingStore::default());
        let executor =
            ActionExecutor::new(cas.clone(), dir.path().join("work"), cache_max_bytes, Arc::new(runner)).await.unwrap();
        Fixture { cas, dir, executor }
    }

    pub async fn blob(&self, data: &[u8]) -> Digest {
        let digest = Digest::of(F, data);
        self.cas.put_bytes(&digest, Bytes::copy_from_slice(data)).await.unwrap();
        digest
    }

    pub async fn proto(&self, message: &impl Message) -> Digest {
        self.blob(&message.encode_to_vec()).await
    }

    pub async fn read(&self, digest: &memobuild_proto::reapi::Digest) -> Bytes {
        self.cas.get_bytes(&Digest::from_proto(F, digest).unwrap()).await.unwrap()
    }

    pub async fn file(&self, name: &str, data: &[u8], executable: bool) -> FileNode {
        let digest = self.blob(data).await;
        FileNode {
            name: name.into(),
            digest: Some(digest.to_proto()),
            is_executable: executable,
            node_properties: None,
        }
    }

    pub async fn dir(&self, directory: Directory) -> Digest {
        self.proto(&directory).await
    }

    /// Stores the command and an action for it over `root`.
    pub async fn action(&self, command: &Command, root: Digest, timeout_secs: i64) -> Digest {
        let command_digest = self.proto(command).await;
        let action = Action {
            command_digest: Some(command_digest.to_proto()),
            input_root_digest: Some(root.to_proto()),
            timeout: (timeout_secs > 0)
                .then_some(memobuild_proto::protobuf::Duration { seconds: timeout_secs, nanos: 0 }),
            ..Default::default()
        };
        self.proto(&action).await
    }

    pub fn actions_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("work/actions")
    }

    /// Whether nothing of finished actions is left within a few seconds:
    /// action directories are reused, but without input roots and with
    /// empty streams (cleaned in the background once a result is out).
    pub async fn no_action_dirs_left(&self) -> bool {
        let clean = || {
            std::fs::read_dir(self.actions_dir()).unwrap().all(|entry| {
                let dir = entry.unwrap().path();
                let empty = |name: &str| std::fs::metadata(dir.join(name)).map(|m| m.len() == 0).unwrap_or(true);
                !dir.join("root").exists() && empty("stdout") && empty("stderr")
            })
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !clean() {
            if std::time::Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        true
    }
}

pub fn dir_node(name: &str, digest: Digest) -> DirectoryNode {
    DirectoryNode { name: name.into(), digest: Some(digest.to_proto()) }
}

pub fn symlink(name: &str, target: &str) -> SymlinkNode {
    SymlinkNode { name: name.into(), target: target.into(), node_properties: None }
}

pub fn command(argv: &[&str], outputs: &[&str]) -> Command {
    Command {
        arguments: argv.iter().map(|s| s.to_string()).collect(),
        environment_variables: vec![env("PATH", "/usr/local/bin:/usr/bin:/bin")],
        output_paths: outputs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

pub fn env(name: &str, value: &str) -> EnvironmentVariable {
    EnvironmentVariable { name: name.into(), value: value.into() }
}

pub fn platform(name: &str, value: &str) -> Platform {
    Platform { properties: vec![platform::Property { name: name.into(), value: value.into() }] }
}

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .is_some_and(|l| l.split_whitespace().nth(2) == Some("0"))
}

/// Processes whose command line contains `marker`.
pub fn processes_with(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmdline = entry.path().join("cmdline");
        if let Ok(data) = std::fs::read(&cmdline) {
            let line = String::from_utf8_lossy(&data).replace('\0', " ");
            if line.contains(marker) {
                found.push(format!("{}: {line}", entry.file_name().to_string_lossy()));
            }
        }
    }
    found
}

/// Waits (bounded) until no process has `marker` in its command line; the
/// kernel reaps killed processes asynchronously.
pub async fn gone(marker: &str) -> Vec<String> {
    for _ in 0..100 {
        let left = processes_with(marker);
        if left.is_empty() {
            return left;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    processes_with(marker)
}

pub fn unique_marker() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("1000.{}{}", std::process::id(), nanos)
}

pub fn exists(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}
