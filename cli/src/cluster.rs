//! `memobuild status`, `memobuild workers` and `memobuild builds ...`: the
//! cluster's state through its BuildService. Listing and cancelling builds
//! are `memobuild remote ls|cancel` under the names operators look for.

use memobuild_proto::build::build_service_client::BuildServiceClient;
use memobuild_proto::build::{ClusterStatusRequest, ClusterStatusResponse, WatchRequest};

use crate::build_view::BuildView;
use crate::remote::{self, channel, status, Endpoint, RemoteCommand};

#[derive(clap::Subcommand)]
pub enum BuildsCommand {
    /// List the cluster's recent builds.
    Ls {
        #[command(flatten)]
        endpoint: Endpoint,
    },
    /// Show a build's steps: state, worker, time, errors.
    Inspect {
        build_id: String,
        #[command(flatten)]
        endpoint: Endpoint,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Stop a running build.
    Cancel {
        build_id: String,
        #[command(flatten)]
        endpoint: Endpoint,
    },
}

/// `memobuild builds ...`; returns what to print.
pub async fn builds(command: BuildsCommand) -> anyhow::Result<Option<String>> {
    match command {
        BuildsCommand::Ls { endpoint } => remote::run(RemoteCommand::Ls { endpoint }).await,
        BuildsCommand::Cancel { build_id, endpoint } => remote::run(RemoteCommand::Cancel { build_id, endpoint }).await,
        BuildsCommand::Inspect { build_id, endpoint, json } => {
            let mut client = BuildServiceClient::new(channel(&endpoint)?);
            let request =
                WatchRequest { instance_name: endpoint.instance.clone(), build_id: build_id.clone(), no_follow: true };
            let mut events = client.watch(request).await.map_err(status)?.into_inner();
            let mut view = BuildView::new(&build_id);
            while let Some(event) = events.message().await.map_err(status)? {
                view.apply(&event);
            }
            Ok(Some(match json {
                true => serde_json::to_string_pretty(&view)?,
                false => view.to_text(),
            }))
        }
    }
}

async fn cluster_status(endpoint: &Endpoint) -> anyhow::Result<ClusterStatusResponse> {
    let mut client = BuildServiceClient::new(channel(endpoint)?);
    let request = ClusterStatusRequest { instance_name: endpoint.instance.clone() };
    Ok(client.cluster_status(request).await.map_err(status)?.into_inner())
}

/// `memobuild status`: the queue, the workers' slots, builds and the step cache.
pub async fn status_text(endpoint: &Endpoint) -> anyhow::Result<String> {
    let s = cluster_status(endpoint).await?;
    let slots: u32 = s.workers.iter().map(|w| w.slots).sum();
    let busy: usize = s.workers.iter().map(|w| w.running.len()).sum();
    let lookups = s.step_cache_hits + s.step_cache_misses;
    let ratio = match lookups {
        0 => "no lookups yet".to_string(),
        n => format!("{:.0}% hits", s.step_cache_hits as f64 * 100.0 / n as f64),
    };
    Ok(format!(
        "queued       {} (oldest waiting {:.1}s)\nexecuting    {}\nworkers      {} ({} slots: {} busy, {} free)\n\
         builds       {} running\nstep cache   {} hits, {} misses ({ratio})",
        s.queued,
        s.oldest_queued_seconds,
        s.executing,
        s.workers.len(),
        slots,
        busy,
        (slots as usize).saturating_sub(busy),
        s.builds_running,
        s.step_cache_hits,
        s.step_cache_misses,
    ))
}

/// `memobuild workers`: one line per connected worker.
pub async fn workers_text(endpoint: &Endpoint) -> anyhow::Result<String> {
    let s = cluster_status(endpoint).await?;
    let mut text = format!("{:<32} {:>5} {:>5}  PROPERTIES\n", "WORKER", "SLOTS", "BUSY");
    for w in &s.workers {
        text.push_str(&format!("{:<32} {:>5} {:>5}  {}\n", w.name, w.slots, w.running.len(), w.properties.join(",")));
    }
    Ok(text.trim_end().to_string())
}
