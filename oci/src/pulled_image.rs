//! An image pulled from a registry or read from an OCI layout.

use bytes::Bytes;
use oci_spec::image::ImageConfiguration;

use crate::layer::Layer;

/// An image whose config and layer blobs are in the store.
#[derive(Clone, Debug, PartialEq)]
pub struct PulledImage {
    /// The reference as the user wrote it.
    pub reference: String,
    /// What was actually used: `registry/repository@sha256:...`, or
    /// `PATH@sha256:...` for an OCI layout.
    pub resolved: String,
    /// `sha256:<hex>` of the image manifest (the platform's, not the index's).
    pub manifest_digest: String,
    pub config: ImageConfiguration,
    /// The config blob as the image has it: Docker's fields that
    /// [`ImageConfiguration`] has no place for (`Healthcheck`, `Shell`,
    /// `OnBuild`) are read from here.
    pub raw_config: Bytes,
    /// Bottom first, compressed as the source had them; diff ids from the
    /// config, checked against the layers' contents.
    pub layers: Vec<Layer>,
}
