//! Operating a cluster (issue #17): after real remote builds on a cluster
//! of separate processes, every role's `/metrics` passes `promtool check
//! metrics` and holds every series the Grafana dashboard queries; each
//! role's `/healthz` reports its real dependencies (and a stopped CAS);
//! `memobuild status`, `workers` and `builds` show the cluster's state; the
//! live dashboard, in headless Chromium, draws a running build's DAG and
//! its steps' states change as the build goes on, pushed by the server.
#![allow(clippy::unwrap_used)]

#[path = "image_build/harness.rs"]
mod harness;

#[path = "common/process_cluster.rs"]
mod process_cluster;

#[path = "common/headless_chromium.rs"]
mod headless_chromium;

#[path = "common/metrics_table.rs"]
mod metrics_table;

mod remote_build {
    pub mod cli_run;
    pub mod progress_log;
}

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use harness::{fixture, Project};
use headless_chromium::Chromium;
use process_cluster::{ClusterOptions, ProcessCluster};
use remote_build::cli_run::Client;

/// GET `path` from `address`: the status code and the body.
fn http_get(address: &str, path: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let code = response.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, response.split_once("\r\n\r\n").unwrap().1.to_string())
}

/// `promtool check metrics` on `text`: its complaints, if any.
fn promtool_problems(text: &str) -> Option<String> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; scripts/install-deps.sh installs it)");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (!output.status.success() || !said.trim().is_empty()).then_some(said)
}

/// Every `memobuild_...` name the dashboard's queries use.
fn dashboard_metrics() -> BTreeSet<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/memobuild.json");
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut names = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(at) = rest.find("memobuild_") {
                let name: String = rest[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                rest = &rest[at + name.len()..];
                names.insert(name);
            }
        }
    }
    names
}

/// The sample names of a scrape.
fn sample_names(scrape: &str) -> BTreeSet<String> {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect()
}

/// Every family of a scrape has the type and the label names the table in
/// docs/operations.md gives it.
fn check_against_docs(role: &str, scrape: &str) {
    let documented = metrics_table::documented_metrics();
    let mut kinds = std::collections::BTreeMap::new();
    for line in scrape.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let (name, kind) = line.split_once(' ').unwrap();
        let row = documented.get(name).unwrap_or_else(|| panic!("{role} exports {name}, not in docs/operations.md"));
        assert_eq!(row.kind, kind, "{role}: the type of {name}");
        kinds.insert(name.to_string(), kind.to_string());
    }
    for line in scrape.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let sample = line.split([' ', '{']).next().unwrap();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .filter_map(|suffix| sample.strip_suffix(suffix))
            .find(|f| kinds.get(*f).is_some_and(|k| k == "histogram"))
            .unwrap_or(sample);
        let labels: BTreeSet<String> = match line.split_once('{') {
            Some((_, rest)) => rest
                .split('}')
                .next()
                .unwrap()
                .split("\",")
                .filter_map(|pair| pair.split_once('=').map(|(k, _)| k.trim_start_matches(',').to_string()))
                .filter(|k| k != "le")
                .collect(),
            None => BTreeSet::new(),
        };
        assert_eq!(labels, documented[family].labels, "{role}: the labels of {family} ({line})");
    }
}

/// The check named `name` in a `/healthz` body: (status, detail).
fn check(health: &serde_json::Value, name: &str) -> (String, String) {
    let found = health["checks"].as_array().unwrap().iter().find(|c| c["name"] == name);
    let found = found.unwrap_or_else(|| panic!("no check {name} in {health}"));
    (found["status"].as_str().unwrap().to_string(), found["detail"].as_str().unwrap().to_string())
}

fn memobuild(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_memobuild")).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "memobuild {args:?} failed:\n{stderr}");
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn a_cluster_that_ran_builds_reports_metrics_health_and_state() {
    let json_logs = vec![("MEMOBUILD_LOG_FORMAT".to_string(), "json".to_string())];
    let options = ClusterOptions { workers: 1, worker_env: json_logs, ..ClusterOptions::default() };
    let mut cluster = ProcessCluster::start(options);
    let cas_admin = cluster.cas.admin_address();
    let scheduler_admin = cluster.scheduler.admin_address();
    let worker_admin = cluster.workers[0].as_mut().unwrap().admin_address();
    let worker_name = cluster.worker_name(0).unwrap();
    let endpoint = cluster.endpoint();
    let client = Client::new(&endpoint);
    let unique = uuid::Uuid::new_v4().simple().to_string();
    let project = Project::new(&[(
        "Dockerfile",
        &format!("FROM {}\nRUN echo {unique} > /id.txt\nCOPY Dockerfile /copied\n", fixture().base()),
    )]);
    let out = tempfile::tempdir().unwrap();
    let dest = format!("type=oci,dest={}", out.path().join("image.tar").display());
    client.build(project.path(), &["-t", "ops:1", "-o", &dest], &[]).assert_ok();
    // Again: every step a cache hit.
    client.build(project.path(), &["-t", "ops:1", "-o", &dest], &[]).assert_ok();
    let dockerfile = project.path().canonicalize().unwrap().join("Dockerfile").display().to_string();
    let builds: Vec<(String, String, String)> = client.ls().into_iter().filter(|b| b.2 == dockerfile).collect();
    assert_eq!(builds.len(), 2, "{builds:?}");
    assert!(builds.iter().all(|b| b.1 == "succeeded"), "{builds:?}");
    // Newest first: the first build ran the steps.
    let build_id = builds[1].0.clone();

    // The worker's JSON log lines of the steps it ran carry the build and operation.
    let worker_log = cluster.workers[0].as_ref().unwrap().log_text();
    let lines: Vec<serde_json::Value> =
        worker_log.lines().filter(|l| l.contains(&build_id)).map(|l| serde_json::from_str(l).unwrap()).collect();
    let finished: Vec<&serde_json::Value> = lines.iter().filter(|l| l["fields"]["message"] == "finished").collect();
    assert!(!finished.is_empty(), "no worker line names build {build_id}:\n{worker_log}");
    for line in finished {
        assert_eq!(line["span"]["build"], build_id.as_str(), "{line}");
        assert!(line["span"]["operation"].as_str().unwrap().starts_with("operations/"), "{line}");
    }

    let mut all = BTreeSet::new();
    for (role, admin) in [("cas", &cas_admin), ("scheduler", &scheduler_admin), ("worker", &worker_admin)] {
        let (code, scrape) = http_get(admin, "/metrics");
        assert_eq!(code, 200, "{role} /metrics");
        if let Some(problems) = promtool_problems(&scrape) {
            panic!("promtool check metrics on the {role}'s scrape:\n{problems}\n{scrape}");
        }
        let names = sample_names(&scrape);
        assert!(names.iter().all(|n| n.starts_with("memobuild_")), "{role}: {names:?}");
        check_against_docs(role, &scrape);
        all.extend(names);
    }
    let missing: Vec<String> = dashboard_metrics().into_iter().filter(|n| !all.contains(n)).collect();
    assert!(missing.is_empty(), "the dashboard queries series no role exports: {missing:?}\nexported: {all:?}");
    let (_, scheduler_scrape) = http_get(&scheduler_admin, "/metrics");
    let sample = |name: &str| -> f64 {
        let line = scheduler_scrape.lines().find(|l| l.starts_with(name));
        line.unwrap_or_else(|| panic!("no {name} in:\n{scheduler_scrape}")).rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert!(sample("memobuild_cache_lookups_total{kind=\"step\",result=\"hit\"}") >= 2.0, "the second build hit");
    assert!(sample("memobuild_cache_lookups_total{kind=\"step\",result=\"miss\"}") >= 2.0, "the first missed");
    assert_eq!(sample("memobuild_build_duration_seconds_count{state=\"succeeded\"}"), 2.0);
    assert_eq!(sample("memobuild_scheduler_worker_slots{state=\"free\"}"), 2.0);

    for (role, admin, checks) in [
        ("cas", &cas_admin, &["cas", "sqlite (blob metadata)"][..]),
        ("scheduler", &scheduler_admin, &["cas", "sqlite (scheduler state)"][..]),
        ("worker", &worker_admin, &["cas", "scheduler", "containerd"][..]),
    ] {
        let (code, body) = http_get(admin, "/healthz");
        let health: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!((code, health["status"].as_str()), (200, Some("ok")), "{role}: {body}");
        assert_eq!(health["role"], role);
        for name in checks {
            assert_eq!(check(&health, name).0, "ok", "{role}: {body}");
        }
        assert_eq!(http_get(admin, "/readyz").0, 200, "{role} ready");
    }

    let status = memobuild(&["status", "--endpoint", &endpoint]);
    assert!(status.contains("workers      1 (2 slots: 0 busy, 2 free)"), "{status}");
    assert!(status.contains("builds       0 running"), "{status}");
    let workers = memobuild(&["workers", "--endpoint", &endpoint]);
    assert!(workers.lines().nth(1).unwrap().starts_with(&worker_name), "{workers}");
    let listed = memobuild(&["builds", "ls", "--endpoint", &endpoint]);
    assert!(listed.contains(&build_id), "{listed}");
    let run_step = |build: &str| {
        let inspected = memobuild(&["builds", "inspect", build, "--endpoint", &endpoint]);
        let line = inspected.lines().find(|l| l.contains(&format!("RUN echo {unique}")));
        line.unwrap_or_else(|| panic!("no RUN step in:\n{inspected}")).to_string()
    };
    let first = run_step(&build_id);
    assert!(first.contains(" done ") && first.contains(&worker_name), "ran on the worker: {first}");
    let second = run_step(&builds[0].0);
    assert!(second.contains(" cached "), "the second build found the RUN cached: {second}");

    // The CAS goes away: the roles that use it say so.
    cluster.cas.kill();
    for (role, admin) in [("scheduler", &scheduler_admin), ("worker", &worker_admin)] {
        let (code, body) = http_get(admin, "/healthz");
        let health: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!((code, health["status"].as_str()), (503, Some("failing")), "{role}: {body}");
        assert_eq!(check(&health, "cas").0, "failing", "{role}: {body}");
        assert_eq!(http_get(admin, "/readyz").0, 503, "{role} not ready");
    }
}

/// `memobuild_cache_lookups_total` samples of a scrape: (kind, result) -> count.
fn lookups(scrape: &str) -> std::collections::BTreeMap<(String, String), u64> {
    let mut counts = std::collections::BTreeMap::new();
    for line in scrape.lines().filter(|l| l.starts_with("memobuild_cache_lookups_total{")) {
        let (labels, value) = line.rsplit_once(' ').unwrap();
        let label =
            |name: &str| labels.split(&format!("{name}=\"")).nth(1).unwrap().split('"').next().unwrap().to_string();
        counts.insert((label("kind"), label("result")), value.parse().unwrap());
    }
    counts
}

/// A client's action-cache lookups, through the scheduler or straight to
/// the CAS, and an Execute that finds its action cached: summed over the
/// roles, each is counted once, as the kind the client made.
#[test]
fn cache_lookups_are_counted_once_across_roles() {
    use memobuild_cas::{BlobStore, GrpcStore};
    use memobuild_proto::reapi::action_cache_client::ActionCacheClient;
    use memobuild_proto::reapi::execution_client::ExecutionClient;
    use memobuild_proto::reapi::{
        Action, ActionResult, Command as ReCommand, Directory, ExecuteRequest, GetActionResultRequest,
        UpdateActionResultRequest,
    };
    use memobuild_proto::{Digest, DigestFunction};
    use prost::Message;

    let mut cluster = ProcessCluster::start(ClusterOptions { workers: 0, ..ClusterOptions::default() });
    let cas_admin = cluster.cas.admin_address();
    let scheduler_admin = cluster.scheduler.admin_address();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let cas = GrpcStore::connect(&format!("grpc://{}", cluster.cas_address), "").unwrap();
        let put = async |data: Vec<u8>| {
            let digest = Digest::of(DigestFunction::Sha256, &data);
            cas.put_bytes(&digest, bytes::Bytes::from(data)).await.unwrap();
            digest
        };
        let unique = uuid::Uuid::new_v4().simple().to_string();
        let command = ReCommand { arguments: vec!["/bin/echo".into(), unique], ..Default::default() };
        let command = put(command.encode_to_vec()).await;
        let root = put(Directory::default().encode_to_vec()).await;
        let action = Action {
            command_digest: Some(command.to_proto()),
            input_root_digest: Some(root.to_proto()),
            ..Default::default()
        };
        let action = put(action.encode_to_vec()).await;
        let channel =
            |address: &str| tonic::transport::Channel::from_shared(format!("http://{address}")).unwrap().connect_lazy();
        let scheduler = channel(&cluster.scheduler_address);
        let direct = channel(&cluster.cas_address);
        let get = || GetActionResultRequest { action_digest: Some(action.to_proto()), ..Default::default() };
        let missed = ActionCacheClient::new(scheduler.clone()).get_action_result(get()).await.unwrap_err();
        assert_eq!(missed.code(), tonic::Code::NotFound);
        let update = UpdateActionResultRequest {
            action_digest: Some(action.to_proto()),
            action_result: Some(ActionResult::default()),
            ..Default::default()
        };
        ActionCacheClient::new(scheduler.clone()).update_action_result(update).await.unwrap();
        ActionCacheClient::new(scheduler.clone()).get_action_result(get()).await.unwrap();
        ActionCacheClient::new(direct).get_action_result(get()).await.unwrap();
        let execute = ExecuteRequest { action_digest: Some(action.to_proto()), ..Default::default() };
        let mut stream = ExecutionClient::new(scheduler).execute(execute).await.unwrap().into_inner();
        while let Some(operation) = stream.message().await.unwrap() {
            if operation.done {
                break;
            }
        }
    });
    let (_, scheduler_scrape) = http_get(&scheduler_admin, "/metrics");
    let (_, cas_scrape) = http_get(&cas_admin, "/metrics");
    let key = |kind: &str, result: &str| (kind.to_string(), result.to_string());
    let on_scheduler = lookups(&scheduler_scrape);
    let on_cas = lookups(&cas_scrape);
    // The scheduler counts what its clients asked it, not what it asked the CAS.
    assert_eq!(
        on_scheduler,
        [(key("ac", "hit"), 1), (key("ac", "miss"), 1), (key("execute", "hit"), 1)].into_iter().collect(),
        "{scheduler_scrape}"
    );
    // The CAS counts only the lookup a client made of it directly.
    assert_eq!(on_cas, [(key("ac", "hit"), 1)].into_iter().collect(), "{cas_scrape}");
}

#[test]
fn completions_cover_the_commands() {
    for shell in ["bash", "zsh", "fish"] {
        let script = memobuild(&["completions", shell]);
        for command in ["status", "workers", "builds", "inspect", "remote"] {
            assert!(script.contains(command), "{shell} completions lack {command}");
        }
    }
}

/// Every step the dashboard draws: (build, step, state, worker).
const STEPS_JS: &str = r#"[...document.querySelectorAll('[data-build] g.step')].map(g =>
    [g.closest('[data-build]').dataset.build, g.dataset.step, g.dataset.state, g.dataset.worker])"#;

#[test]
fn the_dashboard_shows_a_running_build_as_a_dag_whose_steps_change_live() {
    let mut cluster = ProcessCluster::start(ClusterOptions { workers: 1, ..ClusterOptions::default() });
    let admin = cluster.scheduler.admin_address();
    let worker_name = cluster.worker_name(0).unwrap();
    let mut browser = Chromium::open(&format!("http://{admin}/"), 1400, 900);
    let client = Client::new(&cluster.endpoint());
    let unique = uuid::Uuid::new_v4().simple().to_string();
    let base = fixture().base();
    let project = Project::new(&[(
        "Dockerfile",
        &format!(
            "FROM {base} AS slow\nRUN sleep 4 && echo {unique} > /slow.txt\n\
             FROM {base}\nRUN echo {unique} > /fast.txt\nCOPY --from=slow /slow.txt /slow.txt\n"
        ),
    )]);
    let detached = client.build(project.path(), &["--detach", "-t", "dash:1"], &[]);
    detached.assert_ok();
    let build_id = detached.stdout.trim().to_string();

    // The slow RUN shows as running on the worker, with the DAG around it.
    let slow_step =
        wait_for_step(&mut browser, &build_id, |(_, state, worker)| state == "running" && worker == &worker_name);
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    browser.screenshot(&shot);
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "a real screenshot at {}", shot.display());
    let edges: u64 = serde_json::from_value(
        browser.eval(&format!("document.querySelectorAll('[data-build=\"{build_id}\"] svg line').length")),
    )
    .unwrap();
    assert!(edges >= 3, "the DAG has its edges (steps chained, the slow stage into the COPY): {edges}");
    let updates_then = browser.eval("Number(document.body.dataset.updates)").as_u64().unwrap();

    client.attach(&build_id).assert_ok();
    // Without reloading, the same step turns done, and the build succeeded.
    wait_for_step(&mut browser, &build_id, |(id, state, _)| id == &slow_step && state == "done");
    let build_state = format!("document.querySelector('[data-build=\"{build_id}\"]').dataset.state");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while browser.eval(&build_state) != "succeeded" {
        assert!(std::time::Instant::now() < deadline, "the build never showed as succeeded");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Every node of the plan ended: the FROMs too, which have no events of their own.
    let steps: Vec<(String, String, String, String)> = serde_json::from_value(browser.eval(STEPS_JS)).unwrap();
    let nodes: Vec<(String, String)> =
        steps.into_iter().filter(|s| s.0 == build_id).map(|(_, id, state, _)| (id, state)).collect();
    for from in ["0.0", "1.0"] {
        assert!(nodes.iter().any(|(id, _)| id == from), "FROM node {from} is drawn: {nodes:?}");
    }
    assert!(nodes.iter().all(|(_, state)| state == "done" || state == "cached"), "{nodes:?}");
    let updates_now = browser.eval("Number(document.body.dataset.updates)").as_u64().unwrap();
    assert!(updates_now > updates_then, "the page was updated by pushed events ({updates_then} -> {updates_now})");
    let workers =
        browser.eval(&format!("document.querySelector('#workers tr[data-worker=\"{worker_name}\"]') !== null"));
    assert_eq!(workers, true, "the worker is listed");
}

/// Polls the page until a step of `build` satisfies `found` ((id, state,
/// worker)); returns its id.
fn wait_for_step(browser: &mut Chromium, build: &str, found: impl Fn(&(String, String, String)) -> bool) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let steps: Vec<(String, String, String, String)> = serde_json::from_value(browser.eval(STEPS_JS)).unwrap();
        let steps: Vec<(String, String, String)> =
            steps.into_iter().filter(|s| s.0 == build).map(|(_, id, state, worker)| (id, state, worker)).collect();
        if let Some(step) = steps.iter().find(|s| found(s)) {
            return step.0.clone();
        }
        assert!(std::time::Instant::now() < deadline, "not seen on the dashboard; its steps: {steps:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Benchmark (not a pass/fail test; run with `--ignored --nocapture`): how
/// long a worker's output takes to reach the dashboard in the browser. A
/// RUN step prints the time (from a file it touches, to the nanosecond)
/// every 200 ms; the page notes, per new line, the browser's clock minus
/// that time. Prints the percentiles (BENCHMARKS.md).
#[test]
#[ignore]
fn dashboard_event_latency_benchmark() {
    let mut cluster = ProcessCluster::start(ClusterOptions { workers: 1, ..ClusterOptions::default() });
    let admin = cluster.scheduler.admin_address();
    let mut browser = Chromium::open(&format!("http://{admin}/"), 1200, 800);
    browser.eval(
        r#"(() => {
            window.tickDelays = []; const seen = new Set();
            new EventSource('api/events').addEventListener('state', e => {
                const now = Date.now();
                for (const b of JSON.parse(e.data).builds) for (const s of b.view.steps)
                    for (const line of s.log_tail.split('\n')) {
                        const m = line.match(/^tick (\d+) (\S+) (\S+)/);
                        if (m && !seen.has(m[1])) { seen.add(m[1]); tickDelays.push(now - Date.parse(m[2] + 'T' + m[3].slice(0, 12) + 'Z')); }
                    }
            });
            return true;
        })()"#,
    );
    let client = Client::new(&cluster.endpoint());
    let unique = uuid::Uuid::new_v4().simple().to_string();
    let script = "for i in $(seq 100); do touch /t; echo \"tick $i $(stat -c %y /t)\"; sleep 0.2; done";
    let project =
        Project::new(&[("Dockerfile", &format!("FROM {}\nRUN echo {unique} && {script}\n", fixture().base()))]);
    client.build(project.path(), &["-t", "latency:1"], &[]).assert_ok();
    std::thread::sleep(Duration::from_secs(1));
    let mut delays: Vec<i64> = serde_json::from_value(browser.eval("window.tickDelays")).unwrap();
    delays.sort_unstable();
    assert!(!delays.is_empty(), "no tick reached the page");
    let at = |p: f64| delays[((delays.len() - 1) as f64 * p).round() as usize];
    eprintln!(
        "worker output -> browser: {} ticks, p50 {} ms, p95 {} ms, max {} ms",
        delays.len(),
        at(0.5),
        at(0.95),
        delays[delays.len() - 1]
    );
}
