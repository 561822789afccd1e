use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::OnceLock;

use async_trait::async_trait;
use memobuild_proto::{Error, Result, ResultExt};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio_util::sync::CancellationToken;

use crate::runner::{RunOutcome, RunSpec, Runner};
use memobuild_sandbox::{HostSandbox, SandboxConfig, SandboxedCommand};

/// How [`HostRunner`] isolates a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sandbox {
    /// Runs the command as a plain child process in its own process group.
    None,
    /// Root only: the namespace sandbox (see [`memobuild_sandbox`]): own PID,
    /// mount, IPC, UTS and (unless the spec asks for network) network
    /// namespaces, a root of its own with the host's toolchain read-only,
    /// memory and pids limits, no capabilities, an unprivileged user,
    /// `no_new_privs` and a seccomp filter. Its user cannot write or chmod
    /// the read-only files of the worker's file cache, hardlinked into the
    /// input root.
    Namespaces,
}

/// Runs commands as processes on the host.
///
/// The command runs with exactly the spec's environment, in the spec's
/// working directory, stdin from `/dev/null` and stdout/stderr into the
/// spec's files. On timeout or cancel, and after the command exits, its
/// processes are killed with SIGKILL: the process group in
/// [`Sandbox::None`], the whole PID namespace in [`Sandbox::Namespaces`].
pub struct HostRunner {
    sandbox: Sandbox,
    config: SandboxConfig,
    /// Made on first use.
    host: OnceLock<std::result::Result<HostSandbox, Error>>,
}

impl HostRunner {
    /// The namespace sandbox with the default [`SandboxConfig`] when the
    /// worker runs as root, none otherwise.
    pub fn new() -> Self {
        Self::with_config(SandboxConfig::default())
    }

    /// The namespace sandbox with `config` when the worker runs as root,
    /// none otherwise.
    pub fn with_config(config: SandboxConfig) -> Self {
        let sandbox = if nix::unistd::geteuid().is_root() { Sandbox::Namespaces } else { Sandbox::None };
        HostRunner { sandbox, config, host: OnceLock::new() }
    }

    pub fn with_sandbox(sandbox: Sandbox) -> Self {
        HostRunner { sandbox, config: SandboxConfig::default(), host: OnceLock::new() }
    }

    pub fn sandbox(&self) -> Sandbox {
        self.sandbox
    }

    /// Runs `true` in the sandbox, to fail at startup rather than on the
    /// first action when the sandbox cannot be made (no permission to
    /// create namespaces or cgroups, a bad `[worker.sandbox]`).
    pub async fn check(&self) -> Result<()> {
        let dir = tempfile::tempdir().context("creating a directory to check the sandbox in")?;
        let root = dir.path().join("root");
        std::fs::create_dir(&root).context("creating a directory to check the sandbox in")?;
        let spec = RunSpec {
            argv: vec!["true".into()],
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            root: root.clone(),
            working_dir: root,
            network: false,
            as_root: false,
            image: None,
            timeout: None,
            stdout: dir.path().join("stdout"),
            stderr: dir.path().join("stderr"),
        };
        let outcome = self
            .run(spec, CancellationToken::new())
            .await
            .with_context(|| format!("the {:?} sandbox", self.sandbox))?;
        if outcome.exit_code != 0 {
            let stderr = std::fs::read_to_string(dir.path().join("stderr")).unwrap_or_default();
            return Err(Error::internal(format!(
                "the {:?} sandbox does not work here: `true` exited {}: {}",
                self.sandbox,
                outcome.exit_code,
                stderr.trim()
            )));
        }
        Ok(())
    }

    fn host(&self) -> Result<&HostSandbox> {
        let host = self.host.get_or_init(|| HostSandbox::new(self.config.clone()));
        host.as_ref().map_err(|e| e.clone().context("starting the namespace sandbox"))
    }

    /// A plain process group, for [`Sandbox::None`].
    async fn run_plain(&self, spec: RunSpec, program: PathBuf, cancel: CancellationToken) -> Result<RunOutcome> {
        let argv0 = spec.argv.first().map(String::as_str).unwrap_or_default();
        let stdout =
            std::fs::File::create(&spec.stdout).with_context(|| format!("creating {}", spec.stdout.display()))?;
        let stderr =
            std::fs::File::create(&spec.stderr).with_context(|| format!("creating {}", spec.stderr.display()))?;
        let mut command = tokio::process::Command::new(&program);
        command.arg0(argv0).args(spec.argv.iter().skip(1));
        command
            .env_clear()
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&spec.working_dir)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0)
            .kill_on_drop(true);
        let mut child = command.spawn().map_err(|e| {
            let code = match e.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => tonic::Code::InvalidArgument,
                _ => tonic::Code::Internal,
            };
            Error::new(code, format!("starting {argv0:?} ({}): {e}", program.display()))
        })?;
        // Kills the group however this function ends, also when its future
        // is dropped midway.
        let group = ProcessGroup(child.id().map(|id| Pid::from_raw(id as i32)));
        let sleep = async {
            match spec.timeout {
                Some(timeout) => tokio::time::sleep(timeout).await,
                None => std::future::pending().await,
            }
        };
        let (status, timed_out, cancelled) = tokio::select! {
            status = child.wait() => (status, false, false),
            () = sleep => {
                group.kill();
                (child.wait().await, true, false)
            }
            () = cancel.cancelled() => {
                group.kill();
                (child.wait().await, false, true)
            }
        };
        // Background processes the command left in its group go too.
        group.kill();
        let status = status.with_context(|| format!("waiting for {argv0:?}"))?;
        Ok(RunOutcome { exit_code: exit_code(status), timed_out, cancelled, memory_limit_exceeded: None })
    }
}

impl Default for HostRunner {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl Runner for HostRunner {
    async fn run(&self, spec: RunSpec, cancel: CancellationToken) -> Result<RunOutcome> {
        let argv0 = spec.argv.first().ok_or_else(|| Error::invalid_argument("the command has no arguments"))?;
        if let Some(image) = &spec.image {
            return Err(Error::invalid_argument(format!(
                "container-image {}: this worker runs actions on the host only (it has no containerd)",
                image.as_written()
            )));
        }
        let program = resolve_program(argv0, &spec.working_dir, &spec.env)?;
        let outcome = match self.sandbox {
            Sandbox::None => self.run_plain(spec.clone(), program, cancel).await?,
            Sandbox::Namespaces => {
                let command = SandboxedCommand {
                    program: &program,
                    argv: &spec.argv,
                    env: &spec.env,
                    root: &spec.root,
                    working_dir: &spec.working_dir,
                    network: spec.network,
                    as_root: spec.as_root,
                    timeout: spec.timeout,
                    stdout: &spec.stdout,
                    stderr: &spec.stderr,
                };
                let exit = self.host()?.run(&command, cancel).await?;
                RunOutcome {
                    exit_code: exit.exit_code,
                    timed_out: exit.timed_out,
                    cancelled: exit.cancelled,
                    memory_limit_exceeded: exit.memory_limit_exceeded,
                }
            }
        };
        tracing::debug!(argv0 = spec.argv[0], ?outcome, "command finished");
        Ok(outcome)
    }
}

/// A command's process group, SIGKILLed on drop.
struct ProcessGroup(Option<Pid>);

impl ProcessGroup {
    fn kill(&self) {
        if let Some(pgid) = self.0 {
            // ESRCH: the group is already gone.
            let _ = killpg(pgid, Signal::SIGKILL);
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.kill();
    }
}

fn exit_code(status: ExitStatus) -> i32 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => -1,
    }
}

/// The executable `argv0` names: relative to `working_dir` when it contains
/// a slash, else the first match in the command's `PATH` (entries relative
/// to `working_dir`), or in the worker's own `PATH` when the command sets
/// none.
fn resolve_program(argv0: &str, working_dir: &Path, env: &[(String, String)]) -> Result<PathBuf> {
    if argv0.is_empty() {
        return Err(Error::invalid_argument("the command's argv[0] is empty"));
    }
    if argv0.contains('/') {
        return Ok(working_dir.join(argv0));
    }
    let path = match env.iter().rev().find(|(k, _)| k == "PATH") {
        Some((_, v)) => v.clone(),
        None => std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".to_string()),
    };
    for dir in path.split(':') {
        let dir = if dir.is_empty() { Path::new(".") } else { Path::new(dir) };
        let candidate = working_dir.join(dir).join(OsStr::new(argv0));
        if let Ok(meta) = std::fs::metadata(&candidate) {
            if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
                return Ok(candidate);
            }
        }
    }
    Err(Error::invalid_argument(format!("command {argv0:?} not found in PATH {path:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_through_the_commands_path() {
        let env = vec![("PATH".to_string(), "/nonexistent:/bin:/usr/bin".to_string())];
        let sh = resolve_program("sh", Path::new("/"), &env).unwrap();
        assert!(sh.ends_with("sh"), "{}", sh.display());
        let e = resolve_program("no-such-program-xyz", Path::new("/"), &env).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("no-such-program-xyz"), "{e}");
        assert_eq!(resolve_program("./x", Path::new("/w"), &env).unwrap(), PathBuf::from("/w/./x"));
    }
}
