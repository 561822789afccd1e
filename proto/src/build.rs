//! `memobuild.build.v1`: a planned build as data (what `memobuild graph
//! --format proto` writes and what a remote build sends to the cluster),
//! and the events a build reports.

/// A Dockerfile planned for one target: the stages it needs, dependencies
/// first.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BuildGraph {
    /// The Dockerfile's name, as errors and progress name it.
    #[prost(string, tag = "1")]
    pub dockerfile: String,
    /// Dockerfile index of the target stage.
    #[prost(uint32, tag = "2")]
    pub target: u32,
    /// The build context's root tree (BLAKE3, hex).
    #[prost(string, tag = "3")]
    pub context_digest: String,
    #[prost(message, repeated, tag = "4")]
    pub stages: Vec<Stage>,
}

/// One stage.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Stage {
    /// Position in the Dockerfile, as `--from=N` counts.
    #[prost(uint32, tag = "1")]
    pub index: u32,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(string, tag = "3")]
    pub platform: String,
    /// `scratch`, `image:REFERENCE` or `stage:INDEX`.
    #[prost(string, tag = "4")]
    pub base: String,
    /// Stages this one reads from.
    #[prost(uint32, repeated, tag = "5")]
    pub depends_on: Vec<u32>,
    #[prost(message, repeated, tag = "6")]
    pub steps: Vec<Step>,
    /// Planning key of the stage's filesystem (hex).
    #[prost(string, tag = "7")]
    pub key: String,
    /// The image config the stage ends with, as JSON.
    #[prost(string, tag = "8")]
    pub config_json: String,
}

/// One instruction of a stage.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Step {
    /// `STAGE.STEP`; step 0 is the FROM.
    #[prost(string, tag = "1")]
    pub id: String,
    /// 1-based line of the instruction.
    #[prost(uint32, tag = "2")]
    pub line: u32,
    /// The instruction as written.
    #[prost(string, tag = "3")]
    pub instruction: String,
    /// The canonical definition (expanded arguments, content digests) as JSON.
    #[prost(string, tag = "4")]
    pub definition_json: String,
    /// Whether the step changes the filesystem (and so is an action).
    #[prost(bool, tag = "5")]
    pub changes_filesystem: bool,
    /// The step this one follows in the filesystem chain.
    #[prost(string, tag = "6")]
    pub parent: String,
    /// Stages the step reads from.
    #[prost(uint32, repeated, tag = "7")]
    pub depends_on: Vec<u32>,
    /// Planning key (hex).
    #[prost(string, tag = "8")]
    pub key: String,
}
