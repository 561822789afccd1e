//! The real things an image build test needs: a busybox base image built
//! locally with umoci, a Debian docker-registry on loopback holding it, the
//! memobuild binary, and independent tools (skopeo, umoci, runc) to check
//! what it produced.
#![allow(clippy::unwrap_used, dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Runs a tool and fails the test with its output if it fails.
pub fn sh(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// A registry with `base/busybox:1`, shared by the tests of this binary.
pub struct Fixture {
    pub registry: String,
    pub layout: PathBuf,
    _dir: tempfile::TempDir,
    _registry: Child,
}

pub fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(Fixture::start)
}

impl Fixture {
    fn start() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let layout = dir.path().join("layout");
        let bundle = dir.path().join("bundle");
        let image = format!("{}:busybox", layout.display());
        sh("umoci", &["init", "--layout", layout.to_str().unwrap()]);
        sh("umoci", &["new", "--image", &image]);
        sh("umoci", &["unpack", "--image", &image, bundle.to_str().unwrap()]);
        let rootfs = bundle.join("rootfs");
        for d in ["bin", "etc", "tmp", "root"] {
            std::fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        sh(rootfs.join("bin/busybox").to_str().unwrap(), &["--install", "-s", rootfs.join("bin").to_str().unwrap()]);
        // busybox --install links to the absolute path it ran from: point them at /bin/busybox.
        for entry in std::fs::read_dir(rootfs.join("bin")).unwrap() {
            let path = entry.unwrap().path();
            if path.is_symlink() {
                std::fs::remove_file(&path).unwrap();
                std::os::unix::fs::symlink("/bin/busybox", &path).unwrap();
            }
        }
        std::fs::write(
            rootfs.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
        )
        .unwrap();
        std::fs::write(rootfs.join("etc/group"), "root:x:0:\napp:x:1000:\nnobody:x:65534:\n").unwrap();
        std::fs::write(rootfs.join("etc/lower-file"), "from the base image\n").unwrap();
        sh("chmod", &["1777", rootfs.join("tmp").to_str().unwrap()]);
        sh("umoci", &["repack", "--image", &image, bundle.to_str().unwrap()]);
        sh("umoci", &["config", "--image", &image, "--config.cmd", "/bin/sh", "--config.env", "BASE_VAR=from-base"]);

        let port = free_port();
        let config = dir.path().join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nstorage: {{filesystem: {{rootdirectory: {}}}, delete: {{enabled: true}}}}\nhttp: {{addr: 127.0.0.1:{port}}}\nlog: {{level: warn}}\n",
                dir.path().join("registry-data").display()
            ),
        )
        .unwrap();
        // The fixture lives in a static that is never dropped: a watcher
        // stops the registry when this test process is gone.
        let watched = format!(
            "docker-registry serve '{}' & registry=$!; while kill -0 {} 2>/dev/null && kill -0 $registry 2>/dev/null; do sleep 1; done; kill $registry",
            config.display(),
            std::process::id()
        );
        let registry = Command::new("sh")
            .args(["-c", &watched])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry (apt-get install docker-registry)");
        let address = format!("127.0.0.1:{port}");
        wait_for(&address);
        sh(
            "skopeo",
            &[
                "copy",
                "--dest-tls-verify=false",
                &format!("oci:{image}"),
                &format!("docker://{address}/base/busybox:1"),
            ],
        );
        Fixture { registry: address, layout, _dir: dir, _registry: registry }
    }

    pub fn base(&self) -> String {
        format!("{}/base/busybox:1", self.registry)
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn wait_for(address: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(address).is_err() {
        assert!(Instant::now() < deadline, "registry at {address} did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One project: a context directory and a state dir of its own.
pub struct Project {
    pub dir: tempfile::TempDir,
    pub state: tempfile::TempDir,
}

/// What one `memobuild build` did.
pub struct Build {
    pub output: Output,
    pub events: Vec<Value>,
}

impl Build {
    /// The build's output with the JSON progress events of its stderr.
    pub fn of(output: Output) -> Build {
        let events = String::from_utf8_lossy(&output.stderr)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .collect();
        Build { output, events }
    }

    pub fn ok(&self) -> bool {
        self.output.status.success()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).to_string()
    }

    /// Step ids (`stage.step`) that ran (not cache hits).
    pub fn ran(&self) -> Vec<String> {
        self.step_ids("done")
    }

    pub fn cached(&self) -> Vec<String> {
        self.step_ids("cached")
    }

    fn step_ids(&self, kind: &str) -> Vec<String> {
        let mut ids: Vec<String> = self
            .events
            .iter()
            .filter(|e| e["detail"]["event"] == kind)
            .filter_map(|e| e["detail"]["step"].as_str().map(str::to_string))
            .collect();
        ids.sort();
        ids
    }
}

impl Project {
    pub fn new(files: &[(&str, &str)]) -> Project {
        let project = Project { dir: tempfile::tempdir().unwrap(), state: tempfile::tempdir().unwrap() };
        for (path, content) in files {
            project.write(path, content);
        }
        project
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn state_dir(&self) -> &Path {
        self.state.path()
    }

    pub fn write(&self, path: &str, content: &str) {
        let full = self.dir.path().join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(full, content).unwrap();
    }

    /// `memobuild build --progress json ARGS CONTEXT`.
    pub fn build(&self, args: &[&str]) -> Build {
        self.build_with_env(args, &[])
    }

    /// Builds `-t img:1` with ARGS into an OCI tar in the project and
    /// unpacks it; the build must succeed.
    pub fn built_image(&self, args: &[&str]) -> Unpacked {
        let oci = self.path().join("image.tar");
        let output = format!("type=oci,dest={}", oci.display());
        let mut all = vec!["-t", "img:1", "-o", &output];
        all.extend_from_slice(args);
        let build = self.build(&all);
        assert!(build.ok(), "{}", build.stderr());
        Unpacked::from_oci_tar(&oci, "1")
    }

    pub fn build_with_env(&self, args: &[&str], env: &[(&str, &str)]) -> Build {
        Build::of(self.memobuild("build", args, env))
    }

    /// `memobuild build --progress json ARGS` with `stdin` as its input;
    /// ARGS name the context (`-` or a directory) themselves.
    pub fn build_from_stdin(&self, args: &[&str], stdin: &[u8]) -> Build {
        let mut child = Command::new(env!("CARGO_BIN_EXE_memobuild"))
            .args(["build", "--progress", "json", "--state-dir"])
            .arg(self.state.path())
            .args(args)
            .env_remove("SOURCE_DATE_EPOCH")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        let data = stdin.to_vec();
        let writer = std::thread::spawn(move || std::io::Write::write_all(&mut input, &data));
        let output = child.wait_with_output().unwrap();
        writer.join().unwrap().unwrap();
        Build::of(output)
    }

    pub fn memobuild(&self, command: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_memobuild"));
        cmd.arg(command).args(["--progress", "json", "--state-dir"]).arg(self.state.path()).args(args).arg(self.path());
        if command != "build" {
            cmd = Command::new(env!("CARGO_BIN_EXE_memobuild"));
            cmd.arg(command).arg("--state-dir").arg(self.state.path()).args(args).arg(self.path());
        }
        cmd.env_remove("SOURCE_DATE_EPOCH");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    }
}

/// An OCI layout tar unpacked by umoci into a runtime bundle.
pub struct Unpacked {
    pub dir: tempfile::TempDir,
}

impl Unpacked {
    /// Extracts `oci_tar` and unpacks tag `tag` with umoci.
    pub fn from_oci_tar(oci_tar: &Path, tag: &str) -> Unpacked {
        let dir = tempfile::tempdir().unwrap();
        let layout = dir.path().join("layout");
        std::fs::create_dir_all(&layout).unwrap();
        sh("tar", &["-xf", oci_tar.to_str().unwrap(), "-C", layout.to_str().unwrap()]);
        let unpacked = Unpacked { dir };
        sh(
            "umoci",
            &["unpack", "--image", &format!("{}:{tag}", layout.display()), unpacked.bundle().to_str().unwrap()],
        );
        unpacked
    }

    pub fn bundle(&self) -> PathBuf {
        self.dir.path().join("bundle")
    }

    pub fn rootfs(&self) -> PathBuf {
        self.bundle().join("rootfs")
    }

    pub fn read(&self, path: &str) -> String {
        std::fs::read_to_string(self.rootfs().join(path.trim_start_matches('/')))
            .unwrap_or_else(|e| panic!("{path} in the image: {e}"))
    }

    pub fn exists(&self, path: &str) -> bool {
        self.rootfs().join(path.trim_start_matches('/')).symlink_metadata().is_ok()
    }

    /// Runs the image's own entrypoint/cmd with runc; returns its stdout.
    pub fn run(&self) -> String {
        let config_path = self.bundle().join("config.json");
        let mut config: Value = serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap();
        config["process"]["terminal"] = Value::Bool(false);
        std::fs::write(&config_path, serde_json::to_vec(&config).unwrap()).unwrap();
        let id = format!("memobuild-test-{}", uuid::Uuid::new_v4());
        let out =
            Command::new("runc").args(["run", "--bundle", self.bundle().to_str().unwrap(), &id]).output().unwrap();
        let _ = Command::new("runc").args(["delete", "--force", &id]).output();
        assert!(out.status.success(), "runc run failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).to_string()
    }
}

/// `skopeo inspect` of an image reference (`oci-archive:...`, `docker://...`).
pub fn inspect(reference: &str) -> Value {
    let out = sh("skopeo", &["inspect", "--tls-verify=false", reference]);
    serde_json::from_str(&out).unwrap()
}

/// The raw image config through skopeo.
pub fn inspect_config(reference: &str) -> Value {
    let out = sh("skopeo", &["inspect", "--config", "--tls-verify=false", reference]);
    serde_json::from_str(&out).unwrap()
}
