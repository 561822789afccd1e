//! The remote sources of an ADD on this machine: fetched files copied out
//! of the CAS, git checkouts where the build keeps them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use futures::StreamExt;
use memobuild_cas::{BlobStore, ByteRange};
use memobuild_engine::{source_key, BuildSession};
use memobuild_frontend::SourceDefinition;
use memobuild_proto::{Error, Result, ResultExt};
use tokio::io::AsyncWriteExt;

/// Paths of the remote sources among `sources`, keyed by [`source_key`]:
/// files are written into `dir`.
pub async fn materialize_remote(
    session: &BuildSession,
    sources: &[SourceDefinition],
    cas: &dyn BlobStore,
    dir: &Path,
) -> Result<HashMap<String, PathBuf>> {
    let mut paths = HashMap::new();
    for source in sources {
        let Some(key) = source_key(source) else { continue };
        let path = match source {
            SourceDefinition::Git { .. } => session.git_checkouts.get(&key).cloned().ok_or_else(|| {
                Error::new(tonic::Code::FailedPrecondition, format!(
                    "ADD {key}: git sources are checked out where the build is planned, and this worker has no checkout of it"
                ))
            })?,
            _ => {
                let digest =
                    session.downloads.get(&key).ok_or_else(|| Error::internal(format!("ADD {key} was not fetched")))?;
                let path = dir.join(format!("file-{}", paths.len()));
                let mut file = tokio::fs::File::create(&path).await?;
                let mut blob = cas.get(digest, ByteRange::ALL).await.with_context(|| format!("ADD {key}"))?;
                while let Some(chunk) = blob.next().await {
                    file.write_all(&chunk?).await?;
                }
                file.flush().await?;
                path
            }
        };
        paths.insert(key, path);
    }
    Ok(paths)
}
