use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::ptr::null;
use std::sync::Arc;

use libc::{c_char, c_int};
use memobuild_proto::{Error, Result, ResultExt};
use parking_lot::Mutex;
use tokio::sync::oneshot;

use super::action_launch::{ActionLaunch, ActionRequest};
use super::child_failure::{ChildFailure, ChildStep};
use super::child_process::{child_main, ChildArgs};
use super::sandbox_template::SandboxTemplate;
use super::slot_pool::{Slot, SlotPool};
use crate::input_dirs::give_dirs;

/// The child's stack (it only runs the setup code, then execs).
const STACK_BYTES: usize = 256 << 10;
/// Launches waiting for a launcher thread.
const QUEUE: usize = 64;

/// A started action: pid 1 of its PID namespace.
pub(super) struct Launched {
    pub(super) pid: libc::pid_t,
    pub(super) pidfd: OwnedFd,
}

struct Request {
    action: ActionRequest,
    reply: oneshot::Sender<Result<(Launched, Slot)>>,
}

/// What a launcher thread works with.
struct Shared {
    template: Arc<SandboxTemplate>,
    pool: Arc<SlotPool>,
    queue: Mutex<std::sync::mpsc::Receiver<Request>>,
}

/// Threads that prepare an action (its input root, stream files and slot)
/// and start its sandboxed child, one `clone` each: new PID, IPC and UTS
/// namespaces (the mount namespace is the template's, joined and copied),
/// sharing this process's memory until the child execs (as `posix_spawn`
/// does, so nothing of the worker's memory is copied). A thread is stopped
/// from its `clone` until the child execs, so there are as many as CPUs,
/// for children to set up side by side.
/// Children die with their thread (`PR_SET_PDEATHSIG`), that is when the
/// launcher is dropped.
pub(super) struct Launcher {
    requests: std::sync::mpsc::SyncSender<Request>,
}

impl Launcher {
    pub(super) fn start(template: Arc<SandboxTemplate>, pool: Arc<SlotPool>) -> Result<Self> {
        let (requests, queue) = std::sync::mpsc::sync_channel::<Request>(QUEUE);
        let shared = Arc::new(Shared { template, pool, queue: Mutex::new(queue) });
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        for index in 0..threads {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("launcher-{index}"))
                .spawn(move || serve(&shared))
                .map_err(|e| Error::internal(format!("starting a sandbox launcher thread: {e}")))?;
        }
        Ok(Launcher { requests })
    }

    /// The started action and the slot it holds.
    pub(super) async fn launch(&self, action: ActionRequest) -> Result<(Launched, Slot)> {
        let (reply, answer) = oneshot::channel();
        let gone = || Error::internal("the sandbox launcher threads are gone");
        match self.requests.try_send(Request { action, reply }) {
            Ok(()) => {}
            Err(std::sync::mpsc::TrySendError::Disconnected(_)) => return Err(gone()),
            // The queue is bounded: a full one is waited for off the runtime.
            Err(std::sync::mpsc::TrySendError::Full(request)) => {
                let requests = self.requests.clone();
                tokio::task::spawn_blocking(move || requests.send(request).map_err(drop))
                    .await
                    .map_err(|e| Error::internal(e.to_string()))?
                    .map_err(|_| gone())?;
            }
        }
        answer.await.map_err(|_| gone())?
    }
}

/// One launcher thread: launches what it takes from `queue` until the
/// launcher is dropped.
fn serve(shared: &Shared) {
    // SAFETY: blocks signals on this thread only, so a child never runs one
    // of the worker's handlers before exec.
    #[allow(unsafe_code)]
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, std::ptr::null_mut());
    }
    let mut stack = vec![0u8; STACK_BYTES];
    loop {
        // One idle thread waits on the queue at a time, holding the lock
        // until a request comes (and not while it launches).
        let next = shared.queue.lock().recv();
        let Ok(request) = next else { return };
        let started = prepare_and_launch(shared, &request.action, &mut stack);
        // Nobody waits any more (the run was dropped): the child goes.
        if let Err(Ok((launched, slot))) = request.reply.send(started) {
            kill(&launched.pidfd);
            reap(launched.pid);
            shared.pool.release_killed(slot);
        }
    }
}

/// SIGKILL to a launched child, pid 1 of its namespace: the kernel kills
/// the rest.
pub(super) fn kill(pidfd: &OwnedFd) {
    // SAFETY: a signal through a pidfd we own.
    #[allow(unsafe_code)]
    unsafe {
        libc::syscall(libc::SYS_pidfd_send_signal, pidfd.as_raw_fd(), libc::SIGKILL, 0, 0);
    }
}

/// Waits for a launched (and killed) child's exit.
pub(super) fn reap(pid: libc::pid_t) {
    // SAFETY: our own child, not yet reaped, so its pid is still its own.
    #[allow(unsafe_code)]
    unsafe {
        libc::waitpid(pid, &mut 0, 0);
    }
}

fn prepare_and_launch(shared: &Shared, request: &ActionRequest, stack: &mut [u8]) -> Result<(Launched, Slot)> {
    give_dirs(&request.root, request.owner.0, request.owner.1)?;
    let input_root = shared.template.root.input_root(&request.root)?;
    let (stdout, stderr) = (create(&request.stdout)?, create(&request.stderr)?);
    let slot = shared.pool.acquire()?;
    let launch = ActionLaunch {
        request,
        input_root,
        netns: (!request.network).then(|| slot.netns.as_raw_fd()),
        cgroup_joins: slot.cgroup.as_ref().map(|c| c.join_files.as_slice()).unwrap_or_default(),
        stdout,
        stderr,
    };
    match launch_child(&shared.template, &launch, stack) {
        Ok(launched) => Ok((launched, slot)),
        Err(e) => {
            shared.pool.release(slot);
            Err(e)
        }
    }
}

fn create(path: &Path) -> Result<OwnedFd> {
    let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    Ok(file.into())
}

fn launch_child(template: &SandboxTemplate, launch: &ActionLaunch<'_>, stack: &mut [u8]) -> Result<Launched> {
    let pointers = |strings: &[std::ffi::CString]| -> Vec<*const c_char> {
        strings.iter().map(|s| s.as_ptr()).chain(std::iter::once(null())).collect()
    };
    let (argv, envp) = (pointers(&launch.request.argv), pointers(&launch.request.env));
    let failure = ChildFailure::new();
    let args = ChildArgs { template, launch, argv: &argv, envp: &envp, failure: &failure };
    let flags = libc::CLONE_VM
        | libc::CLONE_VFORK
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS
        | libc::CLONE_PIDFD
        | libc::SIGCHLD;
    let mut pidfd: c_int = -1;
    // The stack grows down from its end, 16-byte aligned.
    let top = (stack.as_mut_ptr() as usize + stack.len()) & !15;
    // SAFETY: CLONE_VFORK stops this thread until the child execs or exits,
    // so `args` and the stack outlive the child's use of them.
    #[allow(unsafe_code)]
    let pid = unsafe {
        libc::clone(
            child_main,
            top as *mut libc::c_void,
            flags,
            &args as *const ChildArgs<'_> as *mut libc::c_void,
            &mut pidfd as *mut c_int,
        )
    };
    if pid < 0 {
        return Err(Error::internal(format!("clone: {}", std::io::Error::last_os_error())));
    }
    // SAFETY: CLONE_PIDFD gave this fd to us.
    #[allow(unsafe_code)]
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    if let Some((step, errno)) = failure.get() {
        let mut status = 0;
        // SAFETY: reaps the child that just exited.
        #[allow(unsafe_code)]
        unsafe {
            libc::waitpid(pid, &mut status, 0)
        };
        let what = match step {
            ChildStep::Mount { index } => {
                template.root.action_ops.iter().chain(&launch.input_root.ops).nth(index as usize).map(|o| o.to_string())
            }
            ChildStep::InputRoot => Some(format!("{:?}", launch.input_root.mount_point)),
            ChildStep::Exec => Some(format!("{:?}", launch.request.program)),
            _ => None,
        };
        let error = std::io::Error::from_raw_os_error(errno);
        let message = match what {
            Some(what) => format!("sandbox: {step} ({what}): {error}"),
            None => format!("sandbox: {step}: {error}"),
        };
        let code = match (step, errno) {
            (ChildStep::Exec | ChildStep::WorkingDir, libc::ENOENT | libc::EACCES | libc::ENOEXEC | libc::ENOTDIR) => {
                tonic::Code::InvalidArgument
            }
            _ => tonic::Code::Internal,
        };
        return Err(Error::new(code, message));
    }
    Ok(Launched { pid, pidfd })
}
