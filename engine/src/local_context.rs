//! `--build-context NAME=DIR`: a directory on this machine as an image of
//! one layer, so that FROM, `COPY --from` and `RUN --mount=from` read it as
//! they read any image. The layer holds the directory as the main context
//! would give it (its own `.dockerignore` applied), owned by root, with the
//! files' modes and mtimes; its digest is what keys the steps that read it.
//! The scan keeps a stat cache, and the layer of a scan (its tree and
//! mtimes) is remembered, so an unchanged directory is not read again.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use bytes::Bytes;
use memobuild_cas::BlobStore;
use memobuild_frontend::{BuildContext, ContextEntry, ContextScanner, DockerIgnore};
use memobuild_oci::{BuiltImage, Layer, LayerWriter, Platform, PulledImage};
use memobuild_proto::{Digest, DigestFunction, DigestHasher, Error, Result, ResultExt};

/// The image of directory `dir` for `platform`, its blobs put in `cas`;
/// `memo_dir` keeps the stat caches and the layers of earlier scans.
pub async fn local_context_image(
    dir: &Path,
    platform: &str,
    cas: &dyn BlobStore,
    memo_dir: &Path,
) -> Result<PulledImage> {
    let dir = dir.canonicalize().with_context(|| format!("build context {}", dir.display()))?;
    if !dir.is_dir() {
        return Err(Error::invalid_argument(format!("build context {}: not a directory", dir.display())));
    }
    let platform: Platform = platform.parse()?;
    let (root, memos) = (dir.clone(), memo_dir.to_path_buf());
    let scan = tokio::task::spawn_blocking(move || Scan::of(&root, &memos))
        .await
        .map_err(|e| Error::internal(format!("scanning {}: {e}", dir.display())))??;
    let memo = memo_dir.join(scan.key.hex());
    let remembered = std::fs::read_to_string(&memo).ok().and_then(|text| text.trim().parse::<Digest>().ok());
    let layer = match remembered {
        Some(tar) if cas.find_missing(&[tar]).await?.is_empty() => Layer::uncompressed(tar),
        _ => {
            let root = dir.clone();
            let writer = tokio::task::spawn_blocking(move || scan.layer(&root))
                .await
                .map_err(|e| Error::internal(format!("writing the layer of {}: {e}", dir.display())))??;
            let layer = writer.finish(cas).await?;
            remember(&memo, &layer.blob)?;
            layer
        }
    };
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

/// A scan of the directory as a build context, with each entry's mtime.
struct Scan {
    context: BuildContext,
    mtimes: Vec<u64>,
    /// What the layer is made of: the tree and the mtimes.
    key: Digest,
}

impl Scan {
    fn of(root: &Path, memo_dir: &Path) -> Result<Scan> {
        let ignore = DockerIgnore::load(root, None)?;
        let (context, _) = ContextScanner::new(root, ignore).with_cache_dir(memo_dir.join("stat-cache")).scan()?;
        let mut hasher = DigestHasher::new(DigestFunction::Sha256);
        hasher.update(context.root_digest().hex().as_bytes());
        let mut mtimes = Vec::with_capacity(context.entries().len());
        for path in context.entries().keys() {
            let full = root.join(path);
            let mtime = std::fs::symlink_metadata(&full).with_context(|| full.display().to_string())?.mtime();
            mtimes.push(mtime.max(0) as u64);
            hasher.update(format!("\0{path}\0{mtime}").as_bytes());
        }
        Ok(Scan { context, mtimes, key: hasher.finish() })
    }

    /// The layer tar of the scan, the files read from `root`.
    fn layer(&self, root: &Path) -> Result<LayerWriter> {
        let mut writer = LayerWriter::new();
        for ((path, entry), mtime) in self.context.entries().iter().zip(&self.mtimes) {
            if !path.is_empty() {
                self.add(&mut writer, root, path, entry, *mtime)
                    .with_context(|| format!("{}/{path}", root.display()))?;
            }
        }
        Ok(writer)
    }

    fn add(&self, writer: &mut LayerWriter, root: &Path, path: &str, entry: &ContextEntry, mtime: u64) -> Result<()> {
        match entry {
            ContextEntry::Directory { mode, .. } => writer.add_directory(path, *mode, 0, 0, mtime),
            ContextEntry::Symlink { target } => writer.add_symlink(path, target, 0, 0, mtime),
            ContextEntry::File { mode, .. } => match self.context.hardlink_group(path).filter(|first| *first != path) {
                Some(first) => writer.add_hardlink(path, first, *mode, 0, 0, mtime),
                None => {
                    let mut file = std::fs::File::open(root.join(path))?;
                    let size = file.metadata()?.len();
                    writer.add_file(path, *mode, 0, 0, mtime, None, &mut file, size)
                }
            },
        }
    }
}

/// Notes that the scan whose memo file is `memo` made the layer `tar`.
fn remember(memo: &Path, tar: &Digest) -> Result<()> {
    let dir = memo.parent().ok_or_else(|| Error::internal(format!("{} has no parent", memo.display())))?;
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut file, tar.to_string().as_bytes())?;
    file.persist(memo).map_err(|e| Error::internal(format!("writing {}: {e}", memo.display())))?;
    Ok(())
}
