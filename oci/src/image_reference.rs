//! Image references, parsed the way Docker does.

use std::fmt;
use std::str::FromStr;

use memobuild_proto::{Error, ImageName, Result};
use oci_client::Reference;

/// The tag of a reference that names neither tag nor digest.
const DEFAULT_TAG: &str = "latest";

/// An image reference: `[registry/]repository[:tag][@digest]`, with
/// Docker's defaults (`docker.io`, `library/` for single-name Docker Hub
/// repositories, tag `latest` when neither tag nor digest is given).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageReference {
    inner: Reference,
    written: String,
}

impl ImageReference {
    /// The registry host as written or defaulted (`docker.io`), with port.
    pub fn registry(&self) -> &str {
        self.inner.registry()
    }

    /// The repository path, such as `library/busybox`.
    pub fn repository(&self) -> &str {
        self.inner.repository()
    }

    pub fn tag(&self) -> Option<&str> {
        self.inner.tag()
    }

    /// `sha256:<hex>` when the reference pins a digest.
    pub fn digest(&self) -> Option<&str> {
        self.inner.digest()
    }

    /// Whether the registry is this machine (`localhost`, `127.0.0.1`,
    /// `[::1]`, with or without a port), which is spoken to over plain HTTP.
    pub fn is_insecure_default(&self) -> bool {
        is_local_host(self.registry())
    }

    /// The same repository pinned to `digest` (`sha256:<hex>`), without tag.
    pub fn with_digest(&self, digest: &str) -> ImageReference {
        let inner =
            Reference::with_digest(self.registry().to_string(), self.repository().to_string(), digest.to_string());
        ImageReference { written: inner.to_string(), inner }
    }

    /// `registry/repository@digest`.
    pub fn pinned(&self, digest: &str) -> String {
        format!("{}/{}@{digest}", self.registry(), self.repository())
    }

    /// The short form Docker shows: `busybox:1` for `docker.io/library/busybox:1`.
    pub fn familiar(&self) -> String {
        let full = self.to_string();
        match full.strip_prefix("docker.io/") {
            Some(rest) => rest.strip_prefix("library/").unwrap_or(rest).to_string(),
            None => full,
        }
    }

    /// The reference as it was written.
    pub fn as_written(&self) -> &str {
        &self.written
    }

    pub(crate) fn as_oci(&self) -> &Reference {
        &self.inner
    }
}

impl FromStr for ImageReference {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let ImageName { registry, repository, tag, digest } =
            ImageName::parse(s).map_err(|e| Error::invalid_argument(format!("invalid image reference {s:?}: {e}")))?;
        let inner = match (tag, digest) {
            (Some(tag), Some(digest)) => Reference::with_tag_and_digest(registry, repository, tag, digest),
            (None, Some(digest)) => Reference::with_digest(registry, repository, digest),
            (tag, None) => Reference::with_tag(registry, repository, tag.unwrap_or_else(|| DEFAULT_TAG.to_string())),
        };
        Ok(ImageReference { inner, written: s.to_string() })
    }
}

/// Whether a registry `host[:port]` is this machine.
fn is_local_host(registry: &str) -> bool {
    let host = match registry.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => registry.split(':').next().unwrap_or(registry),
    };
    matches!(host, "localhost" | "127.0.0.1" | "::1")
}

/// The full normalised form: `docker.io/library/busybox:latest`.
impl fmt::Display for ImageReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_defaults() {
        let r: ImageReference = "busybox".parse().unwrap();
        assert_eq!(
            (r.registry(), r.repository(), r.tag(), r.digest()),
            ("docker.io", "library/busybox", Some("latest"), None)
        );
        assert_eq!(r.to_string(), "docker.io/library/busybox:latest");
        assert_eq!(r.familiar(), "busybox:latest");
        let hex = "a".repeat(64);
        let r: ImageReference = format!("127.0.0.1:5000/a/b@sha256:{hex}").parse().unwrap();
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.tag(), None);
        assert_eq!(r.digest(), Some(format!("sha256:{hex}").as_str()));
        assert!(r.is_insecure_default());
        assert!("localhost/x:1".parse::<ImageReference>().unwrap().is_insecure_default());
        assert!(is_local_host("[::1]:5000") && is_local_host("[::1]") && is_local_host("localhost"));
        assert!(!is_local_host("localhost.example.com:5000"));
        assert!(!"ghcr.io/x/y:1".parse::<ImageReference>().unwrap().is_insecure_default());
        let e = "busybox@sha256:abc".parse::<ImageReference>().unwrap_err();
        assert!(e.message().contains("busybox@sha256:abc"), "{e}");
    }
}
