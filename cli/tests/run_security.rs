//! RUN's sandbox in containerd (issue #16): no_new_privs and a seccomp
//! filter by default; `RUN --security=insecure` only with `--allow
//! security.insecure`, refused before any step runs otherwise. Read from
//! inside the step into the image, checked with umoci.
#![allow(clippy::unwrap_used)]

#[path = "image_build/harness.rs"]
mod harness;

use harness::{fixture, Project};

/// Writes the step's own security state, and whether it could mount.
const PROBE: &str = "grep -E '^(NoNewPrivs|Seccomp|CapEff):' /proc/self/status > /status; \
    (mkdir -p /m && mount -t tmpfs none /m && echo mounted || echo refused) > /mount";

fn project(run: &str) -> Project {
    Project::new(&[("Dockerfile", &format!("FROM {}\nRUN echo first > /first\n{run} {PROBE}\n", fixture().base()))])
}

fn field<'a>(status: &'a str, name: &str) -> &'a str {
    status.lines().find_map(|l| l.strip_prefix(name)).map(str::trim).unwrap_or_else(|| panic!("{name} in {status}"))
}

#[test]
fn run_steps_have_no_new_privs_and_seccomp() {
    let image = project("RUN").built_image(&[]);
    let status = image.read("/status");
    assert_eq!(field(&status, "NoNewPrivs:"), "1", "{status}");
    assert_eq!(field(&status, "Seccomp:"), "2", "{status}");
    // Docker's default set for root: chown, dac_override, ... (0xa80425fb).
    assert_eq!(field(&status, "CapEff:"), "00000000a80425fb", "{status}");
    assert_eq!(image.read("/mount").trim(), "refused");
}

#[test]
fn insecure_runs_need_the_entitlement() {
    let project = project("RUN --security=insecure");
    let refused = project.build(&[]);
    assert!(!refused.ok());
    let stderr = refused.stderr();
    assert!(stderr.contains("Dockerfile:3"), "{stderr}");
    assert!(stderr.contains("--allow security.insecure"), "{stderr}");
    assert!(refused.ran().is_empty(), "refused before any step ran: {:?}", refused.ran());

    let image = project.built_image(&["--allow", "security.insecure"]);
    let status = image.read("/status");
    assert_eq!(field(&status, "NoNewPrivs:"), "0", "{status}");
    assert_eq!(field(&status, "Seccomp:"), "0", "{status}");
    let caps = u64::from_str_radix(field(&status, "CapEff:"), 16).unwrap();
    assert!(caps & (1 << 21) != 0, "CAP_SYS_ADMIN in insecure mode: {status}");
    assert_eq!(image.read("/mount").trim(), "mounted");
}
