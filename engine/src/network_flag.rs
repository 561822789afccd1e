//! `--network` as `docker buildx build` spells it.

use memobuild_frontend::NetworkMode;

/// `--network default|none|host`.
pub fn parse_network(text: &str) -> Result<NetworkMode, String> {
    match text {
        "default" => Ok(NetworkMode::Default),
        "none" => Ok(NetworkMode::None),
        "host" => Ok(NetworkMode::Host),
        other => Err(format!("--network {other:?}: expected default, none or host")),
    }
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
    }
}
