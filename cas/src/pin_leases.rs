use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use memobuild_proto::{Digest, Error, Result};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

use crate::blob_metadata::BlobPins;
use crate::clock::Clock;

/// Digests pinned per call at most.
const PIN_BATCH: usize = 10_000;
/// Pins and releases waiting for the writer; more wait their turn.
const QUEUE: usize = 1024;

/// Pins taken by a live process (a scheduler) for the work it holds: each
/// holder's pins last one lease and are renewed, all holders in one
/// statement, a few times per lease while the holder is held. A process
/// that dies stops renewing, and its pins lapse one lease later, so a
/// crashed scheduler never keeps blobs forever; a restarted one renews the
/// pins of the work it recovers.
///
/// Pins and releases go through one writer task, which writes whatever
/// has queued up meanwhile together (group commit): one statement pins for
/// every waiting holder, one drops every released holder's pins.
pub struct PinLeases {
    held: Mutex<HashSet<String>>,
    /// Digests pinned so far (a counter, for metrics).
    pinned: AtomicU64,
    writer: mpsc::Sender<Request>,
    /// What the writer writes with.
    shared: Arc<Writer>,
}

/// Where pins are written, and for how long they last.
struct Writer {
    pins: Vec<Arc<dyn BlobPins>>,
    clock: Arc<dyn Clock>,
    lease: Duration,
}

/// How soon a write that somebody waits for is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Urgency {
    /// At once, with whatever has queued up meanwhile.
    Now,
    /// Within a few milliseconds, shared with the writes that come
    /// meanwhile: for work that will wait in a queue anyway.
    Shared,
}

/// Work for the writer task.
enum Request {
    /// Pin `digests` for `holder`; `done` is told once they are durable.
    Hold { holder: String, digests: Vec<Digest>, done: oneshot::Sender<Result<()>>, urgency: Urgency },
    /// Drop `holder`'s pins; `done`, if any, is told once they are gone.
    Release { holder: String, done: Option<oneshot::Sender<Result<()>>> },
}

impl std::fmt::Debug for PinLeases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinLeases").field("lease", &self.shared.lease).field("held", &self.held.lock().len()).finish()
    }
}

impl PinLeases {
    /// Leases over `pins` (every metadata whose evictor must respect them),
    /// renewed in the background until the returned value is dropped.
    pub fn start(pins: Vec<Arc<dyn BlobPins>>, clock: Arc<dyn Clock>, lease: Duration) -> Arc<Self> {
        let (writer, requests) = mpsc::channel(QUEUE);
        let shared = Arc::new(Writer { pins, clock, lease });
        tokio::spawn(write_pins(shared.clone(), requests));
        let leases = Arc::new(PinLeases { held: Mutex::default(), pinned: AtomicU64::new(0), writer, shared });
        tokio::spawn(renew_until_dropped(Arc::downgrade(&leases)));
        leases
    }

    /// Pins `digests` for `holder` until it is released (or stops being
    /// renewed); returns once they are written, which `urgency` says how
    /// soon to do.
    pub async fn hold(&self, holder: &str, digests: &[Digest], urgency: Urgency) -> Result<()> {
        self.held.lock().insert(holder.to_string());
        let (done, written) = oneshot::channel();
        let request = Request::Hold { holder: holder.to_string(), digests: digests.to_vec(), done, urgency };
        self.writer.send(request).await.map_err(|_| writer_gone())?;
        written.await.map_err(|_| writer_gone())??;
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
        let (done, written) = oneshot::channel();
        let request = Request::Release { holder: holder.to_string(), done: Some(done) };
        self.writer.send(request).await.map_err(|_| writer_gone())?;
        written.await.map_err(|_| writer_gone())?
    }

    /// [`PinLeases::release`] in the background, for callers that cannot
    /// wait; a failure leaves pins that lapse with their lease.
    pub fn release_later(self: &Arc<Self>, holder: String) {
        self.held.lock().remove(&holder);
        match self.writer.try_send(Request::Release { holder, done: None }) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(request)) => {
                let writer = self.writer.clone();
                tokio::spawn(async move { writer.send(request).await });
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::warn!("cannot release pins (the pin writer stopped); they lapse with their lease");
            }
        }
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
        let until = self.shared.until_ms();
        for pins in &self.shared.pins {
            pins.renew(&holders, until).await?;
        }
        Ok(())
    }
}

impl Writer {
    fn until_ms(&self) -> i64 {
        self.clock.now_ms().saturating_add(self.lease.as_millis() as i64)
    }

    /// Pins every holder's digests, in calls of at most [`PIN_BATCH`] digests.
    async fn pin(&self, holds: &[(String, Vec<Digest>)]) -> Result<()> {
        let mut calls = Vec::new();
        let mut call: Vec<(&str, &[Digest])> = Vec::new();
        let mut size = 0;
        for (holder, digests) in holds {
            for chunk in digests.chunks(PIN_BATCH) {
                if size + chunk.len() > PIN_BATCH && !call.is_empty() {
                    calls.push(std::mem::take(&mut call));
                    size = 0;
                }
                call.push((holder.as_str(), chunk));
                size += chunk.len();
            }
        }
        if !call.is_empty() {
            calls.push(call);
        }
        let until = self.until_ms();
        for pins in &self.pins {
            for call in &calls {
                pins.pin(call, until).await?;
            }
        }
        Ok(())
    }

    async fn unpin(&self, holders: &[String]) -> Result<()> {
        for pins in &self.pins {
            pins.unpin(holders).await?;
        }
        Ok(())
    }
}

/// Requests written together at most.
const BATCH: usize = 256;
/// How long a write that need not be made at once waits for others to
/// share it.
const SHARE_WINDOW: Duration = Duration::from_millis(5);

/// What the writer writes at once: pins (each holder's digests merged,
/// each once) first, then releases.
#[derive(Default)]
struct Batch {
    holds: HashMap<String, HashSet<Digest>>,
    held: Vec<oneshot::Sender<Result<()>>>,
    releases: Vec<String>,
    released: Vec<oneshot::Sender<Result<()>>>,
    requests: usize,
    /// Whether somebody waits for this batch to be written at once.
    urgent: bool,
}

impl Batch {
    /// Adds `request`, or gives it back when it must wait for the next
    /// batch: a pin for a holder this batch releases (releases are written
    /// after pins).
    fn add(&mut self, request: Request) -> std::result::Result<(), Request> {
        if let Request::Hold { holder, .. } = &request {
            if self.releases.contains(holder) {
                return Err(request);
            }
        }
        self.requests += 1;
        match request {
            Request::Hold { holder, digests, done, urgency } => {
                self.holds.entry(holder).or_default().extend(digests);
                self.held.push(done);
                self.urgent |= urgency == Urgency::Now;
            }
            Request::Release { holder, done } => {
                self.releases.push(holder);
                self.urgent |= done.is_some();
                self.released.extend(done);
            }
        }
        Ok(())
    }

    async fn write(self, writer: &Writer) {
        if !self.holds.is_empty() {
            let holds: Vec<(String, Vec<Digest>)> =
                self.holds.into_iter().map(|(holder, digests)| (holder, digests.into_iter().collect())).collect();
            let result = writer.pin(&holds).await;
            for done in self.held {
                let _ = done.send(result.clone());
            }
        }
        if !self.releases.is_empty() {
            let result = writer.unpin(&self.releases).await;
            if let Err(e) = &result {
                tracing::warn!(holders = self.releases.len(), error = %e, "cannot release pins; they lapse with their lease");
            }
            for done in self.released {
                let _ = done.send(result.clone());
            }
        }
    }
}

/// The writer task: takes a request, adds whatever else has queued up
/// meanwhile, writes them together; until every [`PinLeases`] is gone.
/// Unless somebody waits for it at once, a batch first waits up to
/// [`SHARE_WINDOW`] for more to join it.
async fn write_pins(writer: Arc<Writer>, mut requests: mpsc::Receiver<Request>) {
    let mut next = None;
    loop {
        let first = match next.take() {
            Some(request) => request,
            None => match requests.recv().await {
                Some(request) => request,
                None => return,
            },
        };
        let mut batch = Batch::default();
        // A fresh batch takes any request.
        let _ = batch.add(first);
        let deadline = tokio::time::Instant::now() + SHARE_WINDOW;
        while batch.requests < BATCH {
            let request = match requests.try_recv() {
                Ok(request) => Some(request),
                Err(_) if batch.urgent => None,
                Err(_) => tokio::time::timeout_at(deadline, requests.recv()).await.ok().flatten(),
            };
            let Some(request) = request else { break };
            if let Err(request) = batch.add(request) {
                next = Some(request);
                break;
            }
        }
        batch.write(&writer).await;
    }
}

fn writer_gone() -> Error {
    Error::unavailable("the pin writer stopped")
}

async fn renew_until_dropped(leases: Weak<PinLeases>) {
    let period = match leases.upgrade() {
        Some(l) => (l.shared.lease / 3).max(Duration::from_millis(100)),
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

    const LEASE: Duration = Duration::from_secs(60);

    async fn listed(meta: &SqliteMetadata, now: i64) -> Vec<Digest> {
        meta.least_recent(100, now).await.unwrap().into_iter().map(|c| c.digest).collect()
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
        leases.hold("operations/1", &[a], Urgency::Now).await.unwrap();
        leases.hold("build/2", &[b], Urgency::Now).await.unwrap();
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

    /// Holds and releases queued together are written together (holds
    /// that may share a write too), and a holder released and then held
    /// again ends up held.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_holds_and_releases_keep_their_order_per_holder() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Arc::new(SqliteMetadata::open(&dir.path().join("meta.db")).await.unwrap());
        let digests: Vec<Digest> = (0..40u8).map(|i| Digest::of(DigestFunction::Sha256, &[i])).collect();
        for (i, digest) in digests.iter().enumerate() {
            meta.mark_stored(digest, "", i as i64).await.unwrap();
        }
        let leases = PinLeases::start(vec![meta.clone() as Arc<dyn BlobPins>], Arc::new(ManualClock::new(0)), LEASE);
        let holds = digests.iter().enumerate().map(|(i, digest)| {
            let (leases, digest) = (leases.clone(), *digest);
            tokio::spawn(async move { leases.hold(&format!("operations/{i}"), &[digest], Urgency::Shared).await })
        });
        for hold in futures::future::join_all(holds).await {
            hold.unwrap().unwrap();
        }
        assert!(listed(&meta, 0).await.is_empty());

        for i in 0..20 {
            leases.release_later(format!("operations/{i}"));
        }
        leases.hold("operations/0", &[digests[0]], Urgency::Now).await.unwrap();
        leases.release("operations/1").await.unwrap();
        assert_eq!(listed(&meta, 0).await, digests[1..20].to_vec(), "operations/0 was held again");
        assert_eq!(leases.holders(), 21);
    }

    /// Remembers how many holders each pin call wrote.
    #[derive(Default)]
    struct CountingPins {
        calls: parking_lot::Mutex<Vec<usize>>,
    }

    #[async_trait::async_trait]
    impl BlobPins for CountingPins {
        async fn pin(&self, pins: &[(&str, &[Digest])], _: i64) -> Result<()> {
            self.calls.lock().push(pins.len());
            Ok(())
        }
        async fn renew(&self, _: &[String], _: i64) -> Result<()> {
            Ok(())
        }
        async fn unpin(&self, _: &[String]) -> Result<()> {
            Ok(())
        }
    }

    /// A hold that must be written at once is written alone; holds that
    /// may share a write, a millisecond apart, are written together.
    #[tokio::test(start_paused = true)]
    async fn holds_that_may_wait_share_a_write() {
        let pins = Arc::new(CountingPins::default());
        let leases = PinLeases::start(vec![pins.clone() as Arc<dyn BlobPins>], Arc::new(ManualClock::new(0)), LEASE);
        let digests = [Digest::of(DigestFunction::Sha256, b"input")];
        leases.hold("operations/now", &digests, Urgency::Now).await.unwrap();
        let later = async {
            tokio::time::sleep(Duration::from_millis(1)).await;
            leases.hold("operations/b", &digests, Urgency::Shared).await
        };
        let (a, b) = tokio::join!(leases.hold("operations/a", &digests, Urgency::Shared), later);
        a.unwrap();
        b.unwrap();
        assert_eq!(*pins.calls.lock(), [1, 2]);
    }
}
