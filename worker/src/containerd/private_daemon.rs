use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use containerd_client::tonic::transport::Channel;
use memobuild_proto::{Error, Result, ResultExt};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::client::probe;
use super::oci_runtime::find_on_path;

/// How long a freshly started containerd may take to answer.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long containerd may take to exit after SIGTERM before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest path a unix socket address may have (`sun_path`, less the
/// `.ttrpc` suffix containerd adds for its second socket).
const MAX_SOCKET_PATH: usize = 100;

/// A containerd that MemoBuild runs itself, under `state_dir/containerd/`:
/// `config.toml`, `root/`, `state/`, `containerd.sock`, `containerd.log`,
/// `containerd.pid`, and two lock files.
///
/// Several users (processes, or several clients in one process) share one
/// daemon. `start.lock` (exclusive, held briefly) serializes starting and
/// stopping; each user holds a shared lock on `users.lock` while it uses the
/// daemon, and the one that leaves last (its exclusive non-blocking lock
/// succeeds) stops it.
pub(super) struct PrivateDaemon {
    dir: PathBuf,
    socket: PathBuf,
    /// This user's shared lock; `None` once it left.
    user_lock: tokio::sync::Mutex<Option<Flock<File>>>,
}

impl PrivateDaemon {
    /// Joins the daemon under `state_dir/containerd/`, starting it first
    /// when its socket does not answer.
    pub(super) async fn start_or_join(state_dir: &Path) -> Result<(PrivateDaemon, Channel)> {
        let dir = state_dir.join("containerd");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let dir = dir.canonicalize().with_context(|| format!("resolving {}", dir.display()))?;
        let socket = dir.join("containerd.sock");
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(Error::invalid_argument(format!(
                "the containerd socket path {} is longer than {MAX_SOCKET_PATH} bytes; use a shorter state directory",
                socket.display()
            )));
        }
        let start_lock = lock(dir.join("start.lock"), FlockArg::LockExclusive).await?;
        let channel = match probe(&socket).await {
            Ok(channel) => {
                tracing::debug!(socket = %socket.display(), "joining the private containerd");
                channel
            }
            Err(_) => start(&dir, &socket).await?,
        };
        let user_lock = lock(dir.join("users.lock"), FlockArg::LockShared).await?;
        drop(start_lock);
        Ok((PrivateDaemon { dir, socket, user_lock: tokio::sync::Mutex::new(Some(user_lock)) }, channel))
    }

    pub(super) fn socket(&self) -> &Path {
        &self.socket
    }

    /// Gives up this user's slot; stops the daemon when no other user holds
    /// one. Idempotent.
    pub(super) async fn leave(&self) -> Result<()> {
        let mut slot = self.user_lock.lock().await;
        let Some(user_lock) = slot.take() else { return Ok(()) };
        let start_lock = lock(self.dir.join("start.lock"), FlockArg::LockExclusive).await?;
        let last = match user_lock.relock(FlockArg::LockExclusiveNonblock) {
            Ok(()) => true,
            Err(Errno::EWOULDBLOCK) => false,
            Err(errno) => return Err(Error::internal(format!("locking {}/users.lock: {errno}", self.dir.display()))),
        };
        drop(user_lock);
        if last {
            stop(&self.dir).await?;
        } else {
            tracing::debug!(dir = %self.dir.display(), "leaving the private containerd to its other users");
        }
        drop(start_lock);
        Ok(())
    }
}

/// Takes a flock on `path` (created if missing), waiting for it unless `arg`
/// is non-blocking.
async fn lock(path: PathBuf, arg: FlockArg) -> Result<Flock<File>> {
    tokio::task::spawn_blocking(move || {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        Flock::lock(file, arg).map_err(|(_, errno)| Error::internal(format!("locking {}: {errno}", path.display())))
    })
    .await
    .map_err(|e| Error::internal(format!("lock task failed: {e}")))?
}

/// `containerd` on `PATH`, or the clear error.
fn find_binary() -> Result<PathBuf> {
    find_on_path("containerd").ok_or_else(|| {
        Error::new(
            tonic::Code::FailedPrecondition,
            format!(
                "RUN steps need containerd: no containerd answers at {} and no `containerd` binary is on PATH; \
                     install it (`apt-get install containerd runc`) or pass --containerd-address",
                super::SYSTEM_SOCKET
            ),
        )
    })
}

fn config_toml(dir: &Path, socket: &Path) -> String {
    format!(
        "version = 2\n\
         root = \"{root}\"\n\
         state = \"{state}\"\n\
         disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
         [grpc]\n  address = \"{socket}\"\n",
        root = dir.join("root").display(),
        state = dir.join("state").display(),
        socket = socket.display(),
    )
}

/// Starts containerd detached (its own process group, re-parented once the
/// launching shell exits, so it outlives this process until the last user
/// stops it) and waits until it answers.
async fn start(dir: &Path, socket: &Path) -> Result<Channel> {
    let binary = find_binary()?;
    let config = dir.join("config.toml");
    let log = dir.join("containerd.log");
    let pid_file = dir.join("containerd.pid");
    // A daemon from an earlier run that no longer answers.
    if let Some(pid) = recorded_pid(dir) {
        tracing::warn!(pid, "stopping a private containerd that does not answer");
        terminate(pid).await;
    }
    match std::fs::remove_file(socket) {
        Ok(()) => tracing::debug!(socket = %socket.display(), "removed a stale containerd socket"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::from(e).context(format!("removing stale socket {}", socket.display()))),
    }
    std::fs::write(&config, config_toml(dir, socket)).with_context(|| format!("writing {}", config.display()))?;
    let output = tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg("\"$1\" --config \"$2\" </dev/null >>\"$3\" 2>&1 & echo $!")
        .arg("sh")
        .arg(&binary)
        .arg(&config)
        .arg(&log)
        .process_group(0)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .output()
        .await
        .with_context(|| format!("starting {}", binary.display()))?;
    let pid: i32 = String::from_utf8_lossy(&output.stdout).trim().parse().map_err(|_| {
        Error::internal(format!(
            "starting {}: no pid from the launching shell: {}",
            binary.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    })?;
    std::fs::write(&pid_file, format!("{pid}\n")).with_context(|| format!("writing {}", pid_file.display()))?;
    tracing::info!(pid, socket = %socket.display(), "started a private containerd");

    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if !alive(pid) {
            return Err(Error::unavailable(format!(
                "the private containerd (pid {pid}, config {}) exited at start; end of its log:\n{}",
                config.display(),
                log_tail(&log)
            )));
        }
        if socket.exists() {
            if let Ok(channel) = probe(socket).await {
                return Ok(channel);
            }
        }
        if Instant::now() >= deadline {
            terminate(pid).await;
            return Err(Error::unavailable(format!(
                "the private containerd (pid {pid}) did not answer at {} within {START_TIMEOUT:?}; end of its log:\n{}",
                socket.display(),
                log_tail(&log)
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Stops the daemon recorded in `dir` (SIGTERM, then SIGKILL after
/// [`STOP_TIMEOUT`]).
async fn stop(dir: &Path) -> Result<()> {
    if let Some(pid) = recorded_pid(dir) {
        tracing::info!(pid, "stopping the private containerd");
        terminate(pid).await;
    }
    let _ = std::fs::remove_file(dir.join("containerd.pid"));
    Ok(())
}

/// The pid in `containerd.pid` when that process is alive and is the
/// containerd of this directory (not a reused pid).
fn recorded_pid(dir: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(dir.join("containerd.pid")).ok()?.trim().parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let config = dir.join("config.toml");
    let ours = cmdline.split(|b| *b == 0).any(|arg| arg == config.as_os_str().as_encoded_bytes());
    (ours && alive(pid)).then_some(pid)
}

/// Whether `pid` runs (exists and is not a zombie).
fn alive(pid: i32) -> bool {
    if kill(Pid::from_raw(pid), None).is_err() {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "pid (comm) S ...": the state follows the last ')'.
        Ok(stat) => stat.rsplit_once(')').map(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])).unwrap_or(true),
        Err(_) => false,
    }
}

async fn terminate(pid: i32) {
    let target = Pid::from_raw(pid);
    let _ = kill(target, Signal::SIGTERM);
    let deadline = Instant::now() + STOP_TIMEOUT;
    while alive(pid) {
        if Instant::now() >= deadline {
            tracing::warn!(pid, "containerd ignored SIGTERM; killing it");
            let _ = kill(target, Signal::SIGKILL);
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The last lines of the daemon's log, for errors.
fn log_tail(log: &Path) -> String {
    const TAIL_BYTES: u64 = 4096;
    let mut text = String::new();
    if let Ok(mut file) = File::open(log) {
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = file.seek(SeekFrom::Start(len.saturating_sub(TAIL_BYTES)));
        let mut bytes = Vec::new();
        let _ = file.read_to_end(&mut bytes);
        text = String::from_utf8_lossy(&bytes).into_owned();
    }
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
