//! Remembered diff ids: the digest of a compressed layer's uncompressed tar
//! costs a full decompression to learn, so it is learnt once.

use std::path::PathBuf;

use memobuild_proto::Digest;

/// Where pulls keep the diff ids they computed, by compressed blob.
pub trait DiffIdMemo: Send + Sync {
    fn get(&self, blob: &Digest) -> Option<Digest>;
    fn put(&self, blob: &Digest, diff_id: &Digest);
}

/// One small file per layer under a directory.
#[derive(Clone, Debug)]
pub struct DirectoryDiffIdMemo {
    dir: PathBuf,
}

impl DirectoryDiffIdMemo {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        DirectoryDiffIdMemo { dir: dir.into() }
    }

    fn path(&self, blob: &Digest) -> PathBuf {
        self.dir.join(blob.hex())
    }
}

impl DiffIdMemo for DirectoryDiffIdMemo {
    fn get(&self, blob: &Digest) -> Option<Digest> {
        std::fs::read_to_string(self.path(blob)).ok()?.trim().parse().ok()
    }

    /// Best effort: a memo that cannot be written is computed again next time.
    fn put(&self, blob: &Digest, diff_id: &Digest) {
        let path = self.path(blob);
        let temp = path.with_extension(format!("tmp-{}", std::process::id()));
        let written = std::fs::create_dir_all(&self.dir)
            .and_then(|()| std::fs::write(&temp, diff_id.to_string()))
            .and_then(|()| std::fs::rename(&temp, &path));
        if let Err(e) = written {
            tracing::debug!(error = %e, "cannot remember the diff id of {blob}");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use memobuild_proto::DigestFunction;

    #[test]
    fn remembers_across_instances() {
        let dir = tempfile::tempdir().unwrap();
        let blob = Digest::of(DigestFunction::Sha256, b"gz");
        let diff = Digest::of(DigestFunction::Sha256, b"tar");
        assert_eq!(DirectoryDiffIdMemo::new(dir.path()).get(&blob), None);
        DirectoryDiffIdMemo::new(dir.path()).put(&blob, &diff);
        assert_eq!(DirectoryDiffIdMemo::new(dir.path()).get(&blob), Some(diff));
    }
}
