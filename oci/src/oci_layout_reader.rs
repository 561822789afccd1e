//! Reading an image from an OCI image layout directory.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use memobuild_cas::{verify_stream, BlobStore};
use memobuild_proto::{Digest, Error, Result};
use tokio_util::io::ReaderStream;

use crate::blob_io::{oci_digest, MAX_METADATA_BYTES};
use crate::diff_id_memo::DiffIdMemo;
use crate::manifest::{complete_layers, layers_of, select_platform, Descriptor, ManifestDocument};
use crate::oci_layout_writer::{ANNOTATION_CONTAINERD_NAME, ANNOTATION_REF_NAME};
use crate::pulled_image::PulledImage;

/// Reads the image tagged `tag` (its `org.opencontainers.image.ref.name`,
/// or its full `io.containerd.image.name`) from the layout at `path`, or
/// the only image when `tag` is `None`; resolves an index to `platform`'s
/// manifest and copies the config and layers into `store`, verified. A
/// layer that decompresses to more than `max_layer_bytes` is refused.
pub async fn read_oci_layout(
    path: &Path,
    tag: Option<&str>,
    platform: &str,
    store: &dyn BlobStore,
    memo: Option<&dyn DiffIdMemo>,
    max_layer_bytes: u64,
) -> Result<PulledImage> {
    let written = match tag {
        Some(tag) => format!("oci-layout://{}:{tag}", path.display()),
        None => format!("oci-layout://{}", path.display()),
    };
    read(path, tag, platform, store, memo, max_layer_bytes)
        .await
        .map_err(|e| e.context(format!("reading {written}")))
        .map(|mut image| {
            image.reference = written;
            image
        })
}

async fn read(
    path: &Path,
    tag: Option<&str>,
    platform: &str,
    store: &dyn BlobStore,
    memo: Option<&dyn DiffIdMemo>,
    max_layer_bytes: u64,
) -> Result<PulledImage> {
    let layout = Layout { root: path.to_path_buf() };
    if !path.join("oci-layout").is_file() {
        return Err(Error::not_found(format!("{} is not an OCI layout (no oci-layout file)", path.display())));
    }
    let index_path = path.join("index.json");
    let index_bytes = read_bounded(&index_path).await?;
    let index = ManifestDocument::parse(&index_bytes, &index_path.display().to_string())?;
    let entries = index.manifests.clone().unwrap_or_default();
    let candidates: Vec<&Descriptor> = match tag {
        Some(tag) => entries
            .iter()
            .filter(|e| {
                e.annotations.get(ANNOTATION_REF_NAME).map(String::as_str) == Some(tag)
                    || e.annotations.get(ANNOTATION_CONTAINERD_NAME).map(String::as_str) == Some(tag)
            })
            .collect(),
        None => entries.iter().collect(),
    };
    let chosen: Descriptor = match candidates.as_slice() {
        [] => {
            let names: Vec<&str> =
                entries.iter().filter_map(|e| e.annotations.get(ANNOTATION_REF_NAME)).map(String::as_str).collect();
            return Err(Error::not_found(format!(
                "no image tagged {:?} in index.json; tags: {}",
                tag.unwrap_or(""),
                if names.is_empty() { "none".to_string() } else { names.join(", ") }
            )));
        }
        [only] => (*only).clone(),
        many if many.iter().all(|e| e.platform.is_some()) => {
            let owned: Vec<Descriptor> = many.iter().map(|e| (*e).clone()).collect();
            select_platform(&owned, platform, "index.json")?.clone()
        }
        many => {
            let names: Vec<&str> =
                many.iter().filter_map(|e| e.annotations.get(ANNOTATION_REF_NAME)).map(String::as_str).collect();
            return Err(Error::invalid_argument(format!(
                "index.json holds {} images; name one with :TAG (tags: {})",
                many.len(),
                names.join(", ")
            )));
        }
    };
    let (manifest, manifest_digest) = layout.resolve_manifest(&chosen, platform).await?;
    let what = format!("manifest {manifest_digest}");
    let config_digest = manifest.config(&what)?.digest()?;
    let config = layout.copy_small(&config_digest, store).await?;
    let (config_parsed, listed) = layers_of(&manifest, &config, &what)?;
    let blobs: Vec<Digest> = listed.iter().map(|l| *l.blob()).collect();
    for digest in store.find_missing(&blobs).await? {
        layout.copy_blob(&digest, store).await?;
    }
    let layers = complete_layers(store, listed, &what, memo, max_layer_bytes).await?;
    Ok(PulledImage {
        reference: String::new(),
        resolved: format!("{}@{manifest_digest}", path.display()),
        manifest_digest,
        config: config_parsed,
        raw_config: config,
        layers,
    })
}

struct Layout {
    root: PathBuf,
}

impl Layout {
    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs").join("sha256").join(digest.hex())
    }

    /// A small blob, checked against its digest.
    async fn read_small(&self, digest: &Digest) -> Result<Bytes> {
        if digest.size() > MAX_METADATA_BYTES {
            return Err(Error::invalid_argument(format!(
                "blob {} is {} bytes, more than the {MAX_METADATA_BYTES} allowed for a manifest or config",
                oci_digest(digest),
                digest.size()
            )));
        }
        let path = self.blob_path(digest);
        let data = read_bounded(&path).await?;
        let actual = Digest::of(digest.function(), &data);
        if actual != *digest {
            return Err(Error::invalid_argument(format!(
                "{}: content is sha256:{} ({} bytes), not {} ({} bytes)",
                path.display(),
                actual.hex(),
                actual.size(),
                oci_digest(digest),
                digest.size()
            )));
        }
        Ok(data)
    }

    async fn copy_small(&self, digest: &Digest, store: &dyn BlobStore) -> Result<Bytes> {
        let data = self.read_small(digest).await?;
        store.put_bytes(digest, data.clone()).await?;
        Ok(data)
    }

    /// Streams a blob into the store, verified.
    async fn copy_blob(&self, digest: &Digest, store: &dyn BlobStore) -> Result<()> {
        let path = self.blob_path(digest);
        let file = tokio::fs::File::open(&path).await.map_err(|e| Error::from(e).context(path.display()))?;
        let stream = ReaderStream::new(file).map_err(Error::from).boxed();
        store.put(digest, verify_stream(*digest, stream)).await.map_err(|e| e.context(path.display()))
    }

    /// The image manifest `descriptor` names, through an index if it is one.
    async fn resolve_manifest(&self, descriptor: &Descriptor, platform: &str) -> Result<(ManifestDocument, String)> {
        let digest = descriptor.digest()?;
        let bytes = self.read_small(&digest).await?;
        let what = format!("manifest {}", descriptor.digest);
        let doc = ManifestDocument::parse(&bytes, &what)?;
        let Some(entries) = doc.index_entries() else {
            return Ok((doc, descriptor.digest.clone()));
        };
        let entry = select_platform(entries, platform, &what)?;
        let digest = entry.digest()?;
        let bytes = self.read_small(&digest).await?;
        let doc = ManifestDocument::parse(&bytes, &format!("manifest {}", entry.digest))?;
        if doc.index_entries().is_some() {
            return Err(Error::invalid_argument(format!(
                "manifest {}: an index inside an index is not supported",
                entry.digest
            )));
        }
        Ok((doc, entry.digest.clone()))
    }
}

async fn read_bounded(path: &Path) -> Result<Bytes> {
    let meta = tokio::fs::metadata(path).await.map_err(|e| Error::from(e).context(path.display()))?;
    if meta.len() > MAX_METADATA_BYTES {
        return Err(Error::invalid_argument(format!(
            "{} is {} bytes, more than the {MAX_METADATA_BYTES} allowed",
            path.display(),
            meta.len()
        )));
    }
    Ok(tokio::fs::read(path).await.map_err(|e| Error::from(e).context(path.display()))?.into())
}
