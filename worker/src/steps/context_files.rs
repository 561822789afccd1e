//! Files of the build context on this machine for a step that reads them:
//! copied out of the context directory (a local build) or fetched from the
//! CAS by their digests (a remote build).

use std::path::{Path, PathBuf};

use futures::StreamExt;
use memobuild_cas::{BlobStore, ByteRange};
use memobuild_engine::{BuildSession, ContextFiles};
use memobuild_frontend::{ContextEntry, SourceDefinition};
use memobuild_proto::{Digest, Error, Result, ResultExt};
use tokio::io::AsyncWriteExt;

/// Copies the context subtree at `source` into `dest` (a bind mount of the
/// context sees only what the context holds, not ignored files); a single
/// file lands in `dest` under its own name. Returns what to bind: `dest`,
/// or that file.
pub async fn materialize_context(
    session: &BuildSession,
    cas: &dyn BlobStore,
    source: &str,
    dest: &Path,
) -> Result<PathBuf> {
    let context = &session.context;
    let root = context
        .resolve(source)
        .map_err(Error::invalid_argument)?
        .ok_or_else(|| Error::not_found(format!("--mount source {source:?} is not in the build context")))?;
    if let Some(ContextEntry::File { digest, .. }) = context.entry(&root) {
        // A single file is bound as a file, not as a directory holding it.
        let file = dest.join(root.rsplit('/').next().unwrap_or(&root));
        put_file(session, cas, &root, digest, &file).await?;
        return Ok(file);
    }
    copy_subtree(session, cas, &root, dest, false).await?;
    Ok(dest.to_path_buf())
}

/// The context files a COPY reads, fetched from the CAS into a directory
/// laid out as the context is.
pub struct ContextCopy {
    dir: tempfile::TempDir,
}

impl ContextCopy {
    /// Fetches every path the COPY's sources matched (what they resolve to,
    /// and all under it).
    pub async fn fetch(session: &BuildSession, cas: &dyn BlobStore, sources: &[SourceDefinition]) -> Result<Self> {
        let dir = tempfile::tempdir().context("creating a directory for the context files of a COPY")?;
        for source in sources {
            let SourceDefinition::Path { matches, .. } = source else { continue };
            for (path, _) in matches {
                // A path that does not resolve is reported by the COPY itself.
                let Ok(Some(resolved)) = session.context.resolve(path) else { continue };
                copy_subtree(session, cas, &resolved, dir.path(), true).await?;
            }
        }
        Ok(ContextCopy { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Writes the entry at `root` and everything under it to `dest`: at their
/// context paths with `keep_paths`, else relative to `root`.
async fn copy_subtree(
    session: &BuildSession,
    cas: &dyn BlobStore,
    root: &str,
    dest: &Path,
    keep_paths: bool,
) -> Result<()> {
    let context = &session.context;
    let prefix = if root.is_empty() { String::new() } else { format!("{root}/") };
    let subtree = context.entry(root).map(|entry| (root.to_string(), entry.clone())).into_iter().chain(
        context
            .entries()
            .range(prefix.clone()..)
            .take_while(|(path, _)| path.starts_with(&prefix))
            .map(|(path, entry)| (path.clone(), entry.clone())),
    );
    for (path, entry) in subtree {
        let relative = if keep_paths { path.as_str() } else { path.strip_prefix(&prefix).unwrap_or("") };
        if relative.is_empty() {
            continue;
        }
        let target = dest.join(relative);
        if let Some(parent) = target.parent() {
            tokio::fs::create_dir_all(parent).await.with_context(|| format!("creating {}", parent.display()))?;
        }
        match entry {
            ContextEntry::Directory { .. } => {
                tokio::fs::create_dir_all(&target).await.with_context(|| format!("creating {}", target.display()))?
            }
            ContextEntry::File { digest, .. } => put_file(session, cas, &path, &digest, &target).await?,
            ContextEntry::Symlink { target: link } => {
                if tokio::fs::symlink_metadata(&target).await.is_err() {
                    tokio::fs::symlink(&link, &target)
                        .await
                        .with_context(|| format!("creating {}", target.display()))?
                }
            }
        }
    }
    Ok(())
}

/// Writes the context file at `path` (whose content is `digest`) to `target`.
async fn put_file(
    session: &BuildSession,
    cas: &dyn BlobStore,
    path: &str,
    digest: &Digest,
    target: &Path,
) -> Result<()> {
    match &session.context_files {
        ContextFiles::Directory(dir) => {
            tokio::fs::copy(dir.join(path), target).await.with_context(|| format!("copying context file {path}"))?;
        }
        ContextFiles::Cas => {
            let mut blob = cas.get(digest, ByteRange::ALL).await.with_context(|| format!("context file {path}"))?;
            let mut file =
                tokio::fs::File::create(target).await.with_context(|| format!("creating {}", target.display()))?;
            while let Some(chunk) = blob.next().await {
                file.write_all(&chunk?).await?;
            }
            file.flush().await?;
        }
    }
    Ok(())
}
