use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{DisplayErrorContext, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use memobuild_proto::{Digest, Error, Result};
use tokio::task::JoinSet;
use tonic::Code;

use crate::blob_store::{BlobStore, BlobStream, ByteRange};
use crate::s3_settings::{S3Settings, MIN_PART_BYTES};

/// Blobs as objects in one S3 bucket, one object per blob under
/// `{key_prefix}{function}/{hash}-{size}`.
///
/// Small blobs are sent in one PUT; larger ones (past
/// `multipart_threshold_bytes`) as a multipart upload whose parts go up in
/// parallel. Either way an object appears whole or not at all: a stream that
/// fails stores nothing and a failed multipart upload is aborted. Reads are
/// ranged GETs. Every request is retried with exponential backoff and jitter
/// (the SDK's standard retry mode).
pub struct S3Store {
    client: Client,
    bucket: String,
    settings: S3Settings,
}

/// What an S3 request was doing, for error messages that name the blob,
/// bucket and key.
struct Request<'a> {
    what: &'static str,
    digest: &'a Digest,
    bucket: &'a str,
    key: &'a str,
}

impl Request<'_> {
    fn describe(&self) -> String {
        format!("S3 {} of blob {} (bucket {}, key {})", self.what, self.digest.subject(), self.bucket, self.key)
    }

    fn failed<E: std::error::Error + 'static>(&self, e: SdkError<E, HttpResponse>) -> Error {
        let message = format!("{}: {}", self.describe(), DisplayErrorContext(&e));
        match http_status(&e) {
            Some(404) => Error::not_found(message),
            Some(403) => Error::new(Code::PermissionDenied, message),
            Some(416) => Error::out_of_range(message),
            _ => Error::unavailable(message),
        }
    }

    fn not_found(&self) -> Error {
        Error::not_found(format!(
            "blob {} not found in S3 (bucket {}, key {})",
            self.digest.subject(),
            self.bucket,
            self.key
        ))
    }
}

fn http_status<E>(e: &SdkError<E, HttpResponse>) -> Option<u16> {
    e.raw_response().map(|r| r.status().as_u16())
}

impl S3Store {
    /// A store on `bucket`, with credentials from the standard AWS chain.
    pub async fn connect(bucket: String, settings: S3Settings) -> Result<Self> {
        Self::connect_with(bucket, settings, None).await
    }

    /// A store on `bucket`; `credentials`, when given, replace the chain.
    pub async fn connect_with(bucket: String, settings: S3Settings, credentials: Option<Credentials>) -> Result<Self> {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(region) = settings.region.as_ref().filter(|r| !r.is_empty()) {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(credentials) = credentials {
            loader = loader.credentials_provider(credentials);
        }
        let shared = loader.load().await;
        let retry = RetryConfig::standard()
            .with_max_attempts(settings.max_attempts.max(1))
            .with_initial_backoff(Duration::from_millis(100))
            .with_max_backoff(Duration::from_secs(5));
        let mut config = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(settings.path_style)
            .retry_config(retry)
            .timeout_config(TimeoutConfig::builder().connect_timeout(Duration::from_secs(5)).build())
            // Content is verified against its digest above this store; the
            // optional checksums only make some S3-compatible servers refuse requests.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if shared.region().is_none() {
            config = config.region(Region::new("us-east-1"));
        }
        if let Some(endpoint) = settings.endpoint.as_ref().filter(|e| !e.is_empty()) {
            config = config.endpoint_url(endpoint.clone());
        }
        let store = S3Store { client: Client::from_conf(config.build()), bucket, settings };
        if store.settings.create_bucket {
            store.create_bucket().await?;
        }
        Ok(store)
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Creates the bucket unless it exists.
    pub async fn create_bucket(&self) -> Result<()> {
        let exists = self.client.head_bucket().bucket(&self.bucket).send().await;
        match exists {
            Ok(_) => return Ok(()),
            Err(e) if http_status(&e) == Some(404) => {}
            Err(e) => {
                return Err(Error::unavailable(format!(
                    "S3 bucket {}: checking that it exists: {}",
                    self.bucket,
                    DisplayErrorContext(&e)
                )))
            }
        }
        match self.client.create_bucket().bucket(&self.bucket).send().await {
            Ok(_) => Ok(()),
            // Another replica created it meanwhile.
            Err(e) if http_status(&e) == Some(409) => Ok(()),
            Err(e) => {
                Err(Error::unavailable(format!("S3 bucket {}: creating it: {}", self.bucket, DisplayErrorContext(&e))))
            }
        }
    }

    fn key(&self, digest: &Digest) -> String {
        format!("{}{}/{}-{}", self.settings.key_prefix, digest.function().name(), digest.hex(), digest.size())
    }

    fn request<'a>(&'a self, what: &'static str, digest: &'a Digest, key: &'a str) -> Request<'a> {
        Request { what, digest, bucket: &self.bucket, key }
    }

    /// The object's size, or `None` when there is none.
    async fn head(&self, digest: &Digest, key: &str) -> Result<Option<u64>> {
        match self.client.head_object().bucket(&self.bucket).key(key).send().await {
            Ok(head) => Ok(Some(head.content_length().unwrap_or(0).max(0) as u64)),
            Err(e) if http_status(&e) == Some(404) => Ok(None),
            Err(e) => Err(self.request("HEAD", digest, key).failed(e)),
        }
    }

    async fn put_single(&self, digest: &Digest, key: &str, data: Bytes) -> Result<()> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(ByteStream::from(data))
            .send()
            .await
            .map_err(|e| self.request("PUT", digest, key).failed(e))?;
        Ok(())
    }

    async fn put_multipart(&self, digest: &Digest, key: &str, head: BytesMut, rest: BlobStream) -> Result<()> {
        let request = self.request("multipart upload", digest, key);
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| request.failed(e))?;
        let upload_id = created
            .upload_id()
            .ok_or_else(|| Error::unavailable(format!("{}: the server gave no upload id", request.describe())))?
            .to_string();
        let completed = match self.upload_parts(digest, key, &upload_id, head, rest).await {
            Ok(parts) => self
                .client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(&upload_id)
                .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
                .send()
                .await
                .map_err(|e| request.failed(e)),
            Err(e) => Err(e),
        };
        let Err(e) = completed else { return Ok(()) };
        let aborted =
            self.client.abort_multipart_upload().bucket(&self.bucket).key(key).upload_id(&upload_id).send().await;
        if let Err(abort) = aborted {
            tracing::warn!(bucket = %self.bucket, key, error = %DisplayErrorContext(&abort), "aborting a failed multipart upload failed");
        }
        Err(e)
    }

    /// Cuts `head` and then `rest` into parts and uploads them, at most
    /// `part_concurrency` at once, while the next part is being read.
    async fn upload_parts(
        &self,
        digest: &Digest,
        key: &str,
        upload_id: &str,
        mut buf: BytesMut,
        mut rest: BlobStream,
    ) -> Result<Vec<CompletedPart>> {
        let part_bytes = self.settings.part_bytes.max(MIN_PART_BYTES) as usize;
        let mut in_flight: JoinSet<Result<CompletedPart>> = JoinSet::new();
        let mut parts = Vec::new();
        let mut number = 0;
        let mut ended = false;
        loop {
            while buf.len() < part_bytes && !ended {
                match rest.next().await {
                    Some(chunk) => buf.extend_from_slice(&chunk?),
                    None => ended = true,
                }
            }
            if buf.is_empty() {
                break;
            }
            let part = buf.split_to(part_bytes.min(buf.len())).freeze();
            number += 1;
            if in_flight.len() >= self.settings.part_concurrency.max(1) {
                parts.push(self.joined(digest, key, in_flight.join_next().await)?);
            }
            let send = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(number)
                .body(ByteStream::from(part))
                .send();
            let describe = self.request("upload of a part", digest, key).describe();
            in_flight.spawn(async move {
                let uploaded = send.await.map_err(|e| {
                    Error::unavailable(format!("{describe} (part {number}): {}", DisplayErrorContext(&e)))
                })?;
                Ok(CompletedPart::builder().part_number(number).set_e_tag(uploaded.e_tag().map(str::to_string)).build())
            });
        }
        while let Some(joined) = in_flight.join_next().await {
            parts.push(self.joined(digest, key, Some(joined))?);
        }
        parts.sort_by_key(|p| p.part_number());
        Ok(parts)
    }

    fn joined(
        &self,
        digest: &Digest,
        key: &str,
        joined: Option<std::result::Result<Result<CompletedPart>, tokio::task::JoinError>>,
    ) -> Result<CompletedPart> {
        match joined {
            Some(Ok(part)) => part,
            Some(Err(e)) => {
                Err(Error::internal(format!("{}: {e}", self.request("upload of a part", digest, key).describe())))
            }
            None => {
                Err(Error::internal(format!("{}: no part in flight", self.request("upload", digest, key).describe())))
            }
        }
    }
}

/// The response body as a blob stream; a transfer error ends it.
fn body_stream(body: ByteStream, describe: String) -> BlobStream {
    let describe = Arc::<str>::from(describe);
    futures::stream::unfold(Some(body), move |body| {
        let describe = describe.clone();
        async move {
            let mut body = body?;
            match body.try_next().await {
                Ok(Some(chunk)) => Some((Ok(chunk), Some(body))),
                Ok(None) => None,
                Err(e) => Some((Err(Error::unavailable(format!("{describe}: reading the body: {e}"))), None)),
            }
        }
    })
    .boxed()
}

#[async_trait]
impl BlobStore for S3Store {
    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>> {
        let present: Vec<Result<bool>> = futures::stream::iter(digests.iter().copied())
            .map(|digest| async move { Ok(self.head(&digest, &self.key(&digest)).await?.is_some()) })
            .buffered(self.settings.head_concurrency.max(1))
            .collect()
            .await;
        let mut missing = Vec::new();
        for (digest, present) in digests.iter().zip(present) {
            if !present? {
                missing.push(*digest);
            }
        }
        Ok(missing)
    }

    async fn get(&self, digest: &Digest, range: ByteRange) -> Result<BlobStream> {
        let key = self.key(digest);
        let request = self.request("GET", digest, &key);
        let empty = || futures::stream::empty().boxed();
        if range.limit == Some(0) {
            // HTTP cannot ask for no bytes: check existence and bounds instead.
            let size = self.head(digest, &key).await?.ok_or_else(|| request.not_found())?;
            range.bounds(digest, size)?;
            return Ok(empty());
        }
        let mut get = self.client.get_object().bucket(&self.bucket).key(&key);
        if range != ByteRange::ALL {
            let end = range.limit.map(|limit| (range.offset + limit - 1).to_string()).unwrap_or_default();
            get = get.range(format!("bytes={}-{end}", range.offset));
        }
        match get.send().await {
            Ok(object) => {
                if range != ByteRange::ALL && object.content_range().is_none() {
                    return Err(Error::unavailable(format!(
                        "{}: the server ignored the byte range {}-",
                        request.describe(),
                        range.offset
                    )));
                }
                Ok(body_stream(object.body, request.describe()))
            }
            Err(e) if http_status(&e) == Some(404) => Err(request.not_found()),
            Err(e) if http_status(&e) == Some(416) => {
                // At or past the end: an empty read at the very end, else OUT_OF_RANGE.
                let size = self.head(digest, &key).await?.ok_or_else(|| request.not_found())?;
                range.bounds(digest, size)?;
                Ok(empty())
            }
            Err(e) => Err(request.failed(e)),
        }
    }

    async fn put(&self, digest: &Digest, mut data: BlobStream) -> Result<()> {
        let key = self.key(digest);
        let threshold = self.settings.multipart_threshold_bytes.max(MIN_PART_BYTES) as usize;
        let mut buf = BytesMut::new();
        while buf.len() <= threshold {
            match data.next().await {
                Some(chunk) => buf.extend_from_slice(&chunk?),
                None => return self.put_single(digest, &key, buf.freeze()).await,
            }
        }
        self.put_multipart(digest, &key, buf, data).await
    }

    async fn delete(&self, digest: &Digest) -> Result<bool> {
        let key = self.key(digest);
        if self.head(digest, &key).await?.is_none() {
            return Ok(false);
        }
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(&key)
            .send()
            .await
            .map_err(|e| self.request("DELETE", digest, &key).failed(e))?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::test_services;
    use memobuild_proto::DigestFunction;

    #[tokio::test]
    async fn conformance_against_real_s3() {
        let store = test_services::s3_store(S3Settings::default()).await;
        crate::conformance::run(&store).await;
    }

    #[tokio::test]
    async fn large_blobs_go_up_in_parallel_parts_and_come_back_whole() {
        let settings = S3Settings {
            multipart_threshold_bytes: MIN_PART_BYTES,
            part_bytes: MIN_PART_BYTES,
            part_concurrency: 3,
            ..S3Settings::default()
        };
        let store = test_services::s3_store(settings).await;
        let data: Bytes = (0..(17 << 20) + 123).map(|i: u32| (i % 251) as u8).collect();
        let digest = Digest::of(DigestFunction::Sha256, &data);
        let chunks: Vec<Result<Bytes>> =
            (0..data.len()).step_by(1 << 20).map(|i| Ok(data.slice(i..(i + (1 << 20)).min(data.len())))).collect();
        store.put(&digest, futures::stream::iter(chunks).boxed()).await.unwrap();
        assert_eq!(store.get_bytes(&digest).await.unwrap(), data);
        let tail = crate::collect(store.get(&digest, ByteRange::new(16 << 20, None)).await.unwrap()).await.unwrap();
        assert_eq!(tail, data.slice(16 << 20..));

        // A stream that fails after two parts leaves nothing behind.
        let (other, other_data) = {
            let d: Bytes = data.slice(1..);
            (Digest::of(DigestFunction::Sha256, &d), d)
        };
        let failing =
            futures::stream::iter([Ok(other_data.slice(..12 << 20)), Err(Error::unavailable("client went away"))])
                .boxed();
        let e = store.put(&other, failing).await.unwrap_err();
        assert!(e.message().contains("client went away"), "{e}");
        assert_eq!(store.find_missing(&[other]).await.unwrap(), vec![other]);
    }

    #[tokio::test]
    async fn errors_name_the_bucket_and_key() {
        let settings = S3Settings { max_attempts: 1, ..S3Settings::default() };
        let store = test_services::s3_store_on("no-such-bucket-for-memobuild", settings).await;
        let digest = Digest::of(DigestFunction::Sha256, b"x");
        let e = store.put_bytes(&digest, Bytes::from_static(b"x")).await.unwrap_err();
        assert!(e.message().contains("no-such-bucket-for-memobuild"), "{e}");
        assert!(e.message().contains(&digest.hex()), "{e}");
    }
}
