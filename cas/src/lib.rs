//! Content-addressed storage for MemoBuild: the [`BlobStore`] trait, its
//! stores and wrappers, the action cache, and the REAPI gRPC services that
//! serve them (Capabilities, ContentAddressableStorage, ByteStream,
//! ActionCache).

mod action_cache;
mod action_results;
mod blob_metadata;
mod blob_store;
mod clock;
mod evicting;
mod filesystem;
mod grpc_action_cache;
mod grpc_store;
mod memory;
mod sqlite_metadata;
mod sqlite_pool;
mod store_config;
mod tree;
mod verified;
mod zstd_codec;

pub mod service;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;

pub use action_cache::{output_digests, ActionCache};
pub use action_results::ActionResults;
pub use blob_metadata::BlobMetadata;
pub use blob_store::{collect, single_chunk, BlobStore, BlobStream, ByteRange, Usage};
pub use clock::{Clock, ManualClock, SystemClock};
pub use evicting::EvictingStore;
pub use filesystem::{FilesystemStore, StoredBlob};
pub use grpc_action_cache::GrpcActionCache;
pub use grpc_store::{grpc_channel, GrpcStore};
pub use memory::MemoryStore;
pub use sqlite_metadata::SqliteMetadata;
pub use sqlite_pool::open_sqlite;
pub use store_config::{MetadataConfig, StoreConfig};
pub use tree::walk_tree;
pub use verified::{verify_stream, VerifiedStore};
pub use zstd_codec::{StreamDecoder, StreamEncoder};
