//! ONBUILD triggers run where Docker runs them: in a stage built `FROM` an
//! image (pushed to a real registry) or a stage that has them, right after
//! the FROM, with the child's build context; checked with umoci and skopeo.
#![allow(clippy::unwrap_used)]

#[path = "image_build/harness.rs"]
mod harness;

use harness::{fixture, sh, Build, Project, Unpacked};
use serde_json::Value;

/// The config blob as stored (`skopeo inspect --config` alone re-encodes it
/// with the OCI types, which have no OnBuild).
fn raw_config(reference: &str) -> Value {
    serde_json::from_str(&sh("skopeo", &["inspect", "--config", "--raw", "--tls-verify=false", reference])).unwrap()
}

/// Builds `project` into an OCI tar; returns the build and the tar's path.
fn build_oci(project: &Project, extra: &[&str]) -> (Build, std::path::PathBuf) {
    let out = project.path().join("image.tar");
    let dest = format!("type=oci,dest={}", out.display());
    let mut args = vec!["-t", "child:1", "--output", &dest];
    args.extend_from_slice(extra);
    (project.build(&args), out)
}

/// The step names the progress showed.
fn step_names(build: &Build) -> Vec<String> {
    build.events.iter().filter_map(|e| e["detail"]["name"].as_str().map(str::to_string)).collect()
}

#[test]
fn triggers_of_a_pushed_image_run_with_the_childs_context() {
    let tag = format!("{}/onbuild/a:1", fixture().registry);
    let a = Project::new(&[(
        "Dockerfile",
        &format!("FROM {}\nONBUILD COPY . /app/\nONBUILD RUN cat /app/input.txt > /app/seen.txt\n", fixture().base()),
    )]);
    let build = a.build(&["-t", &tag, "--push"]);
    assert!(build.ok(), "{}", build.stderr());
    let a_config = raw_config(&format!("docker://{tag}"));
    assert_eq!(
        a_config["config"]["OnBuild"],
        serde_json::json!(["COPY . /app/", "RUN cat /app/input.txt > /app/seen.txt"])
    );

    let b = Project::new(&[
        ("Dockerfile", &format!("FROM {tag}\nRUN cp /app/seen.txt /again.txt\n")),
        ("input.txt", "from B's context\n"),
        // The output is written into the context directory.
        (".dockerignore", "image.tar\n"),
    ]);
    let (build, out) = build_oci(&b, &[]);
    assert!(build.ok(), "{}", build.stderr());
    let names = step_names(&build);
    assert!(names.iter().any(|n| n.ends_with("] ONBUILD COPY . /app/")), "{names:?}");
    assert!(names.iter().any(|n| n.ends_with("] ONBUILD RUN cat /app/input.txt > /app/seen.txt")), "{names:?}");
    let image = Unpacked::from_oci_tar(&out, "1");
    assert_eq!(image.read("/app/seen.txt"), "from B's context\n");
    assert_eq!(image.read("/again.txt"), "from B's context\n");
    let config = raw_config(&format!("oci-archive:{}:1", out.display()));
    assert!(config["config"].get("OnBuild").is_none_or(Value::is_null), "{config}");
    let history: Vec<&str> =
        config["history"].as_array().unwrap().iter().filter_map(|h| h["created_by"].as_str()).collect();
    assert!(history.contains(&"ONBUILD COPY . /app/"), "{history:?}");

    // --dry-run plans the triggers too: all cached.
    let dry = b.build(&["--dry-run"]);
    assert!(dry.ok(), "{}", dry.stderr());
    assert_eq!((dry.cached(), dry.ran()), (vec!["0.1".to_string(), "0.2".into(), "0.3".into()], vec![]));

    // A changed input reruns the triggers (and what follows), nothing is
    // taken from the cache of the old input.
    b.write("input.txt", "changed\n");
    let (build, out) = build_oci(&b, &[]);
    assert!(build.ok(), "{}", build.stderr());
    assert_eq!(build.ran(), ["0.1", "0.2", "0.3"]);
    assert_eq!(Unpacked::from_oci_tar(&out, "1").read("/app/seen.txt"), "changed\n");
}

#[test]
fn a_stage_with_triggers_runs_them_in_the_stage_built_from_it() {
    let project = Project::new(&[
        (
            "Dockerfile",
            &format!(
                "FROM {} AS lib\nONBUILD COPY input.txt /lib/\nONBUILD RUN wc -c < /lib/input.txt > /lib/size\n\nFROM lib\n",
                fixture().base()
            ),
        ),
        (
            "Dockerfile.fail",
            &format!("FROM {} AS lib\nONBUILD RUN echo trigger-ran && exit 3\n\nFROM lib\n", fixture().base()),
        ),
        ("input.txt", "12345\n"),
    ]);
    let (build, out) = build_oci(&project, &[]);
    assert!(build.ok(), "{}", build.stderr());
    let image = Unpacked::from_oci_tar(&out, "1");
    assert_eq!(image.read("/lib/input.txt"), "12345\n");
    assert_eq!(image.read("/lib/size").trim(), "6");
    let config = raw_config(&format!("oci-archive:{}:1", out.display()));
    assert!(config["config"].get("OnBuild").is_none_or(Value::is_null), "{config}");

    let dockerfile = project.path().join("Dockerfile.fail");
    let (build, _) = build_oci(&project, &["-f", dockerfile.to_str().unwrap()]);
    assert!(!build.ok());
    let expected = format!(
        "ONBUILD trigger `RUN echo trigger-ran && exit 3` of stage lib ({}:4 of the FROM): ",
        dockerfile.display()
    );
    assert!(build.stderr().contains(&expected), "{}", build.stderr());
    assert!(build.stderr().contains("exit code: 3"), "{}", build.stderr());
}
