//! `[worker.network]`: what RUN steps may reach, and how the default
//! network is laid out.

use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::str::FromStr;

use memobuild_engine::NetworkPolicy;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    /// `--network default`: outbound access through NAT.
    pub egress: bool,
    /// `--network host` (the build also needs `--allow network.host`).
    pub host: bool,
    /// Destinations the default network never reaches, besides this host
    /// itself (e.g. the cluster's pod and service ranges).
    pub blocked: Vec<Ipv4Cidr>,
    /// The `/16` workers on one host carve their bridges' `/24`s from.
    pub subnets: Ipv4Cidr,
    /// Where the nameservers the forwarder asks (and `search`/`options`)
    /// come from.
    pub resolv_conf: PathBuf,
}

impl Default for NetworkConfig {
    /// Egress on, the host's network off (a cluster's default), cloud
    /// metadata addresses blocked.
    fn default() -> Self {
        NetworkConfig {
            egress: true,
            host: false,
            blocked: vec![Ipv4Cidr { address: Ipv4Addr::new(169, 254, 0, 0), prefix: 16 }],
            subnets: Ipv4Cidr { address: Ipv4Addr::new(10, 213, 0, 0), prefix: 16 },
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
        }
    }
}

impl NetworkConfig {
    pub fn policy(&self) -> NetworkPolicy {
        NetworkPolicy { egress: self.egress, host: self.host }
    }
}

/// An IPv4 network, `A.B.C.D/N`, its address the network's first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Ipv4Cidr {
    pub address: Ipv4Addr,
    pub prefix: u8,
}

impl FromStr for Ipv4Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let invalid = || format!("{text:?}: expected an IPv4 network such as 10.0.0.0/8");
        let (address, prefix) = text.split_once('/').ok_or_else(invalid)?;
        let address: Ipv4Addr = address.parse().map_err(|_| invalid())?;
        let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32).ok_or_else(invalid)?;
        let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
        if u32::from(address) & !mask != 0 {
            return Err(format!(
                "{text:?}: host bits are set (the network is {}/{prefix})",
                Ipv4Addr::from(u32::from(address) & mask)
            ));
        }
        Ok(Ipv4Cidr { address, prefix })
    }
}

impl TryFrom<String> for Ipv4Cidr {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

impl From<Ipv4Cidr> for String {
    fn from(cidr: Ipv4Cidr) -> String {
        cidr.to_string()
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn networks_parse_and_print() {
        let cidr: Ipv4Cidr = "10.96.0.0/12".parse().unwrap();
        assert_eq!((cidr.address, cidr.prefix), (Ipv4Addr::new(10, 96, 0, 0), 12));
        assert_eq!(cidr.to_string(), "10.96.0.0/12");
        assert!("10.96.0.1/12".parse::<Ipv4Cidr>().unwrap_err().contains("10.96.0.0/12"));
        assert!("10.0.0.0/33".parse::<Ipv4Cidr>().is_err());
        assert!("10.0.0.0".parse::<Ipv4Cidr>().is_err());
        assert!("0.0.0.0/0".parse::<Ipv4Cidr>().is_ok());
    }

    #[test]
    fn missing_fields_keep_their_defaults() {
        let config: NetworkConfig = serde_json::from_str(r#"{"egress": false, "blocked": ["10.0.0.0/8"]}"#).unwrap();
        assert!(!config.egress && !config.host);
        assert_eq!(config.blocked, ["10.0.0.0/8".parse().unwrap()]);
        assert_eq!(config.subnets, NetworkConfig::default().subnets);
        assert!(serde_json::from_str::<NetworkConfig>(r#"{"blocked": ["nope"]}"#).is_err());
    }
}
