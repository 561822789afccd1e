//! A path of an image's filesystem, as a layer index or a mounted view
//! gives it.

use serde::{Deserialize, Serialize};

/// The kind of a path in an image's filesystem.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsKind {
    Directory,
    /// A regular file or a hard link to one.
    File,
    Symlink(String),
    /// A FIFO or a device node.
    Other,
}

/// One path of an image's filesystem, as a layer index (or a mounted view)
/// gives it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsEntry {
    pub kind: FsKind,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    /// The bytes of a file a layer index keeps (`/etc/passwd`, `/etc/group`).
    pub content: Option<Vec<u8>>,
}
