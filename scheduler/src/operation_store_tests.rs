//! The checks every [`OperationStore`] passes.

use memobuild_proto::reapi::{ActionResult, ExecuteResponse};
use memobuild_proto::{Digest, DigestFunction};

use crate::operation_record::{OperationRecord, Stage};
use crate::operation_store::OperationStore;

pub(crate) fn record(name: &str, queued_at_ms: i64) -> OperationRecord {
    OperationRecord {
        name: name.to_string(),
        instance_name: "ci/main".into(),
        action_digest: Digest::of(DigestFunction::Blake3, name.as_bytes()),
        client: "bazel-1".into(),
        priority: -3,
        skip_cache_lookup: true,
        stage: Stage::Queued,
        attempts: 0,
        worker: None,
        queued_at_ms,
        updated_at_ms: queued_at_ms,
        response: None,
    }
}

pub async fn run(store: &dyn OperationStore) {
    let a = record("operations/a", 10);
    let mut b = record("operations/b", 20);
    store.save(&[b.clone(), a.clone()]).await.unwrap();
    assert_eq!(store.load().await.unwrap(), vec![a.clone(), b.clone()]);

    b.stage = Stage::Completed;
    b.attempts = 2;
    b.worker = Some("host:1".into());
    b.updated_at_ms = 30;
    b.response = Some(ExecuteResponse {
        result: Some(ActionResult { exit_code: 3, ..Default::default() }),
        message: "failed".into(),
        ..Default::default()
    });
    store.save(std::slice::from_ref(&b)).await.unwrap();
    assert_eq!(store.load().await.unwrap(), vec![a.clone(), b.clone()]);

    assert_eq!(store.delete_completed_before(25).await.unwrap(), 0);
    assert_eq!(store.delete_completed_before(31).await.unwrap(), 1);
    assert_eq!(store.load().await.unwrap(), vec![a.clone()]);
    store.delete(std::slice::from_ref(&a.name)).await.unwrap();
    assert!(store.load().await.unwrap().is_empty());

    // More operations at once than one SQLite statement binds.
    let many: Vec<OperationRecord> = (0..2_500).map(|i| record(&format!("operations/m{i}"), 100 + i)).collect();
    store.save(&many).await.unwrap();
    assert_eq!(store.load().await.unwrap(), many);
    let names: Vec<String> = many.into_iter().map(|r| r.name).collect();
    store.delete(&names).await.unwrap();
    assert!(store.load().await.unwrap().is_empty());
}
