use std::path::PathBuf;
use std::sync::Arc;

use memobuild_proto::Result;
use serde::Deserialize;

use crate::store_builder::StoreBuilder;
use crate::{BlobStore, S3Settings};

/// A store tree as configured: the same shape as the composed stores. String
/// values of the cluster stores (buckets, endpoints, URLs) may name
/// environment variables as `${NAME}` or `${NAME:-default}`.
///
/// ```toml
/// [cas]
/// type = "evicting"
/// max_bytes = 21474836480
/// metadata = { type = "sqlite", path = "/var/lib/memobuild/cas.db" }
/// inner = { type = "filesystem", path = "/var/lib/memobuild/cas" }
/// ```
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StoreConfig {
    Memory,
    Filesystem {
        path: PathBuf,
        /// Flush each blob to disk before it becomes visible.
        #[serde(default = "default_sync")]
        sync: bool,
    },
    /// LRU eviction by bytes, never of pinned blobs.
    Evicting {
        max_bytes: u64,
        /// Where eviction stops; 80% of `max_bytes` when unset.
        low_watermark_bytes: Option<u64>,
        metadata: MetadataConfig,
        inner: Box<StoreConfig>,
    },
    /// One S3 bucket.
    S3 {
        bucket: String,
        #[serde(flatten)]
        settings: S3Settings,
    },
    /// A sharded store of one S3 bucket per name in `buckets` (comma-separated,
    /// e.g. `${S3_BUCKETS}`), equal weights, each shard named after its bucket.
    S3Shards {
        buckets: String,
        #[serde(flatten)]
        settings: S3Settings,
    },
    /// Blobs spread over shards by weighted rendezvous hashing.
    Sharded {
        shards: Vec<ShardConfig>,
    },
    /// A fast store in front of a slow one: read-through, write-through.
    Tiered {
        fast: Box<StoreConfig>,
        slow: Box<StoreConfig>,
    },
    /// FindMissingBlobs from Redis and the blob metadata, not the store.
    ExistenceCached {
        metadata: MetadataConfig,
        /// The hot index; the metadata alone answers without it.
        redis: Option<RedisConfig>,
        inner: Box<StoreConfig>,
    },
    /// Prometheus requests, bytes and latency under `name`.
    Metered {
        name: String,
        inner: Box<StoreConfig>,
    },
}

/// One shard of a `sharded` store. Its name is what blobs hash against:
/// keep it when the store behind it moves.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ShardConfig {
    pub name: String,
    #[serde(default = "default_weight")]
    pub weight: f64,
    pub store: StoreConfig,
}

/// Where blob metadata lives. Stores configured with equal metadata share
/// one connection and one view of it.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum MetadataConfig {
    Sqlite { path: PathBuf },
    Postgres { url: String, schema: Option<String> },
}

/// The Redis hot index of an `existence_cached` store.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    pub url: String,
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// How long a blob stays in the hot index without being asked about.
    #[serde(default = "default_ttl")]
    pub ttl_seconds: u64,
}

fn default_sync() -> bool {
    true
}

fn default_weight() -> f64 {
    1.0
}

fn default_key_prefix() -> String {
    "memobuild:cas:".to_string()
}

fn default_ttl() -> u64 {
    600
}

impl StoreConfig {
    /// Builds the store tree this config describes, its metrics in a
    /// registry of its own (see [`StoreBuilder`] to share one).
    pub async fn build(&self) -> Result<Arc<dyn BlobStore>> {
        StoreBuilder::new(prometheus::Registry::new()).build(self).await
    }
}
