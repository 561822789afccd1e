//! The scheduler's rules, driven through its public API. Workers here are
//! the channel ends of the worker protocol; real workers are exercised in
//! the end-to-end tests.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use memobuild_cas::{ActionCache, BlobStore, MemoryStore, SystemClock};
use memobuild_proto::reapi::{
    platform, Action, ActionResult, Command, Directory, ExecuteRequest, ExecutionPolicy, Platform,
};
use memobuild_proto::worker::{scheduler_message, Finished, Hello, SchedulerMessage};
use memobuild_proto::{rpc, Digest, DigestFunction};
use memobuild_scheduler::{
    OperationSnapshot, Scheduler, SchedulerConfig, SchedulerMetrics, SqliteOperationStore, Stage,
};
use prost::Message;
use tokio::sync::{mpsc, watch};
use tonic::Code;

struct Harness {
    cas: Arc<MemoryStore>,
    action_cache: Arc<ActionCache>,
    dir: tempfile::TempDir,
}

impl Harness {
    fn new() -> Self {
        let cas = Arc::new(MemoryStore::new());
        let action_cache = Arc::new(ActionCache::new(Arc::new(MemoryStore::new()), cas.clone()));
        Harness { cas, action_cache, dir: tempfile::tempdir().unwrap() }
    }

    async fn scheduler(&self) -> Arc<Scheduler> {
        let config = SchedulerConfig { lease: Duration::from_millis(300), max_attempts: 2, ..Default::default() };
        let store = Arc::new(SqliteOperationStore::open(&self.dir.path().join("ops.db")).await.unwrap());
        let metrics = SchedulerMetrics::unregistered();
        Scheduler::start(config, self.cas.clone(), self.action_cache.clone(), store, Arc::new(SystemClock), metrics)
            .await
            .unwrap()
    }

    async fn put<M: Message>(&self, message: &M) -> Digest {
        let data = Bytes::from(message.encode_to_vec());
        let digest = Digest::of(DigestFunction::Sha256, &data);
        self.cas.put_bytes(&digest, data).await.unwrap();
        digest
    }

    /// Uploads an action running `argv` with these platform properties.
    async fn action(&self, argv: &[&str], properties: &[(&str, &str)]) -> Digest {
        let command =
            self.put(&Command { arguments: argv.iter().map(|s| s.to_string()).collect(), ..Default::default() }).await;
        let root = self.put(&Directory::default()).await;
        let platform = Platform {
            properties: properties
                .iter()
                .map(|(n, v)| platform::Property { name: n.to_string(), value: v.to_string() })
                .collect(),
        };
        self.put(&Action {
            command_digest: Some(command.to_proto()),
            input_root_digest: Some(root.to_proto()),
            platform: Some(platform),
            ..Default::default()
        })
        .await
    }
}

fn execute(action: Digest, priority: i32, skip_cache_lookup: bool) -> ExecuteRequest {
    ExecuteRequest {
        action_digest: Some(action.to_proto()),
        skip_cache_lookup,
        execution_policy: Some(ExecutionPolicy { priority }),
        ..Default::default()
    }
}

struct FakeWorker {
    name: String,
    messages: mpsc::UnboundedReceiver<SchedulerMessage>,
    session: u64,
}

async fn worker(scheduler: &Scheduler, name: &str, slots: u32, properties: &[(&str, &str)]) -> FakeWorker {
    let (sender, messages) = mpsc::unbounded_channel();
    let hello = Hello {
        name: name.into(),
        slots,
        properties: properties
            .iter()
            .map(|(n, v)| platform::Property { name: n.to_string(), value: v.to_string() })
            .collect(),
        running: Vec::new(),
    };
    let session = scheduler.connect_worker(&hello, sender, None).unwrap();
    FakeWorker { name: name.into(), messages, session }
}

impl FakeWorker {
    async fn next(&mut self) -> scheduler_message::Kind {
        tokio::time::timeout(Duration::from_secs(5), self.messages.recv()).await.unwrap().unwrap().kind.unwrap()
    }

    async fn assigned(&mut self) -> String {
        match self.next().await {
            scheduler_message::Kind::Assign(assign) => assign.operation,
            other => panic!("expected an assignment, got {other:?}"),
        }
    }

    fn idle(&mut self) -> bool {
        self.messages.try_recv().is_err()
    }
}

fn finished(operation: &str, exit_code: i32) -> Finished {
    Finished {
        operation: operation.into(),
        result: Some(ActionResult { exit_code, ..Default::default() }),
        status: Some(rpc::Status::default()),
    }
}

async fn completed(mut receiver: watch::Receiver<OperationSnapshot>) -> OperationSnapshot {
    let done = receiver.wait_for(|s| s.stage == Stage::Completed);
    tokio::time::timeout(Duration::from_secs(5), done).await.unwrap().unwrap().clone()
}

#[tokio::test]
async fn identical_actions_run_once_and_then_hit_the_cache() {
    let h = Harness::new();
    let scheduler = h.scheduler().await;
    let mut w = worker(&scheduler, "w1", 4, &[]).await;
    let action = h.action(&["true"], &[]).await;
    let first = scheduler.execute(execute(action, 0, false), "client-a").await.unwrap();
    let second = scheduler.execute(execute(action, 0, false), "client-b").await.unwrap();
    assert_eq!(first.borrow().name, second.borrow().name);
    let operation = w.assigned().await;
    assert!(w.idle(), "the same action was assigned twice");
    scheduler.finish(&w.name, finished(&operation, 0)).await.unwrap();
    for receiver in [first, second] {
        let done = completed(receiver).await;
        assert_eq!(done.response.unwrap().result.unwrap().exit_code, 0);
    }
    let third = completed(scheduler.execute(execute(action, 0, false), "client-c").await.unwrap()).await;
    assert!(third.response.unwrap().cached_result);
    assert!(w.idle());
}

#[tokio::test]
async fn failed_actions_are_not_cached() {
    let h = Harness::new();
    let scheduler = h.scheduler().await;
    let mut w = worker(&scheduler, "w1", 1, &[]).await;
    let action = h.action(&["false"], &[]).await;
    let receiver = scheduler.execute(execute(action, 0, false), "c").await.unwrap();
    let operation = w.assigned().await;
    scheduler.finish(&w.name, finished(&operation, 3)).await.unwrap();
    let done = completed(receiver).await.response.unwrap();
    assert_eq!(done.result.unwrap().exit_code, 3);
    assert!(done.message.contains("exit code 3"), "{}", done.message);
    scheduler.execute(execute(action, 0, false), "c").await.unwrap();
    w.assigned().await;
}

#[tokio::test]
async fn platform_matching_and_unrunnable_actions() {
    let h = Harness::new();
    let scheduler = h.scheduler().await;
    let mut small = worker(&scheduler, "small", 1, &[("OSFamily", "Linux"), ("cores", "2")]).await;
    let mut big = worker(&scheduler, "big", 1, &[("OSFamily", "Linux"), ("cores", "16")]).await;
    let heavy = h.action(&["make"], &[("OSFamily", "Linux"), ("cores", "8")]).await;
    scheduler.execute(execute(heavy, 0, true), "c").await.unwrap();
    big.assigned().await;
    assert!(small.idle());

    let windows = h.action(&["cl.exe"], &[("OSFamily", "Windows")]).await;
    let e = scheduler.execute(execute(windows, 0, true), "c").await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("OSFamily=Windows") && e.message().contains(&windows.hex()), "{e}");
}

#[tokio::test]
async fn missing_action_is_a_precondition_failure_naming_the_blob() {
    let h = Harness::new();
    let scheduler = h.scheduler().await;
    let absent = Digest::of(DigestFunction::Sha256, b"no such action");
    let e = scheduler.execute(execute(absent, 0, false), "c").await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert_eq!(e.missing_subjects(), vec![absent.subject()]);
}

#[tokio::test]
async fn lower_priority_values_run_first() {
    let h = Harness::new();
    let scheduler = h.scheduler().await;
    let mut names = Vec::new();
    for (i, priority) in [5, -5, 0].into_iter().enumerate() {
        let action = h.action(&["echo", &i.to_string()], &[]).await;
        let receiver = scheduler.execute(execute(action, priority, true), "c").await.unwrap();
        names.push(receiver.borrow().name.clone());
    }
    let mut w = worker(&scheduler, "w", 1, &[]).await;
    let mut order = Vec::new();
    for _ in 0..3 {
        let operation = w.assigned().await;
        scheduler.finish(&w.name, finished(&operation, 0)).await.unwrap();
        order.push(operation);
    }
    assert_eq!(order, vec![names[1].clone(), names[2].clone(), names[0].clone()]);
}

#[tokio::test]
async fn lost_work_moves_to_another_worker_then_fails_after_max_attempts() {
    let h = Harness::new();
    let scheduler = h.scheduler().await;
    let action = h.action(&["sleep", "1"], &[]).await;
    let receiver = scheduler.execute(execute(action, 0, true), "c").await.unwrap();
    let mut first = worker(&scheduler, "first", 1, &[]).await;
    first.assigned().await;
    let mut second = worker(&scheduler, "second", 1, &[]).await;
    scheduler.disconnect_worker(&first.name, first.session);
    let operation = second.assigned().await;
    // The second worker goes silent: its lease expires and, out of attempts, the action fails.
    let done = completed(receiver).await;
    let status = done.response.unwrap().status.unwrap();
    assert_eq!(status.code, Code::Unavailable as i32);
    assert!(status.message.contains("lost 2 times"), "{}", status.message);
    assert!(matches!(second.next().await, scheduler_message::Kind::Cancel(c) if c.operation == operation));
}

#[tokio::test]
async fn cancel_dequeues_or_stops_the_worker() {
    let h = Harness::new();
    let scheduler = h.scheduler().await;
    let mut w = worker(&scheduler, "w", 1, &[]).await;
    let running = scheduler.execute(execute(h.action(&["a"], &[]).await, 0, true), "c").await.unwrap();
    let queued = scheduler.execute(execute(h.action(&["b"], &[]).await, 0, true), "c").await.unwrap();
    let running_name = w.assigned().await;
    let queued_name = queued.borrow().name.clone();
    scheduler.cancel(&queued_name).unwrap();
    scheduler.cancel(&running_name).unwrap();
    assert!(matches!(w.next().await, scheduler_message::Kind::Cancel(c) if c.operation == running_name));
    for receiver in [running, queued] {
        let status = completed(receiver).await.response.unwrap().status.unwrap();
        assert_eq!(status.code, Code::Cancelled as i32);
    }
    assert!(w.idle(), "a cancelled queued action was still dispatched");
}

#[tokio::test]
async fn queued_and_running_work_survives_a_restart() {
    let h = Harness::new();
    let (queued_name, running_name) = {
        let scheduler = h.scheduler().await;
        let mut w = worker(&scheduler, "w", 1, &[]).await;
        let running = scheduler.execute(execute(h.action(&["one"], &[]).await, 0, true), "c").await.unwrap();
        let queued = scheduler.execute(execute(h.action(&["two"], &[]).await, 0, true), "c").await.unwrap();
        w.assigned().await;
        let names = (queued.borrow().name.clone(), running.borrow().name.clone());
        // Let the writer catch up with the assignment before the "crash".
        tokio::time::sleep(Duration::from_millis(100)).await;
        names
    };
    let scheduler = h.scheduler().await;
    assert_eq!(scheduler.watch(&queued_name).unwrap().borrow().stage, Stage::Queued);
    assert_eq!(scheduler.watch(&running_name).unwrap().borrow().stage, Stage::Executing);
    // The worker comes back still running its action; the queued one follows.
    let (sender, messages) = mpsc::unbounded_channel();
    let hello = Hello { name: "w".into(), slots: 2, properties: Vec::new(), running: vec![running_name.clone()] };
    let session = scheduler.connect_worker(&hello, sender, None).unwrap();
    let mut w = FakeWorker { name: "w".into(), messages, session };
    assert_eq!(w.assigned().await, queued_name);
    scheduler.finish("w", finished(&running_name, 0)).await.unwrap();
    scheduler.finish("w", finished(&queued_name, 0)).await.unwrap();
    for name in [&queued_name, &running_name] {
        assert_eq!(completed(scheduler.watch(name).unwrap()).await.response.unwrap().result.unwrap().exit_code, 0);
    }
}
