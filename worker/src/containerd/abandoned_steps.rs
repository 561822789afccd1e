//! Steps left in containerd by a process killed midway (SIGKILL, the OOM
//! killer, a CI timeout): the task may still run, and the container, its
//! snapshot and its lease stay. Each step's container carries the process
//! that made it ([`OWNER_LABEL`]); the first step of each client removes
//! the steps whose process is gone, as a step's own cleanup would.

use std::sync::OnceLock;

use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::ListContainersRequest;
use memobuild_proto::{Error, Result};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use super::step_cleanup::StepRemains;
use super::Containerd;

/// The container label naming the process that runs the step: its PID
/// namespace, PID and start time (see [`this_process`]).
pub(super) const OWNER_LABEL: &str = "memobuild.owner";
/// The container label naming the lease its step's objects live under.
pub(super) const LEASE_LABEL: &str = "memobuild.lease";

/// This process as [`OWNER_LABEL`] names it, e.g. `pid:[4026531836]/4242/91234`.
pub(super) fn this_process() -> &'static str {
    static OWNER: OnceLock<String> = OnceLock::new();
    OWNER.get_or_init(|| {
        let namespace = pid_namespace().unwrap_or_default();
        let pid = std::process::id();
        format!("{namespace}/{pid}/{}", start_time(pid).unwrap_or_default())
    })
}

fn pid_namespace() -> Option<String> {
    Some(std::fs::read_link("/proc/self/ns/pid").ok()?.to_string_lossy().into_owned())
}

/// When process `pid` started, in clock ticks after boot (the 22nd field of
/// its `/proc/PID/stat`); `None` when it does not run.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold anything.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the process `owner` names is gone. An owner in another PID
/// namespace (another pod on a shared containerd) is never judged gone:
/// its PID means nothing here.
fn is_gone(owner: &str) -> bool {
    let mut parts = owner.rsplitn(3, '/');
    let (Some(started), Some(pid), Some(namespace)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let (Ok(pid), Ok(started)) = (pid.parse::<u32>(), started.parse::<u64>()) else { return false };
    if pid_namespace().as_deref() != Some(namespace) {
        return false;
    }
    start_time(pid) != Some(started)
}

impl Containerd {
    /// Removes the steps of processes that are gone: kills their tasks,
    /// deletes tasks and containers, removes their snapshots and leases.
    pub(super) async fn remove_abandoned_steps(&self) -> Result<()> {
        let containers = ContainersClient::new(self.channel())
            .list(self.request(ListContainersRequest { filters: Vec::new() }, None))
            .await
            .map_err(|s| Error::from(s).context("listing containers"))?
            .into_inner()
            .containers;
        let abandoned: Vec<_> = containers
            .into_iter()
            .filter(|c| c.labels.get(OWNER_LABEL).is_some_and(|owner| is_gone(owner)))
            .map(|c| StepRemains::abandoned(c.id.clone(), c.labels.get(LEASE_LABEL).cloned()))
            .collect();
        let (never, now) = (CancellationToken::new(), CancellationToken::new());
        now.cancel();
        for remains in &abandoned {
            tracing::info!(?remains, "removing a step whose process is gone");
        }
        let jobs = abandoned.into_iter().map(Mutex::new).collect::<Vec<_>>();
        futures::future::join_all(jobs.iter().map(|left| StepRemains::clean(left, self, &never, &now))).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_are_judged_by_pid_and_start_time_in_this_namespace() {
        let me = this_process();
        assert!(!is_gone(me), "{me}");
        let (rest, started) = me.rsplit_once('/').unwrap();
        assert!(is_gone(&format!("{rest}/{}", started.parse::<u64>().unwrap() + 1)), "a reused PID");
        let namespace = pid_namespace().unwrap();
        assert!(is_gone(&format!("{namespace}/{}/1", u32::MAX)), "no such process");
        assert!(!is_gone(&format!("pid:[1]/{}/1", u32::MAX)), "another namespace's process");
        assert!(!is_gone("garbage"));
    }
}
