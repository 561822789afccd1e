use std::collections::{BTreeMap, HashSet};

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use memobuild_proto::bytestream::byte_stream_client::ByteStreamClient;
use memobuild_proto::bytestream::{ReadRequest, WriteRequest, WriteResponse};
use memobuild_proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use memobuild_proto::reapi::{self, batch_update_blobs_request, BatchUpdateBlobsRequest, FindMissingBlobsRequest};
use memobuild_proto::{Compressor, Digest, DigestFunction, Error, ResourceName, Result, ResultExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

use crate::blob_store::{BlobStore, BlobStream, ByteRange};
use crate::grpc_channel::{grpc_channel_with, ClientCredentials, GrpcChannel};

/// Digests per FindMissingBlobs request.
const FIND_MISSING_BATCH: usize = 10_000;
/// FindMissingBlobs requests in flight at once for one call.
const FIND_MISSING_CONCURRENCY: usize = 4;
/// Blobs up to this size go in one BatchUpdateBlobs; larger ones through
/// ByteStream.Write.
const MAX_BATCH_BLOB: usize = 1 << 20;
/// The largest `data` of one WriteRequest.
const WRITE_CHUNK: usize = 1 << 20;
/// WriteRequests buffered between the blob stream and the gRPC stream.
const WRITE_BUFFER: usize = 2;
/// The largest gRPC message sent or accepted.
const MAX_MESSAGE: usize = 64 << 20;

/// A remote REAPI CAS (ours or any other) reached over gRPC: how workers
/// and schedulers in a cluster reach the CAS role.
///
/// Lookups use FindMissingBlobs, reads ByteStream.Read, and writes
/// BatchUpdateBlobs (up to 1 MiB) or a streamed ByteStream.Write. The
/// remote verifies what it stores and evicts on its own, so `delete` is
/// refused and `usage` is unknown.
pub struct GrpcStore {
    cas: ContentAddressableStorageClient<GrpcChannel>,
    bytestream: ByteStreamClient<GrpcChannel>,
    instance_name: String,
    /// The endpoint (and instance) as error messages name it.
    remote: String,
}

impl GrpcStore {
    /// A store for `endpoint` (`grpc://host:port` or `http://host:port`).
    /// The channel connects lazily, on first use, and reconnects as needed.
    /// Must be called within a Tokio runtime.
    pub fn connect(endpoint: &str, instance_name: &str) -> Result<Self> {
        Self::connect_with(endpoint, instance_name, &ClientCredentials::default())
    }

    /// [`GrpcStore::connect`] presenting `credentials` (`grpcs://` for TLS).
    pub fn connect_with(endpoint: &str, instance_name: &str, credentials: &ClientCredentials) -> Result<Self> {
        let channel = grpc_channel_with(endpoint, credentials)?;
        Ok(Self::with_remote(channel, instance_name, endpoint))
    }

    /// A store over an existing channel.
    pub fn new(channel: impl Into<GrpcChannel>, instance_name: &str) -> Self {
        Self::with_remote(channel.into(), instance_name, "the remote CAS")
    }

    fn with_remote(channel: GrpcChannel, instance_name: &str, endpoint: &str) -> Self {
        let remote = if instance_name.is_empty() {
            endpoint.to_string()
        } else {
            format!("{endpoint} (instance {instance_name:?})")
        };
        GrpcStore {
            cas: ContentAddressableStorageClient::new(channel.clone())
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
            bytestream: ByteStreamClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
            instance_name: instance_name.to_string(),
            remote,
        }
    }

    /// One FindMissingBlobs of digests of one function.
    async fn find_missing_batch(&self, function: DigestFunction, batch: Vec<reapi::Digest>) -> Result<Vec<Digest>> {
        let (count, first) = (batch.len(), batch.first().cloned());
        let context = || {
            let first = first.as_ref().map(|d| format!(", first {}/{}", d.hash, d.size_bytes)).unwrap_or_default();
            format!("finding which of {count} {function} blobs{first} {} is missing", self.remote)
        };
        let request = FindMissingBlobsRequest {
            instance_name: self.instance_name.clone(),
            blob_digests: batch,
            digest_function: function.to_proto(),
        };
        let response = self.cas.clone().find_missing_blobs(request).await.with_context(context)?.into_inner();
        response
            .missing_blob_digests
            .iter()
            .map(|d| Digest::from_proto(function, d))
            .collect::<Result<Vec<_>>>()
            .with_context(context)
    }

    /// Stores a blob held in memory with one BatchUpdateBlobs.
    async fn batch_update(&self, digest: &Digest, data: Vec<u8>) -> Result<()> {
        let request = BatchUpdateBlobsRequest {
            instance_name: self.instance_name.clone(),
            requests: vec![batch_update_blobs_request::Request {
                digest: Some(digest.to_proto()),
                data,
                compressor: Compressor::Identity.to_proto(),
            }],
            digest_function: digest.function().to_proto(),
        };
        let context = || format!("writing {} to {}", digest.subject(), self.remote);
        let response = self.cas.clone().batch_update_blobs(request).await.with_context(context)?.into_inner();
        let wanted = digest.to_proto();
        let entry = response.responses.into_iter().find(|r| r.digest.as_ref() == Some(&wanted)).ok_or_else(|| {
            Error::internal("the BatchUpdateBlobs response has no status for the blob").context(context())
        })?;
        match entry.status.as_ref().and_then(Error::from_rpc_status) {
            None => Ok(()),
            Some(e) if e.code() == Code::AlreadyExists => Ok(()),
            Some(e) => Err(e.context(context())),
        }
    }

    /// Streams a blob through ByteStream.Write. When `data` fails, the
    /// gRPC stream is reset (never half-closed), so the server stores
    /// nothing.
    async fn stream_write(&self, digest: &Digest, data: BlobStream) -> Result<()> {
        let upload_id = uuid::Uuid::new_v4().to_string();
        let name = ResourceName::write(&self.instance_name, &upload_id, *digest, Compressor::Identity).to_string();
        let (tx, rx) = mpsc::channel(WRITE_BUFFER);
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        let cancel = request.cancellation_handle();
        let mut client = self.bytestream.clone();
        let call = client.write(request);
        tokio::pin!(call);
        let sent = {
            let send = send_chunks(data, &tx, name);
            tokio::pin!(send);
            tokio::select! {
                // The server may answer before reading everything: the blob
                // is already there, or it rejected the write.
                response = &mut call => return self.write_result(digest, response),
                sent = &mut send => sent,
            }
        };
        match sent {
            Ok(()) => {
                drop(tx);
                self.write_result(digest, call.await)
            }
            Err(e) => {
                // `tx` is still alive, so the request stream has not ended:
                // cancelling resets it rather than finishing it.
                cancel.cancel();
                Err(e.context(format!("writing {} to {}", digest.subject(), self.remote)))
            }
        }
    }

    fn write_result(
        &self,
        digest: &Digest,
        response: Result<tonic::Response<WriteResponse>, tonic::Status>,
    ) -> Result<()> {
        let result = match response {
            Ok(response) if response.get_ref().committed_size == digest.size() as i64 => Ok(()),
            Ok(response) => Err(Error::internal(format!(
                "the server committed {} bytes, expected {}",
                response.get_ref().committed_size,
                digest.size()
            ))),
            Err(status) if status.code() == Code::AlreadyExists => Ok(()),
            Err(status) => Err(Error::from(status)),
        };
        result.with_context(|| format!("writing {} to {}", digest.subject(), self.remote))
    }
}

/// A small blob read whole into memory, or the stream of a larger one.
enum Collected {
    Whole(Vec<u8>),
    Larger(BlobStream),
}

/// Reads `data` into memory while it stays within `limit` bytes.
async fn collect_up_to(mut data: BlobStream, limit: usize) -> Result<Collected> {
    let mut buf = Vec::new();
    while let Some(chunk) = data.next().await {
        let chunk = chunk?;
        if buf.len() + chunk.len() > limit {
            let head = futures::stream::iter([Ok(Bytes::from(buf)), Ok(chunk)]);
            return Ok(Collected::Larger(head.chain(data).boxed()));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Collected::Whole(buf))
}

/// The WriteRequests of one upload, in order.
struct WriteMessages {
    /// Sent on the first request only.
    resource_name: String,
    offset: i64,
}

impl WriteMessages {
    fn next(&mut self, data: Vec<u8>, finish_write: bool) -> WriteRequest {
        let request = WriteRequest {
            resource_name: std::mem::take(&mut self.resource_name),
            write_offset: self.offset,
            finish_write,
            data,
        };
        self.offset += request.data.len() as i64;
        request
    }
}

/// Sends `data` as WriteRequests of at most [`WRITE_CHUNK`] bytes, the last
/// one with `finish_write`. Fails only when `data` does; stops early, with
/// success, when the gRPC stream is gone (its outcome tells the rest).
async fn send_chunks(mut data: BlobStream, tx: &mpsc::Sender<WriteRequest>, resource_name: String) -> Result<()> {
    let mut messages = WriteMessages { resource_name, offset: 0 };
    let mut buf = Vec::new();
    while let Some(chunk) = data.next().await {
        let mut chunk = chunk?;
        while !chunk.is_empty() {
            if buf.len() == WRITE_CHUNK {
                let full = std::mem::take(&mut buf);
                if tx.send(messages.next(full, false)).await.is_err() {
                    return Ok(());
                }
            }
            let take = (WRITE_CHUNK - buf.len()).min(chunk.len());
            buf.extend_from_slice(&chunk.split_to(take));
        }
    }
    // An error here means the server already answered; the caller reads it.
    let _ = tx.send(messages.next(buf, true)).await;
    Ok(())
}

#[async_trait]
impl BlobStore for GrpcStore {
    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>> {
        let mut seen = HashSet::new();
        let mut by_function: BTreeMap<DigestFunction, Vec<reapi::Digest>> = BTreeMap::new();
        for digest in digests {
            if seen.insert(*digest) {
                by_function.entry(digest.function()).or_default().push(digest.to_proto());
            }
        }
        let mut batches = Vec::new();
        for (function, mut group) in by_function {
            while !group.is_empty() {
                let rest = group.split_off(group.len().min(FIND_MISSING_BATCH));
                batches.push((function, std::mem::replace(&mut group, rest)));
            }
        }
        let missing: Vec<Vec<Digest>> = futures::stream::iter(batches)
            .map(|(function, batch)| self.find_missing_batch(function, batch))
            .buffer_unordered(FIND_MISSING_CONCURRENCY)
            .try_collect()
            .await?;
        let missing: HashSet<Digest> = missing.into_iter().flatten().collect();
        Ok(digests.iter().filter(|d| missing.contains(d)).copied().collect())
    }

    async fn get(&self, digest: &Digest, range: ByteRange) -> Result<BlobStream> {
        let context = format!("reading {} from {}", digest.subject(), self.remote);
        let read_offset = i64::try_from(range.offset)
            .map_err(|_| Error::out_of_range(format!("offset {} is past its end", range.offset)))
            .context(&context)?;
        // A read_limit of 0 means "no limit": to read nothing, read a byte
        // (for the errors) and return none.
        let (read_limit, nothing) = match range.limit {
            None => (0, false),
            Some(0) => (1, true),
            Some(limit) => (i64::try_from(limit).unwrap_or(i64::MAX), false),
        };
        let request = ReadRequest {
            resource_name: ResourceName::read(&self.instance_name, *digest, Compressor::Identity).to_string(),
            read_offset,
            read_limit,
        };
        let mut responses = self.bytestream.clone().read(request).await.context(&context)?.into_inner();
        // Servers may send NOT_FOUND or OUT_OF_RANGE as the first message
        // rather than as the response: wait for it, so that `get` fails.
        let first = responses.message().await.context(&context)?;
        if nothing {
            return Ok(futures::stream::empty().boxed());
        }
        let first = futures::stream::iter(first.map(|r| Ok(Bytes::from(r.data))));
        let rest = responses.map(move |r| r.map(|r| Bytes::from(r.data)).map_err(|e| Error::from(e).context(&context)));
        Ok(first.chain(rest).try_filter(|chunk| futures::future::ready(!chunk.is_empty())).boxed())
    }

    async fn put(&self, digest: &Digest, data: BlobStream) -> Result<()> {
        let data = if digest.size() <= MAX_BATCH_BLOB as u64 {
            let collected = collect_up_to(data, MAX_BATCH_BLOB)
                .await
                .with_context(|| format!("writing {} to {}", digest.subject(), self.remote))?;
            match collected {
                Collected::Whole(bytes) => return self.batch_update(digest, bytes).await,
                Collected::Larger(stream) => stream,
            }
        } else {
            data
        };
        self.stream_write(digest, data).await
    }

    async fn delete(&self, digest: &Digest) -> Result<bool> {
        Err(Error::new(
            Code::Unimplemented,
            format!(
                "cannot delete {} from {}: the REAPI has no delete; a remote CAS manages its own eviction",
                digest.subject(),
                self.remote
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream_of(chunks: Vec<Result<Bytes>>) -> BlobStream {
        futures::stream::iter(chunks).boxed()
    }

    #[test]
    fn connect_rejects_bad_endpoints_by_name() {
        for (endpoint, reason) in [
            ("ftp://cas:8980", "unsupported scheme \"ftp\""),
            ("cas:8980", "expected grpc://host:port"),
            ("grpc://bad host", "endpoint \"grpc://bad host\""),
        ] {
            let e = GrpcStore::connect(endpoint, "").err().unwrap();
            assert_eq!(e.code(), Code::InvalidArgument, "{endpoint}: {e}");
            assert!(e.message().contains(endpoint) && e.message().contains(reason), "{endpoint}: {e}");
        }
        let e = GrpcStore::connect("grpc://localhost:1", "").err().unwrap();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
        assert!(e.message().contains("Tokio runtime"), "{e}");
    }

    #[tokio::test]
    async fn unreachable_endpoint_is_named() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let endpoint = format!("grpc://{addr}");
        let store = GrpcStore::connect(&endpoint, "ci").unwrap();
        let digest = Digest::of(DigestFunction::Sha256, b"x");
        let e = store.get_bytes(&digest).await.unwrap_err();
        assert!(e.message().contains(&endpoint), "{e}");
        assert!(e.message().contains(&digest.hex()), "{e}");
        assert!(e.message().contains("\"ci\""), "{e}");
        let e = store.delete(&digest).await.unwrap_err();
        assert_eq!(e.code(), Code::Unimplemented);
        assert!(store.usage().is_none());
    }

    #[tokio::test]
    async fn small_streams_are_collected_and_large_ones_kept_whole() {
        let chunks = vec![Ok(Bytes::from_static(b"abc")), Ok(Bytes::from_static(b"de"))];
        match collect_up_to(stream_of(chunks.clone()), 5).await.unwrap() {
            Collected::Whole(bytes) => assert_eq!(bytes, b"abcde"),
            Collected::Larger(_) => panic!("5 bytes fit in 5"),
        }
        match collect_up_to(stream_of(chunks), 4).await.unwrap() {
            Collected::Larger(stream) => assert_eq!(crate::collect(stream).await.unwrap(), "abcde"),
            Collected::Whole(_) => panic!("5 bytes do not fit in 4"),
        }
        let failing = stream_of(vec![Ok(Bytes::from_static(b"a")), Err(Error::unavailable("gone"))]);
        assert!(collect_up_to(failing, 10).await.is_err());
    }

    #[tokio::test]
    async fn writes_are_bounded_chunks_with_one_finish() {
        let data: Vec<u8> = (0..WRITE_CHUNK * 2 + 5).map(|i| i as u8).collect();
        let pieces: Vec<Result<Bytes>> =
            data.chunks(300_000).map(|c| Ok(Bytes::copy_from_slice(c))).chain([Ok(Bytes::new())]).collect();
        let (tx, mut rx) = mpsc::channel(16);
        send_chunks(stream_of(pieces), &tx, "name".into()).await.unwrap();
        drop(tx);
        let mut requests = Vec::new();
        while let Some(r) = rx.recv().await {
            requests.push(r);
        }
        let sizes: Vec<usize> = requests.iter().map(|r| r.data.len()).collect();
        assert_eq!(sizes, vec![WRITE_CHUNK, WRITE_CHUNK, 5]);
        let offsets: Vec<i64> = requests.iter().map(|r| r.write_offset).collect();
        assert_eq!(offsets, vec![0, WRITE_CHUNK as i64, 2 * WRITE_CHUNK as i64]);
        let finishes: Vec<bool> = requests.iter().map(|r| r.finish_write).collect();
        assert_eq!(finishes, vec![false, false, true]);
        let names: Vec<&str> = requests.iter().map(|r| r.resource_name.as_str()).collect();
        assert_eq!(names, vec!["name", "", ""]);
        assert_eq!(requests.into_iter().flat_map(|r| r.data).collect::<Vec<_>>(), data);
    }

    /// Serves one HTTP/2 request on `listener` and reports how its body
    /// ended: `Some(reason)` when the client reset the stream, `None` when
    /// it closed it. A bare HTTP/2 server, since tonic's server reports a
    /// client's reset as the end of the request stream. Signals `received`
    /// once more than one WriteRequest's worth of bytes arrived.
    async fn observe_request_end(
        listener: tokio::net::TcpListener,
        received: tokio::sync::oneshot::Sender<()>,
    ) -> Option<h2::Reason> {
        let (socket, _) = listener.accept().await.unwrap();
        let mut connection = h2::server::handshake(socket).await.unwrap();
        let (request, _respond) = connection.accept().await.unwrap().unwrap();
        let driver = tokio::spawn(async move { while connection.accept().await.is_some() {} });
        let mut body = request.into_body();
        let mut received = Some(received);
        let mut bytes = 0;
        let end = loop {
            match body.data().await {
                Some(Ok(data)) => {
                    bytes += data.len();
                    body.flow_control().release_capacity(data.len()).unwrap();
                    if bytes > WRITE_CHUNK {
                        if let Some(received) = received.take() {
                            let _ = received.send(());
                        }
                    }
                }
                Some(Err(e)) => break Some(e.reason().unwrap()),
                None => break None,
            }
        };
        driver.abort();
        end
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_failing_input_resets_the_write_stream() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (received_tx, received_rx) = tokio::sync::oneshot::channel();
        let server = tokio::spawn(observe_request_end(listener, received_tx));
        let store = GrpcStore::connect(&format!("grpc://{addr}"), "").unwrap();
        let digest = Digest::new(DigestFunction::Sha256, [7; 32], 3 << 20);
        let (input_tx, input_rx) = mpsc::channel(1);
        let put = store.put(&digest, ReceiverStream::new(input_rx).boxed());
        let feed = async move {
            input_tx.send(Ok(Bytes::from(vec![1u8; 2 << 20]))).await.unwrap();
            received_rx.await.unwrap();
            input_tx.send(Err(Error::unavailable("client went away"))).await.unwrap();
        };
        let (result, ()) = tokio::join!(put, feed);
        let e = result.unwrap_err();
        assert_eq!(e.code(), Code::Unavailable, "{e}");
        assert!(e.message().contains("client went away") && e.message().contains(&addr.to_string()), "{e}");
        assert_eq!(server.await.unwrap(), Some(h2::Reason::CANCEL));
    }

    #[tokio::test]
    async fn a_failing_stream_never_finishes_the_write() {
        let pieces = vec![Ok(Bytes::from(vec![1u8; WRITE_CHUNK + 1])), Err(Error::unavailable("client went away"))];
        let (tx, mut rx) = mpsc::channel(16);
        let e = send_chunks(stream_of(pieces), &tx, "name".into()).await.unwrap_err();
        assert!(e.message().contains("client went away"));
        drop(tx);
        while let Some(r) = rx.recv().await {
            assert!(!r.finish_write);
        }
    }
}
