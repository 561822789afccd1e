//! A note on an output file saying what MemoBuild wrote there, so an
//! unchanged image is not written again and an image tar MemoBuild wrote
//! can be updated in place: the extended attribute
//! `user.memobuild.output` holds the fingerprint of the content, and the
//! size and modification time the file had when written. Any later write
//! changes the time (as `make` and `rsync` rely on), so a file whose note
//! still matches holds what the fingerprint says. Filesystems without user
//! extended attributes just get the file written every time.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use xattr::FileExt;

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
        match File::open(path) {
            Ok(file) => self.put_on_file(&file, path),
            Err(e) => tracing::debug!(error = %e, path = %path.display(), "no output mark"),
        }
    }

    /// Marks `file`, open at `path`, as holding this content. Best effort.
    pub(crate) fn put_on_file(&self, file: &File, path: &Path) {
        let put = file.metadata().and_then(|meta| file.set_xattr(ATTRIBUTE, self.note(&meta).as_bytes()));
        if let Err(e) = put {
            tracing::debug!(error = %e, path = %path.display(), "no output mark");
        }
    }

    /// Whether `file` is a regular file with a mark whose size and time
    /// still match: MemoBuild wrote it and nothing changed it since,
    /// whatever it holds.
    pub(crate) fn unchanged_since_put(file: &File) -> bool {
        let Ok(meta) = file.metadata() else { return false };
        if !meta.is_file() {
            return false;
        }
        let Ok(Some(note)) = file.get_xattr(ATTRIBUTE) else { return false };
        let Some(space) = note.iter().position(|&b| b == b' ') else { return false };
        note[space + 1..] == *stamp(&meta).as_bytes()
    }

    /// Takes the mark off `file`, so a half-written file never passes for
    /// one MemoBuild finished. Whether `file` carries no mark now.
    pub(crate) fn remove_from(file: &File) -> bool {
        match file.remove_xattr(ATTRIBUTE) {
            Ok(()) => true,
            Err(_) => matches!(file.get_xattr(ATTRIBUTE), Ok(None)),
        }
    }

    fn note(&self, meta: &std::fs::Metadata) -> String {
        format!("{} {}", self.fingerprint, stamp(meta))
    }
}

/// The size and modification time of a file, as its mark records them.
fn stamp(meta: &std::fs::Metadata) -> String {
    format!("{} {}.{:09}", meta.len(), meta.mtime(), meta.mtime_nsec())
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
        let unchanged = || OutputMark::unchanged_since_put(&File::open(&path).unwrap());
        assert!(unchanged());
        std::thread::sleep(std::time::Duration::from_millis(10));
        std::fs::write(&path, b"other").unwrap();
        assert!(!mark.is_on(&path));
        assert!(!unchanged());
        mark.put_on(&path);
        assert!(unchanged());
        let file = File::open(&path).unwrap();
        assert!(OutputMark::remove_from(&file));
        assert!(!unchanged());
        assert!(OutputMark::remove_from(&file));
    }
}
