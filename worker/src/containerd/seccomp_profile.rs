use memobuild_proto::{Error, Result};
use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompBuilder, LinuxSeccompOperator,
    LinuxSyscall, LinuxSyscallBuilder,
};

use memobuild_sandbox::syscall_policy::{CLONE3_ERRNO, DENIED, DENIED_ELSEWHERE, DENIED_ERRNO, NAMESPACE_FLAGS};

/// The default seccomp profile of RUN steps: [`memobuild_sandbox::syscall_policy`] as an
/// OCI `linux.seccomp`, for this machine's architectures.
pub(super) fn default_seccomp() -> Result<LinuxSeccomp> {
    let error = |e: oci_spec::OciSpecError| Error::internal(format!("building the seccomp profile: {e}"));
    let names = DENIED.iter().map(|(name, _)| name.to_string()).chain(DENIED_ELSEWHERE.iter().map(|n| n.to_string()));
    let mut syscalls = vec![errno_rule(names.collect(), DENIED_ERRNO).map_err(error)?];
    syscalls.push(errno_rule(vec!["clone3".into()], CLONE3_ERRNO).map_err(error)?);
    // One rule per flag: the conditions of one rule must all hold.
    for flag in NAMESPACE_FLAGS {
        let arg = LinuxSeccompArgBuilder::default()
            .index(0usize)
            .value(flag)
            .value_two(flag)
            .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
            .build()
            .map_err(error)?;
        let rule = LinuxSyscallBuilder::default()
            .names(vec!["clone".to_string()])
            .action(LinuxSeccompAction::ScmpActErrno)
            .errno_ret(DENIED_ERRNO)
            .args(vec![arg])
            .build()
            .map_err(error)?;
        syscalls.push(rule);
    }
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActAllow)
        .architectures(architectures())
        .syscalls(syscalls)
        .build()
        .map_err(error)
}

fn errno_rule(names: Vec<String>, errno: u32) -> std::result::Result<LinuxSyscall, oci_spec::OciSpecError> {
    LinuxSyscallBuilder::default().names(names).action(LinuxSeccompAction::ScmpActErrno).errno_ret(errno).build()
}

/// The ABIs a process on this machine may call the kernel through.
fn architectures() -> Vec<Arch> {
    match std::env::consts::ARCH {
        "x86_64" => vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32],
        "aarch64" => vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm],
        _ => vec![Arch::ScmpArchNative],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denies_mount_and_namespace_clones() {
        let json = serde_json::to_value(default_seccomp().expect("profile")).expect("json");
        assert_eq!(json["defaultAction"], "SCMP_ACT_ALLOW");
        let rules = json["syscalls"].as_array().expect("syscalls");
        let denied = &rules[0]["names"];
        for name in ["mount", "ptrace", "init_module", "kexec_load", "unshare", "setns", "bpf"] {
            assert!(denied.as_array().expect("names").iter().any(|n| n == name), "{name}");
        }
        assert_eq!(rules[0]["errnoRet"], 1);
        let clones = rules.iter().filter(|r| r["names"][0] == "clone").count();
        assert_eq!(clones, NAMESPACE_FLAGS.len());
    }
}
