//! The archives ADD unpacks: which files are archives (by their bytes, as
//! Docker's builders decide), their decompressed stream, and member paths
//! kept inside the destination.

use std::io::Read;
use std::path::Path;

use memobuild_proto::{Result, ResultExt};

/// Largest archive member ADD reads into memory.
pub const MAX_ARCHIVE_MEMBER: u64 = 1 << 30;

/// A member path made relative and clean; `None` if it climbs out.
pub fn safe_member_path(raw: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for part in raw.split('/') {
        match part {
            "" | "." => {}
            ".." => return None,
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
}

/// The archive formats ADD unpacks.
pub enum Archive {
    Tar,
    Gzip,
    Bzip2,
    Xz,
    Zstd,
}

impl Archive {
    /// What ADD unpacks, as Docker's builders decide: a tar, plain or
    /// compressed with gzip, bzip2, xz or zstd (by the first bytes, not the
    /// name), whose first member header is valid. Anything else, such as a
    /// gzip of a text file, is copied as it is.
    pub fn detect(path: &Path) -> Result<Option<Archive>> {
        let mut magic = [0u8; 6];
        let mut file = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
        let n = read_full(&mut file, &mut magic)?;
        let archive = match &magic[..n] {
            [0x1f, 0x8b, ..] => Archive::Gzip,
            [b'B', b'Z', b'h', ..] => Archive::Bzip2,
            [0xfd, b'7', b'z', b'X', b'Z', 0x00] => Archive::Xz,
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Archive::Zstd,
            _ => Archive::Tar,
        };
        let mut head = [0u8; 512];
        let opened = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
        // A stream that does not decompress is not an archive either.
        let read = archive.reader(opened).and_then(|mut reader| Ok(read_full(&mut reader, &mut head)?));
        Ok(matches!(read, Ok(512)).then_some(archive).filter(|_| is_tar_header(&head)))
    }

    pub fn reader(&self, file: std::fs::File) -> Result<Box<dyn Read>> {
        Ok(match self {
            Archive::Tar => Box::new(file),
            Archive::Gzip => Box::new(flate2::read::GzDecoder::new(file)),
            Archive::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(file)),
            Archive::Xz => Box::new(xz2::read::XzDecoder::new_multi_decoder(file)),
            Archive::Zstd => Box::new(zstd::stream::read::Decoder::new(file)?),
        })
    }
}

/// Reads until `buf` is full or the stream ends; returns how much was read.
fn read_full(reader: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match reader.read(&mut buf[n..])? {
            0 => break,
            read => n += read,
        }
    }
    Ok(n)
}

/// Whether a 512-byte block is a tar header: its checksum field (octal, at
/// 148) is the sum of its bytes with that field read as spaces. An all-zero
/// block is the end of an empty archive, not a member.
fn is_tar_header(block: &[u8; 512]) -> bool {
    let field = String::from_utf8_lossy(&block[148..156]);
    let Ok(recorded) = u32::from_str_radix(field.trim_matches(|c: char| c == '\0' || c == ' '), 8) else {
        return false;
    };
    let sum: u32 =
        block.iter().enumerate().map(|(i, b)| if (148..156).contains(&i) { 32 } else { u32::from(*b) }).sum();
    block.iter().any(|b| *b != 0) && sum == recorded
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// A one-member tar, as `tar` would write it.
    fn tar_bytes() -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(3);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, "pkg/file", &b"abc"[..]).unwrap();
        builder.into_inner().unwrap()
    }

    fn detected(name: &str, bytes: &[u8]) -> Option<&'static str> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        Archive::detect(&path).unwrap().map(|a| match a {
            Archive::Tar => "tar",
            Archive::Gzip => "gzip",
            Archive::Bzip2 => "bzip2",
            Archive::Xz => "xz",
            Archive::Zstd => "zstd",
        })
    }

    #[test]
    fn add_unpacks_tars_in_every_compression_docker_reads_and_nothing_else() {
        let tar = tar_bytes();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&tar).unwrap();
        let mut bz = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::default());
        bz.write_all(&tar).unwrap();
        let mut xz = xz2::write::XzEncoder::new(Vec::new(), 6);
        xz.write_all(&tar).unwrap();
        assert_eq!(detected("a.tar", &tar), Some("tar"));
        assert_eq!(detected("a.tar.gz", &gz.finish().unwrap()), Some("gzip"));
        assert_eq!(detected("a.tar.bz2", &bz.finish().unwrap()), Some("bzip2"));
        // Named after nothing: the content decides.
        assert_eq!(detected("payload.bin", &xz.finish().unwrap()), Some("xz"));
        assert_eq!(detected("a.tar.zst", &zstd::encode_all(&tar[..], 3).unwrap()), Some("zstd"));
        // A gzip of a text file, a text file, an empty file: copied as they are.
        let mut text = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        text.write_all(b"plain text, not a tar\n").unwrap();
        assert_eq!(detected("notes.txt.gz", &text.finish().unwrap()), None);
        assert_eq!(detected("notes.txt", &[b'x'; 600]), None);
        assert_eq!(detected("empty", b""), None);
    }

    #[test]
    fn archive_members_stay_inside() {
        assert_eq!(safe_member_path("./a/b").as_deref(), Some("a/b"));
        assert_eq!(safe_member_path("/etc/passwd").as_deref(), Some("etc/passwd"));
        assert_eq!(safe_member_path("a/../../x"), None);
    }
}
