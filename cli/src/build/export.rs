//! Turning the target stage into the outputs asked for.

use std::collections::BTreeMap;
use std::path::Path;

use memobuild_oci::{
    compress_layer, extract_layers, write_docker_archive, write_oci_layout, BuiltImage, Compression, ExtractLimits,
    ImageReference, Layer, OciDestination, MEDIA_TYPE_TAR, MEDIA_TYPE_TAR_GZIP, MEDIA_TYPE_TAR_ZSTD,
};
use memobuild_proto::{Digest, DigestFunction, Result, ResultExt};
use serde_json::{json, Map, Value};

use super::docker_load::docker_load;
use super::image_state::ImageState;
use super::local_state::LocalState;
use super::output_spec::OutputSpec;
use super::progress::{BuildEvent, EventSender};
use super::step_action::{StepAction, StepInputs};

/// Writes every output; returns the image as last exported (its manifest
/// follows the compression of that output, gzip by default), or `None`
/// when only a filesystem was asked for.
pub async fn export(
    state: &LocalState,
    image: &ImageState,
    config: bytes::Bytes,
    annotations: &BTreeMap<String, String>,
    outputs: &[OutputSpec],
    tags: &[String],
    events: &EventSender,
) -> Result<Option<BuiltImage>> {
    let step = "export".to_string();
    let mut exported = None;
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
                let built = built_image(state, image, &config, annotations, *compression).await?;
                let destination =
                    if *tar { OciDestination::Tar(dest.clone()) } else { OciDestination::Directory(dest.clone()) };
                write_oci_layout(&built, &*state.cas, &destination, tags).await?;
                info(events, &step, format!("wrote OCI image {} to {}", built.manifest_digest(), dest.display()));
                exported = Some(built);
            }
            OutputSpec::Docker { dest, compression } => {
                let built = built_image(state, image, &config, annotations, *compression).await?;
                write_docker_archive(&built, &*state.cas, dest, tags).await?;
                info(events, &step, format!("wrote docker archive {} to {}", built.manifest_digest(), dest.display()));
                exported = Some(built);
            }
            OutputSpec::Load { compression } => {
                let built = built_image(state, image, &config, annotations, *compression).await?;
                let dir = tempfile::tempdir().context("creating a directory for the docker archive of --load")?;
                let archive = dir.path().join("image.tar");
                write_docker_archive(&built, &*state.cas, &archive, tags).await?;
                info(events, &step, docker_load(&archive).await?);
                exported = Some(built);
            }
            OutputSpec::Registry { compression } => {
                let built = built_image(state, image, &config, annotations, *compression).await?;
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
                exported = Some(built);
            }
        }
    }
    if announced {
        let _ = events.send(BuildEvent::Finished { step });
    }
    Ok(exported)
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
    annotations: &BTreeMap<String, String>,
    compression: Compression,
) -> Result<BuiltImage> {
    let mut layers = Vec::with_capacity(image.layers.len());
    for layer in &image.layers {
        layers.push(compressed(state, layer, compression).await?);
    }
    BuiltImage::new(config.clone(), layers, annotations.clone())
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

/// The image id as docker and buildx give it: `sha256:` and the digest
/// of the config.
pub fn image_id(config: &[u8]) -> String {
    format!("sha256:{}", Digest::of(DigestFunction::Sha256, config).hex())
}

/// `--iidfile`: the image id, as buildx writes it.
pub fn write_iidfile(path: &Path, image_id: &str) -> Result<()> {
    std::fs::write(path, image_id).with_context(|| format!("writing --iidfile {}", path.display()))
}

/// `--metadata-file`: the keys buildx writes about an image.
pub fn metadata(image_id: &str, built: Option<&BuiltImage>, tags: &[String]) -> Value {
    let mut fields = Map::new();
    fields.insert("containerimage.config.digest".into(), json!(image_id));
    if let Some(built) = built {
        fields.insert("containerimage.digest".into(), json!(built.manifest_digest()));
        fields.insert(
            "containerimage.descriptor".into(),
            json!({
                "mediaType": built.manifest_media_type(),
                "digest": built.manifest_digest(),
                "size": built.manifest_blob().size(),
            }),
        );
        if !tags.is_empty() {
            fields.insert("image.name".into(), json!(tags.join(",")));
        }
    }
    Value::Object(fields)
}

/// Writes [`metadata`] to `path`.
pub fn write_metadata_file(path: &Path, metadata: &Value) -> Result<()> {
    // Serializing a tree of plain JSON values cannot fail.
    let text = serde_json::to_vec_pretty(metadata).unwrap_or_default();
    std::fs::write(path, text).with_context(|| format!("writing --metadata-file {}", path.display()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn metadata_as_buildx_writes_it() {
        let config = bytes::Bytes::from_static(b"{}");
        let id = image_id(&config);
        assert_eq!(id, "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a");
        assert_eq!(metadata(&id, None, &["app:1".into()]), json!({"containerimage.config.digest": id}));

        let built = BuiltImage::new(config, Vec::new(), BTreeMap::new()).unwrap();
        let tags = ["app:1".to_string(), "app:latest".to_string()];
        let fields = metadata(&id, Some(&built), &tags);
        assert_eq!(fields["containerimage.digest"], built.manifest_digest());
        assert_eq!(fields["image.name"], "app:1,app:latest");
        assert_eq!(
            fields["containerimage.descriptor"],
            json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": built.manifest_digest(),
                "size": built.manifest().len(),
            })
        );
        assert!(metadata(&id, Some(&built), &[]).get("image.name").is_none());
    }
}
