//! File capabilities (`setcap`) and other extended attributes in layers.
//! A layer tar carries an xattr as the PAX record `SCHILY.xattr.NAME`. Like
//! BuildKit's layers, MemoBuild's record `security.capability` only (so
//! `setcap cap_net_raw+ep /bin/ping` in a RUN survives into the image), and
//! unpacking applies every xattr a layer carries except `trusted.*`, which
//! overlayfs reads as its own instructions.

use std::path::Path;

/// The PAX record prefix of an extended attribute.
pub const PAX_XATTR_PREFIX: &str = "SCHILY.xattr.";
/// The xattr of file capabilities.
pub const CAPABILITY_XATTR: &str = "security.capability";
/// The PAX record of file capabilities.
pub const CAPABILITY_PAX_RECORD: &str = "SCHILY.xattr.security.capability";
/// Revisions of `struct vfs_cap_data` (the top byte of its first word):
/// 3 carries the root id of the user namespace that set it, 2 does not.
const CAPABILITY_REVISION_MASK: u32 = 0xFF00_0000;
pub const CAPABILITY_REVISION_2: u32 = 0x0200_0000;
pub const CAPABILITY_REVISION_3: u32 = 0x0300_0000;
pub const CAPABILITY_V2_BYTES: usize = 20;
const CAPABILITY_V3_BYTES: usize = 24;

/// The file capabilities of the regular file at `path`, as a layer records
/// them: a revision 3 value becomes revision 2, since the root id of the
/// namespace it was set in means nothing where the image runs (Docker's
/// layers do the same). `None` when it has none or the filesystem keeps no
/// xattrs.
pub fn read_file_capabilities(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    match xattr::get(path, CAPABILITY_XATTR) {
        Ok(value) => Ok(value.map(|v| without_namespace_root(&v))),
        Err(e) if unsupported(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Revision 3 capabilities as revision 2; anything else as it is.
pub fn without_namespace_root(value: &[u8]) -> Vec<u8> {
    match capability_revision(value) {
        Some(CAPABILITY_REVISION_3) if value.len() == CAPABILITY_V3_BYTES => {
            let magic = u32::from_le_bytes([value[0], value[1], value[2], value[3]]);
            let magic = (magic & !CAPABILITY_REVISION_MASK) | CAPABILITY_REVISION_2;
            let mut plain = magic.to_le_bytes().to_vec();
            plain.extend_from_slice(&value[4..CAPABILITY_V2_BYTES]);
            plain
        }
        _ => value.to_vec(),
    }
}

/// The root id a revision 3 value was set against; `None` for others.
pub fn capability_root(value: &[u8]) -> Option<u32> {
    let is_v3 = capability_revision(value) == Some(CAPABILITY_REVISION_3) && value.len() == CAPABILITY_V3_BYTES;
    let root = value.get(CAPABILITY_V2_BYTES..)?;
    is_v3.then(|| u32::from_le_bytes([root[0], root[1], root[2], root[3]]))
}

/// The revision bits of a `vfs_cap_data` value.
fn capability_revision(value: &[u8]) -> Option<u32> {
    let magic = value.get(..4)?;
    Some(u32::from_le_bytes([magic[0], magic[1], magic[2], magic[3]]) & CAPABILITY_REVISION_MASK)
}

/// Whether unpacking may set the xattr `name` from a layer.
pub(crate) fn may_apply(name: &str) -> bool {
    !name.is_empty() && !name.starts_with("trusted.")
}

/// An xattr the filesystem or this process cannot set or read (no xattr
/// support, or `security.*` without the privilege): skipped, as containerd
/// skips it.
pub(crate) fn unsupported(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(nix::libc::ENOTSUP) | Some(nix::libc::EPERM) | Some(nix::libc::EACCES))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v3(root: u32) -> Vec<u8> {
        let mut value = (CAPABILITY_REVISION_3 | 1).to_le_bytes().to_vec();
        value.extend_from_slice(&[0x00, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        value.extend_from_slice(&root.to_le_bytes());
        value
    }

    #[test]
    fn revision_3_loses_its_namespace_root() {
        let plain = without_namespace_root(&v3(100000));
        assert_eq!(plain.len(), CAPABILITY_V2_BYTES);
        assert_eq!(capability_revision(&plain), Some(CAPABILITY_REVISION_2));
        assert_eq!(plain[0], 1, "the effective flag stays");
        assert_eq!(&plain[4..], &v3(0)[4..CAPABILITY_V2_BYTES], "the capability sets stay");
        assert_eq!(without_namespace_root(&plain), plain, "revision 2 stays as it is");
        assert_eq!(without_namespace_root(b"xy"), b"xy", "a value too short to read stays as it is");
    }

    #[test]
    fn only_revision_3_has_a_root() {
        assert_eq!(capability_root(&v3(100000)), Some(100000));
        assert_eq!(capability_root(&without_namespace_root(&v3(100000))), None);
        assert_eq!(capability_root(b"xy"), None);
    }

    #[test]
    fn trusted_xattrs_are_not_applied() {
        assert!(may_apply("security.capability"));
        assert!(may_apply("user.origin"));
        assert!(!may_apply("trusted.overlay.opaque"));
        assert!(!may_apply(""));
    }
}
