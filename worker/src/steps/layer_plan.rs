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
        /// Its `security.capability`, which the layer keeps (read from
        /// another stage's files, whose layers are part of the key).
        capabilities: Option<Vec<u8>>,
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
        if let Some(Entry::File(meta, content)) = self.entries.insert(path.clone(), entry) {
            // A file replaced at its path keeps living at the paths that
            // were hard links of it, as an unlinked and rewritten file does.
            let links: Vec<String> = self
                .entries
                .iter()
                .filter(|(_, e)| matches!(e, Entry::Hardlink(target) if *target == path))
                .map(|(p, _)| p.clone())
                .collect();
            if let Some((first, rest)) = links.split_first() {
                self.entries.insert(first.clone(), Entry::File(meta, content));
                for link in rest {
                    self.entries.insert(link.clone(), Entry::Hardlink(first.clone()));
                }
            }
        }
    }

    /// Drops the entry at `path` (not what is planned below it).
    pub fn remove(&mut self, path: &str) {
        self.entries.remove(path.trim_matches('/'));
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
        let mut entries = self.entries;
        lead_hardlinks_with_first_path(&mut entries);
        let writer = tokio::task::spawn_blocking(move || -> Result<LayerWriter> {
            let mut writer = LayerWriter::new();
            for (path, entry) in &entries {
                match entry {
                    Entry::Directory(m) => writer.add_directory(path, m.mode, m.uid, m.gid, m.mtime)?,
                    Entry::Symlink(m, target) => writer.add_symlink(path, target, m.uid, m.gid, m.mtime)?,
                    Entry::Hardlink(target) => {
                        let m = match entries.get(target) {
                            Some(Entry::File(m, _)) => *m,
                            _ => Meta { mode: 0o644, uid: 0, gid: 0, mtime: 0 },
                        };
                        writer.add_hardlink(path, target, m.mode, m.uid, m.gid, m.mtime)?
                    }
                    Entry::File(m, Content::Bytes(bytes)) => writer.add_file(
                        path,
                        m.mode,
                        m.uid,
                        m.gid,
                        m.mtime,
                        None,
                        &mut bytes.as_slice(),
                        bytes.len() as u64,
                    )?,
                    Entry::File(m, Content::File { path: host, size, expect, capabilities }) => {
                        let file = std::fs::File::open(host).with_context(|| format!("reading {}", host.display()))?;
                        let mut reader = CheckedReader::new(file, host, *size, *expect);
                        let capabilities = capabilities.as_deref();
                        writer.add_file(path, m.mode, m.uid, m.gid, m.mtime, capabilities, &mut reader, *size)?;
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

/// Entries are written in path order, and a hard link must come after the
/// file it links to: in each group of paths linked to one planned file,
/// the first path in that order becomes the file and the others link to
/// it. Links to links are followed to the file; links to a path the plan
/// does not hold as a file are left as they are.
fn lead_hardlinks_with_first_path(entries: &mut BTreeMap<String, Entry>) {
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (path, entry) in entries.iter() {
        let Entry::Hardlink(target) = entry else { continue };
        let mut file = target.clone();
        for _ in 0..entries.len() {
            match entries.get(&file) {
                Some(Entry::Hardlink(next)) if *next != file => file = next.clone(),
                _ => break,
            }
        }
        if matches!(entries.get(&file), Some(Entry::File(..))) {
            groups.entry(file).or_default().push(path.clone());
        }
    }
    for (file, links) in groups {
        let first = links.iter().min().filter(|first| **first < file).cloned().unwrap_or_else(|| file.clone());
        if first != file {
            if let Some(content) = entries.remove(&file) {
                entries.insert(first.clone(), content);
            }
            entries.insert(file, Entry::Hardlink(first.clone()));
        }
        for link in links.into_iter().filter(|link| *link != first) {
            entries.insert(link, Entry::Hardlink(first.clone()));
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn file(data: &str) -> Entry {
        Entry::File(Meta { mode: 0o640, uid: 1, gid: 2, mtime: 3 }, Content::Bytes(data.as_bytes().to_vec()))
    }

    fn kind(entries: &BTreeMap<String, Entry>, path: &str) -> String {
        match &entries[path] {
            Entry::File(_, Content::Bytes(data)) => format!("file {}", String::from_utf8_lossy(data)),
            Entry::Hardlink(target) => format!("link {target}"),
            other => format!("{other:?}"),
        }
    }

    /// A tar's hard link must follow its file: the first path of a group
    /// in write order holds the content, whatever was planned first.
    #[test]
    fn the_first_path_of_a_hard_link_group_holds_the_file() {
        let mut plan = LayerPlan::default();
        plan.insert("m/file", file("same"));
        plan.insert("z", Entry::Hardlink("m/file".into()));
        plan.insert("a", Entry::Hardlink("z".into()));
        plan.insert("b", Entry::Hardlink("m/file".into()));
        let mut entries = plan.entries;
        lead_hardlinks_with_first_path(&mut entries);
        assert_eq!(kind(&entries, "a"), "file same");
        for link in ["b", "m/file", "z"] {
            assert_eq!(kind(&entries, link), "link a", "{link}");
        }
    }

    /// A file replaced at its path lives on at the paths linked to it.
    #[test]
    fn a_replaced_file_stays_at_its_links() {
        let mut plan = LayerPlan::default();
        plan.insert("d/x", file("old"));
        plan.insert("d/y", Entry::Hardlink("d/x".into()));
        plan.insert("d/z", Entry::Hardlink("d/x".into()));
        plan.insert("d/x", file("new"));
        assert_eq!(kind(&plan.entries, "d/x"), "file new");
        assert_eq!(kind(&plan.entries, "d/y"), "file old");
        assert_eq!(kind(&plan.entries, "d/z"), "link d/y");
    }
}
