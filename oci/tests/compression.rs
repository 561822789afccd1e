//! Layer compression: deterministic, diff id kept, reversible.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Read;

use common::{hello_layer, store};
use memobuild_cas::BlobStore;
use memobuild_oci::{compress_layer, Compression, Layer, MEDIA_TYPE_TAR_GZIP, MEDIA_TYPE_TAR_ZSTD};

#[tokio::test(flavor = "multi_thread")]
async fn gzip_and_zstd_are_deterministic_and_reversible() {
    let store = store();
    let layer = hello_layer(&store, &"some text to compress ".repeat(500)).await;
    let tar = store.get_bytes(&layer.blob).await.unwrap();
    for (compression, media_type) in
        [(Compression::Gzip, MEDIA_TYPE_TAR_GZIP), (Compression::Zstd, MEDIA_TYPE_TAR_ZSTD)]
    {
        let a = compress_layer(&store, &layer, compression).await.unwrap();
        let b = compress_layer(&store, &layer, compression).await.unwrap();
        assert_eq!(a, b);
        assert_eq!(a.media_type, media_type);
        assert_eq!(a.diff_id, layer.diff_id);
        assert_ne!(a.blob, layer.blob);
        let data = store.get_bytes(&a.blob).await.unwrap();
        assert!(data.len() < tar.len());
        let mut plain = Vec::new();
        match compression {
            Compression::Gzip => {
                assert_eq!(&data[4..8], &[0, 0, 0, 0], "gzip mtime is 0");
                assert_eq!(data[3] & 0x08, 0, "no file name in the gzip header");
                flate2::read::GzDecoder::new(&data[..]).read_to_end(&mut plain).unwrap();
            }
            _ => plain = zstd::decode_all(&data[..]).unwrap(),
        }
        assert_eq!(plain, tar);
        // Identity when already in that form; back to uncompressed gives the tar.
        assert_eq!(compress_layer(&store, &a, compression).await.unwrap(), a);
        assert_eq!(compress_layer(&store, &a, Compression::None).await.unwrap(), layer);
    }
    // zstd -> gzip goes through the tar and gives the same gzip bytes.
    let z = compress_layer(&store, &layer, Compression::Zstd).await.unwrap();
    let fresh = common::store();
    fresh.put_bytes(&z.blob, store.get_bytes(&z.blob).await.unwrap()).await.unwrap();
    let g = compress_layer(&fresh, &z, Compression::Gzip).await.unwrap();
    assert_eq!(g, compress_layer(&store, &layer, Compression::Gzip).await.unwrap());
    let u = compress_layer(&fresh, &z, Compression::None).await.unwrap();
    assert_eq!(u, layer);
    assert_eq!(fresh.get_bytes(&u.blob).await.unwrap(), tar);

    // A layer whose content does not match its diff id is refused.
    let lying = Layer { diff_id: memobuild_proto::Digest::of(memobuild_proto::DigestFunction::Sha256, b"x"), ..z };
    let err = compress_layer(&fresh, &lying, Compression::Gzip).await.unwrap_err();
    assert!(err.message().contains("diff id"), "{err}");
    assert_eq!("gzip".parse::<Compression>().unwrap(), Compression::Gzip);
    assert_eq!("uncompressed".parse::<Compression>().unwrap(), Compression::None);
    assert!("lz4".parse::<Compression>().is_err());
}
