//! The host directory behind a `RUN --mount=type=cache`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use memobuild_frontend::Mount;
use memobuild_proto::{Digest, DigestFunction, Result, ResultExt};

/// The directory under `root` that holds the cache `mount` names, created
/// on first use. As in BuildKit, a cache is named by its id (the target
/// when none is given) and, when the mount sets `uid`, `gid` or `mode`, by
/// those too: such a cache starts as an empty directory with that owner and
/// mode (0755 and 0:0 for the ones not given). A cache that exists is used
/// as the steps before left it.
pub fn cache_mount_dir(root: &Path, mount: &Mount) -> Result<PathBuf> {
    let id = mount.id.clone().or_else(|| mount.target.clone()).unwrap_or_default();
    let ownership = (mount.uid.is_some() || mount.gid.is_some() || mount.mode.is_some())
        .then(|| (mount.uid.unwrap_or(0), mount.gid.unwrap_or(0), mount.mode.unwrap_or(0o755)));
    let name = match ownership {
        None => id,
        Some((uid, gid, mode)) => format!("{id}\0{uid}:{gid}:{mode:o}"),
    };
    let dir = root.join(Digest::of(DigestFunction::Sha256, name.as_bytes()).hex());
    std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    match std::fs::create_dir(&dir) {
        Ok(()) => {
            if let Some((uid, gid, mode)) = ownership {
                std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
                    .and_then(|()| std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)))
                    .with_context(|| format!("setting the owner and mode of cache mount {}", dir.display()))?;
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("creating cache mount {}", dir.display())),
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn cache(target: &str, uid: Option<u32>, mode: Option<u32>) -> Mount {
        let mut text = format!("type=cache,target={target}");
        if let Some(uid) = uid {
            text.push_str(&format!(",uid={uid}"));
        }
        if let Some(mode) = mode {
            text.push_str(&format!(",mode={mode:o}"));
        }
        Mount::parse(&text, &mut |s: &str| Ok(s.to_string())).unwrap()
    }

    #[test]
    fn owner_and_mode_make_a_cache_of_their_own() {
        let root = tempfile::tempdir().unwrap();
        let plain = cache_mount_dir(root.path(), &cache("/c", None, None)).unwrap();
        let owned = cache_mount_dir(root.path(), &cache("/c", Some(1000), Some(0o750))).unwrap();
        assert_ne!(plain, owned);
        assert_eq!(cache_mount_dir(root.path(), &cache("/c", None, None)).unwrap(), plain, "same id, same cache");
        let meta = std::fs::metadata(&owned).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o750);
        if nix::unistd::geteuid().is_root() {
            assert_eq!((meta.uid(), meta.gid()), (1000, 0));
        }
    }

    #[test]
    fn an_existing_cache_keeps_what_steps_did_to_it() {
        let root = tempfile::tempdir().unwrap();
        let mount = cache("/c", None, Some(0o700));
        let dir = cache_mount_dir(root.path(), &mount).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        cache_mount_dir(root.path(), &mount).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o7777, 0o777);
    }
}
