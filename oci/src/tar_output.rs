//! Writing an archive of blobs (an OCI layout tar, a docker archive) to a
//! file, deterministically. A file MemoBuild wrote before and that nothing
//! changed since (see [`OutputMark`]) is updated in place from its first
//! changed entry, so writers put what changes most last; any other file is
//! written beside `dest` and renamed over it.

use std::collections::HashSet;
use std::fs::File;
use std::io::SeekFrom;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use bytes::Bytes;
use memobuild_cas::BlobStore;
use memobuild_proto::{Digest, DigestFunction, Error, Result};
use nix::fcntl::{Flock, FlockArg, OFlag};
use tokio::io::AsyncSeekExt;

use crate::output_mark::OutputMark;
use crate::tar_stream::{directory_header, file_header, padding, TarStream, BLOCK};

/// What an archive entry holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum EntryContent {
    Directory,
    Bytes(Bytes),
    Blob(Digest),
}

impl EntryContent {
    /// What identifies the content: its digest.
    pub(crate) fn id(&self) -> String {
        match self {
            EntryContent::Directory => "directory".to_string(),
            EntryContent::Bytes(data) => Digest::of(DigestFunction::Sha256, data).to_string(),
            EntryContent::Blob(digest) => digest.to_string(),
        }
    }
}

/// One entry of an archive: its path in the tar and what it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ArchiveEntry {
    pub(crate) path: String,
    pub(crate) content: EntryContent,
}

impl ArchiveEntry {
    pub(crate) fn new(path: impl Into<String>, content: EntryContent) -> Self {
        ArchiveEntry { path: path.into(), content }
    }

    /// A blob at `blobs/sha256/<hex>`.
    pub(crate) fn blob(digest: Digest) -> Self {
        ArchiveEntry::new(blob_path(&digest), EntryContent::Blob(digest))
    }

    fn header(&self) -> Result<tar::Header> {
        match &self.content {
            EntryContent::Directory => directory_header(&self.path),
            EntryContent::Bytes(data) => file_header(&self.path, data.len() as u64),
            EntryContent::Blob(digest) => file_header(&self.path, digest.size()),
        }
    }

    /// The entry's bytes in the tar: header, data and padding.
    fn tar_size(&self) -> u64 {
        let size = match &self.content {
            EntryContent::Directory => 0,
            EntryContent::Bytes(data) => data.len() as u64,
            EntryContent::Blob(digest) => digest.size(),
        };
        BLOCK as u64 + size + padding(size)
    }

    /// How to tell that an old file holds this entry: by its header alone
    /// when the path names the content (`blobs/sha256/<hex>` of a SHA-256
    /// digest), by its header and bytes for other small files; `None` for
    /// a blob whose path does not name it.
    fn expected(&self) -> Result<Option<ExpectedEntry>> {
        let named = |digest: &Digest| digest.function() == DigestFunction::Sha256 && self.path == blob_path(digest);
        let data = match &self.content {
            EntryContent::Directory => None,
            EntryContent::Bytes(data) if named(&Digest::of(DigestFunction::Sha256, data)) => None,
            EntryContent::Bytes(data) => Some(data.clone()),
            EntryContent::Blob(digest) if named(digest) => None,
            EntryContent::Blob(_) => return Ok(None),
        };
        Ok(Some(ExpectedEntry { header: self.header()?, data, tar_size: self.tar_size() }))
    }
}

/// `blobs/sha256/<hex>` of `digest`.
pub(crate) fn blob_path(digest: &Digest) -> String {
    format!("blobs/sha256/{}", digest.hex())
}

/// `entries` without those whose path came before (a blob listed twice).
pub(crate) fn distinct(entries: Vec<ArchiveEntry>) -> Vec<ArchiveEntry> {
    let mut seen = HashSet::new();
    entries.into_iter().filter(|e| seen.insert(e.path.clone())).collect()
}

/// An entry as an old archive must hold it to be kept.
struct ExpectedEntry {
    header: tar::Header,
    data: Option<Bytes>,
    tar_size: u64,
}

/// The entries an old archive starts with, and the bytes they take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct KeptPrefix {
    entries: usize,
    bytes: u64,
}

/// Writes `entries` as a tar at `dest`, in their order (an entry whose
/// path came before is left out: a blob listed twice), with mtime 0 and
/// owner 0, and puts the output mark of `kind` and the entries on it. A
/// file that already holds them and carries that mark is left alone. A
/// file MemoBuild wrote and that nothing changed since, with one link, not
/// being updated by another write, and starting with at least half of the
/// new archive, keeps that start and has the rest written after it;
/// otherwise the archive is written to a temporary file beside `dest` and
/// renamed over it.
pub(crate) async fn write_archive(
    dest: &Path,
    kind: &str,
    entries: Vec<ArchiveEntry>,
    store: &dyn BlobStore,
) -> Result<()> {
    let entries = distinct(entries);
    let mark = OutputMark::of(kind, entries.iter().map(|e| (e.path.as_str(), e.content.id())));
    if mark.is_on(dest) {
        return Ok(());
    }
    let mut expected = Vec::with_capacity(entries.len());
    for entry in &entries {
        match entry.expected()? {
            Some(e) => expected.push(e),
            None => break,
        }
    }
    let total = entries.iter().map(ArchiveEntry::tar_size).sum::<u64>() + 2 * BLOCK as u64;
    let path = dest.to_path_buf();
    let update = tokio::task::spawn_blocking(move || open_for_update(&path, &expected, total))
        .await
        .map_err(|e| Error::internal(format!("reading the archive's entries: {e}")))?;
    if let Some(update) = update {
        let rest = &entries[update.kept.entries..];
        // A missing blob fails the write before the old file is cut.
        let blobs: Vec<Digest> = rest
            .iter()
            .filter_map(|e| match e.content {
                EntryContent::Blob(digest) => Some(digest),
                _ => None,
            })
            .collect();
        if store.find_missing(&blobs).await?.is_empty() && OutputMark::remove_from(&update.file) {
            return update_in_place(update, rest, dest, &mark, store).await;
        }
    }
    write_to_temporary(dest, &entries, &mark, store).await
}

/// An archive being updated in place: the file, locked so that no other
/// MemoBuild updates it at the same time, and the entries it keeps.
struct Update {
    file: Flock<File>,
    kept: KeptPrefix,
}

/// The archive at `dest`, when it is a regular file (not a link) with one
/// name, MemoBuild wrote it and nothing changed it since, no other
/// MemoBuild is updating it, and it starts with at least half of the
/// `total` bytes of the new archive.
fn open_for_update(dest: &Path, expected: &[ExpectedEntry], total: u64) -> Option<Update> {
    if !std::fs::symlink_metadata(dest).ok()?.is_file() {
        return None;
    }
    let file =
        std::fs::OpenOptions::new().read(true).write(true).custom_flags(OFlag::O_NOFOLLOW.bits()).open(dest).ok()?;
    let file = Flock::lock(file, FlockArg::LockExclusiveNonblock).ok()?;
    let meta = file.metadata().ok()?;
    if meta.nlink() != 1 || !OutputMark::unchanged_since_put(&file) {
        return None;
    }
    let kept = kept_prefix(&file, meta.len(), expected);
    (kept.bytes.saturating_mul(2) >= total).then_some(Update { file, kept })
}

/// How many of `expected` the `len` bytes of `file` start with: each entry's
/// header block as written, its bytes when it has them to compare, and its
/// data within the file. Anything else ends the prefix.
fn kept_prefix(file: &File, len: u64, expected: &[ExpectedEntry]) -> KeptPrefix {
    let mut kept = KeptPrefix { entries: 0, bytes: 0 };
    let mut block = [0u8; BLOCK];
    for entry in expected {
        let end = kept.bytes.saturating_add(entry.tar_size);
        if end > len || file.read_exact_at(&mut block, kept.bytes).is_err() || block[..] != entry.header.as_bytes()[..]
        {
            break;
        }
        if let Some(data) = &entry.data {
            let mut old = vec![0u8; data.len()];
            if file.read_exact_at(&mut old, kept.bytes + BLOCK as u64).is_err() || old[..] != data[..] {
                break;
            }
        }
        kept = KeptPrefix { entries: kept.entries + 1, bytes: end };
    }
    kept
}

/// Cuts the file after the entries it keeps and writes `rest` and the end
/// of the archive there.
async fn update_in_place(
    update: Update,
    rest: &[ArchiveEntry],
    dest: &Path,
    mark: &OutputMark,
    store: &dyn BlobStore,
) -> Result<()> {
    let keep = update.kept.bytes;
    let mut file = tokio::fs::File::from_std(update.file.try_clone()?);
    file.set_len(keep).await?;
    file.seek(SeekFrom::Start(keep)).await?;
    let file = write_entries(TarStream::new(file), rest, store).await?.finish().await?;
    file.sync_data().await?;
    mark.put_on_file(&update.file, dest);
    Ok(())
}

/// Writes the archive to a temporary file beside `dest`, with `mark` on
/// it, and renames it there.
async fn write_to_temporary(
    dest: &Path,
    entries: &[ArchiveEntry],
    mark: &OutputMark,
    store: &dyn BlobStore,
) -> Result<()> {
    let temp = tempfile::Builder::new().prefix(".memobuild-").suffix(".tmp").tempfile_in(parent_of(dest))?;
    let file = tokio::fs::File::from_std(temp.as_file().try_clone()?);
    let file = write_entries(TarStream::new(file), entries, store).await?.finish().await?;
    file.sync_all().await?;
    set_mode(temp.path(), 0o644)?;
    mark.put_on(temp.path());
    temp.persist(dest).map_err(|e| Error::from(e.error))?;
    Ok(())
}

async fn write_entries(
    mut tar: TarStream<tokio::fs::File>,
    entries: &[ArchiveEntry],
    store: &dyn BlobStore,
) -> Result<TarStream<tokio::fs::File>> {
    for entry in entries {
        match &entry.content {
            EntryContent::Directory => tar.directory(&entry.path).await?,
            EntryContent::Bytes(data) => tar.file(&entry.path, data).await?,
            EntryContent::Blob(digest) => tar.blob(&entry.path, store, digest).await?,
        }
    }
    Ok(tar)
}

/// The directory holding `path` (`.` for a bare name).
pub(crate) fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

pub(crate) fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use memobuild_cas::MemoryStore;

    fn entries(index: &str, top: &[u8]) -> Vec<ArchiveEntry> {
        vec![
            ArchiveEntry::new("blobs/", EntryContent::Directory),
            ArchiveEntry::new("oci-layout", EntryContent::Bytes(Bytes::from_static(b"{}"))),
            ArchiveEntry::new(
                blob_path(&Digest::of(DigestFunction::Sha256, b"bottom")),
                EntryContent::Bytes(Bytes::from_static(b"bottom")),
            ),
            ArchiveEntry::new(
                blob_path(&Digest::of(DigestFunction::Sha256, top)),
                EntryContent::Bytes(Bytes::copy_from_slice(top)),
            ),
            ArchiveEntry::new("index.json", EntryContent::Bytes(Bytes::copy_from_slice(index.as_bytes()))),
        ]
    }

    async fn archive(entries: &[ArchiveEntry]) -> File {
        let file = tokio::fs::File::from_std(tempfile::tempfile().unwrap());
        let file = write_entries(TarStream::new(file), entries, &MemoryStore::new()).await.unwrap();
        file.finish().await.unwrap().into_std().await
    }

    fn kept(file: &File, entries: &[ArchiveEntry]) -> KeptPrefix {
        let expected: Vec<ExpectedEntry> = entries.iter().map(|e| e.expected().unwrap().unwrap()).collect();
        kept_prefix(file, file.metadata().unwrap().len(), &expected)
    }

    fn bytes_of(entries: &[ArchiveEntry]) -> u64 {
        entries.iter().map(ArchiveEntry::tar_size).sum()
    }

    #[tokio::test]
    async fn the_prefix_ends_at_the_first_changed_entry() {
        let old = entries(r#"{"a":1}"#, b"top one");
        let file = archive(&old).await;
        assert_eq!(kept(&file, &old), KeptPrefix { entries: 5, bytes: bytes_of(&old) });
        // Another top layer: its path differs.
        let new = entries(r#"{"a":1}"#, b"top two!");
        assert_eq!(kept(&file, &new), KeptPrefix { entries: 3, bytes: bytes_of(&old[..3]) });
        // index.json of the same size with other bytes is not kept.
        let new = entries(r#"{"a":2}"#, b"top one");
        assert_eq!(kept(&file, &new), KeptPrefix { entries: 4, bytes: bytes_of(&old[..4]) });
        // More entries than the file holds.
        let mut longer = old.clone();
        longer.push(ArchiveEntry::new("more", EntryContent::Bytes(Bytes::from_static(b"x"))));
        assert_eq!(kept(&file, &longer).entries, 5);
    }

    #[tokio::test]
    async fn a_damaged_file_keeps_only_what_is_intact() {
        let old = entries("{}", b"top");
        let file = archive(&old).await;
        // Cut inside the top layer's data: its header is there, its data is not.
        file.set_len(bytes_of(&old[..3]) + BLOCK as u64 + 1).unwrap();
        assert_eq!(kept(&file, &old).entries, 3);
        // Garbage where the headers are.
        file.write_all_at(&[0xff; 3 * BLOCK], 0).unwrap();
        assert_eq!(kept(&file, &old), KeptPrefix { entries: 0, bytes: 0 });
        file.set_len(10).unwrap();
        assert_eq!(kept(&file, &old), KeptPrefix { entries: 0, bytes: 0 });
    }

    #[test]
    fn only_blobs_named_by_their_path_are_kept_on_their_header() {
        let digest = Digest::of(DigestFunction::Sha256, b"layer");
        assert!(ArchiveEntry::blob(digest).expected().unwrap().unwrap().data.is_none());
        assert!(ArchiveEntry::new("layer.tar", EntryContent::Blob(digest)).expected().unwrap().is_none());
        let config = ArchiveEntry::new(blob_path(&digest), EntryContent::Bytes(Bytes::from_static(b"other")));
        assert!(config.expected().unwrap().unwrap().data.is_some());
    }
}
