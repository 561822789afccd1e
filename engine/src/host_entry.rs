//! `--add-host HOST:IP`: an entry of every RUN step's `/etc/hosts`.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

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

impl fmt::Display for HostEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ip {
            IpAddr::V4(ip) => write!(f, "{}:{ip}", self.host),
            IpAddr::V6(ip) => write!(f, "{}=[{ip}]", self.host),
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
        assert_eq!(entry, HostEntry { host: "db.internal".into(), ip: "10.0.0.5".parse().unwrap() });
        assert_eq!("v6=::1".parse::<HostEntry>().unwrap().ip, "::1".parse::<IpAddr>().unwrap());
        assert_eq!("v6:[fe80::1]".parse::<HostEntry>().unwrap().ip, "fe80::1".parse::<IpAddr>().unwrap());
        assert!("db:not-an-ip".parse::<HostEntry>().unwrap_err().contains("not an IP address"));
        assert!(":10.0.0.5".parse::<HostEntry>().unwrap_err().contains("not a host name"));
        assert!("db".parse::<HostEntry>().unwrap_err().contains("HOST:IP"));
    }

    #[test]
    fn entries_print_as_they_parse() {
        for text in ["db.internal:10.0.0.5", "v6=[fe80::1]"] {
            assert_eq!(text.parse::<HostEntry>().unwrap().to_string(), text);
        }
    }
}
