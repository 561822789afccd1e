use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use memobuild_proto::{Digest, Result};
use parking_lot::Mutex;

use crate::blob_metadata::BlobPins;
use crate::clock::Clock;

/// Digests pinned per statement at most.
const PIN_BATCH: usize = 10_000;

/// Pins taken by a live process (a scheduler) for the work it holds: each
/// holder's pins last one lease and are renewed, all holders in one
/// statement, a few times per lease while the holder is held. A process
/// that dies stops renewing, and its pins lapse one lease later, so a
/// crashed scheduler never keeps blobs forever; a restarted one renews the
/// pins of the work it recovers.
pub struct PinLeases {
    pins: Vec<Arc<dyn BlobPins>>,
    clock: Arc<dyn Clock>,
    lease: Duration,
    held: Mutex<HashSet<String>>,
    /// Digests pinned so far (a counter, for metrics).
    pinned: AtomicU64,
}

impl std::fmt::Debug for PinLeases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinLeases").field("lease", &self.lease).field("held", &self.held.lock().len()).finish()
    }
}

impl PinLeases {
    /// Leases over `pins` (every metadata whose evictor must respect them),
    /// renewed in the background until the returned value is dropped.
    pub fn start(pins: Vec<Arc<dyn BlobPins>>, clock: Arc<dyn Clock>, lease: Duration) -> Arc<Self> {
        let leases = Arc::new(PinLeases { pins, clock, lease, held: Mutex::default(), pinned: AtomicU64::new(0) });
        tokio::spawn(renew_until_dropped(Arc::downgrade(&leases)));
        leases
    }

    fn until_ms(&self) -> i64 {
        self.clock.now_ms().saturating_add(self.lease.as_millis() as i64)
    }

    /// Pins `digests` for `holder` until it is released (or stops being
    /// renewed).
    pub async fn hold(&self, holder: &str, digests: &[Digest]) -> Result<()> {
        self.held.lock().insert(holder.to_string());
        let until = self.until_ms();
        for pins in &self.pins {
            for batch in digests.chunks(PIN_BATCH) {
                pins.pin(holder, batch, until).await?;
            }
        }
        self.pinned.fetch_add(digests.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Keeps renewing `holder`'s pins without pinning anything new: for
    /// work recovered after a restart, whose pins are in the database.
    pub fn keep(&self, holder: &str) {
        self.held.lock().insert(holder.to_string());
    }

    /// Drops `holder`'s pins.
    pub async fn release(&self, holder: &str) -> Result<()> {
        self.held.lock().remove(holder);
        for pins in &self.pins {
            pins.unpin(holder).await?;
        }
        Ok(())
    }

    /// [`PinLeases::release`] in the background, for callers that cannot
    /// wait; a failure leaves pins that lapse with their lease.
    pub fn release_later(self: &Arc<Self>, holder: String) {
        self.held.lock().remove(&holder);
        let leases = self.clone();
        tokio::spawn(async move {
            if let Err(e) = leases.release(&holder).await {
                tracing::warn!(%holder, error = %e, "cannot release pins; they lapse with their lease");
            }
        });
    }

    /// Whether `holder` is held.
    pub fn holds(&self, holder: &str) -> bool {
        self.held.lock().contains(holder)
    }

    /// How many holders hold pins now.
    pub fn holders(&self) -> usize {
        self.held.lock().len()
    }

    /// How many digests were pinned since the start (each pin counts).
    pub fn pinned_total(&self) -> u64 {
        self.pinned.load(Ordering::Relaxed)
    }

    /// Renews every held holder's pins by one lease.
    pub async fn renew(&self) -> Result<()> {
        let holders: Vec<String> = self.held.lock().iter().cloned().collect();
        if holders.is_empty() {
            return Ok(());
        }
        let until = self.until_ms();
        for pins in &self.pins {
            pins.renew(&holders, until).await?;
        }
        Ok(())
    }
}

async fn renew_until_dropped(leases: Weak<PinLeases>) {
    let period = match leases.upgrade() {
        Some(l) => (l.lease / 3).max(Duration::from_millis(100)),
        None => return,
    };
    loop {
        tokio::time::sleep(period).await;
        let Some(leases) = leases.upgrade() else { return };
        if let Err(e) = leases.renew().await {
            tracing::warn!(error = %e, "renewing blob pins failed; retrying");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::blob_metadata::BlobMetadata;
    use crate::{ManualClock, SqliteMetadata};
    use memobuild_proto::DigestFunction;

    async fn listed(meta: &SqliteMetadata, now: i64) -> Vec<Digest> {
        meta.least_recent(10, now).await.unwrap().into_iter().map(|c| c.digest).collect()
    }

    /// A held holder's pins outlive many leases; a released one's go at
    /// once, and a dead process's lapse one lease after its last renewal.
    #[tokio::test]
    async fn held_pins_are_renewed_released_pins_go_dead_pins_lapse() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Arc::new(SqliteMetadata::open(&dir.path().join("meta.db")).await.unwrap());
        let (a, b) = (Digest::of(DigestFunction::Sha256, b"a"), Digest::of(DigestFunction::Sha256, b"b"));
        meta.mark_stored(&a, "", 1).await.unwrap();
        meta.mark_stored(&b, "", 2).await.unwrap();
        let clock = Arc::new(ManualClock::new(1_000));
        let lease = Duration::from_secs(60);
        let leases = PinLeases::start(vec![meta.clone() as Arc<dyn BlobPins>], clock.clone(), lease);
        leases.hold("operations/1", &[a]).await.unwrap();
        leases.hold("build/2", &[b]).await.unwrap();
        assert!(listed(&meta, 1_000).await.is_empty());

        clock.advance(50_000);
        leases.renew().await.unwrap();
        clock.advance(50_000);
        assert!(listed(&meta, clock.now_ms()).await.is_empty(), "renewed pins outlive their first lease");

        leases.release("build/2").await.unwrap();
        assert_eq!(listed(&meta, clock.now_ms()).await, vec![b]);
        assert!(!leases.holds("build/2") && leases.holds("operations/1"));

        // The process dies: nothing renews, and one lease later a is free.
        drop(leases);
        assert!(listed(&meta, clock.now_ms()).await == vec![b]);
        clock.advance(60_001);
        assert_eq!(listed(&meta, clock.now_ms()).await, vec![a, b]);
    }
}
