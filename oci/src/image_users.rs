//! The users and groups of an image, from its own `/etc/passwd` and
//! `/etc/group` (never the host's), and how a `USER` or `--chown` spec
//! resolves against them.

use memobuild_proto::{Error, Result};

/// What a numeric user without a group gets as its group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NumericUserGroup {
    /// The primary group of the passwd entry with that uid, else 0: how a
    /// container runtime starts a process (`USER 1000`).
    Primary,
    /// The uid itself: Docker's documented rule for `--chown=1000`.
    SameAsUid,
}

/// Numeric ids resolved from a user spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    /// Groups listing the user as a member, other than `gid`, sorted.
    pub additional_gids: Vec<u32>,
    /// The home directory from `/etc/passwd` (`/root` for root, else `/`).
    pub home: String,
}

#[derive(Debug)]
struct UserEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

#[derive(Debug)]
struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

/// An image's user database.
#[derive(Debug, Default)]
pub struct ImageUsers {
    users: Vec<UserEntry>,
    groups: Vec<GroupEntry>,
}

impl ImageUsers {
    /// Parses the texts of `/etc/passwd` and `/etc/group` (`None` when the
    /// image has no such file). Malformed lines are skipped, as libc does.
    pub fn parse(passwd: Option<&str>, group: Option<&str>) -> ImageUsers {
        let users = records(passwd.unwrap_or_default(), 4)
            .filter_map(|f| {
                Some(UserEntry {
                    name: f[0].to_string(),
                    uid: f[2].parse().ok()?,
                    gid: f[3].parse().ok()?,
                    home: f.get(5).map(|h| h.to_string()).unwrap_or_default(),
                })
            })
            .collect();
        let groups = records(group.unwrap_or_default(), 3)
            .filter_map(|f| {
                Some(GroupEntry {
                    name: f[0].to_string(),
                    gid: f[2].parse().ok()?,
                    members: f
                        .get(3)
                        .map(|m| m.split(',').filter(|s| !s.is_empty()).map(str::to_string).collect())
                        .unwrap_or_default(),
                })
            })
            .collect();
        ImageUsers { users, groups }
    }

    /// Resolves `spec` (`uid`, `uid:gid`, `name`, `name:group`; empty means
    /// root). A name without a group takes its passwd entry's group.
    pub fn resolve(&self, spec: &str, numeric: NumericUserGroup) -> Result<ResolvedUser> {
        let spec = spec.trim();
        let spec = if spec.is_empty() { "0" } else { spec };
        let (user, group) = match spec.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (spec, None),
        };
        let (uid, entry) = match user.parse::<u32>() {
            Ok(uid) => (uid, self.users.iter().find(|e| e.uid == uid)),
            Err(_) => {
                let entry = self.users.iter().find(|e| e.name == user).ok_or_else(|| {
                    Error::invalid_argument(format!(
                        "user {user:?} is not in the image's /etc/passwd{}",
                        if self.users.is_empty() { " (the image has none)" } else { "" }
                    ))
                })?;
                (entry.uid, Some(entry))
            }
        };
        let gid = match (group, user.parse::<u32>().is_ok(), numeric) {
            (Some(group), _, _) => self.group_id(group, spec)?,
            (None, true, NumericUserGroup::SameAsUid) => uid,
            (None, _, _) => entry.map(|e| e.gid).unwrap_or(0),
        };
        let mut additional_gids: Vec<u32> = match entry {
            Some(entry) => {
                self.groups.iter().filter(|g| g.gid != gid && g.members.contains(&entry.name)).map(|g| g.gid).collect()
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

    fn group_id(&self, group: &str, spec: &str) -> Result<u32> {
        if let Ok(gid) = group.parse::<u32>() {
            return Ok(gid);
        }
        self.groups.iter().find(|g| g.name == group).map(|g| g.gid).ok_or_else(|| {
            Error::invalid_argument(format!(
                "group {group:?} (of {spec:?}) is not in the image's /etc/group{}",
                if self.groups.is_empty() { " (the image has none)" } else { "" }
            ))
        })
    }
}

/// The `:`-separated fields of each line with at least `min` fields,
/// skipping comments.
fn records(text: &str, min: usize) -> impl Iterator<Item = Vec<&str>> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(move |f| f.len() >= min)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn users() -> ImageUsers {
        ImageUsers::parse(
            Some("root:x:0:0:root:/root:/bin/sh\n# comment\nbroken\napp:x:1000:1001::/home/app:/bin/sh\n"),
            Some("root:x:0:\napp:x:1001:\nwheel:x:10:app,other\nstaff:x:50:\n"),
        )
    }

    fn ids(user: &ResolvedUser) -> (u32, u32) {
        (user.uid, user.gid)
    }

    #[test]
    fn names_take_their_passwd_group() {
        let users = users();
        for rule in [NumericUserGroup::Primary, NumericUserGroup::SameAsUid] {
            let app = users.resolve("app", rule).unwrap();
            assert_eq!(
                (ids(&app), app.additional_gids.clone(), app.home.as_str()),
                ((1000, 1001), vec![10], "/home/app")
            );
            assert_eq!(ids(&users.resolve("app:staff", rule).unwrap()), (1000, 50));
            assert_eq!(ids(&users.resolve("42:7", rule).unwrap()), (42, 7));
        }
        let root = users.resolve("", NumericUserGroup::Primary).unwrap();
        assert_eq!((ids(&root), root.home.as_str()), ((0, 0), "/root"));
    }

    #[test]
    fn numeric_users_follow_the_rule_asked_for() {
        let users = users();
        assert_eq!(ids(&users.resolve("1000", NumericUserGroup::Primary).unwrap()), (1000, 1001));
        assert_eq!(ids(&users.resolve("1000", NumericUserGroup::SameAsUid).unwrap()), (1000, 1000));
        let unknown = users.resolve("4242", NumericUserGroup::Primary).unwrap();
        assert_eq!((ids(&unknown), unknown.home.as_str()), ((4242, 0), "/"));
        assert_eq!(ids(&users.resolve("4242", NumericUserGroup::SameAsUid).unwrap()), (4242, 4242));
    }

    #[test]
    fn unknown_names_are_named_in_the_error() {
        let users = users();
        let err = users.resolve("ghost", NumericUserGroup::Primary).unwrap_err();
        assert!(err.message().contains("user \"ghost\" is not in the image's /etc/passwd"), "{err}");
        let err = users.resolve("app:nogroup", NumericUserGroup::Primary).unwrap_err();
        assert!(err.message().contains("group \"nogroup\""), "{err}");
        let err = ImageUsers::parse(None, None).resolve("app", NumericUserGroup::Primary).unwrap_err();
        assert!(err.message().contains("(the image has none)"), "{err}");
    }
}
