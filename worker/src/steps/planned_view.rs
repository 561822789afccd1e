//! The parent filesystem with a step's planned entries on top: what a
//! builtin step sees while it plans, its own work included (an archive's
//! directories and symlinks unpacked so far, what an earlier source of the
//! same COPY put there).

use memobuild_oci::{FsEntry, FsKind};
use memobuild_proto::Result;

use super::fs_view::FsView;
use super::layer_plan::{Entry, LayerPlan, Meta};

pub struct PlannedView<'a> {
    pub plan: &'a LayerPlan,
    pub parent: &'a dyn FsView,
}

impl FsView for PlannedView<'_> {
    fn lstat(&self, path: &str) -> Result<Option<FsEntry>> {
        let entry = |kind: FsKind, m: &Meta| FsEntry {
            kind,
            mode: m.mode,
            uid: m.uid,
            gid: m.gid,
            mtime: m.mtime,
            content: None,
        };
        Ok(match self.plan.entry(path) {
            Some(Entry::Directory(m)) => Some(entry(FsKind::Directory, m)),
            Some(Entry::File(m, _)) => Some(entry(FsKind::File, m)),
            Some(Entry::Symlink(m, target)) => Some(entry(FsKind::Symlink(target.clone()), m)),
            Some(Entry::Hardlink(_)) => {
                Some(FsEntry { kind: FsKind::File, mode: 0o644, uid: 0, gid: 0, mtime: 0, content: None })
            }
            None => return self.parent.lstat(path),
        })
    }

    fn read(&self, path: &str) -> Result<Option<Vec<u8>>> {
        self.parent.read(path)
    }
}
