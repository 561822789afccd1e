//! Streaming zstd for `compressed-blobs` transfers, one chunk at a time.

use bytes::Bytes;
use memobuild_proto::{Error, Result};
use zstd::stream::raw::{Decoder, Encoder, InBuffer, Operation, OutBuffer};

/// Output chunk size of the decoder.
const OUT_CHUNK: usize = 1 << 20;
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
        let decoder = Decoder::new().map_err(|e| Error::internal(format!("zstd decoder: {e}")))?;
        Ok(StreamDecoder { decoder, frame_done: true })
    }

    /// Decodes from `input`, advancing it, until one output chunk is ready or
    /// the input is used up. `None` when there is nothing more to emit.
    pub fn next_chunk(&mut self, input: &mut &[u8]) -> Result<Option<Bytes>> {
        let mut out = vec![0u8; OUT_CHUNK];
        let mut written = 0;
        loop {
            let mut src = InBuffer::around(input);
            let mut dst = OutBuffer::around_pos(&mut out[..], written);
            let hint = self
                .decoder
                .run(&mut src, &mut dst)
                .map_err(|e| Error::invalid_argument(format!("malformed zstd data: {e}")))?;
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
