//! Writing an image in `docker save` format, for `docker load`.

use std::collections::BTreeMap;
use std::path::Path;

use memobuild_cas::BlobStore;
use memobuild_proto::{Digest, DigestFunction, Error, Result, ResultExt};
use serde::Serialize;

use crate::built_image::BuiltImage;
use crate::compression::{compress_layer, Compression};
use crate::image_reference::ImageReference;
use crate::oci_layout_writer::write_tar_atomically;
use crate::output_mark::OutputMark;

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ManifestEntry {
    config: String,
    repo_tags: Vec<String>,
    layers: Vec<String>,
}

fn blob_path(digest: &Digest) -> String {
    format!("blobs/sha256/{}", digest.hex())
}

/// Writes `image` as a docker-archive tar at `dest` (atomically,
/// deterministically): `manifest.json` (`[{Config, RepoTags, Layers}]`) and
/// the config and layers under `blobs/sha256/`. Layers stay gzip or
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
    let mut blobs: BTreeMap<String, Option<Digest>> = BTreeMap::new();
    for blob in &layer_blobs {
        blobs.insert(blob_path(blob), Some(*blob));
    }
    blobs.insert(blob_path(&config_digest), None);
    // An archive of the same blobs (their paths name their digests) and
    // manifest (tags included) that is still as written is left alone.
    let manifest_digest = Digest::of(DigestFunction::Sha256, &manifest);
    let parts = blobs.keys().map(|path| (path.as_str(), path.clone()));
    let mark = OutputMark::of("docker-archive", parts.chain([("manifest.json", manifest_digest.hex())]));
    if mark.is_on(dest) {
        return Ok(());
    }
    let config = image.config.clone();
    write_tar_atomically(dest, Some(&mark), |mut tar| async move {
        tar.directory("blobs/").await?;
        tar.directory("blobs/sha256/").await?;
        for (path, blob) in &blobs {
            match blob {
                Some(digest) => tar.blob(path, store, digest).await?,
                None => tar.file(path, &config).await?,
            }
        }
        tar.file("manifest.json", &manifest).await?;
        Ok(tar)
    })
    .await
}
