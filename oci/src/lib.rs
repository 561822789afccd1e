//! OCI images for MemoBuild: layers, compression, registry pull and push,
//! OCI layout and docker-archive export.

mod layer;

pub use layer::{Layer, MEDIA_TYPE_DOCKER_TAR_GZIP, MEDIA_TYPE_TAR, MEDIA_TYPE_TAR_GZIP, MEDIA_TYPE_TAR_ZSTD};
