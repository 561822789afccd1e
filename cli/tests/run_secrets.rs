//! `--secret` and `--ssh` end to end: a real containerd, a busybox base
//! from a real registry, the image unpacked with umoci, a real ssh-agent.
#![allow(clippy::unwrap_used)]

#[path = "image_build/harness.rs"]
mod harness;

use std::path::Path;
use std::process::{Child, Command, Stdio};

use harness::{fixture, inspect_config, sh, Project, Unpacked};

const VALUE: &str = "hunter2-very-secret";

/// A project whose secret file holds [`VALUE`] (outside the context).
fn project(dockerfile: &str) -> (Project, tempfile::TempDir) {
    let project = Project::new(&[("Dockerfile", &format!("FROM {}\n{dockerfile}", fixture().base()))]);
    let secrets = tempfile::tempdir().unwrap();
    std::fs::write(secrets.path().join("token"), VALUE).unwrap();
    (project, secrets)
}

fn secret_arg(dir: &Path) -> String {
    format!("id=token,src={}", dir.join("token").display())
}

/// Builds into an OCI tar and unpacks it.
fn build_image(project: &Project, args: &[&str], env: &[(&str, &str)]) -> (harness::Build, Option<Unpacked>) {
    let out = project.path().join("image.tar");
    let mut all = vec!["-t", "img:1", "-o"];
    let dest = format!("type=oci,dest={}", out.display());
    all.push(&dest);
    all.extend_from_slice(args);
    let build = project.build_with_env(&all, env);
    let image = build.ok().then(|| Unpacked::from_oci_tar(&out, "1"));
    (build, image)
}

/// Every regular file under `root` whose content holds `needle`.
fn files_containing(root: &Path, needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = path.symlink_metadata().unwrap();
            if meta.is_dir() {
                dirs.push(path);
            } else if meta.is_file()
                && std::fs::read(&path).unwrap().windows(needle.len()).any(|w| w == needle.as_bytes())
            {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

#[test]
fn file_secret_content_mode_and_owner_arrive() {
    let (project, secrets) = project(
        "RUN --mount=type=secret,id=token cat /run/secrets/token > /copied && stat -c '%a %u:%g' /run/secrets/token > /default.stat\n\
         RUN --mount=type=secret,id=token,target=/etc/app-token,mode=0440,uid=1000,gid=1000 \
             stat -c '%a %u:%g' /etc/app-token > /custom.stat && (echo x > /etc/app-token || echo read-only > /write.txt)\n",
    );
    let (build, image) = build_image(&project, &["--secret", &secret_arg(secrets.path())], &[]);
    assert!(build.ok(), "{}", build.stderr());
    let image = image.unwrap();
    assert_eq!(image.read("/copied"), VALUE, "the RUN read the secret");
    assert_eq!(image.read("/default.stat"), "400 0:0\n");
    assert_eq!(image.read("/custom.stat"), "440 1000:1000\n");
    assert_eq!(image.read("/write.txt"), "read-only\n");
    assert!(!image.exists("/etc/app-token"), "the mount target is not in the layer");
    assert!(!image.exists("/run"), "nor the directories made for /run/secrets/token");
}

#[test]
fn secret_leaves_no_trace_in_image_output_or_records() {
    let (project, secrets) =
        project("RUN --mount=type=secret,id=token,required md5sum /run/secrets/token | cut -d' ' -f1 > /token.md5\n");
    let (build, image) = build_image(&project, &["--secret", &secret_arg(secrets.path())], &[]);
    assert!(build.ok(), "{}", build.stderr());
    let image = image.unwrap();
    let want = sh("md5sum", &[secrets.path().join("token").to_str().unwrap()]);
    assert_eq!(image.read("/token.md5").trim(), want.split(' ').next().unwrap(), "the RUN read the secret");
    assert!(!image.exists("/run/secrets/token"));
    assert!(!image.exists("/run"));
    assert_eq!(files_containing(&image.rootfs(), VALUE), Vec::<String>::new());
    let config = inspect_config(&format!("oci-archive:{}:1", project.path().join("image.tar").display()));
    assert!(!config.to_string().contains(VALUE), "{config}");
    assert!(!build.stderr().contains(VALUE));
    assert!(files_containing(project.state.path(), VALUE).is_empty(), "nothing in the state dir holds the value");
    let explain = project.memobuild("explain-cache", &[], &[]);
    assert!(explain.status.success());
    assert!(!String::from_utf8_lossy(&explain.stdout).contains(VALUE));
}

#[test]
fn env_secrets_reach_only_their_run() {
    let (project, _) = project(
        "RUN --mount=type=secret,id=api,env=API echo \"$API\" > /api.txt\n\
         RUN --mount=type=secret,id=API_KEY,env=KEY,target=/run/secrets/key echo \"$KEY\" > /both.txt && cat /run/secrets/key >> /both.txt\n\
         RUN echo \"after:${API:-unset}:${KEY:-unset}\" > /after.txt\n",
    );
    let env = [("MEMOBUILD_TEST_API", "from-env-var"), ("API_KEY", "bare-id")];
    let (build, image) =
        build_image(&project, &["--secret", "id=api,env=MEMOBUILD_TEST_API", "--secret", "id=API_KEY"], &env);
    assert!(build.ok(), "{}", build.stderr());
    let image = image.unwrap();
    assert_eq!(image.read("/api.txt"), "from-env-var\n");
    assert_eq!(image.read("/both.txt"), "bare-id\nbare-id");
    assert_eq!(image.read("/after.txt"), "after:unset:unset\n");
    let config = inspect_config(&format!("oci-archive:{}:1", project.path().join("image.tar").display()));
    assert!(!config.to_string().contains("from-env-var"), "{config}");

    let unset = project.build(&["--secret", "id=NOT_SET_ANYWHERE_42"]);
    assert!(!unset.ok());
    assert!(unset.stderr().contains("id=NOT_SET_ANYWHERE_42"), "{}", unset.stderr());
}

#[test]
fn missing_secret_fails_when_required_and_is_skipped_otherwise() {
    let (project, _) = project(
        "RUN --mount=type=secret,id=token test ! -e /run/secrets/token && echo skipped > /optional.txt\n\
         RUN --mount=type=secret,id=npmrc,required=true cat /run/secrets/npmrc\n",
    );
    let build = project.build(&[]);
    assert!(!build.ok());
    assert_ne!(build.output.status.code(), Some(0));
    let stderr = build.stderr();
    assert!(stderr.contains("secret \"npmrc\" is required"), "{stderr}");
    assert!(stderr.contains("Dockerfile:3"), "names the step: {stderr}");
    assert_eq!(build.ran(), ["0.1"], "the optional secret's step ran without it");
}

/// As BuildKit: a secret's value is not part of the step's cache key, so a
/// new value does not re-run the step (use --no-cache for that).
#[test]
fn changing_a_secret_value_keeps_the_step_cached() {
    let (project, secrets) = project("RUN --mount=type=secret,id=token wc -c < /run/secrets/token > /size\n");
    let arg = secret_arg(secrets.path());
    let first = project.build(&["--secret", &arg]);
    assert!(first.ok(), "{}", first.stderr());
    assert_eq!(first.ran(), ["0.1"]);
    std::fs::write(secrets.path().join("token"), "another value entirely").unwrap();
    let second = project.build(&["--secret", &arg]);
    assert!(second.ok(), "{}", second.stderr());
    assert_eq!(second.cached(), ["0.1"]);
    assert!(second.ran().is_empty());
}

/// An `ssh-agent -D` of the test's own, killed when dropped.
struct Agent {
    child: Child,
    dir: tempfile::TempDir,
}

impl Agent {
    fn start() -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let child = Command::new("ssh-agent")
            .args(["-D", "-a", socket.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ssh-agent (apt-get install openssh-client)");
        // The socket exists from `bind` on; connections succeed from `listen` on.
        let listening = || std::os::unix::net::UnixStream::connect(&socket).is_ok();
        for _ in 0..500 {
            if listening() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(listening(), "ssh-agent does not listen on {}", socket.display());
        Agent { child, dir }
    }

    fn socket(&self) -> String {
        self.dir.path().join("agent.sock").display().to_string()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn ssh_agents_are_forwarded_to_the_run() {
    let agent = Agent::start();
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("id_ed25519");
    sh("ssh-keygen", &["-q", "-t", "ed25519", "-N", "", "-f", key.to_str().unwrap()]);
    let (project, _) = project(
        "RUN --mount=type=ssh test -S \"$SSH_AUTH_SOCK\" && echo \"$SSH_AUTH_SOCK\" > /sock.txt\n\
         RUN --mount=type=ssh,id=deploy,target=/tmp/agent.sock,uid=1000 stat -c '%F %u' /tmp/agent.sock > /deploy.txt\n\
         RUN --mount=type=ssh,id=absent test -z \"$SSH_AUTH_SOCK\" && echo skipped > /absent.txt\n",
    );
    let deploy = format!("deploy={}", key.display());
    let (build, image) =
        build_image(&project, &["--ssh", "default", "--ssh", &deploy], &[("SSH_AUTH_SOCK", &agent.socket())]);
    assert!(build.ok(), "{}", build.stderr());
    let image = image.unwrap();
    assert_eq!(image.read("/sock.txt"), "/run/buildkit/ssh_agent.0\n");
    assert_eq!(image.read("/deploy.txt"), "socket 1000\n");
    assert_eq!(image.read("/absent.txt"), "skipped\n");
    assert!(!image.exists("/run/buildkit"));
    assert!(!image.exists("/tmp/agent.sock"));

    let required = Project::new(&[(
        "Dockerfile",
        &format!("FROM {}\nRUN --mount=type=ssh,id=gh,required true\n", fixture().base()),
    )]);
    let failed = required.build_with_env(&["--ssh", "default"], &[("SSH_AUTH_SOCK", &agent.socket())]);
    assert!(!failed.ok());
    assert!(failed.stderr().contains("SSH agent \"gh\" is required"), "{}", failed.stderr());
}

/// This host's `ssh-add`, the libraries it loads and its loader, copied to
/// `dir` so that a busybox step can run it: `dir/ld.so --library-path
/// dir/lib dir/ssh-add`.
fn ssh_add_bundle(dir: &Path) {
    std::fs::create_dir_all(dir.join("lib")).unwrap();
    let ssh_add = sh("sh", &["-c", "command -v ssh-add"]);
    let ssh_add = ssh_add.trim();
    std::fs::copy(ssh_add, dir.join("ssh-add")).unwrap();
    for line in sh("ldd", &[ssh_add]).lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [name, "=>", path, ..] if path.starts_with('/') => {
                std::fs::copy(path, dir.join("lib").join(name)).unwrap();
            }
            [loader, ..] if loader.starts_with('/') => {
                std::fs::copy(loader, dir.join("ld.so")).unwrap();
            }
            _ => {}
        }
    }
    assert!(dir.join("ld.so").exists(), "no loader in ldd's output for {ssh_add}");
}

/// The SHA256 fingerprint of the key whose private file is `key`.
fn fingerprint(key: &Path) -> String {
    let public = format!("{}.pub", key.display());
    let listed = sh("ssh-keygen", &["-l", "-f", &public]);
    listed.split_whitespace().nth(1).unwrap().to_string()
}

#[test]
fn ssh_add_in_the_run_lists_the_forwarded_keys() {
    let agent = Agent::start();
    let keys = tempfile::tempdir().unwrap();
    let (agent_key, file_key) = (keys.path().join("agent_key"), keys.path().join("file_key"));
    for key in [&agent_key, &file_key] {
        sh("ssh-keygen", &["-q", "-t", "ed25519", "-N", "", "-f", key.to_str().unwrap()]);
    }
    let added = Command::new("ssh-add")
        .args(["-q", agent_key.to_str().unwrap()])
        .env("SSH_AUTH_SOCK", agent.socket())
        .status()
        .unwrap();
    assert!(added.success(), "ssh-add to the test's agent");
    let list = "/tools/ld.so --library-path /tools/lib /tools/ssh-add -l";
    let (project, _) = project(&format!(
        "RUN --mount=type=bind,source=tools,target=/tools --mount=type=ssh {list} > /default-keys\n\
         RUN --mount=type=bind,source=tools,target=/tools --mount=type=ssh,id=deploy {list} > /deploy-keys\n"
    ));
    ssh_add_bundle(&project.path().join("tools"));
    let deploy = format!("deploy={}", file_key.display());
    let (build, image) =
        build_image(&project, &["--ssh", "default", "--ssh", &deploy], &[("SSH_AUTH_SOCK", &agent.socket())]);
    assert!(build.ok(), "{}", build.stderr());
    let image = image.unwrap();
    let (from_agent, from_file) = (fingerprint(&agent_key), fingerprint(&file_key));
    let default_keys = image.read("/default-keys");
    assert!(default_keys.contains(&from_agent) && !default_keys.contains(&from_file), "{default_keys}");
    let deploy_keys = image.read("/deploy-keys");
    assert!(deploy_keys.contains(&from_file) && !deploy_keys.contains(&from_agent), "{deploy_keys}");
}
