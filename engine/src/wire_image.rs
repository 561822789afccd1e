//! Images and layers as `memobuild.build.v1` carries them from a cluster
//! to its client, which writes the outputs from the cluster's CAS.

use std::collections::BTreeMap;

use memobuild_oci::{BuiltImage, Compression, Layer};
use memobuild_proto::build::{BlobDigest, ExportedImage, LayerDescriptor};
use memobuild_proto::{DigestFunction, Error, Result};

pub fn layer_descriptor(layer: &Layer) -> LayerDescriptor {
    LayerDescriptor {
        blob: Some(BlobDigest::of(&layer.blob)),
        media_type: layer.media_type.clone(),
        diff_id: Some(BlobDigest::of(&layer.diff_id)),
    }
}

pub fn layer_of(descriptor: &LayerDescriptor) -> Result<Layer> {
    let digest = |d: Option<&BlobDigest>, what: &str| {
        d.ok_or_else(|| Error::invalid_argument(format!("a layer has no {what}")))?.digest(DigestFunction::Sha256, what)
    };
    Ok(Layer {
        blob: digest(descriptor.blob.as_ref(), "blob digest")?,
        media_type: descriptor.media_type.clone(),
        diff_id: digest(descriptor.diff_id.as_ref(), "diff id")?,
    })
}

pub fn exported_image(compression: Compression, image: &BuiltImage) -> ExportedImage {
    ExportedImage {
        compression: compression.to_string(),
        config: image.config.to_vec(),
        layers: image.layers.iter().map(layer_descriptor).collect(),
        manifest_digest: image.manifest_digest(),
    }
}

/// The image again, its manifest rebuilt from the config, the layers and
/// `annotations`; it must be the manifest the cluster made.
pub fn image_of(exported: &ExportedImage, annotations: &BTreeMap<String, String>) -> Result<(Compression, BuiltImage)> {
    let compression: Compression = exported.compression.parse()?;
    let layers = exported.layers.iter().map(layer_of).collect::<Result<Vec<_>>>()?;
    let image = BuiltImage::new(exported.config.clone().into(), layers, annotations.clone())?;
    if image.manifest_digest() != exported.manifest_digest {
        return Err(Error::internal(format!(
            "the image manifest rebuilt here is {}, the cluster made {}",
            image.manifest_digest(),
            exported.manifest_digest
        )));
    }
    Ok((compression, image))
}
