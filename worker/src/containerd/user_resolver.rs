use memobuild_oci::{ImageUsers, NumericUserGroup, ResolvedUser};
use memobuild_proto::{Error, Result};

use super::layer_stack::LayerStack;

/// Resolves a RUN step's `user` (`uid`, `uid:gid`, `name`, `name:group`;
/// `None` = root) against the image's own `/etc/passwd` and `/etc/group`
/// in the rootfs `stack`, as a container runtime does.
pub(super) fn resolve_user(stack: &LayerStack, user: Option<&str>) -> Result<ResolvedUser> {
    let passwd = read_text(stack, "/etc/passwd")?;
    let group = read_text(stack, "/etc/group")?;
    ImageUsers::parse(passwd.as_deref(), group.as_deref()).resolve(user.unwrap_or_default(), NumericUserGroup::Primary)
}

fn read_text(stack: &LayerStack, path: &str) -> Result<Option<String>> {
    let bytes = stack.read(path).map_err(|e| Error::from(e).context(format!("reading the image's {path}")))?;
    Ok(bytes.map(|b| String::from_utf8_lossy(&b).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack() -> (tempfile::TempDir, LayerStack) {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("etc")).expect("mkdir");
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nbuilder:x:1000:1000::/home/builder:/bin/sh\n",
        )
        .expect("write");
        std::fs::write(
            dir.path().join("etc/group"),
            "root:x:0:\nbuilder:x:1000:\nwheel:x:10:builder,other\nstaff:x:50:\n",
        )
        .expect("write");
        let stack = LayerStack::new(vec![dir.path().to_path_buf()]);
        (dir, stack)
    }

    #[test]
    fn names_numbers_and_groups_resolve() {
        let (_dir, stack) = stack();
        let root = resolve_user(&stack, None).expect("root");
        assert_eq!((root.uid, root.gid, root.home.as_str()), (0, 0, "/root"));
        let builder = resolve_user(&stack, Some("builder")).expect("builder");
        assert_eq!((builder.uid, builder.gid, builder.additional_gids.clone()), (1000, 1000, vec![10]));
        assert_eq!(builder.home, "/home/builder");
        let staff = resolve_user(&stack, Some("builder:staff")).expect("builder:staff");
        assert_eq!((staff.uid, staff.gid), (1000, 50));
        let numeric = resolve_user(&stack, Some("4242:7")).expect("numeric");
        assert_eq!((numeric.uid, numeric.gid, numeric.home.as_str()), (4242, 7, "/"));
        let numeric_known = resolve_user(&stack, Some("1000")).expect("1000");
        assert_eq!(numeric_known.gid, 1000);
    }

    #[test]
    fn unknown_names_are_named_in_the_error() {
        let (_dir, stack) = stack();
        let err = resolve_user(&stack, Some("ghost")).expect_err("unknown user");
        assert!(err.message().contains("\"ghost\""), "{err}");
        let empty = LayerStack::new(Vec::new());
        let err = resolve_user(&empty, Some("builder")).expect_err("no passwd");
        assert!(err.message().contains("(the image has none)"), "{err}");
    }
}
