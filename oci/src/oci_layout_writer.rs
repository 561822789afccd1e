//! Writing an image as an OCI image layout, as a directory or a tar.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use memobuild_cas::BlobStore;
use memobuild_proto::{Error, Result, ResultExt};
use serde::Serialize;
use std::collections::BTreeMap;
use tokio::io::AsyncWriteExt;

use crate::blob_io::oci_digest;
use crate::built_image::BuiltImage;
use crate::image_reference::ImageReference;
use crate::manifest::{OCI_INDEX, OCI_MANIFEST};
use crate::output_mark::OutputMark;
use crate::tar_output::{blob_path, distinct, parent_of, set_mode, write_archive, ArchiveEntry, EntryContent};

/// `org.opencontainers.image.ref.name`
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// `io.containerd.image.name`
pub const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";
const OCI_LAYOUT_FILE: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

/// Where an OCI layout goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OciDestination {
    Directory(PathBuf),
    Tar(PathBuf),
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct IndexJson {
    schema_version: u32,
    media_type: &'static str,
    manifests: Vec<IndexEntry>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct IndexEntry {
    media_type: &'static str,
    digest: String,
    size: u64,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<String, String>,
}

/// The layout's entries, what changes most last: the directories,
/// `oci-layout`, the layer blobs bottom first, the config, the manifest and
/// `index.json`. Each tag is an image name (`name:tag`); its index entry
/// carries the tag as `org.opencontainers.image.ref.name` and the full name
/// as `io.containerd.image.name`. Without tags, one unnamed entry.
fn layout_entries(image: &BuiltImage, tags: &[String]) -> Result<Vec<ArchiveEntry>> {
    let mut names = Vec::new();
    for tag in tags {
        let name: ImageReference = tag.parse()?;
        let ref_name = name.tag().unwrap_or("latest").to_string();
        let annotations = BTreeMap::from([
            (ANNOTATION_CONTAINERD_NAME.to_string(), name.to_string()),
            (ANNOTATION_REF_NAME.to_string(), ref_name),
        ]);
        names.push(annotations);
    }
    names.dedup();
    if names.is_empty() {
        names.push(BTreeMap::new());
    }
    let index = IndexJson {
        schema_version: 2,
        media_type: OCI_INDEX,
        manifests: names
            .into_iter()
            .map(|annotations| IndexEntry {
                media_type: OCI_MANIFEST,
                digest: image.manifest_digest(),
                size: image.manifest().len() as u64,
                annotations,
            })
            .collect(),
    };
    let index = serde_json::to_vec(&index).map_err(|e| Error::internal(format!("serialising index.json: {e}")))?;
    let mut entries = vec![
        ArchiveEntry::new("blobs/", EntryContent::Directory),
        ArchiveEntry::new("blobs/sha256/", EntryContent::Directory),
        ArchiveEntry::new("oci-layout", EntryContent::Bytes(Bytes::from_static(OCI_LAYOUT_FILE))),
    ];
    entries.extend(image.layers.iter().map(|layer| ArchiveEntry::blob(layer.blob)));
    entries.push(ArchiveEntry::new(blob_path(&image.config_digest()), EntryContent::Bytes(image.config.clone())));
    entries.push(ArchiveEntry::new(blob_path(&image.manifest_blob()), EntryContent::Bytes(image.manifest().clone())));
    entries.push(ArchiveEntry::new("index.json", EntryContent::Bytes(index.into())));
    Ok(entries)
}

/// Writes `image` as an OCI image layout at `dest`, deterministically (a
/// tar's entries in a fixed order, with mtime 0 and owner 0). A tar that
/// MemoBuild wrote and nothing changed since is left alone when it holds
/// this image, else updated in place from its first changed entry; any
/// other file is replaced by a temporary sibling renamed over it (see
/// [`OutputMark`]). A directory destination may exist only when empty or
/// already an OCI layout, which is then brought up to date.
pub async fn write_oci_layout(
    image: &BuiltImage,
    store: &dyn BlobStore,
    dest: &OciDestination,
    tags: &[String],
) -> Result<()> {
    let entries = layout_entries(image, tags)?;
    match dest {
        OciDestination::Directory(path) => write_directory(&distinct(entries), store, path)
            .await
            .with_context(|| format!("writing OCI layout directory {}", path.display())),
        OciDestination::Tar(path) => write_archive(path, "oci-layout-tar", entries, store)
            .await
            .with_context(|| format!("writing OCI layout tar {}", path.display())),
    }
}

async fn write_directory(files: &[ArchiveEntry], store: &dyn BlobStore, dest: &Path) -> Result<()> {
    let replaced = match std::fs::symlink_metadata(dest) {
        Ok(meta) if meta.is_dir() => {
            let empty = std::fs::read_dir(dest)?.next().is_none();
            if !empty && !dest.join("oci-layout").is_file() {
                return Err(Error::invalid_argument(
                    "the directory exists and is not an OCI layout; refusing to replace it",
                ));
            }
            true
        }
        Ok(_) => return Err(Error::invalid_argument("the path exists and is not a directory")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(e.into()),
    };
    if replaced && !dest.join("blobs").is_symlink() && !dest.join("blobs/sha256").is_symlink() {
        return update_directory(files, store, dest).await;
    }
    let parent = parent_of(dest);
    let temp = tempfile::Builder::new().prefix(".memobuild-").tempdir_in(parent)?;
    set_mode(temp.path(), 0o755)?;
    for ArchiveEntry { path, content } in files {
        let target = temp.path().join(path);
        if *content == EntryContent::Directory {
            tokio::fs::create_dir_all(&target).await?;
            continue;
        }
        let file = tokio::fs::File::create(&target).await?;
        write_content(file, content, store).await.with_context(|| format!("writing {path}"))?;
        OutputMark::of("oci-layout-file", [(path.as_str(), content.id())]).put_on(&target);
    }
    if replaced {
        let old = tempfile::Builder::new().prefix(".memobuild-old-").tempdir_in(parent)?;
        let old_path = old.path().join("layout");
        std::fs::rename(dest, &old_path)?;
        std::fs::rename(temp.keep(), dest)?;
        drop(old);
    } else {
        std::fs::rename(temp.keep(), dest)?;
    }
    Ok(())
}

/// Brings an existing OCI layout directory to `files`: a file MemoBuild
/// wrote there before with the same content and that nothing changed
/// since (see [`OutputMark`]) stays, other files are written beside their
/// place and renamed into it (blobs first, so `index.json` never names a
/// missing blob), then blobs no longer named go. An unchanged image writes
/// nothing.
async fn update_directory(files: &[ArchiveEntry], store: &dyn BlobStore, dest: &Path) -> Result<()> {
    let blobs = dest.join("blobs/sha256");
    let mut kept = std::collections::HashSet::new();
    for ArchiveEntry { path, content } in files {
        let target = dest.join(path);
        if *content == EntryContent::Directory {
            tokio::fs::create_dir_all(&target).await?;
            continue;
        }
        let mark = OutputMark::of("oci-layout-file", [(path.as_str(), content.id())]);
        if let Some(name) = path.strip_prefix("blobs/sha256/") {
            kept.insert(name.to_string());
        }
        if mark.is_on(&target) {
            continue;
        }
        let temp = tempfile::Builder::new().prefix(".memobuild-").tempfile_in(parent_of(&target))?;
        let file = tokio::fs::File::from_std(temp.as_file().try_clone()?);
        write_content(file, content, store).await.with_context(|| format!("writing {path}"))?;
        set_mode(temp.path(), 0o644)?;
        mark.put_on(temp.path());
        temp.persist(&target).map_err(|e| Error::from(e.error))?;
    }
    for entry in std::fs::read_dir(&blobs)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !kept.contains(&name) {
            let path = entry.path();
            let removed = match entry.file_type()?.is_dir() {
                true => std::fs::remove_dir_all(&path),
                false => std::fs::remove_file(&path),
            };
            removed.with_context(|| format!("removing {}", path.display()))?;
        }
    }
    Ok(())
}

/// Fills `file` with a file entry's content.
async fn write_content(mut file: tokio::fs::File, content: &EntryContent, store: &dyn BlobStore) -> Result<()> {
    match content {
        EntryContent::Directory => {}
        EntryContent::Bytes(data) => file.write_all(data).await?,
        EntryContent::Blob(digest) => {
            use futures::StreamExt;
            let mut stream = store.get(digest, memobuild_cas::ByteRange::ALL).await?;
            let mut written = 0u64;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                written += chunk.len() as u64;
                file.write_all(&chunk).await?;
            }
            if written != digest.size() {
                return Err(Error::internal(format!("blob {}: read {written} bytes", oci_digest(digest))));
            }
        }
    }
    file.flush().await?;
    Ok(())
}
