//! What one layer tar holds, without its file contents: each path's kind,
//! mode, owner and time, its whiteouts and opaque directories. A stack of
//! these answers the questions a COPY asks of its parent filesystem (does
//! this directory exist, where does this symlink point, what is in
//! `/etc/passwd`) without unpacking or mounting anything.

use std::collections::{HashMap, HashSet};
use std::io::Read;

use memobuild_cas::BlobStore;
use memobuild_proto::{Error, Result};
use serde::{Deserialize, Serialize};

use crate::blob_io::{blob_reader, blocking, io_error, oci_digest};
use crate::compression::Compression;
use crate::fs_entry::{FsEntry, FsKind};
use crate::layer::Layer;

/// Files whose contents an index keeps (a COPY's `--chown` names and
/// WORKDIR's owner are looked up in them), when no bigger than
/// [`MAX_KEPT_BYTES`].
const KEPT_FILES: [&str; 2] = ["etc/passwd", "etc/group"];
const MAX_KEPT_BYTES: u64 = 1 << 20;

/// The entries of one layer, by path (relative, `/`-separated, clean).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerIndex {
    entries: HashMap<String, FsEntry>,
    /// Paths a `.wh.NAME` removes from lower layers.
    whiteouts: HashSet<String>,
    /// Directories a `.wh..wh..opq` empties of lower layers' entries.
    opaque: HashSet<String>,
    /// Directories the layer has entries in but no entry of its own.
    implied: HashSet<String>,
}

/// What a layer says about one path.
#[derive(Debug, PartialEq, Eq)]
pub enum PathInLayer<'a> {
    /// The layer has the path.
    Present(&'a FsEntry),
    /// The layer has entries below it but no entry for the directory itself
    /// (unpacking makes it, 0755 and owned by root).
    Implied,
    /// The layer removes the path as lower layers have it.
    Hidden,
    /// The layer does not touch it: look lower.
    Absent,
}

impl LayerIndex {
    /// Reads the layer's blob from `store` (plain, gzip or zstd tar, as its
    /// media type says) and indexes it. The store checked the blob against
    /// its digest; the diff id is checked where the layer is unpacked.
    pub async fn read(store: &dyn BlobStore, layer: &Layer) -> Result<LayerIndex> {
        let name = oci_digest(&layer.blob);
        let compression =
            Compression::of_media_type(&layer.media_type).map_err(|e| e.context(format!("layer {name}")))?;
        let reader = blob_reader(store, &layer.blob).await.map_err(|e| e.context(format!("layer {name}")))?;
        let bounded = layer.clone();
        blocking(move || {
            Self::from_tar(compression.layer_decoder(reader, &bounded)?)
                .map_err(|e| e.context(format!("indexing layer {name}")))
        })
        .await
    }

    /// Indexes an uncompressed layer tar.
    pub fn from_tar(reader: impl Read) -> Result<LayerIndex> {
        let mut index = LayerIndex::default();
        let mut archive = tar::Archive::new(reader);
        for entry in archive.entries().map_err(|e| Error::invalid_argument(format!("not a tar: {e}")))? {
            let mut entry = entry.map_err(|e| Error::invalid_argument(format!("malformed tar: {}", io_error(e))))?;
            let raw = entry.path_bytes().into_owned();
            let Some(path) = clean(&String::from_utf8_lossy(&raw)) else { continue };
            let (dir, name) = path.rsplit_once('/').unwrap_or(("", path.as_str()));
            if let Some(hidden) = name.strip_prefix(".wh.") {
                if hidden == ".wh..opq" {
                    index.opaque.insert(dir.to_string());
                } else if !hidden.starts_with(".wh.") && !hidden.is_empty() {
                    index.whiteouts.insert(join(dir, hidden));
                }
                index.imply(dir);
                continue;
            }
            let header = entry.header();
            let kind = match header.entry_type() {
                tar::EntryType::Directory => FsKind::Directory,
                tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::Link => FsKind::File,
                tar::EntryType::Symlink => FsKind::Symlink(
                    entry.link_name_bytes().map(|t| String::from_utf8_lossy(&t).into_owned()).unwrap_or_default(),
                ),
                tar::EntryType::Fifo | tar::EntryType::Char | tar::EntryType::Block => FsKind::Other,
                _ => continue,
            };
            let invalid = |e: std::io::Error| Error::invalid_argument(format!("entry {path}: {e}"));
            let mode = header.mode().map_err(invalid)? & 0o7777;
            let (uid, gid, mtime) =
                (header.uid().map_err(invalid)?, header.gid().map_err(invalid)?, header.mtime().map_err(invalid)?);
            let regular = header.entry_type().is_file();
            let content = if regular && KEPT_FILES.contains(&path.as_str()) && entry.size() <= MAX_KEPT_BYTES {
                let mut bytes = Vec::with_capacity(entry.size() as usize);
                entry.read_to_end(&mut bytes).map_err(io_error)?;
                Some(bytes)
            } else {
                None
            };
            index.imply(dir);
            index.implied.remove(&path);
            index.entries.insert(path, FsEntry { kind, mode, uid, gid, mtime, content });
        }
        Ok(index)
    }

    /// Marks `dir` and its ancestors as holding entries of this layer.
    fn imply(&mut self, dir: &str) {
        let mut dir = dir;
        while !dir.is_empty() && !self.entries.contains_key(dir) && self.implied.insert(dir.to_string()) {
            dir = dir.rsplit_once('/').map_or("", |(parent, _)| parent);
        }
    }

    /// What this layer says about `path` (relative, clean).
    pub fn lookup(&self, path: &str) -> PathInLayer<'_> {
        if let Some(entry) = self.entries.get(path) {
            return PathInLayer::Present(entry);
        }
        if self.whiteouts.contains(path) {
            return PathInLayer::Hidden;
        }
        // Above the path: a whiteout, an opaque directory or a
        // non-directory this layer put there hides what lower layers have.
        let mut above = path;
        while let Some((dir, _)) = above.rsplit_once('/') {
            if self.whiteouts.contains(dir) || self.opaque.contains(dir) {
                return PathInLayer::Hidden;
            }
            if matches!(self.entries.get(dir), Some(e) if e.kind != FsKind::Directory) {
                return PathInLayer::Hidden;
            }
            above = dir;
        }
        if self.opaque.contains("") {
            return PathInLayer::Hidden;
        }
        if self.implied.contains(path) {
            return PathInLayer::Implied;
        }
        PathInLayer::Absent
    }

    /// The index as bytes, for a cache on disk.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self).map_err(|e| Error::internal(format!("encoding a layer index: {e}")))
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<LayerIndex> {
        serde_json::from_slice(bytes).map_err(|e| Error::invalid_argument(format!("decoding a layer index: {e}")))
    }
}

/// A tar path made relative and clean; `None` for the root or a path with
/// `..` (which unpacking refuses).
fn clean(raw: &str) -> Option<String> {
    let mut parts = Vec::new();
    for part in raw.split('/') {
        match part {
            "" | "." => {}
            ".." => return None,
            part => parts.push(part),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn tar_of(entries: &[(&str, tar::EntryType, &str)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, kind, data) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(*kind);
            header.set_mode(if *kind == tar::EntryType::Directory { 0o750 } else { 0o644 });
            header.set_uid(7);
            header.set_gid(8);
            header.set_mtime(99);
            if *kind == tar::EntryType::Symlink {
                header.set_size(0);
                builder.append_link(&mut header, path, data).unwrap();
            } else {
                header.set_size(data.len() as u64);
                builder.append_data(&mut header, path, data.as_bytes()).unwrap();
            }
        }
        builder.into_inner().unwrap()
    }

    #[test]
    fn paths_whiteouts_and_kept_files() {
        use tar::EntryType::{Directory, Regular, Symlink};
        let tar = tar_of(&[
            ("./etc/", Directory, ""),
            ("etc/passwd", Regular, "root:x:0:0::/root:/bin/sh\n"),
            ("etc/hosts", Regular, "127.0.0.1 localhost\n"),
            ("lib", Symlink, "usr/lib"),
            ("srv/.wh.old", Regular, ""),
            ("opt/app/.wh..wh..opq", Regular, ""),
            ("var/log/x", Regular, "x"),
        ]);
        let index = LayerIndex::from_tar(&tar[..]).unwrap();
        let PathInLayer::Present(etc) = index.lookup("etc") else { panic!("etc missing") };
        assert_eq!((etc.kind.clone(), etc.mode, etc.uid, etc.gid, etc.mtime), (FsKind::Directory, 0o750, 7, 8, 99));
        let PathInLayer::Present(passwd) = index.lookup("etc/passwd") else { panic!("passwd missing") };
        assert_eq!(passwd.content.as_deref(), Some(&b"root:x:0:0::/root:/bin/sh\n"[..]));
        let PathInLayer::Present(hosts) = index.lookup("etc/hosts") else { panic!("hosts missing") };
        assert_eq!(hosts.content, None);
        let PathInLayer::Present(lib) = index.lookup("lib") else { panic!("lib missing") };
        assert_eq!(lib.kind, FsKind::Symlink("usr/lib".into()));
        assert_eq!(index.lookup("srv/old"), PathInLayer::Hidden);
        assert_eq!(index.lookup("srv/old/below"), PathInLayer::Hidden);
        assert_eq!(index.lookup("srv"), PathInLayer::Implied);
        assert_eq!(index.lookup("srv/other"), PathInLayer::Absent);
        assert_eq!(index.lookup("opt/app/lower"), PathInLayer::Hidden);
        assert_eq!(index.lookup("opt/app"), PathInLayer::Implied);
        assert_eq!(index.lookup("var/log"), PathInLayer::Implied);
        assert_eq!(index.lookup("etc/passwd/x"), PathInLayer::Hidden);
        assert_eq!(index.lookup("usr"), PathInLayer::Absent);
        assert_eq!(LayerIndex::from_bytes(&index.to_bytes().unwrap()).unwrap(), index);
    }
}
