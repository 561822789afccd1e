use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use memobuild_cas::BlobStore;
use memobuild_oci::ImageReference;
use memobuild_proto::protobuf::Timestamp;
use memobuild_proto::reapi::{Action, ActionResult, Command, ExecutedActionMetadata, Platform};
use memobuild_proto::{Digest, Error, Result, ResultExt};
use prost::Message;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::file_cache::{get_checked, CacheStats, FileCache};
use crate::input_tree::InputTree;
use crate::output_capture::{Output, OutputCapture, OutputKind};
use crate::relative_path::RelativePath;
use crate::runner::{RunSpec, Runner};
use crate::scratch_dirs::ScratchDirs;

/// The platform property naming the image an action runs in.
pub const CONTAINER_IMAGE_PROPERTY: &str = "container-image";

/// The largest Action or Command proto read.
const MAX_PROTO_BYTES: u64 = 16 << 20;
/// Owner of the file cache's entries when the worker is root (`nobody`).
const CACHE_OWNER: (u32, u32) = (65534, 65534);

/// What executing an action produced.
#[derive(Clone, Debug)]
pub struct ExecutionOutcome {
    pub result: ActionResult,
    /// Set when the command did not finish on its own: DEADLINE_EXCEEDED
    /// after a timeout (`result` then holds its exit code and what it wrote
    /// to stdout and stderr, but no outputs).
    pub status: Option<Error>,
}

/// Executes REAPI actions on this machine, one call per action, any number
/// at once: fetch inputs -> run -> capture outputs -> upload -> clean up.
///
/// `work_dir` holds the file cache (`cache/`) and a directory per running
/// action (`actions/slot-N/` with `root/`, the input root, and the captured
/// `stdout` and `stderr`), cleaned for the next action when one is done.
pub struct ActionExecutor {
    cas: Arc<dyn BlobStore>,
    cache: FileCache,
    scratch: Arc<ScratchDirs>,
    runner: Arc<dyn Runner>,
}

impl ActionExecutor {
    /// Opens the file cache under `work_dir` (at most `cache_max_bytes`) and
    /// removes the action directories a previous run left behind.
    pub async fn new(
        cas: Arc<dyn BlobStore>,
        work_dir: PathBuf,
        cache_max_bytes: u64,
        runner: Arc<dyn Runner>,
    ) -> Result<Self> {
        let scratch = ScratchDirs::open(work_dir.join("actions")).await?;
        let owner = nix::unistd::geteuid().is_root().then_some(CACHE_OWNER);
        let cache = FileCache::open(work_dir.join("cache"), cas.clone(), cache_max_bytes, owner).await?;
        Ok(ActionExecutor { cas, cache, scratch, runner })
    }

    pub fn cache_stats(&self) -> CacheStats {
        self.cache.stats()
    }

    /// Executes the action: materializes its input root, runs its command,
    /// uploads its outputs. A command that exits non-zero is an
    /// `ActionResult` with that exit code, not an error. Errors:
    /// FAILED_PRECONDITION naming every missing blob; INVALID_ARGUMENT for
    /// bad protos and unsafe paths (naming the path); CANCELLED when `cancel`
    /// fires. A timeout is an outcome with DEADLINE_EXCEEDED status.
    pub async fn execute(
        &self,
        action_digest: &Digest,
        worker_name: &str,
        cancel: CancellationToken,
    ) -> Result<ExecutionOutcome> {
        let span = tracing::info_span!("execute", action = %action_digest, worker = worker_name);
        let dir = self.scratch.take().await?;
        let outcome = self.execute_in(dir.path(), action_digest, worker_name, cancel).instrument(span).await;
        // Cleaned for the next action after this one's result is out.
        drop(dir);
        outcome.with_context(|| format!("executing action {}", action_digest.subject()))
    }

    async fn execute_in(
        &self,
        dir: &Path,
        action_digest: &Digest,
        worker_name: &str,
        cancel: CancellationToken,
    ) -> Result<ExecutionOutcome> {
        let mut metadata = ExecutedActionMetadata {
            worker: worker_name.to_string(),
            worker_start_timestamp: Some(now()),
            input_fetch_start_timestamp: Some(now()),
            ..Default::default()
        };
        let root = dir.join("root");
        let prepared = tokio::select! {
            prepared = self.prepare(action_digest, &root) => prepared?,
            () = cancel.cancelled() => return Err(cancelled("while fetching inputs")),
        };
        metadata.input_fetch_completed_timestamp = Some(now());

        let spec = RunSpec {
            argv: prepared.command.arguments.clone(),
            env: prepared.command.environment_variables.iter().map(|v| (v.name.clone(), v.value.clone())).collect(),
            working_dir: prepared.working_dir.under(&root),
            root: root.clone(),
            network: prepared.network,
            as_root: prepared.as_root,
            image: prepared.image,
            timeout: prepared.timeout,
            stdout: dir.join("stdout"),
            stderr: dir.join("stderr"),
        };
        metadata.execution_start_timestamp = Some(now());
        let run = self.runner.run(spec.clone(), cancel.clone()).await?;
        metadata.execution_completed_timestamp = Some(now());
        if run.cancelled {
            return Err(cancelled("while running"));
        }

        metadata.output_upload_start_timestamp = Some(now());
        let function = action_digest.function();
        let mut capture = OutputCapture::new(function, prepared.command.output_directory_format);
        let outputs = if run.timed_out { Vec::new() } else { prepared.outputs };
        let (stdout, stderr, mut capture) = blocking(move || -> Result<_> {
            let stdout = capture.add_file(&spec.stdout)?;
            let stderr = capture.add_file(&spec.stderr)?;
            capture.capture_outputs(&root, &outputs)?;
            Ok((stdout, stderr, capture))
        })
        .await?;
        let mut capture = tokio::select! {
            uploaded = async move { capture.upload(self.cas.as_ref()).await.map(|()| capture) } => uploaded?,
            () = cancel.cancelled() => return Err(cancelled("while uploading outputs")),
        };
        metadata.output_upload_completed_timestamp = Some(now());
        metadata.worker_completed_timestamp = Some(now());

        // Legacy clients read symlinks from the fields they declared them in.
        #[allow(deprecated)]
        let result = ActionResult {
            output_files: std::mem::take(&mut capture.files),
            output_file_symlinks: std::mem::take(&mut capture.file_symlinks),
            output_symlinks: std::mem::take(&mut capture.symlinks),
            output_directories: std::mem::take(&mut capture.output_directories),
            output_directory_symlinks: std::mem::take(&mut capture.directory_symlinks),
            exit_code: run.exit_code,
            stdout_digest: Some(stdout.to_proto()),
            stderr_digest: Some(stderr.to_proto()),
            execution_metadata: Some(metadata),
            ..Default::default()
        };
        let status = if run.timed_out {
            let timeout = prepared.timeout.unwrap_or_default();
            Some(Error::new(tonic::Code::DeadlineExceeded, format!("the command timed out after {timeout:?}")))
        } else {
            run.memory_limit_exceeded.map(|limit| {
                Error::resource_exhausted(format!(
                    "the command was killed (exit code {}) for using more than the sandbox's memory limit of {} \
                     MiB ([worker.sandbox] memory_bytes = {limit})",
                    run.exit_code,
                    limit >> 20
                ))
            })
        };
        tracing::debug!(exit_code = run.exit_code, timed_out = run.timed_out, "action executed");
        Ok(ExecutionOutcome { result, status })
    }

    /// Reads the action and command, and materializes the input root at
    /// `root` with the output paths' parent directories.
    async fn prepare(&self, action_digest: &Digest, root: &Path) -> Result<Prepared> {
        let function = action_digest.function();
        let action: Action = self.read_proto(action_digest).await.context("reading the action")?;
        let command_digest = Digest::from_proto_field(function, action.command_digest.as_ref(), "command_digest")?;
        let root_digest = Digest::from_proto_field(function, action.input_root_digest.as_ref(), "input_root_digest")?;
        let timeout = match &action.timeout {
            Some(t) if t.seconds < 0 || t.nanos < 0 => {
                return Err(Error::invalid_argument(format!("negative timeout {}s {}ns", t.seconds, t.nanos)))
            }
            Some(t) if t.seconds > 0 || t.nanos > 0 => Some(Duration::new(t.seconds as u64, t.nanos as u32)),
            _ => None,
        };
        let (command, tree) =
            tokio::join!(self.read_proto::<Command>(&command_digest), InputTree::load(&self.cache, root_digest));
        let (command, missing_command) = match command {
            Ok(command) => (Some(command), None),
            Err(e) if e.code() == tonic::Code::FailedPrecondition => (None, Some(command_digest)),
            Err(e) => return Err(e.context("reading the command")),
        };
        let tree = tree?;
        tracing::debug!(files = tree.file_count(), "fetching the input root");
        let pins = tree.fetch(&self.cache, missing_command.into_iter().collect()).await?;
        let command = command.ok_or_else(|| Error::internal("the command was neither read nor reported missing"))?;
        check_command(&command)?;
        let working_dir = RelativePath::working_directory(&command.working_directory)?;
        let outputs = outputs(&command, &working_dir)?;
        // Command.platform is deprecated in favour of Action.platform; old clients set only it.
        #[allow(deprecated)]
        let platforms = [action.platform.as_ref(), command.platform.as_ref()];
        let network = platforms.iter().any(|p| wants_network(*p));
        let as_root = platforms.iter().any(|p| wants_root(*p));
        let image = container_image(&platforms)?;
        let root_owned = root.to_path_buf();
        let (working_dir, outputs) = blocking(move || -> Result<_> {
            std::fs::create_dir(&root_owned)?;
            tree.materialize(&root_owned, &pins)?;
            drop(pins);
            create_dirs(&root_owned, &working_dir, true)?;
            for output in &outputs {
                if let Some(parent) = output.resolved.parent() {
                    create_dirs(&root_owned, &parent, false)?;
                }
            }
            Ok((working_dir, outputs))
        })
        .await
        .context("materializing the input root")?;
        Ok(Prepared { command, working_dir, outputs, network, as_root, image, timeout })
    }

    /// A proto straight from the CAS, its digest checked; FAILED_PRECONDITION
    /// when the CAS lacks it. The Action and Command are this action's own,
    /// read once: the file cache (a file created per blob) is for what input
    /// roots share.
    async fn read_proto<M: Message + Default>(&self, digest: &Digest) -> Result<M> {
        let data = match get_checked(self.cas.as_ref(), digest, MAX_PROTO_BYTES).await {
            Ok(data) => data,
            Err(e) if e.code() == tonic::Code::NotFound => return Err(Error::missing_blobs(&[*digest])),
            Err(e) => return Err(e),
        };
        M::decode(data).with_context(|| format!("decoding {}", digest.subject()))
    }
}

/// What `prepare` learned.
struct Prepared {
    command: Command,
    working_dir: RelativePath,
    outputs: Vec<Output>,
    network: bool,
    as_root: bool,
    image: Option<ImageReference>,
    timeout: Option<Duration>,
}

fn check_command(command: &Command) -> Result<()> {
    if command.arguments.is_empty() {
        return Err(Error::invalid_argument("the command has no arguments"));
    }
    if let Some(arg) = command.arguments.iter().find(|a| a.contains('\0')) {
        return Err(Error::invalid_argument(format!("argument {arg:?} contains a NUL byte")));
    }
    for var in &command.environment_variables {
        if var.name.is_empty() || var.name.contains(['=', '\0']) || var.value.contains('\0') {
            return Err(Error::invalid_argument(format!(
                "environment variable {:?}: names must be non-empty without = or NUL, values without NUL",
                var.name
            )));
        }
    }
    Ok(())
}

/// The command's outputs: `output_paths`, or the legacy fields when it has none.
#[allow(deprecated)]
fn outputs(command: &Command, working_dir: &RelativePath) -> Result<Vec<Output>> {
    let declared: Vec<(&String, OutputKind)> = if command.output_paths.is_empty() {
        let files = command.output_files.iter().map(|p| (p, OutputKind::File));
        files.chain(command.output_directories.iter().map(|p| (p, OutputKind::Directory))).collect()
    } else {
        command.output_paths.iter().map(|p| (p, OutputKind::Path)).collect()
    };
    declared
        .into_iter()
        .map(|(path, kind)| Ok(Output { path: path.clone(), resolved: working_dir.output(path)?, kind }))
        .collect()
}

/// Whether the platform asks for network: `network` set to `on`, `true`,
/// `1`, `enabled` or `standard`, or `dockerNetwork` set to `standard`.
fn wants_network(platform: Option<&Platform>) -> bool {
    platform.is_some_and(|p| {
        p.properties.iter().any(|prop| match prop.name.as_str() {
            "network" => matches!(prop.value.as_str(), "on" | "true" | "1" | "enabled" | "standard"),
            "dockerNetwork" => prop.value == "standard",
            _ => false,
        })
    })
}

/// Whether the platform asks to run as root (`dockerRunAsRoot` set to
/// `true`, as Bazel's RBE configurations send it).
fn wants_root(platform: Option<&Platform>) -> bool {
    platform.is_some_and(|p| p.properties.iter().any(|prop| prop.name == "dockerRunAsRoot" && prop.value == "true"))
}

/// The image the platform asks to run in: `container-image` set to
/// `docker://REFERENCE` (as Bazel's RBE configurations send it) or a plain
/// reference; the first platform that sets it wins.
fn container_image(platforms: &[Option<&Platform>]) -> Result<Option<ImageReference>> {
    let value = platforms
        .iter()
        .flatten()
        .flat_map(|p| p.properties.iter())
        .find(|prop| prop.name == CONTAINER_IMAGE_PROPERTY)
        .map(|prop| prop.value.as_str());
    let Some(value) = value else { return Ok(None) };
    let reference = value.strip_prefix("docker://").unwrap_or(value);
    reference.parse().map(Some).map_err(|e: Error| {
        Error::invalid_argument(format!("platform property {CONTAINER_IMAGE_PROPERTY}={value:?}: {}", e.message()))
    })
}

/// Creates `path` under `root` and its parents, never through a symlink.
/// A component that exists and is not a directory is an error when
/// `strict`, else creation silently stops there (the command will see it).
fn create_dirs(root: &Path, path: &RelativePath, strict: bool) -> Result<()> {
    let mut current = root.to_path_buf();
    for component in path.components() {
        current.push(component);
        match std::fs::symlink_metadata(&current) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) if strict => {
                return Err(Error::invalid_argument(format!(
                    "{path}: {component:?} is not a directory in the input root"
                )))
            }
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir(&current).with_context(|| format!("creating {path}"))?
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Runs `f` on the blocking pool.
pub(crate) async fn blocking<T: Send + 'static, E: Into<Error> + Send + 'static>(
    f: impl FnOnce() -> std::result::Result<T, E> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Error::internal(e.to_string()))?.map_err(Into::into)
}

fn cancelled(when: &str) -> Error {
    Error::new(tonic::Code::Cancelled, format!("cancelled {when}"))
}

fn now() -> Timestamp {
    let since = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    Timestamp { seconds: since.as_secs() as i64, nanos: since.subsec_nanos() as i32 }
}
