use std::sync::{Arc, OnceLock, Weak};

use memobuild_cas::CacheLookups;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Gauge, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::Scheduler;

/// The scheduler's Prometheus metrics. Labels are a handful of fixed
/// values each (outcome, slot state, build state), never an id.
#[derive(Clone)]
pub struct SchedulerMetrics {
    pub queued: IntGauge,
    pub executing: IntGauge,
    pub workers: IntGauge,
    /// Worker slots by state: `busy` or `free`.
    pub slots: IntGaugeVec,
    outcomes: IntCounterVec,
    pub dispatch_seconds: Histogram,
    /// Lookups of the action cache by Execute and by builds' steps.
    pub lookups: CacheLookups,
    pub builds_running: IntGauge,
    /// Builds' wall time, by how they ended.
    build_seconds: HistogramVec,
    /// Executed steps' time on their worker.
    pub step_seconds: Histogram,
    /// The scheduler whose queue the age gauge reads at each scrape.
    queue: Arc<OnceLock<Weak<Scheduler>>>,
}

/// Buckets from a tenth of a second to an hour, for builds and steps.
fn long_buckets() -> Vec<f64> {
    vec![0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0]
}

impl SchedulerMetrics {
    /// Registers the scheduler's series in `registry`; `lookups` is the
    /// process's cache-lookup counter (the CAS role's AC counts there too).
    pub fn register(registry: &Registry, lookups: CacheLookups) -> Result<Self, prometheus::Error> {
        let queued = IntGauge::new("memobuild_scheduler_queued_actions", "Actions waiting for a worker")?;
        let executing = IntGauge::new("memobuild_scheduler_executing_actions", "Actions running on workers")?;
        let workers = IntGauge::new("memobuild_scheduler_workers", "Connected workers")?;
        let slots = IntGaugeVec::new(
            Opts::new("memobuild_scheduler_worker_slots", "Slots of connected workers, busy or free"),
            &["state"],
        )?;
        let outcomes = IntCounterVec::new(
            Opts::new("memobuild_scheduler_actions_total", "Finished executions by outcome"),
            &["outcome"],
        )?;
        let dispatch_seconds = Histogram::with_opts(
            HistogramOpts::new("memobuild_scheduler_dispatch_seconds", "Time from queueing to assignment")
                .buckets(prometheus::exponential_buckets(0.0001, 4.0, 12)?),
        )?;
        let builds_running = IntGauge::new("memobuild_builds_running", "Builds running on the cluster")?;
        let build_seconds = HistogramVec::new(
            HistogramOpts::new("memobuild_build_duration_seconds", "Wall time of builds, by how they ended")
                .buckets(long_buckets()),
            &["state"],
        )?;
        let step_seconds = Histogram::with_opts(
            HistogramOpts::new("memobuild_build_step_duration_seconds", "Time of executed (not cached) build steps")
                .buckets(long_buckets()),
        )?;
        let queue = Arc::new(OnceLock::new());
        let age = QueueAge {
            gauge: Gauge::new(
                "memobuild_scheduler_queue_oldest_age_seconds",
                "How long the oldest queued action has waited (0 when none waits)",
            )?,
            scheduler: queue.clone(),
        };
        registry.register(Box::new(queued.clone()))?;
        registry.register(Box::new(executing.clone()))?;
        registry.register(Box::new(workers.clone()))?;
        registry.register(Box::new(slots.clone()))?;
        registry.register(Box::new(outcomes.clone()))?;
        registry.register(Box::new(dispatch_seconds.clone()))?;
        registry.register(Box::new(builds_running.clone()))?;
        registry.register(Box::new(build_seconds.clone()))?;
        registry.register(Box::new(step_seconds.clone()))?;
        registry.register(Box::new(age))?;
        for state in ["busy", "free"] {
            slots.with_label_values(&[state]).set(0);
        }
        Ok(SchedulerMetrics {
            queued,
            executing,
            workers,
            slots,
            outcomes,
            dispatch_seconds,
            lookups,
            builds_running,
            build_seconds,
            step_seconds,
            queue,
        })
    }

    /// Metrics for unit tests: a private registry.
    pub fn unregistered() -> Self {
        let registry = Registry::new();
        let lookups = CacheLookups::register(&registry).expect("a fresh registry takes the lookup counter");
        Self::register(&registry, lookups).expect("a fresh registry takes the scheduler's series")
    }

    /// Counts one execution outcome: cache_hit, succeeded, failed, error, cancelled.
    pub fn outcome(&self, outcome: &str) {
        self.outcomes.with_label_values(&[outcome]).inc();
    }

    /// Records a build that ended in `state` after `seconds`.
    pub fn build_ended(&self, state: &str, seconds: f64) {
        self.build_seconds.with_label_values(&[state]).observe(seconds);
    }

    /// The scheduler the queue-age gauge reads.
    pub(crate) fn watch_queue(&self, scheduler: Weak<Scheduler>) {
        let _ = self.queue.set(scheduler);
    }
}

/// The age of the oldest queued action, read from the scheduler at each scrape.
struct QueueAge {
    gauge: Gauge,
    scheduler: Arc<OnceLock<Weak<Scheduler>>>,
}

impl Collector for QueueAge {
    fn desc(&self) -> Vec<&Desc> {
        self.gauge.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let age = self.scheduler.get().and_then(Weak::upgrade).map(|s| s.oldest_queued_seconds()).unwrap_or(0.0);
        self.gauge.set(age);
        self.gauge.collect()
    }
}
