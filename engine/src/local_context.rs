//! `--build-context NAME=DIR`: a directory on this machine as an image of
//! one layer, so that FROM, `COPY --from` and `RUN --mount=from` read it as
//! they read any image. The layer holds the directory as the main context
//! would give it (its own `.dockerignore` applied), owned by root, with the
//! files' modes and mtimes; its digest is what keys the steps that read it.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use memobuild_cas::BlobStore;
use memobuild_frontend::{BuildContext, ContextEntry, ContextScanner, DockerIgnore};
use memobuild_oci::{BuiltImage, LayerWriter, Platform, PulledImage};
use memobuild_proto::{Digest, DigestFunction, Error, Result, ResultExt};

/// The image of directory `dir` for `platform`, its blobs put in `cas`.
pub async fn local_context_image(dir: &Path, platform: &str, cas: &dyn BlobStore) -> Result<PulledImage> {
    let dir = dir.canonicalize().with_context(|| format!("build context {}", dir.display()))?;
    if !dir.is_dir() {
        return Err(Error::invalid_argument(format!("build context {}: not a directory", dir.display())));
    }
    let platform: Platform = platform.parse()?;
    let root = dir.clone();
    let writer = tokio::task::spawn_blocking(move || layer_of(&root))
        .await
        .map_err(|e| Error::internal(format!("writing the layer of {}: {e}", dir.display())))??;
    let layer = writer.finish(cas).await?;
    let mut config = serde_json::json!({
        "architecture": platform.architecture,
        "os": platform.os,
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id_string()]},
    });
    if let Some(variant) = &platform.variant {
        config["variant"] = variant.as_str().into();
    }
    let raw_config = Bytes::from(config.to_string());
    cas.put_bytes(&Digest::of(DigestFunction::Sha256, &raw_config), raw_config.clone()).await?;
    let image = BuiltImage::new(raw_config.clone(), vec![layer], BTreeMap::new())?;
    let parsed = serde_json::from_slice(&raw_config)
        .map_err(|e| Error::internal(format!("reading back the config of {}: {e}", dir.display())))?;
    Ok(PulledImage {
        reference: dir.display().to_string(),
        resolved: format!("{}@{}", dir.display(), image.manifest_digest()),
        manifest_digest: image.manifest_digest(),
        config: parsed,
        raw_config,
        layers: image.layers,
    })
}

/// The layer tar of the directory at `root`, scanned as a build context.
fn layer_of(root: &PathBuf) -> Result<LayerWriter> {
    let ignore = DockerIgnore::load(root, None)?;
    let (context, _) = ContextScanner::new(root, ignore).scan()?;
    let mut writer = LayerWriter::new();
    for (path, entry) in context.entries().iter().filter(|(path, _)| !path.is_empty()) {
        add_entry(&mut writer, root, &context, path, entry).with_context(|| format!("{}/{path}", root.display()))?;
    }
    Ok(writer)
}

fn add_entry(
    writer: &mut LayerWriter,
    root: &Path,
    context: &BuildContext,
    path: &str,
    entry: &ContextEntry,
) -> Result<()> {
    let full = root.join(path);
    let mtime = std::fs::symlink_metadata(&full)?.mtime().max(0) as u64;
    match entry {
        ContextEntry::Directory { mode, .. } => writer.add_directory(path, *mode, 0, 0, mtime),
        ContextEntry::Symlink { target } => writer.add_symlink(path, target, 0, 0, mtime),
        ContextEntry::File { mode, .. } => match context.hardlink_group(path).filter(|first| *first != path) {
            Some(first) => writer.add_hardlink(path, first, *mode, 0, 0, mtime),
            None => {
                let mut file = std::fs::File::open(&full)?;
                let size = file.metadata()?.len();
                writer.add_file(path, *mode, 0, 0, mtime, &mut file, size)
            }
        },
    }
}
