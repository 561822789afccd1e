//! Turning the target stage into the outputs asked for.

use std::collections::BTreeMap;
use std::path::Path;

use memobuild_oci::{
    compress_layer, extract_layers, write_docker_archive, write_oci_layout, BuiltImage, Compression, ExtractLimits,
    ImageReference, Layer, OciDestination, MEDIA_TYPE_TAR, MEDIA_TYPE_TAR_GZIP, MEDIA_TYPE_TAR_ZSTD,
};
use memobuild_proto::{Digest, DigestFunction, Result, ResultExt};

use super::image_state::ImageState;
use super::local_state::LocalState;
use super::output_spec::OutputSpec;
use super::progress::{BuildEvent, EventSender};
use super::step_action::{StepAction, StepInputs};

/// Writes every output; returns the manifest digest of the image (of the
/// last compression used, gzip by default).
pub async fn export(
    state: &LocalState,
    image: &ImageState,
    config: bytes::Bytes,
    outputs: &[OutputSpec],
    tags: &[String],
    events: &EventSender,
) -> Result<Option<String>> {
    let step = "export".to_string();
    let mut digest = None;
    let mut announced = false;
    for output in outputs {
        if !announced {
            let _ = events.send(BuildEvent::Started { step: step.clone(), name: "exporting".into() });
            announced = true;
        }
        match output {
            OutputSpec::Local { dest } => {
                std::fs::create_dir_all(dest).with_context(|| format!("creating {}", dest.display()))?;
                extract_layers(&*state.cas, &image.layers, dest, ExtractLimits::default()).await?;
                info(events, &step, format!("wrote the filesystem to {}", dest.display()));
            }
            OutputSpec::Oci { dest, tar, compression } => {
                let built = built_image(state, image, &config, *compression).await?;
                let destination =
                    if *tar { OciDestination::Tar(dest.clone()) } else { OciDestination::Directory(dest.clone()) };
                write_oci_layout(&built, &*state.cas, &destination, tags).await?;
                info(events, &step, format!("wrote OCI image {} to {}", built.manifest_digest(), dest.display()));
                digest = Some(built.manifest_digest());
            }
            OutputSpec::Docker { dest, compression } => {
                let built = built_image(state, image, &config, *compression).await?;
                write_docker_archive(&built, &*state.cas, dest, tags).await?;
                info(events, &step, format!("wrote docker archive {} to {}", built.manifest_digest(), dest.display()));
                digest = Some(built.manifest_digest());
            }
            OutputSpec::Registry { compression } => {
                let built = built_image(state, image, &config, *compression).await?;
                if tags.is_empty() {
                    return Err(memobuild_proto::Error::invalid_argument(
                        "--push / type=registry needs at least one -t NAME:TAG",
                    ));
                }
                for tag in tags {
                    let reference: ImageReference = tag.parse()?;
                    let pushed = state
                        .registry
                        .push(&built, &reference, &*state.cas)
                        .await
                        .with_context(|| format!("pushing {tag}"))?;
                    info(events, &step, format!("pushed {tag}@{pushed}"));
                }
                digest = Some(built.manifest_digest());
            }
        }
    }
    if announced {
        let _ = events.send(BuildEvent::Finished { step });
    }
    Ok(digest)
}

fn info(events: &EventSender, step: &str, message: String) {
    let _ = events.send(BuildEvent::Info { step: step.to_string(), message });
}

/// The image with its layers compressed as asked (base image layers keep
/// the form the registry gave them).
pub async fn built_image(
    state: &LocalState,
    image: &ImageState,
    config: &bytes::Bytes,
    compression: Compression,
) -> Result<BuiltImage> {
    let mut layers = Vec::with_capacity(image.layers.len());
    for layer in &image.layers {
        layers.push(compressed(state, layer, compression).await?);
    }
    BuiltImage::new(config.clone(), layers, BTreeMap::new())
}

/// Compresses an uncompressed layer, through the action cache so a layer
/// is compressed once.
async fn compressed(state: &LocalState, layer: &Layer, compression: Compression) -> Result<Layer> {
    let media_type = match compression {
        Compression::None => return Ok(layer.clone()),
        Compression::Gzip => MEDIA_TYPE_TAR_GZIP,
        Compression::Zstd => MEDIA_TYPE_TAR_ZSTD,
    };
    if layer.media_type != MEDIA_TYPE_TAR {
        return Ok(layer.clone());
    }
    let action = StepAction::new(StepInputs {
        kind: "compress",
        definition: Digest::of(DigestFunction::Blake3, media_type.as_bytes()),
        argv: Vec::new(),
        env: Vec::new(),
        parent: std::slice::from_ref(layer),
        sources: Vec::new(),
    });
    if let Some(Some(hit)) = action.lookup(&state.actions).await? {
        return Ok(Layer { blob: hit.blob, media_type: media_type.into(), diff_id: layer.diff_id });
    }
    let done = compress_layer(&*state.cas, layer, compression).await?;
    action.record(&*state.cas, &state.actions, Some(&Layer::uncompressed(done.blob))).await?;
    Ok(done)
}

/// `--iidfile`: the image digest, as docker writes it.
pub fn write_iidfile(path: &Path, digest: &str) -> Result<()> {
    std::fs::write(path, digest).with_context(|| format!("writing {}", path.display()))
}
