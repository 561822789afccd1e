//! `memobuild remote build` end to end (issue #12): a cluster of separate
//! processes (`memobuild cas`, `memobuild scheduler`, two `memobuild
//! worker`s running steps in a real containerd), base images from a real
//! docker-registry, and what a user checks: the progress, the image's
//! files through skopeo and umoci, the digests, the exit code and the
//! error text.
//!
//! Tests that kill a role, grep the state or need idle workers start a
//! cluster of their own; the others share one. The scheduler-restart test
//! runs with SQLite and with PostgreSQL state.
#![allow(clippy::unwrap_used)]

#[path = "image_build/harness.rs"]
mod harness;

#[path = "common/process_cluster.rs"]
mod process_cluster;

#[path = "common/pg_database.rs"]
mod pg_database;

#[path = "common/file_search.rs"]
mod file_search;

mod remote_build {
    pub mod cli_run;
    pub mod progress_log;
}

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use file_search::files_containing;
use harness::{fixture, inspect, sh, Project, Unpacked};
use pg_database::PgDatabase;
use process_cluster::{ClusterOptions, ProcessCluster};
use remote_build::cli_run::{CliOutput, Client};
use remote_build::progress_log::Progress;

/// The cluster of the tests that neither kill its processes nor grep its state.
fn shared_cluster() -> &'static ProcessCluster {
    static CLUSTER: OnceLock<ProcessCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| ProcessCluster::start(ClusterOptions::default()))
}

/// A value no other build shares, so no test finds another's steps cached.
fn unique() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// A context whose Dockerfile is `FROM <busybox base>` plus `rest`.
fn project(rest: &str) -> Project {
    Project::new(&[("Dockerfile", &format!("FROM {}\n{rest}", fixture().base()))])
}

/// The step running `instruction` once the progress shows the worker it runs on.
fn running(instruction: &str) -> impl Fn(&Progress) -> Option<String> + '_ {
    move |progress| progress.step(instruction).and_then(|s| s.workers().into_iter().next())
}

#[test]
fn independent_stages_run_on_both_workers_and_the_oci_output_is_valid() {
    let cluster = ProcessCluster::start(ClusterOptions::default());
    let client = Client::new(&cluster.endpoint());
    let base = fixture().base();
    let project = Project::new(&[(
        "Dockerfile",
        &format!(
            "FROM {base} AS a\n\
             RUN sleep 1 && echo from-a > /a.txt\n\
             FROM {base} AS b\n\
             RUN sleep 1 && echo from-b > /b.txt\n\
             FROM {base}\n\
             COPY --from=a /a.txt /out/a.txt\n\
             COPY --from=b /b.txt /out/b.txt\n"
        ),
    )]);
    let out = tempfile::tempdir().unwrap();
    let tar = out.path().join("image.tar");
    let dest = format!("type=oci,dest={}", tar.display());
    let build = client.build(project.path(), &["-t", "demo:1", "-o", &dest], &[]);
    build.assert_ok();

    let progress = build.progress();
    let on_a = progress.expect_step("RUN sleep 1 && echo from-a").workers();
    let on_b = progress.expect_step("RUN sleep 1 && echo from-b").workers();
    assert_eq!(on_a.len(), 1, "stage a ran once:\n{}", build.stderr);
    assert_eq!(on_b.len(), 1, "stage b ran once:\n{}", build.stderr);
    let mut used = vec![on_a[0].clone(), on_b[0].clone()];
    used.sort();
    let mut workers = cluster.worker_names();
    workers.sort();
    assert_eq!(used, workers, "the two independent stages ran on the two workers:\n{}", build.stderr);
    for worker in progress.workers() {
        assert!(workers.contains(&worker), "a step ran on {worker}, not one of {workers:?}");
    }

    let info = inspect(&format!("oci-archive:{}:1", tar.display()));
    assert_eq!(info["Digest"], build.printed(), "the printed digest is the written image's");
    let image = Unpacked::from_oci_tar(&tar, "1");
    assert_eq!(image.read("/out/a.txt"), "from-a\n");
    assert_eq!(image.read("/out/b.txt"), "from-b\n");
    assert!(image.exists("/bin/busybox"), "the base image's files are there");
}

#[test]
fn push_goes_to_the_registry_with_the_printed_digest() {
    let client = Client::new(&shared_cluster().endpoint());
    let marker = unique();
    let project = project(&format!("RUN echo {marker} > /pushed.txt\n"));
    let tag = format!("{}/remote/app:1", fixture().registry);
    let build = client.build(project.path(), &["--push", "-t", &tag], &[]);
    build.assert_ok();

    let info = inspect(&format!("docker://{tag}"));
    assert_eq!(info["Digest"], build.printed(), "skopeo sees the digest the build printed");
    let layout = tempfile::tempdir().unwrap();
    let dir = layout.path().join("oci");
    sh("skopeo", &["copy", "--src-tls-verify=false", &format!("docker://{tag}"), &format!("oci:{}:1", dir.display())]);
    let bundle = layout.path().join("bundle");
    sh("umoci", &["unpack", "--image", &format!("{}:1", dir.display()), bundle.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(bundle.join("rootfs/pushed.txt")).unwrap(), format!("{marker}\n"));
}

#[test]
fn remote_and_local_builds_give_the_same_digest_and_a_rebuild_is_cached() {
    let client = Client::new(&shared_cluster().endpoint());
    let marker = unique();
    let project = Project::new(&[
        (
            "Dockerfile",
            &format!(
                "FROM {}\nWORKDIR /app\nCOPY app.txt ./\nRUN echo {marker} > built.txt && cat app.txt >> built.txt\n",
                fixture().base()
            ),
        ),
        ("app.txt", "the app\n"),
    ]);
    let out = tempfile::tempdir().unwrap();
    let epoch = [("SOURCE_DATE_EPOCH", "1700000000")];

    let local_tar = out.path().join("local.tar");
    let local =
        project.build_with_env(&["-t", "demo:1", "-o", &format!("type=oci,dest={}", local_tar.display())], &epoch);
    assert!(local.ok(), "{}", local.stderr());
    let local_digest = String::from_utf8_lossy(&local.output.stdout).trim().to_string();
    assert!(local_digest.starts_with("sha256:"), "{local_digest:?}");

    let remote_tar = out.path().join("remote.tar");
    let dest = format!("type=oci,dest={}", remote_tar.display());
    let remote = client.build(project.path(), &["-t", "demo:1", "-o", &dest], &epoch);
    remote.assert_ok();
    assert_eq!(remote.printed(), local_digest, "a remote build gives the local build's image:\n{}", remote.stderr);
    assert_eq!(inspect(&format!("oci-archive:{}:1", remote_tar.display()))["Digest"], local_digest);
    let (ran, _) = remote.progress().summary().unwrap_or_else(|| panic!("no summary:\n{}", remote.stderr));
    assert!(ran > 0, "the cluster had not built this before:\n{}", remote.stderr);
    assert_eq!(Unpacked::from_oci_tar(&remote_tar, "1").read("/app/built.txt"), format!("{marker}\nthe app\n"));

    let again = client.build(project.path(), &["-t", "demo:1", "-o", &dest], &epoch);
    again.assert_ok();
    assert_eq!(again.printed(), local_digest);
    let (ran, cached) = again.progress().summary().unwrap_or_else(|| panic!("no summary:\n{}", again.stderr));
    assert_eq!(ran, 0, "a second remote build runs nothing:\n{}", again.stderr);
    assert!(cached > 0, "{}", again.stderr);
    // As `memobuild build` shows it: one summary line, the build's.
    for build in [&remote, &again] {
        let summaries = build.progress().summary_lines().len();
        assert_eq!(summaries, 1, "one `build finished` line, not {summaries}:\n{}", build.stderr);
    }

    // Without the epoch, a cached step keeps the time its worker recorded:
    // a rebuild a second later gives the same image.
    let plain = client.build(project.path(), &["-t", "demo:1"], &[]);
    plain.assert_ok();
    assert_ne!(plain.printed(), local_digest);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let plain_again = client.build(project.path(), &["-t", "demo:1"], &[]);
    plain_again.assert_ok();
    assert_eq!(plain_again.progress().summary().map(|(ran, _)| ran), Some(0), "{}", plain_again.stderr);
    assert_eq!(plain_again.printed(), plain.printed(), "{}", plain_again.stderr);
}

/// The builds a run submitted: the `build ID` lines of its progress.
fn submitted(stderr: &str) -> usize {
    stderr.lines().filter(|l| l.starts_with("build ") && !l.starts_with("build finished")).count()
}

/// As `memobuild build` scans it, a remote build sends only the context
/// paths its Dockerfile names (and what its wildcards match): a file no
/// REAPI tree can hold elsewhere in the context does not stop it. When the
/// cluster's planning needs more (a symlink out of those paths), the CLI
/// sends the whole context and builds again, and a change behind the
/// symlink is never a stale hit.
#[test]
fn a_remote_build_sends_only_the_context_it_names() {
    use std::os::unix::ffi::OsStrExt;
    let client = Client::new(&shared_cluster().endpoint());
    let marker = unique();
    let dockerfile = |copy: &str| format!("FROM {}\nCOPY {copy} /\nRUN echo {marker} > /marker\n", fixture().base());
    let project =
        Project::new(&[("Dockerfile", &dockerfile("app.txt")), ("app.txt", "app\n"), ("data/real.txt", "one\n")]);
    let junk = project.path().join(std::ffi::OsStr::from_bytes(b"junk-\xff"));
    std::fs::write(&junk, "x").unwrap();
    let out = tempfile::tempdir().unwrap();
    let tar = out.path().join("part.tar");
    let dest = format!("type=oci,dest={}", tar.display());
    let built = client.build(project.path(), &["-t", "part:1", "-o", &dest], &[]);
    built.assert_ok();
    assert_eq!(submitted(&built.stderr), 1, "{}", built.stderr);
    assert_eq!(Unpacked::from_oci_tar(&tar, "1").read("/app.txt"), "app\n");
    // A wildcard source is sent as a pattern: the entries it matches.
    project.write("Dockerfile", &dockerfile("*.txt"));
    let built = client.build(project.path(), &["-t", "part:1", "-o", &dest], &[]);
    built.assert_ok();
    assert_eq!(submitted(&built.stderr), 1, "{}", built.stderr);
    assert_eq!(Unpacked::from_oci_tar(&tar, "1").read("/app.txt"), "app\n");

    std::fs::remove_file(&junk).unwrap();
    std::os::unix::fs::symlink("data/real.txt", project.path().join("link.txt")).unwrap();
    project.write("Dockerfile", &dockerfile("app.txt link.txt"));
    for content in ["one\n", "two\n"] {
        project.write("data/real.txt", content);
        let built = client.build(project.path(), &["-t", "part:1", "-o", &dest], &[]);
        built.assert_ok();
        assert_eq!(submitted(&built.stderr), 2, "sent again with the whole context:\n{}", built.stderr);
        let image = Unpacked::from_oci_tar(&tar, "1");
        assert_eq!((image.read("/app.txt"), image.read("/link.txt")), ("app\n".into(), content.into()));
    }
}

/// A base image's ONBUILD wildcard lists the context root, which the
/// part the CLI sent (its Dockerfile's own `*.txt`) does not cover: the
/// cluster says it read the root (`.`), and the CLI sends the whole
/// context and builds again.
#[test]
fn a_base_images_wildcard_trigger_gets_the_whole_context() {
    let client = Client::new(&shared_cluster().endpoint());
    let tag = format!("{}/remote/onbuild-{}:1", fixture().registry, unique());
    let base = Project::new(&[("Dockerfile", &format!("FROM {}\nONBUILD COPY *.md /docs/\n", fixture().base()))]);
    client.build(base.path(), &["--push", "-t", &tag], &[]).assert_ok();
    let project = Project::new(&[
        ("Dockerfile", &format!("FROM {tag}\nCOPY *.txt /\n")),
        ("app.txt", "app\n"),
        ("README.md", "hi\n"),
    ]);
    let out = tempfile::tempdir().unwrap();
    let tar = out.path().join("child.tar");
    let built =
        client.build(project.path(), &["-t", "child:1", "-o", &format!("type=oci,dest={}", tar.display())], &[]);
    built.assert_ok();
    assert_eq!(submitted(&built.stderr), 2, "sent again with the whole context:\n{}", built.stderr);
    let image = Unpacked::from_oci_tar(&tar, "1");
    assert_eq!((image.read("/app.txt"), image.read("/docs/README.md")), ("app\n".into(), "hi\n".into()));
}

#[test]
fn a_detached_build_can_be_attached_from_the_start() {
    let client = Client::new(&shared_cluster().endpoint());
    let marker = unique();
    let project = project(&format!("RUN echo {marker} > /first.txt\nRUN sleep 2 && echo second > /second.txt\n"));
    let detached = client.build(project.path(), &["--detach", "-t", "app:1"], &[]);
    detached.assert_ok();
    let id = detached.printed();
    assert!(!id.is_empty() && !id.contains(' '), "--detach prints the build id: {:?}", detached.stdout);
    let (listed, state) = client.build_of(project.path());
    assert_eq!(listed, id, "remote ls lists the build");
    assert_eq!(state, "running", "--detach returns while the build goes on");

    let attached = client.attach(&id);
    attached.assert_ok();
    let progress = attached.progress();
    let first = progress.steps.first().map(|s| (s.number, s.name.clone()));
    assert!(
        first.is_some_and(|(number, name)| number == 1 && name.contains(&fixture().base())),
        "the log starts at the beginning, the base image:\n{}",
        attached.stderr
    );
    assert!(progress.expect_step(&format!("RUN echo {marker}")).done(), "{}", attached.stderr);
    assert!(progress.expect_step("RUN sleep 2").done(), "{}", attached.stderr);
    assert!(progress.summary().is_some(), "the result is shown:\n{}", attached.stderr);
    assert!(attached.printed().starts_with("sha256:"), "attach prints the image id: {:?}", attached.stdout);
    assert_eq!(client.build_of(project.path()).1, "succeeded");
}

#[test]
fn a_build_goes_on_when_its_cli_is_killed_and_attach_shows_all_of_it() {
    let client = Client::new(&shared_cluster().endpoint());
    let marker = unique();
    let project = project(&format!("RUN echo {marker} > /first.txt\nRUN sleep 3 && echo slow > /slow.txt\n"));
    let mut cli = client.start_build(project.path(), &["-t", "app:1"], &[]);
    cli.wait_for("the slow step running on a worker", running("RUN sleep 3"));
    let seen = Progress::parse(&cli.stderr_so_far());
    cli.kill();

    let (id, _) = client.build_of(project.path());
    let attached = client.attach(&id);
    attached.assert_ok();
    let progress = attached.progress();
    assert_eq!(
        progress.steps.first().map(|s| &s.name),
        seen.steps.first().map(|s| &s.name),
        "attach replays the log from its first step:\n{}",
        attached.stderr
    );
    assert!(progress.expect_step(&format!("RUN echo {marker}")).done(), "{}", attached.stderr);
    let slow = progress.expect_step("RUN sleep 3");
    assert!(slow.done(), "the build finished without its CLI:\n{}", attached.stderr);
    assert_eq!(slow.workers().len(), 1, "{}", attached.stderr);
    assert!(progress.summary().is_some(), "{}", attached.stderr);
    assert_eq!(client.build_of(project.path()).1, "succeeded");
}

#[test]
fn cancel_stops_a_running_build() {
    let client = Client::new(&shared_cluster().endpoint());
    let marker = unique();
    let project = project(&format!("RUN sleep 60 && echo {marker}\n"));
    let mut cli = client.start_build(project.path(), &["-t", "app:1"], &[]);
    cli.wait_for("the step running on a worker", running("RUN sleep 60"));
    let (id, state) = client.build_of(project.path());
    assert_eq!(state, "running");

    client.cancel(&id).assert_ok();
    // Well before the step's 60 s are up.
    let build = cli.finish_within(Duration::from_secs(30));
    assert!(!build.ok(), "a cancelled build fails:\n{}", build.stderr);
    assert!(build.stderr.to_lowercase().contains("cancel"), "{}", build.stderr);
    let attached = client.attach(&id);
    assert!(!attached.ok(), "attach of a cancelled build fails:\n{}", attached.stderr);
    assert!(attached.stderr.to_lowercase().contains("cancel"), "{}", attached.stderr);
    assert_eq!(client.build_of(project.path()).1, "cancelled");
    // The step's process on the worker (its shell names the marker) is stopped.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !processes_naming(&marker).is_empty() {
        assert!(std::time::Instant::now() < deadline, "the cancelled step still runs: {:?}", processes_naming(&marker));
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Pids of the processes whose command line holds `text`.
fn processes_naming(text: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != std::process::id())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.windows(text.len()).any(|w| w == text.as_bytes()))
        })
        .collect()
}

#[test]
fn a_step_whose_worker_is_killed_reruns_on_the_other_worker() {
    // The scheduler sees the worker's connection drop; no lease has to run
    // out (a short lease has a test of its own, below).
    let mut cluster = ProcessCluster::start(ClusterOptions::default());
    let client = Client::new(&cluster.endpoint());
    let marker = unique();
    let project = project(&format!("RUN sleep 3 && echo survived > /survived.txt && echo {marker} > /m\n"));
    let out = tempfile::tempdir().unwrap();
    let dest = format!("type=local,dest={}", out.path().display());
    let mut cli = client.start_build(project.path(), &["-o", &dest], &[]);
    let victim_name = cli.wait_for("the step running on a worker", running("RUN sleep 3"));
    let victim = cluster.worker_index(&victim_name).unwrap_or_else(|| panic!("{victim_name} is not a worker"));
    let survivor = cluster.worker_name(1 - victim).unwrap();
    cluster.kill_worker(victim);

    let build = cli.finish();
    build.assert_ok();
    let step = build.progress().expect_step("RUN sleep 3").clone();
    assert_eq!(step.workers(), [victim_name, survivor], "the step re-ran on the other worker:\n{}", build.stderr);
    assert!(step.done(), "{}", build.stderr);
    assert_eq!(std::fs::read_to_string(out.path().join("survived.txt")).unwrap(), "survived\n");
    assert_eq!(std::fs::read_to_string(out.path().join("m")).unwrap(), format!("{marker}\n"));
}

#[test]
fn a_step_longer_than_the_lease_keeps_its_healthy_worker() {
    // Workers renew their leases while a step runs, whatever lease the
    // scheduler is given: a step longer than two leases runs once, to the end.
    let cluster = ProcessCluster::start(ClusterOptions { lease_seconds: Some(3), ..ClusterOptions::default() });
    let client = Client::new(&cluster.endpoint());
    let marker = unique();
    let project = project(&format!("RUN sleep 7 && echo {marker} > /done.txt\n"));
    let out = tempfile::tempdir().unwrap();
    let dest = format!("type=local,dest={}", out.path().display());
    let build = client.build(project.path(), &["-o", &dest], &[]);
    build.assert_ok();
    let step = build.progress().expect_step("RUN sleep 7").clone();
    assert_eq!(step.workers().len(), 1, "the step ran once, on one worker:\n{}", build.stderr);
    assert_eq!(std::fs::read_to_string(out.path().join("done.txt")).unwrap(), format!("{marker}\n"));
}

#[test]
fn concurrent_builds_share_one_run_of_an_identical_step() {
    let client = Client::new(&shared_cluster().endpoint());
    let marker = unique();
    // The random stamp differs between two runs of the step.
    let slow = format!("RUN sleep 3 && cat /proc/sys/kernel/random/uuid > /stamp && echo {marker}\n");
    let first = project(&slow);
    let second = project(&format!("{slow}RUN echo second > /second.txt\n"));
    let (out_first, out_second) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let dest_first = format!("type=local,dest={}", out_first.path().display());
    let dest_second = format!("type=local,dest={}", out_second.path().display());

    let mut cli_first = client.start_build(first.path(), &["-o", &dest_first], &[]);
    let worker = cli_first.wait_for("the slow step running on a worker", running("RUN sleep 3"));
    let cli_second = client.start_build(second.path(), &["-o", &dest_second], &[]);
    let (first_build, second_build) = (cli_first.finish(), cli_second.finish());
    first_build.assert_ok();
    second_build.assert_ok();

    let in_first = first_build.progress().expect_step("RUN sleep 3").clone();
    let in_second = second_build.progress().expect_step("RUN sleep 3").clone();
    assert_eq!(in_first.workers(), std::slice::from_ref(&worker), "{}", first_build.stderr);
    assert!(
        in_second.cached() || in_second.workers() == [worker.clone()],
        "the second build waits for the first's run of the step (cached, or the same single run on {worker}):\n{}",
        second_build.stderr
    );
    let stamp = |dir: &Path| std::fs::read_to_string(dir.join("stamp")).unwrap();
    assert_eq!(stamp(out_first.path()), stamp(out_second.path()), "both images hold the output of one run");
    assert_eq!(std::fs::read_to_string(out_second.path().join("second.txt")).unwrap(), "second\n");
}

#[test]
fn a_secret_leaves_no_trace_in_the_cluster() {
    // Debug logs: a value that leaks into any log line shows up.
    let filter = "debug,h2=info,hyper=info,hyper_util=info,tower=info,tonic=info".to_string();
    let cluster = ProcessCluster::start(ClusterOptions { log_filter: Some(filter), ..ClusterOptions::default() });
    let client = Client::new(&cluster.endpoint());
    let value = format!("secret-value-{}", unique());
    let secrets = tempfile::tempdir().unwrap();
    let file = secrets.path().join("tok");
    std::fs::write(&file, &value).unwrap();
    // The control value is only in the step's output: the command splits it.
    let (head, tail) = (unique(), unique());
    let marker = format!("{head}{tail}");
    let project = project(&format!(
        "RUN echo \"{head}\"\"{tail}\" > /marker.txt\n\
         RUN --mount=type=secret,id=tok cat /run/secrets/tok > /dev/null && md5sum /run/secrets/tok | cut -d' ' -f1 > /tok.md5\n"
    ));
    let out = tempfile::tempdir().unwrap();
    let dest = format!("type=local,dest={}", out.path().display());
    let secret = format!("id=tok,src={}", file.display());
    let build = client.build(project.path(), &["--secret", &secret, "-o", &dest], &[]);
    build.assert_ok();
    let want = sh("md5sum", &[file.to_str().unwrap()]);
    assert_eq!(
        std::fs::read_to_string(out.path().join("tok.md5")).unwrap().trim(),
        want.split(' ').next().unwrap(),
        "the step read the secret"
    );

    // The search finds what the build did store (only in a gzip layer in the CAS) ...
    let with_marker = files_containing(&cluster.dir.join("cas"), marker.as_bytes());
    assert!(!with_marker.is_empty(), "the search would find the value in the CAS's layers");
    // ... and the secret nowhere: not in the CAS, the scheduler's database,
    // the workers' state (containerd's included), the roles' logs, the
    // client's state, the output or the CLI's output.
    for root in [cluster.dir.as_path(), client.state.path(), out.path(), project.path()] {
        let found = files_containing(root, value.as_bytes());
        assert!(found.is_empty(), "the secret is in {found:?}");
    }
    assert!(cluster.dir.join("scheduler").read_dir().unwrap().next().is_some(), "the scheduler keeps its state there");
    assert!(!build.stderr.contains(&value) && !build.stdout.contains(&value), "{}", build.stderr);
}

#[test]
fn a_named_image_context_replaces_from_and_paths_are_refused() {
    let client = Client::new(&shared_cluster().endpoint());
    let marker = unique();
    let project =
        Project::new(&[("Dockerfile", &format!("FROM tools\nRUN echo {marker} && cat /etc/lower-file > /copy\n"))]);
    let out = tempfile::tempdir().unwrap();
    let tar = out.path().join("image.tar");
    let dest = format!("type=oci,dest={}", tar.display());
    let image = format!("tools=docker-image://{}", fixture().base());
    let build = client.build(project.path(), &["-t", "named:1", "-o", &dest, "--build-context", &image], &[]);
    build.assert_ok();
    assert_eq!(Unpacked::from_oci_tar(&tar, "1").read("/copy"), "from the base image\n");

    let layout = format!("tools=oci-layout://{}", fixture().layout.display());
    let refused = client.build(project.path(), &["-o", &dest, "--build-context", &layout], &[]);
    assert!(!refused.ok());
    assert!(refused.stderr.contains("docker-image://REF contexts only"), "{}", refused.stderr);

    // Nor does a Dockerfile name a path on the cluster's machines.
    project
        .write("Dockerfile", &format!("FROM oci-layout://{}:busybox\nRUN echo {marker}\n", fixture().layout.display()));
    let refused = client.build(project.path(), &["-o", &dest], &[]);
    assert!(!refused.ok());
    assert!(refused.stderr.contains("a remote build cannot read an OCI layout"), "{}", refused.stderr);
}

#[test]
fn a_failing_step_names_its_line_and_exit_code() {
    let client = Client::new(&shared_cluster().endpoint());
    let marker = unique();
    let project = project(&format!("RUN echo {marker}\nRUN echo boom >&2; exit 3\nRUN echo never\n"));
    let out = tempfile::tempdir().unwrap();
    let tar = out.path().join("image.tar");
    let build = client.build_with_env_endpoint(project.path(), &["-o", &format!("type=oci,dest={}", tar.display())]);
    assert!(!build.ok(), "{}", build.stderr);
    assert!(build.stderr.contains("Dockerfile:3"), "the error names the Dockerfile line:\n{}", build.stderr);
    assert!(build.stderr.contains("exit code: 3"), "{}", build.stderr);
    assert!(build.stderr.contains("boom"), "the step's last output is shown:\n{}", build.stderr);
    assert!(build.progress().step("RUN echo never").is_none(), "{}", build.stderr);
    assert!(!tar.exists(), "a failed build writes no output");
    assert_eq!(client.build_of(project.path()).1, "failed");
}

#[test]
fn a_build_survives_its_scheduler_being_killed_and_restarted_sqlite() {
    scheduler_restart(ClusterOptions::default());
}

#[test]
fn a_build_survives_its_scheduler_being_killed_and_restarted_postgres() {
    let database = PgDatabase::create();
    scheduler_restart(ClusterOptions { postgres: Some(database.url.clone()), ..ClusterOptions::default() });
}

/// The scheduler SIGKILLed while a step runs and started again on its
/// state: the build finishes and `attach` shows it from the start.
fn scheduler_restart(options: ClusterOptions) {
    let mut cluster = ProcessCluster::start(options);
    let client = Client::new(&cluster.endpoint());
    let marker = unique();
    let project = project(&format!("RUN echo {marker} > /first.txt\nRUN sleep 3 && echo slow > /slow.txt\n"));
    let mut cli = client.start_build(project.path(), &["-t", "app:1"], &[]);
    cli.wait_for("the slow step running on a worker", running("RUN sleep 3"));
    let (id, _) = client.build_of(project.path());
    cluster.restart_scheduler();
    drop(cli);

    let attached = client.attach(&id);
    attached.assert_ok();
    let progress = attached.progress();
    assert!(progress.steps.first().is_some_and(|s| s.name.contains(&fixture().base())), "{}", attached.stderr);
    let done = |needle: &str| progress.steps_named(needle).iter().any(|s| s.done() || s.cached());
    assert!(done(&format!("RUN echo {marker}")), "{}", attached.stderr);
    assert!(done("RUN sleep 3"), "the build finished:\n{}", attached.stderr);
    assert!(progress.summary().is_some(), "{}", attached.stderr);
    assert_eq!(client.build_of(project.path()).1, "succeeded");
    // Steps the resumed build started again get numbers of their own.
    let reused = progress.reused_numbers();
    assert!(reused.is_empty(), "step numbers {reused:?} name more than one step:\n{}", attached.stderr);
}

#[test]
fn instances_keep_their_caches_and_builds_apart() {
    let client = Client::new(&shared_cluster().endpoint());
    let marker = unique();
    let project = project(&format!("RUN echo {marker} > /marker\n"));
    let summary = |build: &CliOutput| build.progress().summary().unwrap_or_else(|| panic!("{}", build.stderr));

    let first = client.build(project.path(), &["--instance", "team-a"], &[]);
    first.assert_ok();
    assert!(summary(&first).0 > 0, "{}", first.stderr);
    let again = client.build(project.path(), &["--instance", "team-a"], &[]);
    again.assert_ok();
    assert_eq!(summary(&again).0, 0, "the same instance hits its cache:\n{}", again.stderr);
    let other = client.build(project.path(), &["--instance", "team-b"], &[]);
    other.assert_ok();
    assert!(summary(&other).0 > 0, "another instance does not see team-a's cache:\n{}", other.stderr);

    // team-a's builds are not listed, or found, for team-b.
    let id = first.stderr.lines().find_map(|l| l.strip_prefix("build ")).unwrap().trim().to_string();
    let as_team_b = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_memobuild"))
            .args(["remote"])
            .args(args)
            .args(["--endpoint", &shared_cluster().endpoint(), "--instance", "team-b"])
            .output()
            .unwrap()
    };
    let ls = as_team_b(&["ls"]);
    assert!(ls.status.success());
    assert!(!String::from_utf8_lossy(&ls.stdout).contains(&id), "{ls:?}");
    let attach = as_team_b(&["attach", &id]);
    assert!(!attach.status.success());
    assert!(String::from_utf8_lossy(&attach.stderr).contains("not found"), "{attach:?}");
}
