//! `--ssh`: the SSH agents a RUN may use through `--mount=type=ssh`, given
//! as in `docker buildx build`. An agent socket is forwarded as it is; key
//! files are loaded into an `ssh-agent` of the build's own, stopped when the
//! build ends.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use memobuild_proto::{Error, Result, ResultExt};

/// How long a private ssh-agent may take to listen on its socket.
const AGENT_START_TIMEOUT: Duration = Duration::from_secs(10);

/// One `--ssh` flag: `default`, `ID`, or `ID=SOCKET` / `ID=KEY[,KEY...]`.
/// Without paths, `$SSH_AUTH_SOCK` is used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SshSpec {
    pub id: String,
    pub paths: Vec<PathBuf>,
}

impl FromStr for SshSpec {
    type Err = String;

    fn from_str(spec: &str) -> std::result::Result<SshSpec, String> {
        let (id, paths) = match spec.split_once('=') {
            Some((id, paths)) => (id, paths.split(',').filter(|p| !p.is_empty()).map(PathBuf::from).collect()),
            None => (spec, Vec::new()),
        };
        if id.is_empty() {
            return Err(format!("--ssh {spec:?}: expected default or ID[=SOCKET|KEY[,KEY...]]"));
        }
        Ok(SshSpec { id: id.to_string(), paths })
    }
}

/// The agent socket of every `--ssh` id.
#[derive(Default)]
pub struct SshAgents {
    sockets: HashMap<String, PathBuf>,
    /// The agents this build started for key files.
    started: Vec<PrivateAgent>,
}

impl SshAgents {
    /// Checks every `--ssh` and starts an agent for those given key files.
    pub fn start(specs: &[SshSpec]) -> Result<SshAgents> {
        let mut agents = SshAgents::default();
        for spec in specs {
            let paths = match spec.paths.as_slice() {
                [] => match std::env::var_os("SSH_AUTH_SOCK").filter(|s| !s.is_empty()) {
                    Some(socket) => vec![PathBuf::from(socket)],
                    None => {
                        return Err(Error::invalid_argument(format!(
                            "--ssh {}: no socket or key given and SSH_AUTH_SOCK is not set",
                            spec.id
                        )))
                    }
                },
                paths => paths.to_vec(),
            };
            let mut sockets = 0;
            for path in &paths {
                let meta = std::fs::metadata(path).with_context(|| format!("--ssh {}: {}", spec.id, path.display()))?;
                if meta.file_type().is_socket() {
                    sockets += 1;
                }
            }
            let socket = match (sockets, paths.as_slice()) {
                (0, keys) => {
                    let agent = PrivateAgent::start(&spec.id, keys)?;
                    let socket = agent.socket.clone();
                    agents.started.push(agent);
                    socket
                }
                (1, [socket]) => socket.clone(),
                _ => {
                    return Err(Error::invalid_argument(format!(
                        "--ssh {}: give one agent socket or key files, not several sockets or both",
                        spec.id
                    )))
                }
            };
            if agents.sockets.insert(spec.id.clone(), socket).is_some() {
                return Err(Error::invalid_argument(format!("--ssh {} is given more than once", spec.id)));
            }
        }
        Ok(agents)
    }

    /// The agent socket of every id on this host.
    pub fn sockets(&self) -> BTreeMap<String, PathBuf> {
        self.sockets.iter().map(|(id, path)| (id.clone(), path.clone())).collect()
    }
}

/// An `ssh-agent -D` this build started, killed when dropped.
struct PrivateAgent {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl PrivateAgent {
    fn start(id: &str, keys: &[PathBuf]) -> Result<PrivateAgent> {
        let dir = tempfile::Builder::new()
            .prefix("memobuild-ssh-")
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir()
            .context("creating a directory for ssh-agent")?;
        let socket = dir.path().join("agent.sock");
        let child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Error::invalid_argument(format!(
                    "--ssh {id}: {} is a key file, which needs ssh-agent to serve it, but ssh-agent is not \
                     installed (install openssh-client, or pass an agent socket)",
                    keys.first().map(|k| k.display().to_string()).unwrap_or_default()
                )),
                _ => Error::invalid_argument(format!("--ssh {id}: starting ssh-agent: {e}")),
            })?;
        let mut agent = PrivateAgent { child, socket, _dir: dir };
        let deadline = Instant::now() + AGENT_START_TIMEOUT;
        // Its socket exists from `bind` on, but refuses connections until `listen`.
        while std::os::unix::net::UnixStream::connect(&agent.socket).is_err() {
            if let Some(status) = agent.child.try_wait().context("waiting for ssh-agent")? {
                return Err(Error::invalid_argument(format!(
                    "--ssh {id}: ssh-agent exited ({status}) before listening on its socket"
                )));
            }
            if Instant::now() > deadline {
                return Err(Error::invalid_argument(format!(
                    "--ssh {id}: ssh-agent did not listen on its socket within {AGENT_START_TIMEOUT:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let added = Command::new("ssh-add")
            .args(keys)
            .env("SSH_AUTH_SOCK", &agent.socket)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("--ssh {id}: running ssh-add"))?;
        if !added.status.success() {
            return Err(Error::invalid_argument(format!(
                "--ssh {id}: ssh-add could not load {}: {}",
                keys.iter().map(|k| k.display().to_string()).collect::<Vec<_>>().join(", "),
                String::from_utf8_lossy(&added.stderr).trim()
            )));
        }
        Ok(agent)
    }
}

impl Drop for PrivateAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buildx_forms() {
        let spec = |s: &str| s.parse::<SshSpec>();
        assert_eq!(spec("default"), Ok(SshSpec { id: "default".into(), paths: vec![] }));
        assert_eq!(spec("gh=/k/a,/k/b"), Ok(SshSpec { id: "gh".into(), paths: vec!["/k/a".into(), "/k/b".into()] }));
        assert!(spec("=/k/a").is_err());
    }

    #[test]
    fn a_missing_socket_or_key_is_named() {
        let missing = [SshSpec { id: "gh".into(), paths: vec!["/nonexistent/agent.sock".into()] }];
        let e = SshAgents::start(&missing).err().expect("missing path").to_string();
        assert!(e.contains("--ssh gh: /nonexistent/agent.sock"), "{e}");
    }
}
