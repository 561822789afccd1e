use std::os::fd::OwnedFd;

use memobuild_proto::Result;
use parking_lot::Mutex;

use super::empty_netns::empty_netns;
use super::worker_cgroup::{CgroupSlot, WorkerCgroup};

/// What one running action holds: its cgroups and an empty network
/// namespace, both made once and reused.
pub(super) struct Slot {
    pub(super) cgroup: Option<CgroupSlot>,
    pub(super) netns: OwnedFd,
}

/// Slots made on demand (as many as actions ever ran at once) and reused.
pub(super) struct SlotPool {
    // Dropped first: slots' cgroups live inside the worker's.
    free: Mutex<Vec<Slot>>,
    count: Mutex<usize>,
    cgroup: Option<WorkerCgroup>,
}

impl SlotPool {
    pub(super) fn new(cgroup: Option<WorkerCgroup>) -> Self {
        SlotPool { free: Mutex::new(Vec::new()), count: Mutex::new(0), cgroup }
    }

    /// A free slot, or a new one.
    pub(super) fn acquire(&self) -> Result<Slot> {
        if let Some(slot) = self.free.lock().pop() {
            return Ok(slot);
        }
        let index = {
            let mut count = self.count.lock();
            *count += 1;
            *count - 1
        };
        let cgroup = self.cgroup.as_ref().map(|c| c.slot(index)).transpose()?;
        Ok(Slot { cgroup, netns: empty_netns()? })
    }

    /// Returns a slot whose processes are all gone.
    pub(super) fn release(&self, slot: Slot) {
        self.free.lock().push(slot);
    }

    /// Returns the slot of a command killed before anyone read its end:
    /// what its memory did is no one's now.
    pub(super) fn release_killed(&self, mut slot: Slot) {
        if let Some(cgroup) = slot.cgroup.as_mut() {
            cgroup.oom_killed();
        }
        self.release(slot);
    }
}
