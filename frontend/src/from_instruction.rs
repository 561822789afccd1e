//! `FROM [--platform=P] image [AS name]`.

use serde::Serialize;

use crate::Location;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FromInstruction {
    /// The base: an image reference, `scratch` or a stage name, as written
    /// (global ARGs are expanded when planning).
    pub image: String,
    pub image_location: Location,
    /// The stage name, lowercased (stage names are case-insensitive).
    pub stage: Option<String>,
    pub stage_location: Option<Location>,
    pub platform: Option<String>,
}
