//! RUN steps in a user namespace (`--userns-remap`): the step's root is
//! root only inside it, and its ids `0..size` are a range of unprivileged
//! ids on the host ([`IdMap`]).
//!
//! Snapshots stay as they are without the namespace, so layers, cache keys
//! and later steps do not depend on it:
//! - the layers below a step are mounted through the map (idmapped mounts
//!   of each lower directory under the overlay), and so are the host files
//!   and directories bound into it ([`IdmappedMounts`]);
//! - what the step writes lands in its writable directory with host ids,
//!   which are shifted back once its processes are gone ([`unshift`]),
//!   before the layer is read and the snapshot committed.

use std::borrow::Cow;
use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memobuild_oci::{capability_root, without_namespace_root, CAPABILITY_XATTR};
use memobuild_proto::{Result, ResultExt};
pub use memobuild_sandbox::IdMap;

use super::mount_point::{create_owned_dir, release_mount_point};
use super::snapshot_mounts::SnapshotMounts;
use super::{ContainerSpec, SpecMount};

/// The user namespace of `map`, made once per process.
fn namespace(map: IdMap) -> Result<Arc<OwnedFd>> {
    static NAMESPACES: parking_lot::Mutex<Option<HashMap<IdMap, Arc<OwnedFd>>>> = parking_lot::Mutex::new(None);
    let mut namespaces = NAMESPACES.lock();
    let namespaces = namespaces.get_or_insert_with(HashMap::new);
    if let Some(namespace) = namespaces.get(&map) {
        return Ok(namespace.clone());
    }
    let namespace = Arc::new(memobuild_sandbox::user_namespace(map)?);
    namespaces.insert(map, namespace.clone());
    Ok(namespace)
}

/// Idmapped mounts of host paths, each on an entry of one directory of
/// MemoBuild's own under the temporary directory, to be bound or overlaid
/// elsewhere (a bind of an idmapped mount keeps its map). Unmounted and
/// removed when dropped: what was made from them holds the mounts.
pub(super) struct IdmappedMounts {
    map: IdMap,
    namespace: Arc<OwnedFd>,
    dir: PathBuf,
    entries: Vec<PathBuf>,
}

impl IdmappedMounts {
    /// This process's empty directory `name` (see [`create_owned_dir`]).
    pub(super) fn create(name: &str, map: IdMap) -> Result<IdmappedMounts> {
        let namespace = namespace(map)?;
        Ok(IdmappedMounts { map, namespace, dir: create_owned_dir(name)?, entries: Vec::new() })
    }

    pub(super) fn map(&self) -> IdMap {
        self.map
    }

    /// `source` (a directory or a file) through the map, read-only when
    /// asked: the path to use instead of it.
    pub(super) fn mount(&mut self, source: &Path, read_only: bool) -> Result<PathBuf> {
        let target = self.dir.join(self.entries.len().to_string());
        let is_dir = std::fs::metadata(source).with_context(|| format!("reading {}", source.display()))?.is_dir();
        if is_dir { std::fs::create_dir(&target) } else { std::fs::File::create(&target).map(drop) }
            .with_context(|| format!("creating {}", target.display()))?;
        self.entries.push(target.clone());
        memobuild_sandbox::mount_idmapped(source, &target, self.namespace.as_fd(), read_only).map_err(|e| {
            e.context("--userns-remap needs idmapped mounts: Linux 5.19 or later, and a filesystem that has them")
        })?;
        Ok(target)
    }

    /// `mount` with its host source seen through the map: a view is
    /// mounted through it already, and a tmpfs is the step's own.
    pub(super) fn bind_source(&mut self, mount: &SpecMount) -> Result<SpecMount> {
        Ok(match mount {
            SpecMount::Bind { source, target, readonly } => {
                let source = self.mount(source, *readonly)?;
                SpecMount::Bind { source, target: target.clone(), readonly: *readonly }
            }
            SpecMount::Cache { source, target } => {
                SpecMount::Cache { source: self.mount(source, false)?, target: target.clone() }
            }
            SpecMount::Tmpfs { .. } | SpecMount::View { .. } => mount.clone(),
        })
    }

    fn release(&mut self) -> Result<()> {
        for entry in self.entries.drain(..).rev() {
            release_mount_point(&entry)?;
        }
        std::fs::remove_dir(&self.dir).with_context(|| format!("removing {}", self.dir.display()))
    }
}

impl Drop for IdmappedMounts {
    fn drop(&mut self) {
        if let Err(e) = self.release() {
            tracing::warn!(error = %e, dir = %self.dir.display(), "removing idmapped mounts");
        }
    }
}

/// What a step's container is made of, as its user namespace sees it.
pub(super) struct StepView<'a> {
    /// The rootfs: its layers seen through the map.
    pub(super) mounts: SnapshotMounts,
    /// The spec, with its mounts' host sources seen through the map.
    pub(super) spec: Cow<'a, ContainerSpec>,
    /// The idmapped mounts both use: they may go once the rootfs is mounted
    /// and the task has made its own mounts.
    pub(super) idmapped: Option<IdmappedMounts>,
}

impl<'a> StepView<'a> {
    /// `spec` and its rootfs `mounts` for the container `id`: as they are
    /// without a user namespace.
    pub(super) fn of(spec: &'a ContainerSpec, mounts: SnapshotMounts, id: &str) -> Result<StepView<'a>> {
        let Some(map) = spec.user_namespace else {
            return Ok(StepView { mounts, spec: Cow::Borrowed(spec), idmapped: None });
        };
        let mut idmapped = IdmappedMounts::create(&format!("idmap-{id}"), map)?;
        let binds = spec.mounts.iter().map(|m| idmapped.bind_source(m)).collect::<Result<Vec<_>>>()?;
        Ok(StepView {
            mounts: mounts.remapped(&mut idmapped)?,
            spec: Cow::Owned(ContainerSpec { mounts: binds, ..spec.clone() }),
            idmapped: Some(idmapped),
        })
    }
}

/// Gives the top directory of a step's writable `upper` (the root of its
/// rootfs) to the map's side of its owner, so that the step's root owns its
/// `/` as it would without the namespace. [`unshift`] gives it back.
pub(super) fn shift_root(upper: &Path, map: IdMap) -> Result<()> {
    let meta = std::fs::symlink_metadata(upper).with_context(|| format!("reading {}", upper.display()))?;
    std::os::unix::fs::lchown(upper, Some(map.uid_outside(meta.uid())), Some(map.gid_outside(meta.gid())))
        .with_context(|| format!("giving {} to the step's user namespace", upper.display()))
}

/// Shifts the host ids of everything in `upper` that the map has back to
/// the ids inside, keeping set-id bits and file capabilities (which a
/// change of owner drops; capabilities set inside the namespace become
/// plain ones). Anything else (whiteouts, made by the kernel as host
/// root) is left alone; so is an entry already shifted, which a second
/// hard link to it finds.
pub(super) fn unshift(upper: &Path, map: IdMap) -> Result<()> {
    let mut pending = vec![upper.to_path_buf()];
    while let Some(path) = pending.pop() {
        let meta = std::fs::symlink_metadata(&path).with_context(|| format!("reading {}", path.display()))?;
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).with_context(|| format!("listing {}", path.display()))? {
                pending.push(entry.with_context(|| format!("listing {}", path.display()))?.path());
            }
        }
        unshift_one(&path, &meta, map).with_context(|| format!("shifting the owner of {} back", path.display()))?;
    }
    Ok(())
}

fn unshift_one(path: &Path, meta: &std::fs::Metadata, map: IdMap) -> Result<()> {
    let (uid, gid) = (map.uid_inside(meta.uid()), map.gid_inside(meta.gid()));
    if uid.is_none() && gid.is_none() {
        return Ok(());
    }
    let capabilities = if meta.is_file() { xattr::get(path, CAPABILITY_XATTR)? } else { None };
    std::os::unix::fs::lchown(path, uid, gid)?;
    if meta.is_file() {
        if meta.mode() & 0o6000 != 0 {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
        }
        if let Some(capabilities) = capabilities {
            xattr::set(path, CAPABILITY_XATTR, &plain_capabilities(&capabilities, map))?;
        }
    }
    Ok(())
}

/// File capabilities as a process of any namespace may use them: a
/// revision 3 value whose root is the map's root becomes revision 2.
fn plain_capabilities(value: &[u8], map: IdMap) -> Vec<u8> {
    match capability_root(value) == Some(map.uid) {
        true => without_namespace_root(value),
        false => value.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use memobuild_oci::{CAPABILITY_REVISION_2, CAPABILITY_REVISION_3, CAPABILITY_V2_BYTES};

    const MAP: IdMap = IdMap { uid: 100000, gid: 100000, size: 65536 };

    #[test]
    fn namespace_capabilities_become_plain_ones() {
        let mut v3 = (CAPABILITY_REVISION_3 | 1).to_le_bytes().to_vec();
        v3.extend_from_slice(&[0x00, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        v3.extend_from_slice(&MAP.uid.to_le_bytes());
        let plain = plain_capabilities(&v3, MAP);
        assert_eq!(plain.len(), CAPABILITY_V2_BYTES);
        assert_eq!(u32::from_le_bytes([plain[0], plain[1], plain[2], plain[3]]), CAPABILITY_REVISION_2 | 1);
        assert_eq!(&plain[4..], &v3[4..CAPABILITY_V2_BYTES]);
        let mut other_root = v3.clone();
        other_root[CAPABILITY_V2_BYTES..].copy_from_slice(&5u32.to_le_bytes());
        assert_eq!(plain_capabilities(&other_root, MAP), other_root, "another namespace's capabilities stay");
        assert_eq!(plain_capabilities(&plain, MAP), plain, "plain ones stay");
    }

    /// Needs root: skipped otherwise.
    #[test]
    fn unshift_gives_back_owners_and_keeps_set_id_bits() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let upper = tempfile::tempdir().expect("tempdir");
        let root = upper.path();
        std::fs::create_dir(root.join("d")).expect("mkdir");
        std::fs::write(root.join("d/suid"), "x").expect("write");
        std::fs::hard_link(root.join("d/suid"), root.join("link")).expect("link");
        std::os::unix::fs::symlink("d/suid", root.join("sym")).expect("symlink");
        std::fs::write(root.join("hosts-own"), "x").expect("write");
        for (path, uid, gid) in [("d", 101000, 102000), ("d/suid", 100000, 100050), ("sym", 100007, 100007)] {
            std::os::unix::fs::lchown(root.join(path), Some(uid), Some(gid)).expect("chown");
        }
        std::fs::set_permissions(root.join("d/suid"), std::fs::Permissions::from_mode(0o4755)).expect("chmod");
        shift_root(root, MAP).expect("shift");
        assert_eq!(std::fs::metadata(root).expect("stat").uid(), 100000);

        unshift(root, MAP).expect("unshift");
        let owner = |path: &str| {
            let meta = std::fs::symlink_metadata(root.join(path)).expect("stat");
            (meta.uid(), meta.gid(), meta.mode() & 0o7777)
        };
        assert_eq!(owner("d").0, 1000);
        assert_eq!(owner("d").1, 2000);
        assert_eq!(owner("d/suid"), (0, 50, 0o4755), "the setuid bit survives the change of owner");
        assert_eq!(owner("link"), (0, 50, 0o4755));
        assert_eq!(owner("sym").0, 7, "a symlink itself, not its target");
        assert_eq!(owner("hosts-own").0, 0, "host root's own file is left alone");
        assert_eq!(owner("").0, 0, "the root is given back");
    }
}
