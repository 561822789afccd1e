//! Escape attempts from a root worker's namespace sandbox, run as REAPI
//! actions through the ActionExecutor with the hardened HostRunner, each
//! checked from the host afterwards (issue #16).

#![allow(clippy::unwrap_used)]

mod common;

use std::io::ErrorKind;
use std::net::TcpListener;

use common::*;
use memobuild_proto::reapi::{Action, Command, Directory, Platform};
use memobuild_worker::{ExecutionOutcome, HostRunner, SandboxConfig};
use tokio_util::sync::CancellationToken;

/// Runs `script` with `sh -c` as an action; `platform` goes on the action.
async fn run(
    fx: &Fixture,
    script: &str,
    platform: Option<Platform>,
    timeout_secs: i64,
) -> (ExecutionOutcome, String, String) {
    let root = fx.dir(Directory::default()).await;
    let cmd: Command = command(&["sh", "-c", script], &[]);
    let command_digest = fx.proto(&cmd).await;
    let action = Action {
        command_digest: Some(command_digest.to_proto()),
        input_root_digest: Some(root.to_proto()),
        platform,
        timeout: (timeout_secs > 0).then_some(memobuild_proto::protobuf::Duration { seconds: timeout_secs, nanos: 0 }),
        ..Default::default()
    };
    let action = fx.proto(&action).await;
    let outcome = fx.executor.execute(&action, "w", CancellationToken::new()).await.unwrap();
    let stdout = fx.read(outcome.result.stdout_digest.as_ref().unwrap()).await;
    let stderr = fx.read(outcome.result.stderr_digest.as_ref().unwrap()).await;
    (outcome, String::from_utf8_lossy(&stdout).into_owned(), String::from_utf8_lossy(&stderr).into_owned())
}

fn as_root() -> Option<Platform> {
    Some(platform("dockerRunAsRoot", "true"))
}

/// A python3 snippet calling `syscall(number, args...)` through libc and
/// printing `rc errno`.
fn syscall(number: i64, args: &str) -> String {
    format!(
        "python3 -c 'import ctypes; l = ctypes.CDLL(None, use_errno=True); \
         print(l.syscall({number}, {args}), ctypes.get_errno())'"
    )
}

macro_rules! root_only {
    () => {
        if !is_root() {
            eprintln!("skipped: the namespace sandbox needs root");
            return;
        }
    };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_files_and_the_state_dir_are_out_of_reach() {
    root_only!();
    let fx = Fixture::new().await;
    let marker = unique_marker();
    let state = fx.dir.path().join("work");
    let escape = format!(
        "ls {state}; ls {state}/cache; cat /etc/shadow; echo x > /etc/escape-{marker}; \
         echo x > /usr/escape-{marker}; echo x > /tmp/escape-{marker}; echo x > {state}/escape; echo done",
        state = state.display()
    );
    for platform in [None, as_root()] {
        let (outcome, stdout, stderr) = run(&fx, &escape, platform.clone(), 0).await;
        assert_eq!(outcome.result.exit_code, 0, "{stderr}");
        for path in [format!("/etc/escape-{marker}"), format!("/usr/escape-{marker}"), format!("/tmp/escape-{marker}")]
        {
            assert!(!exists(std::path::Path::new(&path)), "{platform:?}: {path} was written on the host");
        }
        assert!(!exists(&state.join("escape")), "{platform:?}: the state dir was written");
        assert!(stderr.contains("Read-only file system"), "{platform:?}: {stderr}");
        // The state dir shows only the path down to the input root, never the cache.
        assert_eq!(stdout, "actions\ndone\n", "{platform:?}: {stderr}");
        assert!(stderr.contains(&format!("{}/cache", state.display())), "{platform:?}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_host_loopback_and_no_host_processes() {
    root_only!();
    let fx = Fixture::new().await;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let script = format!(
        "bash -c 'echo hello > /dev/tcp/127.0.0.1/{port}' && echo connected; \
         ps -e --no-headers | wc -l; cat /proc/{host_pid}/cmdline || echo no-host-pid",
        host_pid = std::process::id()
    );
    let (outcome, stdout, stderr) = run(&fx, &script, None, 0).await;
    assert_eq!(outcome.result.exit_code, 0, "{stderr}");
    assert!(!stdout.contains("connected"), "{stdout}");
    assert!(stderr.contains("Connection refused"), "{stderr}");
    assert_eq!(listener.accept().map(|_| ()).unwrap_err().kind(), ErrorKind::WouldBlock, "a connection arrived");
    let lines: Vec<&str> = stdout.lines().collect();
    let processes: usize = lines[0].trim().parse().unwrap();
    assert!(processes <= 4, "only the action's own processes: {stdout}");
    assert_eq!(lines[1], "no-host-pid", "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_capabilities_no_new_privs_and_seccomp_even_as_root() {
    root_only!();
    let fx = Fixture::new().await;
    for platform in [None, as_root()] {
        let (_, stdout, stderr) = run(
            &fx,
            "grep -E '^(Uid|CapEff|CapPrm|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status",
            platform.clone(),
            0,
        )
        .await;
        let field = |name: &str| {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.split_whitespace().next().unwrap_or(""))
                .unwrap_or_else(|| panic!("{name}: {stdout} {stderr}"))
                .to_string()
        };
        for caps in ["CapEff:", "CapPrm:", "CapBnd:", "CapAmb:"] {
            assert_eq!(field(caps), "0000000000000000", "{platform:?}: {stdout}");
        }
        assert_eq!(field("NoNewPrivs:"), "1", "{platform:?}");
        assert_eq!(field("Seccomp:"), "2", "{platform:?}");
        let uid = if platform.is_some() { "0" } else { "65532" };
        assert_eq!(field("Uid:"), uid, "{platform:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mount_modules_and_ptrace_are_refused() {
    root_only!();
    let fx = Fixture::new().await;
    let ptrace = "python3 -c 'import ctypes, os, time\n\
         l = ctypes.CDLL(None, use_errno=True)\n\
         pid = os.fork()\n\
         if pid == 0:\n    time.sleep(5); os._exit(0)\n\
         print(l.ptrace(16, pid, 0, 0), ctypes.get_errno()); os.kill(pid, 9)'";
    let script = format!(
        "mkdir -p /tmp/m; {mount}; {finit}; {init}; {ptrace}; {unshare}",
        mount = syscall(libc::SYS_mount, r#"b"none", b"/tmp/m", b"tmpfs", 0, None"#),
        finit = syscall(libc::SYS_finit_module, r#"0, b"", 0"#),
        init = syscall(libc::SYS_init_module, r#"None, 0, b"""#),
        unshare = syscall(libc::SYS_unshare, &libc::CLONE_NEWUSER.to_string()),
    );
    for platform in [None, as_root()] {
        let (outcome, stdout, stderr) = run(&fx, &script, platform.clone(), 0).await;
        assert_eq!(outcome.result.exit_code, 0, "{platform:?}: {stderr}");
        // Each: -1 with EPERM.
        assert_eq!(stdout, "-1 1\n-1 1\n-1 1\n-1 1\n-1 1\n", "{platform:?}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_bomb_is_held_by_the_pids_limit() {
    root_only!();
    let config = SandboxConfig { pids: Some(64), ..SandboxConfig::default() };
    let fx = Fixture::with_runner(64 << 20, HostRunner::with_config(config)).await;
    let marker = unique_marker();
    // The bomb goes off in a subshell: the top shell forks nothing after
    // it, so no failed fork can end it (dash exits on one), and it waits
    // for its own sleep until the timeout.
    let script = format!("sleep {marker} & (b() {{ sleep {marker} & b | b & }}; b); wait");
    let (outcome, _, stderr) = run(&fx, &script, None, 3).await;
    assert_eq!(outcome.status.as_ref().map(|s| s.code()), Some(tonic::Code::DeadlineExceeded), "{stderr}");
    assert!(stderr.contains("Cannot fork"), "{stderr}");
    assert_eq!(gone(&marker).await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_hog_is_killed_with_a_clear_error() {
    root_only!();
    let config = SandboxConfig { memory_bytes: Some(64 << 20), ..SandboxConfig::default() };
    let fx = Fixture::with_runner(64 << 20, HostRunner::with_config(config)).await;
    let (outcome, _, stderr) = run(&fx, "python3 -c 'x = b\"a\" * (512 << 20)'", None, 0).await;
    assert_eq!(outcome.result.exit_code, 137, "{stderr}");
    let status = outcome.status.expect("an error status");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert!(status.message().contains("memory limit of 64 MiB"), "{status}");

    // The slot is reused and fine afterwards.
    let (outcome, stdout, _) = run(&fx, "echo ok", None, 0).await;
    assert_eq!((outcome.result.exit_code, stdout.as_str()), (0, "ok\n"));
    assert!(outcome.status.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_actions_at_once_each_in_their_own_sandbox() {
    root_only!();
    let fx = Fixture::new().await;
    let runs = (0..16).map(|i| {
        let fx = &fx;
        async move { run(fx, &format!("echo {i} > /tmp/own; sleep 0.1; cat /tmp/own"), None, 0).await }
    });
    let results = futures::future::join_all(runs).await;
    for (i, (outcome, stdout, stderr)) in results.into_iter().enumerate() {
        assert_eq!(outcome.result.exit_code, 0, "{stderr}");
        assert_eq!(stdout, format!("{i}\n"), "each action has its own /tmp");
    }
}

/// Every action starts from one root prepared by the worker: what an action
/// writes anywhere must be gone for the next one, wherever the worker's
/// state dir is (its input roots are mounted below `/tmp`, in the action's
/// own `/tmp`, or in the shared root otherwise).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_leaves_nothing_for_the_next() {
    root_only!();
    let outside_tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    for fx in [Fixture::new().await, Fixture::in_dir(outside_tmp, 64 << 20, HostRunner::new()).await] {
        let marker = unique_marker();
        let state = fx.dir.path().join("work");
        let leave = format!(
            "echo x > /dev/null && echo devices-work; \
             for dir in / /dev /usr /tmp /dev/shm {state} {state}/actions ..; do \
               touch $dir/left-{marker} 2>/dev/null && echo wrote $dir; \
               mkdir $dir/dir-{marker} 2>/dev/null && echo made $dir; done; \
             echo made-here > here; pwd",
            state = state.display()
        );
        let look = format!(
            "ls -a / /dev /tmp /dev/shm {state}/actions | grep -e -{marker} || echo nothing-left",
            state = state.display()
        );
        for platform in [None, as_root()] {
            let (outcome, stdout, stderr) = run(&fx, &leave, platform.clone(), 0).await;
            assert_eq!(outcome.result.exit_code, 0, "{platform:?}: {stderr}");
            assert!(stdout.starts_with("devices-work\n"), "{platform:?}: {stdout}{stderr}");
            let written: Vec<&str> =
                stdout.lines().filter(|l| l.starts_with("wrote") || l.starts_with("made")).collect();
            assert_eq!(
                written,
                ["wrote /tmp", "made /tmp", "wrote /dev/shm", "made /dev/shm"],
                "{platform:?}: {stdout}"
            );
            let input_root = stdout.lines().last().unwrap();
            assert!(input_root.starts_with(&state.display().to_string()), "the input root at its own path: {stdout}");
            let (outcome, stdout, stderr) = run(&fx, &look, platform.clone(), 0).await;
            assert_eq!(outcome.result.exit_code, 0, "{platform:?}: {stderr}");
            assert_eq!(stdout, "nothing-left\n", "{platform:?}: {stderr}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_is_root_only_in_its_own_user_namespace() {
    root_only!();
    let fx = Fixture::new().await;
    let input = fx.file("input.txt", b"from the cache\n", false).await;
    let root = fx.dir(Directory { files: vec![input], ..Default::default() }).await;
    let script = "id -u; cat /proc/self/uid_map /proc/self/gid_map; stat -c %u /usr/bin/env; \
                  echo made > made; stat -c %u made; echo more >> input.txt || echo input-refused; \
                  chown 1 made || echo chown-refused";
    let cmd = command(&["sh", "-c", script], &[]);
    let action = Action {
        command_digest: Some(fx.proto(&cmd).await.to_proto()),
        input_root_digest: Some(root.to_proto()),
        platform: as_root(),
        ..Default::default()
    };
    let action = fx.proto(&action).await;
    let outcome = fx.executor.execute(&action, "w", CancellationToken::new()).await.unwrap();
    let stdout = String::from_utf8_lossy(&fx.read(outcome.result.stdout_digest.as_ref().unwrap()).await).into_owned();
    let lines: Vec<Vec<&str>> = stdout.lines().map(|l| l.split_whitespace().collect()).collect();
    let sandbox = SandboxConfig::default();
    // uid 0 inside, the sandbox's unprivileged uid and gid outside.
    assert_eq!(lines[0], ["0"], "{stdout}");
    assert_eq!(lines[1], ["0", &sandbox.uid.to_string(), "1"], "{stdout}");
    assert_eq!(lines[2], ["0", &sandbox.gid.to_string(), "1"], "{stdout}");
    // The host's root owns nothing in here: its files show as the overflow uid.
    assert_eq!(lines[3], ["65534"], "{stdout}");
    assert_eq!(lines[4], ["0"], "what it makes is its own: {stdout}");
    assert!(stdout.contains("input-refused\n"), "an input file of the cache stays read-only: {stdout}");
    assert!(stdout.contains("chown-refused\n"), "no capabilities in its namespace either: {stdout}");
}
