//! `--add-host HOST:IP`: entries in every RUN step's `/etc/hosts`. The file
//! is generated for the step and bound read-only over `/etc/hosts`, so it
//! never lands in a layer and, as in BuildKit, is not part of any key.
//! `HOST:host-gateway` entries get the gateway of RUN's default network on
//! this worker, whatever the step's network.

use std::fmt::Write as _;
use std::net::IpAddr;

use memobuild_engine::{HostAddress, HostEntry, HOST_GATEWAY};
use memobuild_proto::{Error, Result, ResultExt};

use crate::containerd::SpecMount;

/// Where a step's `/etc/hosts` is.
const HOSTS: &str = "/etc/hosts";
/// What a step without the host's network resolves locally (its hostname
/// is `memobuild`).
const LOCALHOST: &str = "127.0.0.1\tlocalhost memobuild\n::1\tlocalhost ip6-localhost ip6-loopback\n";

/// The generated hosts files: one for steps in their own network
/// namespace, one (the host's `/etc/hosts` plus the entries) for
/// `--network=host` steps.
pub struct HostsFiles {
    dir: tempfile::TempDir,
}

impl HostsFiles {
    /// `None` without entries: steps keep the `/etc/hosts` they have today.
    /// `gateway` is what `host-gateway` stands for.
    pub fn create(entries: &[HostEntry], gateway: Option<IpAddr>) -> Result<Option<Self>> {
        if entries.is_empty() {
            return Ok(None);
        }
        let dir = tempfile::tempdir().context("creating a directory for the --add-host hosts file")?;
        let host_file = std::fs::read_to_string(HOSTS).unwrap_or_else(|_| LOCALHOST.to_string());
        for (name, base) in [("isolated", LOCALHOST), ("host-network", host_file.as_str())] {
            let path = dir.path().join(name);
            let text = hosts_file(base, entries, gateway)?;
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(Some(HostsFiles { dir }))
    }

    /// The read-only bind of the step's `/etc/hosts`.
    pub fn mount(&self, host_network: bool) -> SpecMount {
        let name = if host_network { "host-network" } else { "isolated" };
        SpecMount::Bind { source: self.dir.path().join(name), target: HOSTS.into(), readonly: true }
    }
}

/// Whether any entry names `host-gateway`.
pub fn need_gateway(entries: &[HostEntry]) -> bool {
    entries.iter().any(|e| e.address == HostAddress::Gateway)
}

fn hosts_file(base: &str, entries: &[HostEntry], gateway: Option<IpAddr>) -> Result<String> {
    let mut text = base.to_string();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    for entry in entries {
        let ip = entry.ip(gateway).ok_or_else(|| {
            Error::new(
                tonic::Code::FailedPrecondition,
                format!("--add-host {entry}: this worker has no {HOST_GATEWAY} to give"),
            )
        })?;
        let _ = writeln!(text, "{ip}\t{}", entry.host);
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn entries_follow_the_base() {
        let entries = ["a:10.0.0.1".parse().unwrap(), "b:10.0.0.2".parse().unwrap()];
        let text = hosts_file("127.0.0.1 localhost", &entries, None).unwrap();
        assert_eq!(text, "127.0.0.1 localhost\n10.0.0.1\ta\n10.0.0.2\tb\n");
        assert!(!need_gateway(&entries));
        let files = HostsFiles::create(&entries, None).unwrap().unwrap();
        let SpecMount::Bind { source, target, readonly } = files.mount(false) else { panic!("not a bind") };
        assert_eq!((target.as_str(), readonly), (HOSTS, true));
        assert!(std::fs::read_to_string(source).unwrap().starts_with(LOCALHOST));
        assert!(HostsFiles::create(&[], None).unwrap().is_none());
    }

    #[test]
    fn host_gateway_is_the_given_gateway() {
        let entries = ["gw:host-gateway".parse().unwrap(), "b:10.0.0.2".parse().unwrap()];
        assert!(need_gateway(&entries));
        let text = hosts_file("", &entries, Some("10.213.4.1".parse().unwrap())).unwrap();
        assert_eq!(text, "10.213.4.1\tgw\n10.0.0.2\tb\n");
        let missing = hosts_file("", &entries, None).unwrap_err().to_string();
        assert!(missing.contains("--add-host gw:host-gateway"), "{missing}");
    }
}
