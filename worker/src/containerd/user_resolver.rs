use memobuild_proto::{Error, Result};

use super::layer_stack::LayerStack;

/// The ids a RUN step runs as, resolved against the image's own
/// `/etc/passwd` and `/etc/group` (never the host's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct ResolvedUser {
    pub(super) uid: u32,
    pub(super) gid: u32,
    pub(super) additional_gids: Vec<u32>,
    /// The home directory from `/etc/passwd`, for `HOME`.
    pub(super) home: String,
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

/// Resolves `user` (`uid`, `uid:gid`, `name`, `name:group`; `None` = root)
/// in the rootfs `stack`.
pub(super) fn resolve_user(stack: &LayerStack, user: Option<&str>) -> Result<ResolvedUser> {
    let spec = user.map(str::trim).filter(|u| !u.is_empty()).unwrap_or("0");
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let passwd = read_passwd(stack)?;
    let groups = read_groups(stack)?;
    let entry = match user_part.parse::<u32>() {
        Ok(uid) => passwd.iter().find(|e| e.uid == uid),
        Err(_) => Some(passwd.iter().find(|e| e.name == user_part).ok_or_else(|| {
            Error::invalid_argument(format!(
                "user {user_part:?} is not in the image's /etc/passwd{}",
                if passwd.is_empty() { " (the image has no /etc/passwd)" } else { "" }
            ))
        })?),
    };
    let uid = match entry {
        Some(entry) => entry.uid,
        None => user_part.parse::<u32>().map_err(|_| Error::invalid_argument(format!("invalid user {user_part:?}")))?,
    };
    let gid = match group_part {
        Some(group) => match group.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => groups.iter().find(|g| g.name == group).map(|g| g.gid).ok_or_else(|| {
                Error::invalid_argument(format!(
                    "group {group:?} (of user {spec:?}) is not in the image's /etc/group{}",
                    if groups.is_empty() { " (the image has no /etc/group)" } else { "" }
                ))
            })?,
        },
        None => entry.map(|e| e.gid).unwrap_or(0),
    };
    let mut additional_gids: Vec<u32> = match entry {
        Some(entry) => {
            groups.iter().filter(|g| g.members.contains(&entry.name) && g.gid != gid).map(|g| g.gid).collect()
        }
        None => Vec::new(),
    };
    additional_gids.sort_unstable();
    additional_gids.dedup();
    let home = match entry {
        Some(entry) if !entry.home.is_empty() => entry.home.clone(),
        _ if uid == 0 => "/root".to_string(),
        _ => "/".to_string(),
    };
    Ok(ResolvedUser { uid, gid, additional_gids, home })
}

fn read_text(stack: &LayerStack, path: &str) -> Result<String> {
    let bytes = stack.read(path).map_err(|e| Error::from(e).context(format!("reading the image's {path}")))?;
    Ok(bytes.map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default())
}

/// `name:password:uid:gid:gecos:home:shell` lines; malformed lines are
/// skipped, as libc does.
fn read_passwd(stack: &LayerStack) -> Result<Vec<PasswdEntry>> {
    Ok(read_text(stack, "/etc/passwd")?
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() < 4 || fields[0].starts_with('#') {
                return None;
            }
            Some(PasswdEntry {
                name: fields[0].to_string(),
                uid: fields[2].parse().ok()?,
                gid: fields[3].parse().ok()?,
                home: fields.get(5).map(|h| h.to_string()).unwrap_or_default(),
            })
        })
        .collect())
}

/// `name:password:gid:member,member` lines.
fn read_groups(stack: &LayerStack) -> Result<Vec<GroupEntry>> {
    Ok(read_text(stack, "/etc/group")?
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() < 3 || fields[0].starts_with('#') {
                return None;
            }
            Some(GroupEntry {
                name: fields[0].to_string(),
                gid: fields[2].parse().ok()?,
                members: fields
                    .get(3)
                    .map(|m| m.split(',').filter(|s| !s.is_empty()).map(str::to_string).collect())
                    .unwrap_or_default(),
            })
        })
        .collect())
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
        let err = resolve_user(&stack, Some("builder:nogroup")).expect_err("unknown group");
        assert!(err.message().contains("\"nogroup\""), "{err}");
        let empty = LayerStack::new(Vec::new());
        let err = resolve_user(&empty, Some("builder")).expect_err("no passwd");
        assert!(err.message().contains("no /etc/passwd"), "{err}");
    }
}
