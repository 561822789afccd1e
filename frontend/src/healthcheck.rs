//! `HEALTHCHECK NONE` and `HEALTHCHECK [options] CMD command`.

use serde::{Deserialize, Serialize};

use crate::CommandLine;

/// A HEALTHCHECK instruction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Healthcheck {
    /// Disable any health check inherited from the base image.
    None,
    Cmd {
        command: CommandLine,
        /// Durations in nanoseconds; `None` = the default.
        interval_ns: Option<u64>,
        timeout_ns: Option<u64>,
        start_period_ns: Option<u64>,
        start_interval_ns: Option<u64>,
        retries: Option<u32>,
    },
}
