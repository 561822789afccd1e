//! `memobuild-loadtest`: measures any REAPI v2 server the same way.
//!
//! `find-missing` times FindMissingBlobs calls and checks every answer;
//! `bytestream` times ByteStream writes and reads of one large blob;
//! `execute` times Execute calls of distinct trivial actions, executed and
//! as cache hits; `queue-memory` measures a scheduler's memory per queued
//! action; `builds` times concurrent remote Dockerfile builds through
//! MemoBuild's BuildService; `s3-shards` times MemoBuild's sharded S3 store
//! itself against an S3-compatible server.

mod blob_source;
mod build_mix;
mod build_variant;
mod byte_stream;
mod connection;
mod execute;
mod find_missing;
mod metrics_scrape;
mod process_stats;
mod queue_memory;
mod remote_builds;
mod s3_shards;
mod size;
mod stats;
mod trivial_action;
mod upload;

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use memobuild_proto::{Compressor, DigestFunction};
use serde::Serialize;

use crate::build_mix::BuildMix;
use crate::connection::ChannelOptions;
use crate::size::{format_size, parse_size};
use crate::stats::LatencySummary;

/// Load generator for REAPI v2 servers (MemoBuild or any other).
///
/// Human-readable results go to standard output; with --json they go to
/// standard error and standard output carries one JSON object instead.
#[derive(Parser)]
#[command(name = "memobuild-loadtest", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// FindMissingBlobs latency and throughput, every answer checked.
    FindMissing(FindMissingArgs),
    /// ByteStream Write and Read throughput of one large blob.
    Bytestream(ByteStreamArgs),
    /// Execute throughput and latency of distinct `/bin/true` actions.
    Execute(ExecuteArgs),
    /// A scheduler's resident memory per queued action (run it against a
    /// scheduler with no worker, so every action stays queued).
    QueueMemory(QueueMemoryArgs),
    /// Concurrent remote Dockerfile builds through MemoBuild's BuildService
    /// (`memobuild.build.v1`): a mix of all-cached, one-step-changed and
    /// cold builds, timed to their first event and to their result.
    Builds(BuildsArgs),
    /// Upload and download MB/s of MemoBuild's sharded S3 store, with one
    /// bucket per shard, against an S3-compatible endpoint (credentials
    /// from the standard AWS environment variables).
    S3Shards(S3ShardsArgs),
}

#[derive(Args)]
struct S3ShardsArgs {
    /// The S3-compatible endpoint, e.g. http://127.0.0.1:9455.
    #[arg(long)]
    endpoint: String,
    /// Shard counts to measure, one run each.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    shards: Vec<usize>,
    /// Size of each blob (above 16MiB they go up as multipart uploads).
    #[arg(long, value_parser = parse_size, default_value = "8MiB")]
    blob_size: u64,
    /// Blobs written and read per run.
    #[arg(long, default_value_t = 32)]
    blobs: usize,
    /// Blobs in flight at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Seed naming the run's buckets and blobs [default: random].
    #[arg(long)]
    seed: Option<u64>,
    /// Print one JSON object with the figures on standard output.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct Common {
    /// The server: grpc://HOST:PORT.
    #[arg(long)]
    endpoint: String,
    /// REAPI instance name.
    #[arg(long, default_value = "")]
    instance_name: String,
    #[arg(long, value_enum, default_value_t = Function::Sha256)]
    digest_function: Function,
    /// HTTP/2 max frame size this client accepts (e.g. 1MiB); 16 KiB when unset.
    #[arg(long, value_parser = parse_frame_size)]
    max_frame_size: Option<u32>,
    /// Seed of the generated blobs [default: random].
    #[arg(long)]
    seed: Option<u64>,
    /// Print one JSON object with the figures on standard output.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct FindMissingArgs {
    #[command(flatten)]
    common: Common,
    /// Digests per FindMissingBlobs call.
    #[arg(long, default_value_t = 1000)]
    digests: usize,
    /// Timed calls in all.
    #[arg(long, default_value_t = 10_000)]
    requests: u64,
    /// Tasks issuing calls at the same time.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// HTTP/2 connections the tasks share.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Share of each call's digests that are uploaded first.
    #[arg(long, default_value_t = 0.5)]
    present_fraction: f64,
    /// Distinct digest sets; call i asks about set i mod N.
    #[arg(long, default_value_t = 1)]
    distinct_sets: usize,
    /// Untimed calls made first.
    #[arg(long, default_value_t = 100)]
    warmup: u64,
}

#[derive(Args)]
struct ByteStreamArgs {
    #[command(flatten)]
    common: Common,
    /// Blob size, e.g. 256MiB.
    #[arg(long, value_parser = parse_size)]
    size: u64,
    /// Bytes per WriteRequest.
    #[arg(long, default_value = "1MiB", value_parser = parse_size)]
    chunk: u64,
    /// Rounds; each writes a new blob, then reads it back.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    #[arg(long, value_enum, default_value_t = CompressorArg::Identity)]
    compressor: CompressorArg,
}

#[derive(Args)]
struct ExecuteArgs {
    #[command(flatten)]
    common: Common,
    /// Distinct actions; each pass runs every one once.
    #[arg(long, default_value_t = 1000)]
    actions: usize,
    /// Tasks issuing Execute calls at the same time.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// HTTP/2 connections the tasks share.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Set skip_cache_lookup on the timed `execute` pass.
    #[arg(long)]
    skip_cache_lookup: bool,
    /// execute: one timed pass. cached: an untimed pass that fills the
    /// action cache, then a timed pass that must be all cache hits. both: a
    /// timed execute pass, then a timed cache-hit pass of the same actions.
    #[arg(long, value_enum, default_value_t = PhaseArg::Execute)]
    phase: PhaseArg,
    /// Seconds one Execute may take before it counts as an error.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// The server's process id, to report the CPU time it used per pass.
    #[arg(long)]
    server_pid: Option<u32>,
    /// A platform property of every action, NAME=VALUE (repeatable), e.g.
    /// `container-image=docker://127.0.0.1:5000/img@sha256:...`.
    #[arg(long = "platform", value_parser = parse_property)]
    platform: Vec<(String, String)>,
}

fn parse_property(value: &str) -> Result<(String, String), String> {
    value
        .split_once('=')
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .ok_or_else(|| format!("{value:?} is not NAME=VALUE"))
}

#[derive(Args)]
struct QueueMemoryArgs {
    #[command(flatten)]
    common: Common,
    /// Distinct actions to queue.
    #[arg(long, default_value_t = 10_000)]
    actions: usize,
    /// Tasks submitting at the same time.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// The scheduler's process id (its VmRSS is read from /proc).
    #[arg(long)]
    pid: u32,
    /// The scheduler's admin metrics, e.g. http://127.0.0.1:9091/metrics,
    /// to check that the queue grew by --actions.
    #[arg(long)]
    metrics: Option<String>,
    /// Upload the actions here instead of to --endpoint: grpc://HOST:PORT.
    #[arg(long)]
    cas_endpoint: Option<String>,
    /// Milliseconds to wait after the last submission before reading memory.
    #[arg(long, default_value_t = 2000)]
    settle_ms: u64,
}

#[derive(Args)]
struct BuildsArgs {
    /// The server: grpc://HOST:PORT (CAS and BuildService on one endpoint).
    #[arg(long)]
    endpoint: String,
    /// REAPI instance name.
    #[arg(long, default_value = "")]
    instance_name: String,
    /// HTTP/2 max frame size this client accepts (e.g. 1MiB); 16 KiB when unset.
    #[arg(long, value_parser = parse_frame_size)]
    max_frame_size: Option<u32>,
    /// Builds in all (after one untimed warm-up build).
    #[arg(long, default_value_t = 100)]
    builds: usize,
    /// Builds in flight at once [default: all of them].
    #[arg(long)]
    concurrency: Option<usize>,
    /// HTTP/2 connections the builds share [default: one per 50 builds in flight].
    #[arg(long)]
    connections: Option<usize>,
    /// Weights of all-cached, one-step-changed and cold builds.
    #[arg(long, default_value_t = BuildMix::default())]
    mix: BuildMix,
    /// Image the builds start from, for their RUN steps (e.g.
    /// 127.0.0.1:5000/memobuild-base/busybox:1). Without it the builds are
    /// `FROM scratch` with COPY steps only.
    #[arg(long)]
    base: Option<String>,
    /// Ask for no image export (the cluster still runs every step).
    #[arg(long)]
    no_export: bool,
    /// Seconds one build may take before it counts as failed.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// The server's process id, to report its CPU time and memory.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Seed naming the run's changed and cold builds [default: random].
    #[arg(long)]
    seed: Option<u64>,
    /// Print one JSON object with the figures on standard output.
    #[arg(long)]
    json: bool,
}

/// Builds in flight per HTTP/2 connection when --connections is not given.
const BUILDS_PER_CONNECTION: usize = 50;

#[derive(Clone, Copy, ValueEnum)]
enum PhaseArg {
    Execute,
    Cached,
    Both,
}

impl From<PhaseArg> for execute::Phase {
    fn from(p: PhaseArg) -> Self {
        match p {
            PhaseArg::Execute => execute::Phase::Execute,
            PhaseArg::Cached => execute::Phase::Cached,
            PhaseArg::Both => execute::Phase::Both,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum Function {
    Sha256,
    Blake3,
}

impl From<Function> for DigestFunction {
    fn from(f: Function) -> Self {
        match f {
            Function::Sha256 => DigestFunction::Sha256,
            Function::Blake3 => DigestFunction::Blake3,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum CompressorArg {
    Identity,
    Zstd,
}

impl From<CompressorArg> for Compressor {
    fn from(c: CompressorArg) -> Self {
        match c {
            CompressorArg::Identity => Compressor::Identity,
            CompressorArg::Zstd => Compressor::Zstd,
        }
    }
}

fn parse_frame_size(text: &str) -> Result<u32, String> {
    let size = parse_size(text)?;
    // RFC 9113 §4.2: between 2^14 and 2^24 - 1.
    if !(1 << 14..1 << 24).contains(&size) {
        return Err(format!("HTTP/2 frame sizes lie between 16KiB and 16MiB - 1, got {text}"));
    }
    Ok(size as u32)
}

impl Common {
    fn channel(&self) -> ChannelOptions {
        ChannelOptions { endpoint: self.endpoint.clone(), max_frame_size: self.max_frame_size }
    }

    fn seed(&self) -> u64 {
        self.seed.unwrap_or_else(|| uuid::Uuid::new_v4().as_u64_pair().0)
    }
}

/// Where the human-readable lines go: stdout, or stderr under --json.
struct Output {
    json: bool,
}

impl Output {
    fn line(&self, text: &str) -> anyhow::Result<()> {
        if self.json {
            writeln!(std::io::stderr().lock(), "{text}")?;
        } else {
            writeln!(std::io::stdout().lock(), "{text}")?;
        }
        Ok(())
    }

    fn json(&self, report: &impl Serialize) -> anyhow::Result<()> {
        if self.json {
            let text = serde_json::to_string(report).context("encoding the report")?;
            writeln!(std::io::stdout().lock(), "{text}")?;
        }
        Ok(())
    }
}

async fn find_missing(args: FindMissingArgs) -> anyhow::Result<bool> {
    let out = Output { json: args.common.json };
    let options = find_missing::FindMissingOptions {
        channel: args.common.channel(),
        connections: args.connections,
        instance_name: args.common.instance_name.clone(),
        digest_function: args.common.digest_function.into(),
        digests: args.digests,
        distinct_sets: args.distinct_sets,
        requests: args.requests,
        warmup: args.warmup,
        concurrency: args.concurrency,
        present_fraction: args.present_fraction,
        seed: args.common.seed(),
    };
    let report = find_missing::run(options).await?;
    out.line(&format!(
        "find-missing: {} calls of {} digests ({} present, {}), concurrency {}, {} connection(s)",
        report.requests,
        report.digests_per_call,
        report.present_per_set,
        report.digest_function,
        report.concurrency,
        report.connections
    ))?;
    if let Some(l) = &report.latency {
        out.line(&format!(
            "latency us: p50 {} p90 {} p99 {} p99.9 {} max {} (mean {:.0})",
            l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us, l.mean_us
        ))?;
    }
    out.line(&format!("throughput: {:.0} calls/s over {:.2} s", report.calls_per_second, report.wall_seconds))?;
    out.line(&format!("answers: {} wrong, {} failed", report.wrong_answers, report.failed_calls))?;
    if let Some(e) = &report.first_error {
        out.line(&format!("first error: {e}"))?;
    }
    out.json(&report)?;
    Ok(report.wrong_answers == 0 && report.failed_calls == 0)
}

async fn bytestream(args: ByteStreamArgs) -> anyhow::Result<bool> {
    let out = Output { json: args.common.json };
    let compressor: Compressor = args.compressor.into();
    let options = byte_stream::ByteStreamOptions {
        channel: args.common.channel(),
        instance_name: args.common.instance_name.clone(),
        digest_function: args.common.digest_function.into(),
        size: args.size,
        chunk: usize::try_from(args.chunk).context("--chunk does not fit in memory")?,
        repeat: args.repeat,
        compressor,
        seed: args.common.seed(),
    };
    let report = byte_stream::run(options).await?;
    out.line(&format!(
        "bytestream: {} blob ({}, {}), {} chunks, {} repeat(s); MB = 10^6 bytes of blob",
        format_size(report.size_bytes),
        report.compressor,
        report.digest_function,
        format_size(report.chunk_bytes as u64),
        report.repeats.len()
    ))?;
    for (i, r) in report.repeats.iter().enumerate() {
        out.line(&format!(
            "  #{}: write {:.0} MB/s ({:.3} s, wire {:.0} MB/s)  read {:.0} MB/s ({:.3} s, wire {:.0} MB/s)",
            i + 1,
            r.write_mb_per_s,
            r.write_seconds,
            r.write_wire_mb_per_s,
            r.read_mb_per_s,
            r.read_seconds,
            r.read_wire_mb_per_s
        ))?;
    }
    out.line(&format!(
        "median: write {:.0} MB/s, read {:.0} MB/s",
        report.median_write_mb_per_s.unwrap_or(0.0),
        report.median_read_mb_per_s.unwrap_or(0.0)
    ))?;
    out.json(&report)?;
    Ok(true)
}

async fn execute(args: ExecuteArgs) -> anyhow::Result<bool> {
    let out = Output { json: args.common.json };
    let options = execute::ExecuteOptions {
        channel: args.common.channel(),
        connections: args.connections,
        instance_name: args.common.instance_name.clone(),
        digest_function: args.common.digest_function.into(),
        actions: args.actions,
        concurrency: args.concurrency,
        skip_cache_lookup: args.skip_cache_lookup,
        phase: args.phase.into(),
        seed: args.common.seed(),
        timeout: Duration::from_secs(args.timeout),
        server_pid: args.server_pid,
        platform: args.platform,
    };
    let report = execute::run(options).await?;
    out.line(&format!(
        "execute: {} distinct {} actions ({}, seed {}), concurrency {}, {} connection(s)",
        report.actions,
        trivial_action::PROGRAM,
        report.digest_function,
        report.seed,
        report.concurrency,
        report.connections
    ))?;
    for pass in &report.passes {
        out.line(&format!(
            "{} pass (skip_cache_lookup {}): {:.0} actions/s over {:.2} s; {} cached, {} errors",
            pass.pass, pass.skip_cache_lookup, pass.actions_per_second, pass.wall_seconds, pass.cached, pass.errors
        ))?;
        if let Some(l) = &pass.latency {
            out.line(&format!(
                "  latency us: p50 {} p90 {} p99 {} max {} (mean {:.0})",
                l.p50_us, l.p90_us, l.p99_us, l.max_us, l.mean_us
            ))?;
        }
        let per_action = |cpu: Option<f64>| cpu.map(|s| format!("{:.0} us/action", s * 1e6 / pass.actions as f64));
        if let Some(server) = per_action(pass.server_cpu_seconds) {
            out.line(&format!("  server CPU: {:.2} s, {server}", pass.server_cpu_seconds.unwrap_or_default()))?;
        }
        if let Some(children) = per_action(pass.server_children_cpu_seconds) {
            out.line(&format!(
                "  server's children (the commands run) CPU: {:.2} s, {children}",
                pass.server_children_cpu_seconds.unwrap_or_default()
            ))?;
        }
        if let Some(client) = per_action(pass.client_cpu_seconds) {
            out.line(&format!("  client CPU: {:.2} s, {client}", pass.client_cpu_seconds.unwrap_or_default()))?;
        }
        if pass.expect_cached && pass.cached != pass.actions as u64 {
            out.line(&format!("  expected {} cache hits, got {}", pass.actions, pass.cached))?;
        }
        if let Some(e) = &pass.first_error {
            out.line(&format!("  first error: {e}"))?;
        }
    }
    out.json(&report)?;
    Ok(report.ok())
}

async fn queue_memory(args: QueueMemoryArgs) -> anyhow::Result<bool> {
    let out = Output { json: args.common.json };
    let options = queue_memory::QueueMemoryOptions {
        channel: args.common.channel(),
        cas: args
            .cas_endpoint
            .clone()
            .map(|endpoint| connection::ChannelOptions { endpoint, max_frame_size: args.common.max_frame_size }),
        instance_name: args.common.instance_name.clone(),
        digest_function: args.common.digest_function.into(),
        actions: args.actions,
        concurrency: args.concurrency,
        seed: args.common.seed(),
        pid: args.pid,
        metrics: args.metrics.clone(),
        settle: Duration::from_millis(args.settle_ms),
    };
    let report = queue_memory::run(options).await?;
    out.line(&format!(
        "queue-memory: {} actions submitted in {:.2} s: {} queued, {} done at once, {} errors",
        report.actions, report.submit_seconds, report.queued, report.done_at_once, report.errors
    ))?;
    out.line(&format!(
        "scheduler (pid {}) VmRSS: {} KiB before, {} KiB after: {:+} bytes, {} bytes per queued action",
        report.pid,
        report.rss_before_kib,
        report.rss_after_kib,
        report.rss_delta_bytes,
        report.bytes_per_queued_action.map_or("-".to_string(), |b| format!("{b:.0}"))
    ))?;
    if let (Some(before), Some(after)) = (report.queued_gauge_before, report.queued_gauge_after) {
        out.line(&format!("{}: {before} before, {after} after", queue_memory::QUEUED_GAUGE))?;
    }
    if let Some(e) = &report.first_error {
        out.line(&format!("first error: {e}"))?;
    }
    out.json(&report)?;
    Ok(report.ok())
}

/// `p50 .. max` of microsecond latencies, printed in milliseconds.
fn millis(l: &LatencySummary) -> String {
    let ms = |us: u64| format!("{:.1}", us as f64 / 1000.0);
    format!(
        "p50 {} p90 {} p99 {} max {} (mean {:.1}, n {})",
        ms(l.p50_us),
        ms(l.p90_us),
        ms(l.p99_us),
        ms(l.max_us),
        l.mean_us / 1000.0,
        l.count
    )
}

async fn s3_shards(args: S3ShardsArgs) -> anyhow::Result<bool> {
    let out = Output { json: args.json };
    let options = s3_shards::S3ShardsOptions {
        endpoint: args.endpoint,
        shard_counts: args.shards,
        blob_bytes: args.blob_size,
        blobs: args.blobs,
        concurrency: args.concurrency.max(1),
        seed: args.seed.unwrap_or_else(|| uuid::Uuid::new_v4().as_u64_pair().0),
    };
    let report = s3_shards::run(options).await?;
    out.line(&format!(
        "s3-shards: {} blobs of {} at {}, {} in flight; MB = 10^6 bytes",
        report.blobs,
        format_size(report.blob_bytes),
        report.endpoint,
        report.concurrency
    ))?;
    for run in &report.runs {
        out.line(&format!(
            "  {} shard(s) {:?}: put {:.1} MB/s ({:.1} per shard, {:.2} s)  get {:.1} MB/s ({:.1} per shard, {:.2} s)",
            run.shards,
            run.blobs_per_shard,
            run.put_mb_per_s,
            run.put_mb_per_s_per_shard,
            run.put_seconds,
            run.get_mb_per_s,
            run.get_mb_per_s_per_shard,
            run.get_seconds
        ))?;
    }
    out.json(&report)?;
    Ok(true)
}

async fn builds(args: BuildsArgs) -> anyhow::Result<bool> {
    let out = Output { json: args.json };
    let concurrency = args.concurrency.unwrap_or(args.builds);
    let options = remote_builds::RemoteBuildsOptions {
        channel: ChannelOptions { endpoint: args.endpoint.clone(), max_frame_size: args.max_frame_size },
        connections: args.connections.unwrap_or_else(|| concurrency.div_ceil(BUILDS_PER_CONNECTION)).max(1),
        instance_name: args.instance_name.clone(),
        builds: args.builds,
        concurrency,
        mix: args.mix,
        base: args.base.clone(),
        export_image: !args.no_export,
        seed: args.seed.unwrap_or_else(|| uuid::Uuid::new_v4().as_u64_pair().0),
        timeout: Duration::from_secs(args.timeout),
        server_pid: args.server_pid,
    };
    let report = remote_builds::run(options).await?;
    out.line(&format!(
        "builds: {} remote builds (mix cached:changed:cold {}, base {}, image export {}), concurrency {}, \
         {} connection(s), seed {}",
        report.builds,
        report.mix,
        report.base.as_deref().unwrap_or("scratch"),
        if report.export_image { "yes" } else { "no" },
        report.concurrency,
        report.connections,
        report.seed
    ))?;
    out.line(&format!("warm-up build: {:.2} s", report.warmup_seconds))?;
    out.line(&format!(
        "{} succeeded, {} failed; {:.1} builds/s over {:.2} s",
        report.succeeded, report.failed, report.builds_per_second, report.wall_seconds
    ))?;
    if let Some(l) = &report.first_event {
        out.line(&format!("first event ms: {}", millis(l)))?;
    }
    if let Some(l) = &report.result {
        out.line(&format!("result ms:      {}", millis(l)))?;
    }
    if let Some(l) = &report.upload {
        out.line(&format!("context upload ms (before Build): {}", millis(l)))?;
    }
    for kind in &report.kinds {
        out.line(&format!(
            "  {}: {} builds, {} failed; steps executed {}, cached {}",
            kind.kind, kind.builds, kind.failed, kind.steps_executed, kind.steps_cached
        ))?;
        if let Some(l) = &kind.first_event {
            out.line(&format!("    first event ms: {}", millis(l)))?;
        }
        if let Some(l) = &kind.result {
            out.line(&format!("    result ms:      {}", millis(l)))?;
        }
        if kind.cached_builds_that_ran_steps > 0 {
            out.line(&format!("    {} cached builds ran a step (expected none)", kind.cached_builds_that_ran_steps))?;
        }
    }
    if let Some(s) = &report.server {
        out.line(&format!(
            "server (pid {}): CPU {:.2} s ({:.1} ms/build), children CPU {:.2} s; VmRSS {} KiB before, \
             peak {} KiB, {} KiB after; VmHWM {} KiB",
            s.pid,
            s.cpu_seconds,
            s.cpu_seconds * 1000.0 / report.builds as f64,
            s.children_cpu_seconds,
            s.rss_before_kib,
            s.rss_peak_kib,
            s.rss_after_kib,
            s.hwm_kib
        ))?;
    }
    if let Some(client) = report.client_cpu_seconds {
        out.line(&format!("client CPU: {client:.2} s"))?;
    }
    if let Some(e) = &report.first_error {
        out.line(&format!("first error: {e}"))?;
    }
    out.json(&report)?;
    Ok(report.ok())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::FindMissing(args) => find_missing(args).await,
            Command::Bytestream(args) => bytestream(args).await,
            Command::Execute(args) => execute(args).await,
            Command::QueueMemory(args) => queue_memory(args).await,
            Command::Builds(args) => builds(args).await,
            Command::S3Shards(args) => s3_shards(args).await,
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("error: some calls failed, gave wrong answers or missed what was expected (see above)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_sizes_stay_in_the_http2_range() {
        assert_eq!(parse_frame_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_frame_size("16KiB"), Ok(1 << 14));
        assert!(parse_frame_size("1KiB").is_err());
        assert!(parse_frame_size("16MiB").is_err());
    }

    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
