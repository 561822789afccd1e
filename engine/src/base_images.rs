//! Base images and `--from` images: resolved to digests and pulled into the
//! CAS before planning, so the plan starts each stage from the image's
//! config and pins its digest.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memobuild_frontend::{
    BaseImage, BuildGraph, GitUrl, ImageConfig, MountType, Origin, SourceKind, StageBase, StepDefinition,
};
use memobuild_oci::{read_oci_layout, ImageReference, PulledImage};
use memobuild_proto::{Error, Result, ResultExt};
use serde::Deserialize;

use crate::docker_healthcheck::DockerHealthcheck;
use crate::image_state::{History, ImageState};
use crate::local_context::local_context_image;
use crate::remote_source::GitCheckout;
use crate::EngineStores;
use memobuild_proto::build::BuildEvent;

use crate::EventSender;

/// A pulled image, ready to start a stage from.
pub struct ResolvedImage {
    pub pulled: PulledImage,
    pub config: ImageConfig,
    pub state: ImageState,
}

/// The image references a graph names: stage bases, COPY --from images and
/// the images RUN bind-mounts.
pub fn image_references(graph: &BuildGraph) -> Vec<String> {
    let mut refs = Vec::new();
    for stage in &graph.stages {
        if let StageBase::Image { reference } = &stage.base {
            refs.push(reference.clone());
        }
        for step in &stage.steps {
            match &step.definition {
                StepDefinition::Copy { origin: Origin::Image { reference }, .. } => refs.push(reference.clone()),
                StepDefinition::Run { mounts, .. } => refs.extend(mounts.iter().filter_map(|m| match &m.origin {
                    Some(Origin::Image { reference }) if m.mount.kind == MountType::Bind => Some(reference.clone()),
                    _ => None,
                })),
                _ => {}
            }
        }
    }
    refs.sort();
    refs.dedup();
    refs
}

/// The id of the events about resolving `reference` (a FROM's image).
pub fn resolve_step(reference: &str) -> String {
    format!("resolve {reference}")
}

/// The scheme of a `--build-context` naming a registry image.
pub const DOCKER_IMAGE_CONTEXT: &str = "docker-image://";
/// The scheme of a `--build-context` naming an OCI layout on this machine.
const OCI_LAYOUT_CONTEXT: &str = "oci-layout://";
/// Under the remote files dir: the stat caches and layers of directory contexts.
const NAMED_CONTEXTS_DIR: &str = "named-contexts";

/// Resolves and pulls `references`. `--build-context` entries in
/// `contexts` replace a reference by another image, a local layout or a
/// directory.
pub async fn resolve_images(
    state: &EngineStores,
    references: &[String],
    contexts: &BTreeMap<String, String>,
    platform: &str,
    events: &EventSender,
) -> Result<HashMap<String, Arc<ResolvedImage>>> {
    let mut resolved = HashMap::new();
    for reference in references {
        let step = resolve_step(reference);
        let _ = events.send(BuildEvent::started(&step, format!("resolve image {reference}")));
        let pulled = match contexts.get(reference) {
            Some(value) => pull_context(state, reference, value, platform)
                .await
                .with_context(|| format!("--build-context {reference}={value}")),
            None => pull(state, reference, platform).await.with_context(|| format!("FROM {reference}")),
        };
        let pulled = match pulled {
            Ok(p) => p,
            Err(e) => {
                let _ = events.send(BuildEvent::failed(&step, e.message().to_string()));
                return Err(e);
            }
        };
        let _ = events.send(BuildEvent::info(&step, format!("resolved {}", pulled.resolved)));
        let _ = events.send(BuildEvent::finished(&step));
        let (config, history) = convert(&pulled);
        let state = ImageState { layers: pulled.layers.clone(), history, unknown: false };
        resolved.insert(reference.clone(), Arc::new(ResolvedImage { pulled, config, state }));
    }
    Ok(resolved)
}

/// The image a `--build-context` names: a registry image, an OCI layout,
/// a git checkout or a directory.
async fn pull_context(state: &EngineStores, name: &str, value: &str, platform: &str) -> Result<PulledImage> {
    let memos = state.remote_files_dir.join(NAMED_CONTEXTS_DIR);
    match NamedContext::parse(name, value)? {
        NamedContext::Image(reference) => pull(state, reference, platform).await,
        NamedContext::Layout => pull(state, value, platform).await,
        NamedContext::Git(url) => {
            std::fs::create_dir_all(&memos)?;
            let checkout = GitCheckout::fetch_context(&url, &state.remote_files_dir, &url.to_string()).await?;
            local_context_image(&checkout.root, platform, &*state.cas, &memos).await
        }
        NamedContext::Directory => {
            std::fs::create_dir_all(&memos)?;
            local_context_image(Path::new(value), platform, &*state.cas, &memos).await
        }
    }
}

/// A FROM's image: a registry reference or `oci-layout://PATH[:TAG]`.
async fn pull(state: &EngineStores, source: &str, platform: &str) -> Result<PulledImage> {
    if let Some(layout) = source.strip_prefix(OCI_LAYOUT_CONTEXT) {
        let (path, tag) = split_layout(layout);
        let (cas, memo, max_layer_bytes) = (&*state.cas, state.diff_ids.as_deref(), state.registry.max_layer_bytes());
        return read_oci_layout(&PathBuf::from(path), tag, platform, cas, memo, max_layer_bytes).await;
    }
    let reference: ImageReference = source.parse()?;
    state.registry.pull(&reference, platform, &*state.cas).await
}

/// `PATH[:TAG]`, where a `:` inside the path's last element starts the tag.
fn split_layout(layout: &str) -> (&str, Option<&str>) {
    let last = layout.rfind('/').map(|i| i + 1).unwrap_or(0);
    match layout[last..].rfind(':') {
        Some(i) => (&layout[..last + i], Some(&layout[last + i + 1..])),
        None => (layout, None),
    }
}

/// What the planner needs from each resolved image.
pub fn base_images(resolved: &HashMap<String, Arc<ResolvedImage>>) -> BTreeMap<String, BaseImage> {
    resolved
        .iter()
        .map(|(r, image)| {
            (r.clone(), BaseImage { digest: image.pulled.manifest_digest.clone(), config: image.config.clone() })
        })
        .collect()
}

/// The parts of a Docker image config that oci-spec's
/// `ImageConfiguration` drops.
#[derive(Debug, Default, Deserialize)]
struct DockerOnlyFields {
    #[serde(default)]
    config: DockerOnlyConfig,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerOnlyConfig {
    #[serde(default)]
    healthcheck: Option<DockerHealthcheck>,
    #[serde(default)]
    shell: Option<Vec<String>>,
    #[serde(default)]
    on_build: Option<Vec<String>>,
}

/// The image's config and history in our terms.
fn convert(pulled: &PulledImage) -> (ImageConfig, Vec<History>) {
    let mut config = ImageConfig::default();
    if let Some(c) = pulled.config.config() {
        config.env = c.env().clone().unwrap_or_default();
        config.user = c.user().clone();
        config.workdir = c.working_dir().clone();
        config.cmd = c.cmd().clone();
        config.entrypoint = c.entrypoint().clone();
        config.labels = c.labels().clone().unwrap_or_default().into_iter().collect();
        config.exposed_ports = c.exposed_ports().clone().unwrap_or_default().into_iter().collect();
        config.volumes = c.volumes().clone().unwrap_or_default().into_iter().collect();
        config.stop_signal = c.stop_signal().clone();
    }
    config.maintainer = pulled.config.author().clone();
    // What oci-spec's model has no place for, from the blob itself (which
    // oci-spec has already parsed, so it is JSON).
    let docker: DockerOnlyFields = serde_json::from_slice(&pulled.raw_config).unwrap_or_default();
    config.healthcheck = docker.config.healthcheck.as_ref().and_then(DockerHealthcheck::to_healthcheck);
    config.shell = docker.config.shell.filter(|s| !s.is_empty());
    config.onbuild = docker.config.on_build.unwrap_or_default();
    let history = pulled
        .config
        .history()
        .clone()
        .unwrap_or_default()
        .iter()
        .map(|h| History {
            created: h.created().clone().unwrap_or_default(),
            created_by: h.created_by().clone().unwrap_or_default(),
            empty_layer: h.empty_layer().unwrap_or(false),
            comment: h.comment().clone(),
            built_at: None,
        })
        .collect();
    (config, history)
}

/// Refuses the images a build on a cluster must not read: OCI layouts are
/// paths on the machine the build runs on, not on its client's.
pub fn check_cluster_references(references: &[String]) -> Result<()> {
    match references.iter().find(|r| r.starts_with(OCI_LAYOUT_CONTEXT)) {
        Some(reference) => Err(Error::invalid_argument(format!(
            "{reference}: a remote build cannot read an OCI layout (a path on the cluster's machines); push the \
             image to a registry and name it there"
        ))),
        None => Ok(()),
    }
}

/// Checks a `--build-context` value: a registry image
/// (`docker-image://REF`), an OCI layout (`oci-layout://PATH[:TAG]`), a git
/// URL or a directory on this machine.
pub fn check_build_context(name: &str, value: &str) -> Result<()> {
    NamedContext::parse(name, value).map(|_| ())
}

/// What a `--build-context NAME=VALUE` names, checked.
enum NamedContext<'a> {
    /// The reference after `docker-image://`.
    Image(&'a str),
    Layout,
    Git(GitUrl),
    Directory,
}

impl<'a> NamedContext<'a> {
    fn parse(name: &str, value: &'a str) -> Result<Self> {
        let flag = format!("--build-context {name}={value}");
        if let Some(reference) = value.strip_prefix(DOCKER_IMAGE_CONTEXT) {
            return match reference.parse::<ImageReference>() {
                Ok(_) => Ok(NamedContext::Image(reference)),
                Err(e) => Err(e.context(flag)),
            };
        }
        let kind = SourceKind::of(value).map_err(|e| Error::invalid_argument(format!("{flag}: {e}")))?;
        match (value.strip_prefix(OCI_LAYOUT_CONTEXT), kind) {
            (Some(""), _) => Err(Error::invalid_argument(format!("{flag}: oci-layout:// needs a path"))),
            (Some(_), _) => Ok(NamedContext::Layout),
            (None, SourceKind::Git(url)) => Ok(NamedContext::Git(url)),
            (None, _) if value.contains("://") => Err(Error::invalid_argument(format!(
                "{flag}: only docker-image://REF, oci-layout://PATH[:TAG], git URLs and directories are supported"
            ))),
            (None, _) if Path::new(value).is_dir() => Ok(NamedContext::Directory),
            (None, _) => Err(Error::invalid_argument(format!("{flag}: no such directory"))),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use memobuild_frontend::{CommandLine, Healthcheck};

    use super::*;

    #[test]
    fn docker_fields_of_the_base_config_are_kept() {
        let raw = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "author": "ops@example.com",
            "config": {
                "Env": ["A=1"],
                "StopSignal": "SIGQUIT",
                "Shell": ["/bin/ash", "-c"],
                "OnBuild": ["RUN echo child"],
                "Healthcheck": {"Test": ["CMD", "/bin/check"], "Interval": 10_000_000_000i64, "Retries": 2},
                "ArgsEscaped": true
            },
            "rootfs": {"type": "layers", "diff_ids": []}
        })
        .to_string();
        let pulled = PulledImage {
            reference: "base".into(),
            resolved: "base@sha256:00".into(),
            manifest_digest: "sha256:00".into(),
            config: serde_json::from_str(&raw).unwrap(),
            raw_config: raw.into(),
            layers: Vec::new(),
        };
        let (config, _) = convert(&pulled);
        assert_eq!(config.env, ["A=1"]);
        assert_eq!(config.stop_signal.as_deref(), Some("SIGQUIT"));
        assert_eq!(config.maintainer.as_deref(), Some("ops@example.com"));
        assert_eq!(config.shell, Some(vec!["/bin/ash".to_string(), "-c".to_string()]));
        assert_eq!(config.onbuild, ["RUN echo child"]);
        assert_eq!(
            config.healthcheck,
            Some(Healthcheck::Cmd {
                command: CommandLine::Exec(vec!["/bin/check".into()]),
                interval_ns: Some(10_000_000_000),
                timeout_ns: None,
                start_period_ns: None,
                start_interval_ns: None,
                retries: Some(2),
            })
        );
    }

    #[test]
    fn layout_references() {
        assert_eq!(split_layout("/x/layout:busybox"), ("/x/layout", Some("busybox")));
        assert_eq!(split_layout("/x/lay:out/dir"), ("/x/lay:out/dir", None));
        assert_eq!(split_layout("rel"), ("rel", None));
    }
}
