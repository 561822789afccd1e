//! Platforms (`os/arch[/variant]`) and choosing one from an index.

use std::fmt;
use std::str::FromStr;

use memobuild_proto::{Error, Result};
use serde::{Deserialize, Serialize};

/// A platform as image indexes describe it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// The variant, with the defaults Docker assumes (`v8` for arm64).
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

    fn from_str(s: &str) -> Result<Self> {
        let parts: Vec<&str> = s.split('/').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(Error::invalid_argument(format!("invalid platform {s:?}: expected os/arch[/variant]")));
        }
        match parts.as_slice() {
            [os, arch] => Ok(Platform { os: os.to_string(), architecture: arch.to_string(), variant: None }),
            [os, arch, variant] => {
                Ok(Platform { os: os.to_string(), architecture: arch.to_string(), variant: Some(variant.to_string()) })
            }
            _ => Err(Error::invalid_argument(format!("invalid platform {s:?}: expected os/arch[/variant]"))),
        }
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
    use super::*;

    #[test]
    fn parses_and_matches() {
        let arm: Platform = "linux/arm64/v8".parse().unwrap();
        let entry = Platform { os: "linux".into(), architecture: "arm64".into(), variant: None };
        assert!(entry.satisfies(&arm));
        assert!(entry.satisfies(&"linux/arm64".parse().unwrap()));
        assert!(!entry.satisfies(&"linux/amd64".parse().unwrap()));
        let v7 = Platform { os: "linux".into(), architecture: "arm".into(), variant: Some("v7".into()) };
        assert!(!v7.satisfies(&"linux/arm/v6".parse().unwrap()));
        assert_eq!(arm.to_string(), "linux/arm64/v8");
        assert!("linux".parse::<Platform>().is_err());
        assert!("linux//x".parse::<Platform>().is_err());
    }
}
