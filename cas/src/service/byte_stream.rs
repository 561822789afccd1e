use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use memobuild_auth::{caller, Capability, Principal};
use memobuild_proto::bytestream::byte_stream_server::ByteStream;
use memobuild_proto::bytestream::{
    QueryWriteStatusRequest, QueryWriteStatusResponse, ReadRequest, ReadResponse, WriteRequest, WriteResponse,
};
use memobuild_proto::{Compressor, Error, ResourceName, Result};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::CasState;
use crate::blob_store::{BlobStream, ByteRange};
use crate::zstd_codec::{StreamDecoder, StreamEncoder};

/// The largest `data` of one ReadResponse.
const READ_CHUNK: usize = 1 << 20;
/// How long an interrupted upload waits to be resumed.
const RESUME_WINDOW: Duration = Duration::from_secs(300);
/// Chunks buffered between a Write stream and the store.
const WRITE_BUFFER: usize = 8;
/// The longest resource name accepted: names are kept as upload keys.
const MAX_RESOURCE_NAME_BYTES: usize = 4096;

/// ByteStream: Read, Write (resumable, optionally zstd) and QueryWriteStatus.
pub struct ByteStreamService {
    state: CasState,
    uploads: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<Upload>>>>>,
}

/// An upload in progress: the bytes received so far flow into a running
/// `put`, so an interrupted Write can resume where it stopped.
struct Upload {
    /// The resource name as the client sent it: the key to resume by.
    key: String,
    name: ResourceName,
    /// Bytes received on the wire (compressed bytes for compressed uploads).
    committed: u64,
    decoder: Option<StreamDecoder>,
    sender: Option<mpsc::Sender<Result<Bytes>>>,
    put: Option<JoinHandle<Result<()>>>,
    idle_since: Instant,
}

impl Upload {
    fn start(state: &CasState, key: &str, name: ResourceName) -> Result<Self> {
        let (sender, receiver) = mpsc::channel(WRITE_BUFFER);
        let cas = state.cas.clone();
        let digest = name.digest;
        let stream: BlobStream = ReceiverStream::new(receiver).boxed();
        let put = tokio::spawn(async move { cas.put(&digest, stream).await });
        let decoder = match name.compressor {
            Compressor::Identity => None,
            Compressor::Zstd => Some(StreamDecoder::new()?),
        };
        Ok(Upload {
            key: key.to_string(),
            name,
            committed: 0,
            decoder,
            sender: Some(sender),
            put: Some(put),
            idle_since: Instant::now(),
        })
    }

    /// Feeds one WriteRequest's data at `offset`; no more than `max_bytes`
    /// may arrive on the wire in all.
    async fn accept(&mut self, offset: i64, data: Bytes, max_bytes: u64) -> Result<()> {
        if offset != self.committed as i64 {
            return Err(Error::invalid_argument(format!(
                "write of {}: write_offset is {offset}, expected {} (see QueryWriteStatus)",
                self.name, self.committed
            )));
        }
        self.committed = match self.committed.checked_add(data.len() as u64) {
            Some(committed) if committed <= max_bytes => committed,
            _ => {
                return Err(Error::invalid_argument(format!(
                    "write of {}: more than {max_bytes} bytes sent, the max_blob_bytes limit",
                    self.name
                )))
            }
        };
        match &mut self.decoder {
            None => self.send(data).await,
            Some(decoder) => {
                let mut input = &data[..];
                while let Some(chunk) = decoder.next_chunk(&mut input)? {
                    let sender = self.sender.as_ref().ok_or_else(|| Error::internal("upload already finished"))?;
                    if sender.send(Ok(chunk)).await.is_err() {
                        return Err(self.store_error().await);
                    }
                }
                Ok(())
            }
        }
    }

    async fn send(&mut self, data: Bytes) -> Result<()> {
        let sender = self.sender.as_ref().ok_or_else(|| Error::internal("upload already finished"))?;
        if sender.send(Ok(data)).await.is_err() {
            return Err(self.store_error().await);
        }
        Ok(())
    }

    /// Why the store stopped reading (it only does so on error).
    async fn store_error(&mut self) -> Error {
        match self.finish_put().await {
            Err(e) => e,
            Ok(()) => Error::internal(format!("write of {}: the store stopped early", self.name)),
        }
    }

    async fn finish_put(&mut self) -> Result<()> {
        self.sender = None;
        match self.put.take() {
            Some(put) => put.await.map_err(|e| Error::internal(format!("write of {}: {e}", self.name)))?,
            None => Err(Error::internal(format!("write of {} already finished", self.name))),
        }
    }

    /// Ends the upload: the store commits the blob if it verifies.
    async fn finish(&mut self) -> Result<()> {
        if let Some(decoder) = &self.decoder {
            if let Err(e) = decoder.finish() {
                self.abort(e.clone()).await;
                return Err(e.context(format!("write of {}", self.name)));
            }
        }
        self.finish_put().await
    }

    /// Fails the store's write with `error`, so nothing is stored.
    async fn abort(&mut self, error: Error) {
        if let Some(sender) = self.sender.take() {
            let _ = sender.send(Err(error)).await;
        }
        if let Some(put) = self.put.take() {
            let _ = put.await;
        }
    }
}

impl ByteStreamService {
    pub fn new(state: CasState) -> Self {
        ByteStreamService { state, uploads: Arc::default() }
    }

    /// The bytes of a Read, as a stream of bounded chunks.
    pub async fn read(&self, req: ReadRequest) -> Result<BlobStream> {
        let name = ResourceName::parse_read(bounded_name(&req.resource_name)?)?;
        let digest = name.digest;
        let offset = u64::try_from(req.read_offset)
            .map_err(|_| Error::out_of_range(format!("read of {name}: negative read_offset {}", req.read_offset)))?;
        let limit = match req.read_limit {
            0 => None,
            n if n < 0 => return Err(Error::invalid_argument(format!("read of {name}: negative read_limit {n}"))),
            n => Some(n as u64),
        };
        let range = ByteRange::new(offset, limit);
        let metrics = self.state.metrics.clone();
        let stream = match name.compressor {
            Compressor::Identity => self.state.cas.get(&digest, range).await?,
            Compressor::Zstd => {
                let blob = self.state.cas.get(&digest, ByteRange::ALL).await?;
                skip_and_limit(compress(blob)?, range)
            }
        };
        Ok(rechunk(stream)
            .inspect(move |chunk| {
                if let Ok(chunk) = chunk {
                    metrics.bytes_read.inc_by(chunk.len() as u64);
                }
            })
            .boxed())
    }

    /// Runs a Write stream; returns the committed size to report.
    pub async fn write(&self, mut requests: impl Stream<Item = Result<WriteRequest>> + Unpin) -> Result<i64> {
        let first =
            requests.next().await.ok_or_else(|| Error::invalid_argument("Write stream carried no request"))??;
        let name = ResourceName::parse_write(bounded_name(&first.resource_name)?)?;
        self.state.limits.check_blob(&name.digest).map_err(|e| e.context(format!("write of {name}")))?;
        let done_size = match name.compressor {
            Compressor::Identity => name.digest.size() as i64,
            Compressor::Zstd => -1,
        };
        if self.state.cas.find_missing(&[name.digest]).await?.is_empty() {
            return Ok(done_size);
        }
        let upload = self.upload(&first.resource_name, name.clone())?;
        let mut upload = upload
            .try_lock()
            .map_err(|_| Error::new(tonic::Code::Aborted, format!("another Write of {name} is in progress")))?;
        let mut request = first;
        loop {
            if !request.resource_name.is_empty() && request.resource_name != upload.key {
                let e = Error::invalid_argument(format!(
                    "Write stream switched resource from {name} to {}",
                    request.resource_name
                ));
                return Err(self.fail(&mut upload, e).await);
            }
            self.state.metrics.bytes_written.inc_by(request.data.len() as u64);
            let max_bytes = self.state.limits.max_blob_bytes;
            if let Err(e) = upload.accept(request.write_offset, Bytes::from(request.data), max_bytes).await {
                return Err(self.fail(&mut upload, e).await);
            }
            if request.finish_write {
                let result = upload.finish().await;
                self.uploads.lock().remove(&upload.key);
                result?;
                return Ok(match name.compressor {
                    Compressor::Identity => upload.committed as i64,
                    Compressor::Zstd => done_size,
                });
            }
            match requests.next().await {
                Some(Ok(next)) => request = next,
                Some(Err(e)) => {
                    upload.idle_since = Instant::now();
                    return Err(
                        e.context(format!("write of {name} interrupted at {} bytes; resumable", upload.committed))
                    );
                }
                None => {
                    upload.idle_since = Instant::now();
                    return Err(Error::invalid_argument(format!(
                        "write of {name} ended after {} bytes without finish_write; resume from there",
                        upload.committed
                    )));
                }
            }
        }
    }

    /// The upload for `key`: the interrupted one to resume, or a new one.
    /// Uploads idle past the resume window are dropped on the way; past
    /// `max_uploads`, a new one is RESOURCE_EXHAUSTED.
    fn upload(&self, key: &str, name: ResourceName) -> Result<Arc<tokio::sync::Mutex<Upload>>> {
        let mut uploads = self.uploads.lock();
        uploads.retain(|_, u| u.try_lock().map(|u| u.idle_since.elapsed() < RESUME_WINDOW).unwrap_or(true));
        if let Some(upload) = uploads.get(key) {
            return Ok(upload.clone());
        }
        let max_uploads = self.state.limits.max_uploads;
        if uploads.len() >= max_uploads {
            return Err(Error::resource_exhausted(format!(
                "write of {name}: {} uploads are in progress or waiting to resume, the max_uploads limit \
                 of {max_uploads}; retry later",
                uploads.len()
            )));
        }
        let upload = Arc::new(tokio::sync::Mutex::new(Upload::start(&self.state, key, name)?));
        uploads.insert(key.to_string(), upload.clone());
        Ok(upload)
    }

    /// Drops a failed upload so nothing of it is stored; returns the error.
    async fn fail(&self, upload: &mut Upload, error: Error) -> Error {
        upload.abort(error.clone()).await;
        self.uploads.lock().remove(&upload.key);
        error
    }

    pub async fn query_write_status(&self, req: QueryWriteStatusRequest) -> Result<QueryWriteStatusResponse> {
        let name = ResourceName::parse_write(bounded_name(&req.resource_name)?)?;
        let upload = self.uploads.lock().get(&req.resource_name).cloned();
        if let Some(upload) = upload {
            let committed = upload.lock().await.committed;
            return Ok(QueryWriteStatusResponse { committed_size: committed as i64, complete: false });
        }
        if self.state.cas.find_missing(&[name.digest]).await?.is_empty() {
            let committed_size = match name.compressor {
                Compressor::Identity => name.digest.size() as i64,
                Compressor::Zstd => -1,
            };
            return Ok(QueryWriteStatusResponse { committed_size, complete: true });
        }
        Err(Error::not_found(format!("no upload of {name} in progress")))
    }
}

/// `name`, unless it is longer than [`MAX_RESOURCE_NAME_BYTES`].
fn bounded_name(name: &str) -> Result<&str> {
    if name.len() > MAX_RESOURCE_NAME_BYTES {
        return Err(Error::invalid_argument(format!(
            "a resource name of {} bytes, over the {MAX_RESOURCE_NAME_BYTES}-byte limit",
            name.len()
        )));
    }
    Ok(name)
}

/// Splits chunks larger than a ReadResponse may carry.
fn rechunk(stream: BlobStream) -> BlobStream {
    stream
        .flat_map(|chunk| {
            let pieces: Vec<Result<Bytes>> = match chunk {
                Ok(chunk) if chunk.len() > READ_CHUNK => (0..chunk.len())
                    .step_by(READ_CHUNK)
                    .map(|i| Ok(chunk.slice(i..(i + READ_CHUNK).min(chunk.len()))))
                    .collect(),
                other => vec![other],
            };
            futures::stream::iter(pieces)
        })
        .boxed()
}

/// Compresses a stream into one zstd frame.
fn compress(blob: BlobStream) -> Result<BlobStream> {
    let encoder = Arc::new(Mutex::new(StreamEncoder::new()?));
    let tail_encoder = encoder.clone();
    let body = blob.map(move |chunk| encoder.lock().encode(&chunk?));
    let tail = futures::stream::once(async move { tail_encoder.lock().finish() });
    Ok(body.chain(tail).filter(|c| futures::future::ready(c.as_ref().map(|c| !c.is_empty()).unwrap_or(true))).boxed())
}

/// Applies a byte range to a stream whose total size is not known upfront.
fn skip_and_limit(stream: BlobStream, range: ByteRange) -> BlobStream {
    let mut position = 0u64;
    let end = range.limit.map(|l| range.offset.saturating_add(l));
    stream
        .map(move |chunk| {
            let chunk = chunk?;
            let start = position;
            position += chunk.len() as u64;
            let from = range.offset.saturating_sub(start).min(chunk.len() as u64) as usize;
            let to = match end {
                Some(end) => end.saturating_sub(start).min(chunk.len() as u64) as usize,
                None => chunk.len(),
            };
            Ok(if from < to { chunk.slice(from..to) } else { Bytes::new() })
        })
        .filter(|c| futures::future::ready(c.as_ref().map(|c| !c.is_empty()).unwrap_or(true)))
        .boxed()
}

/// PERMISSION_DENIED unless `principal` holds `capability` in the instance
/// the resource name names; a name that does not parse is left to the
/// handler to reject, once the capability itself is held.
fn authorize(
    principal: Option<&Principal>,
    capability: Capability,
    resource_name: &str,
    parse: fn(&str) -> Result<ResourceName>,
) -> Result<()> {
    let Some(principal) = principal else { return Ok(()) };
    match bounded_name(resource_name).and_then(parse) {
        Ok(name) => principal.check(capability, &name.instance_name),
        Err(_) => principal.require(capability),
    }
}

type ReadStream = Pin<Box<dyn Stream<Item = Result<ReadResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ByteStream for ByteStreamService {
    type ReadStream = ReadStream;

    async fn read(&self, req: Request<ReadRequest>) -> Result<Response<ReadStream>, Status> {
        authorize(caller(&req).as_deref(), Capability::Read, &req.get_ref().resource_name, ResourceName::parse_read)?;
        let stream = ByteStreamService::read(self, req.into_inner()).await?;
        Ok(Response::new(
            stream.map(|r| r.map(|data| ReadResponse { data: data.to_vec() }).map_err(Status::from)).boxed(),
        ))
    }

    async fn write(&self, req: Request<Streaming<WriteRequest>>) -> Result<Response<WriteResponse>, Status> {
        let principal = caller(&req);
        let mut incoming = req.into_inner();
        let first = incoming.message().await?;
        if let Some(first) = &first {
            authorize(principal.as_deref(), Capability::Write, &first.resource_name, ResourceName::parse_write)?;
        }
        let requests = futures::stream::iter(first.map(Ok)).chain(incoming.map(|r| r.map_err(Error::from)));
        let committed_size = ByteStreamService::write(self, requests).await?;
        Ok(Response::new(WriteResponse { committed_size }))
    }

    async fn query_write_status(
        &self,
        req: Request<QueryWriteStatusRequest>,
    ) -> Result<Response<QueryWriteStatusResponse>, Status> {
        authorize(caller(&req).as_deref(), Capability::Write, &req.get_ref().resource_name, ResourceName::parse_write)?;
        Ok(Response::new(ByteStreamService::query_write_status(self, req.into_inner()).await?))
    }
}
