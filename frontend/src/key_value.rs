//! `name=value` pairs of ENV and LABEL, and ARG declarations.

use serde::Serialize;

/// One `key=value` of ENV or LABEL, as written (quotes and variables are
/// resolved when the stage is planned).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
}

/// One `name[=default]` of ARG, as written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ArgDeclaration {
    pub name: String,
    pub default: Option<String>,
}
