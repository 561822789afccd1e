use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::StatSnapshotRequest;
use containerd_client::services::v1::version_client::VersionClient;
use containerd_client::tonic::transport::Channel;
use memobuild_proto::{Error, Result};
use tonic::metadata::MetadataValue;

use super::oci_runtime::OciRuntime;
use super::private_daemon::PrivateDaemon;
use super::step_cleanup::StepRemains;
use tokio_util::sync::CancellationToken;

/// The containerd namespace of everything MemoBuild creates.
pub const NAMESPACE: &str = "memobuild";
/// The snapshotter MemoBuild uses (the diff capture reads overlay upper dirs).
pub const SNAPSHOTTER: &str = "overlayfs";
/// Where a system containerd listens.
pub const SYSTEM_SOCKET: &str = "/run/containerd/containerd.sock";

/// How long to wait for a socket to answer a version call.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// A connection to containerd, and the private containerd behind it when
/// MemoBuild started one. Cheap to clone.
///
/// Runs RUN steps ([`Containerd::run`]), unpacks layer stacks into
/// snapshots ([`Containerd::ensure_chain`]) and mounts them read-only
/// ([`Containerd::mount_view`]).
#[derive(Clone)]
pub struct Containerd {
    inner: Arc<Inner>,
    /// The OCI runtime binary of new containers; `None`: the shim's runc.
    runtime: Option<Arc<Path>>,
}

struct Inner {
    channel: Channel,
    address: PathBuf,
    daemon: Option<PrivateDaemon>,
    /// Serializes unpacking the same chain id within this process.
    chain_locks: parking_lot::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Cleanups of finished steps still under way.
    cleanups: parking_lot::Mutex<Vec<CleanupJob>>,
    /// Whether the steps of processes that are gone were looked for.
    swept: AtomicBool,
}

impl Containerd {
    /// Connects to containerd: at `address` if given; else to the system
    /// containerd at [`SYSTEM_SOCKET`] if it answers; else starts (or joins)
    /// a private containerd under `state_dir/containerd/` (see
    /// [`Containerd::start_private`]).
    pub async fn connect_or_start(address: Option<&Path>, state_dir: &Path) -> Result<Containerd> {
        if let Some(address) = address {
            return Self::connect(address).await;
        }
        let system = Path::new(SYSTEM_SOCKET);
        if system.exists() {
            match probe(system).await {
                Ok(channel) => {
                    tracing::debug!(address = SYSTEM_SOCKET, "using the system containerd");
                    return Ok(Self::from_parts(channel, system.to_path_buf(), None));
                }
                Err(e) => tracing::debug!(error = %e, "the system containerd does not answer"),
            }
        }
        Self::start_private(state_dir).await
    }

    /// Connects to the containerd at `address`.
    pub async fn connect(address: &Path) -> Result<Containerd> {
        let channel = probe(address).await.map_err(|e| {
            e.context(format!("connecting to containerd at {} (--containerd-address)", address.display()))
        })?;
        Ok(Self::from_parts(channel, address.to_path_buf(), None))
    }

    /// Starts a private containerd under `state_dir/containerd/`, or joins
    /// the one another process (or another `Containerd` of this process)
    /// started there, never looking at a system containerd. Tests use it to
    /// stay apart from whatever runs on the machine.
    ///
    /// Each user holds a shared lock on `state_dir/containerd/users.lock`;
    /// [`Containerd::shutdown`] stops the daemon only when no other user
    /// holds one. A user that ends without `shutdown` releases its lock but
    /// leaves the daemon running for the next one to reuse.
    pub async fn start_private(state_dir: &Path) -> Result<Containerd> {
        let (daemon, channel) = PrivateDaemon::start_or_join(state_dir).await?;
        let address = daemon.socket().to_path_buf();
        Ok(Self::from_parts(channel, address, Some(daemon)))
    }

    fn from_parts(channel: Channel, address: PathBuf, daemon: Option<PrivateDaemon>) -> Containerd {
        Containerd {
            inner: Arc::new(Inner {
                channel,
                address,
                daemon,
                chain_locks: parking_lot::Mutex::new(HashMap::new()),
                cleanups: parking_lot::Mutex::new(Vec::new()),
                swept: AtomicBool::new(false),
            }),
            runtime: None,
        }
    }

    /// New containers run with `runtime` (decided here when it is `Auto`).
    pub fn with_oci_runtime(self, runtime: &OciRuntime) -> Containerd {
        Containerd { runtime: runtime.binary().map(Arc::from), ..self }
    }

    /// The OCI runtime binary of new containers, when it is not the shim's runc.
    pub(super) fn runtime_binary(&self) -> Option<&Path> {
        self.runtime.as_deref()
    }

    /// Waits for the cleanups of finished steps, then stops the private
    /// containerd if this was its last user. Idempotent; for a system or
    /// given containerd, only the wait. Clones share the one user slot:
    /// after `shutdown`, none of them should be used.
    pub async fn shutdown(&self) -> Result<()> {
        self.settle().await;
        match &self.inner.daemon {
            Some(daemon) => daemon.leave().await,
            None => Ok(()),
        }
    }

    /// The socket this client talks to.
    pub fn address(&self) -> &Path {
        &self.inner.address
    }

    /// Asks this containerd for its version: whether it answers now.
    pub async fn check(&self) -> Result<()> {
        probe(&self.inner.address).await.map(|_| ())
    }

    /// Whether this is a private containerd that MemoBuild started.
    pub fn is_private(&self) -> bool {
        self.inner.daemon.is_some()
    }

    pub(super) fn channel(&self) -> Channel {
        self.inner.channel.clone()
    }

    /// A request in [`NAMESPACE`], under `lease` when given.
    pub(super) fn request<T>(&self, message: T, lease: Option<&str>) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        let metadata = request.metadata_mut();
        metadata.insert("containerd-namespace", MetadataValue::from_static(NAMESPACE));
        if let Some(lease) = lease {
            // Lease ids are ours: ASCII letters, digits and dashes.
            if let Ok(value) = MetadataValue::try_from(lease) {
                metadata.insert("containerd-lease", value);
            }
        }
        request
    }

    pub(super) fn snapshots(&self) -> SnapshotsClient<Channel> {
        SnapshotsClient::new(self.channel())
    }

    /// Whether a snapshot `key` exists.
    pub(super) async fn snapshot_exists(&self, key: &str) -> Result<bool> {
        let request = StatSnapshotRequest { snapshotter: SNAPSHOTTER.to_string(), key: key.to_string() };
        match self.snapshots().stat(self.request(request, None)).await {
            Ok(_) => Ok(true),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(false),
            Err(status) => Err(Error::from(status).context(format!("looking up snapshot {key}"))),
        }
    }

    /// Removes snapshot `key`; a missing one is fine.
    pub(super) async fn remove_snapshot(&self, key: &str) -> Result<()> {
        use containerd_client::services::v1::snapshots::RemoveSnapshotRequest;
        let request = RemoveSnapshotRequest { snapshotter: SNAPSHOTTER.to_string(), key: key.to_string() };
        match self.snapshots().remove(self.request(request, None)).await {
            Ok(_) => Ok(()),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(()),
            Err(status) => Err(Error::from(status).context(format!("removing snapshot {key}"))),
        }
    }

    /// The first time only, starts [`Containerd::remove_abandoned_steps`]
    /// in the background.
    pub(super) fn remove_abandoned_steps_once(&self) {
        if self.inner.swept.swap(true, Ordering::Relaxed) {
            return;
        }
        let containerd = self.clone();
        tokio::spawn(async move {
            if let Err(e) = containerd.remove_abandoned_steps().await {
                tracing::warn!(error = %e, "could not remove the steps of processes that are gone");
            }
        });
    }

    /// Runs the cleanup of a step in the background; [`Containerd::settle`]
    /// waits for it.
    pub(super) fn spawn_cleanup(&self, remains: StepRemains) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(?remains, "cannot clean up the step's container: no runtime");
            return;
        };
        let left = Arc::new(parking_lot::Mutex::new(remains));
        let (stop, hurry) = (CancellationToken::new(), CancellationToken::new());
        let (containerd, job_left, job_stop, job_hurry) = (self.clone(), left.clone(), stop.clone(), hurry.clone());
        let handle =
            runtime.spawn(async move { StepRemains::clean(&job_left, &containerd, &job_stop, &job_hurry).await });
        let mut cleanups = self.inner.cleanups.lock();
        cleanups.retain(|job| !job.handle.is_finished());
        cleanups.push(CleanupJob { handle, left, stop, hurry });
    }

    /// Returns once the cleanups of the steps that finished so far are done
    /// (tasks, containers and uncommitted snapshots removed).
    pub async fn settle(&self) {
        loop {
            let pending = std::mem::take(&mut *self.inner.cleanups.lock());
            if pending.is_empty() {
                return;
            }
            for job in &pending {
                job.hurry.cancel();
            }
            futures::future::join_all(pending.into_iter().map(|job| job.handle)).await;
        }
    }

    /// Stops the step cleanups still under way, each before its next part
    /// (never in the middle of a call to containerd), and returns what they
    /// had left to do, for another process to finish
    /// ([`StepRemains::finish`]), so that this one need not wait for the
    /// slow parts. `None`, with nothing stopped, for a private containerd
    /// (it stops with its last user, after the cleanups) or when a step's
    /// task may still be running ([`Containerd::settle`] then).
    pub async fn hand_over_cleanups(&self) -> Option<Vec<StepRemains>> {
        if self.is_private() {
            return None;
        }
        let jobs = {
            let mut cleanups = self.inner.cleanups.lock();
            cleanups.retain(|job| !job.handle.is_finished());
            if cleanups.iter().any(|job| job.left.lock().task_may_run()) {
                return None;
            }
            std::mem::take(&mut *cleanups)
        };
        for job in &jobs {
            job.stop.cancel();
            job.hurry.cancel();
        }
        let mut left = Vec::with_capacity(jobs.len());
        for job in jobs {
            let _ = job.handle.await;
            left.push(job.left.lock().clone());
        }
        Some(left.into_iter().filter(|remains| !remains.is_empty()).collect())
    }

    /// The in-process lock for unpacking `chain_id`.
    pub(super) fn chain_lock(&self, chain_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.inner.chain_locks.lock();
        locks.retain(|_, lock| Arc::strong_count(lock) > 1);
        locks.entry(chain_id.to_string()).or_default().clone()
    }
}

/// A step's cleanup under way: what it has left, kept up to date part by
/// part, and how to stop it between parts.
struct CleanupJob {
    handle: tokio::task::JoinHandle<()>,
    left: Arc<parking_lot::Mutex<StepRemains>>,
    /// Stops it before its next part.
    stop: CancellationToken,
    /// Ends its delay.
    hurry: CancellationToken,
}

impl std::fmt::Debug for Containerd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Containerd").field("address", &self.inner.address).field("private", &self.is_private()).finish()
    }
}

/// Connects to the socket at `address` and checks that containerd answers.
/// Whether the containerd at `address` answers a version call.
pub async fn probe_version(address: &Path) -> Result<()> {
    probe(address).await.map(|_| ())
}

pub(super) async fn probe(address: &Path) -> Result<Channel> {
    let attempt = async {
        let channel = containerd_client::connect(address)
            .await
            .map_err(|e| Error::unavailable(format!("cannot connect to {}: {e}", address.display())))?;
        VersionClient::new(channel.clone())
            .version(tonic::Request::new(()))
            .await
            .map_err(|status| Error::from(status).context(format!("containerd at {}", address.display())))?;
        Ok(channel)
    };
    match tokio::time::timeout(PROBE_TIMEOUT, attempt).await {
        Ok(result) => result,
        Err(_) => Err(Error::unavailable(format!(
            "containerd at {} did not answer within {PROBE_TIMEOUT:?}",
            address.display()
        ))),
    }
}
