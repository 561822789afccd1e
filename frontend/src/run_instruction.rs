//! `RUN [--mount=...] [--network=...] [--security=...] command`.

use serde::Serialize;

use crate::{CommandLine, Heredoc, Location, Mount};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkMode {
    Default,
    None,
    Host,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityMode {
    Sandbox,
    Insecure,
}

/// A `--mount` as written and as parsed without variable expansion.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MountSpec {
    pub raw: String,
    pub mount: Mount,
    pub location: Location,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RunInstruction {
    pub command: CommandLine,
    /// Heredocs opened on the line, in order; with `RUN <<EOF` alone the
    /// first one is the script.
    pub heredocs: Vec<Heredoc>,
    pub mounts: Vec<MountSpec>,
    pub network: Option<NetworkMode>,
    pub security: Option<SecurityMode>,
}
