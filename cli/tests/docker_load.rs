//! `memobuild build --load` end to end: the image goes into a real Docker
//! daemon (a private dockerd this test starts), and is checked with the
//! docker CLI.
#![allow(clippy::unwrap_used)]

#[path = "image_build/harness.rs"]
mod harness;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use harness::{fixture, Project};
use serde_json::Value;

/// A dockerd of this test's own, with its managed containerd; stopped with
/// SIGTERM (which also stops that containerd and unmounts its data root)
/// when dropped, also when the test fails.
struct Dockerd {
    child: Child,
    host: String,
    dir: tempfile::TempDir,
    _run: tempfile::TempDir,
}

impl Dockerd {
    fn start() -> Dockerd {
        let dir = tempfile::tempdir().unwrap();
        // containerd's socket goes under the exec root: keep its path short.
        let run = tempfile::Builder::new().prefix("mb-dockerd").tempdir_in("/tmp").unwrap();
        let host = format!("unix://{}/docker.sock", run.path().display());
        let log = std::fs::File::create(dir.path().join("dockerd.log")).unwrap();
        let child = Command::new("dockerd")
            .arg("--data-root")
            .arg(dir.path().join("data"))
            .arg("--exec-root")
            .arg(run.path().join("exec"))
            .arg("--pidfile")
            .arg(dir.path().join("pid"))
            .args(["--host", &host, "--bridge=none", "--iptables=false", "--ip-masq=false"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("dockerd: {e} (install docker.io with scripts/install-deps.sh)"));
        let mut dockerd = Dockerd { child, host, dir, _run: run };
        dockerd.wait_ready();
        dockerd
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let version = Command::new("docker")
                .args(["version", "--format", "{{.Server.Version}}"])
                .env("DOCKER_HOST", &self.host)
                .output()
                .unwrap_or_else(|e| panic!("docker CLI: {e} (install docker.io with scripts/install-deps.sh)"));
            if version.status.success() {
                return;
            }
            let exited = self.child.try_wait().unwrap();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "dockerd did not answer `docker version` (exit: {exited:?}):\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }

    /// Runs the docker CLI against this daemon; fails the test if it fails.
    fn docker(&self, args: &[&str]) -> String {
        let out = Command::new("docker").args(args).env("DOCKER_HOST", &self.host).output().unwrap();
        assert!(
            out.status.success(),
            "docker {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let stopped = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        if !matches!(stopped, Ok(s) if s.success()) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

#[test]
fn load_puts_the_image_into_docker() {
    let docker = Dockerd::start();
    let project = Project::new(&[(
        "Dockerfile",
        &format!(
            "FROM {}\nENV APP_MODE=loaded\nLABEL org.example.loaded=yes\nRUN echo built by memobuild > /greeting\nCMD [\"cat\", \"/greeting\"]\n",
            fixture().base()
        ),
    )]);

    let build = project.build_with_env(&["-t", "loaded/app:1", "--load"], &[("DOCKER_HOST", &docker.host)]);
    assert!(build.ok(), "{}", build.stderr());

    let inspect: Value = serde_json::from_str(&docker.docker(&["image", "inspect", "loaded/app:1"])).unwrap();
    let config = &inspect[0]["Config"];
    assert_eq!(config["Cmd"], serde_json::json!(["cat", "/greeting"]), "{config}");
    let env: Vec<&str> = config["Env"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(env.contains(&"APP_MODE=loaded") && env.contains(&"BASE_VAR=from-base"), "{env:?}");
    assert_eq!(config["Labels"]["org.example.loaded"], "yes", "{config}");

    let container = docker.docker(&["create", "--network", "none", "loaded/app:1"]);
    let copied = docker.dir.path().join("greeting");
    docker.docker(&["cp", &format!("{container}:/greeting"), copied.to_str().unwrap()]);
    docker.docker(&["rm", &container]);
    assert_eq!(std::fs::read_to_string(Path::new(&copied)).unwrap(), "built by memobuild\n");
}
