//! The entries of a layer a builtin step writes (COPY, ADD, WORKDIR),
//! collected by path and then written in order, parents first.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use memobuild_cas::BlobStore;
use memobuild_oci::{Layer, LayerWriter};
use memobuild_proto::{Digest, DigestHasher, Error, Result, ResultExt};

/// Owner and mode bits of an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
}

/// Where a file's bytes come from.
#[derive(Clone, Debug)]
pub enum Content {
    /// A host file, checked against the digest the plan recorded (a context
    /// file that changed since the scan is an error, never a wrong layer).
    File {
        path: PathBuf,
        size: u64,
        expect: Option<Digest>,
    },
    Bytes(Vec<u8>),
}

#[derive(Clone, Debug)]
pub enum Entry {
    Directory(Meta),
    File(Meta, Content),
    Symlink(Meta, String),
    Hardlink(String),
}

/// Entries by layer path (relative, no leading `/`).
#[derive(Default)]
pub struct LayerPlan {
    entries: BTreeMap<String, Entry>,
}

impl LayerPlan {
    pub fn contains(&self, path: &str) -> bool {
        self.entries.contains_key(path)
    }

    #[cfg(test)]
    pub fn entry(&self, path: &str) -> Option<&Entry> {
        self.entries.get(path)
    }

    /// Every planned entry, for tests to compare plans.
    #[cfg(test)]
    pub fn describe(&self) -> String {
        format!("{:#?}", self.entries)
    }

    /// Adds or replaces the entry at `path`. A directory never replaces a
    /// directory already planned (the first one's metadata wins).
    pub fn insert(&mut self, path: &str, entry: Entry) {
        let path = path.trim_matches('/').to_string();
        if path.is_empty() {
            return;
        }
        if matches!(entry, Entry::Directory(_)) && matches!(self.entries.get(&path), Some(Entry::Directory(_))) {
            return;
        }
        self.entries.insert(path, entry);
    }

    /// Makes no timestamp later than `epoch` (`SOURCE_DATE_EPOCH`): files a
    /// COPY takes from another stage keep the time they were made, which
    /// must not reach a reproducible layer.
    pub fn clamp_mtimes(&mut self, epoch: u64) {
        for entry in self.entries.values_mut() {
            match entry {
                Entry::Directory(m) | Entry::File(m, _) | Entry::Symlink(m, _) => m.mtime = m.mtime.min(epoch),
                Entry::Hardlink(_) => {}
            }
        }
    }

    /// Writes the layer into `store`; `None` when there is nothing to write.
    pub async fn write(self, store: &dyn BlobStore) -> Result<Option<Layer>> {
        if self.entries.is_empty() {
            return Ok(None);
        }
        let writer = tokio::task::spawn_blocking(move || -> Result<LayerWriter> {
            let mut writer = LayerWriter::new();
            for (path, entry) in self.entries {
                match entry {
                    Entry::Directory(m) => writer.add_directory(&path, m.mode, m.uid, m.gid, m.mtime)?,
                    Entry::Symlink(m, target) => writer.add_symlink(&path, &target, m.uid, m.gid, m.mtime)?,
                    Entry::Hardlink(target) => writer.add_hardlink(&path, &target)?,
                    Entry::File(m, Content::Bytes(bytes)) => writer.add_file(
                        &path,
                        m.mode,
                        m.uid,
                        m.gid,
                        m.mtime,
                        &mut bytes.as_slice(),
                        bytes.len() as u64,
                    )?,
                    Entry::File(m, Content::File { path: host, size, expect }) => {
                        let file = std::fs::File::open(&host).with_context(|| format!("reading {}", host.display()))?;
                        let mut reader = CheckedReader::new(file, &host, size, expect);
                        writer.add_file(&path, m.mode, m.uid, m.gid, m.mtime, &mut reader, size)?;
                        reader.finish()?;
                    }
                }
            }
            Ok(writer)
        })
        .await
        .map_err(|e| Error::internal(format!("layer writer: {e}")))??;
        Ok(Some(writer.finish(store).await?))
    }
}

/// Reads exactly `size` bytes and checks their BLAKE3 digest at the end.
struct CheckedReader {
    file: std::io::Take<std::fs::File>,
    path: PathBuf,
    hasher: Option<DigestHasher>,
    expect: Option<Digest>,
}

impl CheckedReader {
    fn new(file: std::fs::File, path: &Path, size: u64, expect: Option<Digest>) -> Self {
        let hasher = expect.map(|d| DigestHasher::new(d.function()));
        CheckedReader { file: file.take(size), path: path.to_path_buf(), hasher, expect }
    }

    fn finish(self) -> Result<()> {
        let actual = self.hasher.map(DigestHasher::finish);
        match (actual, self.expect) {
            (Some(actual), Some(expect)) if actual != expect => Err(Error::new(
                tonic::Code::Aborted,
                format!("{} changed while the build read it; run the build again", self.path.display()),
            )),
            _ => Ok(()),
        }
    }
}

impl Read for CheckedReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read(buf)?;
        if let Some(hasher) = &mut self.hasher {
            hasher.update(&buf[..n]);
        }
        Ok(n)
    }
}
