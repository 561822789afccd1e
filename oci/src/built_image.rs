//! An image ready to export: its config, layers and OCI manifest.

use std::collections::BTreeMap;

use bytes::Bytes;
use memobuild_proto::{Digest, DigestFunction, Result};
use serde::Serialize;

use crate::blob_io::oci_digest;
use crate::compression::Compression;
use crate::layer::Layer;
use crate::manifest::{OCI_CONFIG, OCI_MANIFEST};

/// An image whose blobs are all in the store: the config JSON exactly as
/// stored, the layers in their stored form, and the OCI image manifest
/// built from them (serialised deterministically).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuiltImage {
    pub config: Bytes,
    pub layers: Vec<Layer>,
    manifest: Bytes,
    manifest_digest: Digest,
    config_digest: Digest,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ManifestJson<'a> {
    schema_version: u32,
    media_type: &'a str,
    config: DescriptorJson<'a>,
    layers: Vec<DescriptorJson<'a>>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: &'a BTreeMap<String, String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DescriptorJson<'a> {
    media_type: &'a str,
    digest: String,
    size: u64,
}

impl BuiltImage {
    /// Builds the manifest. Docker layer media types are written as their
    /// OCI equivalents (same bytes); the config is `application/vnd.oci.image.config.v1+json`.
    pub fn new(config: Bytes, layers: Vec<Layer>, annotations: BTreeMap<String, String>) -> Result<Self> {
        let config_digest = Digest::of(DigestFunction::Sha256, &config);
        let mut layer_descriptors = Vec::with_capacity(layers.len());
        for layer in &layers {
            let compression = Compression::of_media_type(&layer.media_type)
                .map_err(|e| e.context(format!("building the manifest: layer {}", oci_digest(&layer.blob))))?;
            layer_descriptors.push(DescriptorJson {
                media_type: compression.media_type(),
                digest: oci_digest(&layer.blob),
                size: layer.blob.size(),
            });
        }
        let manifest = ManifestJson {
            schema_version: 2,
            media_type: OCI_MANIFEST,
            config: DescriptorJson {
                media_type: OCI_CONFIG,
                digest: oci_digest(&config_digest),
                size: config_digest.size(),
            },
            layers: layer_descriptors,
            annotations: &annotations,
        };
        let manifest = Bytes::from(
            serde_json::to_vec(&manifest)
                .map_err(|e| memobuild_proto::Error::internal(format!("serialising the image manifest: {e}")))?,
        );
        let manifest_digest = Digest::of(DigestFunction::Sha256, &manifest);
        Ok(BuiltImage { config, layers, manifest, manifest_digest, config_digest })
    }

    /// The manifest JSON as pushed and written.
    pub fn manifest(&self) -> &Bytes {
        &self.manifest
    }

    /// `sha256:<hex>` of the manifest.
    pub fn manifest_digest(&self) -> String {
        oci_digest(&self.manifest_digest)
    }

    /// The manifest's media type (always the OCI image manifest).
    pub fn manifest_media_type(&self) -> &'static str {
        OCI_MANIFEST
    }

    /// The manifest's digest with its size.
    pub fn manifest_blob(&self) -> Digest {
        self.manifest_digest
    }

    pub fn config_digest(&self) -> Digest {
        self.config_digest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_is_deterministic_and_oci() {
        let layer = Layer {
            blob: Digest::of(DigestFunction::Sha256, b"gz"),
            media_type: crate::MEDIA_TYPE_DOCKER_TAR_GZIP.to_string(),
            diff_id: Digest::of(DigestFunction::Sha256, b"tar"),
        };
        let annotations = BTreeMap::from([("b".to_string(), "2".to_string()), ("a".to_string(), "1".to_string())]);
        let a = BuiltImage::new(Bytes::from_static(b"{}"), vec![layer.clone()], annotations.clone()).unwrap();
        let b = BuiltImage::new(Bytes::from_static(b"{}"), vec![layer], annotations).unwrap();
        assert_eq!(a.manifest(), b.manifest());
        let json: serde_json::Value = serde_json::from_slice(a.manifest()).unwrap();
        assert_eq!(json["mediaType"], OCI_MANIFEST);
        assert_eq!(json["layers"][0]["mediaType"], crate::MEDIA_TYPE_TAR_GZIP);
        assert_eq!(json["config"]["size"], 2);
        let text = std::str::from_utf8(a.manifest()).unwrap();
        assert!(text.find("\"a\"").unwrap() < text.find("\"b\"").unwrap());
        assert_eq!(a.manifest_digest(), format!("sha256:{}", Digest::of(DigestFunction::Sha256, a.manifest()).hex()));
    }
}
