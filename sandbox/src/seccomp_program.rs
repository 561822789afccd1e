use std::collections::BTreeMap;

use memobuild_proto::{Error, Result};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
};

use crate::syscall_policy::{CLONE3_ERRNO, DENIED, DENIED_ERRNO, NAMESPACE_FLAGS};

/// [`crate::syscall_policy`] as BPF programs for this architecture, to be
/// installed together (the kernel runs every filter and keeps the strictest
/// answer): one for the denied syscalls, one sending ENOSYS for `clone3`. A
/// call through another ABI (32-bit x86) kills the process.
pub(super) fn seccomp_programs() -> Result<[BpfProgram; 2]> {
    let error = |e: seccompiler::BackendError| Error::internal(format!("building the seccomp filter: {e}"));
    let arch = std::env::consts::ARCH
        .try_into()
        .map_err(|e| Error::internal(format!("no seccomp filter for {}: {e}", std::env::consts::ARCH)))?;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = DENIED.iter().map(|(_, number)| (*number, Vec::new())).collect();
    let clone_rules = NAMESPACE_FLAGS
        .iter()
        .map(|flag| {
            let condition = SeccompCondition::new(0, SeccompCmpArgLen::Qword, SeccompCmpOp::MaskedEq(*flag), *flag)?;
            SeccompRule::new(vec![condition])
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(error)?;
    rules.insert(libc::SYS_clone, clone_rules);
    let denied =
        SeccompFilter::new(rules, SeccompAction::Allow, SeccompAction::Errno(DENIED_ERRNO), arch).map_err(error)?;
    let clone3 = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
        SeccompAction::Allow,
        SeccompAction::Errno(CLONE3_ERRNO),
        arch,
    )
    .map_err(error)?;
    Ok([denied.try_into().map_err(error)?, clone3.try_into().map_err(error)?])
}
