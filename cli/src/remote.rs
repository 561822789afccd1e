//! `memobuild remote ...`: builds on a cluster. The client scans the
//! context with the stat cache, uploads only the blobs the cluster's CAS
//! lacks, submits the build to the BuildService and renders its events as
//! `memobuild build` does; outputs are written here from the cluster's CAS,
//! and pushes go from the cluster straight to the registry.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{bail, Context};
use futures::StreamExt;
use memobuild_cas::{grpc_channel_with, BlobStore, GrpcChannel, GrpcStore};
use memobuild_engine::{
    image_of, layer_of, BuiltOutput, EventSender, ExportRequest, OutputSpec, DOCKER_IMAGE_CONTEXT, OUTSIDE_SENT_PART,
};
use memobuild_frontend::{BuildContext, ContextEntry, ContextScope};
use memobuild_oci::{ImageReference, RegistryClient};
use memobuild_proto::build::build_service_client::BuildServiceClient;
use memobuild_proto::build::{
    build_event::Kind, export, BlobDigest, BuildEvent, BuildRequest, BuildResult, CancelRequest, Export,
    ListBuildsRequest, PartialContext, RegistryCredential, Secret, WatchRequest,
};
use memobuild_proto::Digest;
use memobuild_scheduler::WHOLE_CONTEXT_REQUIRED;
use memobuild_worker::containerd::OciRuntime;
use prost::Message;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::build::{
    anyhow_of, cancel_on_signals, render, write_results, BuildArgs, BuildInputs, ContextPart, ProgressMode,
};
use crate::config::default_state_dir;
use crate::credentials::ClientArgs;

/// Where the cluster is.
#[derive(clap::Args, Clone, Debug)]
pub struct Endpoint {
    /// The cluster's scheduler, e.g. grpc://scheduler:8981.
    #[arg(long, env = "MEMOBUILD_ENDPOINT")]
    pub endpoint: String,
    /// The instance name (tenant) builds and cache entries belong to.
    #[arg(long, default_value = "")]
    pub instance: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(clap::Subcommand)]
pub enum RemoteCommand {
    /// Build on the cluster (flags as memobuild build).
    Build(Box<RemoteBuildArgs>),
    /// Show a build's whole log from the start, then follow it to the end.
    Attach {
        build_id: String,
        #[command(flatten)]
        endpoint: Endpoint,
        /// auto, tty, plain, json or quiet.
        #[arg(long, value_enum, default_value = "auto")]
        progress: ProgressMode,
    },
    /// List the cluster's recent builds.
    Ls {
        #[command(flatten)]
        endpoint: Endpoint,
    },
    /// Stop a running build.
    Cancel {
        build_id: String,
        #[command(flatten)]
        endpoint: Endpoint,
    },
}

#[derive(clap::Args)]
pub struct RemoteBuildArgs {
    #[command(flatten)]
    pub build: BuildArgs,
    #[command(flatten)]
    pub endpoint: Endpoint,
    /// Print the build id once the cluster has it and exit; the build goes on.
    #[arg(long)]
    pub detach: bool,
}

/// Runs a `memobuild remote` command; returns what to print on stdout.
pub async fn run(command: RemoteCommand) -> anyhow::Result<Option<String>> {
    match command {
        RemoteCommand::Build(args) => {
            // The build's id joins the span once the cluster accepts it.
            let span = tracing::info_span!("remote_build", build = tracing::field::Empty);
            build(*args).instrument(span).await
        }
        RemoteCommand::Attach { build_id, endpoint, progress } => {
            let mut client = BuildServiceClient::new(channel(&endpoint)?);
            let request =
                WatchRequest { instance_name: endpoint.instance.clone(), build_id: build_id.clone(), no_follow: false };
            let events = client.watch(request).await.map_err(status)?.into_inner();
            let mode = progress.resolve(std::io::IsTerminal::is_terminal(&std::io::stderr()));
            let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
            let renderer = tokio::spawn(render(mode, receiver));
            let result = follow(events, &sender, None).await;
            drop(sender);
            let _ = renderer.await;
            Ok(Some(result?.image_id))
        }
        RemoteCommand::Ls { endpoint } => {
            let mut client = BuildServiceClient::new(channel(&endpoint)?);
            let request = ListBuildsRequest { instance_name: endpoint.instance.clone(), limit: 0 };
            let builds = client.list_builds(request).await.map_err(status)?.into_inner().builds;
            let mut text = String::from("BUILD ID                              STATE      DOCKERFILE\n");
            for b in builds {
                text.push_str(&format!("{:<37} {:<10} {}\n", b.build_id, b.state, b.dockerfile_name));
            }
            Ok(Some(text.trim_end().to_string()))
        }
        RemoteCommand::Cancel { build_id, endpoint } => {
            let mut client = BuildServiceClient::new(channel(&endpoint)?);
            client
                .cancel(CancelRequest { instance_name: endpoint.instance.clone(), build_id })
                .await
                .map_err(status)?;
            Ok(None)
        }
    }
}

pub(crate) fn channel(endpoint: &Endpoint) -> anyhow::Result<GrpcChannel> {
    let credentials = endpoint.client.credentials()?;
    grpc_channel_with(&endpoint.endpoint, &credentials)
        .map_err(anyhow_of)
        .with_context(|| format!("--endpoint {}", endpoint.endpoint))
}

pub(crate) fn status(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", status.message())
}

async fn build(args: RemoteBuildArgs) -> anyhow::Result<Option<String>> {
    let build = &args.build;
    if !build.ssh.is_empty() {
        bail!(
            "--ssh is not supported by remote builds: the cluster's workers cannot reach an agent on this machine \
             (use --secret, or build locally with memobuild build)"
        );
    }
    if build.userns_remap.is_some() {
        bail!("--userns-remap is a setting of the cluster's workers ([worker] userns_remap), not of a remote build");
    }
    if build.oci_runtime != OciRuntime::Auto {
        bail!("--oci-runtime is a setting of the cluster's workers ([worker] oci_runtime), not of a remote build");
    }
    if let Some((name, value)) = build.build_contexts.iter().find(|(_, v)| !v.starts_with(DOCKER_IMAGE_CONTEXT)) {
        bail!(
            "--build-context {name}={value}: a remote build takes docker-image://REF contexts only, as the cluster \
             cannot read paths on this machine"
        );
    }
    let state_dir = build.state_dir.clone().unwrap_or_else(default_state_dir);
    let channel = channel(&args.endpoint)?;
    let credentials = args.endpoint.client.credentials()?;
    let cas =
        GrpcStore::connect_with(&args.endpoint.endpoint, &args.endpoint.instance, &credentials).map_err(anyhow_of)?;
    let mut client = BuildServiceClient::new(channel);
    // The context paths the Dockerfile names, as `memobuild build` scans
    // them; when the cluster's planning needs more (a base image's ONBUILD,
    // a symlink leading elsewhere), the whole context, once. A detached
    // build cannot be sent again, so it sends the whole context at once.
    let mut part = if args.detach { ContextPart::Whole } else { ContextPart::Named };
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
    let mut receiver = Some(receiver);
    let mut renderer = None;
    let written = async {
        loop {
            let inputs = BuildInputs::read(build, state_dir.join("context-cache"), part).await?;
            let uploaded = upload_context(&cas, &inputs.context, &inputs.context_dir).await?;
            tracing::info!(blobs = uploaded.blobs, bytes = uploaded.bytes, "uploaded the build context");
            let mut request = tonic::Request::new(request(build, &inputs, &args.endpoint.instance).await?);
            if let Some(parent) = memobuild_proto::trace_parent::current().and_then(|p| p.parse().ok()) {
                request.metadata_mut().insert(memobuild_proto::trace_parent::TRACEPARENT, parent);
            }
            let events = client.build(request).await.map_err(status)?.into_inner();
            if args.detach {
                return Ok(Written::Detached(accepted_id(events).await?));
            }
            if let Some(receiver) = receiver.take() {
                renderer = Some(tokio::spawn(render(inputs.mode, receiver)));
            }
            match follow_build(&args, &client, &cas, &inputs, events, &sender).await {
                Err(e) if part == ContextPart::Named && e.downcast_ref::<WholeContextNeeded>().is_some() => {
                    tracing::info!("{e}: sending the whole context");
                    part = ContextPart::Whole;
                }
                written => return written.map(|(digest, image_id)| Written::Image { digest, image_id }),
            }
        }
    }
    .await;
    drop(sender);
    // The renderer prints the summary; its counts are not needed here.
    if let Some(renderer) = renderer {
        let _ = renderer.await;
    }
    Ok(match written? {
        Written::Detached(id) => Some(id),
        // As `memobuild build`: -q prints the image id, else the manifest digest.
        Written::Image { digest, image_id } => {
            if build.quiet {
                image_id
            } else {
                digest
            }
        }
    })
}

/// What a remote build leaves to print.
enum Written {
    /// A detached build: its id.
    Detached(String),
    /// The image's manifest digest and id, when it has them.
    Image { digest: Option<String>, image_id: Option<String> },
}

/// Why a build is sent again with the whole context.
#[derive(Debug)]
enum WholeContextNeeded {
    /// The build reads this path, outside the part sent
    /// ([`BuildFailed::context_path_outside`]).
    Outside(String),
    /// The cluster predates partial contexts: it refused the request for
    /// want of a whole one.
    OldCluster,
}

impl std::fmt::Display for WholeContextNeeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WholeContextNeeded::Outside(path) => {
                write!(f, "the build reads {path:?}, outside the context paths its Dockerfile names")
            }
            WholeContextNeeded::OldCluster => write!(f, "the cluster takes whole contexts only"),
        }
    }
}

impl std::error::Error for WholeContextNeeded {}

/// Follows the build `events` tell, its progress into `sender`, then
/// writes its outputs; returns the image's manifest digest and id.
async fn follow_build(
    args: &RemoteBuildArgs,
    client: &BuildServiceClient<GrpcChannel>,
    cas: &GrpcStore,
    inputs: &BuildInputs,
    events: tonic::Streaming<BuildEvent>,
    sender: &EventSender,
) -> anyhow::Result<(Option<String>, Option<String>)> {
    let build = &args.build;
    let cancel = CancellationToken::new();
    let stop = cancel_on_signals(cancel.clone());
    let canceller = (client.clone(), args.endpoint.instance.clone(), cancel);
    let result = follow(events, sender, Some(canceller)).await;
    stop.abort();
    let built = built_output(&result?, build)?;
    let digest = write_results(build, inputs, cas, &built, sender).await?;
    Ok((digest, built.image_id))
}

/// What an upload sent.
#[derive(Debug, Default)]
pub struct Uploaded {
    pub blobs: usize,
    pub bytes: u64,
}

/// Puts the context's tree and the files the CAS lacks into `cas`: an
/// unchanged context costs one FindMissingBlobs; a changed file costs that
/// file and the directories above it.
pub async fn upload_context(cas: &GrpcStore, context: &BuildContext, dir: &Path) -> anyhow::Result<Uploaded> {
    let mut files: HashMap<Digest, String> = HashMap::new();
    for (path, entry) in context.entries() {
        if let ContextEntry::File { digest, .. } = entry {
            files.entry(*digest).or_insert_with(|| path.clone());
        }
    }
    let directories: HashMap<Digest, Vec<u8>> =
        context.directories().iter().map(|(digest, d)| (*digest, d.encode_to_vec())).collect();
    let wanted: Vec<Digest> = directories.keys().chain(files.keys()).copied().collect();
    let missing = cas.find_missing(&wanted).await.map_err(anyhow_of).context("asking the cluster's CAS")?;
    let mut uploaded = Uploaded::default();
    for digest in missing {
        match (directories.get(&digest), files.get(&digest)) {
            (Some(bytes), _) => cas.put_bytes(&digest, bytes.clone().into()).await.map_err(anyhow_of)?,
            (None, Some(path)) => {
                let file = tokio::fs::File::open(dir.join(path)).await.with_context(|| format!("reading {path}"))?;
                let stream = tokio_util::io::ReaderStream::new(file)
                    .map(|chunk| chunk.map_err(memobuild_proto::Error::from))
                    .boxed();
                cas.put(&digest, stream)
                    .await
                    .map_err(anyhow_of)
                    .with_context(|| format!("uploading {path} (did it change during the build?)"))?;
            }
            (None, None) => continue,
        }
        uploaded.blobs += 1;
        uploaded.bytes += digest.size();
    }
    Ok(uploaded)
}

/// The build request for these flags.
async fn request(args: &BuildArgs, inputs: &BuildInputs, instance: &str) -> anyhow::Result<BuildRequest> {
    let mut exports: Vec<Export> = inputs
        .exports()
        .into_iter()
        .map(|e| match e {
            ExportRequest::Image(c) => Export { kind: export::Kind::Image as i32, compression: c.to_string() },
            ExportRequest::Registry(c) => Export { kind: export::Kind::Registry as i32, compression: c.to_string() },
        })
        .collect();
    if inputs.outputs.iter().any(|o| matches!(o, OutputSpec::Local { .. })) {
        exports.push(Export { kind: export::Kind::Filesystem as i32, compression: String::new() });
    }
    let root = BlobDigest::of(&inputs.context.root_digest());
    Ok(BuildRequest {
        instance_name: instance.to_string(),
        dockerfile_name: inputs.dockerfile_name.clone(),
        dockerfile: inputs.dockerfile.clone(),
        context: match inputs.context.scope() {
            ContextScope::Whole => Some(root.clone()),
            ContextScope::Part(_) => None,
        },
        partial_context: match inputs.context.scope() {
            ContextScope::Whole => None,
            ContextScope::Part(part) => Some(PartialContext {
                root: Some(root),
                paths: part.paths().iter().cloned().collect(),
                patterns: part.patterns().collect(),
            }),
        },
        build_args: args.build_args.iter().cloned().collect(),
        target: args.target.clone().unwrap_or_default(),
        platform: args.platform.clone().unwrap_or_default(),
        tags: args.tags.clone(),
        labels: args.labels.iter().cloned().collect(),
        annotations: args.annotations.iter().cloned().collect(),
        no_cache: args.no_cache,
        source_date_epoch: inputs.source_date_epoch,
        network: match args.network {
            memobuild_frontend::NetworkMode::Default => "default",
            memobuild_frontend::NetworkMode::None => "none",
            memobuild_frontend::NetworkMode::Host => "host",
        }
        .into(),
        add_hosts: args.add_hosts.iter().map(ToString::to_string).collect(),
        allow: args.allow.clone(),
        limits: Some(inputs.limits.to_proto()),
        secrets: inputs.secrets.values().map(|(id, value)| Secret { id: id.into(), value: value.to_vec() }).collect(),
        exports,
        registry_credentials: push_credentials(args, inputs).await?,
        dry_run: args.dry_run,
        check: args.check(),
        build_contexts: args.build_contexts.iter().cloned().collect(),
    })
}

/// This user's credentials for the registries the cluster pushes to.
async fn push_credentials(args: &BuildArgs, inputs: &BuildInputs) -> anyhow::Result<Vec<RegistryCredential>> {
    if !inputs.outputs.iter().any(|o| matches!(o, OutputSpec::Registry { .. })) {
        return Ok(Vec::new());
    }
    let client = RegistryClient::from_docker_config().map_err(anyhow_of)?;
    let mut registries: BTreeMap<String, ()> = BTreeMap::new();
    for tag in &args.tags {
        let reference: ImageReference = tag.parse().map_err(anyhow_of)?;
        registries.insert(reference.registry().to_string(), ());
    }
    let mut credentials = Vec::new();
    for registry in registries.into_keys() {
        if let Some((username, password)) = client.basic_credentials(&registry).await.map_err(anyhow_of)? {
            credentials.push(RegistryCredential { registry, username, password });
        }
    }
    Ok(credentials)
}

/// Waits for the cluster to accept the build; returns its id.
async fn accepted_id(mut events: tonic::Streaming<BuildEvent>) -> anyhow::Result<String> {
    while let Some(event) = events.message().await.map_err(status)? {
        if let Some(Kind::Accepted(accepted)) = event.kind {
            return Ok(accepted.build_id);
        }
    }
    bail!("the cluster ended the build stream before accepting the build")
}

/// The images of a cluster's result, ready to write from its CAS.
fn built_output(result: &BuildResult, args: &BuildArgs) -> anyhow::Result<BuiltOutput> {
    let annotations = args.annotations.iter().cloned().collect();
    Ok(BuiltOutput {
        image_id: Some(result.image_id.clone()).filter(|id| !id.is_empty()),
        images: result.images.iter().map(|i| image_of(i, &annotations)).collect::<Result<_, _>>().map_err(anyhow_of)?,
        filesystem: result.filesystem.iter().map(layer_of).collect::<Result<_, _>>().map_err(anyhow_of)?,
        records: Vec::new(),
    })
}

type Canceller = (BuildServiceClient<GrpcChannel>, String, CancellationToken);

/// Passes a build's events to `sender` until it ends; with `canceller`, a
/// cancelled token (Ctrl-C) cancels the build on the cluster.
async fn follow(
    mut events: tonic::Streaming<BuildEvent>,
    sender: &EventSender,
    canceller: Option<Canceller>,
) -> anyhow::Result<BuildResult> {
    let mut build_id = String::new();
    let cancelled = canceller.as_ref().map(|(_, _, token)| token.clone()).unwrap_or_default();
    let mut asked_to_cancel = false;
    let end = loop {
        let event = tokio::select! {
            event = events.message() => event,
            () = cancelled.cancelled(), if !asked_to_cancel => {
                asked_to_cancel = true;
                if let Some((client, instance, _)) = &canceller {
                    let request = CancelRequest { instance_name: instance.clone(), build_id: build_id.clone() };
                    let _ = client.clone().cancel(request).await;
                }
                continue;
            }
        };
        let Some(event) = event.map_err(status)? else {
            break Err(anyhow::anyhow!("the cluster ended the build stream early (build {build_id})"));
        };
        match &event.kind {
            Some(Kind::Accepted(accepted)) => {
                build_id = accepted.build_id.clone();
                tracing::Span::current().record("build", build_id.as_str());
                tracing::info!("the cluster accepted the build");
            }
            Some(Kind::Result(result)) => break Ok(result.clone()),
            // An older cluster reported the context root as "", which the wire drops.
            Some(Kind::BuildFailed(failed))
                if !failed.context_path_outside.is_empty() || failed.message.ends_with(OUTSIDE_SENT_PART) =>
            {
                let path = Some(failed.context_path_outside.clone()).filter(|p| !p.is_empty());
                break Err(WholeContextNeeded::Outside(path.unwrap_or_else(|| ".".into())).into());
            }
            Some(Kind::BuildFailed(failed)) if failed.message == WHOLE_CONTEXT_REQUIRED => {
                break Err(WholeContextNeeded::OldCluster.into())
            }
            Some(Kind::BuildFailed(failed)) => break Err(anyhow::anyhow!("{}", failed.message)),
            _ => {}
        }
        let _ = sender.send(event);
    };
    end
}
