//! The `docker buildx build` flags scripts and CI pass, end to end: a real
//! containerd, a busybox base from a real registry, the results read with
//! skopeo, tar and umoci.
#![allow(clippy::unwrap_used)]

#[path = "image_build/harness.rs"]
mod harness;

use harness::{fixture, inspect_config, sh, Project, Unpacked};
use serde_json::Value;

fn project(steps: &str) -> Project {
    Project::new(&[("Dockerfile", &format!("FROM {}\n{steps}", fixture().base()))])
}

/// `-o type=oci,dest=NAME` in the project, and the path it names.
fn oci_output(project: &Project, name: &str) -> (String, String) {
    let path = project.path().join(name).display().to_string();
    (format!("type=oci,dest={path}"), path)
}

fn raw_manifest(oci_tar: &str) -> Vec<u8> {
    sh("skopeo", &["inspect", "--raw", &format!("oci-archive:{oci_tar}")]).into_bytes()
}

/// The interfaces listed in a `/proc/net/dev`, sorted.
fn interfaces(proc_net_dev: &str) -> Vec<String> {
    let mut names: Vec<String> =
        proc_net_dev.lines().skip(2).filter_map(|l| l.split(':').next()).map(|n| n.trim().to_string()).collect();
    names.sort();
    names
}

/// [`interfaces`] without the bridges and veths that builds and tests
/// running beside this one add and remove (all named `mb...`).
fn lasting_interfaces(proc_net_dev: &str) -> Vec<String> {
    interfaces(proc_net_dev).into_iter().filter(|name| !name.starts_with("mb")).collect()
}

#[test]
fn labels_annotations_iidfile_and_metadata_file() {
    let project = project(
        "LABEL org.example.a=from-dockerfile org.example.b=kept\nRUN cat /proc/sys/kernel/random/uuid > /random\n",
    );
    let (output, oci) = oci_output(&project, "image.tar");
    let iidfile = project.path().join("iid").display().to_string();
    let metadata_file = project.path().join("metadata.json").display().to_string();
    let build = project.build(&[
        "-t",
        "img:1",
        "-o",
        &output,
        "--label",
        "org.example.a=from-flag",
        "--label",
        "org.example.c=new",
        "--annotation",
        "org.example.note=hello",
        "--annotation",
        "manifest:org.example.other=2",
        "--iidfile",
        &iidfile,
        "--metadata-file",
        &metadata_file,
        "--pull",
        "--provenance=false",
        "--sbom",
        "false",
        "--attest",
        "type=provenance,disabled=true",
    ]);
    assert!(build.ok(), "{}", build.stderr());

    let config = inspect_config(&format!("oci-archive:{oci}"));
    let labels = &config["config"]["Labels"];
    assert_eq!(labels["org.example.a"], "from-flag");
    assert_eq!(labels["org.example.b"], "kept");
    assert_eq!(labels["org.example.c"], "new");

    let manifest_bytes = raw_manifest(&oci);
    let manifest: Value = serde_json::from_slice(&manifest_bytes).unwrap();
    assert_eq!(manifest["annotations"]["org.example.note"], "hello");
    assert_eq!(manifest["annotations"]["org.example.other"], "2");

    let image_id = std::fs::read_to_string(&iidfile).unwrap();
    assert_eq!(image_id, manifest["config"]["digest"].as_str().unwrap());
    let index: Value = serde_json::from_str(&sh("tar", &["-xOf", &oci, "index.json"])).unwrap();
    let metadata: Value = serde_json::from_slice(&std::fs::read(&metadata_file).unwrap()).unwrap();
    assert_eq!(metadata["containerimage.config.digest"], image_id.as_str());
    assert_eq!(metadata["containerimage.digest"], index["manifests"][0]["digest"]);
    assert_eq!(metadata["containerimage.descriptor"]["digest"], index["manifests"][0]["digest"]);
    assert_eq!(metadata["containerimage.descriptor"]["size"], manifest_bytes.len());
    assert_eq!(metadata["containerimage.descriptor"]["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(metadata["image.name"], "img:1");

    // Another label is another config, not another layer: the RUN (whose
    // output is random) is a cache hit. -q prints the id and nothing else.
    let (output, again) = oci_output(&project, "again.tar");
    let second_iid = project.path().join("iid2").display().to_string();
    let quiet = project.build(&["-q", "-o", &output, "--label", "org.example.a=other", "--iidfile", &second_iid]);
    assert!(quiet.ok(), "{}", quiet.stderr());
    let second_id = std::fs::read_to_string(&second_iid).unwrap();
    assert_ne!(second_id, image_id);
    assert_eq!(String::from_utf8_lossy(&quiet.output.stdout), format!("{second_id}\n"));
    assert!(quiet.events.is_empty(), "-q shows no progress: {}", quiet.stderr());
    let second = inspect_config(&format!("oci-archive:{again}"));
    assert_eq!(second["config"]["Labels"]["org.example.a"], "other");
    assert_eq!(second["rootfs"], config["rootfs"], "the layers are the cached ones");
}

#[test]
fn network_flag_is_the_default_of_run_steps() {
    let project = project(
        "RUN cat /proc/net/dev > /default-net && cat /etc/hosts > /hosts-seen || true\n\
         RUN --network=none cat /proc/net/dev > /none-net\n",
    );
    let (output, oci) = oci_output(&project, "host.tar");
    let build = project.build(&[
        "-t",
        "img:1",
        "-o",
        &output,
        "--network=host",
        "--allow",
        "network.host",
        "--add-host",
        "db.internal:10.1.2.3",
    ]);
    assert!(build.ok(), "{}", build.stderr());
    let host = Unpacked::from_oci_tar(std::path::Path::new(&oci), "1");
    let own = lasting_interfaces(&std::fs::read_to_string("/proc/net/dev").unwrap());
    assert!(own.len() > 1, "this test needs a host with more than lo: {own:?}");
    assert_eq!(lasting_interfaces(&host.read("/default-net")), own);
    assert_eq!(interfaces(&host.read("/none-net")), ["lo"], "RUN --network=none wins over --network=host");
    let hosts = host.read("/hosts-seen");
    let own_hosts = std::fs::read_to_string("/etc/hosts").unwrap();
    assert!(hosts.starts_with(own_hosts.trim_end()), "host networking keeps the host's entries: {hosts}");
    assert!(hosts.contains("10.1.2.3\tdb.internal"), "{hosts}");

    let (output, oci) = oci_output(&project, "default.tar");
    let build = project.build(&["-t", "img:1", "-o", &output, "--network", "default"]);
    assert!(build.ok(), "{}", build.stderr());
    assert_eq!(build.ran().len(), 2, "another network is another key: {:?}", build.cached());
    let default = Unpacked::from_oci_tar(std::path::Path::new(&oci), "1");
    assert_eq!(interfaces(&default.read("/default-net")), ["eth0", "lo"], "its own namespace, behind NAT");
}

#[test]
fn add_host_entries_reach_run_steps_only() {
    let project = project("RUN cat /etc/hosts > /hosts-seen && ls /etc > /etc-listing\n");
    let (output, oci) = oci_output(&project, "image.tar");
    let build = project.build(&["-t", "img:1", "-o", &output, "--add-host", "db.internal:10.1.2.3"]);
    assert!(build.ok(), "{}", build.stderr());
    let image = Unpacked::from_oci_tar(std::path::Path::new(&oci), "1");
    let hosts = image.read("/hosts-seen");
    assert!(hosts.contains("127.0.0.1\tlocalhost"), "{hosts}");
    assert!(hosts.contains("10.1.2.3\tdb.internal"), "{hosts}");
    assert!(image.read("/etc-listing").lines().any(|l| l == "hosts"), "the step saw /etc/hosts");
    assert!(!image.exists("/etc/hosts"), "the generated /etc/hosts is not in the image");

    let other = project.build(&["-t", "img:1", "-o", &output, "--add-host", "db.internal:10.9.9.9"]);
    assert!(other.ok(), "{}", other.stderr());
    assert!(other.ran().is_empty(), "--add-host is not part of the key: {:?}", other.ran());
}

#[test]
fn unsupported_requests_fail_and_say_why() {
    let project = project("RUN true\n");
    let out = project.path().join("image.tar").display().to_string();
    let output = format!("type=oci,dest={out}");

    let sbom = project.build(&["-o", &output, "--sbom=true"]);
    assert!(!sbom.ok());
    assert!(sbom.stderr().contains("--sbom") && sbom.stderr().contains("not supported yet"), "{}", sbom.stderr());

    let cache_to = project.build(&["-o", &output, "--cache-to", "type=registry,ref=example.com/cache"]);
    assert!(!cache_to.ok());
    let text = cache_to.stderr();
    assert!(text.contains("--cache-to") && text.contains("--state-dir"), "{text}");
    assert!(text.contains("memobuild remote build"), "{text}");

    let load =
        project.build_with_env(&["-t", "img:1", "--load"], &[("DOCKER_HOST", "unix:///nonexistent/docker.sock")]);
    assert!(!load.ok());
    let text = load.stderr();
    assert!(text.contains("--load") && text.contains("Docker daemon"), "{text}");
    assert!(text.contains("--output type=docker,dest=FILE"), "{text}");
    assert!(!std::path::Path::new(&out).exists());
}

/// A gzipped tar of `files`, as `tar -cz` would write it.
fn context_tar(files: &[(&str, &str)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default()));
    for (name, content) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, name, content.as_bytes()).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

#[test]
fn context_and_dockerfile_from_stdin() {
    let base = fixture().base();
    let project = Project::new(&[("app.txt", "from the directory\n")]);
    let (output, oci) = oci_output(&project, "image.tar");
    let dir = project.path().display().to_string();

    // `-f -`: the Dockerfile from stdin, the context from the directory.
    let dockerfile = format!("FROM {base}\nCOPY app.txt /app.txt\nRUN cat /app.txt > /seen\n");
    let build = project.build_from_stdin(&["-t", "img:1", "-o", &output, "-f", "-", &dir], dockerfile.as_bytes());
    assert!(build.ok(), "{}", build.stderr());
    let image = Unpacked::from_oci_tar(std::path::Path::new(&oci), "1");
    assert_eq!(image.read("seen"), "from the directory\n");

    // `-`: a compressed tar of the context, its Dockerfile named by -f.
    let tar = context_tar(&[
        ("ci/Dockerfile", &format!("FROM {base}\nCOPY app.txt /app.txt\nRUN cat /app.txt > /seen\n")),
        ("app.txt", "from the tar\n"),
    ]);
    let build = project.build_from_stdin(&["-t", "img:1", "-o", &output, "-f", "ci/Dockerfile", "-"], &tar);
    assert!(build.ok(), "{}", build.stderr());
    let image = Unpacked::from_oci_tar(std::path::Path::new(&oci), "1");
    assert_eq!(image.read("seen"), "from the tar\n");

    // `-` with a Dockerfile alone: an empty context, so a COPY finds nothing.
    let alone = format!("FROM {base}\nRUN echo alone > /seen\n");
    let build = project.build_from_stdin(&["-t", "img:1", "-o", &output, "-"], alone.as_bytes());
    assert!(build.ok(), "{}", build.stderr());
    let image = Unpacked::from_oci_tar(std::path::Path::new(&oci), "1");
    assert_eq!(image.read("seen"), "alone\n");
    let copying = format!("FROM {base}\nCOPY app.txt /\n");
    let build = project.build_from_stdin(&["-o", &output, "-"], copying.as_bytes());
    assert!(!build.ok());
    assert!(build.stderr().contains("app.txt"), "{}", build.stderr());

    let both = project.build_from_stdin(&["-f", "-", "-"], b"");
    assert!(!both.ok());
    assert!(both.stderr().contains("cannot both be read from stdin"), "{}", both.stderr());
}
