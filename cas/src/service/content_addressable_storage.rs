use std::pin::Pin;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use memobuild_proto::reapi::content_addressable_storage_server::ContentAddressableStorage;
use memobuild_proto::reapi::{
    batch_read_blobs_response, batch_update_blobs_response, BatchReadBlobsRequest, BatchReadBlobsResponse,
    BatchUpdateBlobsRequest, BatchUpdateBlobsResponse, FindMissingBlobsRequest, FindMissingBlobsResponse,
    GetChunkMappingRequest, GetChunkMappingResponse, GetTreeRequest, GetTreeResponse, RegisterChunkMappingRequest,
    RegisterChunkMappingResponse, SpliceBlobRequest, SpliceBlobResponse, SplitBlobRequest, SplitBlobResponse,
};
use memobuild_proto::{Compressor, Digest, DigestFunction, Error, Result};
use prost::Message;
use tonic::{Request, Response, Status};

use super::{parse_digests, rpc_status, CasState, MAX_BATCH_TOTAL_BYTES};
use crate::tree::walk_tree;

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
        let total: u64 = req.requests.iter().map(|r| r.data.len() as u64).sum();
        if total > MAX_BATCH_TOTAL_BYTES as u64 {
            return Err(Error::invalid_argument(format!(
                "BatchUpdateBlobs carries {total} bytes, over the {MAX_BATCH_TOTAL_BYTES}-byte batch limit; use ByteStream.Write"
            )));
        }
        let uploads = req.requests.into_iter().map(|r| async move {
            let digest = Digest::from_proto_field(function, r.digest.as_ref(), "digest")?;
            let result = async {
                let data = match Compressor::from_proto(r.compressor)? {
                    Compressor::Identity => Bytes::from(r.data),
                    Compressor::Zstd => decompress(&r.data, &digest)?,
                };
                self.state.metrics.bytes_written.inc_by(data.len() as u64);
                self.state.cas.put_bytes(&digest, data).await
            }
            .await;
            Ok::<_, Error>(batch_update_blobs_response::Response {
                digest: Some(digest.to_proto()),
                status: Some(rpc_status(result)),
            })
        });
        let responses = futures::future::join_all(uploads).await.into_iter().collect::<Result<Vec<_>>>()?;
        Ok(BatchUpdateBlobsResponse { responses })
    }

    pub async fn batch_read_blobs(&self, req: BatchReadBlobsRequest) -> Result<BatchReadBlobsResponse> {
        let function = DigestFunction::from_proto(req.digest_function)?;
        let digests = parse_digests(function, &req.digests)?;
        let total: u64 = digests.iter().map(Digest::size).sum();
        if total > MAX_BATCH_TOTAL_BYTES as u64 {
            return Err(Error::invalid_argument(format!(
                "BatchReadBlobs asks for {total} bytes, over the {MAX_BATCH_TOTAL_BYTES}-byte batch limit; use ByteStream.Read"
            )));
        }
        let zstd = req.acceptable_compressors.iter().any(|c| Compressor::from_proto(*c).ok() == Some(Compressor::Zstd));
        let reads = digests.into_iter().map(|digest| async move {
            let read = async {
                let data = self.state.cas.get_bytes(&digest).await?;
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
        });
        Ok(BatchReadBlobsResponse { responses: futures::future::join_all(reads).await })
    }

    /// The pages of the tree, starting at the page token (an index into
    /// the breadth-first order).
    pub async fn get_tree(&self, req: GetTreeRequest) -> Result<Vec<GetTreeResponse>> {
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
        let directories = walk_tree(self.state.cas.as_ref(), root)
            .await
            .map_err(|e| e.context(format!("GetTree of {}", root.subject())))?;
        if start > directories.len() {
            return Err(Error::invalid_argument(format!("page_token {start} is past the end of the tree")));
        }
        let mut pages = Vec::new();
        let mut page = GetTreeResponse::default();
        let mut bytes = 0;
        for (index, directory) in directories.into_iter().enumerate().skip(start) {
            let len = directory.encoded_len();
            if page.directories.len() == page_size || (bytes > 0 && bytes + len > MAX_TREE_PAGE_BYTES) {
                page.next_page_token = index.to_string();
                pages.push(std::mem::take(&mut page));
                bytes = 0;
            }
            bytes += len;
            page.directories.push(directory);
        }
        pages.push(page);
        Ok(pages)
    }
}

/// Decompresses a zstd batch entry, refusing more bytes than the digest says.
fn decompress(data: &[u8], digest: &Digest) -> Result<Bytes> {
    let out = zstd::bulk::decompress(data, digest.size() as usize).map_err(|e| {
        Error::invalid_argument(format!("blob {}: bad zstd data or larger than its digest: {e}", digest.subject()))
    })?;
    Ok(out.into())
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
        Ok(Response::new(CasService::find_missing_blobs(self, req.into_inner()).await?))
    }

    async fn batch_update_blobs(
        &self,
        req: Request<BatchUpdateBlobsRequest>,
    ) -> Result<Response<BatchUpdateBlobsResponse>, Status> {
        Ok(Response::new(CasService::batch_update_blobs(self, req.into_inner()).await?))
    }

    async fn batch_read_blobs(
        &self,
        req: Request<BatchReadBlobsRequest>,
    ) -> Result<Response<BatchReadBlobsResponse>, Status> {
        Ok(Response::new(CasService::batch_read_blobs(self, req.into_inner()).await?))
    }

    type GetTreeStream = TreeStream;

    async fn get_tree(&self, req: Request<GetTreeRequest>) -> Result<Response<TreeStream>, Status> {
        let pages = CasService::get_tree(self, req.into_inner()).await?;
        Ok(Response::new(futures::stream::iter(pages.into_iter().map(Ok)).boxed()))
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
