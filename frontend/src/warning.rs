//! A build-check warning: a rule, its message and where in the Dockerfile.

use std::fmt;

use serde::Serialize;

use crate::{CheckRule, Location};

/// One warning, as BuildKit reports it: the rule name, the message, the
/// Dockerfile and the position.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Warning {
    pub rule: CheckRule,
    pub message: String,
    pub file: String,
    pub location: Location,
}

impl Warning {
    pub fn new(rule: CheckRule, message: impl Into<String>, file: &str, location: Location) -> Self {
        Warning { rule, message: message.into(), file: file.to_string(), location }
    }
}

impl fmt::Display for Warning {
    /// `Dockerfile:3:1: warning: DuplicateStageName: Duplicate stage name "b", ...`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: warning: {}: {}", self.file, self.location, self.rule, self.message)
    }
}
