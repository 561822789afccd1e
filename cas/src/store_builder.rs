use std::sync::Arc;
use std::time::Duration;

use memobuild_proto::{Error, Result, ResultExt};
use parking_lot::Mutex;
use prometheus::Registry;
use tokio::sync::OnceCell;

use crate::action_index::ActionIndex;
use crate::action_index_store::ActionIndexStore;
use crate::blob_metadata::{BlobMetadata, BlobPins};
use crate::env_expand::expand_env;
use crate::existence_cached::ExistenceCachedStore;
use crate::metered::MeteredStore;
use crate::postgres_metadata::PostgresMetadata;
use crate::redis_index::RedisIndex;
use crate::sharded::{Shard, ShardedStore};
use crate::store_config::{MetadataConfig, RedisConfig, StoreConfig};
use crate::store_metrics::StoreMetrics;
use crate::tiered::TieredStore;
use crate::{
    BlobStore, Clock, EvictingStore, EvictionMetrics, FilesystemStore, MemoryStore, S3Settings, S3Store,
    SqliteMetadata, SystemClock,
};

/// Builds store trees from [`StoreConfig`]s. Trees built by one builder
/// register their metrics in one registry and share metadata connections.
pub struct StoreBuilder {
    registry: Registry,
    metrics: OnceCell<StoreMetrics>,
    eviction: OnceCell<EvictionMetrics>,
    metadata: Mutex<Vec<OpenMetadata>>,
    /// The metadata of every evicting store built: where pins must go.
    evictors: Mutex<Vec<Arc<dyn BlobMetadata>>>,
    clock: Arc<dyn Clock>,
}

/// One metadata database, opened once per builder, under both its faces.
struct OpenMetadata {
    config: MetadataConfig,
    blobs: Arc<dyn BlobMetadata>,
    actions: Arc<dyn ActionIndex>,
}

impl StoreBuilder {
    pub fn new(registry: Registry) -> Self {
        StoreBuilder {
            registry,
            metrics: OnceCell::new(),
            eviction: OnceCell::new(),
            metadata: Mutex::default(),
            evictors: Mutex::default(),
            clock: Arc::new(SystemClock),
        }
    }

    /// Where pins must be taken so that no evicting store built so far
    /// removes a pinned blob: the metadata of each (empty when nothing
    /// evicts).
    pub fn pins(&self) -> Vec<Arc<dyn BlobPins>> {
        let mut pins: Vec<Arc<dyn BlobPins>> = Vec::new();
        for metadata in self.evictors.lock().iter() {
            pins.push(metadata.clone());
        }
        pins
    }

    /// Adds the metadata `config` of evicting stores another process runs
    /// (the CAS role) to [`StoreBuilder::pins`].
    pub async fn pin_in(&self, config: &MetadataConfig) -> Result<()> {
        let metadata = self.metadata(config).await?.blobs;
        self.add_evictor(metadata);
        Ok(())
    }

    fn add_evictor(&self, metadata: Arc<dyn BlobMetadata>) {
        let mut evictors = self.evictors.lock();
        if !evictors.iter().any(|m| Arc::ptr_eq(m, &metadata)) {
            evictors.push(metadata);
        }
    }

    /// The store tree `config` describes.
    pub async fn build(&self, config: &StoreConfig) -> Result<Arc<dyn BlobStore>> {
        Ok(match config {
            StoreConfig::Memory => Arc::new(MemoryStore::new()),
            StoreConfig::Filesystem { path, sync } => Arc::new(FilesystemStore::open(path.clone(), *sync).await?),
            StoreConfig::Evicting { max_bytes, low_watermark_bytes, metadata, inner } => {
                let metadata = self.metadata(metadata).await?.blobs;
                self.add_evictor(metadata.clone());
                let low = low_watermark_bytes.unwrap_or(max_bytes / 10 * 8);
                let inner = Box::pin(self.build(inner)).await?;
                let metrics = self
                    .eviction
                    .get_or_try_init(|| async { EvictionMetrics::register(&self.registry) })
                    .await
                    .map_err(|e| Error::internal(format!("registering eviction metrics: {e}")))?;
                Arc::new(
                    EvictingStore::new(inner, metadata, self.clock.clone(), *max_bytes, low)
                        .with_metrics(metrics.clone()),
                )
            }
            StoreConfig::S3 { bucket, settings } => Arc::new(s3(&expand_env(bucket)?, settings).await?),
            StoreConfig::S3Shards { buckets, settings } => {
                let mut shards = Vec::new();
                for bucket in expand_env(buckets)?.split(',').map(str::trim).filter(|b| !b.is_empty()) {
                    let store = Arc::new(s3(bucket, settings).await?);
                    shards.push(Shard { name: bucket.to_string(), weight: 1.0, store });
                }
                Arc::new(ShardedStore::new(shards).with_context(|| format!("S3 buckets {buckets:?}"))?)
            }
            StoreConfig::Sharded { shards } => {
                let mut built = Vec::new();
                for shard in shards {
                    let store = Box::pin(self.build(&shard.store)).await?;
                    built.push(Shard { name: shard.name.clone(), weight: shard.weight, store });
                }
                Arc::new(ShardedStore::new(built)?)
            }
            StoreConfig::Tiered { fast, slow } => {
                Arc::new(TieredStore::new(Box::pin(self.build(fast)).await?, Box::pin(self.build(slow)).await?))
            }
            StoreConfig::ExistenceCached { metadata, redis, inner } => {
                let index = self.metadata(metadata).await?.blobs;
                let hot = redis.as_ref().map(redis_index).transpose()?;
                let inner = Box::pin(self.build(inner)).await?;
                Arc::new(ExistenceCachedStore::new(inner, index, hot, self.clock.clone()))
            }
            StoreConfig::ActionIndex { metadata } => {
                Arc::new(ActionIndexStore::new(self.metadata(metadata).await?.actions, self.clock.clone()))
            }
            StoreConfig::Metered { name, inner } => {
                let metrics = self
                    .metrics
                    .get_or_try_init(|| async { StoreMetrics::register(&self.registry) })
                    .await
                    .map_err(|e| Error::internal(format!("registering store metrics: {e}")))?;
                Arc::new(MeteredStore::new(Box::pin(self.build(inner)).await?, name.clone(), metrics.clone()))
            }
        })
    }

    /// The metadata `config` describes, opened once per builder.
    async fn metadata(&self, config: &MetadataConfig) -> Result<Handles> {
        if let Some(open) = self.metadata.lock().iter().find(|m| &m.config == config) {
            return Ok(Handles { blobs: open.blobs.clone(), actions: open.actions.clone() });
        }
        let (blobs, actions): (Arc<dyn BlobMetadata>, Arc<dyn ActionIndex>) = match config {
            MetadataConfig::Sqlite { path } => {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
                }
                let opened = Arc::new(SqliteMetadata::open(path).await?);
                (opened.clone(), opened)
            }
            MetadataConfig::Postgres { url, schema } => {
                let schema = schema.as_deref().map(expand_env).transpose()?;
                let opened = Arc::new(PostgresMetadata::connect(&expand_env(url)?, schema.as_deref()).await?);
                (opened.clone(), opened)
            }
        };
        let mut open = self.metadata.lock();
        if let Some(other) = open.iter().find(|m| &m.config == config) {
            return Ok(Handles { blobs: other.blobs.clone(), actions: other.actions.clone() });
        }
        open.push(OpenMetadata { config: config.clone(), blobs: blobs.clone(), actions: actions.clone() });
        Ok(Handles { blobs, actions })
    }
}

/// The faces of one opened metadata database.
struct Handles {
    blobs: Arc<dyn BlobMetadata>,
    actions: Arc<dyn ActionIndex>,
}

async fn s3(bucket: &str, settings: &S3Settings) -> Result<S3Store> {
    let settings = S3Settings {
        endpoint: settings.endpoint.as_deref().map(expand_env).transpose()?,
        region: settings.region.as_deref().map(expand_env).transpose()?,
        ..settings.clone()
    };
    S3Store::connect(bucket.to_string(), settings).await
}

fn redis_index(config: &RedisConfig) -> Result<RedisIndex> {
    RedisIndex::new(&expand_env(&config.url)?, config.key_prefix.clone(), Duration::from_secs(config.ttl_seconds))
}
