use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use memobuild_cas::BlobStore;
use memobuild_engine::{NetworkPolicy, ResourceLimits};
use memobuild_frontend::NetworkMode;
use memobuild_oci::{ImageReference, RegistryClient};
use memobuild_proto::{Error, Platform, Result, ResultExt};
use memobuild_sandbox::SandboxConfig;
use parking_lot::Mutex;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use crate::action_executor::blocking;
use crate::containerd::{ContainerPurpose, ContainerSpec, LogChunk, SpecMount, StepNetwork};
use crate::runner::{RunOutcome, RunSpec, Runner};
use crate::steps::StepRunner;

/// Where an action's input root is bound in its container.
pub const INPUT_ROOT_MOUNT: &str = "/memobuild/input";
/// How long an image named by tag is used before the tag is resolved again.
const TAG_TTL: Duration = Duration::from_secs(60);

/// Runs actions whose platform names a `container-image` in that image's
/// rootfs through containerd, and every other action on `host`.
///
/// An image is pulled into the CAS and unpacked into containerd snapshots
/// once (concurrent actions wait for the first); the snapshots outlive the
/// worker. The action's input root is bound read-write at
/// [`INPUT_ROOT_MOUNT`], its working directory below it, its environment the
/// image's `Env` with the action's variables over it. It runs as the
/// sandbox's unprivileged user (uid 0 with `dockerRunAsRoot`), without
/// capabilities, with no_new_privs, the default seccomp profile, the pids
/// limit and the sandbox's memory limit; its changes to the image's
/// filesystem are thrown away.
pub struct ImageRunner {
    host: Arc<dyn Runner>,
    steps: Arc<StepRunner>,
    cas: Arc<dyn BlobStore>,
    registry: RegistryClient,
    sandbox: SandboxConfig,
    network: NetworkPolicy,
    /// The snapshot chain of each image, by reference as written.
    images: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<PreparedImage>>>>>,
}

/// An image unpacked into snapshots.
#[derive(Clone)]
struct PreparedImage {
    /// The top chain id; `None` for an image without layers.
    chain: Option<String>,
    /// The image config's `Env` (`NAME=value`).
    env: Vec<String>,
    resolved_at: Instant,
}

impl ImageRunner {
    pub fn new(
        host: Arc<dyn Runner>,
        steps: Arc<StepRunner>,
        cas: Arc<dyn BlobStore>,
        registry: RegistryClient,
        sandbox: SandboxConfig,
    ) -> Self {
        let network = steps.network_policy();
        ImageRunner { host, steps, cas, registry, sandbox, network, images: Mutex::default() }
    }

    /// `image` unpacked, pulled on first use (a tag again once [`TAG_TTL`]
    /// has passed).
    async fn prepared(&self, image: &ImageReference) -> Result<PreparedImage> {
        let slot = self.images.lock().entry(image.as_written().to_string()).or_default().clone();
        let mut prepared = slot.lock().await;
        if let Some(ready) = prepared.as_ref() {
            if image.digest().is_some() || ready.resolved_at.elapsed() < TAG_TTL {
                return Ok(ready.clone());
            }
        }
        let started = Instant::now();
        let pulled = self.registry.pull(image, &Platform::host().to_string(), &*self.cas).await?;
        let containerd = self.steps.containerd().await?;
        let chain = containerd
            .ensure_chain(&*self.cas, &pulled.layers)
            .await
            .with_context(|| format!("unpacking {}", pulled.resolved))?;
        tracing::info!(image = %pulled.resolved, layers = pulled.layers.len(), elapsed = ?started.elapsed(), "container image ready");
        let env = pulled.config.config().as_ref().and_then(|c| c.env().clone()).unwrap_or_default();
        let ready = PreparedImage { chain, env, resolved_at: Instant::now() };
        *prepared = Some(ready.clone());
        Ok(ready)
    }

    async fn run_in_image(
        &self,
        spec: RunSpec,
        image: ImageReference,
        cancel: CancellationToken,
    ) -> Result<RunOutcome> {
        let image = self.prepared(&image).await.with_context(|| format!("container-image {}", image.as_written()))?;
        let (uid, gid) = if spec.as_root { (0, 0) } else { (self.sandbox.uid, self.sandbox.gid) };
        let root = spec.root.clone();
        blocking(move || memobuild_sandbox::give_dirs(&root, uid, gid)).await?;
        let lease = if spec.network {
            if let Some(why) = self.network.refusal(NetworkMode::Default) {
                return Err(Error::new(tonic::Code::PermissionDenied, why));
            }
            Some(self.steps.default_network().await?)
        } else {
            None
        };
        let network = match &lease {
            Some(lease) => StepNetwork::Joined { netns: lease.netns(), resolv_conf: lease.resolv_conf() },
            None => StepNetwork::Isolated,
        };
        let container = ContainerSpec {
            id_hint: "action".into(),
            argv: spec.argv.clone(),
            env: merged_env(&image.env, &spec.env),
            cwd: container_path(&spec.root, &spec.working_dir)?,
            user: Some(format!("{uid}:{gid}")),
            network,
            limits: ResourceLimits { memory: self.sandbox.memory_bytes, ..Default::default() },
            mounts: vec![SpecMount::Bind {
                source: spec.root.clone(),
                target: INPUT_ROOT_MOUNT.into(),
                readonly: false,
            }],
            timeout: spec.timeout,
            source_date_epoch: None,
            hostname: "localhost".into(),
            insecure: false,
            purpose: ContainerPurpose::Action,
            user_namespace: None,
        };
        let (logs, chunks) = tokio::sync::mpsc::unbounded_channel();
        let writer = tokio::spawn(write_streams(chunks, spec.stdout.clone(), spec.stderr.clone()));
        let containerd = self.steps.containerd().await?;
        let outcome = containerd.run(&*self.cas, image.chain.as_deref(), &container, logs, cancel).await;
        drop(lease);
        writer.await.map_err(|e| Error::internal(format!("writing the action's output: {e}")))??;
        let outcome = outcome?;
        Ok(RunOutcome {
            exit_code: outcome.exit_code,
            timed_out: outcome.timed_out,
            cancelled: outcome.cancelled,
            memory_limit_exceeded: self.sandbox.memory_bytes.filter(|_| outcome.oom_killed),
        })
    }
}

#[async_trait]
impl Runner for ImageRunner {
    async fn run(&self, mut spec: RunSpec, cancel: CancellationToken) -> Result<RunOutcome> {
        match spec.image.take() {
            Some(image) => self.run_in_image(spec, image, cancel).await,
            None => self.host.run(spec, cancel).await,
        }
    }
}

/// `working_dir` (under the input root `root` on the host) as the
/// container sees it.
fn container_path(root: &Path, working_dir: &Path) -> Result<String> {
    let relative = working_dir.strip_prefix(root).map_err(|_| {
        Error::internal(format!("working directory {} is outside the input root", working_dir.display()))
    })?;
    if relative.as_os_str().is_empty() {
        return Ok(INPUT_ROOT_MOUNT.to_string());
    }
    let path = Path::new(INPUT_ROOT_MOUNT).join(relative);
    path.to_str()
        .map(str::to_string)
        .ok_or_else(|| Error::invalid_argument(format!("working directory {} is not UTF-8", relative.display())))
}

/// Writes the container's output to the action's stdout and stderr files
/// as it comes; a stream that stays empty leaves an empty file.
async fn write_streams(
    mut chunks: tokio::sync::mpsc::UnboundedReceiver<LogChunk>,
    stdout: std::path::PathBuf,
    stderr: std::path::PathBuf,
) -> Result<()> {
    let create = |path: std::path::PathBuf| async move {
        tokio::fs::File::create(&path).await.with_context(|| format!("creating {}", path.display()))
    };
    let (mut out, mut err) = (create(stdout).await?, create(stderr).await?);
    while let Some(chunk) = chunks.recv().await {
        match chunk {
            LogChunk::Stdout(data) => out.write_all(&data).await?,
            LogChunk::Stderr(data) => err.write_all(&data).await?,
        }
    }
    out.flush().await?;
    err.flush().await?;
    Ok(())
}

/// The environment of an action in an image: the image's `Env`, then the
/// action's variables, which replace the image's of the same name (as
/// `docker run -e` does).
fn merged_env(image: &[String], action: &[(String, String)]) -> Vec<String> {
    let set_by_action = |entry: &String| {
        let name = entry.split_once('=').map_or(entry.as_str(), |(name, _)| name);
        action.iter().any(|(k, _)| k == name)
    };
    image
        .iter()
        .filter(|entry| !set_by_action(entry))
        .cloned()
        .chain(action.iter().map(|(k, v)| format!("{k}={v}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn working_directories_map_below_the_mount() {
        let root = Path::new("/work/actions/x/root");
        assert_eq!(container_path(root, root).unwrap(), "/memobuild/input");
        assert_eq!(container_path(root, &root.join("pkg/sub")).unwrap(), "/memobuild/input/pkg/sub");
        assert!(container_path(root, Path::new("/elsewhere")).is_err());
    }

    #[test]
    fn the_actions_variables_replace_the_images() {
        let image = ["PATH=/usr/bin:/bin".to_string(), "LANG=C.UTF-8".to_string(), "BARE".to_string()];
        let action = [("PATH".to_string(), "/opt/bin".to_string()), ("CC".to_string(), "gcc".to_string())];
        assert_eq!(merged_env(&image, &action), ["LANG=C.UTF-8", "BARE", "PATH=/opt/bin", "CC=gcc"]);
        assert_eq!(merged_env(&[], &action), ["PATH=/opt/bin", "CC=gcc"]);
    }
}
