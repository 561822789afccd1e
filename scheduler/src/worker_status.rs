/// What the scheduler knows of one connected worker, for status views.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerStatus {
    pub name: String,
    pub slots: u32,
    /// Operations it runs now, sorted.
    pub running: Vec<String>,
    /// Its platform properties, `NAME=VALUE`, sorted.
    pub properties: Vec<String>,
}

/// The queue at a glance.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct QueueStatus {
    pub queued: usize,
    pub executing: usize,
    /// How long the oldest queued action has waited.
    pub oldest_seconds: f64,
}
