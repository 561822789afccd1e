//! `--push` of an image its tag already names (issue #18): one registry
//! request, a HEAD of the manifest; a changed image is pushed in full.
//! Counted in the access log of a registry of the test's own.
#![allow(clippy::unwrap_used)]

#[path = "image_build/harness.rs"]
mod harness;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use harness::{fixture, free_port, inspect, wait_for, Project};

/// A docker-registry whose access log (one line a request) goes to a file.
struct LoggedRegistry {
    address: String,
    log: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

impl LoggedRegistry {
    fn start() -> LoggedRegistry {
        let dir = tempfile::tempdir().unwrap();
        let address = format!("127.0.0.1:{}", free_port());
        let config = dir.path().join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nstorage: {{filesystem: {{rootdirectory: {}}}}}\nhttp: {{addr: {address}}}\nlog: {{level: error}}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let log = dir.path().join("access.log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry (apt-get install docker-registry)");
        wait_for(&address);
        LoggedRegistry { address, log, child, _dir: dir }
    }

    /// The requests logged so far (`HEAD /v2/...`).
    fn requests(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap()
            .lines()
            .filter_map(|l| l.split('"').nth(1))
            .map(|r| r.trim_end_matches(" HTTP/1.1").to_string())
            .collect()
    }
}

impl Drop for LoggedRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn pushing_an_unchanged_image_costs_one_request() {
    let registry = LoggedRegistry::start();
    let project = Project::new(&[
        ("Dockerfile", &format!("FROM {}\nCOPY app.txt /app/\nRUN cat /app/app.txt > /copy\n", fixture().base())),
        ("app.txt", "one\n"),
    ]);
    let tag = format!("{}/demo/app:1", registry.address);
    let push = || {
        let build = project.build(&["-t", &tag, "--push"]);
        assert!(build.ok(), "{}", build.stderr());
        String::from_utf8_lossy(&build.output.stdout).trim().to_string()
    };

    let first = push();
    assert_eq!(inspect(&format!("docker://{tag}"))["Digest"], first.as_str());
    let before = registry.requests().len();
    assert_eq!(push(), first, "an unchanged build is the same image");
    // The access log is written as requests end; the build has ended.
    assert_eq!(registry.requests()[before..], ["HEAD /v2/demo/app/manifests/1".to_string()]);

    project.write("app.txt", "two\n");
    let before = registry.requests().len();
    let changed = push();
    assert_ne!(changed, first);
    let requests = registry.requests()[before..].to_vec();
    assert!(requests.iter().any(|r| r.starts_with("PUT /v2/demo/app/manifests/1")), "{requests:?}");
    assert_eq!(inspect(&format!("docker://{tag}"))["Digest"], changed.as_str());
}
