//! ByteStream throughput: write a fresh blob, read it back, check its digest.
//!
//! Only the transfers are timed. Generating, hashing and compressing the
//! blob happen before the write's clock starts; the read's clock stops when
//! the last byte has arrived in memory, and decompressing and hashing what
//! came back happen after it.

use std::time::Instant;

use anyhow::{bail, Context};
use futures::StreamExt;
use memobuild_proto::bytestream::byte_stream_client::ByteStreamClient;
use memobuild_proto::bytestream::{ReadRequest, WriteRequest};
use memobuild_proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use memobuild_proto::reapi::FindMissingBlobsRequest;
use memobuild_proto::{Compressor, Digest, DigestFunction, ResourceName};
use serde::Serialize;

use crate::blob_source::{BlobSource, Content};
use crate::connection::{self, Channel, ChannelOptions};
use crate::stats::median;

/// zstd level for uploads: fast, as build clients use.
const ZSTD_LEVEL: i32 = 1;

pub struct ByteStreamOptions {
    pub channel: ChannelOptions,
    pub instance_name: String,
    pub digest_function: DigestFunction,
    pub size: u64,
    pub chunk: usize,
    pub repeat: usize,
    pub compressor: Compressor,
    pub seed: u64,
}

#[derive(Debug, Serialize)]
pub struct Repeat {
    pub digest: String,
    /// Bytes on the wire (the compressed size for zstd).
    pub wire_bytes: u64,
    pub write_seconds: f64,
    pub read_seconds: f64,
    /// Blob bytes (uncompressed) per second, in 10^6 bytes.
    pub write_mb_per_s: f64,
    pub read_mb_per_s: f64,
    /// Wire bytes per second, in 10^6 bytes.
    pub write_wire_mb_per_s: f64,
    pub read_wire_mb_per_s: f64,
}

#[derive(Debug, Serialize)]
pub struct ByteStreamReport {
    pub benchmark: &'static str,
    pub endpoint: String,
    pub digest_function: String,
    pub compressor: &'static str,
    pub size_bytes: u64,
    pub chunk_bytes: usize,
    pub max_frame_size: Option<u32>,
    pub repeats: Vec<Repeat>,
    pub median_write_mb_per_s: Option<f64>,
    pub median_read_mb_per_s: Option<f64>,
}

fn compressor_name(compressor: Compressor) -> &'static str {
    match compressor {
        Compressor::Identity => "identity",
        Compressor::Zstd => "zstd",
    }
}

/// A blob ready to send: its digest and the chunks that go on the wire.
struct Prepared {
    digest: Digest,
    wire: Vec<Vec<u8>>,
}

fn prepare(options: &ByteStreamOptions, seed: u64) -> anyhow::Result<Prepared> {
    let content = match options.compressor {
        Compressor::Identity => Content::Random,
        Compressor::Zstd => Content::SemiCompressible,
    };
    let chunks = BlobSource::new(seed).chunks(options.size, options.chunk, content);
    let mut hasher = options.digest_function.hasher();
    for chunk in &chunks {
        hasher.update(chunk);
    }
    let digest = hasher.finish();
    let wire = match options.compressor {
        Compressor::Identity => chunks,
        Compressor::Zstd => {
            let mut encoder = zstd::stream::Encoder::new(Vec::new(), ZSTD_LEVEL).context("zstd encoder")?;
            for chunk in &chunks {
                std::io::Write::write_all(&mut encoder, chunk).context("compressing the blob")?;
            }
            let compressed = encoder.finish().context("compressing the blob")?;
            drop(chunks);
            compressed.chunks(options.chunk.max(1)).map(<[u8]>::to_vec).collect()
        }
    };
    Ok(Prepared { digest, wire })
}

/// The WriteRequests of one upload; the resource name rides on the first.
fn write_requests(resource_name: String, wire: Vec<Vec<u8>>) -> Vec<WriteRequest> {
    let count = wire.len().max(1);
    let mut chunks = wire.into_iter();
    let mut offset = 0i64;
    let mut requests = Vec::with_capacity(count);
    for i in 0..count {
        let data = chunks.next().unwrap_or_default();
        let len = data.len() as i64;
        requests.push(WriteRequest {
            resource_name: if i == 0 { resource_name.clone() } else { String::new() },
            write_offset: offset,
            finish_write: i + 1 == count,
            data,
        });
        offset += len;
    }
    requests
}

async fn is_missing(
    cas: &mut ContentAddressableStorageClient<Channel>,
    options: &ByteStreamOptions,
    digest: &Digest,
) -> anyhow::Result<bool> {
    let request = FindMissingBlobsRequest {
        instance_name: options.instance_name.clone(),
        blob_digests: vec![digest.to_proto()],
        digest_function: options.digest_function.to_proto(),
    };
    let response = cas.find_missing_blobs(request).await.with_context(|| format!("FindMissingBlobs of {digest}"))?;
    Ok(!response.into_inner().missing_blob_digests.is_empty())
}

/// Reads the whole blob into memory; returns the chunks as they came.
async fn read_all(client: &mut ByteStreamClient<Channel>, resource_name: String) -> anyhow::Result<Vec<Vec<u8>>> {
    let request = ReadRequest { resource_name: resource_name.clone(), read_offset: 0, read_limit: 0 };
    let mut stream =
        client.read(request).await.with_context(|| format!("ByteStream.Read of {resource_name}"))?.into_inner();
    let mut chunks = Vec::new();
    while let Some(response) = stream.next().await {
        let response = response.with_context(|| format!("ByteStream.Read of {resource_name}"))?;
        chunks.push(response.data);
    }
    Ok(chunks)
}

/// The digest of what a Read returned, decompressing it first if need be.
fn digest_of_read(options: &ByteStreamOptions, chunks: &[Vec<u8>]) -> anyhow::Result<Digest> {
    let mut hasher = options.digest_function.hasher();
    match options.compressor {
        Compressor::Identity => chunks.iter().for_each(|c| hasher.update(c)),
        Compressor::Zstd => {
            let mut decoder = zstd::stream::write::Decoder::new(HashWriter(&mut hasher)).context("zstd decoder")?;
            for chunk in chunks {
                std::io::Write::write_all(&mut decoder, chunk).context("decompressing the blob read back")?;
            }
            std::io::Write::flush(&mut decoder).context("decompressing the blob read back")?;
        }
    }
    Ok(hasher.finish())
}

/// Feeds whatever is written into a digest hasher.
struct HashWriter<'a>(&'a mut memobuild_proto::DigestHasher);

impl std::io::Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn mb_per_s(bytes: u64, seconds: f64) -> f64 {
    bytes as f64 / 1e6 / seconds.max(1e-9)
}

pub async fn run(options: ByteStreamOptions) -> anyhow::Result<ByteStreamReport> {
    if options.repeat == 0 || options.chunk == 0 {
        bail!("--repeat and --chunk must be at least 1");
    }
    let channel = connection::connect(&options.channel, 1).await?.pop().context("no channel")?;
    let mut client = connection::byte_stream_client(channel.clone());
    let mut cas = connection::cas_client(channel);
    let mut repeats = Vec::with_capacity(options.repeat);
    for round in 0..options.repeat {
        let prepared = prepare(&options, options.seed.wrapping_add(round as u64))?;
        let digest = prepared.digest;
        let wire_bytes: u64 = prepared.wire.iter().map(|c| c.len() as u64).sum();
        if !is_missing(&mut cas, &options, &digest).await? {
            bail!("blob {digest} is already on the server, so its write would be skipped: pick another --seed");
        }
        let upload_id = uuid::Uuid::new_v4().to_string();
        let write_name = ResourceName::write(&options.instance_name, &upload_id, digest, options.compressor);
        let requests = write_requests(write_name.to_string(), prepared.wire);

        let start = Instant::now();
        let response = client
            .write(futures::stream::iter(requests))
            .await
            .with_context(|| format!("ByteStream.Write of {write_name}"))?
            .into_inner();
        let write_seconds = start.elapsed().as_secs_f64();
        let expected = match options.compressor {
            Compressor::Identity => response.committed_size == digest.size() as i64,
            // The REAPI lets a server answer -1 or the compressed size here.
            Compressor::Zstd => response.committed_size == -1 || response.committed_size == wire_bytes as i64,
        };
        if !expected {
            bail!("ByteStream.Write of {write_name}: committed_size {}", response.committed_size);
        }

        let read_name = ResourceName::read(&options.instance_name, digest, options.compressor).to_string();
        let start = Instant::now();
        let chunks = read_all(&mut client, read_name.clone()).await?;
        let read_seconds = start.elapsed().as_secs_f64();
        let read_wire: u64 = chunks.iter().map(|c| c.len() as u64).sum();
        let actual = digest_of_read(&options, &chunks)?;
        if actual != digest {
            bail!("ByteStream.Read of {read_name} returned data whose digest is {actual}");
        }
        drop(chunks);

        let repeat = Repeat {
            digest: digest.to_string(),
            wire_bytes,
            write_seconds,
            read_seconds,
            write_mb_per_s: mb_per_s(options.size, write_seconds),
            read_mb_per_s: mb_per_s(options.size, read_seconds),
            write_wire_mb_per_s: mb_per_s(wire_bytes, write_seconds),
            read_wire_mb_per_s: mb_per_s(read_wire, read_seconds),
        };
        eprintln!(
            "repeat {}: write {:.0} MB/s ({:.3} s), read {:.0} MB/s ({:.3} s)",
            round + 1,
            repeat.write_mb_per_s,
            write_seconds,
            repeat.read_mb_per_s,
            read_seconds
        );
        repeats.push(repeat);
    }
    let writes: Vec<f64> = repeats.iter().map(|r| r.write_mb_per_s).collect();
    let reads: Vec<f64> = repeats.iter().map(|r| r.read_mb_per_s).collect();
    Ok(ByteStreamReport {
        benchmark: "bytestream",
        endpoint: options.channel.endpoint.clone(),
        digest_function: options.digest_function.to_string(),
        compressor: compressor_name(options.compressor),
        size_bytes: options.size,
        chunk_bytes: options.chunk,
        max_frame_size: options.channel.max_frame_size,
        median_write_mb_per_s: median(&writes),
        median_read_mb_per_s: median(&reads),
        repeats,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn write_requests_carry_offsets_and_finish_once() {
        let requests = write_requests("name".into(), vec![vec![0; 3], vec![0; 3], vec![0; 1]]);
        let offsets: Vec<i64> = requests.iter().map(|r| r.write_offset).collect();
        assert_eq!(offsets, [0, 3, 6]);
        assert_eq!(requests[0].resource_name, "name");
        assert!(requests[1..].iter().all(|r| r.resource_name.is_empty()));
        let finished: Vec<bool> = requests.iter().map(|r| r.finish_write).collect();
        assert_eq!(finished, [false, false, true]);
        let empty = write_requests("name".into(), Vec::new());
        assert_eq!(empty.len(), 1);
        assert!(empty[0].finish_write && empty[0].data.is_empty());
    }

    #[test]
    fn zstd_blobs_read_back_to_their_digest() {
        let options = ByteStreamOptions {
            channel: ChannelOptions { endpoint: String::new(), max_frame_size: None },
            instance_name: String::new(),
            digest_function: DigestFunction::Blake3,
            size: 100_000,
            chunk: 4096,
            repeat: 1,
            compressor: Compressor::Zstd,
            seed: 5,
        };
        let prepared = prepare(&options, 5).unwrap();
        let wire: u64 = prepared.wire.iter().map(|c| c.len() as u64).sum();
        assert!(wire < 100_000);
        assert_eq!(digest_of_read(&options, &prepared.wire).unwrap(), prepared.digest);
    }
}
