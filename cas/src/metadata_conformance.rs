//! The checks every [`BlobMetadata`] passes (SQLite and PostgreSQL alike).
#![cfg(test)]
#![allow(clippy::unwrap_used)]

use memobuild_proto::{Digest, DigestFunction};

use crate::blob_metadata::{BlobMetadata, EvictionCandidate, WRITE_GRACE_MS};

fn digest(i: u8) -> Digest {
    Digest::of(
        if i.is_multiple_of(2) { DigestFunction::Sha256 } else { DigestFunction::Blake3 },
        &vec![i; 10 + i as usize],
    )
}

async fn listed(meta: &dyn BlobMetadata, now_ms: i64) -> Vec<Digest> {
    meta.least_recent(10, now_ms).await.unwrap().into_iter().map(|c| c.digest).collect()
}

/// Runs every check against `meta`, which must start empty.
pub async fn run(meta: &dyn BlobMetadata) {
    let (a, b, c, d) = (digest(0), digest(1), digest(2), digest(3));
    let now = 1_000;

    // Recorded is not counted: a declared size is not yet a stored byte.
    // Stored is counted and answers find_stored.
    meta.record(&a, "one", 100).await.unwrap();
    meta.mark_stored(&b, "two", 200).await.unwrap();
    assert_eq!(meta.total_bytes(), b.size());
    assert_eq!(meta.find_stored(&[a, b, c]).await.unwrap(), vec![b]);
    meta.mark_stored(&a, "one", 50).await.unwrap();
    let mut stored = meta.find_stored(&[c, a, b]).await.unwrap();
    stored.sort();
    let mut want = vec![a, b];
    want.sort();
    assert_eq!(stored, want);
    assert_eq!(meta.total_bytes(), a.size() + b.size(), "marking a recorded blob stored counts it once");
    assert_eq!(meta.stored_bytes().await.unwrap(), a.size() + b.size());

    // Access times only move forward; least recent first.
    meta.mark_stored(&c, "one", 300).await.unwrap();
    assert_eq!(listed(meta, now).await, vec![a, b, c]);
    meta.touch(&[(a, 400), (b, 10)]).await.unwrap();
    assert_eq!(listed(meta, now).await, vec![b, c, a]);
    assert_eq!(meta.least_recent(1, now).await.unwrap(), vec![EvictionCandidate { digest: b, last_access: 200 }]);
    assert_eq!(
        meta.stored_bytes_by_shard().await.unwrap(),
        vec![("one".to_string(), a.size() + c.size()), ("two".to_string(), b.size())]
    );

    // Pinned blobs are never offered for eviction, whoever else holds them,
    // until every holder lets go or their pins lapse.
    meta.pin(&[("op-1", &[b, d]), ("op-2", &[b])], now + 10).await.unwrap();
    meta.pin(&[("op-1", &[b, d])], i64::MAX).await.unwrap();
    meta.pin(&[("op-2", &[b])], now + 5).await.unwrap();
    assert_eq!(listed(meta, now).await, vec![c, a]);
    meta.unpin(&["op-1".to_string()]).await.unwrap();
    assert_eq!(listed(meta, now).await, vec![c, a], "op-2 still holds b");
    assert_eq!(listed(meta, now + 10).await, vec![b, c, a], "op-2's pin lapsed (renewing never shortens it)");
    meta.renew(&["op-2".to_string(), "gone".to_string()], now + 100).await.unwrap();
    assert_eq!(listed(meta, now + 50).await, vec![c, a], "a renewed pin holds");
    assert_eq!(meta.drop_expired_pins(now + 50).await.unwrap(), 0);
    assert_eq!(meta.drop_expired_pins(now + 100).await.unwrap(), 1);
    assert_eq!(listed(meta, now).await, vec![b, c, a]);

    // Eviction removes only what is still unpinned and unused since it was
    // listed, and says which removed blobs were counted.
    let candidates = meta.least_recent(10, now).await.unwrap();
    meta.pin(&[("op-3", &[c])], i64::MAX).await.unwrap();
    meta.touch(&[(a, 500)]).await.unwrap();
    meta.record(&d, "two", 1).await.unwrap();
    let mut removed = meta.remove_unpinned(&candidates, now).await.unwrap();
    removed.sort();
    assert_eq!(removed, vec![(b, true)], "c was pinned and a used since");
    assert_eq!(meta.total_bytes(), a.size() + c.size());
    // A recorded blob is a write under way: listed only once it is older
    // than any write takes.
    assert!(!meta.least_recent(10, 1 + WRITE_GRACE_MS).await.unwrap().iter().any(|c| c.digest == d));
    let later = 2 + WRITE_GRACE_MS;
    let d_candidate = meta.least_recent(1, later).await.unwrap();
    assert_eq!(d_candidate, vec![EvictionCandidate { digest: d, last_access: 1 }]);
    assert_eq!(meta.remove_unpinned(&d_candidate, later).await.unwrap(), vec![(d, false)], "recorded, not counted");
    assert_eq!(meta.total_bytes(), a.size() + c.size());
    assert!(meta.remove_unpinned(&d_candidate, later).await.unwrap().is_empty(), "removed once");
    // Until the deletion is done, a write of it waits; a stale mark is ignored.
    assert!(meta.being_deleted(&d, later).await.unwrap());
    assert!(!meta.being_deleted(&d, later + 1).await.unwrap(), "marked at `later`");
    meta.deleted(&[d], 0).await.unwrap();
    assert!(!meta.being_deleted(&d, 0).await.unwrap());
    meta.unpin(&["op-3".to_string(), "op-none".to_string()]).await.unwrap();

    // Removal uncounts once and forgets the stored mark.
    meta.remove(&c).await.unwrap();
    meta.remove(&c).await.unwrap();
    assert_eq!(meta.total_bytes(), a.size());
    assert!(meta.find_stored(&[c]).await.unwrap().is_empty());
    assert!(meta.find_stored(&[]).await.unwrap().is_empty());
    assert_eq!(meta.stored_bytes().await.unwrap(), a.size());

    // A pin of more digests than one SQLite statement binds holds them all.
    let many: Vec<Digest> =
        (0..7_000u32).map(|i| Digest::of(DigestFunction::Sha256, &i.to_le_bytes())).chain([a]).collect();
    meta.pin(&[("op-4", &many)], i64::MAX).await.unwrap();
    assert!(listed(meta, now).await.is_empty(), "a, the last of many, is pinned");
    meta.unpin(&["op-4".to_string()]).await.unwrap();
    assert_eq!(listed(meta, now).await, vec![a]);

    // One evictor at a time.
    let lock = meta.try_lock_eviction().await.unwrap();
    assert!(lock.is_some());
    assert!(meta.try_lock_eviction().await.unwrap().is_none());
}
