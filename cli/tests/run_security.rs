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

/// `--userns-remap`: every RUN step's root is a host id of the map, devices
/// cannot be made, and the files a step sees through its mounts (a cache,
/// another stage, the context) and the ones it leaves keep their owners.
#[test]
fn run_steps_in_a_user_namespace() {
    use std::os::unix::fs::MetadataExt;
    let dockerfile = format!(
        "FROM {base} AS files\n\
         RUN mkdir /owned && echo hi > /owned/f && chown 1000:1000 /owned/f\n\
         FROM {base}\n\
         RUN --mount=type=cache,target=/c --mount=from=files,source=/owned,target=/from \
             --mount=type=bind,source=ctx.txt,target=/ctx.txt \
             cat /proc/self/uid_map > /uidmap && stat -c %u:%g /from/f > /from-owner && cat /ctx.txt > /ctx \
             && echo cached > /c/x && cat /c/x > /cache-read \
             && (mknod /null c 1 3 2>/dev/null && echo made || echo refused) > /mknod \
             && mkdir /made && chown 1000:1000 /made\n",
        base = fixture().base()
    );
    let project = Project::new(&[("Dockerfile", &dockerfile), ("ctx.txt", "from the context")]);
    let image = project.built_image(&["--userns-remap", "100000:65536"]);
    assert_eq!(image.read("/uidmap").split_whitespace().collect::<Vec<_>>(), ["0", "100000", "65536"]);
    assert_eq!(image.read("/from-owner").trim(), "1000:1000", "another stage's owners, through the map");
    assert_eq!(image.read("/ctx"), "from the context");
    assert_eq!(image.read("/cache-read").trim(), "cached");
    assert_eq!(image.read("/mknod").trim(), "refused", "no devices in a user namespace");
    let made = std::fs::symlink_metadata(image.rootfs().join("made")).unwrap();
    assert_eq!((made.uid(), made.gid()), (1000, 1000), "owners shifted back into the layer");
    let root_file = std::fs::symlink_metadata(image.rootfs().join("uidmap")).unwrap();
    assert_eq!(root_file.uid(), 0);

    let again = project.build(&[]);
    assert!(again.ok(), "{}", again.stderr());
    assert!(again.ran().is_empty(), "the namespace is not in any cache key: {:?}", again.ran());

    let bad = project.build(&["--userns-remap", "10"]);
    assert!(!bad.ok());
    assert!(bad.stderr().contains("--userns-remap"), "{}", bad.stderr());
}
