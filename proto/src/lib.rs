//! Wire types for MemoBuild: the REAPI v2, ByteStream, longrunning and rpc
//! protos (from the `bazel-remote-apis` crate), the [`Digest`] type, the
//! [`Platform`] type and the one [`Error`] type.

pub mod build;
mod digest;
mod error;
mod image_name;
mod platform;
mod resource;
pub mod trace_parent;
pub mod worker;

pub use digest::{Digest, DigestFunction, DigestHasher};
pub use error::{Error, Result, ResultExt, VIOLATION_MISSING};
pub use image_name::ImageName;
pub use platform::Platform;
pub use resource::{Compressor, ResourceName};

/// `build.bazel.remote.execution.v2`.
pub use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
/// `build.bazel.semver`.
pub use bazel_remote_apis::build::bazel::semver;
/// `google.bytestream`.
pub use bazel_remote_apis::google::bytestream;
/// `google.longrunning`.
pub use bazel_remote_apis::google::longrunning;
/// `google.protobuf` well-known types as the REAPI protos use them.
pub use bazel_remote_apis::google::protobuf;
/// `google.rpc`.
pub use bazel_remote_apis::google::rpc;
