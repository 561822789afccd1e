use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry};

/// The scheduler's Prometheus metrics.
#[derive(Clone)]
pub struct SchedulerMetrics {
    pub queued: IntGauge,
    pub executing: IntGauge,
    pub workers: IntGauge,
    outcomes: IntCounterVec,
    pub dispatch_seconds: Histogram,
}

impl SchedulerMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let queued = IntGauge::new("memobuild_scheduler_queued_actions", "Actions waiting for a worker")?;
        let executing = IntGauge::new("memobuild_scheduler_executing_actions", "Actions running on workers")?;
        let workers = IntGauge::new("memobuild_scheduler_workers", "Connected workers")?;
        let outcomes = IntCounterVec::new(
            Opts::new("memobuild_scheduler_actions_total", "Finished executions by outcome"),
            &["outcome"],
        )?;
        let dispatch_seconds = Histogram::with_opts(
            HistogramOpts::new("memobuild_scheduler_dispatch_seconds", "Time from queueing to assignment")
                .buckets(prometheus::exponential_buckets(0.0001, 4.0, 12)?),
        )?;
        registry.register(Box::new(queued.clone()))?;
        registry.register(Box::new(executing.clone()))?;
        registry.register(Box::new(workers.clone()))?;
        registry.register(Box::new(outcomes.clone()))?;
        registry.register(Box::new(dispatch_seconds.clone()))?;
        Ok(SchedulerMetrics { queued, executing, workers, outcomes, dispatch_seconds })
    }

    /// Counts one execution outcome: cache_hit, succeeded, failed, error, cancelled.
    pub fn outcome(&self, outcome: &str) {
        self.outcomes.with_label_values(&[outcome]).inc();
    }
}
