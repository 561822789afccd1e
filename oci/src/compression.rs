//! Layer compression: what a media type says, and turning a layer into
//! another compression deterministically.

use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;

use memobuild_cas::BlobStore;
use memobuild_proto::{Error, Result};

use crate::blob_io::{
    blob_reader, blocking, io_error, oci_digest, put_file, CappedReader, HashingReader, HashingWriter,
    DEFAULT_MAX_LAYER_BYTES,
};
use crate::layer::{Layer, MEDIA_TYPE_DOCKER_TAR_GZIP, MEDIA_TYPE_TAR, MEDIA_TYPE_TAR_GZIP, MEDIA_TYPE_TAR_ZSTD};

/// Docker's uncompressed layer type.
pub const MEDIA_TYPE_DOCKER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";

/// How a layer blob is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// The compression a layer media type names; INVALID_ARGUMENT for
    /// anything that is not a tar layer.
    pub fn of_media_type(media_type: &str) -> Result<Self> {
        match media_type {
            MEDIA_TYPE_TAR | MEDIA_TYPE_DOCKER_TAR => Ok(Compression::None),
            MEDIA_TYPE_TAR_GZIP | MEDIA_TYPE_DOCKER_TAR_GZIP => Ok(Compression::Gzip),
            MEDIA_TYPE_TAR_ZSTD | "application/vnd.docker.image.rootfs.diff.tar.zstd" => Ok(Compression::Zstd),
            other => Err(Error::invalid_argument(format!("unsupported layer media type {other:?}"))),
        }
    }

    /// The OCI layer media type for this compression.
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::None => MEDIA_TYPE_TAR,
            Compression::Gzip => MEDIA_TYPE_TAR_GZIP,
            Compression::Zstd => MEDIA_TYPE_TAR_ZSTD,
        }
    }

    /// A reader of the uncompressed bytes of `reader` that fails with
    /// `too_big` once they pass `limit` bytes: a small blob can decompress
    /// to anything.
    pub(crate) fn decoder<R: Read + Send + 'static>(
        self,
        reader: R,
        limit: u64,
        too_big: Error,
    ) -> Result<Box<dyn Read + Send>> {
        let decoded: Box<dyn Read + Send> = match self {
            Compression::None => Box::new(reader),
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(reader)),
            Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(reader)?),
        };
        Ok(Box::new(CappedReader::new(decoded, limit, too_big)))
    }

    /// [`Compression::decoder`] for a layer whose diff id is known: no
    /// more than its diff id's size comes out, and never more than
    /// [`DEFAULT_MAX_LAYER_BYTES`] (a diff id a client sent is a claim).
    pub(crate) fn layer_decoder<R: Read + Send + 'static>(
        self,
        reader: R,
        layer: &Layer,
    ) -> Result<Box<dyn Read + Send>> {
        let blob = oci_digest(&layer.blob);
        let too_big = match layer.diff_id.size() {
            size if size <= DEFAULT_MAX_LAYER_BYTES => Error::invalid_argument(format!(
                "layer {blob} decompresses to more than the {size} bytes of its diff id {}",
                layer.diff_id_string()
            )),
            _ => Error::invalid_argument(format!(
                "layer {blob} decompresses to more than the {DEFAULT_MAX_LAYER_BYTES} bytes allowed"
            )),
        };
        self.decoder(reader, layer.diff_id.size().min(DEFAULT_MAX_LAYER_BYTES), too_big)
    }
}

impl FromStr for Compression {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "uncompressed" => Ok(Compression::None),
            "gzip" => Ok(Compression::Gzip),
            "zstd" => Ok(Compression::Zstd),
            other => Err(Error::invalid_argument(format!(
                "unknown compression {other:?}: expected uncompressed, gzip or zstd"
            ))),
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compression::None => "uncompressed",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        })
    }
}

/// Stores `layer` compressed as `compression` and returns it with the new
/// blob and media type (same diff id). The output is deterministic: gzip
/// with mtime 0 and no file name at the default level, zstd at level 3
/// single-threaded. Returns the layer unchanged when it already is in that
/// form.
pub async fn compress_layer(store: &dyn BlobStore, layer: &Layer, compression: Compression) -> Result<Layer> {
    let what = || format!("compressing layer {} to {compression}", layer.diff_id_string());
    let current = Compression::of_media_type(&layer.media_type).map_err(|e| e.context(what()))?;
    if current == compression {
        return Ok(layer.clone());
    }
    if compression == Compression::None && store.find_missing(&[layer.diff_id]).await?.is_empty() {
        return Ok(Layer::uncompressed(layer.diff_id));
    }
    let reader = blob_reader(store, &layer.blob).await.map_err(|e| e.context(what()))?;
    let expected_diff_id = layer.diff_id;
    let bounded = layer.clone();
    let (file, blob) = blocking(move || {
        let mut tar = HashingReader::new(current.layer_decoder(reader, &bounded)?);
        let file = tempfile::tempfile()?;
        let mut out = HashingWriter::new(io::BufWriter::new(file));
        match compression {
            Compression::None => {
                io::copy(&mut tar, &mut out).map_err(io_error)?;
            }
            Compression::Gzip => {
                let mut encoder = flate2::GzBuilder::new().mtime(0).write(&mut out, flate2::Compression::default());
                io::copy(&mut tar, &mut encoder).map_err(io_error)?;
                encoder.finish()?;
            }
            Compression::Zstd => {
                let mut encoder = zstd::stream::write::Encoder::new(&mut out, 3)?;
                io::copy(&mut tar, &mut encoder).map_err(io_error)?;
                encoder.finish()?;
            }
        }
        let diff_id = tar.finish().map_err(io_error)?;
        if diff_id != expected_diff_id {
            return Err(Error::invalid_argument(format!(
                "the layer decompresses to sha256:{} ({} bytes), not its diff id",
                diff_id.hex(),
                diff_id.size()
            )));
        }
        out.flush()?;
        let (buffered, blob) = out.finish();
        let file = buffered.into_inner().map_err(|e| Error::from(e.into_error()))?;
        Ok((file, blob))
    })
    .await
    .map_err(|e| e.context(what()))?;
    put_file(store, &blob, file).await.map_err(|e| e.context(what()))?;
    Ok(Layer { blob, media_type: compression.media_type().to_string(), diff_id: layer.diff_id })
}
