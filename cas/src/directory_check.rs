//! What makes a `Directory` proto safe to walk and to materialize.

use std::collections::HashSet;

use memobuild_proto::reapi::Directory;
use memobuild_proto::{Digest, Error, Result};

/// The largest `Directory` proto read into memory.
pub const MAX_DIRECTORY_BYTES: u64 = 16 << 20;

/// Why a name from a `Directory` proto is unsafe, if it is.
pub fn unsafe_name_reason(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("the name is empty")
    } else if name == "." || name == ".." {
        Some("the name is . or ..")
    } else if name.contains('/') {
        Some("the name contains a slash")
    } else if name.contains('\0') {
        Some("the name contains a NUL byte")
    } else {
        None
    }
}

/// Checks the directory stored under `digest`: every name safe and used
/// once, every child digest well formed (in `digest`'s function), every
/// symlink target present. INVALID_ARGUMENT naming the directory and the
/// entry otherwise. Returns the digests of the subdirectories, in order.
pub fn check_directory(digest: &Digest, directory: &Directory) -> Result<Vec<Digest>> {
    let bad = |what: &str, name: &str, why: &str| {
        Error::invalid_argument(format!("directory {}: {what} {name:?}: {why}", digest.subject()))
    };
    let mut names = HashSet::new();
    let mut check = |what: &str, name: &str| match unsafe_name_reason(name) {
        Some(why) => Err(bad(what, name, why)),
        None if !names.insert(name.to_string()) => Err(bad(what, name, "the name appears twice")),
        None => Ok(()),
    };
    for file in &directory.files {
        check("file", &file.name)?;
        Digest::from_proto_field(digest.function(), file.digest.as_ref(), "digest")
            .map_err(|e| bad("file", &file.name, e.message()))?;
    }
    let mut children = Vec::with_capacity(directory.directories.len());
    for child in &directory.directories {
        check("directory", &child.name)?;
        let child_digest = Digest::from_proto_field(digest.function(), child.digest.as_ref(), "digest")
            .map_err(|e| bad("directory", &child.name, e.message()))?;
        children.push(child_digest);
    }
    for symlink in &directory.symlinks {
        check("symlink", &symlink.name)?;
        if symlink.target.is_empty() || symlink.target.contains('\0') {
            return Err(bad("symlink", &symlink.name, "the target is empty or contains a NUL byte"));
        }
    }
    Ok(children)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use memobuild_proto::reapi::{DirectoryNode, FileNode, SymlinkNode};
    use memobuild_proto::DigestFunction;

    #[test]
    fn names() {
        for bad in ["", ".", "..", "a/b", "/", "a\0b"] {
            assert!(unsafe_name_reason(bad).is_some(), "{bad:?}");
        }
        for good in ["a", "...", ".hidden", "a b", "ü"] {
            assert_eq!(unsafe_name_reason(good), None, "{good:?}");
        }
    }

    fn file(name: &str) -> FileNode {
        let digest = Digest::of(DigestFunction::Sha256, name.as_bytes());
        FileNode { name: name.into(), digest: Some(digest.to_proto()), ..Default::default() }
    }

    #[test]
    fn names_must_be_safe_and_unique_and_digests_well_formed() {
        let at = Digest::of(DigestFunction::Sha256, b"dir");
        let child = Digest::of(DigestFunction::Sha256, b"child");
        let node = |name: &str| DirectoryNode { name: name.into(), digest: Some(child.to_proto()) };
        let good = Directory {
            files: vec![file("a")],
            directories: vec![node("b")],
            symlinks: vec![SymlinkNode { name: "c".into(), target: "a".into(), ..Default::default() }],
            ..Default::default()
        };
        assert_eq!(check_directory(&at, &good).unwrap(), vec![child]);
        let cases = [
            (Directory { files: vec![file("a"), file("a")], ..Default::default() }, "appears twice"),
            (Directory { files: vec![file("a")], directories: vec![node("a")], ..Default::default() }, "appears twice"),
            (Directory { directories: vec![node("..")], ..Default::default() }, ". or .."),
            (Directory { files: vec![file("x/y")], ..Default::default() }, "slash"),
            (Directory { files: vec![file("")], ..Default::default() }, "empty"),
            (
                Directory { directories: vec![DirectoryNode { name: "d".into(), digest: None }], ..Default::default() },
                "digest",
            ),
        ];
        for (directory, why) in cases {
            let e = check_directory(&at, &directory).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(e.message().contains(why) && e.message().contains(&at.subject()), "{e}");
        }
    }
}
