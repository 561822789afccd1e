//! RUN's network: the `--network` flag, the `network.host` entitlement
//! (`--allow network.host`, as buildx asks for it) and what a worker's
//! policy lets RUN steps reach.

use memobuild_frontend::NetworkMode;
use serde::{Deserialize, Serialize};

pub fn parse_network(text: &str) -> Result<NetworkMode, String> {
    match text {
        "default" => Ok(NetworkMode::Default),
        "none" => Ok(NetworkMode::None),
        "host" => Ok(NetworkMode::Host),
        other => Err(format!("--network {other:?}: expected default, none or host")),
    }
}

/// The entitlement `--allow` grants: `network.host` or `security.insecure`.
pub fn parse_entitlement(text: &str) -> Result<String, String> {
    match text {
        HOST_ENTITLEMENT | INSECURE_ENTITLEMENT => Ok(text.to_string()),
        other => Err(format!("--allow {other:?}: the entitlements are {HOST_ENTITLEMENT} and {INSECURE_ENTITLEMENT}")),
    }
}

/// The entitlement RUN steps with the host's network need.
pub const HOST_ENTITLEMENT: &str = "network.host";
/// The entitlement `RUN --security=insecure` needs (every capability, no
/// seccomp filter).
pub const INSECURE_ENTITLEMENT: &str = "security.insecure";

/// What a worker lets RUN steps reach (`[worker.network]` in its config).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkPolicy {
    /// `--network default`: outbound connections through NAT.
    pub egress: bool,
    /// `--network host`: the worker's own network, loopback included.
    pub host: bool,
}

impl NetworkPolicy {
    /// Everything allowed: a laptop's own builds.
    pub const ANY: NetworkPolicy = NetworkPolicy { egress: true, host: true };

    /// Why a RUN step in `mode` may not run under this policy.
    pub fn refusal(&self, mode: NetworkMode) -> Option<String> {
        match mode {
            NetworkMode::Default if !self.egress => Some(
                "the worker's network policy forbids egress ([worker.network] egress = false): \
                 build with --network none or RUN --network=none"
                    .into(),
            ),
            NetworkMode::Host if !self.host => {
                Some("the worker's network policy forbids the host's network ([worker.network] host = false)".into())
            }
            _ => None,
        }
    }
}

/// Words in a failed RUN's output that say it wanted a network.
const NO_NETWORK_SIGNS: [&str; 14] = [
    "temporary failure resolving",
    "temporary failure in name resolution",
    "could not resolve",
    "name or service not known",
    "name does not resolve",
    "no such host",
    "bad address",
    "network is unreachable",
    "getaddrinfo",
    "eai_again",
    "enotfound",
    "enetunreach",
    "failed to establish a new connection",
    "unable to connect",
];

/// A line for the error of a RUN that failed in `mode` with `output`, when
/// the output looks like a missing network.
pub fn network_hint(mode: NetworkMode, output: &str) -> Option<String> {
    if mode != NetworkMode::None {
        return None;
    }
    let output = output.to_ascii_lowercase();
    NO_NETWORK_SIGNS.iter().any(|sign| output.contains(sign)).then(|| {
        "hint: this RUN had no network (--network none or RUN --network=none), and its output looks like \
         it needed one; without either it gets the default network, with outbound access"
            .to_string()
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn network_modes() {
        assert_eq!(parse_network("host").unwrap(), NetworkMode::Host);
        assert_eq!(parse_network("none").unwrap(), NetworkMode::None);
        assert_eq!(parse_network("default").unwrap(), NetworkMode::Default);
        assert!(parse_network("bridge").unwrap_err().contains("\"bridge\""));
        assert_eq!(parse_entitlement("network.host").unwrap(), "network.host");
        assert_eq!(parse_entitlement("security.insecure").unwrap(), "security.insecure");
        assert!(parse_entitlement("device").unwrap_err().contains("network.host and security.insecure"));
    }

    #[test]
    fn policy_names_what_it_forbids() {
        let hermetic = NetworkPolicy { egress: false, host: false };
        assert!(hermetic.refusal(NetworkMode::Default).unwrap().contains("egress = false"));
        assert!(hermetic.refusal(NetworkMode::Host).unwrap().contains("host = false"));
        assert_eq!(hermetic.refusal(NetworkMode::None), None);
        assert_eq!(NetworkPolicy::ANY.refusal(NetworkMode::Host), None);
    }

    #[test]
    fn hint_only_without_a_network() {
        let apt =
            "Err:1 http://deb.debian.org/debian bookworm InRelease\n  Temporary failure resolving 'deb.debian.org'";
        assert!(network_hint(NetworkMode::None, apt).unwrap().contains("--network none"));
        assert_eq!(network_hint(NetworkMode::Default, apt), None);
        assert_eq!(network_hint(NetworkMode::None, "error: no such file"), None);
        assert!(network_hint(NetworkMode::None, "wget: bad address 'example.org'").is_some());
    }
}
