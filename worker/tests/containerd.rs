//! The containerd runner against a real, private containerd.
//!
//! Every test joins one private containerd under a fixed state directory
//! (`$TMPDIR/memobuild-ctd-tests`) through `Containerd::start_private`, so a
//! system containerd is never touched; the daemon is shared by the tests
//! running at the same time (the user-count locks) and stopped by the last
//! one. Each test builds its own busybox base layer with a unique marker
//! file, so layers are really unpacked every run, and removes its snapshots
//! at the end.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use memobuild_cas::{BlobStore, MemoryStore};
use memobuild_oci::{Layer, MEDIA_TYPE_TAR, MEDIA_TYPE_TAR_GZIP};
use memobuild_proto::{Digest, DigestFunction};
use memobuild_worker::containerd::{ContainerOutcome, ContainerSpec, Containerd, LogChunk, ResourceLimits, NAMESPACE};
use tokio::sync::mpsc::unbounded_channel;
use tokio_util::sync::CancellationToken;

fn state_dir() -> PathBuf {
    std::env::temp_dir().join("memobuild-ctd-tests")
}

struct Fixture {
    ctd: Containerd,
    store: MemoryStore,
    base: Layer,
    base_chain: String,
    /// Unique per test: the prefix of step hints, to find leftovers.
    tag: String,
    chains: Vec<String>,
}

impl Fixture {
    async fn new(name: &str) -> Fixture {
        let ctd = Containerd::start_private(&state_dir()).await.unwrap();
        let store = MemoryStore::new();
        let tag = format!("{name}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let tar = busybox_base_tar(&tag);
        let digest = Digest::of(DigestFunction::Sha256, &tar);
        store.put_bytes(&digest, Bytes::from(tar)).await.unwrap();
        let base = Layer::uncompressed(digest);
        let base_chain = ctd.ensure_chain(&store, std::slice::from_ref(&base)).await.unwrap().unwrap();
        Fixture { ctd, store, base, base_chain: base_chain.clone(), tag, chains: vec![base_chain] }
    }

    fn spec(&self, step: &str, script: &str) -> ContainerSpec {
        ContainerSpec {
            id_hint: format!("{}-{step}", self.tag),
            argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
            env: vec!["PATH=/bin".into()],
            cwd: "/".into(),
            hostname: "memobuild-test".into(),
            ..Default::default()
        }
    }

    async fn run(&mut self, parent: &str, spec: &ContainerSpec) -> (ContainerOutcome, String, String) {
        let (tx, mut rx) = unbounded_channel();
        let outcome = self.ctd.run(&self.store, Some(parent), spec, tx, CancellationToken::new()).await.unwrap();
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        while let Ok(chunk) = rx.try_recv() {
            match chunk {
                LogChunk::Stdout(b) => stdout.extend_from_slice(&b),
                LogChunk::Stderr(b) => stderr.extend_from_slice(&b),
            }
        }
        if let Some(chain) = &outcome.chain_id {
            self.chains.push(chain.clone());
        }
        self.assert_no_leftovers().await;
        (outcome, String::from_utf8_lossy(&stdout).into_owned(), String::from_utf8_lossy(&stderr).into_owned())
    }

    /// The entries of a layer tar: path -> (type, contents).
    async fn entries(&self, layer: &Layer) -> BTreeMap<String, (tar::EntryType, Vec<u8>)> {
        let bytes = self.store.get_bytes(&layer.blob).await.unwrap();
        assert_eq!(Digest::of(DigestFunction::Sha256, &bytes), layer.diff_id);
        let mut archive = tar::Archive::new(&bytes[..]);
        let mut entries = BTreeMap::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let kind = entry.header().entry_type();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            entries.insert(path, (kind, data));
        }
        entries
    }

    /// The owners and modes of a layer's entries: path -> (uid, gid, mode).
    async fn owners(&self, layer: &Layer) -> BTreeMap<String, (u64, u64, u32)> {
        let bytes = self.store.get_bytes(&layer.blob).await.unwrap();
        let mut archive = tar::Archive::new(&bytes[..]);
        let mut owners = BTreeMap::new();
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let header = entry.header();
            owners.insert(path, (header.uid().unwrap(), header.gid().unwrap(), header.mode().unwrap() & 0o7777));
        }
        owners
    }

    fn ctr(&self, args: &[&str]) -> String {
        let output = Command::new("ctr")
            .args(["-n", NAMESPACE, "--address"])
            .arg(self.ctd.address())
            .args(args)
            .output()
            .unwrap();
        assert!(output.status.success(), "ctr {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// No container, task or active snapshot of this test is left once the
    /// background cleanups are done.
    async fn assert_no_leftovers(&self) {
        self.ctd.settle().await;
        let prefix = format!("memobuild-{}", self.tag);
        let containers = self.ctr(&["containers", "ls", "-q"]);
        assert!(!containers.contains(&prefix), "containers left: {containers}");
        let tasks = self.ctr(&["tasks", "ls", "-q"]);
        assert!(!tasks.contains(&prefix), "tasks left: {tasks}");
        let snapshots = self.ctr(&["snapshots", "ls"]);
        let active: Vec<&str> = snapshots.lines().filter(|l| l.contains(&prefix) && l.contains("Active")).collect();
        assert!(active.is_empty(), "active snapshots left: {active:?}");
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        assert!(!mounts.contains(&prefix), "mounts left: {mounts}");
        let rootfs_dirs: Vec<_> = std::fs::read_dir(std::env::temp_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.contains(&prefix))
            .collect();
        assert!(rootfs_dirs.is_empty(), "rootfs directories left: {rootfs_dirs:?}");
    }

    /// Removes this test's committed snapshots (top first) and leaves.
    async fn finish(self) {
        for chain in self.chains.iter().rev() {
            let _ = Command::new("ctr")
                .args(["-n", NAMESPACE, "--address"])
                .arg(self.ctd.address())
                .args(["snapshots", "rm", chain])
                .output();
        }
        self.ctd.shutdown().await.unwrap();
    }
}

/// A busybox rootfs: `bin/` with busybox and its applet symlinks, an
/// `/etc/passwd` and `/etc/group`, a few files to delete, and a marker
/// unique to the test.
fn busybox_base_tar(marker: &str) -> Vec<u8> {
    let root = tempfile::tempdir().unwrap();
    let bin = root.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy("/bin/busybox", bin.join("busybox")).unwrap();
    // `busybox --install -s` would link to the host path; relative links
    // work inside the container.
    let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
    assert!(list.status.success());
    for applet in String::from_utf8(list.stdout).unwrap().lines().filter(|a| *a != "busybox") {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
    }
    let etc = root.path().join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(
        etc.join("passwd"),
        "root:x:0:0:root:/root:/bin/sh\nbuilder:x:1234:2345:Builder:/home/builder:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )
    .unwrap();
    std::fs::write(etc.join("group"), "root:x:0:\nbuilders:x:2345:\nextra:x:3456:builder\nnogroup:x:65534:\n").unwrap();
    std::fs::create_dir_all(root.path().join("lower/dir")).unwrap();
    std::fs::write(root.path().join("lower/file"), "delete me").unwrap();
    std::fs::write(root.path().join("lower/dir/old"), "hidden by opaque").unwrap();
    std::fs::write(root.path().join("marker"), marker).unwrap();

    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    let mut paths: Vec<PathBuf> = Vec::new();
    collect(root.path(), Path::new(""), &mut paths);
    paths.sort();
    for rel in paths {
        builder.append_path_with_name(root.path().join(&rel), &rel).unwrap();
    }
    builder.into_inner().unwrap()
}

fn collect(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(root.join(rel)).unwrap() {
        let entry = entry.unwrap();
        let child = rel.join(entry.file_name());
        out.push(child.clone());
        if entry.file_type().unwrap().is_dir() {
            collect(root, &child, out);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_makes_a_layer_with_exactly_that_file() {
    let mut fx = Fixture::new("echo").await;
    let spec = fx.spec("echo", "echo hi > /out");
    let parent = fx.base_chain.clone();
    let (outcome, _, stderr) = fx.run(&parent, &spec).await;
    assert_eq!(outcome.exit_code, 0, "{stderr}");
    let layer = outcome.layer.clone().unwrap();
    assert_eq!(layer.media_type, MEDIA_TYPE_TAR);
    assert_eq!(layer.blob, layer.diff_id);
    let entries = fx.entries(&layer).await;
    assert_eq!(entries.keys().collect::<Vec<_>>(), ["out"]);
    assert_eq!(entries["out"].1, b"hi\n");
    assert_eq!(outcome.chain_id.unwrap(), Layer::chain_ids(&[fx.base.clone(), layer])[1]);
    fx.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_streams_apart_and_the_exit_code_comes_back() {
    let mut fx = Fixture::new("exit").await;
    let spec = fx.spec("exit", "echo to-out; echo to-err >&2; echo more-out; exit 7");
    let parent = fx.base_chain.clone();
    let (outcome, stdout, stderr) = fx.run(&parent, &spec).await;
    assert_eq!(outcome.exit_code, 7);
    assert!(!outcome.timed_out && !outcome.cancelled);
    assert!(outcome.layer.is_none() && outcome.chain_id.is_none());
    assert_eq!(stdout, "to-out\nmore-out\n");
    assert_eq!(stderr, "to-err\n");

    // On an empty rootfs there is no shell: a clear error, nothing left.
    let (tx, _rx) = unbounded_channel();
    let err = fx.ctd.run(&fx.store, None, &spec, tx, CancellationToken::new()).await.unwrap_err();
    assert!(err.message().contains("/bin/sh") && err.message().contains(&spec.id_hint), "{err}");
    fx.assert_no_leftovers().await;
    fx.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletions_become_whiteouts_and_opaque_directories() {
    let mut fx = Fixture::new("whiteout").await;
    let spec = fx.spec("rm", "rm /lower/file && rm -rf /lower/dir && mkdir /lower/dir && echo new > /lower/dir/new");
    let parent = fx.base_chain.clone();
    let (outcome, _, stderr) = fx.run(&parent, &spec).await;
    assert_eq!(outcome.exit_code, 0, "{stderr}");
    let entries = fx.entries(outcome.layer.as_ref().unwrap()).await;
    let names: Vec<&str> = entries.keys().map(String::as_str).collect();
    assert_eq!(names, ["lower/", "lower/.wh.file", "lower/dir/", "lower/dir/.wh..wh..opq", "lower/dir/new"]);

    // The next step sees the deletions.
    let check = fx.spec("check", "test ! -e /lower/file && test ! -e /lower/dir/old && cat /lower/dir/new");
    let chain = outcome.chain_id.unwrap();
    let (next, stdout, stderr) = fx.run(&chain, &check).await;
    assert_eq!(next.exit_code, 0, "{stderr}");
    assert_eq!(stdout, "new\n");
    fx.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_step_sees_the_first_and_a_view_shows_the_files() {
    let mut fx = Fixture::new("chain").await;
    let parent = fx.base_chain.clone();
    let (first, _, _) = fx.run(&parent, &fx.spec("one", "echo from-one > /one")).await;
    let chain = first.chain_id.unwrap();
    let (second, stdout, stderr) = fx.run(&chain, &fx.spec("two", "cat /one && echo two > /two")).await;
    assert_eq!(second.exit_code, 0, "{stderr}");
    assert_eq!(stdout, "from-one\n");
    let entries = fx.entries(second.layer.as_ref().unwrap()).await;
    assert_eq!(entries.keys().collect::<Vec<_>>(), ["two"]);

    let top = second.chain_id.unwrap();
    let view = fx.ctd.mount_view(Some(&top), None).await.unwrap();
    assert_eq!(std::fs::read_to_string(view.path().join("one")).unwrap(), "from-one\n");
    assert_eq!(std::fs::read_to_string(view.path().join("two")).unwrap(), "two\n");
    assert!(view.path().join("bin/busybox").is_file());
    assert!(std::fs::write(view.path().join("three"), "x").is_err(), "the view is read-only");
    let path = view.path().to_path_buf();
    view.release().await.unwrap();
    assert!(!path.exists());

    // A single-layer view (a bind mount) and the empty root.
    let base_view = fx.ctd.mount_view(Some(&fx.base_chain), None).await.unwrap();
    assert_eq!(std::fs::read_to_string(base_view.path().join("marker")).unwrap(), fx.tag);
    drop(base_view);
    let empty = fx.ctd.mount_view(None, None).await.unwrap();
    assert_eq!(std::fs::read_dir(empty.path()).unwrap().count(), 0);
    empty.release().await.unwrap();
    fx.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steps_chain_is_committed_when_the_step_returns() {
    let mut fx = Fixture::new("commit").await;
    let parent = fx.base_chain.clone();
    let (tx, _rx) = unbounded_channel();
    let spec = fx.spec("first", "echo x > /x");
    let outcome = fx.ctd.run(&fx.store, Some(&parent), &spec, tx, CancellationToken::new()).await.unwrap();
    let chain = outcome.chain_id.unwrap();
    fx.chains.push(chain.clone());
    // The task may still be being deleted; the chain is already there.
    let info = fx.ctr(&["snapshots", "info", &chain]);
    assert!(info.to_lowercase().contains("committed"), "{info}");
    let (next, stdout, stderr) = fx.run(&chain, &fx.spec("second", "cat /x")).await;
    assert_eq!((next.exit_code, stdout.as_str()), (0, "x\n"), "{stderr}");
    fx.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_resolve_from_the_image() {
    let mut fx = Fixture::new("user").await;
    let parent = fx.base_chain.clone();
    let mut spec = fx.spec("user", "id -u; id -g; id -G; echo $HOME");
    spec.user = Some("builder".into());
    let (outcome, stdout, stderr) = fx.run(&parent, &spec).await;
    assert_eq!(outcome.exit_code, 0, "{stderr}");
    assert_eq!(stdout, "1234\n2345\n2345 3456\n/home/builder\n");

    spec.user = Some("nobody:builders".into());
    let (_, stdout, _) = fx.run(&parent, &spec).await;
    assert_eq!(stdout.lines().take(2).collect::<Vec<_>>(), ["65534", "2345"]);

    spec.user = Some("ghost".into());
    let (tx, _rx) = unbounded_channel();
    let err = fx.ctd.run(&fx.store, Some(&parent), &spec, tx, CancellationToken::new()).await.unwrap_err();
    assert!(err.message().contains("\"ghost\""), "{err}");
    fx.assert_no_leftovers().await;
    fx.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_working_directory_is_created() {
    let mut fx = Fixture::new("cwd").await;
    let parent = fx.base_chain.clone();
    let mut spec = fx.spec("cwd", "pwd");
    spec.cwd = "/work/dir".into();
    let (outcome, stdout, stderr) = fx.run(&parent, &spec).await;
    assert_eq!(outcome.exit_code, 0, "{stderr}");
    assert_eq!(stdout, "/work/dir\n");
    let entries = fx.entries(outcome.layer.as_ref().unwrap()).await;
    assert_eq!(entries.keys().collect::<Vec<_>>(), ["work/", "work/dir/"]);
    fx.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steps_have_no_network_and_mounts_stay_out_of_the_layer() {
    let mut fx = Fixture::new("net").await;
    let parent = fx.base_chain.clone();
    let cache = tempfile::tempdir().unwrap();
    let mut spec =
        fx.spec("net", "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '; echo c > /cache/c; echo t > /tmpfs/t");
    spec.mounts = vec![
        memobuild_worker::containerd::SpecMount::Cache { source: cache.path().to_path_buf(), target: "/cache".into() },
        memobuild_worker::containerd::SpecMount::Tmpfs { target: "/tmpfs".into() },
    ];
    let (outcome, stdout, stderr) = fx.run(&parent, &spec).await;
    assert_eq!(outcome.exit_code, 0, "{stderr}");
    assert_eq!(stdout, "lo\n");
    assert_eq!(std::fs::read_to_string(cache.path().join("c")).unwrap(), "c\n");
    let entries = fx.entries(outcome.layer.as_ref().unwrap()).await;
    assert!(entries.is_empty(), "{:?}", entries.keys().collect::<Vec<_>>());
    fx.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_kills_the_step() {
    let mut fx = Fixture::new("timeout").await;
    let parent = fx.base_chain.clone();
    let mut spec = fx.spec("sleep", "sleep 60");
    spec.timeout = Some(Duration::from_millis(500));
    let started = Instant::now();
    let (outcome, _, _) = fx.run(&parent, &spec).await;
    assert!(outcome.timed_out && !outcome.cancelled);
    assert_eq!(outcome.exit_code, 137);
    assert!(outcome.layer.is_none());
    assert!(started.elapsed() < Duration::from_secs(30), "{:?}", started.elapsed());
    fx.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_kills_the_step() {
    let fx = Fixture::new("cancel").await;
    let spec = fx.spec("sleep", "echo started; sleep 60");
    let cancel = CancellationToken::new();
    let (tx, mut rx) = unbounded_channel();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        // Cancel once the step has printed, so it is really running.
        if rx.recv().await.is_some() {
            trigger.cancel();
        }
    });
    let outcome = fx.ctd.run(&fx.store, Some(&fx.base_chain), &spec, tx, cancel).await.unwrap();
    assert!(outcome.cancelled && !outcome.timed_out);
    assert!(outcome.layer.is_none());
    fx.assert_no_leftovers().await;
    fx.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_step_twice_gives_the_same_layer() {
    let mut fx = Fixture::new("repro").await;
    let parent = fx.base_chain.clone();
    let mut spec = fx.spec("repro", "mkdir -p /a/b && echo x > /a/b/f && ln /a/b/f /a/h && ln -s f /a/b/s");
    spec.source_date_epoch = Some(1_700_000_000);
    let (one, _, stderr) = fx.run(&parent, &spec).await;
    assert_eq!(one.exit_code, 0, "{stderr}");
    let (two, _, _) = fx.run(&parent, &spec).await;
    assert_eq!(one.layer, two.layer);
    assert_eq!(one.chain_id, two.chain_id);
    let entries = fx.entries(one.layer.as_ref().unwrap()).await;
    assert_eq!(entries.keys().collect::<Vec<_>>(), ["a/", "a/b/", "a/b/f", "a/b/s", "a/h"]);
    assert_eq!(entries["a/h"].0, tar::EntryType::Link);
    assert_eq!(entries["a/b/s"].0, tar::EntryType::Symlink);
    fx.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_ensure_chain_and_a_gzip_base() {
    let fx = Fixture::new("gzip").await;
    let tar = busybox_base_tar(&format!("{}-gz", fx.tag));
    let diff_id = Digest::of(DigestFunction::Sha256, &tar);
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut encoder, &tar).unwrap();
    let gz = encoder.finish().unwrap();
    let blob = Digest::of(DigestFunction::Sha256, &gz);
    fx.store.put_bytes(&blob, Bytes::from(gz)).await.unwrap();
    let layer = Layer { blob, media_type: MEDIA_TYPE_TAR_GZIP.to_string(), diff_id };
    let stack = vec![layer.clone()];

    // Two clients of the same daemon, and two calls of one client.
    let other = Containerd::start_private(&state_dir()).await.unwrap();
    let (a, b, c) = tokio::join!(
        fx.ctd.ensure_chain(&fx.store, &stack),
        other.ensure_chain(&fx.store, &stack),
        fx.ctd.ensure_chain(&fx.store, &stack),
    );
    let chain = a.unwrap().unwrap();
    assert_eq!(chain, layer.diff_id_string());
    assert_eq!(b.unwrap().unwrap(), chain);
    assert_eq!(c.unwrap().unwrap(), chain);
    other.shutdown().await.unwrap();
    assert_eq!(fx.ctd.ensure_chain(&fx.store, &[]).await.unwrap(), None);

    let view = fx.ctd.mount_view(Some(&chain), None).await.unwrap();
    assert_eq!(std::fs::read_to_string(view.path().join("marker")).unwrap(), format!("{}-gz", fx.tag));
    view.release().await.unwrap();

    // A wrong diff id is caught.
    let tar2 = busybox_base_tar(&format!("{}-bad", fx.tag));
    let blob2 = Digest::of(DigestFunction::Sha256, &tar2);
    fx.store.put_bytes(&blob2, Bytes::from(tar2)).await.unwrap();
    let bad = Layer { blob: blob2, media_type: MEDIA_TYPE_TAR.to_string(), diff_id };
    let err = fx.ctd.ensure_chain(&fx.store, &[fx.base.clone(), bad]).await.unwrap_err();
    assert!(err.message().contains("not its diff id"), "{err}");

    let mut fx = fx;
    fx.chains.push(chain);
    fx.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_of_one_state_dir_share_the_daemon_and_the_last_stops_it() {
    let dir = tempfile::Builder::new().prefix("mb-ctd-").tempdir_in("/tmp").unwrap();
    let first = Containerd::connect_or_start(None, dir.path()).await.unwrap();
    if !first.is_private() {
        // A system containerd answers: connect_or_start used it.
        first.shutdown().await.unwrap();
        return;
    }
    let second = Containerd::connect_or_start(None, dir.path()).await.unwrap();
    assert_eq!(first.address(), second.address());
    let pid: i32 =
        std::fs::read_to_string(dir.path().join("containerd/containerd.pid")).unwrap().trim().parse().unwrap();
    first.shutdown().await.unwrap();
    first.shutdown().await.unwrap();
    assert!(Path::new(&format!("/proc/{pid}")).exists(), "the second user still needs it");
    let store = MemoryStore::new();
    assert_eq!(second.ensure_chain(&store, &[]).await.unwrap(), None);
    let view = second.mount_view(None, None).await.unwrap();
    view.release().await.unwrap();
    second.shutdown().await.unwrap();
    assert!(!dir.path().join("containerd/containerd.pid").exists());
    let status = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(status.is_empty() || status.contains(") Z"), "containerd still runs: {status}");

    // A stale socket from a crashed run does not stop the next start.
    std::fs::write(dir.path().join("containerd/containerd.sock"), "").unwrap();
    let third = Containerd::connect_or_start(None, dir.path()).await.unwrap();
    third.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_network_and_limits() {
    let mut fx = Fixture::new("hostnet").await;
    let parent = fx.base_chain.clone();
    let mut spec = fx.spec(
        "hostnet",
        "cat /etc/resolv.conf > /dev/null && grep -c . /proc/net/dev && cat /sys/fs/cgroup/memory/memory.limit_in_bytes && hostname",
    );
    spec.network = memobuild_worker::containerd::StepNetwork::Host;
    spec.limits = ResourceLimits { memory: Some(256 << 20), cpu_quota: Some(50_000), ..Default::default() };
    let (outcome, stdout, stderr) = fx.run(&parent, &spec).await;
    assert_eq!(outcome.exit_code, 0, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    let host_interfaces = std::fs::read_to_string("/proc/net/dev").unwrap().lines().filter(|l| !l.is_empty()).count();
    assert_eq!(lines[0], host_interfaces.to_string(), "the host's interfaces");
    assert_eq!(lines[1], (256u64 << 20).to_string());
    assert_eq!(lines[2], "memobuild-test");
    // The bind-mount targets runc made (/etc/resolv.conf, /etc/hosts) stay out.
    let entries = fx.entries(outcome.layer.as_ref().unwrap()).await;
    assert!(entries.is_empty(), "{:?}", entries.keys().collect::<Vec<_>>());
    fx.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_of_a_deep_chain_mounts() {
    let mut fx = Fixture::new("deep").await;
    let mut layers = vec![fx.base.clone()];
    for i in 0..80 {
        let mut builder = tar::Builder::new(Vec::new());
        let body = format!("layer {i}");
        let mut header = tar::Header::new_gnu();
        header.set_size(body.len() as u64);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_cksum();
        builder.append_data(&mut header, format!("deep/{i}"), body.as_bytes()).unwrap();
        let tar = builder.into_inner().unwrap();
        let digest = Digest::of(DigestFunction::Sha256, &tar);
        fx.store.put_bytes(&digest, Bytes::from(tar)).await.unwrap();
        layers.push(Layer::uncompressed(digest));
        fx.chains.push(Layer::chain_ids(&layers).last().unwrap().clone());
    }
    let top = fx.ctd.ensure_chain(&fx.store, &layers).await.unwrap().unwrap();
    let view = fx.ctd.mount_view(Some(&top), None).await.unwrap();
    assert_eq!(std::fs::read_to_string(view.path().join("deep/0")).unwrap(), "layer 0");
    assert_eq!(std::fs::read_to_string(view.path().join("deep/79")).unwrap(), "layer 79");
    assert!(view.path().join("marker").exists());
    view.release().await.unwrap();
    fx.finish().await;
}

/// `--userns-remap`: the step's root is a host id of the map; it sees the
/// image's and a cache mount's root-owned files as its own, what it writes
/// to the cache is host root's, and the layer it leaves (owners, set-id
/// bits) is the one the same step leaves without the namespace. A later
/// step and a view of the result see the owners it set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_namespace_maps_root_and_leaves_the_same_layer() {
    use memobuild_worker::containerd::{IdMap, SpecMount};
    const MAP: IdMap = IdMap { uid: 100000, gid: 100000, size: 65536 };
    let mut fx = Fixture::new("userns").await;
    let parent = fx.base_chain.clone();
    let cache = tempfile::tempdir().unwrap();
    std::fs::write(cache.path().join("host-file"), "h").unwrap();
    let script = "mkdir /made && echo x > /made/f && chown 1234:2345 /made/f \
        && cp /bin/busybox /made/suid && chmod 4755 /made/suid && echo more >> /marker \
        && stat -c %u:%g /etc/passwd /cache/host-file && echo c > /cache/c";
    let mut plain = fx.spec("plain", script);
    plain.source_date_epoch = Some(1_700_000_000);
    plain.mounts = vec![SpecMount::Cache { source: cache.path().into(), target: "/cache".into() }];
    let remapped =
        ContainerSpec { id_hint: fx.spec("remapped", "").id_hint, user_namespace: Some(MAP), ..plain.clone() };

    let (outcome, stdout, stderr) = fx.run(&parent, &remapped).await;
    assert_eq!(outcome.exit_code, 0, "{stderr}");
    assert_eq!(stdout, "0:0\n0:0\n", "host root's files are the step's root's");
    let written = std::fs::metadata(cache.path().join("c")).unwrap();
    assert_eq!((written.uid(), written.gid()), (0, 0), "the step's root writes as host root through the map");
    let owners = fx.owners(outcome.layer.as_ref().unwrap()).await;
    assert_eq!(owners["made/f"], (1234, 2345, 0o644));
    assert_eq!(owners["made/suid"], (0, 0, 0o4755), "the setuid bit survives the shift back");
    assert_eq!(owners["made/"].0, 0);

    std::fs::remove_file(cache.path().join("c")).unwrap();
    let (without, _, stderr) = fx.run(&parent, &plain).await;
    assert_eq!(without.exit_code, 0, "{stderr}");
    assert_eq!(outcome.layer, without.layer, "the same layer with and without the namespace");

    let chain = outcome.chain_id.clone().unwrap();
    let mut probe = fx.spec("probe", "cat /proc/self/uid_map; stat -c %u:%g:%a /made/f /made/suid /from/f");
    probe.user_namespace = Some(MAP);
    let view = fx.ctd.mount_view(Some(&chain), Some(MAP)).await.unwrap();
    probe.mounts = vec![SpecMount::View { source: view.path().join("made"), target: "/from".into(), readonly: true }];
    let (seen, stdout, stderr) = fx.run(&chain, &probe).await;
    view.release().await.unwrap();
    assert_eq!(seen.exit_code, 0, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0].split_whitespace().collect::<Vec<_>>(), ["0", "100000", "65536"]);
    assert_eq!(lines[1..], ["1234:2345:644", "0:0:4755", "1234:2345:644"]);

    // A failed step leaves nothing behind either (`run` checks).
    let mut failing = fx.spec("failing", "touch /x; exit 3");
    failing.user_namespace = Some(MAP);
    let (failed, _, _) = fx.run(&parent, &failing).await;
    assert_eq!((failed.exit_code, failed.layer), (3, None));
    fx.finish().await;
}
