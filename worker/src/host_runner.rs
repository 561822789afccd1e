use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};

use async_trait::async_trait;
use memobuild_proto::{Error, Result, ResultExt};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio_util::sync::CancellationToken;

use crate::runner::{RunOutcome, RunSpec, Runner};

/// util-linux `unshare`, which makes the namespaces.
const UNSHARE: &str = "/usr/bin/unshare";
/// util-linux `setpriv`, which drops the capabilities.
const SETPRIV: &str = "/usr/bin/setpriv";

/// How [`HostRunner`] isolates a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sandbox {
    /// Runs the command as a plain child process in its own process group.
    None,
    /// Root only: runs the command in fresh PID, mount (with its own
    /// `/proc`) and, unless the spec asks for network, network namespaces,
    /// through util-linux `unshare`, with every capability dropped through
    /// util-linux `setpriv`. The command keeps uid 0 but cannot override
    /// file permissions, so the read-only files of the worker's file cache,
    /// hardlinked into the input root, cannot be written or chmod-ed.
    Namespaces,
}

/// Runs commands as processes on the host.
///
/// The command runs in its own process group with exactly the spec's
/// environment, in the spec's working directory, stdin from `/dev/null` and
/// stdout/stderr into the spec's files. On timeout or cancel, and after the
/// command exits, the whole process group is killed with SIGKILL; in the
/// [`Sandbox::Namespaces`] sandbox the kernel also kills every process left in
/// the PID namespace, including ones that left the process group.
pub struct HostRunner {
    sandbox: Sandbox,
}

impl HostRunner {
    /// The namespace sandbox when the worker runs as root, none otherwise.
    pub fn new() -> Self {
        let sandbox = if nix::unistd::geteuid().is_root() { Sandbox::Namespaces } else { Sandbox::None };
        HostRunner { sandbox }
    }

    pub fn with_sandbox(sandbox: Sandbox) -> Self {
        HostRunner { sandbox }
    }

    pub fn sandbox(&self) -> Sandbox {
        self.sandbox
    }

    /// Runs `true` in the sandbox, to fail at startup rather than on the
    /// first action when the sandbox cannot be made (missing util-linux,
    /// no permission to create namespaces).
    pub async fn check(&self) -> Result<()> {
        let dir = std::env::temp_dir();
        let mut command = self.command(Path::new("/bin/true"), &["true".to_string()], false);
        command.current_dir(&dir).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let output = command.output().await.with_context(|| format!("starting the {:?} sandbox", self.sandbox))?;
        if !output.status.success() {
            return Err(Error::internal(format!(
                "the {:?} sandbox does not work here: {}",
                self.sandbox,
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        Ok(())
    }

    /// The process to spawn for `program` with `argv`, wrapped in the sandbox.
    fn command(&self, program: &Path, argv: &[String], network: bool) -> tokio::process::Command {
        match self.sandbox {
            Sandbox::None => {
                let mut command = tokio::process::Command::new(program);
                if let Some(arg0) = argv.first() {
                    command.arg0(arg0);
                }
                command.args(argv.iter().skip(1));
                command
            }
            Sandbox::Namespaces => {
                let mut command = tokio::process::Command::new(UNSHARE);
                command.args(["--pid", "--fork", "--kill-child", "--mount", "--mount-proc"]);
                if !network {
                    command.arg("--net");
                }
                command.args(["--", SETPRIV, "--inh-caps=-all", "--bounding-set=-all", "--"]);
                command.arg(program).args(argv.iter().skip(1));
                command
            }
        }
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
        let program = resolve_program(argv0, &spec.working_dir, &spec.env)?;
        let stdout =
            std::fs::File::create(&spec.stdout).with_context(|| format!("creating {}", spec.stdout.display()))?;
        let stderr =
            std::fs::File::create(&spec.stderr).with_context(|| format!("creating {}", spec.stderr.display()))?;
        let mut command = self.command(&program, &spec.argv, spec.network);
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
        tracing::debug!(argv0, ?status, timed_out, cancelled, "command finished");
        Ok(RunOutcome { exit_code: exit_code(status), timed_out, cancelled })
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
