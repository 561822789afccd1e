//! Helpers shared by the integration tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use memobuild_cas::{BlobStore, MemoryStore, VerifiedStore};
use memobuild_oci::{BuiltImage, Layer, LayerWriter};

pub fn store() -> VerifiedStore {
    VerifiedStore::new(Arc::new(MemoryStore::new()))
}

/// `alice:s3cret` for a registry's htpasswd auth (bcrypt, cost 5).
pub const HTPASSWD: &str = "alice:$2b$05$Vsbko4ztJlxdHwQBv3nYFOXE.XcG2dPP52t8QCdtTUUnFU0UAGo8m\n";

/// Fails the test unless every tool is on PATH (scripts/install-deps.sh
/// installs them): a missing tool must not pass as a skipped test.
pub fn require(tools: &[&str]) {
    for tool in tools {
        let found = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(found, "{tool} is not installed: run scripts/install-deps.sh");
    }
}

/// Runs a command, panicking with its output when it fails; returns stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn umoci_unpack(layout_and_tag: &str, bundle: &Path) {
    let mut cmd = Command::new("umoci");
    cmd.arg("unpack");
    if !nix::unistd::geteuid().is_root() {
        cmd.arg("--rootless");
    }
    run(cmd.arg("--image").arg(layout_and_tag).arg(bundle));
}

/// An OCI layout at `dir/layout` with image `busybox`: one layer holding
/// `bin/busybox`, built with umoci.
pub fn busybox_layout(dir: &Path) -> PathBuf {
    let layout = dir.join("layout");
    let bundle = dir.join("bundle");
    let image = format!("{}:busybox", layout.display());
    run(Command::new("umoci").arg("init").arg("--layout").arg(&layout));
    run(Command::new("umoci").arg("new").arg("--image").arg(&image));
    umoci_unpack(&image, &bundle);
    std::fs::create_dir_all(bundle.join("rootfs/bin")).unwrap();
    std::fs::copy("/bin/busybox", bundle.join("rootfs/bin/busybox")).unwrap();
    let mut cmd = Command::new("umoci");
    cmd.arg("repack");
    if !nix::unistd::geteuid().is_root() {
        cmd.arg("--rootless");
    }
    run(cmd.arg("--image").arg(&image).arg(&bundle));
    layout
}

/// A layer with `hello/` and `hello/world.txt` (content `text`).
pub async fn hello_layer(store: &dyn BlobStore, text: &str) -> Layer {
    let mut writer = LayerWriter::new();
    writer.add_directory("hello", 0o755, 0, 0, 1_700_000_000).unwrap();
    let mut content = text.as_bytes();
    writer.add_file("hello/world.txt", 0o644, 0, 0, 1_700_000_000, None, &mut content, text.len() as u64).unwrap();
    writer.finish(store).await.unwrap()
}

/// A linux/amd64 config for `layers`, with one history entry per layer.
pub fn config_for(layers: &[Layer]) -> Bytes {
    let diff_ids: Vec<String> = layers.iter().map(|l| l.diff_id_string()).collect();
    let history: Vec<serde_json::Value> =
        layers.iter().map(|_| serde_json::json!({"created_by": "memobuild test"})).collect();
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": history,
    });
    Bytes::from(serde_json::to_vec(&config).unwrap())
}

/// A one-layer image with `hello/world.txt`, gzip-compressed.
pub async fn hello_image(store: &dyn BlobStore) -> BuiltImage {
    let layer = hello_layer(store, "hello world\n").await;
    let layer = memobuild_oci::compress_layer(store, &layer, memobuild_oci::Compression::Gzip).await.unwrap();
    BuiltImage::new(config_for(std::slice::from_ref(&layer)), vec![layer], BTreeMap::new()).unwrap()
}

/// A `docker-registry` on 127.0.0.1, stopped on drop.
pub struct Registry {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Registry {
    /// Starts the registry; with `htpasswd`, basic auth against that file.
    pub fn start(htpasswd: Option<&Path>) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let storage = dir.path().join("storage");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            storage.display()
        );
        if let Some(path) = htpasswd {
            config.push_str(&format!("auth:\n  htpasswd:\n    realm: memobuild-test\n    path: {}\n", path.display()));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("registry.log")).unwrap())
            .spawn()
            .unwrap();
        let registry = Registry { child, port, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut conn) = TcpStream::connect(("127.0.0.1", port)) {
                let _ = conn.write_all(b"GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
                let mut reply = String::new();
                let _ = conn.read_to_string(&mut reply);
                if reply.starts_with("HTTP/1.") {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "docker-registry did not answer on port {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
        registry
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether the filesystem of `path` keeps user extended attributes.
pub fn xattr_supported(path: &Path) -> bool {
    let probe = path.with_extension("probe");
    std::fs::write(&probe, b"").unwrap();
    let ok = xattr::set(&probe, "user.probe", b"1").is_ok();
    std::fs::remove_file(&probe).unwrap();
    ok
}
