use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use memobuild_proto::{Digest, Error, Result};

use crate::blob_store::{BlobStore, BlobStream, ByteRange, Usage};

/// One shard of a [`ShardedStore`]: a stable name (what blobs hash against,
/// so renaming a shard moves its blobs), a weight and a store.
pub struct Shard {
    pub name: String,
    pub weight: f64,
    pub store: Arc<dyn BlobStore>,
}

/// Spreads blobs over shards by weighted rendezvous hashing: each blob goes
/// to the shard with the highest score `-weight / ln(h)`, `h` a hash of shard
/// name and digest in (0, 1). Adding shard N+1 (equal weights) moves about
/// 1/(N+1) of the blobs, all of them to the new shard; a shard of twice the
/// weight takes twice the blobs.
pub struct ShardedStore {
    shards: Vec<Shard>,
}

impl ShardedStore {
    pub fn new(shards: Vec<Shard>) -> Result<Self> {
        if shards.is_empty() {
            return Err(Error::invalid_argument("a sharded store needs at least one shard"));
        }
        let mut names = HashSet::new();
        for shard in &shards {
            if !(shard.weight.is_finite() && shard.weight > 0.0) {
                return Err(Error::invalid_argument(format!(
                    "shard {:?}: weight {} is not a positive number",
                    shard.name, shard.weight
                )));
            }
            if !names.insert(shard.name.as_str()) {
                return Err(Error::invalid_argument(format!("two shards are named {:?}", shard.name)));
            }
        }
        Ok(ShardedStore { shards })
    }

    /// The index of the shard that holds `digest`.
    pub fn shard_of(&self, digest: &Digest) -> usize {
        let mut best = (0, f64::NEG_INFINITY);
        for (i, shard) in self.shards.iter().enumerate() {
            let score = score(&shard.name, shard.weight, digest);
            if score > best.1 {
                best = (i, score);
            }
        }
        best.0
    }

    fn store(&self, digest: &Digest) -> &Arc<dyn BlobStore> {
        &self.shards[self.shard_of(digest)].store
    }
}

/// The weighted rendezvous score of `digest` on a shard.
fn score(name: &str, weight: f64, digest: &Digest) -> f64 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(name.as_bytes());
    hasher.update(&[0, digest.function().to_proto() as u8]);
    hasher.update(digest.hash());
    hasher.update(&digest.size().to_le_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&hasher.finalize().as_bytes()[..8]);
    // 53 random bits, strictly inside (0, 1).
    let unit = ((u64::from_le_bytes(first) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -weight / unit.ln()
}

#[async_trait]
impl BlobStore for ShardedStore {
    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>> {
        let mut groups: Vec<Vec<Digest>> = vec![Vec::new(); self.shards.len()];
        for digest in digests {
            groups[self.shard_of(digest)].push(*digest);
        }
        let asks =
            self.shards.iter().zip(&groups).filter(|(_, group)| !group.is_empty()).map(|(shard, group)| async move {
                shard.store.find_missing(group).await.map_err(|e| e.context(format!("shard {}", shard.name)))
            });
        let mut missing = HashSet::new();
        for answer in futures::future::join_all(asks).await {
            missing.extend(answer?);
        }
        Ok(digests.iter().filter(|d| missing.contains(d)).copied().collect())
    }

    async fn get(&self, digest: &Digest, range: ByteRange) -> Result<BlobStream> {
        self.store(digest).get(digest, range).await
    }

    async fn put(&self, digest: &Digest, data: BlobStream) -> Result<()> {
        self.store(digest).put(digest, data).await
    }

    async fn delete(&self, digest: &Digest) -> Result<bool> {
        self.store(digest).delete(digest).await
    }

    async fn mark_used(&self, digest: &Digest) -> Result<()> {
        self.store(digest).mark_used(digest).await
    }

    fn usage(&self) -> Option<Usage> {
        self.shards.iter().try_fold(Usage::default(), |sum, shard| {
            let usage = shard.store.usage()?;
            Some(Usage { bytes: sum.bytes + usage.bytes, blobs: sum.blobs + usage.blobs })
        })
    }

    fn shard_name(&self, digest: &Digest) -> Option<String> {
        Some(self.shards[self.shard_of(digest)].name.clone())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::{test_services, MemoryStore, S3Settings};
    use memobuild_proto::DigestFunction;
    use proptest::prelude::*;

    fn memory_shards(names: &[(&str, f64)]) -> ShardedStore {
        let shards = names
            .iter()
            .map(|(name, weight)| Shard {
                name: name.to_string(),
                weight: *weight,
                store: Arc::new(MemoryStore::new()),
            })
            .collect();
        ShardedStore::new(shards).unwrap()
    }

    fn keys(seed: u64, n: u64) -> Vec<Digest> {
        (0..n).map(|i| Digest::of(DigestFunction::Sha256, &[seed.to_le_bytes(), i.to_le_bytes()].concat())).collect()
    }

    #[tokio::test]
    async fn conformance_over_real_s3_buckets() {
        let mut shards = Vec::new();
        for i in 0..3 {
            let store = test_services::s3_store(S3Settings::default()).await;
            shards.push(Shard { name: store.bucket().to_string(), weight: 1.0 + i as f64, store: Arc::new(store) });
        }
        crate::conformance::run(&ShardedStore::new(shards).unwrap()).await;
    }

    #[tokio::test]
    async fn conformance_in_memory_keeps_exact_usage() {
        crate::conformance::run(&memory_shards(&[("a", 1.0), ("b", 1.0)])).await;
    }

    #[test]
    fn bad_shard_lists_are_refused() {
        assert!(ShardedStore::new(Vec::new()).is_err());
        let shard = |name: &str, weight| Shard { name: name.into(), weight, store: Arc::new(MemoryStore::new()) };
        let e = ShardedStore::new(vec![shard("a", 1.0), shard("a", 2.0)]).err().unwrap();
        assert!(e.message().contains("\"a\""), "{e}");
        assert!(ShardedStore::new(vec![shard("a", 0.0)]).is_err());
    }

    #[test]
    fn weights_set_the_share_of_blobs() {
        let store = memory_shards(&[("light", 1.0), ("heavy", 3.0)]);
        let n = 20_000;
        let heavy = keys(7, n).iter().filter(|d| store.shard_of(d) == 1).count();
        let share = heavy as f64 / n as f64;
        assert!((share - 0.75).abs() < 0.02, "heavy shard holds {share}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Adding shard N+1 moves about 1/(N+1) of the blobs, and only to it.
        #[test]
        fn adding_a_shard_moves_about_one_in_n_plus_one(n in 1usize..10, seed in any::<u64>()) {
            let names: Vec<String> = (0..=n).map(|i| format!("bucket-{i}")).collect();
            let before = memory_shards(&names[..n].iter().map(|s| (s.as_str(), 1.0)).collect::<Vec<_>>());
            let after = memory_shards(&names.iter().map(|s| (s.as_str(), 1.0)).collect::<Vec<_>>());
            let blobs = keys(seed, 4000);
            let mut moved = 0;
            for digest in &blobs {
                let (old, new) = (before.shard_of(digest), after.shard_of(digest));
                if old != new {
                    prop_assert_eq!(new, n, "a blob moved between old shards");
                    moved += 1;
                }
            }
            let fraction = moved as f64 / blobs.len() as f64;
            let expected = 1.0 / (n as f64 + 1.0);
            prop_assert!((fraction - expected).abs() < 0.035, "moved {} with {} shards, expected {}", fraction, n + 1, expected);
        }
    }
}
