//! A layer of an image: its blob as stored and pushed, and its diff id.

use memobuild_proto::{Digest, DigestFunction, DigestHasher};
use serde::{Deserialize, Serialize};

/// `application/vnd.oci.image.layer.v1.tar`
pub const MEDIA_TYPE_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// `application/vnd.oci.image.layer.v1.tar+gzip`
pub const MEDIA_TYPE_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// `application/vnd.oci.image.layer.v1.tar+zstd`
pub const MEDIA_TYPE_TAR_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// Docker's gzip layer type, as older registries and `docker save` use it.
pub const MEDIA_TYPE_DOCKER_TAR_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// One layer. `blob` is the SHA-256 digest (and size) of the bytes as held
/// in the CAS and as a registry serves them (compressed or not, as
/// `media_type` says); `diff_id` is the SHA-256 of the uncompressed tar, as
/// the image config's `rootfs.diff_ids` lists it. For an uncompressed layer
/// the two are equal.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Layer {
    pub blob: Digest,
    pub media_type: String,
    pub diff_id: Digest,
}

impl Layer {
    /// An uncompressed layer: blob and diff id are the same digest.
    pub fn uncompressed(tar: Digest) -> Self {
        Layer { blob: tar, media_type: MEDIA_TYPE_TAR.to_string(), diff_id: tar }
    }

    /// `sha256:<hex>` of the diff id.
    pub fn diff_id_string(&self) -> String {
        format!("sha256:{}", self.diff_id.hex())
    }

    /// The OCI chain ids of a layer stack, bottom first:
    /// `chain(0) = diff_id(0)`, `chain(n) = sha256(chain(n-1) + " " + diff_id(n))`,
    /// each as `sha256:<hex>`. containerd names committed snapshots by them.
    pub fn chain_ids(layers: &[Layer]) -> Vec<String> {
        let mut ids: Vec<String> = Vec::with_capacity(layers.len());
        for layer in layers {
            let next = match ids.last() {
                None => layer.diff_id_string(),
                Some(parent) => {
                    let mut hasher = DigestHasher::new(DigestFunction::Sha256);
                    hasher.update(format!("{parent} {}", layer.diff_id_string()).as_bytes());
                    format!("sha256:{}", hasher.finish().hex())
                }
            };
            ids.push(next);
        }
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_oci_rule() {
        let a = Layer::uncompressed(Digest::of(DigestFunction::Sha256, b"a"));
        let b = Layer::uncompressed(Digest::of(DigestFunction::Sha256, b"b"));
        let ids = Layer::chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(ids[0], a.diff_id_string());
        let expected = Digest::of(DigestFunction::Sha256, format!("{} {}", ids[0], b.diff_id_string()).as_bytes());
        assert_eq!(ids[1], format!("sha256:{}", expected.hex()));
        assert!(Layer::chain_ids(&[]).is_empty());
    }
}
