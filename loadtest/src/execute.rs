//! Remote execution throughput: upload distinct trivial actions, then time
//! Execute calls from concurrent tasks, each read until its operation is
//! done and its ExecuteResponse checked.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use memobuild_proto::longrunning::{operation, Operation};
use memobuild_proto::reapi::execution_client::ExecutionClient;
use memobuild_proto::reapi::{ExecuteRequest, ExecuteResponse};
use memobuild_proto::{Digest, DigestFunction};
use prost::Message;
use serde::Serialize;

use crate::connection::{self, Channel, ChannelOptions};
use crate::process_stats;
use crate::stats::LatencySummary;
use crate::trivial_action::upload_trivial_actions;

/// Which timed passes over the actions a run makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// One timed pass (with `skip_cache_lookup` as asked).
    Execute,
    /// An untimed pass that fills the action cache, then a timed pass whose
    /// answers must all be cache hits.
    Cached,
    /// A timed pass (with `skip_cache_lookup` as asked), then a timed pass
    /// of the same actions whose answers must all be cache hits.
    Both,
}

pub struct ExecuteOptions {
    pub channel: ChannelOptions,
    pub connections: usize,
    pub instance_name: String,
    pub digest_function: DigestFunction,
    pub actions: usize,
    pub concurrency: usize,
    pub skip_cache_lookup: bool,
    pub phase: Phase,
    /// Names the run: the same seed gives the same action digests.
    pub seed: u64,
    /// How long one Execute may take before it counts as an error.
    pub timeout: Duration,
    /// The server's process, to report its CPU time per pass.
    pub server_pid: Option<u32>,
    /// Platform properties of every action.
    pub platform: Vec<(String, String)>,
}

#[derive(Debug, Serialize)]
pub struct ExecuteReport {
    pub benchmark: &'static str,
    pub endpoint: String,
    pub digest_function: String,
    pub seed: u64,
    pub actions: usize,
    pub concurrency: usize,
    pub connections: usize,
    pub upload_seconds: f64,
    pub passes: Vec<PassReport>,
}

impl ExecuteReport {
    pub fn ok(&self) -> bool {
        self.passes.iter().all(PassReport::ok)
    }
}

/// One timed pass over the actions.
#[derive(Debug, Serialize)]
pub struct PassReport {
    /// `execute` or `cached`.
    pub pass: &'static str,
    pub skip_cache_lookup: bool,
    /// Whether every answer had to be a cache hit.
    pub expect_cached: bool,
    pub actions: usize,
    pub wall_seconds: f64,
    pub actions_per_second: f64,
    pub latency: Option<LatencySummary>,
    /// Answers with `cached_result = true`.
    pub cached: u64,
    /// Calls that failed, timed out, or answered with a non-OK status or a
    /// non-zero exit code.
    pub errors: u64,
    pub first_error: Option<String>,
    /// CPU seconds the server process used during the pass, if its pid was given.
    pub server_cpu_seconds: Option<f64>,
    /// CPU seconds of the server's exited children (the commands its local
    /// worker ran) during the pass.
    pub server_children_cpu_seconds: Option<f64>,
    /// CPU seconds this load generator used during the pass.
    pub client_cpu_seconds: Option<f64>,
}

impl PassReport {
    pub fn ok(&self) -> bool {
        self.errors == 0 && (!self.expect_cached || self.cached == self.actions as u64)
    }
}

/// What an operation says once it is done: `Some(Ok(cached_result))` for a
/// successful run (status OK, exit code 0), `Some(Err(why))` for anything
/// else, `None` while it is not done.
pub fn outcome(operation: &Operation) -> Option<Result<bool, String>> {
    if !operation.done {
        return None;
    }
    let name = &operation.name;
    Some(match &operation.result {
        None => Err(format!("operation {name} is done without a result")),
        Some(operation::Result::Error(status)) => {
            Err(format!("operation {name} failed with code {}: {}", status.code, status.message))
        }
        Some(operation::Result::Response(any)) => match ExecuteResponse::decode(any.value.as_slice()) {
            Err(e) => Err(format!("operation {name}: response {:?} is not an ExecuteResponse: {e}", any.type_url)),
            Ok(response) => response_outcome(name, &response),
        },
    })
}

fn response_outcome(name: &str, response: &ExecuteResponse) -> Result<bool, String> {
    if let Some(status) = response.status.as_ref().filter(|s| s.code != 0) {
        return Err(format!("operation {name}: status code {}: {}", status.code, status.message));
    }
    match &response.result {
        None => Err(format!("operation {name}: no ActionResult ({})", response.message)),
        Some(result) if result.exit_code != 0 => {
            Err(format!("operation {name}: exit code {} ({})", result.exit_code, response.message))
        }
        Some(_) => Ok(response.cached_result),
    }
}

/// Runs one action: Execute, then read the stream until the operation is done.
async fn execute_one(client: &mut ExecutionClient<Channel>, request: ExecuteRequest) -> Result<bool, String> {
    let mut stream = client.execute(request).await.map_err(|s| format!("Execute: {s}"))?.into_inner();
    loop {
        match stream.message().await {
            Ok(Some(operation)) => {
                if let Some(outcome) = outcome(&operation) {
                    return outcome;
                }
            }
            Ok(None) => return Err("the Execute stream ended before the operation was done".to_string()),
            Err(status) => return Err(format!("Execute stream: {status}")),
        }
    }
}

/// What the tasks of one pass share.
struct Shared {
    requests: Vec<ExecuteRequest>,
    next: AtomicUsize,
    timeout: Duration,
    cached: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Shared {
    fn record_error(&self, message: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut slot) = self.first_error.lock() {
            slot.get_or_insert(message);
        }
    }
}

/// One task: takes actions until all are taken; returns latencies in µs.
async fn task(mut client: ExecutionClient<Channel>, shared: Arc<Shared>) -> Vec<u64> {
    let mut latencies = Vec::new();
    loop {
        let index = shared.next.fetch_add(1, Ordering::Relaxed);
        let Some(request) = shared.requests.get(index) else {
            return latencies;
        };
        let start = Instant::now();
        let result = tokio::time::timeout(shared.timeout, execute_one(&mut client, request.clone())).await;
        latencies.push(start.elapsed().as_micros() as u64);
        match result {
            Ok(Ok(cached)) => {
                if cached {
                    shared.cached.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(Err(e)) => shared.record_error(format!("action {index}: {e}")),
            Err(_) => shared.record_error(format!("action {index}: no answer within {:?}", shared.timeout)),
        }
    }
}

/// One pass over `actions` from `concurrency` tasks spread over `channels`.
async fn pass(
    options: &ExecuteOptions,
    channels: &[Channel],
    actions: &[Digest],
    skip_cache_lookup: bool,
    expect_cached: bool,
) -> anyhow::Result<PassReport> {
    let requests = actions
        .iter()
        .map(|digest| ExecuteRequest {
            instance_name: options.instance_name.clone(),
            skip_cache_lookup,
            action_digest: Some(digest.to_proto()),
            digest_function: options.digest_function.to_proto(),
            ..Default::default()
        })
        .collect();
    let shared = Arc::new(Shared {
        requests,
        next: AtomicUsize::new(0),
        timeout: options.timeout,
        cached: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        first_error: Mutex::new(None),
    });
    let server_cpu = options.server_pid.map(process_stats::cpu_seconds).transpose()?;
    let children_cpu = options.server_pid.map(process_stats::children_cpu_seconds).transpose()?;
    let client_cpu = process_stats::cpu_seconds(std::process::id()).ok();
    let start = Instant::now();
    let tasks: Vec<_> = (0..options.concurrency)
        .map(|i| {
            let client = ExecutionClient::new(channels[i % channels.len()].clone())
                .max_decoding_message_size(connection::MAX_DECODING_MESSAGE);
            tokio::spawn(task(client, shared.clone()))
        })
        .collect();
    let mut latencies = Vec::with_capacity(actions.len());
    for task in tasks {
        latencies.extend(task.await.context("a task panicked")?);
    }
    let wall = start.elapsed().max(Duration::from_nanos(1));
    let server_cpu_seconds = match (options.server_pid, server_cpu) {
        (Some(pid), Some(before)) => Some(process_stats::cpu_seconds(pid)? - before),
        _ => None,
    };
    let server_children_cpu_seconds = match (options.server_pid, children_cpu) {
        (Some(pid), Some(before)) => Some(process_stats::children_cpu_seconds(pid)? - before),
        _ => None,
    };
    let client_cpu_seconds =
        client_cpu.and_then(|before| Some(process_stats::cpu_seconds(std::process::id()).ok()? - before));
    Ok(PassReport {
        pass: if expect_cached { "cached" } else { "execute" },
        skip_cache_lookup,
        expect_cached,
        actions: actions.len(),
        wall_seconds: wall.as_secs_f64(),
        actions_per_second: actions.len() as f64 / wall.as_secs_f64(),
        latency: LatencySummary::of(latencies),
        cached: shared.cached.load(Ordering::Relaxed),
        errors: shared.errors.load(Ordering::Relaxed),
        first_error: shared.first_error.lock().ok().and_then(|mut e| e.take()),
        server_cpu_seconds,
        server_children_cpu_seconds,
        client_cpu_seconds,
    })
}

pub async fn run(options: ExecuteOptions) -> anyhow::Result<ExecuteReport> {
    if options.actions == 0 || options.concurrency == 0 {
        bail!("--actions and --concurrency must be at least 1");
    }
    let channels = connection::connect(&options.channel, options.connections).await?;
    let first = channels.first().cloned().context("no channel")?;

    let upload_start = Instant::now();
    let digests = upload_trivial_actions(
        first,
        &options.instance_name,
        options.digest_function,
        options.seed,
        options.actions,
        &options.platform,
    )
    .await?;
    let upload_seconds = upload_start.elapsed().as_secs_f64();
    let mut passes = Vec::new();
    match options.phase {
        Phase::Execute => {
            passes.push(pass(&options, &channels, &digests, options.skip_cache_lookup, false).await?);
        }
        Phase::Cached => {
            let fill = pass(&options, &channels, &digests, false, false).await?;
            if fill.errors > 0 {
                bail!(
                    "filling the action cache: {} of {} actions failed; first: {}",
                    fill.errors,
                    fill.actions,
                    fill.first_error.unwrap_or_default()
                );
            }
            passes.push(pass(&options, &channels, &digests, false, true).await?);
        }
        Phase::Both => {
            passes.push(pass(&options, &channels, &digests, options.skip_cache_lookup, false).await?);
            passes.push(pass(&options, &channels, &digests, false, true).await?);
        }
    }

    Ok(ExecuteReport {
        benchmark: "execute",
        endpoint: options.channel.endpoint.clone(),
        digest_function: options.digest_function.to_string(),
        seed: options.seed,
        actions: options.actions,
        concurrency: options.concurrency,
        connections: channels.len(),
        upload_seconds,
        passes,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use memobuild_proto::protobuf::Any;
    use memobuild_proto::reapi::ActionResult;
    use memobuild_proto::rpc::Status;

    use super::*;

    fn done_with(response: ExecuteResponse) -> Operation {
        Operation {
            name: "op".into(),
            done: true,
            result: Some(operation::Result::Response(Any {
                type_url: "type.googleapis.com/build.bazel.remote.execution.v2.ExecuteResponse".into(),
                value: response.encode_to_vec(),
            })),
            ..Default::default()
        }
    }

    #[test]
    fn only_done_operations_have_an_outcome() {
        assert_eq!(outcome(&Operation { name: "op".into(), ..Default::default() }), None);
    }

    #[test]
    fn success_needs_status_ok_and_exit_code_zero() {
        let ok = |cached| ExecuteResponse {
            result: Some(ActionResult::default()),
            cached_result: cached,
            ..Default::default()
        };
        assert_eq!(outcome(&done_with(ok(false))), Some(Ok(false)));
        assert_eq!(outcome(&done_with(ok(true))), Some(Ok(true)));

        let failed_exit =
            ExecuteResponse { result: Some(ActionResult { exit_code: 1, ..Default::default() }), ..Default::default() };
        assert!(outcome(&done_with(failed_exit)).unwrap().unwrap_err().contains("exit code 1"));

        let bad_status = ExecuteResponse {
            result: Some(ActionResult::default()),
            status: Some(Status { code: 9, message: "no worker".into(), ..Default::default() }),
            ..Default::default()
        };
        assert!(outcome(&done_with(bad_status)).unwrap().unwrap_err().contains("no worker"));

        let no_result = ExecuteResponse::default();
        assert!(outcome(&done_with(no_result)).unwrap().unwrap_err().contains("no ActionResult"));

        let error = Operation {
            name: "op".into(),
            done: true,
            result: Some(operation::Result::Error(Status { code: 13, message: "boom".into(), ..Default::default() })),
            ..Default::default()
        };
        assert!(outcome(&error).unwrap().unwrap_err().contains("boom"));
    }
}
