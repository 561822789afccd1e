use std::collections::{HashSet, VecDeque};

use memobuild_proto::reapi::Directory;
use memobuild_proto::{Digest, Result, ResultExt};
use prost::Message;

use crate::blob_store::{get_bytes_at_most, BlobStore};
use crate::directory_check::{check_directory, MAX_DIRECTORY_BYTES};

/// The directories of the tree under `root`, breadth first, each once.
///
/// As the REAPI asks of `GetTree`, a missing subdirectory is left out with
/// its subtree; only a missing root is an error.
pub async fn walk_tree(cas: &dyn BlobStore, root: Digest) -> Result<Vec<Directory>> {
    let mut walker = TreeWalker::new(root);
    let mut directories = Vec::new();
    while let Some(directory) = walker.next(cas).await? {
        directories.push(directory);
    }
    Ok(directories)
}

/// Every blob of the tree under `root`: the root, each directory and each
/// file, once each (what must stay while something runs on that tree).
/// Missing subdirectories are left out, as [`walk_tree`] does.
pub async fn tree_blobs(cas: &dyn BlobStore, root: Digest) -> Result<Vec<Digest>> {
    let mut walker = TreeWalker::new(root);
    let mut blobs = TreeBlobs::new(root);
    while let Some(directory) = walker.next(cas).await? {
        blobs.add(&directory);
    }
    Ok(blobs.blobs)
}

/// [`tree_blobs`] of a tree already read with [`walk_tree`].
pub fn blobs_of_tree(root: Digest, directories: &[Directory]) -> Vec<Digest> {
    let mut blobs = TreeBlobs::new(root);
    for directory in directories {
        blobs.add(directory);
    }
    blobs.blobs
}

/// The blobs of a tree, each once, gathered a directory at a time.
struct TreeBlobs {
    root: Digest,
    seen: HashSet<Digest>,
    blobs: Vec<Digest>,
}

impl TreeBlobs {
    fn new(root: Digest) -> Self {
        TreeBlobs { root, seen: HashSet::from([root]), blobs: vec![root] }
    }

    /// Adds what `directory` (one the walker yielded) names.
    fn add(&mut self, directory: &Directory) {
        let files = directory.files.iter().map(|f| f.digest.as_ref());
        let directories = directory.directories.iter().map(|d| d.digest.as_ref());
        for digest in files.chain(directories) {
            // The walker checked every digest of the directories it yields.
            if let Ok(digest) = Digest::from_proto_field(self.root.function(), digest, "digest") {
                if self.seen.insert(digest) {
                    self.blobs.push(digest);
                }
            }
        }
    }
}

/// Walks the tree under a root breadth first, one directory per step and
/// each distinct directory once, holding only the digests still to visit
/// and those seen: a caller streams a tree of any size without keeping it.
///
/// Every directory is checked ([`check_directory`]) and read within
/// [`MAX_DIRECTORY_BYTES`]. A missing subdirectory is skipped with its
/// subtree; a missing root is NOT_FOUND.
pub struct TreeWalker {
    root: Digest,
    queue: VecDeque<Digest>,
    seen: HashSet<Digest>,
}

impl TreeWalker {
    pub fn new(root: Digest) -> Self {
        TreeWalker { root, queue: VecDeque::from([root]), seen: HashSet::from([root]) }
    }

    /// The next directory, `None` once the whole tree was walked.
    pub async fn next(&mut self, cas: &dyn BlobStore) -> Result<Option<Directory>> {
        while let Some(digest) = self.queue.pop_front() {
            let data = match get_bytes_at_most(cas, &digest, MAX_DIRECTORY_BYTES, "directory").await {
                Ok(data) => data,
                Err(e) if e.code() == tonic::Code::NotFound && digest != self.root => continue,
                Err(e) if digest == self.root => return Err(e.context("reading the root directory")),
                Err(e) => return Err(e),
            };
            let directory =
                Directory::decode(data).with_context(|| format!("decoding directory {}", digest.subject()))?;
            for child in check_directory(&digest, &directory)? {
                if self.seen.insert(child) {
                    self.queue.push_back(child);
                }
            }
            return Ok(Some(directory));
        }
        Ok(None)
    }
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
        assert_eq!(tree_blobs(&cas, root_d).await.unwrap(), vec![root_d, mid_d, leaf_d, absent]);
        let e = walk_tree(&cas, absent).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);
    }

    #[tokio::test]
    async fn a_directory_with_unsafe_names_stops_the_walk() {
        let cas = MemoryStore::new();
        let leaf_d = put(&cas, &Directory::default()).await;
        let bad = Directory { directories: vec![node("..", leaf_d)], ..Default::default() };
        let bad_d = put(&cas, &bad).await;
        let root = Directory { directories: vec![node("a", bad_d)], ..Default::default() };
        let root_d = put(&cas, &root).await;
        let e = walk_tree(&cas, root_d).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains(&bad_d.subject()) && e.message().contains(". or .."), "{e}");
    }
}
