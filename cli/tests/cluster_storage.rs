//! The cluster storage end to end (issue #13): `memobuild cas` processes on
//! `deploy/config/cluster.toml`, filled from the environment as a replica
//! is, against the real S3-compatible server (moto), PostgreSQL and Redis
//! that `scripts/services.sh` starts. Each test has its own buckets,
//! PostgreSQL schema and Redis key prefix.
#![allow(clippy::unwrap_used)]

#[path = "image_build/harness.rs"]
mod harness;

#[path = "common/process_cluster.rs"]
mod process_cluster;

mod remote_build {
    pub mod cli_run;
    pub mod progress_log;
}

use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::Bytes;
use harness::{fixture, Project, Unpacked};
use memobuild_cas::{BlobStore, GrpcStore};
use memobuild_proto::{Digest, DigestFunction};
use process_cluster::{CasConfig, ClusterOptions, ProcessCluster};
use remote_build::cli_run::{CliOutput, Client};

fn service(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_string())
}

fn s3_endpoint() -> String {
    service("MEMOBUILD_TEST_S3", "http://127.0.0.1:9455")
}

fn postgres_url() -> String {
    service("MEMOBUILD_TEST_POSTGRES", "postgres://postgres:postgres@127.0.0.1:5432/test")
}

fn redis_url() -> String {
    service("MEMOBUILD_TEST_REDIS", "redis://127.0.0.1:6379")
}

fn unique() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// What the replicas of one test share: two buckets (two shards), a
/// PostgreSQL schema and a Redis key prefix; dropped (schema, keys) when done.
struct SharedStorage {
    buckets: Vec<String>,
    schema: String,
    redis_prefix: String,
    dir: tempfile::TempDir,
}

impl SharedStorage {
    fn new() -> SharedStorage {
        let id = unique();
        SharedStorage {
            buckets: vec![format!("mb-a-{id}"), format!("mb-b-{id}")],
            schema: format!("cluster_storage_{id}"),
            redis_prefix: format!("memobuild-test:{id}:"),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// deploy/config/cluster.toml for replica `name`: its local tier under a
    /// directory of its own, the Redis keys under this test's prefix, and
    /// the environment its `${NAME}`s read.
    fn replica(&self, name: &str) -> CasConfig {
        let local = self.dir.path().join(name);
        std::fs::create_dir_all(&local).unwrap();
        let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config/cluster.toml");
        let text = std::fs::read_to_string(deploy).unwrap();
        assert!(text.contains("/var/cache/memobuild") && text.contains("\"memobuild:cas:\""), "{text}");
        let text = text
            .replace("/var/cache/memobuild", local.to_str().unwrap())
            .replace("\"memobuild:cas:\"", &format!("{:?}", self.redis_prefix));
        let path: PathBuf = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        let env = [
            ("S3_ENDPOINT", s3_endpoint()),
            ("S3_BUCKETS", self.buckets.join(",")),
            ("DATABASE_URL", postgres_url()),
            ("DATABASE_SCHEMA", self.schema.clone()),
            ("REDIS_URL", redis_url()),
            ("AWS_ACCESS_KEY_ID", "memobuild-test".to_string()),
            ("AWS_SECRET_ACCESS_KEY", "memobuild-test".to_string()),
            ("AWS_REGION", "us-east-1".to_string()),
        ];
        CasConfig { path, env: env.into_iter().map(|(k, v)| (k.to_string(), v)).collect() }
    }

    /// Deletes every Redis key of this test, as a flush of its key space
    /// would (FLUSHALL itself would empty other tests' indexes too);
    /// returns how many there were.
    fn flush_redis(&self) -> usize {
        let script = r#"redis-cli -u "$1" --scan --pattern "$2*" | { n=0; while read -r key; do redis-cli -u "$1" del "$key" >/dev/null; n=$((n+1)); done; echo $n; }"#;
        let out = Command::new("sh")
            .args(["-c", script, "flush", &redis_url(), &self.redis_prefix])
            .output()
            .expect("redis-cli (scripts/services.sh installs Redis)");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    }
}

impl SharedStorage {
    /// Rows of the CAS's pin table: blobs someone holds from eviction.
    fn pins(&self) -> usize {
        let query = format!("SELECT count(*) FROM {}.blob_pins", self.schema);
        let out = Command::new("psql").args([&postgres_url(), "-tAc", &query]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    }
}

impl Drop for SharedStorage {
    fn drop(&mut self) {
        self.flush_redis();
        let _ = Command::new("psql")
            .args([&postgres_url(), "-qc", &format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema)])
            .output();
    }
}

fn blob(len: usize, seed: u8) -> (Digest, Bytes) {
    let data: Bytes = (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect();
    (Digest::of(DigestFunction::Sha256, &data), data)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_cas_replicas_on_one_cluster_config_share_their_blobs() {
    let storage = SharedStorage::new();
    let logs = storage.dir.path();
    // Both start at once: they create the schema and the buckets together.
    let (a, b) = (storage.replica("a"), storage.replica("b"));
    let (first, second) = std::thread::scope(|s| {
        let first = s.spawn(|| a.spawn(logs.join("a.log"), None));
        let second = s.spawn(|| b.spawn(logs.join("b.log"), None));
        (first.join().unwrap(), second.join().unwrap())
    });
    let ((_a, a_address), (_b, b_address)) = (first, second);
    let a = GrpcStore::connect(&format!("grpc://{a_address}"), "").unwrap();
    let b = GrpcStore::connect(&format!("grpc://{b_address}"), "").unwrap();

    // A small blob, and one past the multipart threshold (16 MiB).
    let (small, small_data) = blob(1000, 1);
    let (large, large_data) = blob(20 << 20, 2);
    let (never, _) = blob(77, 3);
    a.put_bytes(&small, small_data.clone()).await.unwrap();
    a.put_bytes(&large, large_data.clone()).await.unwrap();
    let asked = [small, large, never];
    assert_eq!(b.find_missing(&asked).await.unwrap(), vec![never], "B finds what A stored, and only that");
    assert_eq!(b.get_bytes(&small).await.unwrap(), small_data, "B reads A's blob");
    assert!(b.get_bytes(&large).await.unwrap() == large_data, "B reads A's 20 MiB blob whole");

    // Without the Redis index, PostgreSQL still knows; and B's writes reach A.
    assert!(storage.flush_redis() > 0, "the replicas kept an index in Redis");
    assert_eq!(b.find_missing(&asked).await.unwrap(), vec![never], "after a Redis flush");
    let (from_b, from_b_data) = blob(5000, 4);
    b.put_bytes(&from_b, from_b_data.clone()).await.unwrap();
    assert!(a.find_missing(&[from_b, small]).await.unwrap().is_empty());
    assert_eq!(a.get_bytes(&from_b).await.unwrap(), from_b_data, "A reads B's blob");
}

fn ran_and_cached(build: &CliOutput) -> (usize, usize) {
    build.assert_ok();
    build.progress().summary().unwrap_or_else(|| panic!("no summary:\n{}", build.stderr))
}

#[test]
fn a_remote_build_on_cluster_storage_stays_cached_when_redis_is_flushed() {
    let storage = SharedStorage::new();
    let cluster = ProcessCluster::start(ClusterOptions {
        workers: 1,
        cas_config: Some(storage.replica("cas")),
        ..ClusterOptions::default()
    });
    let client = Client::new(&cluster.endpoint());
    let marker = unique();
    let project = Project::new(&[
        (
            "Dockerfile",
            &format!(
                "FROM {}\nWORKDIR /app\nCOPY app.txt ./\nRUN echo {marker} > built.txt && cat app.txt >> built.txt\n",
                fixture().base()
            ),
        ),
        ("app.txt", "the app\n"),
    ]);
    let out = tempfile::tempdir().unwrap();
    let tar = out.path().join("image.tar");
    let dest = format!("type=oci,dest={}", tar.display());
    // The same image each time, its creation time included.
    let epoch = [("SOURCE_DATE_EPOCH", "1700000000")];

    let first = client.build(project.path(), &["-t", "app:1", "-o", &dest], &epoch);
    let (ran, _) = ran_and_cached(&first);
    assert!(ran > 0, "the cluster had not built this before:\n{}", first.stderr);
    let second = client.build(project.path(), &["-t", "app:1"], &epoch);
    let (ran, cached) = ran_and_cached(&second);
    assert_eq!(ran, 0, "a second build runs nothing:\n{}", second.stderr);
    assert!(cached > 0, "{}", second.stderr);

    assert!(storage.flush_redis() > 0, "the CAS kept an index in Redis");
    std::fs::remove_file(&tar).unwrap();
    let third = client.build(project.path(), &["-t", "app:1", "-o", &dest], &epoch);
    let (ran, cached) = ran_and_cached(&third);
    assert_eq!(ran, 0, "after a Redis flush the build is still all cached:\n{}", third.stderr);
    assert!(cached > 0, "{}", third.stderr);
    assert_eq!(third.printed(), first.printed(), "the same image");
    let image = Unpacked::from_oci_tar(&tar, "1");
    assert_eq!(image.read("/app/built.txt"), format!("{marker}\nthe app\n"), "every blob is still there");

    // Flushed while a step runs: the build succeeds, and then it is cached.
    let project = Project::new(&[(
        "Dockerfile",
        &format!("FROM {}\nRUN echo {marker} > /a.txt\nRUN sleep 2 && cat /a.txt > /b.txt\n", fixture().base()),
    )]);
    let mut running = client.start_build(project.path(), &["-t", "app:2"], &epoch);
    running
        .wait_for("the sleep step running", |p| p.step("RUN sleep 2").filter(|s| !s.workers().is_empty()).map(|_| ()));
    assert!(storage.pins() > 0, "the scheduler pins what the running step needs in the CAS's PostgreSQL");
    storage.flush_redis();
    let during = running.finish();
    let (ran, _) = ran_and_cached(&during);
    assert!(ran > 0, "{}", during.stderr);
    std::fs::remove_file(&tar).unwrap();
    let after = client.build(project.path(), &["-t", "app:2", "-o", &dest], &epoch);
    let (ran, cached) = ran_and_cached(&after);
    assert_eq!(ran, 0, "a build flushed mid-way left everything cached:\n{}", after.stderr);
    assert!(cached > 0, "{}", after.stderr);
    assert_eq!(Unpacked::from_oci_tar(&tar, "2").read("/b.txt"), format!("{marker}\n"));
}
