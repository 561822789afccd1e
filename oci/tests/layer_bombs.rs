//! Decompression bombs: small gzip and zstd layers that unpack to far more
//! than they weigh. Importing one stops at the configured bound; unpacking
//! or recompressing one stops at the size its diff id gives.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::io::{self, Read, Write};

use common::{config_for, store};
use memobuild_cas::BlobStore;
use memobuild_oci::{
    compress_layer, extract_layers, read_oci_layout, write_oci_layout, BuiltImage, Compression, ExtractLimits, Layer,
    OciDestination, DEFAULT_MAX_LAYER_BYTES,
};
use memobuild_proto::{Digest, DigestFunction};
use tonic::Code;

/// What the bombs unpack to: one file of zeros.
const BOMB_BYTES: u64 = 64 << 20;
/// The bound the tests configure.
const LIMIT: u64 = 1 << 20;

/// A tar holding `zeros`, `BOMB_BYTES` of them, compressed as `compression`,
/// in `store`; its diff id is `claimed`, which the tests make small.
async fn bomb(store: &dyn BlobStore, compression: Compression, claimed: Digest) -> Layer {
    fn tar_into(out: impl Write) -> io::Result<()> {
        let mut tar = tar::Builder::new(out);
        let mut header = tar::Header::new_gnu();
        header.set_size(BOMB_BYTES);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, "zeros", io::repeat(0).take(BOMB_BYTES))?;
        tar.into_inner()?;
        Ok(())
    }
    let mut blob = Vec::new();
    match compression {
        Compression::Gzip => {
            let mut encoder = flate2::write::GzEncoder::new(&mut blob, flate2::Compression::best());
            tar_into(&mut encoder).unwrap();
            encoder.finish().unwrap();
        }
        Compression::Zstd => {
            let mut encoder = zstd::stream::write::Encoder::new(&mut blob, 19).unwrap();
            tar_into(&mut encoder).unwrap();
            encoder.finish().unwrap();
        }
        Compression::None => unreachable!("a bomb is compressed"),
    }
    assert!((blob.len() as u64) < BOMB_BYTES / 500, "{} bytes is no bomb", blob.len());
    let digest = Digest::of(DigestFunction::Sha256, &blob);
    store.put_bytes(&digest, blob.into()).await.unwrap();
    Layer { blob: digest, media_type: compression.media_type().to_string(), diff_id: claimed }
}

fn small_diff_id() -> Digest {
    Digest::of(DigestFunction::Sha256, b"a small tar")
}

#[tokio::test(flavor = "multi_thread")]
async fn an_imported_bomb_stops_at_the_configured_bound() {
    for compression in [Compression::Gzip, Compression::Zstd] {
        let store = store();
        // The config says the tar is tiny; the importer learns its size by decompressing.
        let layer = bomb(&store, compression, small_diff_id()).await;
        let image =
            BuiltImage::new(config_for(std::slice::from_ref(&layer)), vec![layer.clone()], BTreeMap::new()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let layout = dir.path().join("layout");
        write_oci_layout(&image, &store, &OciDestination::Directory(layout.clone()), &["bomb:1".to_string()])
            .await
            .unwrap();

        let err = read_oci_layout(&layout, None, "linux/amd64", &common::store(), None, LIMIT).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{compression}: {err}");
        let expected = format!(
            "layer sha256:{} decompresses to more than the {LIMIT} bytes allowed (max_layer_bytes)",
            layer.blob.hex()
        );
        assert!(err.message().contains(&expected), "{compression}: {err}");

        // Within the default bound the same layer gets as far as its diff id, which it does not match.
        let err = read_oci_layout(&layout, None, "linux/amd64", &common::store(), None, DEFAULT_MAX_LAYER_BYTES)
            .await
            .unwrap_err();
        assert!(err.message().contains("the config says"), "{compression}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unpacking_a_bomb_stops_at_its_diff_id_size() {
    let claimed = small_diff_id();
    for compression in [Compression::Gzip, Compression::Zstd] {
        let store = store();
        let layer = bomb(&store, compression, claimed).await;
        let blob = format!("sha256:{}", layer.blob.hex());
        let expected = format!("layer {blob} decompresses to more than the {} bytes of its diff id", claimed.size());

        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("rootfs");
        let err =
            extract_layers(&store, std::slice::from_ref(&layer), &dest, ExtractLimits::default()).await.unwrap_err();
        assert!(err.message().contains(&expected), "{compression}: {err}");
        let written = std::fs::metadata(dest.join("zeros")).map(|m| m.len()).unwrap_or(0);
        assert!(written <= claimed.size(), "{compression}: {written} bytes written");

        let err = compress_layer(&store, &layer, Compression::None).await.unwrap_err();
        assert!(err.message().contains(&expected), "{compression}: {err}");
    }
}
