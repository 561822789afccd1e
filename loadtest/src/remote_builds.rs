//! Concurrent remote builds: each build uploads the context blobs the CAS
//! lacks, calls `memobuild.build.v1.BuildService/Build` and reads the event
//! stream until the build's result. Times to the first event (Accepted) and
//! to the result are taken from the Build call, the upload excluded (it is
//! timed on its own).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use memobuild_proto::build::build_event::Kind;
use memobuild_proto::build::build_service_client::BuildServiceClient;
use memobuild_proto::build::{export, BlobDigest, BuildRequest, Export};
use memobuild_proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use memobuild_proto::reapi::FindMissingBlobsRequest;
use memobuild_proto::{Digest, DigestFunction};
use serde::Serialize;

use crate::build_mix::{BuildKind, BuildMix};
use crate::build_variant::{self, BuildVariant};
use crate::connection::{self, Channel, ChannelOptions};
use crate::process_stats;
use crate::stats::LatencySummary;
use crate::upload::{self, Uploader};

/// How often the server's resident memory is sampled during the run.
const RSS_SAMPLE_EVERY: Duration = Duration::from_millis(50);

pub struct RemoteBuildsOptions {
    pub channel: ChannelOptions,
    pub connections: usize,
    pub instance_name: String,
    pub builds: usize,
    pub concurrency: usize,
    pub mix: BuildMix,
    /// The image RUN steps start from; `None` for `FROM scratch` and no RUN.
    pub base: Option<String>,
    /// Ask the cluster for an image export (as `-o type=oci` does).
    pub export_image: bool,
    /// Names the run: changed and cold builds are unique to it.
    pub seed: u64,
    /// How long one build may take before it counts as failed.
    pub timeout: Duration,
    pub server_pid: Option<u32>,
}

#[derive(Debug, Serialize)]
pub struct RemoteBuildsReport {
    pub benchmark: &'static str,
    pub endpoint: String,
    pub seed: u64,
    pub builds: usize,
    pub concurrency: usize,
    pub connections: usize,
    pub mix: String,
    pub base: Option<String>,
    pub export_image: bool,
    /// The untimed cached-kind build made first (it imports the base image
    /// and fills the cache the cached builds hit).
    pub warmup_seconds: f64,
    pub wall_seconds: f64,
    pub builds_per_second: f64,
    pub succeeded: usize,
    pub failed: usize,
    /// From the Build call to the first event.
    pub first_event: Option<LatencySummary>,
    /// From the Build call to the result (or the failure).
    pub result: Option<LatencySummary>,
    /// FindMissingBlobs plus the upload of the missing context blobs.
    pub upload: Option<LatencySummary>,
    pub kinds: Vec<KindReport>,
    pub server: Option<ServerUsage>,
    pub client_cpu_seconds: Option<f64>,
    pub first_error: Option<String>,
}

impl RemoteBuildsReport {
    pub fn ok(&self) -> bool {
        self.failed == 0 && self.kinds.iter().all(|k| k.cached_builds_that_ran_steps == 0)
    }
}

/// The builds of one kind.
#[derive(Debug, Serialize)]
pub struct KindReport {
    pub kind: BuildKind,
    pub builds: usize,
    pub succeeded: usize,
    pub failed: usize,
    pub first_event: Option<LatencySummary>,
    pub result: Option<LatencySummary>,
    /// Steps the successful builds ran, and took from the cache, in all.
    pub steps_executed: u64,
    pub steps_cached: u64,
    /// Cached-kind builds whose result says a step ran (should be none).
    pub cached_builds_that_ran_steps: usize,
}

/// What the server process used during the timed builds.
#[derive(Debug, Serialize)]
pub struct ServerUsage {
    pub pid: u32,
    pub cpu_seconds: f64,
    /// CPU of its exited children (processes it waited for).
    pub children_cpu_seconds: f64,
    pub rss_before_kib: u64,
    /// The largest VmRSS sampled every 50 ms during the builds.
    pub rss_peak_kib: u64,
    pub rss_after_kib: u64,
    /// VmHWM after the builds: the peak since the process started.
    pub hwm_kib: u64,
}

/// How one build went.
struct BuildRecord {
    kind: BuildKind,
    upload_us: Option<u64>,
    first_event_us: Option<u64>,
    result_us: u64,
    /// Steps executed and cached, or why the build failed.
    outcome: Result<(u32, u32), String>,
}

/// What the tasks share.
struct Shared {
    options: RemoteBuildsOptions,
    dockerfile: String,
    kinds: Vec<BuildKind>,
    next: AtomicUsize,
    batch_limit: u64,
}

/// A task's clients, on one connection.
struct Clients {
    cas: ContentAddressableStorageClient<Channel>,
    builds: BuildServiceClient<Channel>,
}

impl Clients {
    fn new(channel: Channel) -> Self {
        Clients {
            cas: connection::cas_client(channel.clone()),
            builds: BuildServiceClient::new(channel).max_decoding_message_size(connection::MAX_DECODING_MESSAGE),
        }
    }
}

/// Puts the blobs of `variant` the CAS lacks.
async fn upload_context(clients: &mut Clients, shared: &Shared, variant: &BuildVariant) -> anyhow::Result<()> {
    let request = FindMissingBlobsRequest {
        instance_name: shared.options.instance_name.clone(),
        blob_digests: variant.blobs.iter().map(|(d, _)| d.to_proto()).collect(),
        digest_function: DigestFunction::Blake3.to_proto(),
    };
    let missing = clients.cas.find_missing_blobs(request).await.context("FindMissingBlobs")?.into_inner();
    let missing: Vec<Digest> = missing
        .missing_blob_digests
        .iter()
        .map(|d| Digest::from_proto(DigestFunction::Blake3, d))
        .collect::<Result<_, _>>()
        .context("FindMissingBlobs answered a bad digest")?;
    let blobs: Vec<(Digest, &[u8])> =
        variant.blobs.iter().filter(|(d, _)| missing.contains(d)).map(|(d, data)| (*d, data.as_slice())).collect();
    let mut uploader = Uploader {
        client: &mut clients.cas,
        instance_name: &shared.options.instance_name,
        function: DigestFunction::Blake3,
        batch_limit: shared.batch_limit,
    };
    uploader.upload(&blobs).await?;
    Ok(())
}

fn request(shared: &Shared, variant: &BuildVariant) -> BuildRequest {
    let exports = match shared.options.export_image {
        true => vec![Export { kind: export::Kind::Image as i32, compression: String::new() }],
        false => Vec::new(),
    };
    BuildRequest {
        instance_name: shared.options.instance_name.clone(),
        dockerfile_name: build_variant::DOCKERFILE_NAME.to_string(),
        dockerfile: shared.dockerfile.clone(),
        context: Some(BlobDigest::of(&variant.context.root_digest())),
        build_args: [(build_variant::SALT_ARG.to_string(), variant.salt.clone())].into(),
        exports,
        ..Default::default()
    }
}

/// Calls Build and reads events until the result; `first` is set at the
/// first event. Returns the steps executed and cached.
async fn follow_build(
    client: &mut BuildServiceClient<Channel>,
    request: BuildRequest,
    start: Instant,
    first: &mut Option<Duration>,
) -> Result<(u32, u32), String> {
    let mut events = client.build(request).await.map_err(|s| format!("Build: {s}"))?.into_inner();
    loop {
        match events.message().await {
            Ok(Some(event)) => {
                if first.is_none() {
                    *first = Some(start.elapsed());
                    if !matches!(event.kind, Some(Kind::Accepted(_))) {
                        return Err(format!("the first event is not Accepted: {:?}", event.kind));
                    }
                }
                match event.kind {
                    Some(Kind::Result(result)) => return Ok((result.steps_executed, result.steps_cached)),
                    Some(Kind::BuildFailed(failed)) => {
                        return Err(format!("build failed with code {}: {}", failed.code, failed.message))
                    }
                    _ => {}
                }
            }
            Ok(None) => return Err("the event stream ended before the build's result".to_string()),
            Err(status) => return Err(format!("event stream: {status}")),
        }
    }
}

/// Build `index`: upload, then Build until the result.
async fn one_build(clients: &mut Clients, shared: &Shared, index: usize, kind: BuildKind) -> BuildRecord {
    let mut record = BuildRecord { kind, upload_us: None, first_event_us: None, result_us: 0, outcome: Ok((0, 0)) };
    let variant = match BuildVariant::new(kind, shared.options.seed, index) {
        Ok(variant) => variant,
        Err(e) => {
            record.outcome = Err(format!("build {index}: {e:#}"));
            return record;
        }
    };
    let upload_start = Instant::now();
    if let Err(e) = upload_context(clients, shared, &variant).await {
        record.outcome = Err(format!("build {index} ({kind}): uploading the context: {e:#}"));
        return record;
    }
    record.upload_us = Some(upload_start.elapsed().as_micros() as u64);
    let start = Instant::now();
    let mut first = None;
    let followed = tokio::time::timeout(
        shared.options.timeout,
        follow_build(&mut clients.builds, request(shared, &variant), start, &mut first),
    )
    .await;
    record.result_us = start.elapsed().as_micros() as u64;
    record.first_event_us = first.map(|d| d.as_micros() as u64);
    record.outcome = match followed {
        Ok(Ok(steps)) => Ok(steps),
        Ok(Err(e)) => Err(format!("build {index} ({kind}): {e}")),
        Err(_) => Err(format!("build {index} ({kind}): no result within {:?}", shared.options.timeout)),
    };
    record
}

/// One task: takes builds until all are taken.
async fn task(mut clients: Clients, shared: Arc<Shared>) -> Vec<BuildRecord> {
    let mut records = Vec::new();
    loop {
        let index = shared.next.fetch_add(1, Ordering::Relaxed);
        let Some(&kind) = shared.kinds.get(index) else {
            return records;
        };
        records.push(one_build(&mut clients, &shared, index, kind).await);
    }
}

/// Samples the VmRSS of `pid` until aborted; the largest value seen is kept.
fn sample_rss(pid: u32, peak: Arc<AtomicU64>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(RSS_SAMPLE_EVERY);
        loop {
            every.tick().await;
            if let Ok(kib) = process_stats::resident_kib(pid) {
                peak.fetch_max(kib, Ordering::Relaxed);
            }
        }
    })
}

fn summarize(kind: BuildKind, records: &[&BuildRecord]) -> KindReport {
    let ok: Vec<(u32, u32)> = records.iter().filter_map(|r| r.outcome.as_ref().ok().copied()).collect();
    KindReport {
        kind,
        builds: records.len(),
        succeeded: ok.len(),
        failed: records.len() - ok.len(),
        first_event: LatencySummary::of(records.iter().filter_map(|r| r.first_event_us).collect()),
        result: LatencySummary::of(records.iter().map(|r| r.result_us).collect()),
        steps_executed: ok.iter().map(|&(e, _)| u64::from(e)).sum(),
        steps_cached: ok.iter().map(|&(_, c)| u64::from(c)).sum(),
        cached_builds_that_ran_steps: match kind {
            BuildKind::Cached => ok.iter().filter(|&&(executed, _)| executed > 0).count(),
            _ => 0,
        },
    }
}

pub async fn run(options: RemoteBuildsOptions) -> anyhow::Result<RemoteBuildsReport> {
    if options.builds == 0 || options.concurrency == 0 {
        bail!("--builds and --concurrency must be at least 1");
    }
    let channels = connection::connect(&options.channel, options.connections.min(options.concurrency)).await?;
    let first = channels.first().cloned().context("no channel")?;
    let batch_limit = upload::batch_limit(first.clone(), &options.instance_name, DigestFunction::Blake3, 4096).await?;
    let shared = Arc::new(Shared {
        dockerfile: build_variant::dockerfile(options.base.as_deref()),
        kinds: options.mix.kinds(options.builds),
        next: AtomicUsize::new(0),
        batch_limit,
        options,
    });

    let warmup_start = Instant::now();
    let warmup = one_build(&mut Clients::new(first), &shared, 0, BuildKind::Cached).await;
    if let Err(e) = warmup.outcome {
        bail!("the warm-up build failed: {e}");
    }
    let warmup_seconds = warmup_start.elapsed().as_secs_f64();

    let options = &shared.options;
    let server_before = match options.server_pid {
        Some(pid) => Some((
            process_stats::cpu_seconds(pid)?,
            process_stats::children_cpu_seconds(pid)?,
            process_stats::resident_kib(pid)?,
        )),
        None => None,
    };
    let rss_peak = Arc::new(AtomicU64::new(0));
    let sampler = options.server_pid.map(|pid| sample_rss(pid, rss_peak.clone()));
    let client_cpu = process_stats::cpu_seconds(std::process::id()).ok();
    let start = Instant::now();
    let tasks: Vec<_> = (0..options.concurrency.min(options.builds))
        .map(|i| tokio::spawn(task(Clients::new(channels[i % channels.len()].clone()), shared.clone())))
        .collect();
    let mut records = Vec::with_capacity(options.builds);
    for task in tasks {
        records.extend(task.await.context("a task panicked")?);
    }
    let wall = start.elapsed().max(Duration::from_nanos(1));
    if let Some(sampler) = sampler {
        sampler.abort();
    }
    let client_cpu_seconds =
        client_cpu.and_then(|before| Some(process_stats::cpu_seconds(std::process::id()).ok()? - before));
    let server = match (options.server_pid, server_before) {
        (Some(pid), Some((cpu, children, rss_before_kib))) => {
            let rss_after_kib = process_stats::resident_kib(pid)?;
            Some(ServerUsage {
                pid,
                cpu_seconds: process_stats::cpu_seconds(pid)? - cpu,
                children_cpu_seconds: process_stats::children_cpu_seconds(pid)? - children,
                rss_before_kib,
                rss_peak_kib: rss_peak.load(Ordering::Relaxed).max(rss_after_kib),
                rss_after_kib,
                hwm_kib: process_stats::peak_resident_kib(pid)?,
            })
        }
        _ => None,
    };

    let mut by_kind: BTreeMap<BuildKind, Vec<&BuildRecord>> = BTreeMap::new();
    for record in &records {
        by_kind.entry(record.kind).or_default().push(record);
    }
    let succeeded = records.iter().filter(|r| r.outcome.is_ok()).count();
    Ok(RemoteBuildsReport {
        benchmark: "builds",
        endpoint: options.channel.endpoint.clone(),
        seed: options.seed,
        builds: records.len(),
        concurrency: options.concurrency,
        connections: channels.len(),
        mix: options.mix.to_string(),
        base: options.base.clone(),
        export_image: options.export_image,
        warmup_seconds,
        wall_seconds: wall.as_secs_f64(),
        builds_per_second: records.len() as f64 / wall.as_secs_f64(),
        succeeded,
        failed: records.len() - succeeded,
        first_event: LatencySummary::of(records.iter().filter_map(|r| r.first_event_us).collect()),
        result: LatencySummary::of(records.iter().map(|r| r.result_us).collect()),
        upload: LatencySummary::of(records.iter().filter_map(|r| r.upload_us).collect()),
        kinds: by_kind.iter().map(|(&kind, records)| summarize(kind, records)).collect(),
        server,
        client_cpu_seconds,
        first_error: records.iter().find_map(|r| r.outcome.as_ref().err().cloned()),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn record(kind: BuildKind, result_us: u64, outcome: Result<(u32, u32), String>) -> BuildRecord {
        BuildRecord { kind, upload_us: Some(1), first_event_us: Some(result_us / 10), result_us, outcome }
    }

    #[test]
    fn kinds_count_failures_and_steps() {
        let records = [
            record(BuildKind::Cached, 100, Ok((0, 4))),
            record(BuildKind::Cached, 300, Ok((1, 3))),
            record(BuildKind::Cached, 200, Err("boom".into())),
        ];
        let report = summarize(BuildKind::Cached, &records.iter().collect::<Vec<_>>());
        assert_eq!((report.builds, report.succeeded, report.failed), (3, 2, 1));
        assert_eq!((report.steps_executed, report.steps_cached), (1, 7));
        assert_eq!(report.cached_builds_that_ran_steps, 1);
        assert_eq!(report.result.unwrap().max_us, 300);
        assert_eq!(report.first_event.unwrap().p50_us, 20);

        let changed = [record(BuildKind::Changed, 100, Ok((2, 2)))];
        assert_eq!(summarize(BuildKind::Changed, &changed.iter().collect::<Vec<_>>()).cached_builds_that_ran_steps, 0);
    }
}
