//! The server's configuration: a TOML file, embedded defaults under a state
//! directory, and command-line overrides on top.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use memobuild_cas::{MetadataConfig, StoreConfig};
use serde::Deserialize;

/// The default byte budget of the embedded CAS.
const DEFAULT_CAS_BYTES: u64 = 20 << 30;

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// The gRPC address (REAPI, ByteStream).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The HTTP address of `/metrics` and `/healthz`; none when unset.
    pub admin_listen: Option<SocketAddr>,
    /// The content-addressed store.
    pub cas: StoreConfig,
    /// Where action results are kept.
    pub action_cache: StoreConfig,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8980))
}

impl ServerConfig {
    /// Embedded defaults: everything under `state_dir`.
    pub fn embedded(state_dir: &Path) -> Self {
        ServerConfig {
            listen: default_listen(),
            admin_listen: None,
            cas: StoreConfig::Evicting {
                max_bytes: DEFAULT_CAS_BYTES,
                low_watermark_bytes: None,
                metadata: MetadataConfig::Sqlite { path: state_dir.join("cas.db") },
                inner: Box::new(StoreConfig::Filesystem { path: state_dir.join("cas"), sync: true }),
            },
            action_cache: StoreConfig::Filesystem { path: state_dir.join("ac"), sync: true },
        }
    }

    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }
}

/// `$XDG_STATE_HOME/memobuild`, else `~/.local/state/memobuild`.
pub fn default_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("memobuild");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/var/lib"));
    home.join(".local/state/memobuild")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn example_config_parses_to_the_composed_shape() {
        let text = r#"
            listen = "0.0.0.0:8980"
            admin_listen = "127.0.0.1:9090"
            [cas]
            type = "evicting"
            max_bytes = 1000
            metadata = { type = "sqlite", path = "/s/cas.db" }
            inner = { type = "filesystem", path = "/s/cas" }
            [action_cache]
            type = "memory"
        "#;
        let config: ServerConfig = toml::from_str(text).unwrap();
        assert_eq!(config.admin_listen, Some("127.0.0.1:9090".parse().unwrap()));
        assert_eq!(
            config.cas,
            StoreConfig::Evicting {
                max_bytes: 1000,
                low_watermark_bytes: None,
                metadata: MetadataConfig::Sqlite { path: "/s/cas.db".into() },
                inner: Box::new(StoreConfig::Filesystem { path: "/s/cas".into(), sync: true }),
            }
        );
        assert_eq!(config.action_cache, StoreConfig::Memory);
    }

    #[test]
    fn unknown_keys_are_errors() {
        let e =
            toml::from_str::<ServerConfig>("lisen = \"x\"\n[cas]\ntype=\"memory\"\n[action_cache]\ntype=\"memory\"")
                .unwrap_err();
        assert!(e.to_string().contains("lisen"), "{e}");
    }

    #[test]
    fn shipped_example_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/memobuild.toml");
        ServerConfig::load(&path).unwrap();
    }
}
