//! Base images and `--from` images: resolved to digests and pulled into the
//! CAS before planning, so the plan starts each stage from the image's
//! config and pins its digest.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use memobuild_frontend::{BaseImage, BuildGraph, ImageConfig, Origin, StageBase, StepDefinition};
use memobuild_oci::{read_oci_layout, ImageReference, PulledImage};
use memobuild_proto::{Error, Result, ResultExt};

use super::image_state::{History, ImageState};
use super::local_state::LocalState;
use super::progress::{BuildEvent, EventSender};

/// A pulled image, ready to start a stage from.
pub struct ResolvedImage {
    pub pulled: PulledImage,
    pub config: ImageConfig,
    pub state: ImageState,
}

/// The image references a graph names: stage bases and COPY --from images.
pub fn image_references(graph: &BuildGraph) -> Vec<String> {
    let mut refs = Vec::new();
    for stage in &graph.stages {
        if let StageBase::Image { reference } = &stage.base {
            refs.push(reference.clone());
        }
        for step in &stage.steps {
            if let StepDefinition::Copy { origin: Origin::Image { reference }, .. } = &step.definition {
                refs.push(reference.clone());
            }
        }
    }
    refs.sort();
    refs.dedup();
    refs
}

/// Resolves and pulls `references`. `--build-context NAME=oci-layout://PATH[:TAG]`
/// entries in `contexts` replace a reference by a local layout.
pub async fn resolve_images(
    state: &LocalState,
    references: &[String],
    contexts: &BTreeMap<String, String>,
    platform: &str,
    events: &EventSender,
) -> Result<HashMap<String, Arc<ResolvedImage>>> {
    let mut resolved = HashMap::new();
    for reference in references {
        let step = format!("resolve {reference}");
        let _ = events.send(BuildEvent::Started { step: step.clone(), name: format!("resolve image {reference}") });
        let source = contexts.get(reference).map(String::as_str).unwrap_or(reference);
        let pulled = pull(state, source, platform).await.with_context(|| format!("FROM {reference}"));
        let pulled = match pulled {
            Ok(p) => p,
            Err(e) => {
                let _ = events.send(BuildEvent::Failed { step, message: e.message().to_string() });
                return Err(e);
            }
        };
        let _ = events.send(BuildEvent::Info { step: step.clone(), message: format!("resolved {}", pulled.resolved) });
        let _ = events.send(BuildEvent::Finished { step });
        let (config, history) = convert(&pulled);
        let state = ImageState { layers: pulled.layers.clone(), history, unknown: false };
        resolved.insert(reference.clone(), Arc::new(ResolvedImage { pulled, config, state }));
    }
    Ok(resolved)
}

async fn pull(state: &LocalState, source: &str, platform: &str) -> Result<PulledImage> {
    if let Some(layout) = source.strip_prefix("oci-layout://") {
        let (path, tag) = split_layout(layout);
        return read_oci_layout(&PathBuf::from(path), tag, platform, &*state.cas, Some(&state.diff_ids)).await;
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
        })
        .collect();
    (config, history)
}

/// Checks a `--build-context` value: only OCI layouts are supported.
pub fn check_build_context(name: &str, value: &str) -> Result<()> {
    if value.starts_with("oci-layout://") {
        Ok(())
    } else {
        Err(Error::invalid_argument(format!(
            "--build-context {name}={value}: only oci-layout://PATH[:TAG] contexts are supported"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_references() {
        assert_eq!(split_layout("/x/layout:busybox"), ("/x/layout", Some("busybox")));
        assert_eq!(split_layout("/x/lay:out/dir"), ("/x/lay:out/dir", None));
        assert_eq!(split_layout("rel"), ("rel", None));
    }
}
