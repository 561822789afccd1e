//! Untimed set-up uploads: blobs in as few BatchUpdateBlobs calls as the
//! server's batch limit allows.

use anyhow::{bail, Context};
use memobuild_proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use memobuild_proto::reapi::{batch_update_blobs_request, BatchUpdateBlobsRequest};
use memobuild_proto::{reapi, Digest, DigestFunction};

use crate::connection::{self, Channel};

/// The batch limit assumed when the server does not say (the common default).
const DEFAULT_BATCH_BYTES: u64 = 4 << 20;
/// Room left in a batch for the framing around the blobs' bytes.
const BATCH_OVERHEAD: u64 = 64 << 10;
/// Protobuf bytes per entry besides the data (digest, tags, lengths).
pub const ENTRY_OVERHEAD: u64 = 96;

/// Bytes of blob data (plus [`ENTRY_OVERHEAD`] each) one BatchUpdateBlobs
/// call may carry: the server's advertised limit, at most 4 MiB, minus
/// framing, and never less than one entry of `largest_blob` bytes. Also
/// checks that the server lists `function`.
pub async fn batch_limit(
    channel: Channel,
    instance_name: &str,
    function: DigestFunction,
    largest_blob: u64,
) -> anyhow::Result<u64> {
    let limit = match connection::capabilities(channel, instance_name).await? {
        Some(caps) => {
            let cache = caps.cache_capabilities.unwrap_or_default();
            if !cache.digest_functions.is_empty() && !cache.digest_functions.contains(&function.to_proto()) {
                bail!("the server does not list {function} among its digest functions");
            }
            match u64::try_from(cache.max_batch_total_size_bytes) {
                Ok(0) | Err(_) => DEFAULT_BATCH_BYTES,
                Ok(n) => n.min(DEFAULT_BATCH_BYTES),
            }
        }
        None => DEFAULT_BATCH_BYTES,
    };
    Ok(limit.saturating_sub(BATCH_OVERHEAD).max(largest_blob + ENTRY_OVERHEAD))
}

/// Where the blobs go.
pub struct Uploader<'a> {
    pub client: &'a mut ContentAddressableStorageClient<Channel>,
    pub instance_name: &'a str,
    pub function: DigestFunction,
    pub batch_limit: u64,
}

impl Uploader<'_> {
    /// Uploads `blobs`; returns the number of BatchUpdateBlobs calls made.
    pub async fn upload(&mut self, blobs: &[(Digest, &[u8])]) -> anyhow::Result<usize> {
        let mut batches = 0;
        let mut pending: Vec<batch_update_blobs_request::Request> = Vec::new();
        let mut pending_bytes = 0u64;
        for (digest, data) in blobs {
            let bytes = data.len() as u64 + ENTRY_OVERHEAD;
            if !pending.is_empty() && pending_bytes + bytes > self.batch_limit {
                self.send(std::mem::take(&mut pending)).await?;
                batches += 1;
                pending_bytes = 0;
            }
            pending.push(batch_update_blobs_request::Request {
                digest: Some(digest.to_proto()),
                data: data.to_vec(),
                compressor: reapi::compressor::Value::Identity as i32,
            });
            pending_bytes += bytes;
        }
        if !pending.is_empty() {
            self.send(pending).await?;
            batches += 1;
        }
        Ok(batches)
    }

    async fn send(&mut self, requests: Vec<batch_update_blobs_request::Request>) -> anyhow::Result<()> {
        let count = requests.len();
        let request = BatchUpdateBlobsRequest {
            instance_name: self.instance_name.to_string(),
            requests,
            digest_function: self.function.to_proto(),
        };
        let response = self
            .client
            .batch_update_blobs(request)
            .await
            .with_context(|| format!("BatchUpdateBlobs of {count} blobs"))?
            .into_inner();
        if response.responses.len() != count {
            bail!("BatchUpdateBlobs of {count} blobs answered for {}", response.responses.len());
        }
        for entry in response.responses {
            let status = entry.status.unwrap_or_default();
            if status.code != 0 {
                let digest = entry.digest.unwrap_or_default();
                bail!(
                    "BatchUpdateBlobs: blob {}/{} failed with code {}: {}",
                    digest.hash,
                    digest.size_bytes,
                    status.code,
                    status.message
                );
            }
        }
        Ok(())
    }
}
