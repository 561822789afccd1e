//! The secret and SSH mounts of one RUN: secret files and agent sockets in
//! a private (0700) directory, bound read-only into the container, and the
//! environment variables they add. None of it is part of the step's cache
//! key, as in BuildKit. Dropping it removes the files and stops the agent
//! proxies.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use std::collections::BTreeMap;

use memobuild_engine::Secrets;
use memobuild_frontend::Mount;
use memobuild_proto::{Error, Result, ResultExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;

use crate::containerd::SpecMount;

/// Docker's defaults for a secret file and an agent socket.
const SECRET_MODE: u32 = 0o400;
const SSH_SOCKET_MODE: u32 = 0o600;

pub struct RunSecrets<'a> {
    secrets: &'a Secrets,
    /// Agent sockets by `--ssh` id.
    agents: &'a BTreeMap<String, PathBuf>,
    dir: Option<tempfile::TempDir>,
    env: Vec<(String, String)>,
    files: usize,
    ssh_mounts: usize,
    proxies: Vec<JoinHandle<()>>,
}

impl<'a> RunSecrets<'a> {
    pub fn new(secrets: &'a Secrets, agents: &'a BTreeMap<String, PathBuf>) -> Self {
        RunSecrets { secrets, agents, dir: None, env: Vec::new(), files: 0, ssh_mounts: 0, proxies: Vec::new() }
    }

    /// Environment variables to add to the RUN (secrets with `env=`,
    /// `SSH_AUTH_SOCK`).
    pub fn env(&self) -> &[(String, String)] {
        &self.env
    }

    /// `--mount=type=secret`: the file to bind, if any (`env=` alone makes
    /// none; a missing secret is skipped unless `required`).
    pub fn secret(&mut self, mount: &Mount) -> Result<Option<SpecMount>> {
        // The front end defaults the id to the target's basename; with only
        // `env=`, the variable's name is the id.
        let id = mount.id.clone().or_else(|| mount.env.clone()).unwrap_or_default();
        let Some(value) = self.secrets.get(&id) else {
            if mount.required {
                return Err(Error::invalid_argument(format!(
                    "secret {id:?} is required by RUN --mount=type=secret but was not given: pass --secret id={id},src=FILE"
                )));
            }
            return Ok(None);
        };
        if let Some(var) = &mount.env {
            let text = std::str::from_utf8(value).map_err(|_| {
                Error::invalid_argument(format!("secret {id:?} is not UTF-8 text, so it cannot be put in ${var}"))
            })?;
            self.env.push((var.clone(), text.to_string()));
        }
        let target = match (&mount.target, &mount.env) {
            (Some(target), _) => target.clone(),
            (None, Some(_)) => return Ok(None),
            (None, None) => format!("/run/secrets/{id}"),
        };
        self.files += 1;
        let path = self.dir()?.join(format!("secret-{}", self.files));
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?;
            file.write_all(value)?;
            own(&path, mount.mode.unwrap_or(SECRET_MODE), mount.uid, mount.gid)
        };
        write().with_context(|| format!("writing the file of secret {id:?}"))?;
        Ok(Some(SpecMount::Bind { source: path, target, readonly: true }))
    }

    /// `--mount=type=ssh`: a socket that forwards to the agent of the
    /// mount's id, and `SSH_AUTH_SOCK` pointing at it (first mount wins).
    pub fn ssh(&mut self, mount: &Mount) -> Result<Option<SpecMount>> {
        let index = self.ssh_mounts;
        self.ssh_mounts += 1;
        let id = mount.id.as_deref().unwrap_or("default");
        let Some(upstream) = self.agents.get(id) else {
            if mount.required {
                return Err(Error::invalid_argument(format!(
                    "SSH agent {id:?} is required by RUN --mount=type=ssh but was not given: pass --ssh {id}[=SOCKET|KEY]"
                )));
            }
            return Ok(None);
        };
        let upstream = upstream.clone();
        let socket = self.dir()?.join(format!("ssh-{index}.sock"));
        let listener = UnixListener::bind(&socket)
            .and_then(|listener| {
                own(&socket, mount.mode.unwrap_or(SSH_SOCKET_MODE), mount.uid, mount.gid).map(|()| listener)
            })
            .with_context(|| format!("creating the socket of SSH agent {id:?}"))?;
        self.proxies.push(tokio::spawn(forward(listener, upstream)));
        let target = mount.target.clone().unwrap_or_else(|| format!("/run/buildkit/ssh_agent.{index}"));
        if !self.env.iter().any(|(k, _)| k == "SSH_AUTH_SOCK") {
            self.env.push(("SSH_AUTH_SOCK".into(), target.clone()));
        }
        Ok(Some(SpecMount::Bind { source: socket, target, readonly: false }))
    }

    /// The private directory, made on first use: in memory (`/dev/shm`)
    /// where there is one, so secrets are not written to disk.
    fn dir(&mut self) -> Result<PathBuf> {
        if let Some(dir) = &self.dir {
            return Ok(dir.path().to_path_buf());
        }
        let shm = Path::new("/dev/shm");
        let parent = if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() };
        let dir = tempfile::Builder::new()
            .prefix("memobuild-run-")
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir_in(&parent)
            .with_context(|| format!("creating a private directory in {}", parent.display()))?;
        let path = dir.path().to_path_buf();
        self.dir = Some(dir);
        Ok(path)
    }
}

impl Drop for RunSecrets<'_> {
    fn drop(&mut self) {
        for proxy in &self.proxies {
            proxy.abort();
        }
    }
}

/// Sets the mode and owner (uid/gid default to root) of a file or socket.
fn own(path: &Path, mode: u32, uid: Option<u32>, gid: Option<u32>) -> std::io::Result<()> {
    std::os::unix::fs::chown(path, Some(uid.unwrap_or(0)), Some(gid.unwrap_or(0)))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// Passes every connection to `listener` on to the agent at `upstream`.
async fn forward(listener: UnixListener, upstream: PathBuf) {
    while let Ok((mut client, _)) = listener.accept().await {
        let upstream = upstream.clone();
        tokio::spawn(async move {
            match UnixStream::connect(&upstream).await {
                Ok(mut agent) => {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut agent).await;
                }
                Err(e) => tracing::warn!(socket = %upstream.display(), error = %e, "cannot reach the SSH agent"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use memobuild_engine::{SecretSource, SecretSpec};

    use super::super::ssh_agents::{SshAgents, SshSpec};
    use super::*;

    fn mount(spec: &str) -> Mount {
        Mount::parse(spec, &mut |v| Ok(v.to_string())).expect("mount spec")
    }

    fn secrets(dir: &Path) -> Secrets {
        std::fs::write(dir.join("tok"), "s3cr3t").expect("write");
        Secrets::load(&[SecretSpec { id: "tok".into(), source: SecretSource::File(dir.join("tok")) }]).expect("load")
    }

    #[tokio::test]
    async fn secret_files_and_env() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (secrets, agents) = (secrets(dir.path()), BTreeMap::new());
        let mut run = RunSecrets::new(&secrets, &agents);

        let Some(SpecMount::Bind { source, target, readonly }) =
            run.secret(&mount("type=secret,id=tok")).expect("mount")
        else {
            panic!("a file secret is a bind mount");
        };
        assert_eq!((target.as_str(), readonly), ("/run/secrets/tok", true));
        assert_eq!(std::fs::read_to_string(&source).expect("read"), "s3cr3t");
        let meta = std::fs::metadata(&source).expect("meta");
        assert_eq!((meta.mode() & 0o7777, meta.uid()), (0o400, 0));
        let parent = std::fs::metadata(source.parent().expect("dir")).expect("meta");
        assert_eq!(parent.mode() & 0o777, 0o700);

        let custom = run.secret(&mount("type=secret,id=tok,target=/a/b,mode=0444,uid=1000,gid=100")).expect("mount");
        let Some(SpecMount::Bind { source: custom, target, .. }) = custom else { panic!("a bind mount") };
        assert_eq!(target, "/a/b");
        let meta = std::fs::metadata(&custom).expect("meta");
        assert_eq!((meta.mode() & 0o7777, meta.uid(), meta.gid()), (0o444, 1000, 100));

        assert_eq!(run.secret(&mount("type=secret,id=tok,env=TOKEN")).expect("env"), None);
        assert_eq!(run.env(), [("TOKEN".to_string(), "s3cr3t".to_string())]);
        assert_eq!(run.secret(&mount("type=secret,id=other")).expect("optional"), None);
        let e = run.secret(&mount("type=secret,id=other,required")).expect_err("required");
        assert!(e.message().contains("secret \"other\" is required"), "{}", e.message());
        assert!(!e.message().contains("s3cr3t"));

        drop(run);
        assert!(!source.exists(), "the secret files go with the step");
    }

    /// Sends SSH_AGENTC_REQUEST_IDENTITIES; returns the number of keys.
    async fn identities(socket: &Path) -> u32 {
        let mut stream = UnixStream::connect(socket).await.expect("connect");
        stream.write_all(&[0, 0, 0, 1, 11]).await.expect("request");
        let mut header = [0u8; 9];
        stream.read_exact(&mut header).await.expect("answer");
        assert_eq!(header[4], 12, "SSH_AGENT_IDENTITIES_ANSWER");
        u32::from_be_bytes([header[5], header[6], header[7], header[8]])
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn key_files_are_served_through_the_mount_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("id_ed25519");
        let keygen = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key)
            .status()
            .expect("ssh-keygen (openssh-client)");
        assert!(keygen.success());
        let agents = SshAgents::start(&[SshSpec { id: "default".into(), paths: vec![key] }]).expect("agent");
        let secrets = Secrets::default();
        let sockets = agents.sockets();
        let mut run = RunSecrets::new(&secrets, &sockets);

        let Some(SpecMount::Bind { source, target, .. }) = run.ssh(&mount("type=ssh,uid=1000")).expect("ssh") else {
            panic!("an ssh mount is a bind mount");
        };
        assert_eq!(target, "/run/buildkit/ssh_agent.0");
        assert_eq!(run.env(), [("SSH_AUTH_SOCK".to_string(), target)]);
        let meta = std::fs::metadata(&source).expect("meta");
        assert_eq!((meta.mode() & 0o777, meta.uid()), (0o600, 1000));
        assert_eq!(identities(&source).await, 1, "the key file is loaded in the agent");

        assert_eq!(run.ssh(&mount("type=ssh,id=gh")).expect("optional"), None);
        let e = run.ssh(&mount("type=ssh,id=gh,required")).expect_err("required");
        assert!(e.message().contains("SSH agent \"gh\" is required"), "{}", e.message());
    }
}
