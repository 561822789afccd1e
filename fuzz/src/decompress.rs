//! The zstd and gzip readers on arbitrary bytes.

use std::sync::OnceLock;

use memobuild_cas::{BlobStore, MemoryStore, StreamDecoder};
use memobuild_oci::{compress_layer, Compression, Layer, MEDIA_TYPE_TAR_GZIP};
use memobuild_proto::{Digest, DigestFunction};

/// The most output the zstd checks let through.
const CAP: u64 = 1 << 20;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap_or_else(|e| panic!("runtime: {e}"))
    })
}

/// Runs `data` through the CAS's zstd reader, whole and in pieces (never
/// more output than allowed), and through the gzip reader of image layers.
/// Errors are fine; panics, hangs and unbounded output are bugs.
pub fn check(data: &[u8]) {
    if let Ok(out) = StreamDecoder::decode_at_most(data, CAP) {
        assert!(out.len() as u64 <= CAP);
    }
    zstd_in_pieces(data);
    gzip_layer(data);
}

fn zstd_in_pieces(data: &[u8]) {
    let Ok(mut decoder) = StreamDecoder::new() else { return };
    let mut total = 0u64;
    for piece in data.chunks(7) {
        let mut input = piece;
        loop {
            match decoder.next_chunk(&mut input) {
                Ok(Some(chunk)) => {
                    assert!(!chunk.is_empty());
                    total += chunk.len() as u64;
                    if total > CAP {
                        return;
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(input.is_empty(), "the decoder left input unread without an error");
    }
    let _ = decoder.finish();
}

/// Decompresses `data` as a gzip layer the way an export does: no more
/// than the `CAP` bytes its (made-up) diff id claims come out.
fn gzip_layer(data: &[u8]) {
    let blob = Digest::of(DigestFunction::Sha256, data);
    let Ok(diff_id) = Digest::parse(DigestFunction::Sha256, &"0".repeat(64), CAP as i64) else { return };
    let layer = Layer { blob, media_type: MEDIA_TYPE_TAR_GZIP.to_string(), diff_id };
    let _ = runtime().block_on(async {
        let store = MemoryStore::new();
        store.put_bytes(&blob, data.to_vec().into()).await?;
        compress_layer(&store, &layer, Compression::None).await
    });
}
