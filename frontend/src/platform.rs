//! Target and build platforms (`linux/arm64/v8`).

use std::fmt;
use std::str::FromStr;

use memobuild_proto::Error;
use serde::Serialize;

/// An OCI platform: os, architecture and optional variant.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Self {
        Platform { os: os.to_string(), architecture: architecture.to_string(), variant: variant.map(str::to_string) }
    }

    /// The platform this process runs on, in OCI names.
    pub fn host() -> Self {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            other => other,
        };
        let variant = (arch == "arm64").then_some("v8");
        Platform::new(std::env::consts::OS, arch, variant)
    }
}

impl FromStr for Platform {
    type Err = Error;

    /// `os/arch[/variant]`.
    fn from_str(s: &str) -> Result<Self, Error> {
        let parts: Vec<&str> = s.split('/').collect();
        let bad = || Error::invalid_argument(format!("invalid platform {s:?}: expected os/arch[/variant]"));
        match parts.as_slice() {
            [os, arch] if !os.is_empty() && !arch.is_empty() => Ok(Platform::new(os, arch, None)),
            [os, arch, v] if !os.is_empty() && !arch.is_empty() && !v.is_empty() => {
                Ok(Platform::new(os, arch, Some(v)))
            }
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}
