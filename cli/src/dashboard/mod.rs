//! The live dashboard on the admin port of a role that runs the scheduler:
//! running and recent builds as DAGs of their steps (state, worker, time),
//! the queue, the workers and their load, cache hit ratios and recent
//! failures with their log tails. `/` is one page with a little vanilla
//! JS; `/api/state` is the state as JSON; `/api/events` pushes it again
//! (server-sent events) whenever a build, the queue or a worker changes.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use memobuild_cas::{CacheKind, CacheLookups};
use memobuild_scheduler::{BuildDag, BuildManager};
use parking_lot::Mutex;
use serde::Serialize;

use crate::build_view::BuildView;

/// Builds shown at most.
const SHOWN_BUILDS: usize = 20;
/// Failures listed at most.
const SHOWN_FAILURES: usize = 10;
/// Changes closer together than this are sent as one update.
const COALESCE: Duration = Duration::from_millis(50);

/// The page.
pub const PAGE: &str = include_str!("page.html");

pub struct Dashboard {
    builds: Arc<BuildManager>,
    lookups: CacheLookups,
    /// Each build's view and how many of its events it took in.
    views: Mutex<HashMap<String, (usize, BuildView)>>,
}

#[derive(Serialize)]
struct State {
    /// When the newest build event arrived (unix ms), for latency checks.
    last_event_unix_ms: u64,
    generated_unix_ms: u64,
    queue: QueueState,
    workers: Vec<WorkerState>,
    cache: Vec<CacheState>,
    builds: Vec<BuildState>,
    failures: Vec<Failure>,
}

#[derive(Serialize)]
struct QueueState {
    queued: usize,
    executing: usize,
    oldest_seconds: f64,
}

#[derive(Serialize)]
struct WorkerState {
    name: String,
    slots: u32,
    busy: usize,
}

#[derive(Serialize)]
struct CacheState {
    kind: &'static str,
    hits: u64,
    misses: u64,
}

#[derive(Serialize)]
struct BuildState {
    id: String,
    dockerfile: String,
    created_unix_ms: i64,
    finished_unix_ms: i64,
    view: BuildView,
    dag: Option<BuildDag>,
}

#[derive(Serialize)]
struct Failure {
    build: String,
    step: String,
    name: String,
    error: String,
    log_tail: String,
}

impl Dashboard {
    pub fn new(builds: Arc<BuildManager>, lookups: CacheLookups) -> Self {
        Dashboard { builds, lookups, views: Mutex::new(HashMap::new()) }
    }

    /// The state as JSON.
    pub fn state_json(&self) -> String {
        serde_json::to_string(&self.state()).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    fn state(&self) -> State {
        let scheduler = self.builds.scheduler();
        let queue = scheduler.queue_status();
        let workers = scheduler
            .workers()
            .into_iter()
            .map(|w| WorkerState { busy: w.running.len(), name: w.name, slots: w.slots })
            .collect();
        let cache = [CacheKind::ActionCache, CacheKind::Execute, CacheKind::Step]
            .into_iter()
            .map(|kind| CacheState {
                kind: kind.as_str(),
                hits: self.lookups.count(kind, true),
                misses: self.lookups.count(kind, false),
            })
            .collect();
        let builds = self.build_states();
        let mut failures = Vec::new();
        for build in &builds {
            for step in build.view.steps.iter().filter(|s| s.state == "failed") {
                failures.push(Failure {
                    build: build.id.clone(),
                    step: step.id.clone(),
                    name: step.name.clone(),
                    error: step.error.clone().unwrap_or_default(),
                    log_tail: step.log_tail.clone(),
                });
            }
        }
        failures.truncate(SHOWN_FAILURES);
        State {
            last_event_unix_ms: *self.builds.subscribe_activity().borrow(),
            generated_unix_ms: unix_ms(),
            queue: QueueState {
                queued: queue.queued,
                executing: queue.executing,
                oldest_seconds: queue.oldest_seconds,
            },
            workers,
            cache,
            builds,
            failures,
        }
    }

    /// The newest builds, each view brought up to date with its new events.
    fn build_states(&self) -> Vec<BuildState> {
        let recent: Vec<_> = self.builds.recent().into_iter().take(SHOWN_BUILDS).collect();
        let mut views = self.views.lock();
        views.retain(|id, _| recent.iter().any(|b| &b.id == id));
        recent
            .iter()
            .map(|build| {
                let (seen, view) = views.entry(build.id.clone()).or_insert_with(|| (0, BuildView::new(&build.id)));
                let (events, _) = build.events_from(*seen);
                *seen += events.len();
                for event in &events {
                    view.apply(event);
                }
                let summary = build.summary();
                let dag = build.dag().cloned();
                let mut view = view.clone();
                if let Some(dag) = &dag {
                    view.settle(dag);
                }
                BuildState {
                    id: build.id.clone(),
                    dockerfile: summary.dockerfile_name,
                    created_unix_ms: summary.created_unix_ms,
                    finished_unix_ms: summary.finished_unix_ms,
                    view,
                    dag,
                }
            })
            .collect()
    }

    /// The state now, then again after every change.
    pub fn events(self: Arc<Self>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
        let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Event, Infallible>>(4);
        let mut activity = self.builds.subscribe_activity();
        let mut changes = self.builds.scheduler().subscribe_changes();
        tokio::spawn(async move {
            loop {
                let event = Event::default().event("state").data(self.state_json());
                if sender.send(Ok(event)).await.is_err() {
                    return;
                }
                tokio::select! {
                    changed = activity.changed() => if changed.is_err() { return },
                    changed = changes.changed() => if changed.is_err() { return },
                    () = sender.closed() => return,
                }
                tokio::time::sleep(COALESCE).await;
                activity.borrow_and_update();
                changes.borrow_and_update();
            }
        });
        Sse::new(tokio_stream::wrappers::ReceiverStream::new(receiver)).keep_alive(KeepAlive::default())
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
