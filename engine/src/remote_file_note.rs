//! What ADD remembers of a file it downloaded, in the state dir's
//! `remote-files/`: one JSON note per URL (the server's validators, for a
//! conditional request next time) and one per content (so that a
//! `--checksum` names a blob without any request). `memobuild prune`
//! removes a note when its blob goes.

use std::path::{Path, PathBuf};

use memobuild_proto::{Digest, DigestFunction, Result, ResultExt};
use serde::{Deserialize, Serialize};

/// A downloaded file: where it is in the CAS and what the server said of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteFileNote {
    /// The content's SHA-256 digest and size.
    pub digest: Digest,
    /// The mtime ADD gives the file (from `Last-Modified`), in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime: Option<u64>,
    /// The `ETag` the server sent, as sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// The `Last-Modified` the server sent, as sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<String>,
}

impl RemoteFileNote {
    /// The note of what `url` served last, in `dir`.
    pub fn url_path(dir: &Path, url: &str) -> PathBuf {
        let key = Digest::of(DigestFunction::Sha256, url.as_bytes());
        dir.join(format!("url-{}.json", key.hex()))
    }

    /// The note of the content with SHA-256 `hex`, in `dir`.
    pub fn content_path(dir: &Path, hex: &str) -> PathBuf {
        dir.join(format!("sha256-{hex}.json"))
    }

    /// Whether the server gave anything to ask "has it changed?" with.
    pub fn has_validators(&self) -> bool {
        self.etag.is_some() || self.last_modified.is_some()
    }

    /// The note at `path`; `None` when there is none or it cannot be read
    /// (the file is then downloaded again).
    pub fn load(path: &Path) -> Option<RemoteFileNote> {
        let data = std::fs::read(path).ok()?;
        serde_json::from_slice(&data).ok()
    }

    /// Writes the note to `path` atomically: a reader sees the old note or
    /// the new one, never part of one.
    pub fn save(&self, path: &Path) -> Result<()> {
        let saving = || format!("saving the ADD note {}", path.display());
        let data = serde_json::to_vec(self).map_err(std::io::Error::from).with_context(saving)?;
        let temp = path.with_extension(format!("tmp-{}", std::process::id()));
        std::fs::write(&temp, data).and_then(|()| std::fs::rename(&temp, path)).with_context(saving)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn note() -> RemoteFileNote {
        RemoteFileNote {
            digest: Digest::of(DigestFunction::Sha256, b"echo v1\n"),
            mtime: Some(1_445_412_480),
            etag: Some("\"v1\"".into()),
            last_modified: Some("Wed, 21 Oct 2015 07:28:00 GMT".into()),
        }
    }

    #[test]
    fn a_saved_note_loads_back_and_replaces_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = RemoteFileNote::url_path(dir.path(), "https://example.com/tool.sh");
        note().save(&path).unwrap();
        assert_eq!(RemoteFileNote::load(&path), Some(note()));

        let bare = RemoteFileNote {
            digest: Digest::of(DigestFunction::Sha256, b"v2"),
            mtime: None,
            etag: None,
            last_modified: None,
        };
        bare.save(&path).unwrap();
        assert_eq!(RemoteFileNote::load(&path), Some(bare.clone()));
        assert!(!bare.has_validators());
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 1, "no temporary file is left: {names:?}");
    }

    #[test]
    fn notes_are_keyed_by_url_and_by_content() {
        let dir = Path::new("/state/remote-files");
        let a = RemoteFileNote::url_path(dir, "https://example.com/a");
        assert_ne!(a, RemoteFileNote::url_path(dir, "https://example.com/b"));
        assert_eq!(a, RemoteFileNote::url_path(dir, "https://example.com/a"));
        let hex = note().digest.hex();
        assert_eq!(RemoteFileNote::content_path(dir, &hex), dir.join(format!("sha256-{hex}.json")));
    }

    #[test]
    fn a_missing_or_foreign_note_is_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(RemoteFileNote::load(&dir.path().join("absent.json")), None);
        std::fs::write(dir.path().join("old"), "8").unwrap();
        assert_eq!(RemoteFileNote::load(&dir.path().join("old")), None, "a size-only note of older versions");
    }
}
