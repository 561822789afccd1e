use std::path::PathBuf;
use std::sync::Arc;

use memobuild_proto::{Result, ResultExt};
use serde::Deserialize;

use crate::{BlobStore, EvictingStore, FilesystemStore, MemoryStore, SqliteMetadata, SystemClock};

/// A store tree as configured: the same shape as the composed stores.
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
    Evicting {
        max_bytes: u64,
        /// Where eviction stops; 80% of `max_bytes` when unset.
        low_watermark_bytes: Option<u64>,
        metadata: MetadataConfig,
        inner: Box<StoreConfig>,
    },
}

/// Where blob metadata lives.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum MetadataConfig {
    Sqlite { path: PathBuf },
}

fn default_sync() -> bool {
    true
}

impl StoreConfig {
    /// Builds the store tree this config describes.
    pub async fn build(&self) -> Result<Arc<dyn BlobStore>> {
        Ok(match self {
            StoreConfig::Memory => Arc::new(MemoryStore::new()),
            StoreConfig::Filesystem { path, sync } => Arc::new(FilesystemStore::open(path.clone(), *sync).await?),
            StoreConfig::Evicting { max_bytes, low_watermark_bytes, metadata, inner } => {
                let MetadataConfig::Sqlite { path } = metadata;
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
                }
                let metadata = Arc::new(SqliteMetadata::open(path).await?);
                let low = low_watermark_bytes.unwrap_or(max_bytes / 10 * 8);
                let inner = Box::pin(inner.build()).await?;
                Arc::new(EvictingStore::new(inner, metadata, Arc::new(SystemClock), *max_bytes, low))
            }
        })
    }
}
