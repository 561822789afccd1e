//! A deterministic tar writer over an async file, for archives of blobs
//! (OCI layout tars, docker archives): entries as given, mtime 0, uid and
//! gid 0, no user names.

use bytes::Bytes;
use futures::StreamExt;
use memobuild_cas::{BlobStore, ByteRange};
use memobuild_proto::{Digest, Error, Result};
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// A tar block: a header, or a piece of an entry's data.
pub(crate) const BLOCK: usize = 512;

/// Writes `name` verbatim (a trailing `/` kept) into the header's name
/// field; fails when it does not fit in 100 bytes.
pub(crate) fn set_name(header: &mut tar::Header, name: &[u8]) -> std::io::Result<()> {
    fill(&mut header.as_old_mut().name, name, "name")
}

/// Writes `target` verbatim into the header's link name field.
pub(crate) fn set_link(header: &mut tar::Header, target: &[u8]) -> std::io::Result<()> {
    fill(&mut header.as_old_mut().linkname, target, "link target")
}

/// Copies `value` into a zero-padded header field.
fn fill(field: &mut [u8], value: &[u8], what: &str) -> std::io::Result<()> {
    if value.len() > field.len() {
        return Err(std::io::Error::other(format!("{what} longer than {} bytes", field.len())));
    }
    field.fill(0);
    field[..value.len()].copy_from_slice(value);
    Ok(())
}

/// The header of a directory entry as [`TarStream`] writes it.
pub(crate) fn directory_header(path: &str) -> Result<tar::Header> {
    header(path, tar::EntryType::Directory, 0, 0o755)
}

/// The header of a file entry of `size` bytes as [`TarStream`] writes it.
pub(crate) fn file_header(path: &str, size: u64) -> Result<tar::Header> {
    header(path, tar::EntryType::Regular, size, 0o644)
}

fn header(path: &str, kind: tar::EntryType, size: u64, mode: u32) -> Result<tar::Header> {
    let mut header = tar::Header::new_ustar();
    set_name(&mut header, path.as_bytes()).map_err(|e| Error::invalid_argument(format!("tar entry {path}: {e}")))?;
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_cksum();
    Ok(header)
}

/// The bytes after an entry's data that fill its last block.
pub(crate) fn padding(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

/// Writes entries to `out` from where it stands.
pub(crate) struct TarStream<W> {
    out: W,
}

impl<W: AsyncWrite + Unpin> TarStream<W> {
    pub(crate) fn new(out: W) -> Self {
        TarStream { out }
    }

    pub(crate) async fn directory(&mut self, path: &str) -> Result<()> {
        let header = directory_header(path)?;
        self.out.write_all(header.as_bytes()).await?;
        Ok(())
    }

    pub(crate) async fn file(&mut self, path: &str, data: &[u8]) -> Result<()> {
        let header = file_header(path, data.len() as u64)?;
        self.out.write_all(header.as_bytes()).await?;
        self.out.write_all(data).await?;
        self.pad(data.len() as u64).await
    }

    /// A file holding the blob, copied from the store chunk by chunk.
    pub(crate) async fn blob(&mut self, path: &str, store: &dyn BlobStore, digest: &Digest) -> Result<()> {
        let header = file_header(path, digest.size())?;
        self.out.write_all(header.as_bytes()).await?;
        let mut stream = store.get(digest, ByteRange::ALL).await?;
        let mut written = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk: Bytes = chunk?;
            written += chunk.len() as u64;
            if written > digest.size() {
                break;
            }
            self.out.write_all(&chunk).await?;
        }
        if written != digest.size() {
            return Err(Error::internal(format!(
                "blob {}: the store returned {written} bytes, its digest says {}",
                digest.subject(),
                digest.size()
            )));
        }
        self.pad(written).await
    }

    async fn pad(&mut self, size: u64) -> Result<()> {
        let rest = padding(size) as usize;
        self.out.write_all(&[0u8; BLOCK][..rest]).await?;
        Ok(())
    }

    /// Writes the end-of-archive blocks and flushes.
    pub(crate) async fn finish(mut self) -> Result<W> {
        self.out.write_all(&[0u8; 2 * BLOCK]).await?;
        self.out.flush().await?;
        Ok(self.out)
    }
}
