//! `memobuild build`: a local build with everything embedded.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use memobuild_engine::{
    check_docker, metadata, parse_entitlement, parse_network, write_iidfile, write_metadata_file, write_outputs,
    BuildRecord, BuildSettings, BuiltOutput, ContextFiles, EventSender, ExportRequest, HostEntry, ImageBuild,
    OutputSpec, ResourceLimits, SecretSpec, Secrets, WholeContext, HOST_ENTITLEMENT, INSECURE_ENTITLEMENT,
};
use memobuild_frontend::{
    context_scope, BuildContext, ContextScanner, ContextScope, DockerIgnore, Dockerfile, NetworkMode, Platform,
};
use memobuild_worker::containerd::{IdMap, OciRuntime};
use memobuild_worker::steps::{SshAgents, SshSpec};
use tokio_util::sync::CancellationToken;

use super::build_source::BuildSource;
use super::flag_values::{attestation_off, parse_annotation, reject_cache_transfer};
use super::local_state::{LocalState, StepSettings};
use super::progress::{render, ProgressMode, StepCounts};
use super::run_limits::RunLimitArgs;

/// The flags of `docker buildx build` that memobuild takes.
#[derive(clap::Args, Clone, Debug)]
pub struct BuildArgs {
    /// The build context: a directory, a git URL (URL#REF:DIR), or - to read
    /// a tar of it (plain or compressed), or a Dockerfile alone, from stdin.
    pub context: PathBuf,
    /// The Dockerfile, - for stdin [default: CONTEXT/Dockerfile].
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// Name and tag of the image (repeatable); used by outputs and --push.
    #[arg(short = 't', long = "tag")]
    pub tags: Vec<String>,
    /// A build argument, NAME=VALUE (repeatable).
    #[arg(long = "build-arg", value_parser = parse_pair)]
    pub build_args: Vec<(String, String)>,
    /// Build this stage and what it needs.
    #[arg(long)]
    pub target: Option<String>,
    /// The target platform, e.g. linux/amd64 [default: this machine's].
    #[arg(long)]
    pub platform: Option<String>,
    /// type=oci,dest=FILE | type=oci,dest=DIR,tar=false | type=docker,dest=FILE |
    /// type=docker (docker load) | type=local,dest=DIR | type=registry (repeatable).
    #[arg(short = 'o', long = "output")]
    pub outputs: Vec<OutputSpec>,
    /// Push the image to every -t tag (same as --output type=registry).
    #[arg(long)]
    pub push: bool,
    /// Load the image into Docker with `docker load` (same as --output type=docker).
    #[arg(long)]
    pub load: bool,
    /// A label on the image config, KEY=VALUE (repeatable); overrides the Dockerfile's LABEL.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_pair)]
    pub labels: Vec<(String, String)>,
    /// An annotation on the image manifest, [manifest:]KEY=VALUE (repeatable).
    #[arg(long = "annotation", value_name = "KEY=VALUE", value_parser = parse_annotation)]
    pub annotations: Vec<(String, String)>,
    /// Run every step, ignoring cached results.
    #[arg(long)]
    pub no_cache: bool,
    /// auto, tty, plain, json or quiet.
    #[arg(long, value_enum, default_value = "auto")]
    pub progress: ProgressMode,
    /// No progress output; print only the image id (sha256:...) on stdout.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Accepted for compatibility: memobuild always resolves tags against the registry.
    #[arg(long)]
    pub pull: bool,
    /// An image a FROM or --from names replaced: NAME=DIR, NAME=GIT-URL,
    /// NAME=docker-image://REF or NAME=oci-layout://PATH[:TAG] (repeatable).
    #[arg(long = "build-context", value_parser = parse_pair)]
    pub build_contexts: Vec<(String, String)>,
    /// A secret for RUN --mount=type=secret: id=ID,src=FILE | id=ID,env=VAR | id=ID
    /// (repeatable). Not part of any cache key.
    #[arg(long = "secret", value_name = "SPEC")]
    pub secrets: Vec<SecretSpec>,
    /// An SSH agent for RUN --mount=type=ssh: default | ID[=SOCKET|KEY[,KEY...]]
    /// (repeatable; no value: $SSH_AUTH_SOCK).
    #[arg(long = "ssh", value_name = "SPEC")]
    pub ssh: Vec<SshSpec>,
    /// Write the image id (sha256: digest of the config) to this file.
    #[arg(long)]
    pub iidfile: Option<PathBuf>,
    /// Write the result's digests, descriptor and names as JSON, as buildx does.
    #[arg(long = "metadata-file", value_name = "FILE")]
    pub metadata_file: Option<PathBuf>,
    /// The network of RUN steps without their own RUN --network: default (an own
    /// namespace with outbound access through NAT), none or host (needs --allow network.host).
    #[arg(long, value_name = "MODE", default_value = "default", value_parser = parse_network)]
    pub network: NetworkMode,
    /// An entitlement, as buildx: network.host lets RUN steps use the host's network.
    #[arg(long = "allow", value_name = "ENTITLEMENT", value_parser = parse_entitlement)]
    pub allow: Vec<String>,
    /// An /etc/hosts entry for RUN steps, HOST:IP (repeatable); not part of any cache key.
    /// HOST:host-gateway names the worker's side of RUN's default network (its bridge's gateway).
    #[arg(long = "add-host", value_name = "HOST:IP")]
    pub add_hosts: Vec<HostEntry>,
    /// Only false is accepted: attestations are not supported yet.
    #[arg(long, value_name = "false", value_parser = attestation_off)]
    pub provenance: Option<String>,
    /// Only false is accepted: attestations are not supported yet.
    #[arg(long, value_name = "false", value_parser = attestation_off)]
    pub sbom: Option<String>,
    /// Only type=...,disabled=true is accepted: attestations are not supported yet.
    #[arg(long, value_name = "SPEC", value_parser = attestation_off)]
    pub attest: Vec<String>,
    /// Not supported: the cache lives in --state-dir (see `memobuild remote build` to share it).
    #[arg(long = "cache-from", value_name = "SPEC", value_parser = reject_cache_transfer)]
    pub cache_from: Vec<String>,
    /// Not supported: the cache lives in --state-dir (see `memobuild remote build` to share it).
    #[arg(long = "cache-to", value_name = "SPEC", value_parser = reject_cache_transfer)]
    pub cache_to: Vec<String>,
    #[command(flatten)]
    pub limits: RunLimitArgs,
    /// Print the plan (steps, keys, cached or not) without building.
    #[arg(long)]
    pub dry_run: bool,
    /// Run the build checks only (same as --call check): plan every stage, print the
    /// warnings and fail when one is found. No step runs.
    #[arg(long)]
    pub check: bool,
    /// What to do with the Dockerfile, as buildx: build (the default) or check.
    #[arg(long, value_enum, value_name = "METHOD")]
    pub call: Option<CallMethod>,
    /// Where the CAS, caches and build records live [default: $XDG_STATE_HOME/memobuild].
    #[arg(long, env = "MEMOBUILD_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// containerd's socket [default: /run/containerd/containerd.sock, else a private one].
    #[arg(long, env = "CONTAINERD_ADDRESS")]
    pub containerd_address: Option<PathBuf>,
    /// Run RUN steps in a user namespace whose ids 0 to SIZE-1 (default 65536) are host ids from
    /// HOST_ID up: the step's root is not the host's root.
    #[arg(long, value_name = "HOST_ID[:SIZE]", value_parser = parse_userns_remap)]
    pub userns_remap: Option<IdMap>,
    /// What runs RUN steps' containers: auto (crun when it is installed and can manage this
    /// host's cgroups, else runc), runc, crun, or the path of a runc-compatible binary.
    #[arg(long, value_name = "RUNTIME", default_value = "auto", value_parser = parse_oci_runtime)]
    pub oci_runtime: OciRuntime,
}

fn parse_oci_runtime(text: &str) -> Result<OciRuntime, String> {
    text.parse().map_err(|e: memobuild_proto::Error| e.message().to_string())
}

fn parse_userns_remap(text: &str) -> Result<IdMap, String> {
    IdMap::parse_remap(text).map_err(|e| e.message().to_string())
}

/// `--call`: the frontend methods memobuild has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CallMethod {
    Build,
    Check,
}

impl BuildArgs {
    /// How this build runs its RUN steps here.
    pub fn step_settings(&self) -> StepSettings {
        StepSettings {
            containerd_address: self.containerd_address.clone(),
            userns_remap: self.userns_remap,
            oci_runtime: self.oci_runtime.clone(),
        }
    }

    /// Whether only the build checks run (`--check` or `--call check`).
    pub fn check(&self) -> bool {
        self.check || self.call == Some(CallMethod::Check)
    }
}

fn parse_pair(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected NAME=VALUE, got {s:?}"))
}

/// What a build did.
#[derive(Debug)]
pub struct BuildOutcome {
    pub counts: StepCounts,
    /// The manifest digest of the image exported last.
    pub image_digest: Option<String>,
    /// The image id (`sha256:` digest of the config); `None` in a dry run.
    pub image_id: Option<String>,
}

pub fn anyhow_of(e: memobuild_proto::Error) -> anyhow::Error {
    anyhow::anyhow!("{}", e.message())
}

/// How much of the context a build scans before it plans.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContextPart {
    /// All of it.
    Whole,
    /// The paths the Dockerfile names; planning scans the rest if it needs
    /// more (a base image's ONBUILD, a symlink leading elsewhere).
    Named,
}

/// What a build needs from its flags and files, read and checked before
/// anything runs: the same for `memobuild build` and `memobuild remote build`.
pub struct BuildInputs {
    pub dockerfile_name: String,
    pub dockerfile: String,
    pub context_dir: PathBuf,
    pub context: Arc<BuildContext>,
    scanner: ContextScanner,
    pub platform: Platform,
    pub outputs: Vec<OutputSpec>,
    pub source_date_epoch: Option<u64>,
    pub secrets: Arc<Secrets>,
    pub limits: ResourceLimits,
    pub mode: ProgressMode,
    /// A context from stdin or git, kept for the build's length.
    _temporary: Option<tempfile::TempDir>,
}

impl BuildInputs {
    /// Reads the Dockerfile, scans `part` of the context (with the stat
    /// cache in `stat_cache`) and checks every flag.
    pub async fn read(args: &BuildArgs, stat_cache: PathBuf, part: ContextPart) -> anyhow::Result<Self> {
        let source = BuildSource::read(&args.context, args.file.as_deref()).await?;
        let context_dir = source.context_dir;
        let ignore = DockerIgnore::load(&context_dir, source.dockerfile_path.as_deref()).map_err(anyhow_of)?;
        let mut scanner = ContextScanner::new(&context_dir, ignore);
        if source.temporary.is_none() {
            scanner = scanner.with_cache_dir(stat_cache);
        }
        // A Dockerfile that does not parse is reported when it is planned.
        let scope = match (part, Dockerfile::parse(&source.dockerfile_name, &source.dockerfile)) {
            (ContextPart::Named, Ok(dockerfile)) => context_scope(&dockerfile),
            _ => ContextScope::Whole,
        };
        let (context, _) = tokio::task::block_in_place(|| scanner.scan_within(&scope)).map_err(anyhow_of)?;
        let platform = match &args.platform {
            Some(p) => p.parse::<Platform>().map_err(anyhow_of)?,
            None => Platform::host(),
        };
        let mut outputs = args.outputs.clone();
        if args.push && !outputs.iter().any(|o| matches!(o, OutputSpec::Registry { .. })) {
            outputs.push(OutputSpec::Registry { compression: memobuild_oci::Compression::Gzip });
        }
        if args.load && !outputs.iter().any(|o| matches!(o, OutputSpec::Load { .. })) {
            outputs.push(OutputSpec::Load { compression: memobuild_oci::Compression::Gzip });
        }
        let source_date_epoch = std::env::var("SOURCE_DATE_EPOCH")
            .ok()
            .or_else(|| args.build_args.iter().find(|(k, _)| k == "SOURCE_DATE_EPOCH").map(|(_, v)| v.clone()))
            .map(|v| v.parse::<u64>().context("SOURCE_DATE_EPOCH must be seconds since the epoch"))
            .transpose()?;
        let mode =
            if args.quiet { ProgressMode::Quiet } else { args.progress.resolve(std::io::stderr().is_terminal()) };
        Ok(BuildInputs {
            dockerfile_name: source.dockerfile_name,
            dockerfile: source.dockerfile,
            context_dir,
            context: Arc::new(context),
            scanner,
            platform,
            outputs,
            source_date_epoch,
            secrets: Arc::new(Secrets::load(&args.secrets).map_err(anyhow_of)?),
            limits: args.limits.resource_limits()?,
            mode,
            _temporary: source.temporary,
        })
    }

    /// The engine's request for these inputs, its context read from
    /// `context_files`.
    pub fn image_build(&self, args: &BuildArgs, context_files: ContextFiles) -> ImageBuild {
        ImageBuild {
            dockerfile_name: self.dockerfile_name.clone(),
            dockerfile: self.dockerfile.clone(),
            context: self.context.clone(),
            whole_context: (*self.context.scope() != ContextScope::Whole).then(|| {
                let scanner = self.scanner.clone();
                Box::new(move || scanner.scan().map(|(context, _)| context)) as WholeContext
            }),
            context_files,
            build_args: args.build_args.iter().cloned().collect(),
            target: args.target.clone(),
            platform: self.platform.clone(),
            build_contexts: args.build_contexts.iter().cloned().collect(),
            settings: BuildSettings {
                no_cache: args.no_cache,
                source_date_epoch: self.source_date_epoch,
                dry_run: args.dry_run,
                network: args.network,
                host_network_allowed: args.allow.iter().any(|a| a == HOST_ENTITLEMENT),
                insecure_allowed: args.allow.iter().any(|a| a == INSECURE_ENTITLEMENT),
            },
            labels: args.labels.clone(),
            annotations: args.annotations.iter().cloned().collect(),
            exports: self.exports(),
            tags: args.tags.clone(),
            secrets: self.secrets.clone(),
            ssh_sockets: BTreeMap::new(),
            hosts: args.add_hosts.clone(),
            limits: self.limits.clone(),
            check: args.check(),
        }
    }

    /// What the engine must export for the outputs asked for.
    pub fn exports(&self) -> Vec<ExportRequest> {
        let mut exports: Vec<ExportRequest> = Vec::new();
        for request in self.outputs.iter().filter_map(OutputSpec::export_request) {
            if !exports.contains(&request) {
                exports.push(request);
            }
        }
        exports
    }
}

/// Writes the outputs on this machine and the files that describe the
/// image (`--iidfile`, `--metadata-file`); returns the manifest digest of
/// the image exported last.
pub async fn write_results(
    args: &BuildArgs,
    inputs: &BuildInputs,
    cas: &dyn memobuild_cas::BlobStore,
    built: &BuiltOutput,
    events: &EventSender,
) -> anyhow::Result<Option<String>> {
    if args.check() {
        // Warnings fail a check: this one found none.
        if inputs.mode != ProgressMode::Json {
            eprintln!("Check complete, no warnings found.");
        }
        return Ok(None);
    }
    let Some(id) = &built.image_id else { return Ok(None) };
    if inputs.outputs.is_empty() && inputs.mode != ProgressMode::Quiet {
        // As buildx says it: the build is cached, nothing is written.
        eprintln!("no --output or --push given: the result stays in the build cache only");
    }
    let exported = write_outputs(cas, &built.images, &built.filesystem, &inputs.outputs, &args.tags, events)
        .await
        .map_err(anyhow_of)?;
    if let Some(path) = &args.iidfile {
        write_iidfile(path, id).map_err(anyhow_of)?;
    }
    if let Some(path) = &args.metadata_file {
        write_metadata_file(path, &metadata(id, exported.as_ref(), &args.tags)).map_err(anyhow_of)?;
    }
    Ok(exported.map(|image| image.manifest_digest()))
}

/// Runs `memobuild build` (or `--dry-run`).
pub async fn run(args: BuildArgs, state_dir: PathBuf) -> anyhow::Result<BuildOutcome> {
    // Made while the state dir opens and the context is read.
    memobuild_oci::prepare_registry_http();
    let state = Arc::new(LocalState::open(&state_dir, &args.step_settings()).await.map_err(anyhow_of)?);
    let result = build(&args, state.clone()).await;
    let stopped = state.shutdown().await;
    let outcome = result?;
    stopped.map_err(anyhow_of)?;
    Ok(outcome)
}

async fn build(args: &BuildArgs, state: Arc<LocalState>) -> anyhow::Result<BuildOutcome> {
    let inputs = BuildInputs::read(args, state.stat_cache_dir(), ContextPart::Named).await?;
    let ssh = tokio::task::block_in_place(|| SshAgents::start(&args.ssh)).map_err(anyhow_of)?;
    let builds = !args.dry_run && !args.check();
    if builds && inputs.outputs.iter().any(|o| matches!(o, OutputSpec::Load { .. })) {
        check_docker().await.map_err(anyhow_of)?;
    }
    let (events, receiver) = tokio::sync::mpsc::unbounded_channel();
    let renderer = tokio::spawn(render(inputs.mode, receiver));
    let cancel = CancellationToken::new();
    let stop = cancel_on_signals(cancel.clone());
    let result = async {
        let mut request = inputs.image_build(args, ContextFiles::Directory(inputs.context_dir.clone()));
        request.ssh_sockets = ssh.sockets();
        let executor = Arc::new(state.executor());
        let built = request.run(state.stores.clone(), executor, &events, cancel.clone()).await;
        stop.abort();
        let built = built.map_err(anyhow_of)?;
        if args.check() {
            return Ok((write_results(args, &inputs, &*state.stores.cas, &built, &events).await?, None));
        }
        if args.dry_run {
            return Ok((None, None));
        }
        let record = BuildRecord {
            dockerfile: inputs.dockerfile_name.clone(),
            target: args.target.clone().unwrap_or_default(),
            steps: built.records.clone(),
        };
        record.save(&state.records_dir()).map_err(anyhow_of)?;
        let digest = write_results(args, &inputs, &*state.stores.cas, &built, &events).await?;
        Ok::<_, anyhow::Error>((digest, built.image_id))
    }
    .await;
    drop(events);
    let counts = renderer.await.unwrap_or_default();
    let (image_digest, image_id) = result?;
    Ok(BuildOutcome { counts, image_digest, image_id })
}

/// Ctrl-C or SIGTERM cancels `cancel`: running steps are stopped and
/// cleaned up, nothing is exported.
pub fn cancel_on_signals(cancel: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let terminated = async {
            match term.as_mut() {
                Some(signal) => signal.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminated => {}
        }
        cancel.cancel();
    })
}

/// `memobuild explain-cache`: why the steps of the last build missed.
pub fn explain_cache(args: &BuildArgs, state_dir: &std::path::Path) -> anyhow::Result<String> {
    let context_dir =
        args.context.canonicalize().with_context(|| format!("build context {}", args.context.display()))?;
    let dockerfile = args.file.clone().unwrap_or_else(|| context_dir.join("Dockerfile"));
    let name = dockerfile.to_string_lossy().to_string();
    let target = args.target.clone().unwrap_or_default();
    if let (Some(latest), previous) = BuildRecord::load(&state_dir.join("builds"), &name, &target) {
        return Ok(memobuild_engine::explain(&latest, previous.as_ref()));
    }
    anyhow::bail!("no build of {name} is recorded in {}: run memobuild build first", state_dir.display())
}
