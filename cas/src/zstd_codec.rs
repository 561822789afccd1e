//! Streaming zstd for `compressed-blobs` transfers, one chunk at a time.

use bytes::{Bytes, BytesMut};
use memobuild_proto::{Error, Result};
use zstd::stream::raw::{DParameter, Decoder, Encoder, InBuffer, Operation, OutBuffer};

/// Output chunk size of the decoder.
const OUT_CHUNK: usize = 1 << 20;
/// The largest window a frame may ask the decoder to allocate (8 MiB, what
/// compression levels up to 19 use): a frame header is a claim too.
pub const MAX_WINDOW_LOG: u32 = 23;
/// Fast compression: transfers are bound by the wire, not by ratio.
const LEVEL: i32 = 1;

/// Decompresses a zstd stream that arrives in pieces, yielding bounded
/// output chunks so a small input cannot force a large allocation.
pub struct StreamDecoder {
    decoder: Decoder<'static>,
    /// Whether the input so far ends on a frame boundary.
    frame_done: bool,
}

impl StreamDecoder {
    pub fn new() -> Result<Self> {
        let mut decoder = Decoder::new().map_err(|e| Error::internal(format!("zstd decoder: {e}")))?;
        decoder
            .set_parameter(DParameter::WindowLogMax(MAX_WINDOW_LOG))
            .map_err(|e| Error::internal(format!("zstd decoder: {e}")))?;
        Ok(StreamDecoder { decoder, frame_done: true })
    }

    /// Decompresses all of `data`, failing as soon as the output passes
    /// `max_bytes`: memory grows with what was decoded, never with what
    /// a digest or a frame header claims.
    pub fn decode_at_most(data: &[u8], max_bytes: u64) -> Result<Bytes> {
        let mut decoder = StreamDecoder::new()?;
        let mut out = BytesMut::new();
        let mut input = data;
        while let Some(chunk) = decoder.next_chunk(&mut input)? {
            if (out.len() + chunk.len()) as u64 > max_bytes {
                return Err(Error::invalid_argument(format!("zstd data decompresses to more than {max_bytes} bytes")));
            }
            out.extend_from_slice(&chunk);
        }
        decoder.finish()?;
        Ok(out.freeze())
    }

    /// Decodes from `input`, advancing it, until one output chunk is ready or
    /// the input is used up. `None` when there is nothing more to emit.
    pub fn next_chunk(&mut self, input: &mut &[u8]) -> Result<Option<Bytes>> {
        let mut out = vec![0u8; OUT_CHUNK];
        let mut written = 0;
        loop {
            let mut src = InBuffer::around(input);
            let mut dst = OutBuffer::around_pos(&mut out[..], written);
            let hint = self.decoder.run(&mut src, &mut dst).map_err(|e| {
                Error::invalid_argument(format!("malformed zstd data or a window over 2^{MAX_WINDOW_LOG} bytes: {e}"))
            })?;
            let consumed = src.pos();
            let progressed = consumed > 0 || dst.pos() > written;
            written = dst.pos();
            *input = &input[consumed..];
            if progressed {
                // With no input, an idle decoder hints at the next frame's header.
                self.frame_done = hint == 0;
            }
            if written == out.len() || input.is_empty() {
                break;
            }
            if !progressed {
                return Err(Error::invalid_argument("malformed zstd data: the decoder is stuck"));
            }
        }
        if written == 0 {
            return Ok(None);
        }
        // A small chunk is copied so that it does not pin a whole buffer.
        if written < OUT_CHUNK / 2 {
            return Ok(Some(Bytes::copy_from_slice(&out[..written])));
        }
        out.truncate(written);
        Ok(Some(out.into()))
    }

    /// Errors unless the stream ended on a frame boundary.
    pub fn finish(&self) -> Result<()> {
        if self.frame_done {
            Ok(())
        } else {
            Err(Error::invalid_argument("zstd stream ends in the middle of a frame"))
        }
    }
}

/// Compresses a stream piece by piece into one zstd frame.
pub struct StreamEncoder {
    encoder: Encoder<'static>,
}

impl StreamEncoder {
    pub fn new() -> Result<Self> {
        let encoder = Encoder::new(LEVEL).map_err(|e| Error::internal(format!("zstd encoder: {e}")))?;
        Ok(StreamEncoder { encoder })
    }

    /// Compresses `input`; returns what is ready (possibly nothing).
    pub fn encode(&mut self, input: &[u8]) -> Result<Bytes> {
        let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(input.len()));
        let mut src = InBuffer::around(input);
        while src.pos() < input.len() {
            if out.capacity() == out.len() {
                out.reserve(OUT_CHUNK);
            }
            let len = out.len();
            let mut dst = OutBuffer::around_pos(&mut out, len);
            self.encoder.run(&mut src, &mut dst).map_err(|e| Error::internal(format!("zstd: {e}")))?;
        }
        Ok(out.into())
    }

    /// Ends the frame; returns the remaining output.
    pub fn finish(&mut self) -> Result<Bytes> {
        let mut out = Vec::with_capacity(OUT_CHUNK);
        loop {
            let len = out.len();
            let mut dst = OutBuffer::around_pos(&mut out, len);
            let remaining = self.encoder.finish(&mut dst, true).map_err(|e| Error::internal(format!("zstd: {e}")))?;
            if remaining == 0 {
                return Ok(out.into());
            }
            out.reserve(OUT_CHUNK);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn decode_all(pieces: &[&[u8]]) -> Result<Vec<u8>> {
        let mut decoder = StreamDecoder::new()?;
        let mut out = Vec::new();
        for piece in pieces {
            let mut input = *piece;
            while let Some(chunk) = decoder.next_chunk(&mut input)? {
                out.extend_from_slice(&chunk);
            }
            assert!(input.is_empty());
        }
        decoder.finish()?;
        Ok(out)
    }

    #[test]
    fn large_output_comes_in_bounded_chunks() {
        let data = vec![7u8; 5 * OUT_CHUNK + 3];
        let compressed = zstd::bulk::compress(&data, 3).unwrap();
        let mut decoder = StreamDecoder::new().unwrap();
        let mut input = &compressed[..];
        let mut total = 0;
        while let Some(chunk) = decoder.next_chunk(&mut input).unwrap() {
            assert!(chunk.len() <= OUT_CHUNK);
            total += chunk.len();
        }
        assert_eq!(total, data.len());
    }

    #[test]
    fn truncated_and_garbage_input_is_an_error() {
        let compressed = zstd::bulk::compress(&[1u8; 10_000], 3).unwrap();
        let e = decode_all(&[&compressed[..compressed.len() - 4]]).unwrap_err();
        assert!(e.message().contains("middle of a frame"), "{e}");
        assert!(decode_all(&[b"definitely not zstd"]).is_err());
    }

    #[test]
    fn decode_at_most_stops_at_the_limit_and_refuses_huge_windows() {
        let data = vec![0u8; 3 * OUT_CHUNK];
        let compressed = zstd::bulk::compress(&data, 3).unwrap();
        assert_eq!(StreamDecoder::decode_at_most(&compressed, data.len() as u64).unwrap().len(), data.len());
        let e = StreamDecoder::decode_at_most(&compressed, 1000).unwrap_err();
        assert!(e.message().contains("more than 1000 bytes"), "{e}");
        let mut encoder = zstd::bulk::Compressor::new(3).unwrap();
        encoder.set_parameter(zstd::stream::raw::CParameter::WindowLog(MAX_WINDOW_LOG + 4)).unwrap();
        encoder.set_parameter(zstd::stream::raw::CParameter::ContentSizeFlag(false)).unwrap();
        let wide = encoder.compress(&vec![1u8; 1 << 25]).unwrap();
        let e = StreamDecoder::decode_at_most(&wide, 1 << 26).unwrap_err();
        assert!(e.message().contains("window over 2^23 bytes"), "{e}");
    }

    proptest! {
        #[test]
        fn round_trip_in_any_pieces(data in proptest::collection::vec(any::<u8>(), 0..20_000), cut in 1usize..5000) {
            let mut encoder = StreamEncoder::new().unwrap();
            let mut compressed = Vec::new();
            for piece in data.chunks(cut) {
                compressed.extend_from_slice(&encoder.encode(piece).unwrap());
            }
            compressed.extend_from_slice(&encoder.finish().unwrap());
            let pieces: Vec<&[u8]> = compressed.chunks(cut.max(7) / 7).collect();
            prop_assert_eq!(decode_all(&pieces).unwrap(), data);
        }
    }
}
