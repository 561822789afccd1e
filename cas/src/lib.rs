//! Content-addressed storage for MemoBuild: the [`BlobStore`] trait, its
//! stores and wrappers, the action cache, and the REAPI gRPC services that
//! serve them (Capabilities, ContentAddressableStorage, ByteStream,
//! ActionCache).

mod action_cache;
mod action_index;
mod action_index_store;
mod action_results;
mod blob_metadata;
mod blob_store;
mod cache_lookups;
mod cas_limits;
mod clock;
mod directory_check;
mod env_expand;
mod evicting;
mod eviction_metrics;
mod existence_cached;
mod filesystem;
mod grpc_action_cache;
mod grpc_channel;
mod grpc_store;
mod memory;
mod metered;
mod pin_leases;
mod postgres_metadata;
mod postgres_pool;
mod redis_index;
mod s3_settings;
mod s3_store;
mod schema_migrations;
mod sharded;
mod single_flight;
mod sqlite_metadata;
mod sqlite_pool;
mod sqlite_writer;
mod store_builder;
mod store_config;
mod store_metrics;
mod tiered;
mod tree;
mod verified;
mod zstd_codec;

pub mod service;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
mod metadata_conformance;
mod outage_tests;
mod test_services;

pub use action_cache::{output_digests, ActionCache};
pub use action_index::ActionIndex;
pub use action_index_store::ActionIndexStore;
pub use action_results::ActionResults;
pub use blob_metadata::{BlobMetadata, BlobPins, EvictionCandidate, EvictionLock};
pub use blob_store::{
    collect, collect_at_most, get_bytes_at_most, single_chunk, BlobStore, BlobStream, ByteRange, Usage,
};
pub use cache_lookups::{CacheKind, CacheLookups, LOOKUP_COUNTED_BY_CALLER};
pub use cas_limits::{checked_total, CasLimits};
pub use clock::{Clock, ManualClock, SystemClock};
pub use directory_check::{check_directory, unsafe_name_reason, MAX_DIRECTORY_BYTES};
pub use env_expand::expand_env;
pub use evicting::{EvictingStore, EvictionReport};
pub use eviction_metrics::EvictionMetrics;
pub use existence_cached::ExistenceCachedStore;
pub use filesystem::{FilesystemStore, StoredBlob};
pub use grpc_action_cache::GrpcActionCache;
pub use grpc_channel::{client_tls_config, grpc_channel, grpc_channel_with, ClientCredentials, GrpcChannel};
pub use grpc_store::GrpcStore;
pub use memory::MemoryStore;
pub use metered::MeteredStore;
pub use pin_leases::{PinLeases, Urgency};
pub use postgres_metadata::PostgresMetadata;
pub use postgres_pool::connect_postgres;
pub use redis_index::RedisIndex;
pub use s3_settings::S3Settings;
pub use s3_store::S3Store;
pub use schema_migrations::SchemaMigrations;
pub use sharded::{Shard, ShardedStore};
pub use sqlite_metadata::SqliteMetadata;
pub use sqlite_pool::open_sqlite;
pub use sqlite_writer::SqliteWriter;
pub use store_builder::StoreBuilder;
pub use store_config::{MetadataConfig, RedisConfig, ShardConfig, StoreConfig};
pub use store_metrics::StoreMetrics;
pub use tiered::TieredStore;
pub use tree::{blobs_of_tree, tree_blobs, walk_tree, TreeWalker};
pub use verified::{verify_stream, VerifiedStore};
pub use zstd_codec::{StreamDecoder, StreamEncoder};
