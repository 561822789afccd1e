//! Turning the target stage into the outputs asked for.

use std::collections::BTreeMap;
use std::path::Path;

use memobuild_cas::BlobStore;
use memobuild_oci::{
    compress_layer, extract_layers, write_docker_archive, write_oci_layout, BuiltImage, Compression, ExtractLimits,
    ImageReference, Layer, OciDestination, MEDIA_TYPE_TAR, MEDIA_TYPE_TAR_GZIP, MEDIA_TYPE_TAR_ZSTD,
};
use memobuild_proto::build::BuildEvent;
use memobuild_proto::{Digest, DigestFunction, Error, Result, ResultExt};
use serde_json::{json, Map, Value};

use crate::docker_load::docker_load;
use crate::image_state::ImageState;
use crate::output_spec::OutputSpec;
use crate::{layer_result, EngineStores, EventSender, StepAction, StepOutcome};

/// What the engine makes of the target stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportRequest {
    /// An image whose blobs stay in the CAS, for outputs written from it.
    Image(Compression),
    /// The image, pushed to every tag.
    Registry(Compression),
}

/// Assembles the image in every compression `requests` name (each once)
/// and pushes it where asked; returns the images.
pub async fn export(
    stores: &EngineStores,
    image: &ImageState,
    config: bytes::Bytes,
    annotations: &BTreeMap<String, String>,
    requests: &[ExportRequest],
    tags: &[String],
    events: &EventSender,
) -> Result<Vec<(Compression, BuiltImage)>> {
    let step = "export";
    let mut images: Vec<(Compression, BuiltImage)> = Vec::new();
    if !requests.is_empty() {
        let _ = events.send(BuildEvent::started(step, "exporting"));
    }
    for request in requests {
        let (ExportRequest::Image(compression) | ExportRequest::Registry(compression)) = *request;
        if !images.iter().any(|(c, _)| *c == compression) {
            let built = built_image(stores, image, &config, annotations, compression).await?;
            images.push((compression, built));
        }
        let Some((_, built)) = images.iter().find(|(c, _)| *c == compression) else { continue };
        if let ExportRequest::Registry(_) = request {
            if tags.is_empty() {
                return Err(Error::invalid_argument("--push / type=registry needs at least one -t NAME:TAG"));
            }
            for tag in tags {
                let reference: ImageReference = tag.parse()?;
                let pushed = stores
                    .registry
                    .push(built, &reference, &*stores.cas)
                    .await
                    .with_context(|| format!("pushing {tag}"))?;
                let _ = events.send(BuildEvent::info(step, format!("pushed {tag}@{pushed}")));
            }
        }
    }
    if !requests.is_empty() {
        let _ = events.send(BuildEvent::finished(step));
    }
    Ok(images)
}

/// Writes the outputs that are files on this machine (OCI layouts, docker
/// archives, `docker load`, a filesystem) from the images in `cas`;
/// returns the image as exported last (its manifest follows the compression
/// of that output), or `None` when only a filesystem was asked for.
pub async fn write_outputs(
    cas: &dyn BlobStore,
    images: &[(Compression, BuiltImage)],
    filesystem: &[Layer],
    outputs: &[OutputSpec],
    tags: &[String],
    events: &EventSender,
) -> Result<Option<BuiltImage>> {
    let step = "write";
    let mut exported = None;
    let image = |compression: Compression| {
        images
            .iter()
            .find(|(c, _)| *c == compression)
            .map(|(_, built)| built)
            .ok_or_else(|| Error::internal(format!("the image was not exported with {compression:?} layers")))
    };
    for (n, output) in outputs.iter().enumerate() {
        if n == 0 {
            let _ = events.send(BuildEvent::started(step, "writing outputs"));
        }
        let info = |message: String| {
            let _ = events.send(BuildEvent::info(step, message));
        };
        match output {
            OutputSpec::Local { dest } => {
                std::fs::create_dir_all(dest).with_context(|| format!("creating {}", dest.display()))?;
                extract_layers(cas, filesystem, dest, ExtractLimits::default()).await?;
                info(format!("wrote the filesystem to {}", dest.display()));
            }
            OutputSpec::Oci { dest, tar, compression } => {
                let built = image(*compression)?;
                let destination =
                    if *tar { OciDestination::Tar(dest.clone()) } else { OciDestination::Directory(dest.clone()) };
                write_oci_layout(built, cas, &destination, tags).await?;
                info(format!("wrote OCI image {} to {}", built.manifest_digest(), dest.display()));
                exported = Some(built.clone());
            }
            OutputSpec::Docker { dest, compression } => {
                let built = image(*compression)?;
                write_docker_archive(built, cas, dest, tags).await?;
                info(format!("wrote docker archive {} to {}", built.manifest_digest(), dest.display()));
                exported = Some(built.clone());
            }
            OutputSpec::Load { compression } => {
                let built = image(*compression)?;
                let dir = tempfile::tempdir().context("creating a directory for the docker archive of --load")?;
                let archive = dir.path().join("image.tar");
                write_docker_archive(built, cas, &archive, tags).await?;
                info(docker_load(&archive).await?);
                exported = Some(built.clone());
            }
            OutputSpec::Registry { compression } => exported = Some(image(*compression)?.clone()),
        }
    }
    if !outputs.is_empty() {
        let _ = events.send(BuildEvent::finished(step));
    }
    Ok(exported)
}

/// The image with its layers compressed as asked (base image layers keep
/// the form the registry gave them).
async fn built_image(
    state: &EngineStores,
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
async fn compressed(state: &EngineStores, layer: &Layer, compression: Compression) -> Result<Layer> {
    let media_type = match compression {
        Compression::None => return Ok(layer.clone()),
        Compression::Gzip => MEDIA_TYPE_TAR_GZIP,
        Compression::Zstd => MEDIA_TYPE_TAR_ZSTD,
    };
    if layer.media_type != MEDIA_TYPE_TAR {
        return Ok(layer.clone());
    }
    let action = StepAction::compress(layer, media_type);
    if let Some(StepOutcome { layer: Some(hit), .. }) = action.lookup(&*state.actions, &state.instance_name).await? {
        return Ok(Layer { blob: hit.blob, media_type: media_type.into(), diff_id: layer.diff_id });
    }
    let done = compress_layer(&*state.cas, layer, compression).await?;
    let result = layer_result(Some(&Layer::uncompressed(done.blob)));
    action.record(&*state.cas, &*state.actions, &state.instance_name, &result).await?;
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
