use std::path::{Path, PathBuf};

use containerd_client::types::Mount;
use memobuild_proto::{Error, Result};
use nix::mount::MsFlags;

use super::id_remap::{shift_root, IdmappedMounts};
use super::layer_stack::LayerStack;

/// The kernel reads at most one page of mount options; overlay mounts of
/// deep chains go past it with absolute layer paths.
const MAX_MOUNT_DATA: usize = 4000;

/// Where the kernel lists the overlay module's parameters (one file per
/// option it knows).
const OVERLAY_PARAMETERS: &str = "/sys/module/overlay/parameters";
/// Overlay features that change what a step's writable directory holds: with
/// `redirect_dir` a renamed lower directory is only a pointer to it, with
/// `metacopy` a lower file whose metadata changed has no data there. A layer
/// is read from that directory, so a kernel (or module default) with them on
/// would give other, incomplete layers for the same key.
const FEATURES_OFF: [(&str, &str); 2] = [("redirect_dir", "redirect_dir=off"), ("metacopy", "metacopy=off")];

/// What the mounts of a snapshot are made of, as the overlayfs snapshotter
/// returns them: a bind mount of one directory (a snapshot without parent,
/// or a view of a single layer) or an overlay mount (`lowerdir=` top first,
/// `upperdir=` for an active snapshot).
#[derive(Clone, Debug)]
pub(super) struct SnapshotMounts {
    mounts: Vec<Mount>,
    /// The writable directory of an active snapshot: everything the step
    /// changes lands here.
    upper: Option<PathBuf>,
    /// The read-only layers below, top first.
    lowers: Vec<PathBuf>,
}

impl SnapshotMounts {
    pub(super) fn parse(mounts: Vec<Mount>) -> Result<SnapshotMounts> {
        let [mount] = mounts.as_slice() else {
            return Err(Error::internal(format!("expected one snapshot mount, got {}", mounts.len())));
        };
        let (upper, lowers) = match mount.r#type.as_str() {
            "bind" | "rbind" => {
                let dir = PathBuf::from(&mount.source);
                if mount.options.iter().any(|o| o == "ro") {
                    (None, vec![dir])
                } else {
                    (Some(dir), Vec::new())
                }
            }
            "overlay" => {
                let option = |name: &str| mount.options.iter().find_map(|o| o.strip_prefix(name));
                let upper = option("upperdir=").map(PathBuf::from);
                let lowers = option("lowerdir=").map(|l| l.split(':').map(PathBuf::from).collect()).unwrap_or_default();
                (upper, lowers)
            }
            other => return Err(Error::internal(format!("unexpected snapshot mount type {other:?}"))),
        };
        let parsed = SnapshotMounts { mounts, upper, lowers };
        Ok(parsed)
    }

    /// The mounts for a step's rootfs: a writable overlay gets the features
    /// that would change its upper directory turned off, where the kernel
    /// knows them.
    pub(super) fn for_step(&self) -> SnapshotMounts {
        let mounts = self.with_features_off(|parameter| Path::new(OVERLAY_PARAMETERS).join(parameter).exists());
        SnapshotMounts { mounts, ..self.clone() }
    }

    fn with_features_off(&self, known: impl Fn(&str) -> bool) -> Vec<Mount> {
        let mut mounts = self.mounts.clone();
        for mount in mounts.iter_mut().filter(|m| m.r#type == "overlay") {
            if !mount.options.iter().any(|o| o.starts_with("upperdir=")) {
                continue;
            }
            for (parameter, off) in FEATURES_OFF {
                let given = mount.options.iter().any(|o| o.split('=').next() == Some(parameter));
                if known(parameter) && !given {
                    mount.options.push(off.to_string());
                }
            }
        }
        mounts
    }

    /// These mounts with every layer below seen through the map of
    /// `idmapped`: each lower directory (or a lone read-only layer) replaced
    /// by an idmapped mount of it, and the writable directory's top given to
    /// the map (the kernel cannot idmap a writable overlay directory; see
    /// [`super::id_remap`]).
    pub(super) fn remapped(&self, idmapped: &mut IdmappedMounts) -> Result<SnapshotMounts> {
        let mut mounts = self.mounts.clone();
        for mount in &mut mounts {
            if mount.r#type == "overlay" {
                for option in &mut mount.options {
                    let Some(lowers) = option.strip_prefix("lowerdir=") else { continue };
                    let mapped = lowers
                        .split(':')
                        .map(|lower| idmapped.mount(Path::new(lower), true).map(|p| p.to_string_lossy().into_owned()))
                        .collect::<Result<Vec<_>>>()?;
                    *option = format!("lowerdir={}", mapped.join(":"));
                }
            } else if self.upper.is_none() {
                mount.source = idmapped.mount(Path::new(&mount.source), true)?.to_string_lossy().into_owned();
            }
        }
        if let Some(upper) = &self.upper {
            shift_root(upper, idmapped.map())?;
        }
        Ok(SnapshotMounts { mounts, ..self.clone() })
    }

    pub(super) fn upper(&self) -> Option<&Path> {
        self.upper.as_deref()
    }

    /// The layers below the writable directory, for reading the parent's
    /// files without mounting.
    pub(super) fn lower_stack(&self) -> LayerStack {
        LayerStack::new(self.lowers.clone())
    }

    /// Mounts the snapshot at `target`.
    pub(super) fn mount_at(&self, target: &Path) -> Result<()> {
        for mount in &self.mounts {
            let mut flags = MsFlags::empty();
            let mut data: Vec<&str> = Vec::new();
            for option in &mount.options {
                match option.as_str() {
                    "ro" => flags |= MsFlags::MS_RDONLY,
                    "rw" => {}
                    "bind" => flags |= MsFlags::MS_BIND,
                    "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
                    "nosuid" => flags |= MsFlags::MS_NOSUID,
                    "nodev" => flags |= MsFlags::MS_NODEV,
                    "noexec" => flags |= MsFlags::MS_NOEXEC,
                    other => data.push(other),
                }
            }
            if mount.r#type == "bind" || mount.r#type == "rbind" {
                flags |= MsFlags::MS_BIND;
            }
            let data = data.join(",");
            if data.len() > MAX_MOUNT_DATA {
                if let Some((dir, compact)) = relative_lowerdirs(&data) {
                    mount_from(&dir, &mount.r#type, &mount.source, flags, &compact, target)?;
                    continue;
                }
            }
            let fstype = (!flags.contains(MsFlags::MS_BIND)).then_some(mount.r#type.as_str());
            let source = mount.source.as_str();
            nix::mount::mount(Some(source), target, fstype, flags, (!data.is_empty()).then_some(data.as_str()))
                .map_err(|e| {
                    Error::internal(format!("mounting {source} ({}) at {}: {e}", mount.r#type, target.display()))
                })?;
            // A bind mount ignores MS_RDONLY until remounted.
            if flags.contains(MsFlags::MS_BIND) && flags.contains(MsFlags::MS_RDONLY) {
                let remount = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
                nix::mount::mount(None::<&str>, target, None::<&str>, remount, None::<&str>).map_err(|e| {
                    Error::internal(format!("making the bind mount at {} read-only: {e}", target.display()))
                })?;
            }
        }
        Ok(())
    }
}

/// Rewrites the `lowerdir=` paths of overlay options relative to their
/// common directory: the snapshotter keeps every layer under one
/// `snapshots/` directory, so `N/fs` is all that differs.
fn relative_lowerdirs(data: &str) -> Option<(PathBuf, String)> {
    let options: Vec<&str> = data.split(',').collect();
    let lowers: Vec<&Path> =
        options.iter().find_map(|o| o.strip_prefix("lowerdir="))?.split(':').map(Path::new).collect();
    let mut common = lowers.first()?.parent()?.to_path_buf();
    while !lowers.iter().all(|l| l.starts_with(&common)) {
        common = common.parent()?.to_path_buf();
    }
    if common.as_os_str().is_empty() || common == Path::new("/") {
        return None;
    }
    let relative: Vec<String> = lowers
        .iter()
        .map(|l| l.strip_prefix(&common).map(|r| r.to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()
        .ok()?;
    let rewritten: Vec<String> = options
        .iter()
        .map(|o| if o.starts_with("lowerdir=") { format!("lowerdir={}", relative.join(":")) } else { o.to_string() })
        .collect();
    Some((common, rewritten.join(",")))
}

/// Mounts with relative option paths: mount(8) runs in `dir`, as the kernel
/// resolves them against the caller's working directory (and this process's
/// own directory must not change under its other threads).
fn mount_from(dir: &Path, fstype: &str, source: &str, flags: MsFlags, data: &str, target: &Path) -> Result<()> {
    let mut options = data.to_string();
    if flags.contains(MsFlags::MS_RDONLY) {
        options.push_str(",ro");
    }
    let output = std::process::Command::new("mount")
        .current_dir(dir)
        .args(["-t", fstype, source, "-o", &options])
        .arg(target)
        .output()
        .map_err(|e| Error::internal(format!("running mount(8) for {}: {e}", target.display())))?;
    if !output.status.success() {
        return Err(Error::internal(format!(
            "mounting {source} ({fstype}) at {} from {}: {}",
            target.display(),
            dir.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deep_lowerdirs_become_relative_to_their_common_directory() {
        let data = "index=off,lowerdir=/s/snapshots/12/fs:/s/snapshots/3/fs:/s/snapshots/100/fs";
        let (dir, compact) = relative_lowerdirs(data).unwrap();
        assert_eq!(dir, PathBuf::from("/s/snapshots"));
        assert_eq!(compact, "index=off,lowerdir=12/fs:3/fs:100/fs");
    }

    #[test]
    fn a_step_overlay_turns_off_what_changes_its_upper_directory() {
        let mount = |kind: &str, options: &[&str]| Mount {
            r#type: kind.into(),
            source: "overlay".into(),
            options: options.iter().map(|o| o.to_string()).collect(),
            ..Mount::default()
        };
        let step = SnapshotMounts::parse(vec![mount("overlay", &["index=off", "lowerdir=/l", "upperdir=/u"])]).unwrap();
        let options = |mounts: Vec<Mount>| mounts.into_iter().flat_map(|m| m.options).collect::<Vec<_>>();
        assert_eq!(
            options(step.with_features_off(|_| true)),
            ["index=off", "lowerdir=/l", "upperdir=/u", "redirect_dir=off", "metacopy=off"]
        );
        assert_eq!(
            options(step.with_features_off(|p| p == "redirect_dir")),
            ["index=off", "lowerdir=/l", "upperdir=/u", "redirect_dir=off"],
            "an option the kernel does not know is not passed"
        );
        let view = SnapshotMounts::parse(vec![mount("overlay", &["lowerdir=/a:/b"])]).unwrap();
        assert_eq!(options(view.with_features_off(|_| true)), ["lowerdir=/a:/b"], "a read-only view is left alone");
        let bind = SnapshotMounts::parse(vec![mount("bind", &["rbind", "rw"])]).unwrap();
        assert_eq!(options(bind.with_features_off(|_| true)), ["rbind", "rw"]);
    }

    #[test]
    fn no_common_directory_means_no_rewrite() {
        assert_eq!(relative_lowerdirs("lowerdir=/a/fs:/b/fs"), None);
        assert_eq!(relative_lowerdirs("upperdir=/a/fs"), None);
    }
}
