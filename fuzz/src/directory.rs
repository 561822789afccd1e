//! `Directory` validation and the tree walk on arbitrary protos.

use std::collections::HashSet;
use std::sync::OnceLock;

use memobuild_cas::{check_directory, unsafe_name_reason, walk_tree, BlobStore, MemoryStore};
use memobuild_proto::reapi::Directory;
use memobuild_proto::{Digest, DigestFunction};
use prost::Message;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap_or_else(|e| panic!("runtime: {e}"))
    })
}

/// Decodes `data` as a Directory and checks it. A directory that passes has
/// only safe names, each once, and a digest for every subdirectory; a walk
/// from it (its subdirectories absent) starts with it.
pub fn check(data: &[u8]) {
    let Ok(directory) = Directory::decode(data) else { return };
    let digest = Digest::of(DigestFunction::Sha256, data);
    let Ok(children) = check_directory(&digest, &directory) else { return };
    assert_eq!(children.len(), directory.directories.len());
    let names = directory
        .files
        .iter()
        .map(|f| &f.name)
        .chain(directory.directories.iter().map(|d| &d.name))
        .chain(directory.symlinks.iter().map(|s| &s.name));
    let mut seen = HashSet::new();
    for name in names {
        assert_eq!(unsafe_name_reason(name), None, "{name:?}");
        assert!(seen.insert(name), "{name:?} twice");
    }
    let walked = runtime().block_on(async {
        let store = MemoryStore::new();
        store.put_bytes(&digest, data.to_vec().into()).await?;
        walk_tree(&store, digest).await
    });
    // A subdirectory may declare a size over the limit: an error, not a bug.
    if let Ok(walked) = walked {
        assert_eq!(walked.first(), Some(&directory));
    }
}
