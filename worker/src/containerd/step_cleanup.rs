use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::{DeleteContainerRequest, DeleteTaskRequest, KillRequest, WaitRequest};
use memobuild_proto::{Error, Result};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::lease::delete_lease;
use super::mount_point::{release_mount_point, MountPoint};
use super::Containerd;

/// How long a step's cleanup waits before its calls to containerd (see
/// [`StepRemains::clean`]).
const CLEANUP_DELAY: Duration = Duration::from_millis(50);
/// How long a task may take to go after SIGKILL.
pub(super) const KILL_GRACE: Duration = Duration::from_secs(30);
pub(super) const SIGKILL: u32 = 9;

/// Where a step's task stands when its cleanup takes over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) enum TaskState {
    Absent,
    /// Created, maybe running: it is killed first.
    Live,
    /// Its process ended (and with it every process of its PID namespace).
    Exited,
}

/// What a step made that has to go once its outcome is known: the task, the
/// container, the rootfs mount, the active snapshot (unless it was
/// committed) and the lease.
///
/// Deleting a task (runc's delete, the shim's exit) takes tens of
/// milliseconds, so it happens in the background when this is dropped, off
/// the step's path, whether the step finished or its future was dropped
/// midway. [`Containerd::settle`] waits for it.
pub(super) struct StepCleanup {
    containerd: Containerd,
    pub(super) remains: StepRemains,
    /// The step's rootfs, unmounted once its processes are gone.
    pub(super) rootfs: Option<MountPoint>,
}

impl StepCleanup {
    pub(super) fn new(containerd: Containerd, id: String, lease: String) -> Self {
        let remains = StepRemains {
            id,
            lease: Some(lease),
            task: TaskState::Absent,
            container: false,
            rootfs: None,
            snapshot: false,
        };
        StepCleanup { containerd, remains, rootfs: None }
    }

    /// The lease the step's objects are created under.
    pub(super) fn lease(&self) -> &str {
        self.remains.lease.as_deref().unwrap_or_default()
    }
}

impl Drop for StepCleanup {
    fn drop(&mut self) {
        let mut remains = self.remains.clone();
        remains.rootfs = self.rootfs.take().and_then(MountPoint::into_path);
        self.containerd.spawn_cleanup(remains);
    }
}

/// What is left to remove of one step: plain data, so that another process
/// can finish the job (see [`Containerd::hand_over_cleanups`]). Every part
/// may already be gone.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StepRemains {
    id: String,
    lease: Option<String>,
    pub(super) task: TaskState,
    pub(super) container: bool,
    /// Where the step's rootfs is, or was, mounted.
    rootfs: Option<PathBuf>,
    /// Whether the active snapshot is there to remove.
    pub(super) snapshot: bool,
}

impl StepRemains {
    /// Finishes what steps left on the containerd at `address` (the
    /// cleanups another process handed over), all at once.
    pub async fn finish(address: &Path, remains: Vec<StepRemains>) -> Result<()> {
        let containerd = Containerd::connect(address).await?;
        let (never, now) = (CancellationToken::new(), CancellationToken::new());
        now.cancel();
        let jobs = remains.into_iter().map(Mutex::new).collect::<Vec<_>>();
        futures::future::join_all(jobs.iter().map(|left| StepRemains::clean(left, &containerd, &never, &now))).await;
        Ok(())
    }

    /// What a step of a process that is gone may have left: everything
    /// but the rootfs mount (see `sweep_abandoned` for those).
    pub(super) fn abandoned(id: String, lease: Option<String>) -> Self {
        StepRemains { id, lease, task: TaskState::Live, container: true, rootfs: None, snapshot: true }
    }

    /// Whether the step's task may still be running.
    pub(super) fn task_may_run(&self) -> bool {
        self.task == TaskState::Live
    }

    /// Whether nothing is left.
    pub(super) fn is_empty(&self) -> bool {
        self.task == TaskState::Absent
            && !self.container
            && self.rootfs.is_none()
            && !self.snapshot
            && self.lease.is_none()
    }

    /// Kills the task if it may still run and unmounts the rootfs; then,
    /// [`CLEANUP_DELAY`] later or once `hurry` is cancelled, removes the
    /// snapshot and deletes the task, the container and the lease. Each
    /// part that is gone is noted in `left` (a failure is logged, not
    /// retried). Once `stop` is cancelled it stops before the next part,
    /// never in the middle of one: `left` then says what another process
    /// has to do. The delay lets a build that ends right after its last
    /// step hand that step's cleanup over whole, rather than wait for a
    /// task's deletion in flight.
    pub(super) async fn clean(
        left: &Mutex<StepRemains>,
        containerd: &Containerd,
        stop: &CancellationToken,
        hurry: &CancellationToken,
    ) {
        let started = Instant::now();
        let remains = left.lock().clone();
        let id = remains.id.as_str();
        let warn = |what: &str, status: tonic::Status| {
            if status.code() != tonic::Code::NotFound {
                tracing::warn!(container = id, error = %Error::from(status), "cleaning up: {what}");
            }
        };
        let mut tasks = TasksClient::new(containerd.channel());
        if remains.task == TaskState::Live {
            let kill = KillRequest { container_id: id.to_string(), exec_id: String::new(), signal: SIGKILL, all: true };
            if let Err(status) = tasks.kill(containerd.request(kill, None)).await {
                warn("killing the task", status);
            }
            let wait = WaitRequest { container_id: id.to_string(), exec_id: String::new() };
            let _ = tokio::time::timeout(KILL_GRACE, tasks.wait(containerd.request(wait, None))).await;
            left.lock().task = TaskState::Exited;
        }
        if let Some(rootfs) = &remains.rootfs {
            if let Err(e) = release_mount_point(rootfs) {
                tracing::warn!(container = id, error = %e, "cleaning up: unmounting the rootfs");
            }
            left.lock().rootfs = None;
        }
        tokio::select! {
            () = tokio::time::sleep(CLEANUP_DELAY) => {}
            () = hurry.cancelled() => {}
        }
        if remains.snapshot && !stop.is_cancelled() {
            if let Err(e) = containerd.remove_snapshot(id).await {
                tracing::warn!(container = id, error = %e, "cleaning up: removing the snapshot");
            }
            left.lock().snapshot = false;
        }
        if remains.task != TaskState::Absent && !stop.is_cancelled() {
            let delete = DeleteTaskRequest { container_id: id.to_string() };
            if let Err(status) = tasks.delete(containerd.request(delete, None)).await {
                warn("deleting the task", status);
            }
            left.lock().task = TaskState::Absent;
        }
        if remains.container && !stop.is_cancelled() {
            let delete = DeleteContainerRequest { id: id.to_string() };
            if let Err(status) =
                ContainersClient::new(containerd.channel()).delete(containerd.request(delete, None)).await
            {
                warn("deleting the container", status);
            }
            left.lock().container = false;
        }
        if let Some(lease) = remains.lease.as_deref().filter(|_| !stop.is_cancelled()) {
            if let Err(e) = delete_lease(containerd, lease, false).await {
                tracing::warn!(container = id, error = %e, "cleaning up: deleting the lease");
            }
            left.lock().lease = None;
        }
        tracing::debug!(container = id, elapsed = ?started.elapsed(), "step cleaned up");
    }
}
