//! The server's configuration: a TOML file, embedded defaults under a state
//! directory, and command-line overrides on top.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use memobuild_cas::{expand_env, CasLimits, MetadataConfig, StoreConfig};
use memobuild_worker::network::NetworkConfig;
use memobuild_worker::SandboxConfig;
use serde::{Deserialize, Serialize};

/// The default byte budget of the embedded CAS.
const DEFAULT_CAS_BYTES: u64 = 20 << 30;

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// The gRPC address (REAPI, ByteStream).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The HTTP address of `/metrics`, `/healthz`, `/readyz` and the
    /// dashboard; none when unset.
    pub admin_listen: Option<SocketAddr>,
    /// An OTLP/gRPC collector to send traces to, e.g. `http://collector:4317`
    /// (`--otlp-endpoint` and `OTEL_EXPORTER_OTLP_ENDPOINT` win over it).
    pub otlp_endpoint: Option<String>,
    /// The content-addressed store.
    pub cas: StoreConfig,
    /// Where action results are kept.
    pub action_cache: StoreConfig,
    /// Remote execution; the endpoint serves only the cache without it.
    pub scheduler: Option<SchedulerSection>,
    /// A worker inside this process, dialing this process's scheduler.
    pub worker: Option<WorkerSection>,
    /// `[limits]`: what one client request may ask of the CAS services.
    #[serde(default)]
    pub limits: CasLimits,
    /// `[auth]`: who may call, and what they may do. Open without it.
    pub auth: Option<AuthSection>,
    /// `[tls]`: TLS on the gRPC port (clients use grpcs://).
    pub tls: Option<TlsSection>,
}

/// `[auth]`: every call needs a bearer token or a client certificate that
/// the principals file names.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    /// Hashed tokens and certificate names with their capabilities and
    /// instances; read again when it changes.
    pub principals_file: PathBuf,
}

/// `[tls]`: the server's certificate, and the CA of client certificates.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// PEM certificate chain and private key of the server.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// PEM CA that signs client certificates (mTLS); clients without a
    /// certificate may still present a token.
    pub client_ca: Option<PathBuf>,
}

/// `[scheduler]`: durable operation state and the rules of dispatch.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SchedulerSection {
    pub store: OperationStoreConfig,
    /// Seconds a worker may go without a heartbeat before its actions are requeued.
    #[serde(default = "default_lease")]
    pub lease_seconds: u64,
    /// Times an action is handed out before it fails.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// Timeout of actions that set none, and the cap on any action's timeout.
    #[serde(default = "default_timeout")]
    pub default_timeout_seconds: u64,
    #[serde(default = "default_max_timeout")]
    pub max_timeout_seconds: u64,
    /// The most bytes one layer of a base image a build pulls or imports
    /// may decompress to; a bigger one fails the build, naming it.
    #[serde(default = "default_max_layer_bytes")]
    pub max_layer_bytes: u64,
}

fn default_max_layer_bytes() -> u64 {
    memobuild_oci::DEFAULT_MAX_LAYER_BYTES
}

/// Where the scheduler keeps operations.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OperationStoreConfig {
    Sqlite { path: PathBuf },
    Postgres { url: String, schema: Option<String> },
}

/// `[worker]`: an executor of actions.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WorkerSection {
    pub work_dir: PathBuf,
    /// Bytes of the local input file cache.
    #[serde(default = "default_worker_cache")]
    pub cache_max_bytes: u64,
    /// Actions run at once; the number of CPUs when unset.
    pub slots: Option<u32>,
    /// Platform properties offered to actions.
    #[serde(default = "default_properties")]
    pub properties: BTreeMap<String, String>,
    /// Run Dockerfile steps (RUN in containerd, COPY, WORKDIR) for remote builds.
    #[serde(default = "default_true")]
    pub dockerfile_steps: bool,
    /// containerd's socket [default: /run/containerd/containerd.sock, else a
    /// private containerd under `work_dir`, started on the first RUN].
    pub containerd_address: Option<PathBuf>,
    /// Run RUN steps in a user namespace, `"HOST_ID[:SIZE]"`: ids 0 to
    /// SIZE-1 (default 65536) inside are host ids from HOST_ID up.
    pub userns_remap: Option<String>,
    /// What runs RUN steps' containers: `auto` (the default: crun when it
    /// can run here, else runc), `runc`, `crun` or a path.
    pub oci_runtime: Option<String>,
    /// What RUN steps may reach (`egress`, `host`, `blocked`), and how
    /// their default network is laid out (`subnets`, `resolv_conf`).
    #[serde(default)]
    pub network: NetworkConfig,
    /// The root worker's sandbox for actions: what they see (`read_only`,
    /// `hidden`), their user and limits.
    #[serde(default)]
    pub sandbox: SandboxConfig,
    /// The most bytes one layer of an action's `container-image` may
    /// decompress to; a bigger one fails the action, naming it.
    #[serde(default = "default_max_layer_bytes")]
    pub max_layer_bytes: u64,
}

impl SchedulerSection {
    /// Fills `${VAR}` and `${VAR:-default}` in the store's PostgreSQL URL and
    /// schema from the environment, as the store trees do.
    pub fn expand_env(mut self) -> anyhow::Result<Self> {
        let expand = |value: &str| expand_env(value).map_err(|e| anyhow::anyhow!("{}", e.message()));
        if let OperationStoreConfig::Postgres { url, schema } = &mut self.store {
            *url = expand(url)?;
            if let Some(schema) = schema {
                *schema = expand(schema)?;
            }
        }
        Ok(self)
    }

    /// Where builds keep what they fetch (`ADD URL` notes): beside the
    /// SQLite store, else in the temp dir.
    pub fn work_dir(&self) -> PathBuf {
        match &self.store {
            OperationStoreConfig::Sqlite { path } => path.parent().unwrap_or_else(|| Path::new(".")).join("builds"),
            OperationStoreConfig::Postgres { .. } => std::env::temp_dir().join("memobuild-builds"),
        }
    }
}

impl Default for SchedulerSection {
    /// Embedded defaults with the store in the current directory; set `store`.
    fn default() -> Self {
        SchedulerSection {
            store: OperationStoreConfig::Sqlite { path: PathBuf::from("scheduler.db") },
            lease_seconds: default_lease(),
            max_attempts: default_attempts(),
            default_timeout_seconds: default_timeout(),
            max_timeout_seconds: default_max_timeout(),
            max_layer_bytes: default_max_layer_bytes(),
        }
    }
}

impl WorkerSection {
    /// A worker with the default cache size, slots and properties.
    pub fn new(work_dir: PathBuf) -> Self {
        WorkerSection {
            work_dir,
            cache_max_bytes: default_worker_cache(),
            slots: None,
            properties: default_properties(),
            dockerfile_steps: true,
            containerd_address: None,
            userns_remap: None,
            oci_runtime: None,
            network: NetworkConfig::default(),
            sandbox: SandboxConfig::default(),
            max_layer_bytes: default_max_layer_bytes(),
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_lease() -> u64 {
    30
}

fn default_attempts() -> u32 {
    3
}

fn default_timeout() -> u64 {
    3600
}

fn default_max_timeout() -> u64 {
    4 * 3600
}

fn default_worker_cache() -> u64 {
    10 << 30
}

fn default_properties() -> BTreeMap<String, String> {
    BTreeMap::from([("OSFamily".to_string(), "Linux".to_string())])
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
            otlp_endpoint: None,
            cas: StoreConfig::Evicting {
                max_bytes: DEFAULT_CAS_BYTES,
                low_watermark_bytes: None,
                metadata: MetadataConfig::Sqlite { path: state_dir.join("cas.db") },
                inner: Box::new(StoreConfig::Filesystem { path: state_dir.join("cas"), sync: true }),
            },
            // An action result lost in a power cut costs a re-run, never a wrong
            // hit (each is renamed into place whole), so it is not synced.
            action_cache: StoreConfig::Filesystem { path: state_dir.join("ac"), sync: false },
            scheduler: Some(SchedulerSection {
                store: OperationStoreConfig::Sqlite { path: state_dir.join("scheduler.db") },
                ..SchedulerSection::default()
            }),
            worker: Some(WorkerSection::new(state_dir.join("worker"))),
            limits: CasLimits::default(),
            auth: None,
            tls: None,
        }
    }

    /// The cache alone: what `memobuild cas` serves.
    pub fn cache_only(mut self) -> Self {
        self.scheduler = None;
        self.worker = None;
        self
    }

    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// `[scheduler]` of the file at `path`, for `memobuild scheduler --config`,
    /// its store's `${VAR}`s filled from the environment.
    pub fn scheduler_section(&self, path: &Path) -> anyhow::Result<SchedulerSection> {
        let section =
            self.scheduler.clone().with_context(|| format!("{} has no [scheduler] section", path.display()))?;
        section.expand_env().with_context(|| format!("{}: [scheduler.store]", path.display()))
    }

    /// `[worker]` of the file at `path`, for `memobuild worker --config`.
    pub fn worker_section(&self, path: &Path) -> anyhow::Result<WorkerSection> {
        self.worker.clone().with_context(|| format!("{} has no [worker] section", path.display()))
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
    fn auth_and_tls_sections_parse() {
        let text = "[cas]\ntype = \"memory\"\n[action_cache]\ntype = \"memory\"\n\
                    [auth]\nprincipals_file = \"/etc/p.toml\"\n[tls]\ncert = \"/c.pem\"\nkey = \"/k.pem\"\n";
        let config: ServerConfig = toml::from_str(text).unwrap();
        assert_eq!(config.auth, Some(AuthSection { principals_file: "/etc/p.toml".into() }));
        let tls = config.tls.unwrap();
        assert_eq!((tls.cert, tls.client_ca), (PathBuf::from("/c.pem"), None));
        let e = toml::from_str::<ServerConfig>(&text.replace("principals_file", "tokens")).unwrap_err();
        assert!(e.to_string().contains("tokens"), "{e}");
    }

    #[test]
    fn scheduler_store_url_is_filled_from_the_environment() {
        let text = "[cas]\ntype = \"memory\"\n[action_cache]\ntype = \"memory\"\n[scheduler]\n\
                    store = { type = \"postgres\", url = \"postgres://${MEMOBUILD_TEST_UNSET_HOST:-db}/m\", \
                    schema = \"${MEMOBUILD_TEST_UNSET_SCHEMA:-s}\" }\n";
        let config: ServerConfig = toml::from_str(text).unwrap();
        let section = config.scheduler_section(Path::new("m.toml")).unwrap();
        let expected = OperationStoreConfig::Postgres { url: "postgres://db/m".into(), schema: Some("s".into()) };
        assert_eq!(section.store, expected);
        let e = config.worker_section(Path::new("m.toml")).unwrap_err();
        assert!(e.to_string().contains("m.toml has no [worker] section"), "{e}");
    }

    #[test]
    fn shipped_example_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/memobuild.toml");
        ServerConfig::load(&path).unwrap();
    }
}
