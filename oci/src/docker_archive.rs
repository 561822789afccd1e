//! Writing an image in `docker save` format, for `docker load`.

use std::path::Path;

use memobuild_cas::BlobStore;
use memobuild_proto::{Error, Result, ResultExt};
use serde::Serialize;

use crate::built_image::BuiltImage;
use crate::compression::{compress_layer, Compression};
use crate::image_reference::ImageReference;
use crate::tar_output::{blob_path, write_archive, ArchiveEntry, EntryContent};

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ManifestEntry {
    config: String,
    repo_tags: Vec<String>,
    layers: Vec<String>,
}

/// Writes `image` as a docker-archive tar at `dest`, as the OCI layout tar
/// is written (deterministic, updated in place when MemoBuild wrote it):
/// the layers bottom first and the config under `blobs/sha256/`, then
/// `manifest.json` (`[{Config, RepoTags, Layers}]`). Layers stay gzip or
/// uncompressed as stored; zstd layers are written uncompressed, which
/// every `docker load` accepts. `tags` are image names (`name:tag`).
pub async fn write_docker_archive(
    image: &BuiltImage,
    store: &dyn BlobStore,
    dest: &Path,
    tags: &[String],
) -> Result<()> {
    write(image, store, dest, tags).await.with_context(|| format!("writing docker archive {}", dest.display()))
}

async fn write(image: &BuiltImage, store: &dyn BlobStore, dest: &Path, tags: &[String]) -> Result<()> {
    let mut layer_blobs = Vec::with_capacity(image.layers.len());
    for layer in &image.layers {
        let layer = match Compression::of_media_type(&layer.media_type)? {
            Compression::Zstd => compress_layer(store, layer, Compression::None).await?,
            Compression::None | Compression::Gzip => layer.clone(),
        };
        layer_blobs.push(layer.blob);
    }
    let mut repo_tags = Vec::new();
    for tag in tags {
        let name: ImageReference = tag.parse()?;
        if name.tag().is_none() {
            return Err(Error::invalid_argument(format!(
                "image name {tag}: a docker archive needs a tag, not a digest"
            )));
        }
        let familiar = name.familiar();
        if !repo_tags.contains(&familiar) {
            repo_tags.push(familiar);
        }
    }
    let config_digest = image.config_digest();
    let manifest = vec![ManifestEntry {
        config: blob_path(&config_digest),
        repo_tags,
        layers: layer_blobs.iter().map(blob_path).collect(),
    }];
    let manifest =
        serde_json::to_vec(&manifest).map_err(|e| Error::internal(format!("serialising manifest.json: {e}")))?;
    let mut entries = vec![
        ArchiveEntry::new("blobs/", EntryContent::Directory),
        ArchiveEntry::new("blobs/sha256/", EntryContent::Directory),
    ];
    entries.extend(layer_blobs.into_iter().map(ArchiveEntry::blob));
    entries.push(ArchiveEntry::new(blob_path(&config_digest), EntryContent::Bytes(image.config.clone())));
    entries.push(ArchiveEntry::new("manifest.json", EntryContent::Bytes(manifest.into())));
    write_archive(dest, "docker-archive", entries, store).await
}
