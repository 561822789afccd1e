//! A deterministic writer of layer tars, for the builtin steps (COPY, ADD,
//! WORKDIR).

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};

use memobuild_cas::BlobStore;
use memobuild_proto::{Error, Result};

use crate::blob_io::{put_file, HashingWriter};
use crate::file_capabilities::CAPABILITY_PAX_RECORD;
use crate::layer::Layer;
use crate::tar_stream::{set_link, set_name};

/// The largest values the octal ustar fields hold; beyond them a PAX record
/// carries the value.
const USTAR_MAX_SIZE: u64 = 0o77777777777;
const USTAR_MAX_ID: u64 = 0o7777777;
const NAME_FIELD: usize = 100;

/// Writes a layer tar to a temporary file: entries in the order added (the
/// caller sorts), paths relative with directories ending in `/`, the given
/// mode, owner and mtime, no user or group names, PAX records for long
/// names and big values. The same calls give the same bytes.
pub struct LayerWriter {
    builder: Option<tar::Builder<HashingWriter<BufWriter<File>>>>,
    /// Set when an entry failed half-written: the tar is unusable.
    failed: Option<String>,
    /// The temp file could not be created; reported by the first call.
    open_error: Option<String>,
}

impl Default for LayerWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl LayerWriter {
    /// A writer over an anonymous temporary file.
    pub fn new() -> Self {
        match tempfile::tempfile() {
            Ok(file) => LayerWriter {
                builder: Some(tar::Builder::new(HashingWriter::new(BufWriter::new(file)))),
                failed: None,
                open_error: None,
            },
            Err(e) => LayerWriter {
                builder: None,
                failed: None,
                open_error: Some(format!("creating a temporary file for a layer: {e}")),
            },
        }
    }

    pub fn add_directory(&mut self, path: &str, mode: u32, uid: u64, gid: u64, mtime: u64) -> Result<()> {
        let path = normalize(path, true)?;
        let fields = Fields { mode, uid, gid, mtime, ..Fields::new(tar::EntryType::Directory) };
        self.append(&path, fields, 0, &mut io::empty())
    }

    /// A regular file of `size` bytes read from `content` (an error when it
    /// yields fewer), with its file capabilities when it has some.
    #[allow(clippy::too_many_arguments)]
    pub fn add_file(
        &mut self,
        path: &str,
        mode: u32,
        uid: u64,
        gid: u64,
        mtime: u64,
        capabilities: Option<&[u8]>,
        content: &mut dyn Read,
        size: u64,
    ) -> Result<()> {
        let path = normalize(path, false)?;
        let fields = Fields { mode, uid, gid, mtime, capabilities, ..Fields::new(tar::EntryType::Regular) };
        self.append(&path, fields, size, content)
    }

    pub fn add_symlink(&mut self, path: &str, target: &str, uid: u64, gid: u64, mtime: u64) -> Result<()> {
        let path = normalize(path, false)?;
        let fields =
            Fields { mode: 0o777, uid, gid, mtime, link: Some(target), ..Fields::new(tar::EntryType::Symlink) };
        self.append(&path, fields, 0, &mut io::empty())
    }

    /// A hard link to `target`, a file added earlier (a layer path). The
    /// header carries the file's mode, owner and mtime, as `tar` writes it,
    /// so readers that index headers see the linked file's metadata.
    pub fn add_hardlink(&mut self, path: &str, target: &str, mode: u32, uid: u64, gid: u64, mtime: u64) -> Result<()> {
        let path = normalize(path, false)?;
        let target = normalize(target, false)?;
        let fields = Fields { mode, uid, gid, mtime, link: Some(&target), ..Fields::new(tar::EntryType::Link) };
        self.append(&path, fields, 0, &mut io::empty())
    }

    /// Marks `path` deleted: an empty `.wh.NAME` file beside it.
    pub fn add_whiteout(&mut self, path: &str) -> Result<()> {
        let path = normalize(path, false)?;
        let whiteout = match path.rsplit_once('/') {
            Some((dir, name)) => format!("{dir}/.wh.{name}"),
            None => format!(".wh.{path}"),
        };
        self.append(&whiteout, Fields::marker(), 0, &mut io::empty())
    }

    /// Hides everything lower layers have in directory `path`: the
    /// `.wh..wh..opq` marker inside it.
    pub fn add_opaque_whiteout(&mut self, path: &str) -> Result<()> {
        let dir = normalize(path, true)?;
        self.append(&format!("{dir}.wh..wh..opq"), Fields::marker(), 0, &mut io::empty())
    }

    fn append(&mut self, path: &str, fields: Fields<'_>, size: u64, content: &mut dyn Read) -> Result<()> {
        if let Some(e) = &self.open_error {
            return Err(Error::internal(e.clone()));
        }
        if let Some(entry) = &self.failed {
            return Err(Error::internal(format!("the layer tar is unusable after entry {entry} failed")));
        }
        let Some(builder) = self.builder.as_mut() else {
            return Err(Error::internal("the layer writer is closed"));
        };
        let Fields { kind, mode, uid, gid, mtime, link, capabilities } = fields;
        let mut pax: Vec<(&str, Vec<u8>)> = Vec::new();
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(kind);
        header.set_mode(mode & 0o7777);
        header.set_mtime(mtime);
        header.set_uid(uid);
        header.set_gid(gid);
        header.set_size(size);
        if uid > USTAR_MAX_ID {
            pax.push(("uid", uid.to_string().into_bytes()));
        }
        if gid > USTAR_MAX_ID {
            pax.push(("gid", gid.to_string().into_bytes()));
        }
        if size > USTAR_MAX_SIZE {
            pax.push(("size", size.to_string().into_bytes()));
        }
        if mtime > USTAR_MAX_SIZE {
            pax.push(("mtime", mtime.to_string().into_bytes()));
        }
        if path.len() > NAME_FIELD {
            pax.push(("path", path.as_bytes().to_vec()));
        }
        if let Some(capabilities) = capabilities {
            pax.push((CAPABILITY_PAX_RECORD, capabilities.to_vec()));
        }
        set_name(&mut header, truncated(path))?;
        if let Some(link) = link {
            if link.len() > NAME_FIELD {
                pax.push(("linkpath", link.as_bytes().to_vec()));
            }
            set_link(&mut header, truncated(link))?;
        }
        header.set_cksum();
        let result = write_entry(builder, &header, &pax, path, content, size);
        if result.is_err() {
            self.failed = Some(path.to_string());
        }
        result
    }

    /// Ends the tar and stores it as an uncompressed layer.
    pub async fn finish(mut self, store: &dyn BlobStore) -> Result<Layer> {
        if let Some(e) = self.open_error.take() {
            return Err(Error::internal(e));
        }
        if let Some(entry) = self.failed.take() {
            return Err(Error::internal(format!("the layer tar is unusable after entry {entry} failed")));
        }
        let builder = self.builder.take().ok_or_else(|| Error::internal("the layer writer is closed"))?;
        let mut hashing = builder.into_inner()?;
        hashing.flush()?;
        let (buffered, digest) = hashing.finish();
        let file = buffered.into_inner().map_err(|e| Error::from(e.into_error()))?;
        put_file(store, &digest, file)
            .await
            .map_err(|e| e.context(format!("storing layer sha256:{}", digest.hex())))?;
        Ok(Layer::uncompressed(digest))
    }
}

/// What one entry's header says besides its path and size.
struct Fields<'a> {
    kind: tar::EntryType,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    /// A link's target.
    link: Option<&'a str>,
    /// A regular file's `security.capability`.
    capabilities: Option<&'a [u8]>,
}

impl Fields<'_> {
    fn new(kind: tar::EntryType) -> Self {
        Fields { kind, mode: 0, uid: 0, gid: 0, mtime: 0, link: None, capabilities: None }
    }

    /// A whiteout marker: an empty regular file, 0600, root's, time 0.
    fn marker() -> Self {
        Fields { mode: 0o600, ..Fields::new(tar::EntryType::Regular) }
    }
}

fn write_entry(
    builder: &mut tar::Builder<HashingWriter<BufWriter<File>>>,
    header: &tar::Header,
    pax: &[(&str, Vec<u8>)],
    path: &str,
    content: &mut dyn Read,
    size: u64,
) -> Result<()> {
    if !pax.is_empty() {
        let mut records = Vec::new();
        for (key, value) in pax {
            records.extend_from_slice(&pax_record(key, value));
        }
        let mut pax_header = tar::Header::new_ustar();
        pax_header.set_entry_type(tar::EntryType::XHeader);
        pax_header.set_mode(0o644);
        pax_header.set_mtime(0);
        pax_header.set_size(records.len() as u64);
        set_name(&mut pax_header, truncated(&format!("PaxHeaders/{path}")))?;
        pax_header.set_cksum();
        builder.append(&pax_header, records.as_slice())?;
    }
    let mut counted = CountingReader { inner: content.take(size), count: 0 };
    builder.append(header, &mut counted).map_err(|e| Error::from(e).context(format!("adding {path} to a layer")))?;
    if counted.count != size {
        return Err(Error::invalid_argument(format!(
            "adding {path} to a layer: its content has {} bytes, {size} were announced",
            counted.count
        )));
    }
    Ok(())
}

/// `"<len> <key>=<value>\n"`, the length counting the whole record.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let rest = key.len() + value.len() + 3;
    let mut len = rest + 1;
    while len != rest + len.to_string().len() {
        len = rest + len.to_string().len();
    }
    let mut record = format!("{len} {key}=").into_bytes();
    record.extend_from_slice(value);
    record.push(b'\n');
    record
}

/// At most the first 100 bytes of a name.
fn truncated(name: &str) -> &[u8] {
    &name.as_bytes()[..name.len().min(NAME_FIELD)]
}

/// A layer path: relative, `/`-separated, no `.` or `..` parts; directories
/// end with `/`.
fn normalize(path: &str, directory: bool) -> Result<String> {
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(Error::invalid_argument(format!("layer path {path:?} has a .. component"))),
            part => parts.push(part),
        }
    }
    if parts.is_empty() {
        return Err(Error::invalid_argument(format!("layer path {path:?} names the root")));
    }
    let mut out = parts.join("/");
    if directory {
        out.push('/');
    }
    Ok(out)
}

struct CountingReader<R> {
    inner: R,
    count: u64,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_length_counts_itself() {
        assert_eq!(pax_record("path", b"abc"), b"12 path=abc\n".to_vec());
        let long = vec![b'x'; 95];
        let record = pax_record("path", &long);
        let len: usize = std::str::from_utf8(&record).unwrap().split(' ').next().unwrap().parse().unwrap();
        assert_eq!(len, record.len());
    }

    #[test]
    fn normalizes_paths() {
        assert_eq!(normalize("/a//b/./c", false).unwrap(), "a/b/c");
        assert_eq!(normalize("a/b", true).unwrap(), "a/b/");
        assert!(normalize("a/../b", false).is_err());
        assert!(normalize("/", true).is_err());
    }
}
