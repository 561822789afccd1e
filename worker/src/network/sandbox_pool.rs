//! Network namespaces on the worker's bridge, prepared ahead and reused.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use memobuild_proto::{Error, Result, ResultExt};
use parking_lot::Mutex;

use super::dns_forwarder::{nameservers, step_resolv_conf, DnsForwarder};
use super::nat_bridge::NatBridge;
use super::{run_tool, NetworkConfig};

/// The first host address of the `/24` a namespace gets (`.1` is the
/// gateway); the last is `.254`.
const FIRST_HOST: u8 = 2;
const LAST_HOST: u8 = 254;

/// One prepared namespace: `eth0` on the bridge, a default route through
/// the gateway, `lo` up.
struct Sandbox {
    slot: u8,
    name: String,
}

/// The default network of one worker.
pub struct NetworkPool {
    bridge: NatBridge,
    dns: tokio::sync::Mutex<Option<DnsForwarder>>,
    /// The steps' `/etc/resolv.conf`.
    resolv_conf: tempfile::NamedTempFile,
    idle: Mutex<Vec<Sandbox>>,
    /// Address slots not held by any namespace.
    free: Mutex<Vec<u8>>,
    refilling: AtomicBool,
    /// The bridge is another process's to remove.
    handed_over: AtomicBool,
}

/// A namespace a step holds; it goes back to the pool when dropped.
pub struct SandboxLease {
    pool: Arc<NetworkPool>,
    sandbox: Option<Sandbox>,
}

impl SandboxLease {
    /// The namespace's path, for the container's spec.
    pub fn netns(&self) -> PathBuf {
        self.sandbox.as_ref().map(|s| Path::new("/run/netns").join(&s.name)).unwrap_or_default()
    }

    /// The steps' `/etc/resolv.conf` on this host.
    pub fn resolv_conf(&self) -> PathBuf {
        self.pool.resolv_conf.path().to_path_buf()
    }
}

impl Drop for SandboxLease {
    fn drop(&mut self) {
        if let Some(sandbox) = self.sandbox.take() {
            self.pool.idle.lock().push(sandbox);
        }
    }
}

impl NetworkPool {
    /// Sets up the bridge, its table and the DNS forwarder, with one
    /// namespace ready.
    pub async fn start(config: &NetworkConfig) -> Result<Arc<Self>> {
        let host_resolv = std::fs::read_to_string(&config.resolv_conf)
            .with_context(|| format!("reading {} for RUN's DNS", config.resolv_conf.display()))?;
        let bridge = NatBridge::create(config).await?;
        let started = Self::serve(bridge, &host_resolv).await;
        let pool = match started {
            Ok(pool) => pool,
            Err((bridge, e)) => {
                bridge.remove().await;
                return Err(e);
            }
        };
        let ready = pool.create().await?;
        pool.idle.lock().push(ready);
        Ok(pool)
    }

    async fn serve(bridge: NatBridge, host_resolv: &str) -> std::result::Result<Arc<Self>, (NatBridge, Error)> {
        let dns = match DnsForwarder::start(bridge.gateway(), nameservers(host_resolv)).await {
            Ok(dns) => dns,
            Err(e) => return Err((bridge, e)),
        };
        let resolv_conf = tempfile::NamedTempFile::new()
            .and_then(|mut file| {
                use std::io::Write as _;
                use std::os::unix::fs::PermissionsExt as _;
                file.write_all(step_resolv_conf(host_resolv, bridge.gateway()).as_bytes())?;
                // Readable by every user of the step, as apt's `_apt`.
                file.as_file().set_permissions(std::fs::Permissions::from_mode(0o644))?;
                Ok(file)
            })
            .context("writing the steps' resolv.conf");
        let resolv_conf = match resolv_conf {
            Ok(file) => file,
            Err(e) => return Err((bridge, e)),
        };
        Ok(Arc::new(NetworkPool {
            bridge,
            dns: tokio::sync::Mutex::new(Some(dns)),
            resolv_conf,
            idle: Mutex::new(Vec::new()),
            free: Mutex::new((FIRST_HOST..=LAST_HOST).rev().collect()),
            refilling: AtomicBool::new(false),
            handed_over: AtomicBool::new(false),
        }))
    }

    /// The bridge's gateway: this worker's side of the network.
    pub fn gateway(&self) -> std::net::Ipv4Addr {
        self.bridge.gateway()
    }

    /// A namespace for one step: a prepared one when there is one (another
    /// is then prepared in the background), else a new one.
    pub async fn acquire(self: &Arc<Self>) -> Result<SandboxLease> {
        let ready = self.idle.lock().pop();
        let sandbox = match ready {
            Some(sandbox) => sandbox,
            None => self.create().await?,
        };
        if self.idle.lock().is_empty() && !self.refilling.swap(true, Ordering::SeqCst) {
            let pool = self.clone();
            tokio::spawn(async move {
                if let Ok(spare) = pool.create().await {
                    pool.idle.lock().push(spare);
                }
                pool.refilling.store(false, Ordering::SeqCst);
            });
        }
        Ok(SandboxLease { pool: self.clone(), sandbox: Some(sandbox) })
    }

    async fn create(&self) -> Result<Sandbox> {
        let slot = self.free.lock().pop().ok_or_else(|| {
            Error::resource_exhausted(format!(
                "every address of bridge {} is held by a running step",
                self.bridge.name()
            ))
        })?;
        let sandbox = Sandbox { slot, name: self.bridge.sandbox_names(slot).0 };
        match self.set_up(&sandbox).await {
            Ok(()) => Ok(sandbox),
            Err(e) => {
                let _ = run_tool("ip", &["netns", "del", &sandbox.name], "").await;
                self.free.lock().push(slot);
                Err(e)
            }
        }
    }

    async fn set_up(&self, sandbox: &Sandbox) -> Result<()> {
        let (name, veth) = self.bridge.sandbox_names(sandbox.slot);
        let bridge = self.bridge.name();
        if super::nat_bridge::link_exists(&veth) {
            // Left by an owner of this bridge that died: this slot is ours.
            let _ = run_tool("ip", &["link", "del", &veth], "").await;
        }
        let host_side = format!(
            "netns add {name}\n\
             link add {veth} type veth peer name eth0 netns {name}\n\
             link set {veth} master {bridge}\n\
             link set {veth} type bridge_slave isolated on\n\
             link set {veth} up\n"
        );
        run_tool("ip", &["-batch", "-"], &host_side).await?;
        let inside = format!(
            "addr add {}/24 dev eth0\nlink set eth0 up\nlink set lo up\nroute add default via {}\n",
            self.bridge.address(sandbox.slot),
            self.bridge.gateway()
        );
        run_tool("ip", &["-n", &name, "-batch", "-"], &inside).await
    }

    /// Stops the forwarder, removes the namespaces, the bridge and its
    /// table (unless the bridge was handed over).
    pub async fn shutdown(&self) {
        self.stop_serving().await;
        if !self.handed_over.load(Ordering::SeqCst) {
            self.bridge.remove().await;
        }
    }

    /// Stops the forwarder and gives up the bridge, namespaces and table
    /// without removing them: another process removes them
    /// ([`NatBridge::remove`]) once it owns the bridge
    /// ([`NatBridge::hand_to`]).
    pub async fn hand_over(&self) -> NatBridge {
        self.handed_over.store(true, Ordering::SeqCst);
        self.stop_serving().await;
        self.bridge.clone()
    }

    async fn stop_serving(&self) {
        if let Some(dns) = self.dns.lock().await.take() {
            dns.stop().await;
        }
        self.idle.lock().clear();
    }
}
