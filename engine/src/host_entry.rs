//! `--add-host HOST:IP`: an entry of every RUN step's `/etc/hosts`.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// What `--add-host HOST:host-gateway` names instead of an address.
pub const HOST_GATEWAY: &str = "host-gateway";

/// One `--add-host` entry: `HOST:IP` (or `HOST=IP`, for IPv6 addresses),
/// or `HOST:host-gateway`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostEntry {
    pub host: String,
    pub address: HostAddress,
}

/// Where an entry points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostAddress {
    Ip(IpAddr),
    /// The worker's side of RUN's default network (its bridge's gateway),
    /// found by the worker that runs the step, as buildx asks the builder
    /// for its host gateway.
    Gateway,
}

impl HostEntry {
    /// The entry's address, `gateway` standing for `host-gateway`; `None`
    /// when it names the gateway and there is none.
    pub fn ip(&self, gateway: Option<IpAddr>) -> Option<IpAddr> {
        match self.address {
            HostAddress::Ip(ip) => Some(ip),
            HostAddress::Gateway => gateway,
        }
    }
}

impl FromStr for HostEntry {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, String> {
        let (host, ip) = text
            .split_once('=')
            .or_else(|| text.split_once(':'))
            .ok_or_else(|| format!("--add-host {text:?}: expected HOST:IP or HOST:{HOST_GATEWAY}"))?;
        if host.is_empty() || host.contains(char::is_whitespace) {
            return Err(format!("--add-host {text:?}: {host:?} is not a host name"));
        }
        let address = if ip == HOST_GATEWAY {
            HostAddress::Gateway
        } else {
            let ip = ip.trim_start_matches('[').trim_end_matches(']');
            HostAddress::Ip(
                ip.parse()
                    .map_err(|_| format!("--add-host {text:?}: {ip:?} is not an IP address (nor {HOST_GATEWAY})"))?,
            )
        };
        Ok(HostEntry { host: host.to_string(), address })
    }
}

/// The form [`HostEntry::from_str`] reads: how an entry travels to workers.
impl fmt::Display for HostEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.address {
            HostAddress::Ip(IpAddr::V4(ip)) => write!(f, "{}:{ip}", self.host),
            HostAddress::Ip(IpAddr::V6(ip)) => write!(f, "{}=[{ip}]", self.host),
            HostAddress::Gateway => write!(f, "{}:{HOST_GATEWAY}", self.host),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn add_host_spellings() {
        let entry: HostEntry = "db.internal:10.0.0.5".parse().unwrap();
        let ip = |text: &str| HostAddress::Ip(text.parse().unwrap());
        assert_eq!(entry, HostEntry { host: "db.internal".into(), address: ip("10.0.0.5") });
        assert_eq!("v6=::1".parse::<HostEntry>().unwrap().address, ip("::1"));
        assert_eq!("v6:[fe80::1]".parse::<HostEntry>().unwrap().address, ip("fe80::1"));
        assert_eq!("host.docker.internal:host-gateway".parse::<HostEntry>().unwrap().address, HostAddress::Gateway);
        assert_eq!("gw=host-gateway".parse::<HostEntry>().unwrap().address, HostAddress::Gateway);
        assert!("db:not-an-ip".parse::<HostEntry>().unwrap_err().contains("not an IP address"));
        assert!("db:Host-Gateway".parse::<HostEntry>().unwrap_err().contains("nor host-gateway"));
        assert!(":10.0.0.5".parse::<HostEntry>().unwrap_err().contains("not a host name"));
        assert!("db".parse::<HostEntry>().unwrap_err().contains("HOST:IP"));
    }

    #[test]
    fn entries_print_as_they_parse() {
        for text in ["db.internal:10.0.0.5", "v6=[fe80::1]", "host.docker.internal:host-gateway"] {
            assert_eq!(text.parse::<HostEntry>().unwrap().to_string(), text);
        }
    }

    #[test]
    fn the_gateway_stands_for_host_gateway() {
        let gateway: IpAddr = "10.213.0.1".parse().unwrap();
        let entry: HostEntry = "gw:host-gateway".parse().unwrap();
        assert_eq!(entry.ip(Some(gateway)), Some(gateway));
        assert_eq!(entry.ip(None), None);
        let fixed: HostEntry = "db:10.0.0.5".parse().unwrap();
        assert_eq!(fixed.ip(Some(gateway)), Some("10.0.0.5".parse().unwrap()));
    }
}
