use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

/// The Prometheus series of every [`crate::MeteredStore`] in a process,
/// labelled by store name (from the config), operation and outcome: a
/// handful of values each, never a digest.
#[derive(Clone)]
pub struct StoreMetrics {
    pub requests: IntCounterVec,
    pub bytes: IntCounterVec,
    pub seconds: HistogramVec,
    pub digests: IntCounterVec,
}

impl StoreMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let requests = IntCounterVec::new(
            Opts::new("memobuild_store_requests_total", "Store operations by store, operation and outcome"),
            &["store", "operation", "outcome"],
        )?;
        let bytes = IntCounterVec::new(
            Opts::new("memobuild_store_bytes_total", "Blob bytes read from and written to each store"),
            &["store", "direction"],
        )?;
        let seconds = HistogramVec::new(
            HistogramOpts::new(
                "memobuild_store_request_duration_seconds",
                "Time to answer (for reads: to the first byte) by store and operation",
            )
            .buckets(vec![0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0]),
            &["store", "operation"],
        )?;
        let digests = IntCounterVec::new(
            Opts::new("memobuild_store_find_missing_digests_total", "Digests asked about, by store and answer"),
            &["store", "answer"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(bytes.clone()))?;
        registry.register(Box::new(seconds.clone()))?;
        registry.register(Box::new(digests.clone()))?;
        Ok(StoreMetrics { requests, bytes, seconds, digests })
    }
}
