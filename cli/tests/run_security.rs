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

/// `capx set PATH` gives PATH `cap_net_raw+ep`; `capx get PATH` prints its
/// `security.capability` in hex, or `none`. Static, so it runs in busybox.
const CAPX: &str = r#"
#include <stdio.h>
#include <string.h>
#include <sys/xattr.h>
static const unsigned char NET_RAW[20] = {1, 0, 0, 2, 0, 0x20};
int main(int argc, char **argv) {
    unsigned char value[64];
    if (argc != 3) return 2;
    if (strcmp(argv[1], "set") == 0) {
        if (setxattr(argv[2], "security.capability", NET_RAW, sizeof NET_RAW, 0) == 0) return 0;
        perror("setxattr");
        return 1;
    }
    ssize_t n = getxattr(argv[2], "security.capability", value, sizeof value);
    if (n < 0) { puts("none"); return 0; }
    for (ssize_t i = 0; i < n; i++) printf("%02x", value[i]);
    putchar('\n');
    return 0;
}
"#;

/// File capabilities set by a RUN stay in its layer, reach another stage
/// through `COPY --from`, are seen by the next RUN and are in the image,
/// as with BuildKit; in a user namespace too, where the kernel records
/// them against the namespace's root.
#[test]
fn file_capabilities_survive_run_copy_and_the_image() {
    let project = Project::new(&[(
        "Dockerfile",
        &format!(
            "FROM {base} AS build\n\
             COPY capx /capx\n\
             RUN cp /bin/busybox /ping && /capx set /ping\n\
             FROM {base}\n\
             COPY capx /capx\n\
             COPY --from=build /ping /opt/ping\n\
             RUN /capx get /opt/ping > /seen && /capx get /capx > /seen-plain\n",
            base = fixture().base()
        ),
    )]);
    std::fs::write(project.path().join("capx.c"), CAPX).unwrap();
    let capx = project.path().join("capx");
    harness::sh(
        "cc",
        &["-static", "-O", "-o", capx.to_str().unwrap(), project.path().join("capx.c").to_str().unwrap()],
    );
    let net_raw = "0100000200200000000000000000000000000000";

    let capabilities = |image: &harness::Unpacked, path: &str| -> String {
        let value = xattr::get(image.rootfs().join(path), "security.capability").unwrap();
        value.unwrap_or_default().iter().map(|b| format!("{b:02x}")).collect()
    };
    for args in [&[][..], &["--no-cache", "--userns-remap", "100000:65536"][..]] {
        let image = project.built_image(args);
        assert_eq!(image.read("/seen").trim(), net_raw, "{args:?}: the next RUN sees the copied file's capabilities");
        assert_eq!(image.read("/seen-plain").trim(), "none", "{args:?}");
        assert_eq!(capabilities(&image, "opt/ping"), net_raw, "{args:?}: in the image");
        let stage = project.built_image(&[args, &["--target", "build"][..]].concat());
        assert_eq!(capabilities(&stage, "ping"), net_raw, "{args:?}: in the RUN's own layer");
    }
}
