//! Runs Dockerfile RUN steps in containerd and turns their filesystem
//! changes into layers. See [`Containerd`].
//!
//! Everything MemoBuild makes lives in the containerd namespace
//! [`NAMESPACE`] (`memobuild`), apart from any other user of the same
//! containerd. Layer stacks are unpacked once into committed snapshots named
//! by their OCI chain id and labelled `containerd.io/gc.root`, so builds
//! reuse them; everything temporary (content blobs, active and view
//! snapshots) is created under a containerd lease with an expiry, so a
//! crashed process cannot leak it for longer than that.

mod abandoned_steps;
mod client;
mod container_outcome;
mod container_spec;
mod diff_writer;
mod id_remap;
mod layer_chain;
mod layer_stack;
mod lease;
mod log_chunk;
mod mount_point;
mod mounted_view;
mod oci_runtime;
mod phase_clock;
mod private_daemon;
mod run_step;
mod runtime_spec;
mod seccomp_profile;
mod snapshot_mounts;
mod snapshot_removal;
mod stdio_fifos;
mod step_cleanup;
mod user_resolver;

pub use client::{probe_version, Containerd, NAMESPACE, SNAPSHOTTER, SYSTEM_SOCKET};
pub use container_outcome::ContainerOutcome;
pub use container_spec::{ContainerPurpose, ContainerSpec, SpecMount, StepNetwork};
pub use id_remap::IdMap;
pub use log_chunk::LogChunk;
pub use memobuild_engine::ResourceLimits;
pub use mounted_view::MountedView;
pub use oci_runtime::OciRuntime;
pub use step_cleanup::StepRemains;
