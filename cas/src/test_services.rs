//! The real servers the tests use, started by `scripts/services.sh`: an
//! S3-compatible server (moto), PostgreSQL and Redis. A test that needs one
//! that is not there fails and says how to start it; none is ever mocked.
//! Each caller gets its own bucket, schema or key prefix.
#![cfg(test)]
#![allow(clippy::unwrap_used, clippy::panic)]

use std::net::TcpStream;
use std::time::Duration;

use aws_sdk_s3::config::Credentials;

use crate::{S3Settings, S3Store};

fn service(var: &str, default: &str, what: &str) -> String {
    let url = std::env::var(var).unwrap_or_else(|_| default.to_string());
    let address = url.split("://").nth(1).unwrap_or(&url);
    let address = address.rsplit('@').next().unwrap_or(address);
    let address = address.split('/').next().unwrap_or(address);
    let reachable =
        address.parse().ok().and_then(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()).is_some();
    assert!(
        reachable,
        "{what} is not answering at {url} (set {var} or run `bash scripts/services.sh`, which starts it)"
    );
    url
}

pub fn s3_endpoint() -> String {
    service("MEMOBUILD_TEST_S3", "http://127.0.0.1:9455", "the S3-compatible test server (moto)")
}

pub fn postgres_url() -> String {
    service("MEMOBUILD_TEST_POSTGRES", "postgres://postgres:postgres@127.0.0.1:5432/test", "PostgreSQL")
}

pub fn redis_url() -> String {
    service("MEMOBUILD_TEST_REDIS", "redis://127.0.0.1:6379", "Redis")
}

/// A name no other test uses: for buckets, schemas and key prefixes.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

/// A store on a fresh bucket of its own.
pub async fn s3_store(settings: S3Settings) -> S3Store {
    s3_store_on(&unique("t-"), S3Settings { create_bucket: true, ..settings }).await
}

/// A store on `bucket`, created only if `settings` say so.
pub async fn s3_store_on(bucket: &str, settings: S3Settings) -> S3Store {
    let settings =
        S3Settings { endpoint: Some(s3_endpoint()), region: Some("us-east-1".into()), path_style: true, ..settings };
    let credentials = Credentials::new("memobuild-test", "memobuild-test", None, None, "tests");
    S3Store::connect_with(bucket.to_string(), settings, Some(credentials)).await.unwrap()
}

/// A free TCP port on 127.0.0.1 (for a server a test starts itself).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Waits until something accepts connections on `port`.
fn wait_for_port(port: u16, what: &str) {
    for _ in 0..300 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not start on port {port}");
}

/// A server process a test started on a port of its own; killed when dropped.
pub struct OwnServer {
    child: Option<std::process::Child>,
    pub port: u16,
}

impl OwnServer {
    /// Kills the server at once (SIGKILL), as a crash or a pulled plug would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// moto (in memory), as `scripts/install-deps.sh` installs it, on `port`.
pub fn moto_on(port: u16) -> OwnServer {
    let child = std::process::Command::new("/opt/memobuild-moto/bin/moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("moto (run scripts/install-deps.sh)");
    let server = OwnServer { child: Some(child), port };
    wait_for_port(port, "moto");
    server
}

/// A Redis of its own on `port`, keeping nothing on disk.
pub fn redis_on(port: u16) -> OwnServer {
    let child = std::process::Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "no"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server (scripts/services.sh installs Redis)");
    let server = OwnServer { child: Some(child), port };
    wait_for_port(port, "redis-server");
    server
}

/// A PostgreSQL cluster of its own in a temporary directory, run by the
/// `postgres` user through `pg_ctl` (trust authentication, loopback only).
pub struct OwnPostgres {
    dir: tempfile::TempDir,
    pub port: u16,
}

impl OwnPostgres {
    pub fn init() -> OwnPostgres {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("chown").args(["postgres"]).arg(dir.path()).status().unwrap();
        assert!(status.success(), "chown postgres {}", dir.path().display());
        let data = dir.path().join("data");
        let init = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--", "initdb", "-A", "trust", "-U", "postgres", "-D"])
            .arg(&data)
            .output()
            .expect("initdb (PostgreSQL's server binaries)");
        assert!(init.status.success(), "initdb: {}", String::from_utf8_lossy(&init.stderr));
        let server = OwnPostgres { dir, port: free_port() };
        server.start();
        server
    }

    fn pg_ctl(&self, args: &[&str]) {
        let data = self.dir.path().join("data");
        let log = self.dir.path().join("postgres.log");
        let options = format!("-p {} -k {} -c listen_addresses=127.0.0.1", self.port, self.dir.path().display());
        let out = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--", "pg_ctl", "-D"])
            .arg(&data)
            .arg("-l")
            .arg(&log)
            .args(["-o", &options])
            .args(args)
            .output()
            .unwrap();
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(out.status.success(), "pg_ctl {args:?}: {}\n{log}", String::from_utf8_lossy(&out.stderr));
    }

    pub fn start(&self) {
        self.pg_ctl(&["-w", "start"]);
    }

    /// Stops it as an operator's restart does: every session is ended.
    pub fn stop(&self) {
        self.pg_ctl(&["-w", "-m", "fast", "stop"]);
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--", "pg_ctl", "-D"])
            .arg(&data)
            .args(["-m", "immediate", "stop"])
            .output();
    }
}
