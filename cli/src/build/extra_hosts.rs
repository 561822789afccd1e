//! `--add-host HOST:IP`: entries in every RUN step's `/etc/hosts`. The file
//! is generated for the build and bound read-only over `/etc/hosts`, so it
//! never lands in a layer and, as in BuildKit, is not part of any key.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::str::FromStr;

use memobuild_proto::{Result, ResultExt};
use memobuild_worker::containerd::SpecMount;

/// Where a step's `/etc/hosts` is.
const HOSTS: &str = "/etc/hosts";
/// What a step without the host's network resolves locally (its hostname
/// is `memobuild`).
const LOCALHOST: &str = "127.0.0.1\tlocalhost memobuild\n::1\tlocalhost ip6-localhost ip6-loopback\n";

/// One `--add-host` entry: `HOST:IP` (or `HOST=IP`, for IPv6 addresses).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostEntry {
    pub host: String,
    pub ip: IpAddr,
}

impl FromStr for HostEntry {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, String> {
        let (host, ip) = text
            .split_once('=')
            .or_else(|| text.split_once(':'))
            .ok_or_else(|| format!("--add-host {text:?}: expected HOST:IP"))?;
        if host.is_empty() || host.contains(char::is_whitespace) {
            return Err(format!("--add-host {text:?}: {host:?} is not a host name"));
        }
        let ip = ip.trim_start_matches('[').trim_end_matches(']');
        let ip = ip.parse().map_err(|_| format!("--add-host {text:?}: {ip:?} is not an IP address"))?;
        Ok(HostEntry { host: host.to_string(), ip })
    }
}

/// The generated hosts files: one for steps in their own network
/// namespace, one (the host's `/etc/hosts` plus the entries) for
/// `--network=host` steps.
pub struct HostsFiles {
    dir: tempfile::TempDir,
}

impl HostsFiles {
    /// `None` without entries: steps keep the `/etc/hosts` they have today.
    pub fn create(entries: &[HostEntry]) -> Result<Option<Self>> {
        if entries.is_empty() {
            return Ok(None);
        }
        let dir = tempfile::tempdir().context("creating a directory for the --add-host hosts file")?;
        let host_file = std::fs::read_to_string(HOSTS).unwrap_or_else(|_| LOCALHOST.to_string());
        for (name, base) in [("isolated", LOCALHOST), ("host-network", host_file.as_str())] {
            let path = dir.path().join(name);
            std::fs::write(&path, hosts_file(base, entries)).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(Some(HostsFiles { dir }))
    }

    /// The read-only bind of the step's `/etc/hosts`.
    pub fn mount(&self, host_network: bool) -> SpecMount {
        let name = if host_network { "host-network" } else { "isolated" };
        SpecMount::Bind { source: self.dir.path().join(name), target: HOSTS.into(), readonly: true }
    }
}

fn hosts_file(base: &str, entries: &[HostEntry]) -> String {
    let mut text = base.to_string();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    for entry in entries {
        let _ = writeln!(text, "{}\t{}", entry.ip, entry.host);
    }
    text
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn add_host_spellings() {
        let entry: HostEntry = "db.internal:10.0.0.5".parse().unwrap();
        assert_eq!(entry, HostEntry { host: "db.internal".into(), ip: "10.0.0.5".parse().unwrap() });
        assert_eq!("v6=::1".parse::<HostEntry>().unwrap().ip, "::1".parse::<IpAddr>().unwrap());
        assert_eq!("v6:[fe80::1]".parse::<HostEntry>().unwrap().ip, "fe80::1".parse::<IpAddr>().unwrap());
        assert!("db:not-an-ip".parse::<HostEntry>().unwrap_err().contains("not an IP address"));
        assert!(":10.0.0.5".parse::<HostEntry>().unwrap_err().contains("not a host name"));
        assert!("db".parse::<HostEntry>().unwrap_err().contains("HOST:IP"));
    }

    #[test]
    fn entries_follow_the_base() {
        let entries = ["a:10.0.0.1".parse().unwrap(), "b:10.0.0.2".parse().unwrap()];
        assert_eq!(hosts_file("127.0.0.1 localhost", &entries), "127.0.0.1 localhost\n10.0.0.1\ta\n10.0.0.2\tb\n");
        let files = HostsFiles::create(&entries).unwrap().unwrap();
        let SpecMount::Bind { source, target, readonly } = files.mount(false) else { panic!("not a bind") };
        assert_eq!((target.as_str(), readonly), (HOSTS, true));
        assert!(std::fs::read_to_string(source).unwrap().starts_with(LOCALHOST));
        assert!(HostsFiles::create(&[]).unwrap().is_none());
    }
}
