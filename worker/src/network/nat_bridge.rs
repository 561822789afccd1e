//! A worker's bridge, its `/24` and the nftables table around it.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use memobuild_proto::{Error, Result, ResultExt};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::{run_tool, NetworkConfig};

/// Where bridges note their owner's pid; a bridge whose owner is gone is
/// taken over by the next worker that looks for one.
const OWNERS_DIR: &str = "/run/memobuild/network";
/// Where `ip netns` keeps named namespaces.
const NETNS_DIR: &str = "/run/netns";
/// This network namespace's links.
const LINKS_DIR: &str = "/sys/class/net";

/// The bridge this worker owns, `mbrN` on `A.B.N.0/24`. Plain data: the
/// process it is handed to ([`NatBridge::hand_to`]) can remove it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NatBridge {
    index: u8,
    base: [u8; 2],
}

impl NatBridge {
    /// Creates the first free bridge of `config.subnets` (taking over one
    /// whose worker died), its address and its nftables table, and turns on
    /// IPv4 forwarding.
    pub async fn create(config: &NetworkConfig) -> Result<Self> {
        if config.subnets.prefix != 16 {
            return Err(Error::invalid_argument(format!(
                "[worker.network] subnets = {:?}: must be a /16",
                config.subnets.to_string()
            )));
        }
        let [a, b, _, _] = config.subnets.address.octets();
        std::fs::create_dir_all(OWNERS_DIR).with_context(|| format!("creating {OWNERS_DIR}"))?;
        let lock_path = Path::new(OWNERS_DIR).join("lock");
        let lock_file =
            std::fs::File::create(&lock_path).with_context(|| format!("creating {}", lock_path.display()))?;
        // Other workers on this host pick bridges under the same lock.
        let _lock = tokio::task::spawn_blocking(move || Flock::lock(lock_file, FlockArg::LockExclusive))
            .await
            .map_err(|e| Error::internal(format!("waiting for {}: {e}", lock_path.display())))?
            .map_err(|(_, e)| Error::internal(format!("locking {OWNERS_DIR}/lock: {e}")))?;
        for index in 0..=u8::MAX {
            let bridge = NatBridge { index, base: [a, b] };
            match owner(&bridge.owner_file()) {
                Some(pid) if process_alive(pid) => continue,
                Some(_) => bridge.remove().await,
                None if link_exists(&bridge.name()) => continue,
                None => {}
            }
            bridge.set_up(config).await?;
            return Ok(bridge);
        }
        Err(Error::resource_exhausted(format!(
            "every bridge of [worker.network] subnets = {} is in use",
            config.subnets
        )))
    }

    pub fn name(&self) -> String {
        format!("mbr{}", self.index)
    }

    fn table(&self) -> String {
        format!("memobuild_{}", self.index)
    }

    /// This worker's end of the bridge: the steps' router and nameserver.
    pub fn gateway(&self) -> Ipv4Addr {
        self.address(1)
    }

    /// The `host`-th address of the bridge's `/24`.
    pub fn address(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(self.base[0], self.base[1], self.index, host)
    }

    /// The name of the `slot`-th namespace, and of its host-side veth.
    pub fn sandbox_names(&self, slot: u8) -> (String, String) {
        (format!("{}-{slot}", self.name()), format!("mbv{}x{slot}", self.index))
    }

    /// Names process `pid` the bridge's owner, so that no other worker
    /// takes the bridge over while `pid` lives.
    pub fn hand_to(&self, pid: u32) -> Result<()> {
        std::fs::write(self.owner_file(), pid.to_string())
            .with_context(|| format!("writing {}", self.owner_file().display()))
    }

    fn owner_file(&self) -> PathBuf {
        Path::new(OWNERS_DIR).join(self.name())
    }

    async fn set_up(&self, config: &NetworkConfig) -> Result<()> {
        let name = self.name();
        run_tool("ip", &["link", "add", &name, "type", "bridge"], "").await?;
        std::fs::write(self.owner_file(), std::process::id().to_string())
            .with_context(|| format!("writing {}", self.owner_file().display()))?;
        // No IPv6 on the bridge: a step could otherwise reach this host's
        // services through a link-local address.
        let ipv6 = format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6");
        if Path::new(&ipv6).exists() {
            std::fs::write(&ipv6, "1").with_context(|| format!("writing {ipv6}"))?;
        }
        let address = format!("{}/24", self.gateway());
        run_tool("ip", &["-batch", "-"], &format!("addr add {address} dev {name}\nlink set {name} up\n")).await?;
        run_tool("nft", &["-f", "-"], &self.ruleset(config)).await?;
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").context("turning on IPv4 forwarding")?;
        Ok(())
    }

    /// The table: masquerade the bridge's traffic out, keep it off this
    /// host (but for DNS to the forwarder) and off the blocked networks.
    fn ruleset(&self, config: &NetworkConfig) -> String {
        let (bridge, table, gateway) = (self.name(), self.table(), self.gateway());
        let subnet = format!("{}/24", self.address(0));
        let mut forward = String::new();
        if !config.blocked.is_empty() {
            let blocked: Vec<String> = config.blocked.iter().map(ToString::to_string).collect();
            let _ = writeln!(forward, "    iifname \"{bridge}\" ip daddr {{ {} }} drop", blocked.join(", "));
        }
        format!(
            "table inet {table} {{\n\
             \x20 chain postrouting {{\n\
             \x20   type nat hook postrouting priority srcnat; policy accept;\n\
             \x20   ip saddr {subnet} oifname != \"{bridge}\" masquerade\n\
             \x20 }}\n\
             \x20 chain input {{\n\
             \x20   type filter hook input priority filter; policy accept;\n\
             \x20   iifname \"{bridge}\" ip daddr {gateway} udp dport 53 accept\n\
             \x20   iifname \"{bridge}\" ip daddr {gateway} tcp dport 53 accept\n\
             \x20   iifname \"{bridge}\" drop\n\
             \x20 }}\n\
             \x20 chain forward {{\n\
             \x20   type filter hook forward priority filter; policy accept;\n\
             \x20   iifname \"{bridge}\" meta nfproto ipv6 drop\n\
             {forward}\
             \x20   iifname \"{bridge}\" accept\n\
             \x20   oifname \"{bridge}\" ct state established,related accept\n\
             \x20   oifname \"{bridge}\" drop\n\
             \x20 }}\n\
             }}\n"
        )
    }

    /// Removes the bridge, its namespaces, its table and its owner note;
    /// what is already gone is fine.
    pub async fn remove(&self) {
        // Host-side veths first: deleting one removes its pair at once,
        // while a deleted namespace takes its links with it only when the
        // kernel gets round to it, after the next owner may want the names.
        let veth_prefix = format!("mbv{}x", self.index);
        for veth in names_in(LINKS_DIR).into_iter().filter(|l| l.starts_with(&veth_prefix)) {
            let _ = run_tool("ip", &["link", "del", &veth], "").await;
        }
        let prefix = format!("{}-", self.name());
        for namespace in names_in(NETNS_DIR).into_iter().filter(|n| n.starts_with(&prefix)) {
            let _ = run_tool("ip", &["netns", "del", &namespace], "").await;
        }
        let _ = run_tool("nft", &["delete", "table", "inet", &self.table()], "").await;
        let _ = run_tool("ip", &["link", "del", &self.name()], "").await;
        let _ = std::fs::remove_file(self.owner_file());
    }
}

fn owner(file: &Path) -> Option<i32> {
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

fn process_alive(pid: i32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

pub(super) fn link_exists(name: &str) -> bool {
    Path::new(LINKS_DIR).join(name).exists()
}

/// The names of the entries of `dir` (none if it cannot be read).
fn names_in(dir: &str) -> Vec<String> {
    std::fs::read_dir(dir).into_iter().flatten().flatten().filter_map(|e| e.file_name().into_string().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruleset_blocks_the_host_and_the_blocked_networks() {
        let bridge = NatBridge { index: 7, base: [10, 213] };
        let rules = bridge.ruleset(&NetworkConfig::default());
        assert!(rules.contains("ip saddr 10.213.7.0/24 oifname != \"mbr7\" masquerade"), "{rules}");
        assert!(rules.contains("iifname \"mbr7\" ip daddr 10.213.7.1 udp dport 53 accept"), "{rules}");
        assert!(rules.contains("iifname \"mbr7\" ip daddr { 169.254.0.0/16 } drop"), "{rules}");
        assert_eq!(bridge.sandbox_names(3), ("mbr7-3".to_string(), "mbv7x3".to_string()));
    }
}
