//! The differential conformance suite (issue #15): every case under
//! `tests/conformance/cases` is built with MemoBuild and compared with what
//! BuildKit (Docker 20.10's) built from it, stored in
//! `tests/conformance/expected/<case>.json` keyed by a hash of the case's
//! files. `scripts/conformance.sh` prints the table; `--refresh` rebuilds
//! the stored results with BuildKit. See tests/conformance/README.md.
#![allow(clippy::unwrap_used)]

#[path = "conformance/case_dir.rs"]
mod case_dir;
#[path = "conformance/image_view.rs"]
mod image_view;
#[path = "conformance/verdict.rs"]
mod verdict;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use case_dir::{load_cases, Builder, Case, Prepared, BASES};
use image_view::{BaseImage, ImageView};
use verdict::{Expected, Outcome, Row, Status};

fn suite_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/conformance")
}

fn base_layout() -> PathBuf {
    let cache = std::env::var("MEMOBUILD_BASE_CACHE").unwrap_or_else(|_| "/var/cache/memobuild/base-images".into());
    Path::new(&cache).join("oci")
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The base images (built by scripts/base-images.sh) in a registry: the one
/// `MEMOBUILD_CONFORMANCE_REGISTRY` names (already pushed), else a private
/// one this test starts and fills.
///
/// What the suite compares an image's first layers with (to take its base
/// away) is read from a copy of the images the builders pull, made once at
/// the start: the shared base image cache may be rebuilt while the suite
/// runs (by another test, or on a fresh machine by a later
/// `base-images.sh`), and a rebuilt busybox has other layer digests, which
/// made the base of every image `none`.
struct Bases {
    registry: String,
    images: Vec<BaseImage>,
    _server: Option<(Child, tempfile::TempDir)>,
    _snapshot: tempfile::TempDir,
}

impl Bases {
    fn start(cases: &[Case]) -> Bases {
        let needed: Vec<(&str, &str)> =
            BASES.iter().copied().filter(|(n, _)| cases.iter().any(|c| c.uses_base(n))).collect();
        let snapshot = tempfile::tempdir().unwrap();
        let layout = snapshot.path().join("oci");
        let copy = |from: &str, to: &str| {
            run("skopeo", &["copy", "-q", "--src-tls-verify=false", "--dest-tls-verify=false", from, to])
        };
        let into_snapshot = |name: &str| format!("oci:{}:{name}", layout.display());
        if let Ok(registry) = std::env::var("MEMOBUILD_CONFORMANCE_REGISTRY") {
            for (name, path) in &needed {
                copy(&format!("docker://{registry}/{path}"), &into_snapshot(name));
            }
            let images = needed.iter().map(|(n, _)| BaseImage::read(n, &layout)).collect();
            return Bases { registry, images, _server: None, _snapshot: snapshot };
        }
        let script = suite_dir().join("../../scripts/base-images.sh");
        for (name, _) in &needed {
            run("bash", &[script.to_str().unwrap(), name]);
            copy(&format!("oci:{}:{name}", base_layout().display()), &into_snapshot(name));
        }
        let images = needed.iter().map(|(n, _)| BaseImage::read(n, &layout)).collect();
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let config = dir.path().join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nstorage: {{filesystem: {{rootdirectory: {}}}}}\nhttp: {{addr: 127.0.0.1:{port}}}\nlog: {{level: warn}}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .args(["serve", config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry (scripts/install-deps.sh)");
        let registry = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&registry).is_err() {
            assert!(Instant::now() < deadline, "registry at {registry} did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        for (name, path) in &needed {
            copy(&into_snapshot(name), &format!("docker://{registry}/{path}"));
        }
        Bases { registry, images, _server: Some((child, dir)), _snapshot: snapshot }
    }
}

impl Drop for Bases {
    fn drop(&mut self) {
        if let Some((child, _)) = &mut self._server {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Cases to run: all, or those `MEMOBUILD_CONFORMANCE_CASES` names
/// (comma-separated names or name prefixes).
fn selected(cases: Vec<Case>) -> Vec<Case> {
    match std::env::var("MEMOBUILD_CONFORMANCE_CASES") {
        Ok(list) if !list.trim().is_empty() => {
            let wanted: Vec<&str> = list.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
            cases.into_iter().filter(|c| wanted.iter().any(|w| c.name.starts_with(w))).collect()
        }
        _ => cases,
    }
}

/// Runs `work` over `cases` on `threads` threads, keeping the case order.
fn parallel<T: Send>(cases: &[Case], threads: usize, work: impl Fn(usize, &Case) -> T + Sync) -> Vec<T> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(usize, T)>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for thread in 0..threads.max(1) {
            let (next, results, work) = (&next, &results, &work);
            scope.spawn(move || loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(case) = cases.get(i) else { break };
                let result = work(thread, case);
                results.lock().unwrap().push((i, result));
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, r)| r).collect()
}

/// What one builder made of a case.
struct Built {
    outcome: Outcome,
    log: String,
}

/// `memobuild build` of a prepared case into an OCI layout at `dest`.
fn memobuild_command(case: &Case, prepared: &Prepared, state: &Path, dest: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_memobuild"));
    command
        .args(["build", "--progress", "plain", "--state-dir"])
        .arg(state)
        .arg("-f")
        .arg(&prepared.dockerfile)
        .arg("--output")
        .arg(format!("type=oci,dest={},tar=false", dest.display()))
        .args(case.flags(prepared))
        .arg(&prepared.context)
        .env_remove("SOURCE_DATE_EPOCH");
    command
}

/// `docker build` (BuildKit) of a prepared case, tagged `tag`.
fn docker_command(case: &Case, prepared: &Prepared, docker_host: &str, tag: &str) -> Command {
    let mut command = docker(docker_host);
    command
        .args(["build", "--progress", "plain", "--network", "host", "-t", tag, "-f"])
        .arg(&prepared.dockerfile)
        .args(case.flags(prepared))
        .arg(&prepared.context);
    command
}

/// Debian's docker CLI (20.10: BuildKit without the buildx plugin).
fn docker(docker_host: &str) -> Command {
    let mut command = Command::new("/usr/bin/docker");
    command.env("DOCKER_HOST", docker_host).env("DOCKER_BUILDKIT", "1");
    command
}

/// `extra`: flags of MemoBuild's own, added to the case's.
fn build_with_memobuild(case: &Case, bases: &Bases, state: &Path, extra: &[&str]) -> Built {
    let prepared = case.prepare(Builder::MemoBuild, &bases.registry);
    let out_dir = tempfile::tempdir().unwrap();
    let dest = out_dir.path().join("image");
    let output = memobuild_command(case, &prepared, state, &dest).args(extra).output().unwrap();
    let log = String::from_utf8_lossy(&output.stderr).to_string();
    let outcome = if output.status.success() {
        Outcome::Built(ImageView::read(&dest, &bases.images))
    } else {
        Outcome::Failed { error: verdict::last_lines(&log, 6) }
    };
    Built { outcome, log }
}

fn build_with_buildkit(case: &Case, bases: &Bases, docker_host: &str) -> Built {
    let prepared = case.prepare(Builder::BuildKit, &bases.registry);
    let tag = format!("conformance/{}:reference", case.name);
    let output = docker_command(case, &prepared, docker_host, &tag)
        .output()
        .unwrap_or_else(|e| panic!("/usr/bin/docker (Debian's docker.io): {e}"));
    let log = String::from_utf8_lossy(&output.stderr).to_string();
    if !output.status.success() {
        return Built { outcome: Outcome::Failed { error: verdict::last_lines(&log, 6) }, log };
    }
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("image.tar");
    let saved = docker(docker_host).args(["save", "-o", archive.to_str().unwrap(), &tag]).output().unwrap();
    assert!(saved.status.success(), "docker save {tag}: {}", String::from_utf8_lossy(&saved.stderr));
    let unpacked = dir.path().join("image");
    std::fs::create_dir_all(&unpacked).unwrap();
    run("tar", &["-xf", archive.to_str().unwrap(), "-C", unpacked.to_str().unwrap()]);
    let _ = docker(docker_host).args(["rmi", "-f", &tag]).output();
    Built { outcome: Outcome::Built(ImageView::read(&unpacked, &bases.images)), log }
}

/// Compares MemoBuild with BuildKit's stored results; prints the table and
/// writes it to `$CARGO_TARGET_TMPDIR/conformance-table.txt`.
#[test]
fn memobuild_builds_what_buildkit_builds() {
    conform(&[], "conformance-table.txt");
}

/// The same with every RUN step in a user namespace: the images are still
/// BuildKit's.
#[test]
fn memobuild_builds_what_buildkit_builds_with_userns_remap() {
    conform(&["--userns-remap", "100000"], "conformance-table-userns.txt");
}

/// Builds the selected cases with MemoBuild (`extra` added to their flags)
/// and asserts each is what BuildKit built; the table goes to `table_file`
/// under `$CARGO_TARGET_TMPDIR`.
fn conform(extra: &[&str], table_file: &str) {
    let all = load_cases(&suite_dir().join("cases"));
    assert!(all.len() >= 80, "the corpus has {} cases, fewer than 80", all.len());
    let cases = selected(all);
    let bases = Bases::start(&cases);
    let states: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let started = Instant::now();
    let rows = parallel(&cases, states.len(), |thread, case| {
        let expected = match Expected::load(&suite_dir(), case) {
            Ok(expected) => expected,
            Err(stale) => return Row::new(case, Status::Stale, vec![stale]),
        };
        let built = build_with_memobuild(case, &bases, states[thread].path(), extra);
        verdict::judge(case, &expected, &built.outcome, &built.log)
    });
    let table = verdict::table(&rows, started.elapsed());
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(table_file);
    std::fs::write(&path, &table).unwrap();
    eprintln!("{table}\n(table written to {})", path.display());
    let failing: Vec<String> = rows.iter().filter(|r| r.fails_suite()).map(|r| r.summary()).collect();
    assert!(failing.is_empty(), "{} case(s) differ from BuildKit {extra:?}:\n{}", failing.len(), failing.join("\n"));
}

/// `scripts/conformance.sh --refresh`: builds the selected cases with
/// BuildKit on the dockerd `MEMOBUILD_CONFORMANCE_DOCKER_HOST` names and
/// stores the results.
#[test]
#[ignore = "needs a private dockerd: run scripts/conformance.sh --refresh"]
fn refresh_buildkit_results() {
    let docker_host = std::env::var("MEMOBUILD_CONFORMANCE_DOCKER_HOST")
        .expect("MEMOBUILD_CONFORMANCE_DOCKER_HOST: run this through scripts/conformance.sh --refresh");
    let cases = selected(load_cases(&suite_dir().join("cases")));
    let bases = Bases::start(&cases);
    let version = Command::new("/usr/bin/docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .env("DOCKER_HOST", &docker_host)
        .output()
        .unwrap();
    let builder = format!("docker {} (BuildKit)", String::from_utf8_lossy(&version.stdout).trim());
    let started = Instant::now();
    let problems = parallel(&cases, 3, |_, case| {
        let built = build_with_buildkit(case, &bases, &docker_host);
        let problem = match (&built.outcome, case.options.fails) {
            (Outcome::Failed { .. }, false) => Some(format!("{}: BuildKit failed:\n{}", case.name, built.log)),
            (Outcome::Built(_), true) => Some(format!("{}: BuildKit built a case that must fail", case.name)),
            _ => None,
        };
        Expected { inputs: case.input_hash(), builder: builder.clone(), result: built.outcome }
            .store(&suite_dir(), &case.name);
        eprintln!("refreshed {}", case.name);
        problem
    });
    eprintln!("{} case(s) refreshed in {:.1} s", cases.len(), started.elapsed().as_secs_f64());
    let problems: Vec<String> = problems.into_iter().flatten().collect();
    assert!(problems.is_empty(), "stored, but BuildKit disagrees with case.toml:\n{}", problems.join("\n\n"));
}

/// `scripts/conformance.sh --bench`: the whole corpus built one case after
/// the other by MemoBuild and by BuildKit, cold (empty state dir; a dockerd
/// with no images and no build cache) and no-op (the same builds again),
/// alternating the builders round by round. Prints each round and the medians.
#[test]
#[ignore = "needs a private dockerd: run scripts/conformance.sh --bench"]
fn bench_corpus() {
    let docker_host = std::env::var("MEMOBUILD_CONFORMANCE_DOCKER_HOST")
        .expect("MEMOBUILD_CONFORMANCE_DOCKER_HOST: run this through scripts/conformance.sh --bench");
    let rounds: usize =
        std::env::var("MEMOBUILD_CONFORMANCE_BENCH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(3);
    let cases = selected(load_cases(&suite_dir().join("cases")));
    let bases = Bases::start(&cases);
    let memobuild: Vec<Prepared> = cases.iter().map(|c| c.prepare(Builder::MemoBuild, &bases.registry)).collect();
    let buildkit: Vec<Prepared> = cases.iter().map(|c| c.prepare(Builder::BuildKit, &bases.registry)).collect();
    let time = |run: &dyn Fn(usize)| {
        let started = Instant::now();
        (0..cases.len()).for_each(run);
        started.elapsed().as_secs_f64()
    };
    let mut samples: [Vec<f64>; 4] = Default::default();
    for round in 0..rounds {
        let state = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        let memobuild_pass = |i: usize| {
            let dest = out.path().join(&cases[i].name);
            let _ = memobuild_command(&cases[i], &memobuild[i], state.path(), &dest).output().unwrap();
        };
        let m_cold = time(&memobuild_pass);
        let m_noop = time(&memobuild_pass);
        let pruned = docker(&docker_host).args(["system", "prune", "-a", "-f"]).output().unwrap();
        assert!(pruned.status.success(), "docker system prune: {}", String::from_utf8_lossy(&pruned.stderr));
        let _ = docker(&docker_host).args(["builder", "prune", "-a", "-f"]).output().unwrap();
        let buildkit_pass = |i: usize| {
            let tag = format!("conformance/{}:bench", cases[i].name);
            let _ = docker_command(&cases[i], &buildkit[i], &docker_host, &tag).output().unwrap();
        };
        let b_cold = time(&buildkit_pass);
        let b_noop = time(&buildkit_pass);
        eprintln!(
            "round {}: MemoBuild cold {m_cold:.1} s, no-op {m_noop:.1} s; BuildKit cold {b_cold:.1} s, no-op {b_noop:.1} s",
            round + 1
        );
        for (i, v) in [m_cold, m_noop, b_cold, b_noop].into_iter().enumerate() {
            samples[i].push(v);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let [mut mc, mut mn, mut bc, mut bn] = samples;
    eprintln!(
        "{} cases, median of {rounds}: MemoBuild cold {:.1} s, no-op {:.1} s; BuildKit cold {:.1} s, no-op {:.1} s",
        cases.len(),
        median(&mut mc),
        median(&mut mn),
        median(&mut bc),
        median(&mut bn)
    );
}
