use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// How a worker stands, for its metrics and its health check: whether it
/// holds a session with the scheduler (and the last error if not), and its
/// slots. Clones share one state.
#[derive(Clone)]
pub struct WorkerMonitor {
    inner: Arc<Inner>,
}

struct Inner {
    connected: AtomicBool,
    last_error: Mutex<String>,
    slots: AtomicI64,
    busy: AtomicI64,
    metrics: Option<Metrics>,
}

/// The worker's Prometheus series; labels are fixed words.
struct Metrics {
    connected: IntGauge,
    slots: IntGaugeVec,
    actions: IntCounterVec,
    seconds: HistogramVec,
}

/// What ran: a REAPI action or a Dockerfile step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkKind {
    Action,
    Step,
}

impl WorkKind {
    fn as_str(self) -> &'static str {
        match self {
            WorkKind::Action => "action",
            WorkKind::Step => "step",
        }
    }
}

impl WorkerMonitor {
    /// A monitor whose series go into `registry` (none: state only).
    pub fn new(registry: Option<&Registry>) -> Result<Self, prometheus::Error> {
        let metrics = registry.map(register).transpose()?;
        Ok(WorkerMonitor {
            inner: Arc::new(Inner {
                connected: AtomicBool::new(false),
                last_error: Mutex::new("not connected yet".into()),
                slots: AtomicI64::new(0),
                busy: AtomicI64::new(0),
                metrics,
            }),
        })
    }

    /// The session with the scheduler opened (`None`) or failed.
    pub fn link(&self, error: Option<String>) {
        let up = error.is_none();
        self.inner.connected.store(up, Ordering::SeqCst);
        if let Some(error) = error {
            *self.inner.last_error.lock() = error;
        }
        if let Some(m) = &self.inner.metrics {
            m.connected.set(i64::from(up));
        }
    }

    /// Whether a session is open; else why not.
    pub fn connected(&self) -> Result<(), String> {
        match self.inner.connected.load(Ordering::SeqCst) {
            true => Ok(()),
            false => Err(self.inner.last_error.lock().clone()),
        }
    }

    pub fn set_slots(&self, slots: u32) {
        self.inner.slots.store(i64::from(slots), Ordering::SeqCst);
        self.publish_slots();
    }

    /// Slots in use and in all.
    pub fn load(&self) -> (i64, i64) {
        (self.inner.busy.load(Ordering::SeqCst), self.inner.slots.load(Ordering::SeqCst))
    }

    /// A slot is taken.
    pub fn started(&self) {
        self.inner.busy.fetch_add(1, Ordering::SeqCst);
        self.publish_slots();
    }

    /// A slot is free again after `kind` ran for `elapsed` and ended with
    /// `outcome` (`ok`, `failed`, `error`).
    pub fn finished(&self, kind: WorkKind, outcome: &str, elapsed: Duration) {
        self.inner.busy.fetch_sub(1, Ordering::SeqCst);
        self.publish_slots();
        if let Some(m) = &self.inner.metrics {
            m.actions.with_label_values(&[kind.as_str(), outcome]).inc();
            m.seconds.with_label_values(&[kind.as_str()]).observe(elapsed.as_secs_f64());
        }
    }

    fn publish_slots(&self) {
        if let Some(m) = &self.inner.metrics {
            let (busy, slots) = self.load();
            m.slots.with_label_values(&["busy"]).set(busy);
            m.slots.with_label_values(&["free"]).set((slots - busy).max(0));
        }
    }
}

fn register(registry: &Registry) -> Result<Metrics, prometheus::Error> {
    let connected = IntGauge::new("memobuild_worker_connected", "1 while the worker holds a scheduler session")?;
    let slots = IntGaugeVec::new(Opts::new("memobuild_worker_slots", "This worker's slots, busy or free"), &["state"])?;
    let actions = IntCounterVec::new(
        Opts::new("memobuild_worker_executions_total", "Work this worker ran, by kind (action, step) and outcome"),
        &["kind", "outcome"],
    )?;
    let seconds = HistogramVec::new(
        HistogramOpts::new("memobuild_worker_execution_duration_seconds", "Time this worker spent per action or step")
            .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0]),
        &["kind"],
    )?;
    registry.register(Box::new(connected.clone()))?;
    registry.register(Box::new(slots.clone()))?;
    registry.register(Box::new(actions.clone()))?;
    registry.register(Box::new(seconds.clone()))?;
    for state in ["busy", "free"] {
        slots.with_label_values(&[state]).set(0);
    }
    Ok(Metrics { connected, slots, actions, seconds })
}
