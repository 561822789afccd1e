use std::fmt;
use std::str::FromStr;

use memobuild_proto::{Error, Result};

/// Where a remote build is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BuildState {
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl BuildState {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            BuildState::Running => "running",
            BuildState::Succeeded => "succeeded",
            BuildState::Failed => "failed",
            BuildState::Cancelled => "cancelled",
        }
    }

    pub fn is_finished(self) -> bool {
        self != BuildState::Running
    }
}

impl FromStr for BuildState {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "running" => Ok(BuildState::Running),
            "succeeded" => Ok(BuildState::Succeeded),
            "failed" => Ok(BuildState::Failed),
            "cancelled" => Ok(BuildState::Cancelled),
            _ => Err(Error::invalid_argument(format!("unknown build state {s:?}"))),
        }
    }
}

impl fmt::Display for BuildState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What survives a scheduler restart about one remote build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredBuild {
    pub id: String,
    pub instance_name: String,
    pub dockerfile_name: String,
    pub target: String,
    pub state: BuildState,
    pub created_ms: i64,
    /// Set once the build is no longer running.
    pub finished_ms: Option<i64>,
    /// Why it finished as it did; empty while running.
    pub message: String,
    /// The encoded request, secrets stripped, to resume the build after a restart.
    pub request: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_names_round_trip() {
        for state in [BuildState::Running, BuildState::Succeeded, BuildState::Failed, BuildState::Cancelled] {
            assert_eq!(state.as_str().parse::<BuildState>().unwrap(), state);
        }
        let err = "done".parse::<BuildState>().unwrap_err();
        assert_eq!(err.message(), "unknown build state \"done\"");
    }
}
