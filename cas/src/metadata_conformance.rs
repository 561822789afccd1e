//! The checks every [`BlobMetadata`] passes (SQLite and PostgreSQL alike).
#![cfg(test)]
#![allow(clippy::unwrap_used)]

use memobuild_proto::{Digest, DigestFunction};

use crate::blob_metadata::BlobMetadata;

fn digest(i: u8) -> Digest {
    Digest::of(
        if i.is_multiple_of(2) { DigestFunction::Sha256 } else { DigestFunction::Blake3 },
        &vec![i; 10 + i as usize],
    )
}

/// Runs every check against `meta`, which must start empty.
pub async fn run(meta: &dyn BlobMetadata) {
    let (a, b, c, d) = (digest(0), digest(1), digest(2), digest(3));

    // Recorded is not counted: a declared size is not yet a stored byte.
    // Stored is counted and answers find_stored.
    meta.record(&a, 100).await.unwrap();
    meta.mark_stored(&b, 200).await.unwrap();
    assert_eq!(meta.total_bytes(), b.size());
    assert_eq!(meta.find_stored(&[a, b, c]).await.unwrap(), vec![b]);
    meta.mark_stored(&a, 50).await.unwrap();
    let mut stored = meta.find_stored(&[c, a, b]).await.unwrap();
    stored.sort();
    let mut want = vec![a, b];
    want.sort();
    assert_eq!(stored, want);
    assert_eq!(meta.total_bytes(), a.size() + b.size(), "marking a recorded blob stored counts it once");

    // Access times only move forward; least recent first.
    meta.mark_stored(&c, 300).await.unwrap();
    assert_eq!(meta.least_recent(10).await.unwrap(), vec![a, b, c]);
    meta.touch(&[(a, 400), (b, 10)]).await.unwrap();
    assert_eq!(meta.least_recent(10).await.unwrap(), vec![b, c, a]);
    assert_eq!(meta.least_recent(1).await.unwrap(), vec![b]);

    // Pinned blobs are never offered for eviction, whoever else holds them.
    meta.pin("op-1", &[b, d]).await.unwrap();
    meta.pin("op-2", &[b]).await.unwrap();
    meta.pin("op-2", &[b]).await.unwrap();
    assert_eq!(meta.least_recent(10).await.unwrap(), vec![c, a]);
    meta.unpin("op-1").await.unwrap();
    assert_eq!(meta.least_recent(10).await.unwrap(), vec![c, a]);
    meta.unpin("op-2").await.unwrap();
    assert_eq!(meta.least_recent(10).await.unwrap(), vec![b, c, a]);

    // Removal uncounts once and forgets the stored mark.
    meta.remove(&b).await.unwrap();
    meta.remove(&b).await.unwrap();
    assert_eq!(meta.total_bytes(), a.size() + c.size());
    assert!(meta.find_stored(&[b]).await.unwrap().is_empty());
    assert!(meta.find_stored(&[]).await.unwrap().is_empty());
}
