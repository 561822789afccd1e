//! A note on an output file saying what MemoBuild wrote there, so an
//! unchanged image is not written again: the extended attribute
//! `user.memobuild.output` holds the fingerprint of the content, and the
//! size and modification time the file had when written. Any later write
//! changes the time (as `make` and `rsync` rely on), so a file whose note
//! still matches holds what the fingerprint says. Filesystems without user
//! extended attributes just get the file written every time.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use memobuild_proto::{DigestFunction, DigestHasher};

const ATTRIBUTE: &str = "user.memobuild.output";

/// The fingerprint of an output: a digest of what it is made of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct OutputMark {
    fingerprint: String,
}

impl OutputMark {
    /// The mark of an output made of `parts` (names and digests, in order).
    pub(crate) fn of<'a>(kind: &str, parts: impl IntoIterator<Item = (&'a str, String)>) -> Self {
        let mut hasher = DigestHasher::new(DigestFunction::Sha256);
        hasher.update(kind.as_bytes());
        for (name, digest) in parts {
            hasher.update(format!("\n{name} {digest}").as_bytes());
        }
        OutputMark { fingerprint: hasher.finish().hex() }
    }

    /// Whether `path` is a regular file MemoBuild wrote with this content
    /// and nothing changed since.
    pub(crate) fn is_on(&self, path: &Path) -> bool {
        let Ok(meta) = std::fs::symlink_metadata(path) else { return false };
        if !meta.is_file() {
            return false;
        }
        matches!(xattr::get(path, ATTRIBUTE), Ok(Some(note)) if note == self.note(&meta).into_bytes())
    }

    /// Marks the file at `path` (written, flushed, not yet renamed into
    /// place) as holding this content. Best effort.
    pub(crate) fn put_on(&self, path: &Path) {
        let Ok(meta) = std::fs::symlink_metadata(path) else { return };
        if let Err(e) = xattr::set(path, ATTRIBUTE, self.note(&meta).as_bytes()) {
            tracing::debug!(error = %e, path = %path.display(), "no output mark");
        }
    }

    fn note(&self, meta: &std::fs::Metadata) -> String {
        format!("{} {} {}.{:09}", self.fingerprint, meta.len(), meta.mtime(), meta.mtime_nsec())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_mark_holds_until_the_file_or_its_content_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.tar");
        std::fs::write(&path, b"image").unwrap();
        let mark = OutputMark::of("oci-tar", [("blobs/sha256/aa", "d1".to_string())]);
        if xattr::set(&path, "user.memobuild.probe", b"").is_err() {
            return; // No user xattrs here: nothing is ever skipped.
        }
        assert!(!mark.is_on(&path));
        mark.put_on(&path);
        assert!(mark.is_on(&path));
        assert!(!OutputMark::of("oci-tar", [("blobs/sha256/aa", "d2".to_string())]).is_on(&path));
        std::thread::sleep(std::time::Duration::from_millis(10));
        std::fs::write(&path, b"other").unwrap();
        assert!(!mark.is_on(&path));
    }
}
