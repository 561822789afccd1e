use std::path::PathBuf;
use std::sync::Arc;

use memobuild_proto::Result;
use serde::{Deserialize, Serialize};

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
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
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
    /// Small entries (action results) in the metadata database: SQLite
    /// embedded, PostgreSQL shared by the replicas of a cluster.
    ActionIndex {
        metadata: MetadataConfig,
    },
    /// Prometheus requests, bytes and latency under `name`.
    Metered {
        name: String,
        inner: Box<StoreConfig>,
    },
}

/// One shard of a `sharded` store. Its name is what blobs hash against:
/// keep it when the store behind it moves.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ShardConfig {
    pub name: String,
    #[serde(default = "default_weight")]
    pub weight: f64,
    pub store: StoreConfig,
}

/// Where blob metadata lives. Stores configured with equal metadata share
/// one connection and one view of it.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum MetadataConfig {
    Sqlite { path: PathBuf },
    Postgres { url: String, schema: Option<String> },
}

/// The Redis hot index of an `existence_cached` store.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
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
    /// The metadata of every evicting store in the tree that lives in a
    /// database other processes can reach (PostgreSQL): where a scheduler
    /// running apart pins what its work needs.
    pub fn shared_eviction_metadata(&self) -> Vec<MetadataConfig> {
        let mut found = Vec::new();
        let mut stack = vec![self];
        while let Some(config) = stack.pop() {
            match config {
                StoreConfig::Evicting { metadata, inner, .. } => {
                    if matches!(metadata, MetadataConfig::Postgres { .. }) && !found.contains(metadata) {
                        found.push(metadata.clone());
                    }
                    stack.push(inner);
                }
                StoreConfig::ExistenceCached { inner, .. } | StoreConfig::Metered { inner, .. } => stack.push(inner),
                StoreConfig::Tiered { fast, slow } => stack.extend([&**fast, &**slow]),
                StoreConfig::Sharded { shards } => stack.extend(shards.iter().map(|s| &s.store)),
                StoreConfig::Memory
                | StoreConfig::Filesystem { .. }
                | StoreConfig::S3 { .. }
                | StoreConfig::S3Shards { .. }
                | StoreConfig::ActionIndex { .. } => {}
            }
        }
        found
    }

    /// Builds the store tree this config describes, its metrics in a
    /// registry of its own (see [`StoreBuilder`] to share one).
    pub async fn build(&self) -> Result<Arc<dyn BlobStore>> {
        StoreBuilder::new(prometheus::Registry::new()).build(self).await
    }

    /// The metadata databases and Redis indexes the tree uses, each once
    /// (for health checks).
    pub fn dependencies(&self, metadata: &mut Vec<MetadataConfig>, redis: &mut Vec<RedisConfig>) {
        fn add<T: Clone + PartialEq>(list: &mut Vec<T>, item: &T) {
            if !list.contains(item) {
                list.push(item.clone());
            }
        }
        match self {
            StoreConfig::Memory
            | StoreConfig::Filesystem { .. }
            | StoreConfig::S3 { .. }
            | StoreConfig::S3Shards { .. } => {}
            StoreConfig::Evicting { metadata: m, inner, .. } => {
                add(metadata, m);
                inner.dependencies(metadata, redis);
            }
            StoreConfig::ExistenceCached { metadata: m, redis: r, inner } => {
                add(metadata, m);
                if let Some(r) = r {
                    add(redis, r);
                }
                inner.dependencies(metadata, redis);
            }
            StoreConfig::ActionIndex { metadata: m } => add(metadata, m),
            StoreConfig::Sharded { shards } => shards.iter().for_each(|s| s.store.dependencies(metadata, redis)),
            StoreConfig::Tiered { fast, slow } => {
                fast.dependencies(metadata, redis);
                slow.dependencies(metadata, redis);
            }
            StoreConfig::Metered { inner, .. } => inner.dependencies(metadata, redis),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::path::Path;

    use super::*;
    use crate::test_services;

    fn deploy_configs(dir: &Path, found: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                deploy_configs(&path, found);
            } else if path.extension().is_some_and(|e| e == "toml") {
                found.push(path);
            }
        }
    }

    fn store_sections(text: &str) -> (StoreConfig, StoreConfig) {
        let mut table: toml::Table = toml::from_str(text).unwrap();
        let mut section = |name: &str| table.remove(name).unwrap().try_into::<StoreConfig>().unwrap();
        (section("cas"), section("action_cache"))
    }

    #[test]
    fn every_deploy_config_parses() {
        let mut configs = Vec::new();
        deploy_configs(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy"), &mut configs);
        assert!(configs.iter().any(|p| p.ends_with("config/cluster.toml")), "{configs:?}");
        for path in configs {
            let text = std::fs::read_to_string(&path).unwrap();
            let parsed = std::panic::catch_unwind(|| store_sections(&text));
            assert!(parsed.is_ok(), "{} does not parse", path.display());
        }
    }

    #[test]
    fn cluster_config_has_the_shape_of_the_composed_stores() {
        let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config/cluster.toml"));
        let (cas, _) = store_sections(&text.unwrap());
        // A scheduler pins in the shared PostgreSQL, not in a replica's local SQLite.
        let shared = cas.shared_eviction_metadata();
        assert!(matches!(shared.as_slice(), [MetadataConfig::Postgres { .. }]), "{shared:?}");
        let StoreConfig::Metered { inner, .. } = cas else { panic!("{cas:?}") };
        let StoreConfig::Evicting { inner, metadata, .. } = *inner else { panic!() };
        assert!(matches!(metadata, MetadataConfig::Postgres { .. }));
        let StoreConfig::ExistenceCached { inner, redis: Some(_), .. } = *inner else { panic!() };
        let StoreConfig::Tiered { slow, .. } = *inner else { panic!() };
        let StoreConfig::Metered { inner, .. } = *slow else { panic!() };
        let StoreConfig::S3Shards { buckets, settings } = *inner else { panic!() };
        assert_eq!(buckets, "${S3_BUCKETS}");
        assert!(settings.path_style);
    }

    /// deploy/config/cluster.toml, filled from the environment as a replica
    /// is, against the real moto, PostgreSQL and Redis: the whole composed
    /// store passes the conformance suite.
    #[tokio::test]
    async fn cluster_config_builds_and_passes_conformance() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config/cluster.toml");
        let local = tempfile::tempdir().unwrap();
        // Its own Redis keys: the index outlives a run, and would answer for
        // blobs an earlier run stored in other buckets.
        let prefix = test_services::unique("memobuild-test:");
        let text = std::fs::read_to_string(path)
            .unwrap()
            .replace("/var/cache/memobuild", &local.path().display().to_string())
            .replace("\"memobuild:cas:\"", &format!("\"{prefix}:\""));
        assert!(text.contains(&prefix), "the config names its Redis key prefix");
        let (cas, action_cache) = store_sections(&text);
        let buckets = [test_services::unique("c1-"), test_services::unique("c2-")];
        let schema = test_services::unique("cluster_test_");
        for (name, value) in [
            ("S3_ENDPOINT", test_services::s3_endpoint()),
            ("S3_BUCKETS", buckets.join(",")),
            ("DATABASE_URL", test_services::postgres_url()),
            ("DATABASE_SCHEMA", schema.clone()),
            ("REDIS_URL", test_services::redis_url()),
            ("AWS_ACCESS_KEY_ID", "memobuild-test".into()),
            ("AWS_SECRET_ACCESS_KEY", "memobuild-test".into()),
        ] {
            std::env::set_var(name, value);
        }
        let builder = crate::StoreBuilder::new(prometheus::Registry::new());
        let store = builder.build(&cas).await.unwrap();
        builder.build(&action_cache).await.unwrap();
        crate::conformance::run(store.as_ref()).await;
        let pool = crate::connect_postgres(&test_services::postgres_url(), None, 1, "cleanup").await.unwrap();
        sqlx::query(&format!("DROP SCHEMA {schema} CASCADE")).execute(&pool).await.unwrap();
    }
}
