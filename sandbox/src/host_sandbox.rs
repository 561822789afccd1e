use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use memobuild_proto::{Error, Result, ResultExt};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio_util::sync::CancellationToken;

use super::action_launch::ActionRequest;
use super::launcher::{kill, reap, Launched, Launcher};
use super::root_template::{c_path, c_string};
use super::sandbox_template::SandboxTemplate;
use super::slot_pool::{Slot, SlotPool};
use super::worker_cgroup::WorkerCgroup;
use super::SandboxConfig;
use crate::sandboxed_command::{SandboxedCommand, SandboxedExit};

/// The owner of the file cache's entries, which actions must not be.
const CACHE_OWNER_UID: u32 = 65534;

/// The namespace sandbox of a root worker (see the crate's documentation).
pub struct HostSandbox {
    config: SandboxConfig,
    template: Arc<SandboxTemplate>,
    pool: Arc<SlotPool>,
    launcher: Launcher,
}

impl HostSandbox {
    pub fn new(config: SandboxConfig) -> Result<Self> {
        if config.uid == CACHE_OWNER_UID {
            return Err(Error::invalid_argument(format!(
                "sandbox uid {CACHE_OWNER_UID} owns the worker's file cache; actions need another uid"
            )));
        }
        let template = Arc::new(SandboxTemplate::new(&config)?);
        let cgroup = WorkerCgroup::create(config.memory_bytes, config.pids).context("making the sandbox cgroups")?;
        let pool = Arc::new(SlotPool::new(cgroup));
        let launcher = Launcher::start(template.clone(), pool.clone())?;
        Ok(HostSandbox { config, template, pool, launcher })
    }

    /// Runs `spec` to its end, its timeout or `cancel`; every process it
    /// started is gone when this returns (or is dropped).
    pub async fn run(&self, spec: &SandboxedCommand<'_>, cancel: CancellationToken) -> Result<SandboxedExit> {
        let (program, working_dir) = (c_path(spec.program)?, c_path(spec.working_dir)?);
        let argv = spec.argv.iter().map(|a| c_string(a.clone())).collect::<Result<_>>()?;
        let env = spec.env.iter().map(|(k, v)| c_string(format!("{k}={v}"))).collect::<Result<_>>()?;
        // Who the action is on the host (owning its input root's
        // directories), and who it is in its own eyes.
        let (owner, user, userns) = match (spec.as_root, &self.template.root_userns) {
            (false, _) => ((self.config.uid, self.config.gid), (self.config.uid, self.config.gid), None),
            (true, Some(userns)) => ((self.config.uid, self.config.gid), (0, 0), Some(userns.as_raw_fd())),
            (true, None) => ((0, 0), (0, 0), None),
        };
        let request = ActionRequest {
            program,
            argv,
            env,
            working_dir,
            root: spec.root.to_path_buf(),
            owner,
            uid: user.0,
            gid: user.1,
            userns,
            network: spec.network,
            stdout: spec.stdout.to_path_buf(),
            stderr: spec.stderr.to_path_buf(),
        };
        let (launched, slot) = self.launcher.launch(request).await?;
        let mut child = RunningChild::new(launched, slot, self.pool.clone())?;
        let sleep = async {
            match spec.timeout {
                Some(timeout) => tokio::time::sleep(timeout).await,
                None => std::future::pending().await,
            }
        };
        let (status, timed_out, cancelled) = tokio::select! {
            status = child.wait() => (status, false, false),
            () = sleep => {
                child.kill();
                (child.wait().await, true, false)
            }
            () = cancel.cancelled() => {
                child.kill();
                (child.wait().await, false, true)
            }
        };
        let exit_code = status.context("waiting for the sandboxed command")?;
        let oom_killed = child.slot.as_mut().and_then(|s| s.cgroup.as_mut()).is_some_and(|c| c.oom_killed());
        child.finish();
        Ok(SandboxedExit {
            exit_code,
            timed_out,
            cancelled,
            memory_limit_exceeded: if oom_killed { self.config.memory_bytes } else { None },
        })
    }
}

/// A started child: killed and reaped however the run ends, its slot
/// returned once it is gone.
struct RunningChild {
    pid: libc::pid_t,
    pidfd: AsyncFd<OwnedFd>,
    reaped: bool,
    slot: Option<Slot>,
    pool: Arc<SlotPool>,
}

impl RunningChild {
    fn new(launched: Launched, slot: Slot, pool: Arc<SlotPool>) -> Result<Self> {
        let Launched { pid, pidfd } = launched;
        // SAFETY: the AsyncFd owns the pidfd, whose number stays the same.
        #[allow(unsafe_code)]
        let pidfd = unsafe { AsyncFd::register_with_interest(pidfd, Interest::READABLE) }
            .map_err(|e| Error::internal(format!("watching the sandboxed command: {e}")))?;
        Ok(RunningChild { pid, pidfd, reaped: false, slot: Some(slot), pool })
    }

    /// Its exit code, or 128 + the signal that killed it.
    async fn wait(&mut self) -> std::io::Result<i32> {
        loop {
            let mut guard = self.pidfd.readable().await?;
            let mut status = 0;
            // SAFETY: our own child, not yet reaped.
            #[allow(unsafe_code)]
            let rc = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
            if rc == self.pid {
                self.reaped = true;
                return Ok(if libc::WIFEXITED(status) {
                    libc::WEXITSTATUS(status)
                } else if libc::WIFSIGNALED(status) {
                    128 + libc::WTERMSIG(status)
                } else {
                    -1
                });
            }
            if rc < 0 {
                return Err(std::io::Error::last_os_error());
            }
            guard.clear_ready();
        }
    }

    fn kill(&self) {
        kill(self.pidfd.get_ref());
    }

    /// Returns the slot of a reaped child.
    fn finish(&mut self) {
        if let (true, Some(slot)) = (self.reaped, self.slot.take()) {
            self.pool.release(slot);
        }
    }
}

impl Drop for RunningChild {
    fn drop(&mut self) {
        if self.reaped {
            self.finish();
            return;
        }
        self.kill();
        let (pid, slot, pool) = (self.pid, self.slot.take(), self.pool.clone());
        let reap_and_release = move || {
            reap(pid);
            if let Some(slot) = slot {
                pool.release_killed(slot);
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => drop(handle.spawn_blocking(reap_and_release)),
            Err(_) => reap_and_release(),
        }
    }
}
