//! ActionExecutor end to end: real processes, a MemoryStore CAS.

mod common;

use std::time::Duration;

use common::*;
use memobuild_proto::reapi::{Directory, Tree};
use memobuild_proto::{Digest, Error};
use prost::Message;
use tokio_util::sync::CancellationToken;
use tonic::Code;

const TOOL: &[u8] = b"#!/bin/sh
set -e
tr a-z A-Z < src/a.txt > out/result.txt
mkdir -p out/dir/s1 out/dir/s2
echo same > out/dir/s1/same.txt
echo same > out/dir/s2/same.txt
echo y > out/dir/y.txt
printf '#!/bin/sh\\n' > out/dir/run.sh && chmod +x out/dir/run.sh
ln -s y.txt out/dir/ln
ln -s /etc/passwd out/sym
ln -s /etc out/escape
cat link > out/via-link.txt
test -d empty
";

async fn run(fx: &Fixture, action: Digest) -> Result<memobuild_worker::ExecutionOutcome, Error> {
    fx.executor.execute(&action, "worker-1", CancellationToken::new()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_a_command_over_inputs_and_uploads_its_outputs() {
    let fx = Fixture::new().await;
    let src = fx.dir(Directory { files: vec![fx.file("a.txt", b"hello", false).await], ..Default::default() }).await;
    let empty = fx.dir(Directory::default()).await;
    let root = fx
        .dir(Directory {
            files: vec![fx.file("tool.sh", TOOL, true).await],
            directories: vec![dir_node("empty", empty), dir_node("src", src)],
            symlinks: vec![symlink("link", "src/a.txt")],
            ..Default::default()
        })
        .await;
    let outputs = ["out/result.txt", "out/dir", "out/sym", "out/missing", "out/escape/passwd", "out/via-link.txt"];
    let action = fx.action(&command(&["./tool.sh"], &outputs), root, 0).await;
    let outcome = run(&fx, action).await.unwrap();
    let result = outcome.result;
    let stderr = fx.read(result.stderr_digest.as_ref().unwrap()).await;
    assert_eq!(result.exit_code, 0, "stderr: {}", String::from_utf8_lossy(&stderr));
    assert!(outcome.status.is_none());

    let files: Vec<&str> = result.output_files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(files, ["out/result.txt", "out/via-link.txt"], "missing outputs and escaping parents are absent");
    assert_eq!(fx.read(result.output_files[0].digest.as_ref().unwrap()).await, "HELLO");
    assert_eq!(fx.read(result.output_files[1].digest.as_ref().unwrap()).await, "hello");
    assert!(!result.output_files[0].is_executable);
    assert_eq!(result.output_symlinks.len(), 1);
    assert_eq!(
        (result.output_symlinks[0].path.as_str(), result.output_symlinks[0].target.as_str()),
        ("out/sym", "/etc/passwd")
    );

    assert_eq!(result.output_directories.len(), 1);
    let out_dir = &result.output_directories[0];
    assert_eq!(out_dir.path, "out/dir");
    let tree = Tree::decode(fx.read(out_dir.tree_digest.as_ref().unwrap()).await).unwrap();
    let root_dir = tree.root.unwrap();
    let names = |d: &Directory| {
        (
            d.files.iter().map(|f| f.name.clone()).collect::<Vec<_>>(),
            d.directories.iter().map(|f| f.name.clone()).collect::<Vec<_>>(),
            d.symlinks.iter().map(|s| (s.name.clone(), s.target.clone())).collect::<Vec<_>>(),
        )
    };
    assert_eq!(
        names(&root_dir),
        (vec!["run.sh".into(), "y.txt".into()], vec!["s1".into(), "s2".into()], vec![("ln".into(), "y.txt".into())])
    );
    assert!(root_dir.files[0].is_executable && !root_dir.files[1].is_executable);
    assert_eq!(root_dir.directories[0].digest, root_dir.directories[1].digest);
    assert_eq!(tree.children.len(), 1, "identical subdirectories are stored once");
    let same = &tree.children[0].files[0];
    assert_eq!(fx.read(same.digest.as_ref().unwrap()).await, "same\n");
    assert_eq!(out_dir.root_directory_digest, None, "TREE_ONLY by default");

    let meta = result.execution_metadata.unwrap();
    assert_eq!(meta.worker, "worker-1");
    let stamps = [
        meta.worker_start_timestamp,
        meta.input_fetch_start_timestamp,
        meta.input_fetch_completed_timestamp,
        meta.execution_start_timestamp,
        meta.execution_completed_timestamp,
        meta.output_upload_start_timestamp,
        meta.output_upload_completed_timestamp,
        meta.worker_completed_timestamp,
    ];
    let stamps: Vec<(i64, i32)> = stamps.iter().map(|t| t.map(|t| (t.seconds, t.nanos)).unwrap()).collect();
    assert!(stamps.windows(2).all(|w| w[0] <= w[1]), "{stamps:?}");
    assert!(meta.queued_timestamp.is_none());
    assert!(fx.no_action_dirs_left().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_is_exactly_the_commands_and_working_directory_is_respected() {
    let fx = Fixture::new().await;
    let empty = fx.dir(Directory::default()).await;
    let sub = fx.dir(Directory { directories: vec![dir_node("dir", empty)], ..Default::default() }).await;
    let root = fx.dir(Directory { directories: vec![dir_node("sub", sub)], ..Default::default() }).await;
    let mut cmd = command(&["env"], &[]);
    cmd.environment_variables =
        vec![env("A", "1"), env("EMPTY", ""), env("PATH", "/usr/bin:/bin"), env("Z", "two words")];
    let action = fx.action(&cmd, root, 0).await;
    let result = run(&fx, action).await.unwrap().result;
    assert_eq!(result.exit_code, 0);
    let stdout = fx.read(result.stdout_digest.as_ref().unwrap()).await;
    assert_eq!(String::from_utf8_lossy(&stdout), "A=1\nEMPTY=\nPATH=/usr/bin:/bin\nZ=two words\n");

    let mut cmd = command(&["sh", "-c", "pwd > ../up.txt; pwd > here.txt"], &["here.txt", "../up.txt"]);
    cmd.working_directory = "sub/dir".into();
    let action = fx.action(&cmd, root, 0).await;
    let result = run(&fx, action).await.unwrap().result;
    assert_eq!(result.exit_code, 0);
    let paths: Vec<&str> = result.output_files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, ["here.txt", "../up.txt"]);
    let pwd = fx.read(result.output_files[0].digest.as_ref().unwrap()).await;
    assert!(String::from_utf8_lossy(&pwd).trim_end().ends_with("/root/sub/dir"), "{pwd:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_command_is_a_result_with_its_exit_code_and_stderr() {
    let fx = Fixture::new().await;
    let root = fx.dir(Directory::default()).await;
    let action = fx.action(&command(&["sh", "-c", "echo out; echo oops >&2; exit 3"], &["never"]), root, 0).await;
    let outcome = run(&fx, action).await.unwrap();
    assert!(outcome.status.is_none());
    assert_eq!(outcome.result.exit_code, 3);
    assert_eq!(fx.read(outcome.result.stderr_digest.as_ref().unwrap()).await, "oops\n");
    assert_eq!(fx.read(outcome.result.stdout_digest.as_ref().unwrap()).await, "out\n");
    assert!(outcome.result.output_files.is_empty());

    let action = fx.action(&command(&["no-such-tool-here"], &[]), root, 0).await;
    let e = run(&fx, action).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("no-such-tool-here"), "{e}");
    assert!(fx.no_action_dirs_left().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_kills_the_whole_process_group_and_keeps_partial_output() {
    let fx = Fixture::new().await;
    let root = fx.dir(Directory::default()).await;
    let marker = unique_marker();
    let script = format!("echo started; echo err >&2; sleep {marker} & sleep {marker}; echo never");
    let action = fx.action(&command(&["sh", "-c", &script], &[]), root, 1).await;
    let outcome = run(&fx, action).await.unwrap();
    let status = outcome.status.unwrap();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status}");
    assert_eq!(fx.read(outcome.result.stdout_digest.as_ref().unwrap()).await, "started\n");
    assert_eq!(fx.read(outcome.result.stderr_digest.as_ref().unwrap()).await, "err\n");
    assert_eq!(outcome.result.exit_code, 128 + 9);
    assert_eq!(gone(&marker).await, Vec::<String>::new());
    assert!(fx.no_action_dirs_left().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_the_command_and_cleans_up() {
    let fx = Fixture::new().await;
    let root = fx.dir(Directory::default()).await;
    let marker = unique_marker();
    let script = format!("sleep {marker} & sleep {marker}");
    let action = fx.action(&command(&["sh", "-c", &script], &[]), root, 0).await;
    let cancel = CancellationToken::new();
    let canceller = {
        let (cancel, marker) = (cancel.clone(), marker.clone());
        tokio::spawn(async move {
            while processes_with(&marker).len() < 2 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            cancel.cancel();
        })
    };
    let e = fx.executor.execute(&action, "w", cancel).await.unwrap_err();
    canceller.await.unwrap();
    assert_eq!(e.code(), Code::Cancelled, "{e}");
    assert_eq!(gone(&marker).await, Vec::<String>::new());
    assert!(fx.no_action_dirs_left().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_blobs_are_all_named() {
    let fx = Fixture::new().await;
    let absent_file = Digest::of(F, b"never stored");
    let absent_dir = Digest::of(F, b"no such directory");
    let present = fx.file("ok.txt", b"fine", false).await;
    let root = fx
        .dir(Directory {
            files: vec![
                present,
                memobuild_proto::reapi::FileNode {
                    name: "gone.txt".into(),
                    digest: Some(absent_file.to_proto()),
                    ..Default::default()
                },
            ],
            directories: vec![dir_node("sub", absent_dir)],
            ..Default::default()
        })
        .await;
    let action = fx.action(&command(&["true"], &[]), root, 0).await;
    let e = run(&fx, action).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
    let mut subjects = e.missing_subjects();
    subjects.sort();
    let mut expected = vec![absent_file.subject(), absent_dir.subject()];
    expected.sort();
    assert_eq!(subjects, expected);
    assert!(e.message().contains(&absent_file.to_string()), "{e}");

    let e = run(&fx, Digest::of(F, b"no action")).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
    assert!(fx.no_action_dirs_left().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_names_and_output_paths_are_invalid_arguments() {
    let fx = Fixture::new().await;
    let empty = fx.dir(Directory::default()).await;
    for bad in ["..", ".", "", "a/b", "x\0y"] {
        let inner = fx.dir(Directory { files: vec![fx.file(bad, b"evil", false).await], ..Default::default() }).await;
        let root = fx.dir(Directory { directories: vec![dir_node("pkg", inner)], ..Default::default() }).await;
        let action = fx.action(&command(&["true"], &[]), root, 0).await;
        let e = run(&fx, action).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad:?}: {e}");
        assert!(e.message().contains("input directory pkg"), "{e}");
        assert!(e.message().contains(&format!("{bad:?}")), "{e}");
    }
    let dup = fx
        .dir(Directory {
            directories: vec![dir_node("x", empty)],
            symlinks: vec![symlink("x", "/etc")],
            ..Default::default()
        })
        .await;
    let action = fx.action(&command(&["true"], &[]), dup, 0).await;
    let e = run(&fx, action).await.unwrap_err();
    assert!(e.code() == Code::InvalidArgument && e.message().contains("twice"), "{e}");

    let bad_proto = fx.blob(b"\xff\xff\xff not a directory").await;
    let root = fx.dir(Directory { directories: vec![dir_node("broken", bad_proto)], ..Default::default() }).await;
    let action = fx.action(&command(&["true"], &[]), root, 0).await;
    let e = run(&fx, action).await.unwrap_err();
    assert!(e.code() == Code::InvalidArgument && e.message().contains("input directory broken"), "{e}");

    for bad in ["../escape", "/tmp/abs", "a/../../b"] {
        let action = fx.action(&command(&["true"], &[bad]), empty, 0).await;
        let e = run(&fx, action).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad:?}: {e}");
        assert!(e.message().contains(&format!("{bad:?}")), "{e}");
    }
    let mut cmd = command(&["true"], &[]);
    cmd.working_directory = "../..".into();
    let action = fx.action(&cmd, empty, 0).await;
    assert_eq!(run(&fx, action).await.unwrap_err().code(), Code::InvalidArgument);
    assert!(fx.no_action_dirs_left().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_cache_is_reused_and_bounded() {
    let fx = Fixture::with_cache(4096).await;
    let files = vec![
        fx.file("a", &[b'a'; 1500], false).await,
        fx.file("b", &[b'b'; 1500], false).await,
        fx.file("c", &[b'c'; 1500], true).await,
    ];
    let root = fx.dir(Directory { files, ..Default::default() }).await;
    let action = fx.action(&command(&["sh", "-c", "cat a b c | wc -c"], &[]), root, 0).await;
    let result = run(&fx, action).await.unwrap().result;
    assert_eq!(fx.read(result.stdout_digest.as_ref().unwrap()).await, "4500\n");
    let stats = fx.executor.cache_stats();
    assert!(stats.bytes <= 4096, "the cache stays within its bound: {stats:?}");
    assert!(stats.evictions > 0, "{stats:?}");

    // A cache big enough for everything: the second run fetches no input
    // again, only its Action and Command (an action's own protos are read
    // straight from the CAS, not kept in the cache).
    let fx = Fixture::new().await;
    let files = vec![fx.file("a", b"aaa", false).await, fx.file("x", b"aaa", true).await];
    let root = fx.dir(Directory { files, ..Default::default() }).await;
    let action = fx.action(&command(&["sh", "-c", "test -x x && ! test -x a && cat a x"], &[]), root, 0).await;
    let first = run(&fx, action).await.unwrap().result;
    assert_eq!(first.exit_code, 0);
    assert_eq!(fx.cas.gets.lock().get(&Digest::of(F, b"aaa")), Some(&1), "one fetch for both modes");
    fx.cas.reset();
    let second = run(&fx, action).await.unwrap().result;
    assert_eq!(second.exit_code, 0);
    let gets = fx.cas.gets.lock().clone();
    assert!(!gets.contains_key(&Digest::of(F, b"aaa")) && !gets.contains_key(&root), "second run fetched {gets:?}");
    assert_eq!(fx.cas.total_gets(), 2, "second run fetched {gets:?}");
    assert_eq!(fx.read(second.stdout_digest.as_ref().unwrap()).await, "aaaaaa");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_directories_as_directory_blobs_when_asked() {
    use memobuild_proto::reapi::command::OutputDirectoryFormat;
    let fx = Fixture::new().await;
    let root = fx.dir(Directory::default()).await;
    let mut cmd = command(&["sh", "-c", "mkdir -p d/e && echo x > d/e/f"], &["d"]);
    cmd.output_directory_format = OutputDirectoryFormat::TreeAndDirectory as i32;
    let action = fx.action(&cmd, root, 0).await;
    let result = run(&fx, action).await.unwrap().result;
    let out = &result.output_directories[0];
    let tree = Tree::decode(fx.read(out.tree_digest.as_ref().unwrap()).await).unwrap();
    let root_dir = tree.root.unwrap();
    assert_eq!(out.root_directory_digest, Some(Digest::of(F, &root_dir.encode_to_vec()).to_proto()));
    let stored = Directory::decode(fx.read(out.root_directory_digest.as_ref().unwrap()).await).unwrap();
    assert_eq!(stored, root_dir);
    let child = Directory::decode(fx.read(root_dir.directories[0].digest.as_ref().unwrap()).await).unwrap();
    assert_eq!(child, tree.children[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_reached_through_symlinks_inside_the_root_are_captured() {
    let fx = Fixture::new().await;
    let root = fx.dir(Directory::default()).await;
    // The worker made a/via and b as the outputs' parents; the command
    // replaces them with symlinks.
    let script = "mkdir -p a/real && echo x > a/real/f && chmod +x a/real/f && rmdir a/via b \
        && ln -s real a/via && ln -s ../a/real b";
    let cmd = command(&["sh", "-c", script], &["a/via/f", "b/f", "a/via"]);
    let action = fx.action(&cmd, root, 0).await;
    let result = run(&fx, action).await.unwrap().result;
    let files: Vec<(&str, bool)> = result.output_files.iter().map(|f| (f.path.as_str(), f.is_executable)).collect();
    assert_eq!(files, [("a/via/f", true)], "b leads out of the root (through ..) and is not followed");
    assert_eq!(result.output_symlinks.len(), 1);
    assert_eq!(result.output_symlinks[0].target, "real");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_executions_share_the_cache_and_fetch_each_blob_once() {
    let fx = Fixture::new().await;
    let big = vec![7u8; 3 << 20];
    let shared = fx.dir(Directory { files: vec![fx.file("big.bin", &big, false).await], ..Default::default() }).await;
    let root = fx
        .dir(Directory { directories: vec![dir_node("one", shared), dir_node("two", shared)], ..Default::default() })
        .await;
    let action = fx.action(&command(&["sh", "-c", "cat one/big.bin two/big.bin | wc -c"], &[]), root, 0).await;
    let runs = (0..4).map(|i| {
        let fx = &fx;
        async move { fx.executor.execute(&action, &format!("w{i}"), CancellationToken::new()).await }
    });
    for outcome in futures::future::join_all(runs).await {
        let result = outcome.unwrap().result;
        assert_eq!(fx.read(result.stdout_digest.as_ref().unwrap()).await, format!("{}\n", 6 << 20));
    }
    assert_eq!(fx.cas.gets.lock().get(&Digest::of(F, &big)), Some(&1));
    assert!(fx.no_action_dirs_left().await);
}
