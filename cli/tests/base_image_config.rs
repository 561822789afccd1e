//! What an image built FROM another keeps of its base's config: the Docker
//! fields oci-spec has no place for (Healthcheck, Shell) and the author,
//! checked with skopeo on images pushed to a real registry.
#![allow(clippy::unwrap_used)]

#[path = "image_build/harness.rs"]
mod harness;

use harness::{fixture, sh, Project, Unpacked};
use serde_json::json;

/// The config blob as stored (`skopeo inspect --config` alone re-encodes
/// it with the OCI types, which have no Healthcheck or Shell).
fn raw_config(reference: &str) -> serde_json::Value {
    serde_json::from_str(&sh("skopeo", &["inspect", "--config", "--raw", "--tls-verify=false", reference])).unwrap()
}

#[test]
fn healthcheck_shell_and_author_come_from_the_base() {
    let registry = &fixture().registry;
    let base_tag = format!("{registry}/inherit/base:1");
    let base = Project::new(&[(
        "Dockerfile",
        &format!(
            "FROM {}\nMAINTAINER ops@example.com\nSHELL [\"/bin/ash\", \"-c\"]\n\
             HEALTHCHECK --interval=30s --timeout=5s --retries=3 CMD wget -q -O- http://localhost/ || exit 1\n",
            fixture().base()
        ),
    )]);
    let build = base.build(&["-t", &base_tag, "--push"]);
    assert!(build.ok(), "{}", build.stderr());
    let base_config = raw_config(&format!("docker://{base_tag}"));
    assert_eq!(base_config["config"]["Healthcheck"]["Retries"], 3, "{base_config}");

    let child = Project::new(&[
        ("Dockerfile", &format!("FROM {base_tag}\nRUN echo \"$0\" > /shell\n")),
        ("Dockerfile.none", &format!("FROM {base_tag}\nHEALTHCHECK NONE\n")),
    ]);
    let out = child.path().join("image.tar");
    let build = child.build(&["-t", "child:1", "-o", &format!("type=oci,dest={}", out.display())]);
    assert!(build.ok(), "{}", build.stderr());
    let config = raw_config(&format!("oci-archive:{}:1", out.display()));
    assert_eq!(
        config["config"]["Healthcheck"],
        json!({
            "Test": ["CMD-SHELL", "wget -q -O- http://localhost/ || exit 1"],
            "Interval": 30_000_000_000i64,
            "Timeout": 5_000_000_000i64,
            "Retries": 3,
        })
    );
    assert_eq!(config["config"]["Shell"], json!(["/bin/ash", "-c"]));
    assert_eq!(config["author"], "ops@example.com");
    // The base's SHELL also runs the child's shell-form RUN.
    assert_eq!(Unpacked::from_oci_tar(&out, "1").read("/shell").trim(), "/bin/ash");

    // HEALTHCHECK NONE in the child turns the base's off.
    let none_out = child.path().join("none.tar");
    let build = child.build(&[
        "-f",
        child.path().join("Dockerfile.none").to_str().unwrap(),
        "-t",
        "none:1",
        "-o",
        &format!("type=oci,dest={}", none_out.display()),
    ]);
    assert!(build.ok(), "{}", build.stderr());
    let config = raw_config(&format!("oci-archive:{}:1", none_out.display()));
    assert_eq!(config["config"]["Healthcheck"], json!({"Test": ["NONE"]}));
}
