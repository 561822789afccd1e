use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt, TryStreamExt};
use memobuild_auth::{check_request, Capability};
use memobuild_proto::reapi::content_addressable_storage_server::ContentAddressableStorage;
use memobuild_proto::reapi::{
    batch_read_blobs_response, batch_update_blobs_response, BatchReadBlobsRequest, BatchReadBlobsResponse,
    BatchUpdateBlobsRequest, BatchUpdateBlobsResponse, Directory, FindMissingBlobsRequest, FindMissingBlobsResponse,
    GetChunkMappingRequest, GetChunkMappingResponse, GetTreeRequest, GetTreeResponse, RegisterChunkMappingRequest,
    RegisterChunkMappingResponse, SpliceBlobRequest, SpliceBlobResponse, SplitBlobRequest, SplitBlobResponse,
};
use memobuild_proto::{Compressor, Digest, DigestFunction, Error, Result};
use prost::Message;
use tonic::{Request, Response, Status};

use super::{parse_digests, rpc_status, CasState, BATCH_CONCURRENCY, MAX_BATCH_TOTAL_BYTES};
use crate::blob_store::{get_bytes_at_most, BlobStore};
use crate::cas_limits::checked_total;
use crate::tree::TreeWalker;
use crate::zstd_codec::StreamDecoder;

/// Directories per GetTree page when the client does not say.
const DEFAULT_TREE_PAGE: usize = 1000;
/// Encoded bytes per GetTree page, under the message limit.
const MAX_TREE_PAGE_BYTES: usize = 2 << 20;

/// ContentAddressableStorage: FindMissingBlobs, the batch calls and GetTree.
pub struct CasService {
    state: CasState,
}

impl CasService {
    pub fn new(state: CasState) -> Self {
        CasService { state }
    }

    pub async fn find_missing_blobs(&self, req: FindMissingBlobsRequest) -> Result<FindMissingBlobsResponse> {
        let function = DigestFunction::from_proto(req.digest_function)?;
        let digests = parse_digests(function, &req.blob_digests)?;
        let missing = self.state.cas.find_missing(&digests).await?;
        Ok(FindMissingBlobsResponse { missing_blob_digests: missing.iter().map(Digest::to_proto).collect() })
    }

    pub async fn batch_update_blobs(&self, req: BatchUpdateBlobsRequest) -> Result<BatchUpdateBlobsResponse> {
        let function = DigestFunction::from_proto(req.digest_function)?;
        self.state.limits.check_batch_count("BatchUpdateBlobs", req.requests.len())?;
        let limit = MAX_BATCH_TOTAL_BYTES as u64;
        let over = "batch limit; use ByteStream.Write";
        checked_total(req.requests.iter().map(|r| r.data.len() as u64), limit, "the data of BatchUpdateBlobs", over)?;
        // A compressed blob's bytes are what its digest declares: they are
        // bounded as well, before any of them is decompressed.
        let declared = req.requests.iter().map(|r| r.digest.as_ref().map_or(0, |d| d.size_bytes.max(0) as u64));
        checked_total(declared, limit, "the blob sizes BatchUpdateBlobs declares", over)?;
        let uploads: Vec<_> = req
            .requests
            .into_iter()
            .map(|r| async move {
                let digest = Digest::from_proto_field(function, r.digest.as_ref(), "digest")?;
                let result = async {
                    let data = match Compressor::from_proto(r.compressor)? {
                        Compressor::Identity => Bytes::from(r.data),
                        Compressor::Zstd => StreamDecoder::decode_at_most(&r.data, digest.size())
                            .map_err(|e| e.context(format!("blob {}", digest.subject())))?,
                    };
                    self.state.metrics.bytes_written.inc_by(data.len() as u64);
                    self.state.cas.put_bytes(&digest, data).await
                }
                .await;
                Ok::<_, Error>(batch_update_blobs_response::Response {
                    digest: Some(digest.to_proto()),
                    status: Some(rpc_status(result)),
                })
            })
            .collect();
        let responses = futures::stream::iter(uploads)
            .buffered(BATCH_CONCURRENCY)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<Vec<_>>>()?;
        Ok(BatchUpdateBlobsResponse { responses })
    }

    pub async fn batch_read_blobs(&self, req: BatchReadBlobsRequest) -> Result<BatchReadBlobsResponse> {
        let function = DigestFunction::from_proto(req.digest_function)?;
        self.state.limits.check_batch_count("BatchReadBlobs", req.digests.len())?;
        let digests = parse_digests(function, &req.digests)?;
        checked_total(
            digests.iter().map(Digest::size),
            MAX_BATCH_TOTAL_BYTES as u64,
            "the blobs BatchReadBlobs asks for",
            "batch limit; use ByteStream.Read",
        )?;
        let zstd = req.acceptable_compressors.iter().any(|c| Compressor::from_proto(*c).ok() == Some(Compressor::Zstd));
        let reads: Vec<_> = digests
            .into_iter()
            .map(|digest| async move {
                let read = async {
                    let data = get_bytes_at_most(self.state.cas.as_ref(), &digest, digest.size(), "blob").await?;
                    self.state.metrics.bytes_read.inc_by(data.len() as u64);
                    if zstd {
                        let compressed = zstd::bulk::compress(&data, 1)
                            .map_err(|e| Error::internal(format!("compressing {}: {e}", digest.subject())))?;
                        Ok((Bytes::from(compressed), Compressor::Zstd))
                    } else {
                        Ok((data, Compressor::Identity))
                    }
                };
                let (data, compressor, status) = match read.await {
                    Ok((data, compressor)) => (data, compressor, rpc_status(Ok(()))),
                    Err(e) => (Bytes::new(), Compressor::Identity, rpc_status(Err(e))),
                };
                batch_read_blobs_response::Response {
                    digest: Some(digest.to_proto()),
                    data: data.to_vec(),
                    compressor: compressor.to_proto(),
                    status: Some(status),
                }
            })
            .collect();
        let responses = futures::stream::iter(reads).buffered(BATCH_CONCURRENCY).collect().await;
        Ok(BatchReadBlobsResponse { responses })
    }

    /// The pages of the tree as a stream, starting at the page token (an
    /// index into the breadth-first order). One walk feeds every page, and
    /// a page is read only when the client is ready for it.
    pub async fn get_tree(&self, req: GetTreeRequest) -> Result<BoxStream<'static, Result<GetTreeResponse>>> {
        let function = DigestFunction::from_proto(req.digest_function)?;
        let root = Digest::from_proto_field(function, req.root_digest.as_ref(), "root_digest")?;
        let start: usize = if req.page_token.is_empty() {
            0
        } else {
            req.page_token
                .parse()
                .map_err(|_| Error::invalid_argument(format!("invalid page_token {:?}", req.page_token)))?
        };
        let page_size = match req.page_size {
            n if n < 0 => return Err(Error::invalid_argument(format!("negative page_size {n}"))),
            0 => DEFAULT_TREE_PAGE,
            n => n as usize,
        };
        let context = move |e: Error| e.context(format!("GetTree of {}", root.subject()));
        let cas = self.state.cas.clone();
        let mut walker = TreeWalker::new(root);
        // The first directory is read now, so a missing or malformed root
        // is the call's status rather than a failed stream.
        let mut first = walker.next(cas.as_ref()).await.map_err(context)?;
        for _ in 0..start {
            first = walker.next(cas.as_ref()).await.map_err(context)?;
            if first.is_none() {
                return Err(Error::invalid_argument(format!("page_token {start} is past the end of the tree")));
            }
        }
        let pages = TreePages { cas, walker, next: first, index: start, page_size, done: false };
        Ok(futures::stream::try_unfold(pages, move |mut pages| async move {
            let page = pages.next_page().await.map_err(context)?;
            Ok(page.map(|page| (page, pages)))
        })
        .boxed())
    }
}

/// The state of a GetTree stream between pages.
struct TreePages {
    cas: Arc<dyn BlobStore>,
    walker: TreeWalker,
    /// The directory read but not yet sent.
    next: Option<Directory>,
    /// Its index in the breadth-first order.
    index: usize,
    page_size: usize,
    done: bool,
}

impl TreePages {
    /// The next page, up to `page_size` directories and
    /// [`MAX_TREE_PAGE_BYTES`]; `None` after the last.
    async fn next_page(&mut self) -> Result<Option<GetTreeResponse>> {
        if self.done {
            return Ok(None);
        }
        let mut page = GetTreeResponse::default();
        let mut bytes = 0;
        while let Some(directory) = self.next.take() {
            let len = directory.encoded_len();
            if page.directories.len() == self.page_size || (bytes > 0 && bytes + len > MAX_TREE_PAGE_BYTES) {
                self.next = Some(directory);
                page.next_page_token = self.index.to_string();
                return Ok(Some(page));
            }
            bytes += len;
            page.directories.push(directory);
            self.index += 1;
            self.next = self.walker.next(self.cas.as_ref()).await?;
        }
        self.done = true;
        Ok(Some(page))
    }
}

type TreeStream = Pin<Box<dyn Stream<Item = Result<GetTreeResponse, Status>> + Send>>;
type ChunkMappingStream = Pin<Box<dyn Stream<Item = Result<GetChunkMappingResponse, Status>> + Send>>;

fn no_chunking() -> Status {
    Status::unimplemented("blob splitting and splicing are not supported (split_blob_support is false)")
}

#[tonic::async_trait]
impl ContentAddressableStorage for CasService {
    async fn find_missing_blobs(
        &self,
        req: Request<FindMissingBlobsRequest>,
    ) -> Result<Response<FindMissingBlobsResponse>, Status> {
        check_request(&req, Capability::Read, &req.get_ref().instance_name)?;
        Ok(Response::new(CasService::find_missing_blobs(self, req.into_inner()).await?))
    }

    async fn batch_update_blobs(
        &self,
        req: Request<BatchUpdateBlobsRequest>,
    ) -> Result<Response<BatchUpdateBlobsResponse>, Status> {
        check_request(&req, Capability::Write, &req.get_ref().instance_name)?;
        Ok(Response::new(CasService::batch_update_blobs(self, req.into_inner()).await?))
    }

    async fn batch_read_blobs(
        &self,
        req: Request<BatchReadBlobsRequest>,
    ) -> Result<Response<BatchReadBlobsResponse>, Status> {
        check_request(&req, Capability::Read, &req.get_ref().instance_name)?;
        Ok(Response::new(CasService::batch_read_blobs(self, req.into_inner()).await?))
    }

    type GetTreeStream = TreeStream;

    async fn get_tree(&self, req: Request<GetTreeRequest>) -> Result<Response<TreeStream>, Status> {
        check_request(&req, Capability::Read, &req.get_ref().instance_name)?;
        let pages = CasService::get_tree(self, req.into_inner()).await?;
        Ok(Response::new(pages.map_err(Status::from).boxed()))
    }

    async fn split_blob(&self, _: Request<SplitBlobRequest>) -> Result<Response<SplitBlobResponse>, Status> {
        Err(no_chunking())
    }

    type GetChunkMappingStream = ChunkMappingStream;

    async fn get_chunk_mapping(
        &self,
        _: Request<GetChunkMappingRequest>,
    ) -> Result<Response<ChunkMappingStream>, Status> {
        Err(no_chunking())
    }

    async fn splice_blob(&self, _: Request<SpliceBlobRequest>) -> Result<Response<SpliceBlobResponse>, Status> {
        Err(no_chunking())
    }

    async fn register_chunk_mapping(
        &self,
        _: Request<tonic::Streaming<RegisterChunkMappingRequest>>,
    ) -> Result<Response<RegisterChunkMappingResponse>, Status> {
        Err(no_chunking())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;
    use memobuild_proto::reapi::DirectoryNode;

    use super::*;
    use crate::blob_store::{BlobStream, ByteRange};
    use crate::service::CasMetrics;
    use crate::{ActionCache, CasLimits, MemoryStore};

    /// A memory store that counts reads.
    #[derive(Default)]
    struct CountedReads {
        inner: MemoryStore,
        reads: AtomicUsize,
    }

    #[async_trait]
    impl BlobStore for CountedReads {
        async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>> {
            self.inner.find_missing(digests).await
        }

        async fn get(&self, digest: &Digest, range: ByteRange) -> Result<BlobStream> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            self.inner.get(digest, range).await
        }

        async fn put(&self, digest: &Digest, data: BlobStream) -> Result<()> {
            self.inner.put(digest, data).await
        }

        async fn delete(&self, digest: &Digest) -> Result<bool> {
            self.inner.delete(digest).await
        }
    }

    #[tokio::test]
    async fn every_page_of_a_tree_comes_from_one_walk() {
        let cas = Arc::new(CountedReads::default());
        let mut digest = None;
        for depth in 0..10 {
            let directory = Directory {
                directories: digest
                    .map(|d: Digest| DirectoryNode { name: format!("d{depth}"), digest: Some(d.to_proto()) })
                    .into_iter()
                    .collect(),
                ..Default::default()
            };
            let data = directory.encode_to_vec();
            let next = Digest::of(DigestFunction::Sha256, &data);
            cas.put_bytes(&next, data.into()).await.unwrap();
            digest = Some(next);
        }
        let state = CasState {
            cas: cas.clone(),
            action_cache: Arc::new(ActionCache::new(Arc::new(MemoryStore::new()), cas.clone())),
            metrics: CasMetrics::register(&prometheus::Registry::new()).unwrap(),
            limits: CasLimits::default(),
        };
        let request = GetTreeRequest { root_digest: digest.map(|d| d.to_proto()), page_size: 3, ..Default::default() };
        let pages: Vec<GetTreeResponse> =
            CasService::new(state).get_tree(request).await.unwrap().try_collect().await.unwrap();
        let sizes: Vec<usize> = pages.iter().map(|p| p.directories.len()).collect();
        assert_eq!(sizes, vec![3, 3, 3, 1]);
        assert_eq!(pages[0].next_page_token, "3");
        assert_eq!(cas.reads.load(Ordering::SeqCst), 10, "each directory read once for all pages");
    }
}
