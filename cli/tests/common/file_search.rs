//! Searching state dirs for a value that must not be there: every regular
//! file, read as stored and, for gzip or zstd data (image layers,
//! compressed blobs), decompressed.
#![allow(clippy::unwrap_used, dead_code)]

use std::path::{Path, PathBuf};

/// Every regular file under `root` that holds `needle`, read as stored and,
/// for gzip or zstd data (image layers, compressed blobs), decompressed.
pub fn files_containing(root: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries {
            let path = entry.unwrap().path();
            let Ok(meta) = path.symlink_metadata() else { continue };
            if meta.is_dir() {
                dirs.push(path);
            } else if meta.is_file() {
                let Ok(data) = std::fs::read(&path) else { continue };
                if holds(&data, needle) {
                    found.push(path);
                }
            }
        }
    }
    found
}

/// Whether `data`, or what it decompresses to, contains `needle`.
pub fn holds(data: &[u8], needle: &[u8]) -> bool {
    use std::io::Read;
    if data.windows(needle.len()).any(|w| w == needle) {
        return true;
    }
    let mut plain = Vec::new();
    if data.starts_with(&[0x1f, 0x8b]) {
        let _ = flate2::read::MultiGzDecoder::new(data).take(1 << 30).read_to_end(&mut plain);
    } else if data.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        if let Ok(decoder) = zstd::stream::read::Decoder::new(data) {
            let _ = decoder.take(1 << 30).read_to_end(&mut plain);
        }
    }
    !plain.is_empty() && plain.windows(needle.len()).any(|w| w == needle)
}
