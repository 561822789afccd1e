//! Writing an image as an OCI image layout, as a directory or a tar.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use memobuild_cas::BlobStore;
use memobuild_proto::{Digest, Error, Result, ResultExt};
use serde::Serialize;
use std::collections::BTreeMap;
use tokio::io::AsyncWriteExt;

use crate::blob_io::oci_digest;
use crate::built_image::BuiltImage;
use crate::image_reference::ImageReference;
use crate::manifest::{OCI_INDEX, OCI_MANIFEST};
use crate::output_mark::OutputMark;
use crate::tar_stream::TarStream;

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

/// A file of the layout: bytes in memory or a blob in the store.
enum Content {
    Bytes(Bytes),
    Blob(Digest),
}

impl Content {
    /// What identifies the content: its digest.
    fn id(&self) -> String {
        match self {
            Content::Bytes(data) => Digest::of(memobuild_proto::DigestFunction::Sha256, data).to_string(),
            Content::Blob(digest) => digest.to_string(),
        }
    }
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

/// The layout's files, sorted by path: `blobs/sha256/*`, `index.json`,
/// `oci-layout`. Each tag is an image name (`name:tag`); its index entry
/// carries the tag as `org.opencontainers.image.ref.name` and the full name
/// as `io.containerd.image.name`. Without tags, one unnamed entry.
fn layout_files(image: &BuiltImage, tags: &[String]) -> Result<Vec<(String, Content)>> {
    let mut entries = Vec::new();
    for tag in tags {
        let name: ImageReference = tag.parse()?;
        let ref_name = name.tag().unwrap_or("latest").to_string();
        let annotations = BTreeMap::from([
            (ANNOTATION_CONTAINERD_NAME.to_string(), name.to_string()),
            (ANNOTATION_REF_NAME.to_string(), ref_name),
        ]);
        entries.push(annotations);
    }
    entries.dedup();
    if entries.is_empty() {
        entries.push(BTreeMap::new());
    }
    let index = IndexJson {
        schema_version: 2,
        media_type: OCI_INDEX,
        manifests: entries
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
    let mut blobs: BTreeMap<String, Content> = BTreeMap::new();
    for layer in &image.layers {
        blobs.insert(layer.blob.hex(), Content::Blob(layer.blob));
    }
    blobs.insert(image.config_digest().hex(), Content::Bytes(image.config.clone()));
    blobs.insert(image.manifest_blob().hex(), Content::Bytes(image.manifest().clone()));
    let mut files: Vec<(String, Content)> =
        blobs.into_iter().map(|(hex, content)| (format!("blobs/sha256/{hex}"), content)).collect();
    files.push(("index.json".to_string(), Content::Bytes(index.into())));
    files.push(("oci-layout".to_string(), Content::Bytes(Bytes::from_static(OCI_LAYOUT_FILE))));
    Ok(files)
}

/// Writes `image` as an OCI image layout at `dest`, atomically (a temporary
/// sibling renamed into place) and deterministically (a tar's entries are
/// sorted, with mtime 0 and owner 0). A tar that MemoBuild wrote with the
/// same content and that nothing changed since is left as it is (see
/// [`OutputMark`]). A directory destination may exist only when empty or
/// already an OCI layout, which is then replaced.
pub async fn write_oci_layout(
    image: &BuiltImage,
    store: &dyn BlobStore,
    dest: &OciDestination,
    tags: &[String],
) -> Result<()> {
    let files = layout_files(image, tags)?;
    match dest {
        OciDestination::Directory(path) => write_directory(&files, store, path)
            .await
            .with_context(|| format!("writing OCI layout directory {}", path.display())),
        OciDestination::Tar(path) => {
            let dirs = ["blobs/", "blobs/sha256/"];
            let mark =
                OutputMark::of("oci-layout-tar", files.iter().map(|(name, content)| (name.as_str(), content.id())));
            if mark.is_on(path) {
                return Ok(());
            }
            write_tar_atomically(path, Some(&mark), |tar| async move { write_entries(tar, &dirs, &files, store).await })
                .await
                .with_context(|| format!("writing OCI layout tar {}", path.display()))
        }
    }
}

async fn write_entries(
    mut tar: TarStream<tokio::fs::File>,
    dirs: &[&str],
    files: &[(String, Content)],
    store: &dyn BlobStore,
) -> Result<TarStream<tokio::fs::File>> {
    for dir in dirs {
        tar.directory(dir).await?;
    }
    for (path, content) in files {
        match content {
            Content::Bytes(data) => tar.file(path, data).await?,
            Content::Blob(digest) => tar.blob(path, store, digest).await?,
        }
    }
    Ok(tar)
}

/// Creates the tar in a temporary file beside `dest` and renames it there,
/// with `mark` on it when given.
pub(crate) async fn write_tar_atomically<F, Fut>(dest: &Path, mark: Option<&OutputMark>, fill: F) -> Result<()>
where
    F: FnOnce(TarStream<tokio::fs::File>) -> Fut,
    Fut: std::future::Future<Output = Result<TarStream<tokio::fs::File>>>,
{
    let parent = parent_of(dest);
    let temp = tempfile::Builder::new().prefix(".memobuild-").suffix(".tmp").tempfile_in(parent)?;
    let file = tokio::fs::File::from_std(temp.as_file().try_clone()?);
    let mut file = fill(TarStream::new(file)).await?.finish().await?;
    file.flush().await?;
    file.sync_all().await?;
    set_mode(temp.path(), 0o644)?;
    if let Some(mark) = mark {
        mark.put_on(temp.path());
    }
    temp.persist(dest).map_err(|e| Error::from(e.error))?;
    Ok(())
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

async fn write_directory(files: &[(String, Content)], store: &dyn BlobStore, dest: &Path) -> Result<()> {
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
    tokio::fs::create_dir_all(temp.path().join("blobs/sha256")).await?;
    for (path, content) in files {
        let target = temp.path().join(path);
        match content {
            Content::Bytes(data) => tokio::fs::write(&target, data).await?,
            Content::Blob(digest) => {
                let file = tokio::fs::File::create(&target).await?;
                let mut out = BlobFile { file };
                out.copy_from(store, digest).await.with_context(|| format!("writing {path}"))?;
            }
        }
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
async fn update_directory(files: &[(String, Content)], store: &dyn BlobStore, dest: &Path) -> Result<()> {
    let blobs = dest.join("blobs/sha256");
    tokio::fs::create_dir_all(&blobs).await?;
    let mut kept = std::collections::HashSet::new();
    for (path, content) in files {
        let target = dest.join(path);
        let mark = OutputMark::of("oci-layout-file", [(path.as_str(), content.id())]);
        if let Some(name) = path.strip_prefix("blobs/sha256/") {
            kept.insert(name.to_string());
        }
        if mark.is_on(&target) {
            continue;
        }
        let temp = tempfile::Builder::new().prefix(".memobuild-").tempfile_in(parent_of(&target))?;
        let mut file = tokio::fs::File::from_std(temp.as_file().try_clone()?);
        match content {
            Content::Bytes(data) => {
                file.write_all(data).await?;
                file.flush().await?;
            }
            Content::Blob(digest) => {
                BlobFile { file }.copy_from(store, digest).await.with_context(|| format!("writing {path}"))?
            }
        }
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

/// A file filled from a blob.
struct BlobFile {
    file: tokio::fs::File,
}

impl BlobFile {
    async fn copy_from(&mut self, store: &dyn BlobStore, digest: &Digest) -> Result<()> {
        use futures::StreamExt;
        let mut stream = store.get(digest, memobuild_cas::ByteRange::ALL).await?;
        let mut written = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            written += chunk.len() as u64;
            self.file.write_all(&chunk).await?;
        }
        if written != digest.size() {
            return Err(Error::internal(format!("blob {}: read {written} bytes", oci_digest(digest))));
        }
        self.file.flush().await?;
        Ok(())
    }
}
