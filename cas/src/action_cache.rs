use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use memobuild_proto::reapi::{ActionResult, Tree};
use memobuild_proto::{Digest, Result, ResultExt};
use prost::Message;

use crate::action_results::ActionResults;
use crate::blob_store::{get_bytes_at_most, BlobStore};

/// The largest ActionResult or output Tree read into memory.
const MAX_ENTRY_BYTES: u64 = 64 << 20;

/// Action digest -> ActionResult, kept in a [`BlobStore`] of its own and
/// separated by instance name. A result is served only while every blob it
/// names is still in the CAS, so a hit is always usable.
pub struct ActionCache {
    results: Arc<dyn BlobStore>,
    cas: Arc<dyn BlobStore>,
}

impl ActionCache {
    pub fn new(results: Arc<dyn BlobStore>, cas: Arc<dyn BlobStore>) -> Self {
        ActionCache { results, cas }
    }

    /// The blobs `result` names that the CAS does not hold, including the
    /// files inside its output directory trees.
    pub async fn missing_blobs(&self, action: &Digest, result: &ActionResult) -> Result<Vec<Digest>> {
        let direct = output_digests(result, &[], action)?;
        let missing = self.cas.find_missing(&direct).await?;
        if !missing.is_empty() {
            return Ok(missing);
        }
        let mut trees = Vec::new();
        for dir in &result.output_directories {
            let Some(tree_digest) = &dir.tree_digest else { continue };
            let digest = Digest::from_proto(action.function(), tree_digest)?;
            let data = get_bytes_at_most(self.cas.as_ref(), &digest, MAX_ENTRY_BYTES, "output tree")
                .await
                .with_context(|| format!("output directory {} of action {action}", dir.path))?;
            trees.push(Tree::decode(data).with_context(|| format!("decoding output tree {}", digest.subject()))?);
        }
        let all = output_digests(result, &trees, action)?;
        self.cas.find_missing(&all).await
    }
}

#[async_trait]
impl ActionResults for ActionCache {
    async fn get(&self, instance_name: &str, action: &Digest) -> Result<Option<ActionResult>> {
        let data = match self.results.get_bytes(&key(instance_name, action)).await {
            Ok(data) => data,
            Err(e) if e.code() == tonic::Code::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let result =
            ActionResult::decode(data).with_context(|| format!("decoding the cached result of action {action}"))?;
        let missing = self.missing_blobs(action, &result).await?;
        if !missing.is_empty() {
            tracing::debug!(%action, missing = missing.len(), "cached result names evicted blobs; treating as a miss");
            return Ok(None);
        }
        // A hit is a use: stores that age entries out see it. An entry that
        // cannot be marked is still a good hit.
        if let Err(e) = self.results.mark_used(&key(instance_name, action)).await {
            tracing::warn!(%action, error = %e, "cannot record the use of a cached result");
        }
        Ok(Some(result))
    }

    async fn update(&self, instance_name: &str, action: &Digest, result: &ActionResult) -> Result<()> {
        let data = Bytes::from(result.encode_to_vec());
        self.results
            .put_bytes(&key(instance_name, action), data)
            .await
            .with_context(|| format!("storing the result of action {action}"))
    }
}

/// The key an action's result is stored under: the action digest itself for
/// the default instance, a digest of instance name and action otherwise.
fn key(instance_name: &str, action: &Digest) -> Digest {
    if instance_name.is_empty() {
        *action
    } else {
        Digest::of(action.function(), format!("{instance_name}\0{action}").as_bytes())
    }
}

/// Every blob digest `result` refers to, given the trees of its output
/// directories, in the action's digest function.
pub fn output_digests(result: &ActionResult, trees: &[Tree], action: &Digest) -> Result<Vec<Digest>> {
    let function = action.function();
    let parse = |d: &Option<memobuild_proto::reapi::Digest>, what: &str| -> Result<Option<Digest>> {
        d.as_ref().map(|d| Digest::from_proto(function, d).context(what.to_string())).transpose()
    };
    let mut digests = Vec::new();
    for file in &result.output_files {
        digests.extend(parse(&file.digest, &format!("output file {}", file.path))?);
    }
    for dir in &result.output_directories {
        digests.extend(parse(&dir.tree_digest, &format!("output directory {}", dir.path))?);
    }
    digests.extend(parse(&result.stdout_digest, "stdout")?);
    digests.extend(parse(&result.stderr_digest, "stderr")?);
    for tree in trees {
        for dir in tree.root.iter().chain(&tree.children) {
            for file in &dir.files {
                digests.extend(parse(&file.digest, &format!("tree file {}", file.name))?);
            }
        }
    }
    Ok(digests)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::{FilesystemStore, MemoryStore};
    use memobuild_proto::reapi::OutputFile;
    use memobuild_proto::DigestFunction;

    #[tokio::test]
    async fn a_hit_marks_the_entry_used_and_a_miss_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let results = Arc::new(FilesystemStore::open(dir.path(), false).await.unwrap());
        let cas = Arc::new(MemoryStore::new());
        let cache = ActionCache::new(results.clone(), cas.clone());
        let output = Bytes::from_static(b"layer");
        let output_digest = Digest::of(DigestFunction::Sha256, &output);
        let file =
            OutputFile { path: "layer.tar".into(), digest: Some(output_digest.to_proto()), ..Default::default() };
        let result = ActionResult { output_files: vec![file], ..Default::default() };
        let action = Digest::of(DigestFunction::Sha256, b"action");
        cache.update("", &action, &result).await.unwrap();
        let long_ago = SystemTime::now() - Duration::from_secs(30 * 86400);
        let age = |when| filetime::set_file_mtime(results.path(&action), filetime::FileTime::from_system_time(when));
        let last_used = || async { results.list().await.unwrap()[0].last_used };

        age(long_ago).unwrap();
        assert_eq!(cache.get("", &action).await.unwrap(), None, "the output blob is missing");
        assert_eq!(last_used().await, long_ago);

        cas.put_bytes(&output_digest, output).await.unwrap();
        assert_eq!(cache.get("", &action).await.unwrap(), Some(result));
        assert!(last_used().await > long_ago + Duration::from_secs(86400));
    }
}
