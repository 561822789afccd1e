use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use containerd_client::services::v1::container::Runtime;
use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::snapshots::PrepareSnapshotRequest;
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::{
    Container, CreateContainerRequest, CreateTaskRequest, KillRequest, StartRequest, WaitRequest,
};
use futures::StreamExt;
use memobuild_cas::BlobStore;
use memobuild_oci::Layer;
use memobuild_proto::{Digest, DigestFunction, DigestHasher, Error, Result, ResultExt};
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::abandoned_steps::{this_process, LEASE_LABEL, OWNER_LABEL};
use super::diff_writer::DiffWriter;
use super::id_remap::{unshift, StepView};
use super::lease::Lease;
use super::mount_point::MountPoint;
use super::oci_runtime::shim_options;
use super::phase_clock::PhaseClock;
use super::runtime_spec::runtime_spec;
use super::snapshot_mounts::SnapshotMounts;
use super::stdio_fifos::StdioFifos;
use super::step_cleanup::{StepCleanup, TaskState, KILL_GRACE, SIGKILL};
use super::user_resolver::resolve_user;
use super::{ContainerOutcome, ContainerPurpose, ContainerSpec, Containerd, LogChunk, SpecMount, SNAPSHOTTER};

/// The runtime shim.
const RUNTIME: &str = "io.containerd.runc.v2";
/// containerd's type URL of an OCI runtime spec.
const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
/// How long the lease of a step without timeout lives.
const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(24 * 3600);
/// How long the output may keep coming after the task ended.
const OUTPUT_GRACE: Duration = Duration::from_secs(5);

impl Containerd {
    /// Runs one RUN step (or action) on top of the committed chain `parent`
    /// (`None`: an empty rootfs). Output goes to `logs` as it comes. On exit
    /// 0 a [`ContainerPurpose::Step`]'s changes become an uncompressed
    /// layer, stored in `store` and committed as the snapshot of the new
    /// chain id; otherwise nothing is kept. A timeout or `cancel` kills the
    /// task. The snapshot is committed before this returns; the task,
    /// container, uncommitted snapshot and lease are always cleaned up, in
    /// the background once the outcome is known (or this future dropped):
    /// see [`StepCleanup`].
    pub async fn run(
        &self,
        store: &dyn BlobStore,
        parent: Option<&str>,
        spec: &ContainerSpec,
        logs: UnboundedSender<LogChunk>,
        cancel: CancellationToken,
    ) -> Result<ContainerOutcome> {
        self.remove_abandoned_steps_once();
        let id = container_id(&spec.id_hint);
        let span = tracing::debug_span!("run_step", step = %spec.id_hint, container = %id);
        let ttl = spec.timeout.map(|t| t + Duration::from_secs(3600)).unwrap_or(DEFAULT_LEASE_TTL);
        let mut clock = PhaseClock::start();
        let lease = Lease::create(self, "run", ttl).await.map_err(|e| e.context(format!("step {}", spec.id_hint)))?;
        clock.mark("lease");
        let mut cleanup = StepCleanup::new(self.clone(), id.clone(), lease.id().to_string());
        let result =
            self.run_inner(store, parent, spec, logs, cancel, &id, &mut cleanup, &mut clock).instrument(span).await;
        drop(cleanup);
        tracing::debug!(step = %spec.id_hint, phases = %clock.summary(), "RUN phases");
        result.map_err(|e| e.context(format!("step {} (container {id})", spec.id_hint)))
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_inner(
        &self,
        store: &dyn BlobStore,
        parent: Option<&str>,
        spec: &ContainerSpec,
        logs: UnboundedSender<LogChunk>,
        cancel: CancellationToken,
        id: &str,
        cleanup: &mut StepCleanup,
        clock: &mut PhaseClock,
    ) -> Result<ContainerOutcome> {
        let lease = cleanup.lease().to_string();
        let prepare = PrepareSnapshotRequest {
            snapshotter: SNAPSHOTTER.to_string(),
            key: id.to_string(),
            parent: parent.unwrap_or_default().to_string(),
            labels: HashMap::new(),
        };
        let prepared = self.snapshots().prepare(self.request(prepare, Some(&lease))).await;
        let mounts = prepared
            .map_err(|s| {
                Error::from(s).context(format!("preparing a snapshot on {}", parent.unwrap_or("an empty rootfs")))
            })?
            .into_inner()
            .mounts;
        cleanup.remains.snapshot = true;
        clock.mark("prepare_snapshot");
        let mounts = SnapshotMounts::parse(mounts)?;
        let upper = mounts
            .upper()
            .map(PathBuf::from)
            .ok_or_else(|| Error::internal(format!("snapshot {id} has no writable directory")))?;
        let lower = mounts.lower_stack();
        // MemoBuild mounts the rootfs itself rather than have the shim do it,
        // so that it can be unmounted, and the snapshot committed, as soon as
        // the step's processes are gone, without waiting for the task's
        // deletion.
        let rootfs = cleanup.rootfs.insert(MountPoint::create(&format!("rootfs-{id}"))?);
        for mount in &spec.mounts {
            create_cache_dir(mount)?;
        }
        let StepView { mounts: step_mounts, spec, idmapped } = StepView::of(spec, mounts.for_step(), id)?;
        let spec = &*spec;
        rootfs.mount(&step_mounts).map_err(|e| e.context("mounting the step's rootfs"))?;
        let user = resolve_user(&lower, spec.user.as_deref())?;
        let runtime = runtime_spec(spec, &user, id, rootfs.path())?;
        let spec_json = serde_json::to_vec(&runtime.spec)
            .map_err(|e| Error::internal(format!("encoding the runtime spec: {e}")))?;
        clock.mark("runtime_spec");

        let container = Container {
            id: id.to_string(),
            labels: HashMap::from([
                ("memobuild.step".to_string(), spec.id_hint.clone()),
                (OWNER_LABEL.to_string(), this_process().to_string()),
                (LEASE_LABEL.to_string(), lease.clone()),
            ]),
            runtime: Some(Runtime { name: RUNTIME.to_string(), options: self.runtime_binary().map(shim_options) }),
            spec: Some(prost_types::Any { type_url: SPEC_TYPE_URL.to_string(), value: spec_json }),
            // Not for mounting (see above): the reference keeps containerd's
            // collector off the active snapshot however long the step runs.
            snapshotter: SNAPSHOTTER.to_string(),
            snapshot_key: id.to_string(),
            ..Default::default()
        };
        ContainersClient::new(self.channel())
            .create(self.request(CreateContainerRequest { container: Some(container) }, Some(&lease)))
            .await
            .map_err(|s| Error::from(s).context("creating the container"))?;
        cleanup.remains.container = true;
        clock.mark("create_container");

        let mut fifos = StdioFifos::create(id, logs)?;
        let mut tasks = TasksClient::new(self.channel());
        let create = CreateTaskRequest {
            container_id: id.to_string(),
            stdin: String::new(),
            stdout: fifos.stdout().to_string_lossy().into_owned(),
            stderr: fifos.stderr().to_string_lossy().into_owned(),
            terminal: false,
            ..Default::default()
        };
        tasks.create(self.request(create, None)).await.map_err(|s| {
            let error = Error::from(s);
            match self.runtime_binary() {
                Some(binary) => error.context(format!(
                    "creating the task with the OCI runtime {} (--oci-runtime runc runs it with runc)",
                    binary.display()
                )),
                None => error.context("creating the task"),
            }
        })?;
        cleanup.remains.task = TaskState::Live;
        drop(idmapped);
        clock.mark("create_task");

        // Wait before start, so a quick exit is not missed.
        let wait_request = self.request(WaitRequest { container_id: id.to_string(), exec_id: String::new() }, None);
        let mut wait_client = tasks.clone();
        let mut wait = tokio::spawn(async move { wait_client.wait(wait_request).await });
        tasks
            .start(self.request(StartRequest { container_id: id.to_string(), exec_id: String::new() }, None))
            .await
            .map_err(|s| Error::from(s).context(format!("starting {:?}", spec.argv)))?;
        tracing::debug!(container = id, argv = ?spec.argv, "step started");
        clock.mark("start_task");

        let timeout = async {
            match spec.timeout {
                Some(timeout) => tokio::time::sleep(timeout).await,
                None => std::future::pending().await,
            }
        };
        let (mut timed_out, mut cancelled) = (false, false);
        let waited = tokio::select! {
            waited = &mut wait => Some(waited),
            () = timeout => { timed_out = true; None }
            () = cancel.cancelled() => { cancelled = true; None }
        };
        let waited = match waited {
            Some(waited) => waited,
            None => {
                tracing::info!(container = id, timed_out, cancelled, "killing the step");
                let kill =
                    KillRequest { container_id: id.to_string(), exec_id: String::new(), signal: SIGKILL, all: true };
                if let Err(status) = tasks.kill(self.request(kill, None)).await {
                    if status.code() != tonic::Code::NotFound {
                        return Err(Error::from(status).context("killing the task"));
                    }
                }
                match tokio::time::timeout(KILL_GRACE, &mut wait).await {
                    Ok(waited) => waited,
                    Err(_) => {
                        wait.abort();
                        return Err(Error::internal(format!("the task did not end within {KILL_GRACE:?} of SIGKILL")));
                    }
                }
            }
        };
        let exit_status = waited
            .map_err(|e| Error::internal(format!("waiting for the task: {e}")))?
            .map_err(|s| Error::from(s).context("waiting for the task"))?
            .into_inner()
            .exit_status;
        let exit_code = exit_status as i32;
        cleanup.remains.task = TaskState::Exited;
        // The task's cgroup stays until the task is deleted.
        let cgroup = runtime.spec.linux().as_ref().and_then(|l| l.cgroups_path().clone());
        let oom_killed = exit_code != 0 && cgroup.is_some_and(|path| memobuild_sandbox::oom_kills(&path) > 0);
        clock.mark("command");
        // The shim closes the FIFOs once the task's processes are gone.
        fifos.finish(OUTPUT_GRACE).await;
        drop(fifos);
        clock.mark("output");
        tracing::debug!(container = id, exit_code, timed_out, cancelled, oom_killed, "step ended");
        if let Some(rootfs) = cleanup.rootfs.as_mut() {
            rootfs.release()?;
        }

        let mut outcome = ContainerOutcome { exit_code, timed_out, cancelled, oom_killed, layer: None, chain_id: None };
        if exit_code != 0 || timed_out || cancelled || spec.purpose == ContainerPurpose::Action {
            return Ok(outcome);
        }

        if let Some(map) = spec.user_namespace {
            let upper = upper.clone();
            tokio::task::spawn_blocking(move || unshift(&upper, map))
                .await
                .map_err(|e| Error::internal(format!("shifting the step's files back: {e}")))??;
            clock.mark("unshift");
        }
        let tar_path = std::env::temp_dir().join(format!("memobuild-layer-{id}.tar"));
        let result = self.capture(store, &upper, &lower, &runtime.mount_targets, spec, &tar_path).await;
        let _ = std::fs::remove_file(&tar_path);
        let diff_id = result?;
        clock.mark("capture_layer");
        let chain_id = next_chain_id(parent, &diff_id);
        // Should the commit fail, the cleanup removes the snapshot and a
        // later step that needs the chain unpacks it from the stored layer.
        match self.commit_snapshot(id, &chain_id, &lease).await {
            Ok(()) => cleanup.remains.snapshot = false,
            Err(e) => tracing::warn!(container = id, chain_id, error = %e, "committing the step's snapshot"),
        }
        clock.mark("commit_snapshot");
        outcome.layer = Some(Layer::uncompressed(diff_id));
        outcome.chain_id = Some(chain_id);
        Ok(outcome)
    }

    /// Writes the layer tar of `upper` to `tar_path` and stores it.
    async fn capture(
        &self,
        store: &dyn BlobStore,
        upper: &std::path::Path,
        lower: &super::layer_stack::LayerStack,
        mount_targets: &[String],
        spec: &ContainerSpec,
        tar_path: &std::path::Path,
    ) -> Result<Digest> {
        let (upper_owned, lower_owned, targets, epoch, path) = (
            upper.to_path_buf(),
            lower.clone(),
            mount_targets.to_vec(),
            spec.source_date_epoch,
            tar_path.to_path_buf(),
        );
        let digest = tokio::task::spawn_blocking(move || {
            let file = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
            DiffWriter { upper: &upper_owned, lower: &lower_owned, mount_targets: &targets, source_date_epoch: epoch }
                .write(file)
        })
        .await
        .map_err(|e| Error::internal(format!("layer capture task failed: {e}")))??;
        let file = tokio::fs::File::open(tar_path).await.with_context(|| format!("opening {}", tar_path.display()))?;
        let stream = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20).map(|chunk| chunk.map_err(Error::from));
        store.put(&digest, stream.boxed()).await.map_err(|e| e.context(format!("storing layer {digest}")))?;
        tracing::debug!(layer = %digest, "captured the step's layer");
        Ok(digest)
    }
}

/// Creates the host directory of a cache mount, if missing.
fn create_cache_dir(mount: &SpecMount) -> Result<()> {
    let SpecMount::Cache { source, target } = mount else { return Ok(()) };
    std::fs::create_dir_all(source)
        .with_context(|| format!("creating cache directory {} for {target}", source.display()))
}

/// `chain(parent, diff_id)` as the OCI image spec defines it.
fn next_chain_id(parent: Option<&str>, diff_id: &Digest) -> String {
    let diff_id = format!("sha256:{}", diff_id.hex());
    match parent {
        None => diff_id,
        Some(parent) => {
            let mut hasher = DigestHasher::new(DigestFunction::Sha256);
            hasher.update(format!("{parent} {diff_id}").as_bytes());
            format!("sha256:{}", hasher.finish().hex())
        }
    }
}

/// A container id from the step's hint: `memobuild-<hint>-<random>`, in
/// containerd's identifier alphabet.
fn container_id(hint: &str) -> String {
    let mut clean = String::new();
    for c in hint.chars() {
        if c.is_ascii_alphanumeric() {
            clean.push(c);
        } else if !clean.ends_with('-') && !clean.is_empty() {
            clean.push('-');
        }
        if clean.len() >= 40 {
            break;
        }
    }
    let clean = clean.trim_end_matches('-');
    let random = uuid::Uuid::new_v4().simple().to_string();
    if clean.is_empty() {
        format!("memobuild-{}", &random[..16])
    } else {
        format!("memobuild-{clean}-{}", &random[..16])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_are_clean() {
        let id = container_id("stage 1 / step 3");
        assert!(id.starts_with("memobuild-stage-1-step-3-"), "{id}");
        assert!(id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
        assert!(container_id("").starts_with("memobuild-"));
    }

    #[test]
    fn chain_ids_match_the_oci_rule() {
        let a = Digest::of(DigestFunction::Sha256, b"a");
        let b = Digest::of(DigestFunction::Sha256, b"b");
        let layers = [Layer::uncompressed(a), Layer::uncompressed(b)];
        let ids = Layer::chain_ids(&layers);
        assert_eq!(next_chain_id(None, &a), ids[0]);
        assert_eq!(next_chain_id(Some(&ids[0]), &b), ids[1]);
    }
}
