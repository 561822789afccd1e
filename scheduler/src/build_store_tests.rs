//! The checks every [`BuildStore`] passes.

use tonic::Code;

use crate::build_record::{BuildState, StoredBuild};
use crate::build_store::{BuildStore, MAX_BUILD_PAGE};

fn build(id: &str, instance_name: &str, created_ms: i64) -> StoredBuild {
    StoredBuild {
        id: id.to_string(),
        instance_name: instance_name.to_string(),
        dockerfile_name: "docker/Dockerfile".into(),
        target: "release".into(),
        state: BuildState::Running,
        created_ms,
        finished_ms: None,
        message: String::new(),
        request: format!("request of {id}").into_bytes(),
    }
}

fn event(text: &str) -> Vec<u8> {
    text.as_bytes().to_vec()
}

fn without_request(build: &StoredBuild) -> StoredBuild {
    StoredBuild { request: Vec::new(), ..build.clone() }
}

pub async fn run(store: &dyn BuildStore) {
    let a = build("build-a", "ci", 10);
    let b = build("build-b", "ci", 20);
    let c = build("build-c", "other", 30);
    for build in [&b, &a, &c] {
        store.create(build).await.unwrap();
    }
    let taken = store.create(&build("build-a", "ci", 40)).await.unwrap_err();
    assert_eq!((taken.code(), taken.message()), (Code::AlreadyExists, "build build-a already exists"));
    assert_eq!(store.get("build-a").await.unwrap(), Some(a.clone()));
    assert_eq!(store.get("build-z").await.unwrap(), None);

    // Events: ascending, paged, a repeated sequence number keeps its first event.
    store.append_events("build-a", &[(1, event("queued")), (2, event("started"))]).await.unwrap();
    store.append_events("build-a", &[(2, event("started again")), (3, event("done"))]).await.unwrap();
    store.append_events("build-b", &[(1, event("b queued"))]).await.unwrap();
    store.append_events("build-b", &[]).await.unwrap();
    let all = vec![(1, event("queued")), (2, event("started")), (3, event("done"))];
    assert_eq!(store.events_after("build-a", 0, 10).await.unwrap(), all);
    assert_eq!(store.events_after("build-a", 1, 1).await.unwrap(), vec![(2, event("started"))]);
    assert_eq!(store.events_after("build-a", 3, 10).await.unwrap(), vec![]);
    assert_eq!(store.events_after("build-a", u64::MAX, 10).await.unwrap(), vec![]);
    assert_eq!(store.events_after("build-a", 0, usize::MAX).await.unwrap(), all);
    assert_eq!(store.events_after("build-z", 0, 10).await.unwrap(), vec![]);

    // An append is all or nothing, and names the build it failed for.
    let err = store.append_events("build-a", &[(4, event("lost")), (u64::MAX, event("bad"))]).await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange);
    assert!(err.message().contains("build-a"), "{}", err.message());
    assert_eq!(store.events_after("build-a", 3, 10).await.unwrap(), vec![]);
    let err = store.append_events("build-z", &[(1, event("x"))]).await.unwrap_err();
    assert_eq!((err.code(), err.message()), (Code::NotFound, "build build-z not found"));

    // Listing: per instance, newest first, capped, requests left out.
    assert_eq!(store.list("ci", 10).await.unwrap(), vec![without_request(&b), without_request(&a)]);
    assert_eq!(store.list("ci", 1).await.unwrap(), vec![without_request(&b)]);
    assert_eq!(store.list("ci", usize::MAX).await.unwrap().len(), 2);
    assert_eq!(store.list("other", MAX_BUILD_PAGE).await.unwrap(), vec![without_request(&c)]);
    assert_eq!(store.list("none", 10).await.unwrap(), vec![]);
    assert_eq!(store.unfinished().await.unwrap(), vec![a.clone(), b.clone(), c.clone()]);

    // Finishing: the first outcome stays.
    store.finish("build-a", BuildState::Succeeded, 50, "").await.unwrap();
    store.finish("build-a", BuildState::Cancelled, 60, "cancelled by user").await.unwrap();
    store.finish("build-c", BuildState::Failed, 70, "RUN make: exit code 2").await.unwrap();
    let a_done = StoredBuild { state: BuildState::Succeeded, finished_ms: Some(50), ..a.clone() };
    let c_done = StoredBuild {
        state: BuildState::Failed,
        finished_ms: Some(70),
        message: "RUN make: exit code 2".into(),
        ..c.clone()
    };
    assert_eq!(store.get("build-a").await.unwrap(), Some(a_done.clone()));
    assert_eq!(store.get("build-c").await.unwrap(), Some(c_done));
    assert_eq!(store.unfinished().await.unwrap(), vec![b.clone()]);
    let err = store.finish("build-z", BuildState::Failed, 80, "").await.unwrap_err();
    assert_eq!((err.code(), err.message()), (Code::NotFound, "build build-z not found"));
    let err = store.finish("build-b", BuildState::Running, 80, "").await.unwrap_err();
    assert_eq!((err.code(), err.message()), (Code::InvalidArgument, "build build-b: cannot finish in state running"));

    // Expiry: finished builds and their events; running builds stay.
    assert_eq!(store.delete_finished_before(50).await.unwrap(), 0);
    assert_eq!(store.delete_finished_before(51).await.unwrap(), 1);
    assert_eq!(store.get("build-a").await.unwrap(), None);
    assert_eq!(store.events_after("build-a", 0, 10).await.unwrap(), vec![]);
    assert_eq!(store.events_after("build-b", 0, 10).await.unwrap(), vec![(1, event("b queued"))]);
    assert_eq!(store.delete_finished_before(i64::MAX).await.unwrap(), 1);
    assert_eq!(store.list("ci", 10).await.unwrap(), vec![without_request(&b)]);
    assert_eq!(store.list("other", 10).await.unwrap(), vec![]);

    // An id freed by expiry can be used again.
    store.create(&a).await.unwrap();
    assert_eq!(store.events_after("build-a", 0, 10).await.unwrap(), vec![]);
}
