//! The image configuration a stage ends with (what ENV, CMD, LABEL, ...
//! set), part of a stage's image key.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::Healthcheck;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ImageConfig {
    /// `NAME=value`, in the order first set.
    pub env: Vec<String>,
    pub user: Option<String>,
    pub workdir: Option<String>,
    pub cmd: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    pub shell: Option<Vec<String>>,
    pub labels: BTreeMap<String, String>,
    pub exposed_ports: BTreeSet<String>,
    pub volumes: BTreeSet<String>,
    pub stop_signal: Option<String>,
    pub healthcheck: Option<Healthcheck>,
    /// ONBUILD triggers, as written after `ONBUILD`.
    pub onbuild: Vec<String>,
    pub maintainer: Option<String>,
}
