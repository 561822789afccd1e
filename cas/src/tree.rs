use std::collections::{HashSet, VecDeque};

use memobuild_proto::reapi::Directory;
use memobuild_proto::{Digest, Result, ResultExt};
use prost::Message;

use crate::blob_store::BlobStore;

/// The directories of the tree under `root`, breadth first, each once.
///
/// As the REAPI asks of `GetTree`, a missing subdirectory is left out with
/// its subtree; only a missing root is an error.
pub async fn walk_tree(cas: &dyn BlobStore, root: Digest) -> Result<Vec<Directory>> {
    let mut queue = VecDeque::from([root]);
    let mut seen = HashSet::from([root]);
    let mut directories = Vec::new();
    while let Some(digest) = queue.pop_front() {
        let data = match cas.get_bytes(&digest).await {
            Ok(data) => data,
            Err(e) if e.code() == tonic::Code::NotFound && digest != root => continue,
            Err(e) => return Err(e.context("reading the root directory")),
        };
        let directory = Directory::decode(data).with_context(|| format!("decoding directory {}", digest.subject()))?;
        for child in &directory.directories {
            let what = format!("directory {:?} of {}", child.name, digest.subject());
            let child = Digest::from_proto_field(root.function(), child.digest.as_ref(), &what)?;
            if seen.insert(child) {
                queue.push_back(child);
            }
        }
        directories.push(directory);
    }
    Ok(directories)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::MemoryStore;
    use memobuild_proto::reapi::DirectoryNode;
    use memobuild_proto::DigestFunction;

    async fn put(cas: &MemoryStore, dir: &Directory) -> Digest {
        let data = dir.encode_to_vec();
        let digest = Digest::of(DigestFunction::Sha256, &data);
        cas.put_bytes(&digest, data.into()).await.unwrap();
        digest
    }

    fn node(name: &str, digest: Digest) -> DirectoryNode {
        DirectoryNode { name: name.into(), digest: Some(digest.to_proto()) }
    }

    #[tokio::test]
    async fn breadth_first_each_directory_once_missing_parts_skipped() {
        let cas = MemoryStore::new();
        let leaf = Directory::default();
        let leaf_d = put(&cas, &leaf).await;
        let absent = Digest::of(DigestFunction::Sha256, b"not stored");
        let mid = Directory { directories: vec![node("x", leaf_d), node("y", absent)], ..Default::default() };
        let mid_d = put(&cas, &mid).await;
        let root = Directory { directories: vec![node("a", mid_d), node("b", leaf_d)], ..Default::default() };
        let root_d = put(&cas, &root).await;
        assert_eq!(walk_tree(&cas, root_d).await.unwrap(), vec![root, mid, leaf]);
        let e = walk_tree(&cas, absent).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);
    }
}
