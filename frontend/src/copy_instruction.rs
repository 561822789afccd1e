//! `COPY` and `ADD` and their flags.

use serde::Serialize;

use crate::{Heredoc, Location};

/// One source of COPY/ADD.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CopySource {
    /// A path (maybe a glob) in the context or the `--from` stage/image,
    /// or for ADD a URL; as written.
    Path(String),
    /// An inline file from a heredoc, named after its delimiter.
    Heredoc(Heredoc),
}

/// COPY or ADD (`add` says which).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CopyInstruction {
    pub add: bool,
    pub sources: Vec<CopySource>,
    pub source_locations: Vec<Location>,
    pub dest: String,
    pub from: Option<String>,
    pub from_location: Option<Location>,
    pub chown: Option<String>,
    pub chmod: Option<String>,
    pub link: bool,
    /// COPY only.
    pub parents: bool,
    pub excludes: Vec<String>,
    /// ADD only.
    pub keep_git_dir: bool,
    /// ADD only.
    pub checksum: Option<String>,
    /// ADD only: `--unpack` given explicitly.
    pub unpack: Option<bool>,
}
