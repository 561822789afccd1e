//! One image build from start to end: plan the Dockerfile, resolve its
//! images and remote sources (planning again until nothing new is named),
//! walk the graph through a [`StepExecutor`], then assemble the image and
//! export it as asked. `memobuild build` and the cluster's BuildService
//! both run this.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt};
use memobuild_frontend::{plan_text, BuildContext, BuildOptions, Platform, Warning};
use memobuild_oci::{BuiltImage, Layer};
use memobuild_proto::build::BuildEvent;
use memobuild_proto::{Error, Result};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::base_images::{
    base_images, check_build_context, check_cluster_references, image_references, resolve_images,
};
use crate::build_record::StepRecord;
use crate::build_run::{BuildRun, BuildSettings};
use crate::export::{export, ExportRequest};
use crate::image_state::rfc3339;
use crate::remote_source::{fetch_sources, pins, remote_sources, Fetched, FetchedSources};
use crate::{BuildSession, ContextFiles, EngineStores, EventSender, HostEntry, ResourceLimits, Secrets, StepExecutor};

/// Everything a build is asked to do.
pub struct ImageBuild {
    /// The Dockerfile's name (as messages name it) and its text.
    pub dockerfile_name: String,
    pub dockerfile: String,
    pub context: Arc<BuildContext>,
    /// For a `context` that holds only part of its directory: how to scan
    /// all of it, when planning looks outside that part.
    pub whole_context: Option<WholeContext>,
    pub context_files: ContextFiles,
    pub build_args: BTreeMap<String, String>,
    pub target: Option<String>,
    pub platform: Platform,
    /// `--build-context NAME=VALUE`: a directory, `docker-image://REF` or
    /// `oci-layout://PATH[:TAG]` in place of the image NAME.
    pub build_contexts: BTreeMap<String, String>,
    pub settings: BuildSettings,
    /// `--label`, over the Dockerfile's LABEL.
    pub labels: Vec<(String, String)>,
    /// Manifest annotations.
    pub annotations: BTreeMap<String, String>,
    pub exports: Vec<ExportRequest>,
    pub tags: Vec<String>,
    pub secrets: Arc<Secrets>,
    pub ssh_sockets: BTreeMap<String, PathBuf>,
    pub hosts: Vec<HostEntry>,
    pub limits: ResourceLimits,
    /// `--check`: plan every stage, resolve the base images, report the
    /// build-check warnings and stop; the build fails when one remains.
    pub check: bool,
}

/// Scans the whole of a build context.
pub type WholeContext = Box<dyn FnOnce() -> Result<BuildContext> + Send>;

/// What a build made.
pub struct BuiltOutput {
    /// `sha256:` digest of the config; `None` in a dry run.
    pub image_id: Option<String>,
    /// The image in each compression an export asked for (pushed ones too).
    pub images: Vec<(memobuild_oci::Compression, BuiltImage)>,
    /// The target's layers, uncompressed, bottom first.
    pub filesystem: Vec<Layer>,
    /// What each filesystem step did, for `explain-cache`.
    pub records: Vec<StepRecord>,
}

impl ImageBuild {
    /// Runs the build; steps that must run go to `executor`. Cancelling
    /// `cancel` stops running steps and exports nothing.
    pub async fn run(
        mut self,
        stores: Arc<EngineStores>,
        executor: Arc<dyn StepExecutor>,
        events: &EventSender,
        cancel: CancellationToken,
    ) -> Result<BuiltOutput> {
        for (name, value) in &self.build_contexts {
            check_build_context(name, value)?;
        }
        let mut options = BuildOptions {
            build_args: self.build_args.clone(),
            target: self.target.clone(),
            target_platform: self.platform.clone(),
            check: self.check,
            named_contexts: self.build_contexts.keys().map(|name| name.to_ascii_lowercase()).collect(),
            ..BuildOptions::default()
        };
        // Plan; resolve the images and fetch the sources the plan names; plan
        // again with them, until it names nothing new (a base image's ONBUILD
        // triggers can name more: COPY --from=IMAGE, ADD URL).
        let mut graph = self.plan(&options)?;
        let (mut images, mut remote) = (HashMap::new(), FetchedSources::new());
        loop {
            let references: Vec<String> =
                image_references(&graph).into_iter().filter(|r| !images.contains_key(r)).collect();
            if matches!(self.context_files, ContextFiles::Cas) {
                check_cluster_references(&references)?;
            }
            // A check needs the base images (their WORKDIR, ONBUILD), not the
            // remote sources: they are planned unpinned.
            let wanted: Vec<_> = remote_sources(&graph)
                .into_iter()
                .filter(|w| !self.check && !remote.contains_key(&w.source.key()))
                .collect();
            if references.is_empty() && wanted.is_empty() {
                break;
            }
            let platform = self.platform.to_string();
            // Boxed as Send here: the compiler cannot prove it through the
            // closures of pulls and fetches when a caller spawns the build.
            let resolving: BoxFuture<'_, _> =
                resolve_images(&stores, &references, &self.build_contexts, &platform, events).boxed();
            images.extend(resolving.await?);
            let fetching: BoxFuture<'_, _> = fetch_sources(&stores, &wanted, events).boxed();
            remote.extend(fetching.await?);
            options.base_images = base_images(&images);
            options.remote_sources = pins(&remote);
            graph = self.plan(&options)?;
        }
        for warning in &graph.warnings {
            let _ = events.send(warning_event(warning));
        }
        if self.check {
            return check_result(&graph.warnings);
        }
        let graph = Arc::new(graph);
        let session = BuildSession {
            context: self.context.clone(),
            context_files: self.context_files.clone(),
            secrets: self.secrets.clone(),
            ssh_sockets: self.ssh_sockets.clone(),
            hosts: self.hosts.clone(),
            limits: self.limits.clone(),
            downloads: downloads(&remote),
            git_checkouts: git_checkouts(&remote),
            timestamp: self.settings.timestamp(),
        };
        let dry_run = self.settings.dry_run;
        let run = Arc::new(BuildRun {
            stores: stores.clone(),
            executor,
            graph: graph.clone(),
            images,
            settings: self.settings,
            session,
            events: events.clone(),
            cancel,
            records: Mutex::new(Vec::new()),
        });
        let image = run.clone().run().await;
        // The remote sources (git checkouts) live until every step is done.
        drop(remote);
        let records = run.records.lock().clone();
        let image = image?;
        if dry_run {
            return Ok(BuiltOutput { image_id: None, images: Vec::new(), filesystem: Vec::new(), records });
        }
        let target = graph.target_stage().ok_or_else(|| Error::internal("the target stage is not in the graph"))?;
        let mut image_config = target.config.clone();
        image_config.labels.extend(self.labels.iter().cloned());
        // The latest time in the history: an unchanged build gives the same
        // config, so the same image id and manifest, as BuildKit does. An
        // image with no time at all (metadata over `scratch`, or over a base
        // without history) takes the Unix epoch, the usual time of
        // reproducible images, rather than this build's.
        let created = match run.settings.source_date_epoch {
            Some(epoch) => rfc3339(epoch),
            None => image.created().unwrap_or_else(|| rfc3339(0)),
        };
        let config = Bytes::from(image.config_json(&image_config, &self.platform, &created));
        let image_id = crate::export::image_id(&config);
        let images = export(&stores, &image, config, &self.annotations, &self.exports, &self.tags, events).await?;
        Ok(BuiltOutput { image_id: Some(image_id), images, filesystem: image.layers.clone(), records })
    }
}

/// How the error of a build that read outside the part of its context it
/// was sent ends; clients recognise it from clusters that report the
/// context root as `""` (which the wire cannot tell from no path).
pub const OUTSIDE_SENT_PART: &str = "outside the part of its context that was sent";

impl ImageBuild {
    /// Plans the Dockerfile; again with the whole context if the plan
    /// looked outside the part of it that was scanned.
    fn plan(&mut self, options: &BuildOptions) -> Result<memobuild_frontend::BuildGraph> {
        let planned = plan_text(&self.dockerfile_name, &self.dockerfile, &self.context, options);
        let Some(path) = self.context.outside_scope() else { return planned };
        tracing::debug!(path, "the build reads more of its context than was scanned: scanning all of it");
        let scan = self
            .whole_context
            .take()
            .ok_or_else(|| Error::internal(format!("the build reads {path:?}, {OUTSIDE_SENT_PART}")))?;
        self.context = Arc::new(tokio::task::block_in_place(scan)?);
        plan_text(&self.dockerfile_name, &self.dockerfile, &self.context, options)
    }
}

fn warning_event(warning: &Warning) -> BuildEvent {
    let line = u32::try_from(warning.location.line).unwrap_or(u32::MAX);
    BuildEvent::warning(warning.rule.name(), warning.message.clone(), &warning.file, line)
}

/// The end of a `--check`: nothing built; a failure when warnings remain,
/// worded as buildx words it.
fn check_result(warnings: &[Warning]) -> Result<BuiltOutput> {
    let found = match warnings.len() {
        0 => {
            return Ok(BuiltOutput { image_id: None, images: Vec::new(), filesystem: Vec::new(), records: Vec::new() })
        }
        1 => "1 warning has".to_string(),
        n => format!("{n} warnings have"),
    };
    Err(Error::new(tonic::Code::FailedPrecondition, format!("Check complete, {found} been found!")))
}

fn downloads(fetched: &FetchedSources) -> BTreeMap<String, memobuild_proto::Digest> {
    fetched
        .iter()
        .filter_map(|(key, source)| match source {
            Fetched::File { digest, .. } => Some((key.clone(), *digest)),
            Fetched::Git { .. } => None,
        })
        .collect()
}

fn git_checkouts(fetched: &FetchedSources) -> BTreeMap<String, PathBuf> {
    fetched
        .iter()
        .filter_map(|(key, source)| match source {
            Fetched::Git { root, .. } => Some((key.clone(), root.clone())),
            Fetched::File { .. } => None,
        })
        .collect()
}
