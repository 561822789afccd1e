//! HostRunner on its own and the root sandbox: real processes.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use memobuild_proto::reapi::Directory;
use memobuild_worker::{HostRunner, RunSpec, Runner, Sandbox};
use tokio_util::sync::CancellationToken;

fn spec(dir: &std::path::Path, argv: &[&str], timeout: Option<Duration>) -> RunSpec {
    RunSpec {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        root: dir.to_path_buf(),
        working_dir: dir.to_path_buf(),
        network: false,
        as_root: false,
        image: None,
        timeout,
        stdout: dir.join("stdout"),
        stderr: dir.join("stderr"),
    }
}

fn sandboxes() -> Vec<Sandbox> {
    if is_root() {
        vec![Sandbox::None, Sandbox::Namespaces]
    } else {
        vec![Sandbox::None]
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_and_cancel_kill_the_process_group_in_every_sandbox() {
    for sandbox in sandboxes() {
        let runner = HostRunner::with_sandbox(sandbox);
        runner.check().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let marker = unique_marker();
        let script = format!("sleep {marker} & sleep {marker} & echo up; wait");
        let outcome = runner
            .run(spec(dir.path(), &["sh", "-c", &script], Some(Duration::from_millis(500))), CancellationToken::new())
            .await
            .unwrap();
        assert!(outcome.timed_out && !outcome.cancelled, "{sandbox:?}: {outcome:?}");
        assert_eq!(gone(&marker).await, Vec::<String>::new(), "{sandbox:?}");
        assert_eq!(std::fs::read_to_string(dir.path().join("stdout")).unwrap(), "up\n");

        let marker = unique_marker();
        let cancel = CancellationToken::new();
        let trigger = {
            let (cancel, marker) = (cancel.clone(), marker.clone());
            tokio::spawn(async move {
                while processes_with(&marker).is_empty() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                cancel.cancel();
            })
        };
        let script = format!("sleep {marker}");
        let outcome = runner.run(spec(dir.path(), &["sh", "-c", &script], None), cancel).await.unwrap();
        trigger.await.unwrap();
        assert!(outcome.cancelled && !outcome.timed_out, "{sandbox:?}: {outcome:?}");
        assert_eq!(gone(&marker).await, Vec::<String>::new(), "{sandbox:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_processes_die_when_the_command_exits() {
    for sandbox in sandboxes() {
        let runner = HostRunner::with_sandbox(sandbox);
        let dir = tempfile::tempdir().unwrap();
        let marker = unique_marker();
        let script = format!("sleep {marker} & exit 7");
        let outcome =
            runner.run(spec(dir.path(), &["sh", "-c", &script], None), CancellationToken::new()).await.unwrap();
        assert_eq!(outcome.exit_code, 7, "{sandbox:?}");
        assert_eq!(gone(&marker).await, Vec::<String>::new(), "{sandbox:?}");
    }
}

fn interfaces(proc_net_dev: &str) -> BTreeSet<String> {
    proc_net_dev.lines().skip(2).filter_map(|l| l.split(':').next()).map(|s| s.trim().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_root_sandbox_has_no_network_and_a_fresh_pid_namespace() {
    if !is_root() {
        eprintln!("skipped: the namespace sandbox needs root");
        return;
    }
    let fx = Fixture::new().await;
    assert_eq!(HostRunner::new().sandbox(), Sandbox::Namespaces);
    let root = fx.dir(Directory::default()).await;
    let cmd = command(
        &["sh", "-c", "cat /proc/net/dev > net.txt; echo $$ > pid.txt; ps -e --no-headers > ps.txt"],
        &["net.txt", "pid.txt", "ps.txt"],
    );
    let action = fx.action(&cmd, root, 0).await;
    let result = fx.executor.execute(&action, "w", CancellationToken::new()).await.unwrap().result;
    assert_eq!(result.exit_code, 0, "{:?}", fx.read(result.stderr_digest.as_ref().unwrap()).await);
    let mut outputs = Vec::new();
    for file in &result.output_files {
        outputs.push(String::from_utf8(fx.read(file.digest.as_ref().unwrap()).await.to_vec()).unwrap());
    }
    assert_eq!(interfaces(&outputs[0]), BTreeSet::from(["lo".to_string()]));
    let pid: u32 = outputs[1].trim().parse().unwrap();
    assert!(pid <= 2, "the command is (nearly) the first process of its PID namespace, got pid {pid}");
    let ps = &outputs[2];
    assert!(ps.lines().count() <= 3, "only the sandbox's own processes are visible:\n{ps}");

    // Asking for network gives the host's interfaces.
    let cmd = command(&["cat", "/proc/net/dev"], &[]);
    let command_digest = fx.proto(&cmd).await;
    let action = memobuild_proto::reapi::Action {
        command_digest: Some(command_digest.to_proto()),
        input_root_digest: Some(root.to_proto()),
        platform: Some(platform("network", "on")),
        ..Default::default()
    };
    let action = fx.proto(&action).await;
    let result = fx.executor.execute(&action, "w", CancellationToken::new()).await.unwrap().result;
    let seen = String::from_utf8(fx.read(result.stdout_digest.as_ref().unwrap()).await.to_vec()).unwrap();
    let host = std::fs::read_to_string("/proc/net/dev").unwrap();
    assert_eq!(interfaces(&seen), interfaces(&host));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandboxed_command_cannot_change_its_cached_inputs() {
    if !is_root() {
        eprintln!("skipped: the namespace sandbox needs root");
        return;
    }
    let fx = Fixture::new().await;
    let root = fx.dir(Directory { files: vec![fx.file("a.txt", b"hello", false).await], ..Default::default() }).await;
    let attack = "echo x >> a.txt; echo x > a.txt; chmod 666 a.txt; chown 0 a.txt; cat a.txt";
    let action = fx.action(&command(&["sh", "-c", attack], &[]), root, 0).await;
    let result = fx.executor.execute(&action, "w", CancellationToken::new()).await.unwrap().result;
    let stderr = String::from_utf8(fx.read(result.stderr_digest.as_ref().unwrap()).await.to_vec()).unwrap();
    assert_eq!(stderr.matches("Permission denied").count(), 2, "{stderr}");
    assert_eq!(stderr.matches("Operation not permitted").count(), 2, "{stderr}");
    assert_eq!(fx.read(result.stdout_digest.as_ref().unwrap()).await, "hello");

    // Replacing an input (a new inode) is allowed and does not touch the cache.
    let replace = "rm a.txt && echo changed > a.txt && cat a.txt";
    let action = fx.action(&command(&["sh", "-c", replace], &[]), root, 0).await;
    let result = fx.executor.execute(&action, "w", CancellationToken::new()).await.unwrap().result;
    assert_eq!(fx.read(result.stdout_digest.as_ref().unwrap()).await, "changed\n");
    let action = fx.action(&command(&["cat", "a.txt"], &[]), root, 0).await;
    fx.cas.reset();
    let result = fx.executor.execute(&action, "w", CancellationToken::new()).await.unwrap().result;
    assert_eq!(fx.cas.gets.lock().get(&memobuild_proto::Digest::of(F, b"hello")), None, "served from the cache");
    assert_eq!(fx.read(result.stdout_digest.as_ref().unwrap()).await, "hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_run_midway_kills_its_processes() {
    for sandbox in sandboxes() {
        let runner = HostRunner::with_sandbox(sandbox);
        let dir = tempfile::tempdir().unwrap();
        let marker = unique_marker();
        let script = format!("sleep {marker} & sleep {marker}");
        let run = runner.run(spec(dir.path(), &["sh", "-c", &script], None), CancellationToken::new());
        let watch = async {
            while processes_with(&marker).len() < 2 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::select! {
            outcome = run => panic!("the run ended on its own: {outcome:?}"),
            () = watch => {}
        }
        assert_eq!(gone(&marker).await, Vec::<String>::new(), "{sandbox:?}");
    }
}

/// A worker that is PID 1 of its PID namespace (a container's entry point,
/// restarted) runs sandboxed commands: the test runs itself again under
/// `unshare --pid --fork`, where it is PID 1, and runs `true` in the namespace
/// sandbox.
#[test]
fn a_worker_that_is_pid_1_runs_sandboxed_commands() {
    const AS_PID_1: &str = "MEMOBUILD_TEST_AS_PID_1";
    if !is_root() {
        eprintln!("skipped: the namespace sandbox needs root");
        return;
    }
    if std::env::var_os(AS_PID_1).is_some() {
        assert_eq!(std::process::id(), 1);
        // What an earlier PID 1 (the same container, before a restart) left.
        std::fs::create_dir_all(std::env::temp_dir().join("memobuild-sandbox-1-0")).unwrap();
        let own_cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        if let Some(path) = own_cgroup.lines().find_map(|l| l.split_once(":memory:").map(|(_, path)| path)) {
            std::fs::create_dir_all(format!("/sys/fs/cgroup/memory{path}/memobuild-1-0/slot-0")).unwrap();
        }
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        runtime.block_on(HostRunner::with_sandbox(Sandbox::Namespaces).check()).unwrap();
        return;
    }
    let mut child = std::process::Command::new("unshare")
        .args(["--pid", "--fork", "--kill-child"])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", "a_worker_that_is_pid_1_runs_sandboxed_commands", "--nocapture"])
        .env(AS_PID_1, "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("as PID 1, the sandboxed `true` did not finish in 60 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let output = child.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success() && text.contains("1 passed"), "{text}");
}
