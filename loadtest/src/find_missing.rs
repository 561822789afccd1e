//! FindMissingBlobs latency: upload part of a set of small blobs, then ask
//! for the whole set again and again from concurrent tasks, checking every
//! answer against the set that was left out.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use memobuild_proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use memobuild_proto::reapi::FindMissingBlobsRequest;
use memobuild_proto::{reapi, Digest, DigestFunction};
use serde::Serialize;

use crate::blob_source::{BlobSource, Content};
use crate::connection::{self, Channel, ChannelOptions};
use crate::stats::LatencySummary;
use crate::upload::{self, Uploader};

/// Sizes of the generated blobs: small, like most of a build's inputs.
const MIN_BLOB: u64 = 64;
const MAX_BLOB: u64 = 4096;

pub struct FindMissingOptions {
    pub channel: ChannelOptions,
    pub connections: usize,
    pub instance_name: String,
    pub digest_function: DigestFunction,
    pub digests: usize,
    pub distinct_sets: usize,
    pub requests: u64,
    pub warmup: u64,
    pub concurrency: usize,
    pub present_fraction: f64,
    pub seed: u64,
}

#[derive(Debug, Serialize)]
pub struct FindMissingReport {
    pub benchmark: &'static str,
    pub endpoint: String,
    pub digest_function: String,
    pub digests_per_call: usize,
    pub distinct_sets: usize,
    pub present_per_set: usize,
    pub requests: u64,
    pub concurrency: usize,
    pub connections: usize,
    pub wall_seconds: f64,
    pub calls_per_second: f64,
    pub latency: Option<LatencySummary>,
    pub wrong_answers: u64,
    pub failed_calls: u64,
    pub first_error: Option<String>,
}

/// One request the workers send, with the answer it must get.
struct Probe {
    request: FindMissingBlobsRequest,
    absent: HashSet<(String, i64)>,
}

impl Probe {
    /// Whether `missing` is exactly the absent set, each digest once.
    fn check(&self, missing: &[reapi::Digest]) -> Result<(), String> {
        if missing.len() != self.absent.len() {
            return Err(format!("{} digests reported missing, expected {}", missing.len(), self.absent.len()));
        }
        let mut seen = HashSet::with_capacity(missing.len());
        for d in missing {
            let key = (d.hash.clone(), d.size_bytes);
            if !self.absent.contains(&key) {
                return Err(format!("{}/{} reported missing but was uploaded", d.hash, d.size_bytes));
            }
            if !seen.insert(key) {
                return Err(format!("{}/{} reported missing twice", d.hash, d.size_bytes));
            }
        }
        Ok(())
    }
}

/// A blob of the set, with whether it is uploaded.
struct SetBlob {
    digest: Digest,
    data: Vec<u8>,
    present: bool,
}

/// `count` distinct small blobs, the first `present` of them marked for
/// upload, shuffled so present and absent digests interleave.
fn generate_set(source: &mut BlobSource, function: DigestFunction, count: usize, present: usize) -> Vec<SetBlob> {
    let mut blobs: Vec<SetBlob> = (0..count)
        .map(|i| {
            let size = MIN_BLOB + source.next_u64() % (MAX_BLOB - MIN_BLOB + 1);
            let mut data = vec![0u8; size as usize];
            source.fill(&mut data, Content::Random);
            SetBlob { digest: Digest::of(function, &data), data, present: i < present }
        })
        .collect();
    for i in (1..blobs.len()).rev() {
        let j = (source.next_u64() % (i as u64 + 1)) as usize;
        blobs.swap(i, j);
    }
    blobs
}

/// What the workers share.
struct Shared {
    probes: Vec<Probe>,
    next: AtomicU64,
    requests: u64,
    wrong: AtomicU64,
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Shared {
    fn record_error(&self, message: String) {
        if let Ok(mut slot) = self.first_error.lock() {
            slot.get_or_insert(message);
        }
    }
}

/// One worker: takes call numbers until all are taken; returns latencies.
async fn worker(mut client: ContentAddressableStorageClient<Channel>, shared: Arc<Shared>) -> Vec<u64> {
    let mut latencies = Vec::new();
    loop {
        let call = shared.next.fetch_add(1, Ordering::Relaxed);
        if call >= shared.requests {
            return latencies;
        }
        let probe = &shared.probes[(call % shared.probes.len() as u64) as usize];
        let request = probe.request.clone();
        let start = Instant::now();
        let result = client.find_missing_blobs(request).await;
        let elapsed = start.elapsed();
        latencies.push(elapsed.as_micros() as u64);
        match result {
            Ok(response) => {
                if let Err(e) = probe.check(&response.into_inner().missing_blob_digests) {
                    shared.wrong.fetch_add(1, Ordering::Relaxed);
                    shared.record_error(format!("call {call}: wrong answer: {e}"));
                }
            }
            Err(status) => {
                shared.failed.fetch_add(1, Ordering::Relaxed);
                shared.record_error(format!("call {call}: {status}"));
            }
        }
    }
}

pub async fn run(options: FindMissingOptions) -> anyhow::Result<FindMissingReport> {
    if !(0.0..=1.0).contains(&options.present_fraction) {
        bail!("--present-fraction must lie between 0 and 1, got {}", options.present_fraction);
    }
    if options.digests == 0 || options.distinct_sets == 0 || options.concurrency == 0 {
        bail!("--digests, --distinct-sets and --concurrency must be at least 1");
    }
    let channels = connection::connect(&options.channel, options.connections).await?;
    let first = channels.first().cloned().context("no channel")?;
    let batch_limit =
        upload::batch_limit(first.clone(), &options.instance_name, options.digest_function, MAX_BLOB).await?;

    let present = (options.digests as f64 * options.present_fraction).round() as usize;
    let mut source = BlobSource::new(options.seed);
    let mut setup = connection::cas_client(first);
    let mut probes = Vec::with_capacity(options.distinct_sets);
    let mut uploaded = 0usize;
    let mut batches = 0usize;
    for _ in 0..options.distinct_sets {
        let set = generate_set(&mut source, options.digest_function, options.digests, present);
        let to_upload: Vec<(Digest, &[u8])> =
            set.iter().filter(|b| b.present).map(|b| (b.digest, b.data.as_slice())).collect();
        let mut uploader = Uploader {
            client: &mut setup,
            instance_name: &options.instance_name,
            function: options.digest_function,
            batch_limit,
        };
        batches += uploader.upload(&to_upload).await?;
        uploaded += to_upload.len();
        probes.push(Probe {
            request: FindMissingBlobsRequest {
                instance_name: options.instance_name.clone(),
                blob_digests: set.iter().map(|b| b.digest.to_proto()).collect(),
                digest_function: options.digest_function.to_proto(),
            },
            absent: set.iter().filter(|b| !b.present).map(|b| (b.digest.hex(), b.digest.size() as i64)).collect(),
        });
    }
    eprintln!(
        "uploaded {uploaded} blobs in {batches} BatchUpdateBlobs calls; {} digest set(s) of {} ({} present each)",
        options.distinct_sets, options.digests, present
    );

    // Warm-up: connection set-up and first-touch costs stay out of the figures.
    for call in 0..options.warmup {
        let probe = &probes[(call % probes.len() as u64) as usize];
        let response = setup.find_missing_blobs(probe.request.clone()).await.context("FindMissingBlobs (warm-up)")?;
        if let Err(e) = probe.check(&response.into_inner().missing_blob_digests) {
            bail!("FindMissingBlobs (warm-up) gave a wrong answer: {e}");
        }
    }

    let shared = Arc::new(Shared {
        probes,
        next: AtomicU64::new(0),
        requests: options.requests,
        wrong: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        first_error: Mutex::new(None),
    });
    let start = Instant::now();
    let workers: Vec<_> = (0..options.concurrency)
        .map(|i| {
            let client = connection::cas_client(channels[i % channels.len()].clone());
            tokio::spawn(worker(client, shared.clone()))
        })
        .collect();
    let mut latencies = Vec::with_capacity(options.requests as usize);
    for worker in workers {
        latencies.extend(worker.await.context("a worker panicked")?);
    }
    let wall = start.elapsed().max(Duration::from_nanos(1));

    Ok(FindMissingReport {
        benchmark: "find-missing",
        endpoint: options.channel.endpoint.clone(),
        digest_function: options.digest_function.to_string(),
        digests_per_call: options.digests,
        distinct_sets: options.distinct_sets,
        present_per_set: present,
        requests: options.requests,
        concurrency: options.concurrency,
        connections: channels.len(),
        wall_seconds: wall.as_secs_f64(),
        calls_per_second: latencies.len() as f64 / wall.as_secs_f64(),
        latency: LatencySummary::of(latencies),
        wrong_answers: shared.wrong.load(Ordering::Relaxed),
        failed_calls: shared.failed.load(Ordering::Relaxed),
        first_error: shared.first_error.lock().ok().and_then(|mut e| e.take()),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn sets_are_distinct_and_split_as_asked() {
        let mut source = BlobSource::new(1);
        let set = generate_set(&mut source, DigestFunction::Sha256, 1000, 500);
        let digests: HashSet<Digest> = set.iter().map(|b| b.digest).collect();
        assert_eq!(digests.len(), 1000);
        assert_eq!(set.iter().filter(|b| b.present).count(), 500);
        // Shuffled: the present half is not all at the front.
        assert!(set[..500].iter().any(|b| !b.present));
        assert!(set.iter().all(|b| (MIN_BLOB..=MAX_BLOB).contains(&(b.data.len() as u64))));
    }

    #[test]
    fn probe_accepts_only_the_exact_absent_set() {
        let d = |i: u8| reapi::Digest { hash: format!("{i:064x}"), size_bytes: i64::from(i) };
        let probe = Probe {
            request: FindMissingBlobsRequest::default(),
            absent: [d(1), d(2)].into_iter().map(|d| (d.hash, d.size_bytes)).collect(),
        };
        assert!(probe.check(&[d(2), d(1)]).is_ok());
        assert!(probe.check(&[d(1)]).unwrap_err().contains("expected 2"));
        assert!(probe.check(&[d(1), d(3)]).unwrap_err().contains("was uploaded"));
        assert!(probe.check(&[d(1), d(1)]).unwrap_err().contains("twice"));
    }
}
