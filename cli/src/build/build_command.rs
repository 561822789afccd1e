//! `memobuild build`: a local build with everything embedded.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use memobuild_frontend::{plan_text, BuildOptions, ContextScanner, DockerIgnore, Platform};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use super::base_images::{base_images, check_build_context, image_references, resolve_images};
use super::build_record::{explain, BuildRecord};
use super::executor::{BuildSettings, Executor};
use super::export::{export, write_iidfile};
use super::image_state::rfc3339;
use super::local_state::LocalState;
use super::output_spec::OutputSpec;
use super::progress::{render, ProgressMode, StepCounts};
use super::remote_source::{fetch_sources, pins, remote_sources};
use super::run_limits::RunLimitArgs;
use super::secrets::{SecretSpec, Secrets};
use super::ssh_agents::{SshAgents, SshSpec};

/// The flags of `docker buildx build` that memobuild takes.
#[derive(clap::Args, Clone, Debug)]
pub struct BuildArgs {
    /// The build context directory.
    pub context: PathBuf,
    /// The Dockerfile [default: CONTEXT/Dockerfile].
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
    /// type=local,dest=DIR | type=registry (repeatable).
    #[arg(short = 'o', long = "output")]
    pub outputs: Vec<OutputSpec>,
    /// Push the image to every -t tag (same as --output type=registry).
    #[arg(long)]
    pub push: bool,
    /// Run every step, ignoring cached results.
    #[arg(long)]
    pub no_cache: bool,
    /// auto, tty, plain or json.
    #[arg(long, value_enum, default_value = "auto")]
    pub progress: ProgressMode,
    /// An extra named context: NAME=oci-layout://PATH[:TAG] (repeatable).
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
    /// Write the image digest to this file.
    #[arg(long)]
    pub iidfile: Option<PathBuf>,
    #[command(flatten)]
    pub limits: RunLimitArgs,
    /// Print the plan (steps, keys, cached or not) without building.
    #[arg(long)]
    pub dry_run: bool,
    /// Where the CAS, caches and build records live [default: $XDG_STATE_HOME/memobuild].
    #[arg(long, env = "MEMOBUILD_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// containerd's socket [default: /run/containerd/containerd.sock, else a private one].
    #[arg(long, env = "CONTAINERD_ADDRESS")]
    pub containerd_address: Option<PathBuf>,
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
    pub image_digest: Option<String>,
}

fn anyhow_of(e: memobuild_proto::Error) -> anyhow::Error {
    anyhow::anyhow!("{}", e.message())
}

/// Runs `memobuild build` (or `--dry-run`).
pub async fn run(args: BuildArgs, state_dir: PathBuf) -> anyhow::Result<BuildOutcome> {
    let state = Arc::new(LocalState::open(&state_dir, args.containerd_address.clone()).await.map_err(anyhow_of)?);
    let result = build(&args, state.clone()).await;
    let stopped = state.shutdown().await;
    let outcome = result?;
    stopped.map_err(anyhow_of)?;
    Ok(outcome)
}

async fn build(args: &BuildArgs, state: Arc<LocalState>) -> anyhow::Result<BuildOutcome> {
    let context_dir =
        args.context.canonicalize().with_context(|| format!("build context {}", args.context.display()))?;
    let dockerfile = args.file.clone().unwrap_or_else(|| context_dir.join("Dockerfile"));
    let text = std::fs::read_to_string(&dockerfile).with_context(|| format!("reading {}", dockerfile.display()))?;
    let dockerfile_name = dockerfile.to_string_lossy().to_string();
    let ignore = DockerIgnore::load(&context_dir, Some(&dockerfile)).map_err(anyhow_of)?;
    let scanner = ContextScanner::new(&context_dir, ignore).with_cache_dir(state.stat_cache_dir());
    let (context, _) = tokio::task::block_in_place(|| scanner.scan()).map_err(anyhow_of)?;

    let platform = match &args.platform {
        Some(p) => parse_platform(p)?,
        None => Platform::host(),
    };
    let mut options = BuildOptions {
        build_args: args.build_args.iter().cloned().collect(),
        target: args.target.clone(),
        target_platform: platform.clone(),
        ..BuildOptions::default()
    };
    let contexts: BTreeMap<String, String> = args.build_contexts.iter().cloned().collect();
    for (name, value) in &contexts {
        check_build_context(name, value).map_err(anyhow_of)?;
    }

    let secrets = Secrets::load(&args.secrets)?;
    let ssh = tokio::task::block_in_place(|| SshAgents::start(&args.ssh))?;

    let limits = args.limits.resource_limits()?;
    let mode = args.progress.resolve(std::io::stderr().is_terminal());
    let (events, receiver) = tokio::sync::mpsc::unbounded_channel();
    let renderer = tokio::spawn(render(mode, receiver));

    let result = async {
        let draft = plan_text(&dockerfile_name, &text, &context, &options).map_err(anyhow_of)?;
        let images = resolve_images(&state, &image_references(&draft), &contexts, &platform.to_string(), &events)
            .await
            .map_err(anyhow_of)?;
        options.base_images = base_images(&images);
        let remote = fetch_sources(&state, &remote_sources(&draft), &events).await.map_err(anyhow_of)?;
        options.remote_sources = pins(&remote);
        let graph = Arc::new(plan_text(&dockerfile_name, &text, &context, &options).map_err(anyhow_of)?);
        let source_date_epoch = std::env::var("SOURCE_DATE_EPOCH")
            .ok()
            .or_else(|| options.build_args.get("SOURCE_DATE_EPOCH").cloned())
            .map(|v| v.parse::<u64>().context("SOURCE_DATE_EPOCH must be seconds since the epoch"))
            .transpose()?;
        let executor = Arc::new(Executor {
            state: state.clone(),
            graph: graph.clone(),
            context_dir: context_dir.clone(),
            context: Arc::new(context.clone()),
            images,
            remote,
            settings: BuildSettings { no_cache: args.no_cache, source_date_epoch, dry_run: args.dry_run, limits },
            events: events.clone(),
            cancel: CancellationToken::new(),
            records: Mutex::new(Vec::new()),
            secrets,
            ssh,
        });
        let cancel = executor.cancel.clone();
        // Ctrl-C or SIGTERM stops the build: running containers are killed
        // and cleaned up, nothing is exported.
        let ctrl_c = tokio::spawn(async move {
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
        });
        let built = executor.clone().run().await;
        ctrl_c.abort();
        let record = BuildRecord {
            dockerfile: dockerfile_name.clone(),
            target: args.target.clone().unwrap_or_default(),
            steps: executor.records.lock().clone(),
        };
        let image = built.map_err(anyhow_of)?;
        if args.dry_run {
            return Ok(None);
        }
        record.save(&state.records_dir()).map_err(anyhow_of)?;
        let target = graph.target_stage().context("the target stage is not in the graph")?;
        let created = rfc3339(executor.settings.timestamp());
        let config = bytes::Bytes::from(image.config_json(&target.config, &platform, &created));
        let mut outputs = args.outputs.clone();
        if args.push && !outputs.iter().any(|o| matches!(o, OutputSpec::Registry { .. })) {
            outputs.push(OutputSpec::Registry { compression: memobuild_oci::Compression::Gzip });
        }
        if outputs.is_empty() {
            // As buildx says it: the build is cached, nothing is written.
            eprintln!("no --output or --push given: the result stays in the build cache only");
        }
        let digest = export(&state, &image, config, &outputs, &args.tags, &events).await.map_err(anyhow_of)?;
        if let (Some(path), Some(digest)) = (&args.iidfile, &digest) {
            write_iidfile(path, digest).map_err(anyhow_of)?;
        }
        Ok::<_, anyhow::Error>(digest)
    }
    .await;
    drop(events);
    let counts = renderer.await.unwrap_or_default();
    let image_digest = result?;
    Ok(BuildOutcome { counts, image_digest })
}

/// `memobuild explain-cache`: why the steps of the last build missed.
pub fn explain_cache(args: &BuildArgs, state_dir: &std::path::Path) -> anyhow::Result<String> {
    let context_dir =
        args.context.canonicalize().with_context(|| format!("build context {}", args.context.display()))?;
    let dockerfile = args.file.clone().unwrap_or_else(|| context_dir.join("Dockerfile"));
    let name = dockerfile.to_string_lossy().to_string();
    let target = args.target.clone().unwrap_or_default();
    if let (Some(latest), previous) = BuildRecord::load(&state_dir.join("builds"), &name, &target) {
        return Ok(explain(&latest, previous.as_ref()));
    }
    anyhow::bail!("no build of {name} is recorded in {}: run memobuild build first", state_dir.display())
}

fn parse_platform(text: &str) -> anyhow::Result<Platform> {
    let parts: Vec<&str> = text.split('/').collect();
    match parts.as_slice() {
        [os, arch] => Ok(Platform::new(os, arch, None)),
        [os, arch, variant] => Ok(Platform::new(os, arch, Some(variant))),
        _ => anyhow::bail!("--platform {text:?}: expected OS/ARCH[/VARIANT], e.g. linux/amd64"),
    }
}
