//! `RUN [--mount=...] [--network=...] [--security=...] command`.

use serde::{Deserialize, Serialize};

use crate::{CommandLine, Heredoc, Location};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkMode {
    Default,
    None,
    Host,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityMode {
    Sandbox,
    Insecure,
}

/// A `--mount` as written. It is parsed when its stage is planned, with
/// every value expanded from ARG/ENV (as BuildKit does); only `from=`,
/// which names a stage, is read from the text as written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MountSpec {
    pub raw: String,
    pub from: Option<String>,
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
