//! Scheduler memory per queued action: submit distinct actions to a
//! scheduler that has no worker (so they all wait in its queue), reading
//! only the first Operation of each Execute stream, and compare the
//! scheduler's resident memory before and after.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use memobuild_proto::reapi::execution_client::ExecutionClient;
use memobuild_proto::reapi::ExecuteRequest;
use memobuild_proto::DigestFunction;
use serde::Serialize;

use crate::connection::{self, Channel, ChannelOptions};
use crate::execute::outcome;
use crate::metrics_scrape;
use crate::process_stats;
use crate::trivial_action::upload_trivial_actions;

/// The scheduler's gauge of actions waiting for a worker.
pub const QUEUED_GAUGE: &str = "memobuild_scheduler_queued_actions";

pub struct QueueMemoryOptions {
    pub channel: ChannelOptions,
    /// Where the action blobs go; the Execute endpoint when `None`.
    pub cas: Option<ChannelOptions>,
    pub instance_name: String,
    pub digest_function: DigestFunction,
    pub actions: usize,
    pub concurrency: usize,
    pub seed: u64,
    /// The scheduler's process.
    pub pid: u32,
    /// The scheduler's admin `/metrics` URL, to check the queue length.
    pub metrics: Option<String>,
    /// Wait after the last submission before reading memory.
    pub settle: Duration,
}

#[derive(Debug, Serialize)]
pub struct QueueMemoryReport {
    pub benchmark: &'static str,
    pub endpoint: String,
    pub pid: u32,
    pub actions: usize,
    pub concurrency: usize,
    pub submit_seconds: f64,
    /// Executes whose first Operation was not done: queued.
    pub queued: u64,
    /// Executes whose first Operation was already done (failed or cached).
    pub done_at_once: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub rss_delta_bytes: i64,
    pub bytes_per_queued_action: Option<f64>,
    /// The scheduler's queue gauge before and after, if --metrics was given.
    pub queued_gauge_before: Option<f64>,
    pub queued_gauge_after: Option<f64>,
}

impl QueueMemoryReport {
    /// Every action was queued, and the gauge (if read) grew by exactly that many.
    pub fn ok(&self) -> bool {
        let gauge_ok = match (self.queued_gauge_before, self.queued_gauge_after) {
            (Some(before), Some(after)) => after - before == self.queued as f64,
            (None, None) => true,
            _ => false,
        };
        self.errors == 0 && self.done_at_once == 0 && self.queued == self.actions as u64 && gauge_ok
    }
}

/// What the submitting tasks share.
struct Shared {
    requests: Vec<ExecuteRequest>,
    next: AtomicUsize,
    queued: AtomicU64,
    done_at_once: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Shared {
    fn note(&self, message: String) {
        if let Ok(mut slot) = self.first_error.lock() {
            slot.get_or_insert(message);
        }
    }
}

/// Submits actions until all are taken: Execute, read the first Operation,
/// drop the stream.
async fn task(mut client: ExecutionClient<Channel>, shared: Arc<Shared>) {
    loop {
        let index = shared.next.fetch_add(1, Ordering::Relaxed);
        let Some(request) = shared.requests.get(index) else { return };
        let first = async {
            let mut stream = client.execute(request.clone()).await?.into_inner();
            stream.message().await
        };
        match tokio::time::timeout(Duration::from_secs(60), first).await {
            Ok(Ok(Some(operation))) => match outcome(&operation) {
                None => {
                    shared.queued.fetch_add(1, Ordering::Relaxed);
                }
                Some(result) => {
                    shared.done_at_once.fetch_add(1, Ordering::Relaxed);
                    shared.note(format!("action {index} was done at once, not queued: {result:?}"));
                }
            },
            Ok(Ok(None)) => {
                shared.errors.fetch_add(1, Ordering::Relaxed);
                shared.note(format!("action {index}: the Execute stream ended without an Operation"));
            }
            Ok(Err(status)) => {
                shared.errors.fetch_add(1, Ordering::Relaxed);
                shared.note(format!("action {index}: Execute: {status}"));
            }
            Err(_) => {
                shared.errors.fetch_add(1, Ordering::Relaxed);
                shared.note(format!("action {index}: no first Operation within 60 s"));
            }
        }
    }
}

pub async fn run(options: QueueMemoryOptions) -> anyhow::Result<QueueMemoryReport> {
    if options.actions == 0 || options.concurrency == 0 {
        bail!("--actions and --concurrency must be at least 1");
    }
    let channels = connection::connect(&options.channel, 1).await?;
    let channel = channels.first().cloned().context("no channel")?;
    let cas_channel = match &options.cas {
        Some(cas) => connection::connect(cas, 1).await?.first().cloned().context("no CAS channel")?,
        None => channel.clone(),
    };

    let actions = upload_trivial_actions(
        cas_channel,
        &options.instance_name,
        options.digest_function,
        options.seed,
        options.actions,
        &[],
    )
    .await?;

    let gauge = |url: Option<String>| async move {
        match url {
            Some(url) => match metrics_scrape::scrape(&url, QUEUED_GAUGE).await? {
                Some(value) => anyhow::Ok(Some(value)),
                None => bail!("{url} does not export {QUEUED_GAUGE}"),
            },
            None => Ok(None),
        }
    };
    let queued_gauge_before = gauge(options.metrics.clone()).await?;
    let rss_before_kib = process_stats::resident_kib(options.pid)?;

    let shared = Arc::new(Shared {
        requests: actions
            .iter()
            .map(|a| ExecuteRequest {
                instance_name: options.instance_name.clone(),
                action_digest: Some(a.to_proto()),
                digest_function: options.digest_function.to_proto(),
                ..Default::default()
            })
            .collect(),
        next: AtomicUsize::new(0),
        queued: AtomicU64::new(0),
        done_at_once: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        first_error: Mutex::new(None),
    });
    let start = Instant::now();
    let tasks: Vec<_> = (0..options.concurrency)
        .map(|_| {
            let client =
                ExecutionClient::new(channel.clone()).max_decoding_message_size(connection::MAX_DECODING_MESSAGE);
            tokio::spawn(task(client, shared.clone()))
        })
        .collect();
    for task in tasks {
        task.await.context("a task panicked")?;
    }
    let submit_seconds = start.elapsed().as_secs_f64();
    tokio::time::sleep(options.settle).await;

    let rss_after_kib = process_stats::resident_kib(options.pid)?;
    let queued_gauge_after = gauge(options.metrics.clone()).await?;
    let queued = shared.queued.load(Ordering::Relaxed);
    let rss_delta_bytes = (rss_after_kib as i64 - rss_before_kib as i64) * 1024;
    Ok(QueueMemoryReport {
        benchmark: "queue-memory",
        endpoint: options.channel.endpoint.clone(),
        pid: options.pid,
        actions: options.actions,
        concurrency: options.concurrency,
        submit_seconds,
        queued,
        done_at_once: shared.done_at_once.load(Ordering::Relaxed),
        errors: shared.errors.load(Ordering::Relaxed),
        first_error: shared.first_error.lock().ok().and_then(|mut e| e.take()),
        rss_before_kib,
        rss_after_kib,
        rss_delta_bytes,
        bytes_per_queued_action: (queued > 0).then(|| rss_delta_bytes as f64 / queued as f64),
        queued_gauge_before,
        queued_gauge_after,
    })
}
