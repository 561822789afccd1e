//! Platforms (`linux/arm64/v8`): what a build targets and what image
//! indexes list.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// An OCI platform: os, architecture and optional variant.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
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

    /// The variant, with the default Docker assumes (`v8` for arm64).
    fn effective_variant(&self) -> Option<&str> {
        match (self.architecture.as_str(), self.variant.as_deref()) {
            ("arm64", None) => Some("v8"),
            (_, variant) => variant,
        }
    }

    /// Whether an index entry for `self` serves a request for `wanted`: os
    /// and architecture equal, and the variant equal when `wanted` names one.
    pub fn satisfies(&self, wanted: &Platform) -> bool {
        self.os == wanted.os
            && self.architecture == wanted.architecture
            && (wanted.variant.is_none() || self.effective_variant() == wanted.effective_variant())
    }
}

impl FromStr for Platform {
    type Err = Error;

    /// `os/arch[/variant]`.
    fn from_str(s: &str) -> Result<Self> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            _ if parts.iter().any(|p| p.is_empty()) => {}
            [os, arch] => return Ok(Platform::new(os, arch, None)),
            [os, arch, variant] => return Ok(Platform::new(os, arch, Some(variant))),
            _ => {}
        }
        Err(Error::invalid_argument(format!("invalid platform {s:?}: expected os/arch[/variant]")))
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_prints_and_matches() {
        let arm: Platform = "linux/arm64/v8".parse().unwrap();
        let entry = Platform::new("linux", "arm64", None);
        assert!(entry.satisfies(&arm));
        assert!(entry.satisfies(&"linux/arm64".parse().unwrap()));
        assert!(!entry.satisfies(&"linux/amd64".parse().unwrap()));
        let v7 = Platform::new("linux", "arm", Some("v7"));
        assert!(!v7.satisfies(&"linux/arm/v6".parse().unwrap()));
        assert_eq!(arm.to_string(), "linux/arm64/v8");
        for bad in ["linux", "linux//x", "linux/amd64/", "a/b/c/d"] {
            assert!(bad.parse::<Platform>().unwrap_err().message().contains("expected os/arch[/variant]"), "{bad}");
        }
        assert_eq!(
            serde_json::to_string(&Platform::new("linux", "amd64", None)).unwrap(),
            r#"{"os":"linux","architecture":"amd64"}"#
        );
    }
}
