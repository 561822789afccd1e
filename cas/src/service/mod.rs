//! The REAPI gRPC services over a CAS and an action cache. Handlers only
//! decode, call plain functions and encode.

mod action_cache;
mod byte_stream;
mod capabilities;
mod content_addressable_storage;
mod oversize_status;

use std::sync::Arc;

use memobuild_proto::bytestream::byte_stream_server::ByteStreamServer;
use memobuild_proto::reapi::action_cache_server::ActionCacheServer;
use memobuild_proto::reapi::content_addressable_storage_server::ContentAddressableStorageServer;
use memobuild_proto::{reapi, rpc, Error};
use prometheus::{IntCounter, Registry};

pub use action_cache::ActionCacheService;
pub use byte_stream::ByteStreamService;
pub use capabilities::{CapabilitiesService, MAX_BATCH_TOTAL_BYTES};
pub use content_addressable_storage::CasService;
pub use oversize_status::OversizeStatus;

use crate::{ActionResults, BlobStore, CacheLookups, CasLimits};

/// The largest gRPC message accepted. Well above the batch limit, so an
/// oversized batch gets an explanation rather than a transport error.
pub const MAX_MESSAGE_BYTES: usize = 4 * MAX_BATCH_TOTAL_BYTES as usize;
/// Blobs of one batch call read or written at once.
const BATCH_CONCURRENCY: usize = 16;

/// Byte counters of the CAS services.
#[derive(Clone)]
pub struct CasMetrics {
    pub bytes_read: IntCounter,
    pub bytes_written: IntCounter,
    pub lookups: CacheLookups,
}

impl CasMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let bytes_read = IntCounter::new("memobuild_cas_read_bytes_total", "Blob bytes served to clients")?;
        let bytes_written = IntCounter::new("memobuild_cas_written_bytes_total", "Blob bytes received from clients")?;
        registry.register(Box::new(bytes_read.clone()))?;
        registry.register(Box::new(bytes_written.clone()))?;
        let lookups = CacheLookups::register(registry)?;
        Ok(CasMetrics { bytes_read, bytes_written, lookups })
    }
}

/// What the CAS services share: the verified CAS, the action cache,
/// metrics and the bounds on what a client may ask.
#[derive(Clone)]
pub struct CasState {
    pub cas: Arc<dyn BlobStore>,
    pub action_cache: Arc<dyn ActionResults>,
    pub metrics: CasMetrics,
    pub limits: CasLimits,
}

/// ContentAddressableStorage, ByteStream and ActionCache as tonic routes.
pub fn cas_routes(state: &CasState) -> tonic::service::Routes {
    let cas = ContentAddressableStorageServer::new(CasService::new(state.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let bytestream = ByteStreamServer::new(ByteStreamService::new(state.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let action_cache = ActionCacheServer::new(ActionCacheService::new(state.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    tonic::service::Routes::new(OversizeStatus(cas))
        .add_service(OversizeStatus(bytestream))
        .add_service(OversizeStatus(action_cache))
}

/// A per-item status in batch responses.
fn rpc_status(result: Result<(), Error>) -> rpc::Status {
    match result {
        Ok(()) => rpc::Status::default(),
        Err(e) => rpc::Status { code: e.code() as i32, message: e.message().to_string(), details: Vec::new() },
    }
}

/// Parses the digest list of a request, naming the bad entry.
fn parse_digests(
    function: memobuild_proto::DigestFunction,
    digests: &[reapi::Digest],
) -> Result<Vec<memobuild_proto::Digest>, Error> {
    digests
        .iter()
        .enumerate()
        .map(|(i, d)| memobuild_proto::Digest::from_proto(function, d).map_err(|e| e.context(format!("digest #{i}"))))
        .collect()
}
