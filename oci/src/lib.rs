//! OCI images for MemoBuild: layers, compression, registry pull and push,
//! OCI layout and docker-archive export, layer tar writing and extraction.

mod blob_io;
mod built_image;
mod compression;
mod credential_helper;
mod diff_id_memo;
mod docker_archive;
mod docker_config;
mod extract;
mod file_capabilities;
mod fs_entry;
mod image_reference;
mod image_users;
mod layer;
mod layer_index;
mod layer_writer;
mod manifest;
mod manifest_fetch;
mod oci_layout_reader;
mod oci_layout_writer;
mod output_mark;
mod pulled_image;
mod registry_client;
mod registry_connection;
mod tar_output;
mod tar_stream;

pub use blob_io::DEFAULT_MAX_LAYER_BYTES;
pub use built_image::BuiltImage;
pub use compression::{compress_layer, Compression, MEDIA_TYPE_DOCKER_TAR};
pub use diff_id_memo::{DiffIdMemo, DirectoryDiffIdMemo};
pub use docker_archive::write_docker_archive;
pub use extract::{extract_layer_to_overlay_upper, extract_layers, ExtractLimits};
pub use file_capabilities::{
    capability_root, read_file_capabilities, without_namespace_root, CAPABILITY_PAX_RECORD, CAPABILITY_REVISION_2,
    CAPABILITY_REVISION_3, CAPABILITY_V2_BYTES, CAPABILITY_XATTR,
};
pub use fs_entry::{FsEntry, FsKind};
pub use image_reference::ImageReference;
pub use image_users::{ImageUsers, NumericUserGroup, ResolvedUser};
pub use layer::{Layer, MEDIA_TYPE_DOCKER_TAR_GZIP, MEDIA_TYPE_TAR, MEDIA_TYPE_TAR_GZIP, MEDIA_TYPE_TAR_ZSTD};
pub use layer_index::{LayerIndex, PathInLayer};
pub use layer_writer::LayerWriter;
pub use memobuild_proto::Platform;
pub use oci_layout_reader::read_oci_layout;
pub use oci_layout_writer::{write_oci_layout, OciDestination, ANNOTATION_CONTAINERD_NAME, ANNOTATION_REF_NAME};
pub use pulled_image::PulledImage;
pub use registry_client::RegistryClient;
pub use registry_connection::prepare_registry_http;
