use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use futures::StreamExt;
use memobuild_proto::{Digest, Result};
use prometheus::IntCounter;
use tonic::Code;

use crate::blob_store::{BlobStore, BlobStream, ByteRange, Usage};
use crate::store_metrics::StoreMetrics;

/// Counts the requests, bytes and latency of the store it wraps into
/// Prometheus, under the store's name.
pub struct MeteredStore {
    inner: Arc<dyn BlobStore>,
    name: String,
    metrics: StoreMetrics,
}

impl MeteredStore {
    pub fn new(inner: Arc<dyn BlobStore>, name: impl Into<String>, metrics: StoreMetrics) -> Self {
        MeteredStore { inner, name: name.into(), metrics }
    }

    /// Records one finished operation.
    fn observe<T>(&self, operation: &str, started: Instant, result: &Result<T>) {
        let outcome = match result {
            Ok(_) => "ok",
            Err(e) if e.code() == Code::NotFound => "not_found",
            Err(_) => "error",
        };
        self.metrics.requests.with_label_values(&[&self.name, operation, outcome]).inc();
        self.metrics.seconds.with_label_values(&[&self.name, operation]).observe(started.elapsed().as_secs_f64());
    }

    fn counter(&self, direction: &str) -> IntCounter {
        self.metrics.bytes.with_label_values(&[&self.name, direction])
    }
}

/// `stream`, adding each chunk's length to `bytes` as it passes.
fn counted(stream: BlobStream, bytes: IntCounter) -> BlobStream {
    stream
        .inspect(move |chunk| {
            if let Ok(chunk) = chunk {
                bytes.inc_by(chunk.len() as u64);
            }
        })
        .boxed()
}

#[async_trait]
impl BlobStore for MeteredStore {
    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>> {
        let started = Instant::now();
        let result = self.inner.find_missing(digests).await;
        self.observe("find_missing", started, &result);
        if let Ok(missing) = &result {
            let answers = &self.metrics.digests;
            answers.with_label_values(&[&self.name, "missing"]).inc_by(missing.len() as u64);
            answers.with_label_values(&[&self.name, "present"]).inc_by((digests.len() - missing.len()) as u64);
        }
        result
    }

    async fn get(&self, digest: &Digest, range: ByteRange) -> Result<BlobStream> {
        let started = Instant::now();
        let result = self.inner.get(digest, range).await;
        self.observe("get", started, &result);
        Ok(counted(result?, self.counter("read")))
    }

    async fn put(&self, digest: &Digest, data: BlobStream) -> Result<()> {
        let started = Instant::now();
        let result = self.inner.put(digest, counted(data, self.counter("written"))).await;
        self.observe("put", started, &result);
        result
    }

    async fn delete(&self, digest: &Digest) -> Result<bool> {
        let started = Instant::now();
        let result = self.inner.delete(digest).await;
        self.observe("delete", started, &result);
        result
    }

    async fn mark_used(&self, digest: &Digest) -> Result<()> {
        self.inner.mark_used(digest).await
    }

    fn usage(&self) -> Option<Usage> {
        self.inner.usage()
    }

    fn shard_name(&self, digest: &Digest) -> Option<String> {
        self.inner.shard_name(digest)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::MemoryStore;
    use bytes::Bytes;
    use memobuild_proto::DigestFunction;
    use prometheus::Registry;

    #[tokio::test]
    async fn conformance() {
        let metrics = StoreMetrics::register(&Registry::new()).unwrap();
        crate::conformance::run(&MeteredStore::new(Arc::new(MemoryStore::new()), "memory", metrics)).await;
    }

    #[tokio::test]
    async fn counts_requests_bytes_and_answers_per_store() {
        let registry = Registry::new();
        let metrics = StoreMetrics::register(&registry).unwrap();
        let store = MeteredStore::new(Arc::new(MemoryStore::new()), "hot", metrics.clone());
        let data = Bytes::from_static(b"hello metered");
        let digest = Digest::of(DigestFunction::Sha256, &data);
        store.put_bytes(&digest, data.clone()).await.unwrap();
        store.get_bytes(&digest).await.unwrap();
        let other = Digest::of(DigestFunction::Sha256, b"absent");
        assert!(store.get(&other, ByteRange::ALL).await.is_err());
        store.find_missing(&[digest, other]).await.unwrap();
        let requests = |op: &str, outcome: &str| metrics.requests.with_label_values(&["hot", op, outcome]).get();
        assert_eq!(requests("put", "ok"), 1);
        assert_eq!(requests("get", "ok"), 1);
        assert_eq!(requests("get", "not_found"), 1);
        assert_eq!(requests("find_missing", "ok"), 1);
        assert_eq!(metrics.bytes.with_label_values(&["hot", "written"]).get(), data.len() as u64);
        assert_eq!(metrics.bytes.with_label_values(&["hot", "read"]).get(), data.len() as u64);
        assert_eq!(metrics.digests.with_label_values(&["hot", "present"]).get(), 1);
        let names: Vec<String> = registry.gather().iter().map(|f| f.name().to_string()).collect();
        assert!(names.iter().all(|n| n.starts_with("memobuild_")), "{names:?}");
    }
}
