//! `EXPOSE` values as BuildKit reads them: `[ip:][host-port:]port[-port][/proto]`.
//! The exposed ports are the container ports, one per port of a range; an IP
//! address or a host port is accepted with a warning.

use crate::CheckRule;

/// The ports one EXPOSE value exposes (`80/tcp`, ...) and the warnings it
/// raises.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PortSpec {
    pub ports: Vec<String>,
    pub warnings: Vec<(CheckRule, String)>,
}

impl PortSpec {
    pub fn parse(raw: &str) -> Result<PortSpec, String> {
        let mut spec = PortSpec::default();
        let (ip, host_port, container) = split_parts(raw);
        let (port, proto) = container.split_once('/').unwrap_or((container, ""));
        let invalid = |e: &str| format!("invalid port: {raw:?}: {e}");
        if port.is_empty() {
            return Err(invalid("no port specified"));
        }
        let proto_lower = proto.to_ascii_lowercase();
        let proto = match proto_lower.as_str() {
            "" => "tcp",
            "tcp" | "udp" | "sctp" => proto_lower.as_str(),
            _ => return Err(invalid(&format!("invalid proto: {proto}"))),
        };
        if container.split_once('/').is_some_and(|(_, p)| p.to_ascii_lowercase() != p) {
            spec.warnings.push((
                CheckRule::ExposeProtoCasing,
                format!("Defined protocol '{raw}' in EXPOSE instruction should be lowercase"),
            ));
        }
        if !ip.is_empty() || !host_port.is_empty() {
            spec.warnings.push((
                CheckRule::ExposeInvalidFormat,
                format!("EXPOSE instruction should not define an IP address or host-port mapping, found '{raw}'"),
            ));
        }
        let ip = ip.strip_prefix('[').and_then(|i| i.strip_suffix(']')).unwrap_or(ip);
        if !ip.is_empty() && ip.parse::<std::net::IpAddr>().is_err() {
            return Err(format!("invalid IP address: {ip}"));
        }
        let (start, end) = port_range(port).map_err(|_| format!("invalid containerPort: {port}"))?;
        if !host_port.is_empty() {
            let (host_start, host_end) = port_range(host_port).map_err(|_| format!("invalid hostPort: {host_port}"))?;
            if end - start != host_end - host_start && end != start {
                return Err(format!("invalid ranges specified for container and host Ports: {port} and {host_port}"));
            }
        }
        spec.ports = (start..=end).map(|p| format!("{p}/{proto}")).collect();
        Ok(spec)
    }
}

/// `ip:host:container`, `host:container` or `container`; an IPv6 address
/// keeps its colons.
fn split_parts(raw: &str) -> (&str, &str, &str) {
    let parts: Vec<&str> = raw.split(':').collect();
    match parts.as_slice() {
        [container] => ("", "", container),
        [host, container] => ("", host, container),
        _ => {
            let n = parts.len();
            let ip_len = raw.len() - parts[n - 1].len() - parts[n - 2].len() - 2;
            (&raw[..ip_len], parts[n - 2], parts[n - 1])
        }
    }
}

/// `8000` or `8000-8010` (0-65535).
fn port_range(text: &str) -> Result<(u32, u32), ()> {
    let number = |s: &str| s.parse::<u32>().ok().filter(|p| *p <= 65535).ok_or(());
    match text.split_once('-') {
        Some((a, b)) if a != b => {
            let (a, b) = (number(a)?, number(b)?);
            if b < a {
                return Err(());
            }
            Ok((a, b))
        }
        Some((a, _)) => number(a).map(|a| (a, a)),
        None => number(text).map(|a| (a, a)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ports(raw: &str) -> Vec<String> {
        PortSpec::parse(raw).map(|s| s.ports).unwrap_or_default()
    }

    #[test]
    fn ports_as_buildkit_exposes_them() {
        assert_eq!(ports("80"), ["80/tcp"]);
        assert_eq!(ports("53/UDP"), ["53/udp"]);
        assert_eq!(ports("8000-8002"), ["8000/tcp", "8001/tcp", "8002/tcp"]);
        assert_eq!(ports("5000:5000"), ["5000/tcp"]);
        assert_eq!(ports("127.0.0.1:8080:80/udp"), ["80/udp"]);
        assert_eq!(ports("[::1]:8080:80"), ["80/tcp"]);
        assert_eq!(ports("0"), ["0/tcp"]);
    }

    #[test]
    fn warnings_and_errors() {
        let spec = PortSpec::parse("5000:5000").unwrap_or_default();
        assert_eq!(spec.warnings.len(), 1);
        assert_eq!(spec.warnings[0].0, CheckRule::ExposeInvalidFormat);
        let spec = PortSpec::parse("80/TCP").unwrap_or_default();
        assert_eq!(spec.warnings[0].1, "Defined protocol '80/TCP' in EXPOSE instruction should be lowercase");
        for (bad, want) in [
            ("80/xyz", "invalid port: \"80/xyz\": invalid proto: xyz"),
            ("70000", "invalid containerPort: 70000"),
            ("a", "invalid containerPort: a"),
            ("10-5", "invalid containerPort: 10-5"),
            ("x:80", "invalid hostPort: x"),
            ("300.1.1.1:80:80", "invalid IP address: 300.1.1.1"),
        ] {
            assert_eq!(PortSpec::parse(bad), Err(want.to_string()), "{bad}");
        }
    }
}
