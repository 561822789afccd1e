//! docs/configuration.md matches the config types: every key and every
//! store `type` a config can hold is documented, and every TOML example in
//! the page loads.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use memobuild_cas::{CasLimits, MetadataConfig, RedisConfig, S3Settings, ShardConfig, StoreConfig};
use memobuild_cli::config::{
    AuthSection, OperationStoreConfig, SchedulerSection, ServerConfig, TlsSection, WorkerSection,
};

fn docs() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md")).unwrap()
}

fn sqlite() -> MetadataConfig {
    MetadataConfig::Sqlite { path: "/m.db".into() }
}

fn postgres() -> MetadataConfig {
    MetadataConfig::Postgres { url: "postgres://db".into(), schema: Some("s".into()) }
}

fn s3_settings() -> S3Settings {
    S3Settings { endpoint: Some("http://s3".into()), region: Some("r".into()), ..S3Settings::default() }
}

/// One store of every kind, every optional key set.
fn every_store() -> Vec<StoreConfig> {
    let leaf = || Box::new(StoreConfig::Memory);
    let stores = vec![
        StoreConfig::Memory,
        StoreConfig::Filesystem { path: "/b".into(), sync: true },
        StoreConfig::Evicting { max_bytes: 1, low_watermark_bytes: Some(1), metadata: sqlite(), inner: leaf() },
        StoreConfig::S3 { bucket: "b".into(), settings: s3_settings() },
        StoreConfig::S3Shards { buckets: "a,b".into(), settings: s3_settings() },
        StoreConfig::Sharded {
            shards: vec![ShardConfig { name: "a".into(), weight: 1.0, store: StoreConfig::Memory }],
        },
        StoreConfig::Tiered { fast: leaf(), slow: leaf() },
        StoreConfig::ExistenceCached {
            metadata: postgres(),
            redis: Some(RedisConfig { url: "redis://r".into(), key_prefix: "p".into(), ttl_seconds: 1 }),
            inner: leaf(),
        },
        StoreConfig::ActionIndex { metadata: postgres() },
        StoreConfig::Metered { name: "n".into(), inner: leaf() },
    ];
    // A new kind of store fails to compile here until it is listed above
    // (and so checked against the docs).
    for store in &stores {
        match store {
            StoreConfig::Memory
            | StoreConfig::Filesystem { .. }
            | StoreConfig::Evicting { .. }
            | StoreConfig::S3 { .. }
            | StoreConfig::S3Shards { .. }
            | StoreConfig::Sharded { .. }
            | StoreConfig::Tiered { .. }
            | StoreConfig::ExistenceCached { .. }
            | StoreConfig::ActionIndex { .. }
            | StoreConfig::Metered { .. } => {}
        }
    }
    stores
}

/// Configs that together set every key of every section.
fn every_config() -> Vec<ServerConfig> {
    let mut worker = WorkerSection::new("/w".into());
    worker.slots = Some(2);
    worker.containerd_address = Some("/c.sock".into());
    let full = ServerConfig {
        admin_listen: Some("127.0.0.1:9090".parse().unwrap()),
        otlp_endpoint: Some("http://collector:4317".into()),
        worker: Some(worker),
        auth: Some(AuthSection { principals_file: "/p.toml".into() }),
        tls: Some(TlsSection { cert: "/c".into(), key: "/k".into(), client_ca: Some("/ca".into()) }),
        limits: CasLimits::default(),
        ..ServerConfig::embedded(Path::new("/s"))
    };
    let mut configs = vec![full.clone()];
    for store in [
        OperationStoreConfig::Postgres { url: "postgres://db".into(), schema: Some("s".into()) },
        OperationStoreConfig::Sqlite { path: "/s.db".into() },
    ] {
        match &store {
            OperationStoreConfig::Postgres { .. } | OperationStoreConfig::Sqlite { .. } => {}
        }
        configs.push(ServerConfig {
            scheduler: Some(SchedulerSection { store, ..SchedulerSection::default() }),
            ..full.clone()
        });
    }
    for (i, store) in every_store().into_iter().enumerate() {
        configs.push(ServerConfig {
            cas: store.clone(),
            action_cache: every_store()[(i + 1) % 10].clone(),
            ..full.clone()
        });
    }
    configs
}

/// The keys (by the table they sit in) and the `type` values of a serialized config.
fn walk(value: &toml::Value, table: &str, keys: &mut BTreeSet<(String, String)>, types: &mut BTreeSet<String>) {
    match value {
        toml::Value::Table(entries) => {
            for (key, value) in entries {
                keys.insert((table.to_string(), key.clone()));
                if key == "type" {
                    types.insert(value.as_str().unwrap().to_string());
                }
                walk(value, key, keys, types);
            }
        }
        toml::Value::Array(items) => items.iter().for_each(|item| walk(item, table, keys, types)),
        _ => {}
    }
}

#[test]
fn every_key_and_store_type_is_documented() {
    let (mut keys, mut types) = (BTreeSet::new(), BTreeSet::new());
    for config in every_config() {
        walk(&toml::Value::try_from(&config).unwrap(), "", &mut keys, &mut types);
    }
    let docs = docs();
    let mentioned = |name: &str| {
        [format!("`{name}`"), format!("\n{name} = "), format!("[{name}]"), format!(".{name}]")]
            .iter()
            .any(|form| docs.contains(form.as_str()))
    };
    // Keys under `properties` are the user's platform properties, not options.
    let undocumented: Vec<_> = keys.iter().filter(|(table, key)| table != "properties" && !mentioned(key)).collect();
    assert!(undocumented.is_empty(), "docs/configuration.md does not document (table, key): {undocumented:?}");
    let typed = |t: &str| docs.contains(&format!("`{t}`")) || docs.contains(&format!("type = \"{t}\""));
    let untyped: Vec<_> = types.iter().filter(|t| !typed(t)).collect();
    assert!(untyped.is_empty(), "docs/configuration.md does not document store types {untyped:?}");
    // The walk saw what it should: every store kind and the nested sections.
    assert!(types.len() >= 12, "{types:?}");
    for key in ["network", "principals_file", "client_ca", "head_concurrency", "ttl_seconds", "weight"] {
        assert!(keys.iter().any(|(_, k)| k == key), "{key} not in {keys:?}");
    }
}

/// Every ```toml block of the page that has a `[cas]` table loads as a
/// whole config, with the sections every role needs.
#[test]
fn documented_examples_load() {
    let docs = docs();
    let blocks: Vec<&str> = docs.split("```toml\n").skip(1).map(|b| b.split("```").next().unwrap()).collect();
    let mut loaded = 0;
    for block in blocks.iter().filter(|b| b.contains("[cas]")) {
        let dir = tempfile::tempdir().unwrap();
        let path: PathBuf = dir.path().join("memobuild.toml");
        std::fs::write(&path, block).unwrap();
        let config = ServerConfig::load(&path).unwrap_or_else(|e| panic!("{e:#}\n{block}"));
        assert!(config.scheduler.is_some() && config.worker.is_some(), "{block}");
        loaded += 1;
    }
    assert!(loaded >= 1, "no complete example in docs/configuration.md");
}
