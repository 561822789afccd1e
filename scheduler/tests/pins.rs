//! Pins taken by the scheduler: what a queued or running action needs is
//! never evicted, and is let go when the action completes.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use memobuild_cas::{
    ActionCache, BlobMetadata, BlobPins, BlobStore, Clock, EvictingStore, ManualClock, MemoryStore, PinLeases,
    SqliteMetadata, SystemClock,
};
use memobuild_proto::reapi::{Action, ActionResult, Command, Directory, DirectoryNode, ExecuteRequest, FileNode};
use memobuild_proto::worker::{scheduler_message, Finished, Hello};
use memobuild_proto::{rpc, Digest, DigestFunction};
use memobuild_scheduler::{Scheduler, SchedulerConfig, SchedulerMetrics, SqliteOperationStore, Stage};
use prost::Message;

async fn put(cas: &dyn BlobStore, data: Bytes) -> Digest {
    let digest = Digest::of(DigestFunction::Sha256, &data);
    cas.put_bytes(&digest, data).await.unwrap();
    digest
}

async fn put_message<M: Message>(cas: &dyn BlobStore, message: &M) -> Digest {
    put(cas, Bytes::from(message.encode_to_vec())).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_of_a_queued_or_running_action_are_never_evicted_and_are_let_go_at_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let metadata = Arc::new(SqliteMetadata::open(&dir.path().join("cas.db")).await.unwrap());
    let clock = Arc::new(ManualClock::new(1_000));
    let cas = Arc::new(EvictingStore::new(Arc::new(MemoryStore::new()), metadata.clone(), clock.clone(), 5_000, 3_000));

    // The action's inputs go first: they are the least recently used.
    let file = put(&*cas, Bytes::from(vec![7u8; 1000])).await;
    let sub = Directory {
        files: vec![FileNode { name: "input.bin".into(), digest: Some(file.to_proto()), ..Default::default() }],
        ..Default::default()
    };
    let sub_digest = put_message(&*cas, &sub).await;
    let root = Directory {
        directories: vec![DirectoryNode { name: "src".into(), digest: Some(sub_digest.to_proto()) }],
        ..Default::default()
    };
    let root_digest = put_message(&*cas, &root).await;
    let command = put_message(&*cas, &Command { arguments: vec!["true".into()], ..Default::default() }).await;
    let action = put_message(
        &*cas,
        &Action {
            command_digest: Some(command.to_proto()),
            input_root_digest: Some(root_digest.to_proto()),
            ..Default::default()
        },
    )
    .await;
    let inputs = vec![file, sub_digest, root_digest, command, action];

    let pins =
        PinLeases::start(vec![metadata.clone() as Arc<dyn BlobPins>], Arc::new(SystemClock), Duration::from_secs(600));
    let config = SchedulerConfig { pins: Some(pins.clone()), ..Default::default() };
    let store = Arc::new(SqliteOperationStore::open(&dir.path().join("ops.db")).await.unwrap());
    let action_cache = Arc::new(ActionCache::new(Arc::new(MemoryStore::new()), cas.clone()));
    let metrics = SchedulerMetrics::unregistered();
    let scheduler =
        Scheduler::start(config, cas.clone(), action_cache, store, Arc::new(SystemClock), metrics).await.unwrap();
    let request = ExecuteRequest { action_digest: Some(action.to_proto()), ..Default::default() };
    let mut updates = scheduler.execute(request, "client").await.unwrap();
    assert_eq!(updates.borrow().stage, Stage::Queued, "no worker yet: the action waits");

    // Newer blobs push the store past its high watermark, twice over.
    let mut fillers = Vec::new();
    for i in 0..8u8 {
        clock.advance(10);
        fillers.push(put(&*cas, Bytes::from(vec![100 + i; 1000])).await);
    }
    assert!(cas.find_missing(&fillers).await.unwrap().len() >= 3, "the store evicted");
    assert_eq!(cas.find_missing(&inputs).await.unwrap(), vec![], "an input of a queued action was evicted");

    // A worker runs it; still pinned while it runs.
    let (sender, mut messages) = tokio::sync::mpsc::unbounded_channel();
    let hello = Hello { name: "w1".into(), slots: 1, properties: Vec::new(), running: Vec::new() };
    scheduler.connect_worker(&hello, sender, None).unwrap();
    let message = tokio::time::timeout(Duration::from_secs(5), messages.recv()).await.unwrap().unwrap();
    let Some(scheduler_message::Kind::Assign(assign)) = message.kind else { panic!("expected an assignment") };
    for i in 8..12u8 {
        clock.advance(10);
        fillers.push(put(&*cas, Bytes::from(vec![100 + i; 1000])).await);
    }
    assert_eq!(cas.find_missing(&inputs).await.unwrap(), vec![], "an input of a running action was evicted");

    let finished = Finished {
        operation: assign.operation.clone(),
        result: Some(ActionResult { exit_code: 0, ..Default::default() }),
        status: Some(rpc::Status::default()),
    };
    scheduler.finish("w1", finished).await.unwrap();
    updates.wait_for(|s| s.stage == Stage::Completed).await.unwrap();

    // Released (in the background): the inputs are offered for eviction again.
    let mut offered = false;
    for _ in 0..100 {
        let candidates = metadata.least_recent(100, clock.now_ms()).await.unwrap();
        if candidates.iter().any(|c| c.digest == file) {
            offered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(offered, "the pins of a completed action were not released");
    assert!(!pins.holds(&assign.operation));
    for i in 12..16u8 {
        clock.advance(10);
        fillers.push(put(&*cas, Bytes::from(vec![100 + i; 1000])).await);
    }
    assert_eq!(cas.find_missing(&[file]).await.unwrap(), vec![file], "the released input, least recently used, went");
}
