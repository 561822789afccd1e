//! Reading an image's filesystem (mounted, or a stack of layer indexes)
//! without ever leaving it: paths resolve as they would inside the
//! container, symlinks included.

use std::path::{Path, PathBuf};

use memobuild_oci::{FsKind, ImageUsers, NumericUserGroup};
use memobuild_proto::{Error, Result};

use super::fs_view::{FsView, HostDir};

/// Symlinks followed in one resolution before giving up (as Linux does).
const MAX_SYMLINKS: usize = 40;

/// Resolves `path` (absolute, as inside the image) under `root`, following
/// symlinks as the kernel would if `root` were `/`; `..` stops at the root.
/// Returns the resolved path relative to the root, `/`-separated, without a
/// leading slash (`""` is the root). Components that do not exist are kept
/// as written.
pub fn resolve_in_root(root: &dyn FsView, path: &str) -> Result<String> {
    let mut resolved: Vec<String> = Vec::new();
    let mut pending: Vec<String> = components(path).rev().map(str::to_string).collect();
    let mut followed = 0;
    while let Some(part) = pending.pop() {
        match part.as_str() {
            "." => continue,
            ".." => {
                resolved.pop();
                continue;
            }
            _ => {}
        }
        let candidate = if resolved.is_empty() { part.clone() } else { format!("{}/{part}", resolved.join("/")) };
        match root.lstat(&candidate)?.map(|entry| entry.kind) {
            Some(FsKind::Symlink(target)) => {
                followed += 1;
                if followed > MAX_SYMLINKS {
                    return Err(Error::invalid_argument(format!("too many levels of symbolic links in {path}")));
                }
                if target.starts_with('/') {
                    resolved.clear();
                }
                pending.extend(components(&target).rev().map(str::to_string).collect::<Vec<_>>());
            }
            _ => resolved.push(part),
        }
    }
    Ok(resolved.join("/"))
}

fn components(path: &str) -> impl DoubleEndedIterator<Item = &str> {
    path.split('/').filter(|c| !c.is_empty())
}

/// `path` resolved under `root` as a host path.
pub fn host_path(root: &Path, path: &str) -> Result<PathBuf> {
    Ok(root.join(resolve_in_root(&HostDir(root), path)?))
}

/// An owner spec (`uid`, `uid:gid`, `name`, `name:group`) as numeric ids,
/// names looked up in the image's `/etc/passwd` and `/etc/group`, as BuildKit
/// resolves `--chown` and WORKDIR's owner: a name without a group takes its
/// passwd group, a number without one the same number.
pub fn lookup_user(root: &dyn FsView, spec: &str) -> Result<(u32, u32)> {
    let read = |path: &str| -> Result<Option<String>> {
        let Ok(at) = resolve_in_root(root, path) else { return Ok(None) };
        Ok(root.read(&at)?.map(|bytes| String::from_utf8_lossy(&bytes).into_owned()))
    };
    let users = ImageUsers::parse(read("/etc/passwd")?.as_deref(), read("/etc/group")?.as_deref());
    let user = users.resolve(spec, NumericUserGroup::SameAsUid)?;
    Ok((user.uid, user.gid))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("usr/lib")).unwrap();
        symlink("usr/lib", root.join("lib")).unwrap();
        symlink("/etc", root.join("usr/escape")).unwrap();
        symlink("../../../../..", root.join("usr/up")).unwrap();
        symlink("loop", root.join("loop")).unwrap();
        assert_eq!(resolve_in_root(&HostDir(root), "/lib/x").unwrap(), "usr/lib/x");
        assert_eq!(resolve_in_root(&HostDir(root), "/usr/escape/passwd").unwrap(), "etc/passwd");
        assert_eq!(resolve_in_root(&HostDir(root), "/usr/up/etc").unwrap(), "etc");
        assert_eq!(resolve_in_root(&HostDir(root), "../../x/./y").unwrap(), "x/y");
        assert_eq!(resolve_in_root(&HostDir(root), "/").unwrap(), "");
        assert!(resolve_in_root(&HostDir(root), "/loop/x").unwrap_err().message().contains("symbolic links"));
    }

    #[test]
    fn users_come_from_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n")
            .unwrap();
        std::fs::write(root.join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        assert_eq!(lookup_user(&HostDir(root), "app").unwrap(), (1000, 1001));
        assert_eq!(lookup_user(&HostDir(root), "app:staff").unwrap(), (1000, 50));
        assert_eq!(lookup_user(&HostDir(root), "1000").unwrap(), (1000, 1000));
        assert_eq!(lookup_user(&HostDir(root), "42").unwrap(), (42, 42));
        assert_eq!(lookup_user(&HostDir(root), "42:7").unwrap(), (42, 7));
        assert!(lookup_user(&HostDir(root), "ghost").unwrap_err().message().contains("user \"ghost\" is not in"));
        assert!(lookup_user(&HostDir(root), "app:nogroup").unwrap_err().message().contains("group \"nogroup\""));
    }
}
