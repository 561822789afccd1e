use prometheus::{IntCounter, Registry};

/// What evicting stores removed: `memobuild_store_evicted_blobs_total` and
/// `memobuild_store_evicted_bytes_total` (stored bytes freed).
#[derive(Clone)]
pub struct EvictionMetrics {
    pub blobs: IntCounter,
    pub bytes: IntCounter,
}

impl EvictionMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let blobs = IntCounter::new("memobuild_store_evicted_blobs_total", "Blobs removed by eviction")?;
        let bytes = IntCounter::new("memobuild_store_evicted_bytes_total", "Stored bytes freed by eviction")?;
        registry.register(Box::new(blobs.clone()))?;
        registry.register(Box::new(bytes.clone()))?;
        Ok(EvictionMetrics { blobs, bytes })
    }
}
