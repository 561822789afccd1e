//! [`crate::syscall_policy`] as a classic BPF program, laid out as a binary
//! search on the syscall number.
//!
//! The layout matters for more than the filter's own speed: when a filter is
//! installed, the kernel runs it once for every syscall number to find the
//! ones it allows whatever their arguments, and every sandboxed child
//! installs it. A search tree answers in about ten instructions where a list
//! of comparisons takes hundreds.

use libc::sock_filter;

use crate::syscall_policy::{CLONE3_ERRNO, DENIED, DENIED_ERRNO, NAMESPACE_FLAGS};

const RET_ALLOW: u32 = 0x7fff_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_KILL_PROCESS: u32 = 0x8000_0000;

/// `AUDIT_ARCH_*` of this architecture: a call through another ABI (32-bit
/// x86 on x86_64) kills the process.
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xc000_00b7;
#[cfg(target_arch = "riscv64")]
const AUDIT_ARCH: u32 = 0xc000_00f3;

/// Syscall numbers of x86_64's x32 ABI have this bit set; the filter treats
/// them all as denied rather than list each a second time.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// Offsets in `struct seccomp_data`.
const NR_OFFSET: u32 = 0;
const ARCH_OFFSET: u32 = 4;
/// The low 32 bits of `args[0]` (little endian), where `clone`'s
/// namespace flags are.
const ARG0_LOW_OFFSET: u32 = 16;

/// Linear comparisons at the leaves of the search.
const LEAF: usize = 3;

/// What the filter does with one listed syscall.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Denied,
    /// `clone`: denied with a namespace flag.
    Clone,
    /// `clone3`: ENOSYS, so that libc falls back to `clone`.
    Clone3,
}

/// The seccomp program of the policy: denied syscalls fail with EPERM,
/// `clone` with a namespace flag too, `clone3` with ENOSYS, everything
/// else is allowed.
pub(super) fn seccomp_program() -> Vec<sock_filter> {
    let mut listed: Vec<(u32, Verdict)> = DENIED.iter().map(|(_, nr)| (*nr as u32, Verdict::Denied)).collect();
    listed.push((libc::SYS_clone as u32, Verdict::Clone));
    listed.push((libc::SYS_clone3 as u32, Verdict::Clone3));
    listed.sort_unstable_by_key(|(nr, _)| *nr);
    listed.dedup_by_key(|(nr, _)| *nr);
    let mut program = vec![load(ARCH_OFFSET), jump(JEQ, AUDIT_ARCH, 1, 0), ret(RET_KILL_PROCESS), load(NR_OFFSET)];
    if cfg!(target_arch = "x86_64") {
        program.extend([jump(JGE, X32_SYSCALL_BIT, 0, 1), ret(RET_ERRNO | DENIED_ERRNO)]);
    }
    program.extend(search(&listed));
    program
}

const LD: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const RET: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
const JEQ: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const JGE: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
const JSET: u16 = (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16;

fn load(offset: u32) -> sock_filter {
    sock_filter { code: LD, jt: 0, jf: 0, k: offset }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

fn ret(k: u32) -> sock_filter {
    sock_filter { code: RET, jt: 0, jf: 0, k }
}

/// The code deciding on the syscall number in the accumulator, among
/// `listed` (sorted); anything not listed is allowed.
fn search(listed: &[(u32, Verdict)]) -> Vec<sock_filter> {
    if listed.len() <= LEAF {
        let mut code = Vec::new();
        for (nr, verdict) in listed {
            let decide = decide(*verdict);
            code.push(jump(JEQ, *nr, 0, decide.len() as u8));
            code.extend(decide);
        }
        code.push(ret(RET_ALLOW));
        return code;
    }
    let (low, high) = listed.split_at(listed.len() / 2);
    let low = search(low);
    // Jump offsets are 8 bits; the policy's tree stays far below that.
    assert!(low.len() <= u8::MAX as usize, "the seccomp search tree outgrew BPF's jumps");
    let mut code = vec![jump(JGE, high[0].0, low.len() as u8, 0)];
    code.extend(low);
    code.extend(search(high));
    code
}

/// The code for one listed syscall, every path ending in a return.
fn decide(verdict: Verdict) -> Vec<sock_filter> {
    match verdict {
        Verdict::Denied => vec![ret(RET_ERRNO | DENIED_ERRNO)],
        Verdict::Clone3 => vec![ret(RET_ERRNO | CLONE3_ERRNO)],
        Verdict::Clone => {
            let flags = NAMESPACE_FLAGS.iter().fold(0, |all, flag| all | *flag as u32);
            vec![load(ARG0_LOW_OFFSET), jump(JSET, flags, 0, 1), ret(RET_ERRNO | DENIED_ERRNO), ret(RET_ALLOW)]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `program` on one syscall as the kernel would: its answer, and
    /// how many instructions it took.
    fn run(program: &[sock_filter], arch: u32, nr: u32, arg0: u64) -> (u32, usize) {
        let (mut pc, mut a, mut steps) = (0usize, 0u32, 0);
        loop {
            let op = program[pc];
            steps += 1;
            match op.code {
                LD => {
                    a = match op.k {
                        NR_OFFSET => nr,
                        ARCH_OFFSET => arch,
                        ARG0_LOW_OFFSET => arg0 as u32,
                        k => panic!("load of offset {k}"),
                    }
                }
                RET => return (op.k, steps),
                JEQ | JGE | JSET => {
                    let taken = match op.code {
                        JEQ => a == op.k,
                        JGE => a >= op.k,
                        _ => a & op.k != 0,
                    };
                    pc += usize::from(if taken { op.jt } else { op.jf });
                }
                code => panic!("unexpected instruction {code:#x}"),
            }
            pc += 1;
        }
    }

    fn answer(nr: u32, arg0: u64) -> u32 {
        run(&seccomp_program(), AUDIT_ARCH, nr, arg0).0
    }

    #[test]
    fn every_syscall_number_gets_the_policys_answer() {
        let denied: Vec<u32> = DENIED.iter().map(|(_, nr)| *nr as u32).collect();
        for nr in 0..1024 {
            let expected = if denied.contains(&nr) {
                RET_ERRNO | DENIED_ERRNO
            } else if nr == libc::SYS_clone3 as u32 {
                RET_ERRNO | CLONE3_ERRNO
            } else {
                RET_ALLOW
            };
            assert_eq!(answer(nr, 0), expected, "syscall {nr}");
        }
    }

    #[test]
    fn clone_is_denied_only_with_a_namespace_flag() {
        let clone = libc::SYS_clone as u32;
        let thread = (libc::CLONE_VM | libc::CLONE_FS | libc::CLONE_FILES | libc::CLONE_THREAD) as u64;
        assert_eq!(answer(clone, thread), RET_ALLOW);
        for flag in NAMESPACE_FLAGS {
            assert_eq!(answer(clone, thread | flag), RET_ERRNO | DENIED_ERRNO, "flag {flag:#x}");
        }
    }

    #[test]
    fn other_abis_are_refused() {
        let program = seccomp_program();
        assert_eq!(run(&program, 0x4000_0003, libc::SYS_getpid as u32, 0).0, RET_KILL_PROCESS);
        if cfg!(target_arch = "x86_64") {
            assert_eq!(answer(X32_SYSCALL_BIT | libc::SYS_mount as u32, 0), RET_ERRNO | DENIED_ERRNO);
        }
    }

    #[test]
    fn every_search_is_short() {
        // The kernel runs the filter for every syscall number when it is
        // installed, so the longest path is what each child pays for.
        let program = seccomp_program();
        let longest = (0..1024).map(|nr| run(&program, AUDIT_ARCH, nr, 0).1).max().unwrap_or(0);
        assert!(longest <= 20, "{longest} instructions on the longest path, {} in all", program.len());
    }
}
