//! The manifest and index documents of OCI and Docker v2 schema 2, read
//! leniently, and the choice of a platform's manifest from an index.

use std::collections::BTreeMap;

use futures::{StreamExt, TryStreamExt};
use memobuild_proto::{Digest, Error, Result};
use oci_spec::image::ImageConfiguration;
use serde::{Deserialize, Serialize};

use memobuild_cas::BlobStore;

use crate::blob_io::{blob_reader, blocking, io_error, oci_digest, parse_oci_digest, HashingReader};
use crate::compression::Compression;
use crate::diff_id_memo::DiffIdMemo;
use crate::layer::Layer;
use memobuild_proto::Platform;

pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(crate) const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub(crate) const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub(crate) const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// What we accept from a registry or a layout.
pub(crate) const ACCEPTED: [&str; 4] = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST];

/// A content descriptor.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Descriptor {
    pub(crate) fn digest(&self) -> Result<Digest> {
        parse_oci_digest(&self.digest, self.size)
    }
}

/// A manifest or an index: which one it is shows in `manifests` versus
/// `config` + `layers` (the media type field is optional in OCI).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ManifestDocument {
    #[serde(default)]
    pub schema_version: i64,
    #[serde(default)]
    pub media_type: Option<String>,
    #[serde(default)]
    pub config: Option<Descriptor>,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    #[serde(default)]
    pub manifests: Option<Vec<Descriptor>>,
}

impl ManifestDocument {
    /// Parses `bytes`, naming `what` (a reference or a file) in errors.
    pub(crate) fn parse(bytes: &[u8], what: &str) -> Result<Self> {
        let doc: ManifestDocument = serde_json::from_slice(bytes)
            .map_err(|e| Error::invalid_argument(format!("{what}: malformed manifest: {e}")))?;
        if doc.schema_version != 2 {
            return Err(Error::invalid_argument(format!(
                "{what}: unsupported manifest schema version {} (only 2)",
                doc.schema_version
            )));
        }
        if let Some(media_type) = &doc.media_type {
            if !ACCEPTED.contains(&media_type.as_str()) {
                return Err(Error::invalid_argument(format!("{what}: unsupported manifest media type {media_type}")));
            }
        }
        Ok(doc)
    }

    /// The entries when this is an index.
    pub(crate) fn index_entries(&self) -> Option<&[Descriptor]> {
        match (&self.manifests, &self.config) {
            (Some(entries), None) => Some(entries),
            _ => None,
        }
    }

    /// The config descriptor of an image manifest.
    pub(crate) fn config(&self, what: &str) -> Result<&Descriptor> {
        self.config.as_ref().ok_or_else(|| Error::invalid_argument(format!("{what}: the manifest has no config")))
    }
}

/// Picks the entry of an index for `platform`; the error names `what` and
/// the platforms the index has.
pub(crate) fn select_platform<'a>(entries: &'a [Descriptor], platform: &str, what: &str) -> Result<&'a Descriptor> {
    let wanted: Platform = platform.parse()?;
    let found = entries.iter().find(|e| e.platform.as_ref().is_some_and(|p| p.satisfies(&wanted)));
    found.ok_or_else(|| {
        let available: Vec<String> = entries
            .iter()
            .filter_map(|e| e.platform.as_ref())
            .filter(|p| p.os != "unknown")
            .map(|p| p.to_string())
            .collect();
        Error::not_found(format!(
            "{what} has no image for platform {platform}; available: {}",
            if available.is_empty() { "none".to_string() } else { available.join(", ") }
        ))
    })
}

/// A layer as a manifest and config describe it, before its diff id's size
/// is known (configs list hashes only).
pub(crate) struct ListedLayer {
    blob: Digest,
    media_type: String,
    diff_id: String,
}

/// Parses an image config and pairs its diff ids with the manifest's layers.
pub(crate) fn layers_of(
    manifest: &ManifestDocument,
    config: &[u8],
    what: &str,
) -> Result<(ImageConfiguration, Vec<ListedLayer>)> {
    let parsed: ImageConfiguration = serde_json::from_slice(config)
        .map_err(|e| Error::invalid_argument(format!("{what}: malformed image config: {e}")))?;
    let diff_ids = parsed.rootfs().diff_ids();
    if diff_ids.len() != manifest.layers.len() {
        return Err(Error::invalid_argument(format!(
            "{what}: the manifest has {} layers but the config lists {} diff ids",
            manifest.layers.len(),
            diff_ids.len()
        )));
    }
    let mut layers = Vec::with_capacity(diff_ids.len());
    for (descriptor, diff_id) in manifest.layers.iter().zip(diff_ids) {
        Compression::of_media_type(&descriptor.media_type).map_err(|e| e.context(what))?;
        let blob = descriptor.digest().map_err(|e| e.context(what))?;
        // Checks the form; the size is learnt when the layer is read.
        parse_oci_digest(diff_id, 0).map_err(|e| e.context(what))?;
        layers.push(ListedLayer { blob, media_type: descriptor.media_type.clone(), diff_id: diff_id.clone() });
    }
    Ok((parsed, layers))
}

/// Completes the layers once their blobs are in `store`: an uncompressed
/// layer's diff id is its blob; a compressed one is decompressed to learn
/// the size of its diff id and check the config's hash. A layer whose tar
/// is more than `max_layer_bytes` is refused, and no more than that is
/// decompressed.
pub(crate) async fn complete_layers(
    store: &dyn BlobStore,
    listed: Vec<ListedLayer>,
    what: &str,
    memo: Option<&dyn DiffIdMemo>,
    max_layer_bytes: u64,
) -> Result<Vec<Layer>> {
    // Decompressing to learn diff ids is CPU-bound: one layer per core.
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let completions = listed.into_iter().map(|layer| complete_layer(store, layer, what, memo, max_layer_bytes));
    futures::stream::iter(completions).buffered(cores).try_collect().await
}

/// One listed layer with its diff id: remembered, the blob itself when
/// uncompressed, else found by decompressing; checked against the config.
async fn complete_layer(
    store: &dyn BlobStore,
    layer: ListedLayer,
    what: &str,
    memo: Option<&dyn DiffIdMemo>,
    max_layer_bytes: u64,
) -> Result<Layer> {
    let compression = Compression::of_media_type(&layer.media_type)?;
    let remembered = memo.and_then(|m| m.get(&layer.blob));
    let name = oci_digest(&layer.blob);
    let too_big = || {
        Error::invalid_argument(format!(
            "layer {name} decompresses to more than the {max_layer_bytes} bytes allowed (max_layer_bytes)"
        ))
    };
    let diff_id = if compression == Compression::None {
        layer.blob
    } else if let Some(diff_id) = remembered {
        diff_id
    } else {
        let reader = blob_reader(store, &layer.blob).await?;
        let error = too_big();
        blocking(move || {
            HashingReader::new(compression.decoder(reader, max_layer_bytes, error)?).finish().map_err(io_error)
        })
        .await
        .map_err(|e| e.context(format!("{what}: decompressing layer {name}")))?
    };
    if diff_id.size() > max_layer_bytes {
        return Err(too_big().context(what));
    }
    if oci_digest(&diff_id) != layer.diff_id {
        return Err(Error::invalid_argument(format!(
            "{what}: layer {} has diff id {}, the config says {}",
            oci_digest(&layer.blob),
            oci_digest(&diff_id),
            layer.diff_id
        )));
    }
    if let (Some(memo), None) = (memo, remembered) {
        memo.put(&layer.blob, &diff_id);
    }
    Ok(Layer { blob: layer.blob, media_type: layer.media_type, diff_id })
}

impl ListedLayer {
    pub(crate) fn blob(&self) -> &Digest {
        &self.blob
    }
}
