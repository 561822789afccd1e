//! What a build's events say about it: each step's state, the worker it
//! ran on, its time and the tail of its log. `memobuild builds inspect`
//! prints it; the admin dashboard draws it.

use memobuild_proto::build::{build_event::Kind, BuildEvent};
use memobuild_scheduler::BuildDag;
use serde::Serialize;

/// Log bytes kept per step (the end of its output).
const LOG_TAIL: usize = 4096;

/// A step as far as the events tell.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct StepView {
    pub id: String,
    pub name: String,
    /// `started`, `running` (on a worker), `cached`, `done` or `failed`.
    pub state: &'static str,
    pub worker: Option<String>,
    pub seconds: Option<f64>,
    pub error: Option<String>,
    pub log_tail: String,
}

/// A build as far as the events tell.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct BuildView {
    pub id: String,
    /// `running`, `succeeded` or `failed`.
    pub state: &'static str,
    /// The image id, or why the build failed.
    pub message: String,
    pub steps: Vec<StepView>,
}

impl BuildView {
    pub fn new(id: &str) -> Self {
        BuildView { id: id.to_string(), state: "running", ..BuildView::default() }
    }

    /// The view after `events`, from the first.
    pub fn of(id: &str, events: &[BuildEvent]) -> Self {
        let mut view = BuildView::new(id);
        for event in events {
            view.apply(event);
        }
        view
    }

    fn step(&mut self, id: &str) -> &mut StepView {
        match self.steps.iter().position(|s| s.id == id) {
            Some(i) => &mut self.steps[i],
            None => {
                self.steps.push(StepView { id: id.to_string(), state: "started", ..StepView::default() });
                let last = self.steps.len() - 1;
                &mut self.steps[last]
            }
        }
    }

    /// Takes one more event into account.
    pub fn apply(&mut self, event: &BuildEvent) {
        match &event.kind {
            Some(Kind::Accepted(accepted)) => self.id = accepted.build_id.clone(),
            Some(Kind::Started(started)) => self.step(&started.step).name = started.name.clone(),
            Some(Kind::Info(info)) => {
                if let Some(worker) = info.message.strip_prefix("running on ") {
                    let step = self.step(&info.step);
                    step.worker = Some(worker.to_string());
                    step.state = "running";
                }
            }
            Some(Kind::Cached(cached)) => self.step(&cached.step).state = "cached",
            Some(Kind::Done(done)) => {
                let step = self.step(&done.step);
                step.state = "done";
                step.seconds = Some(done.seconds);
            }
            Some(Kind::Finished(finished)) => self.step(&finished.step).state = "done",
            Some(Kind::Failed(failed)) => {
                let step = self.step(&failed.step);
                step.state = "failed";
                step.error = Some(failed.message.clone());
            }
            Some(Kind::Log(log)) => {
                let step = self.step(&log.step);
                step.log_tail.push_str(&String::from_utf8_lossy(&log.data));
                if step.log_tail.len() > LOG_TAIL {
                    let mut cut = step.log_tail.len() - LOG_TAIL;
                    while !step.log_tail.is_char_boundary(cut) {
                        cut += 1;
                    }
                    step.log_tail.drain(..cut);
                }
            }
            Some(Kind::Result(result)) => {
                self.state = "succeeded";
                self.message = result.image_id.clone();
            }
            Some(Kind::BuildFailed(failed)) => {
                self.state = "failed";
                self.message = failed.message.clone();
            }
            Some(Kind::Warning(_)) | None => {}
        }
    }

    /// The nodes of the build's plan that have no events of their own (a
    /// FROM, an ENV or LABEL that changes no files) get the state their
    /// events imply: a FROM of an image is as far as resolving the image;
    /// any such node is done once a later node of its stage got going, or
    /// the build succeeded. Nodes the build never reached stay out.
    pub fn settle(&mut self, dag: &BuildDag) {
        let succeeded = self.state == "succeeded";
        for (i, node) in dag.nodes.iter().enumerate() {
            if self.steps.iter().any(|s| s.id == node.id) {
                continue;
            }
            let resolving = node.resolved_by.as_ref().and_then(|r| self.steps.iter().find(|s| &s.id == r));
            let later_going = dag.nodes[i + 1..]
                .iter()
                .take_while(|later| later.stage == node.stage)
                .any(|later| self.steps.iter().any(|s| s.id == later.id));
            let settled = match resolving {
                Some(resolving) => StepView { id: node.id.clone(), ..resolving.clone() },
                None if later_going || succeeded => {
                    StepView { id: node.id.clone(), state: "done", ..StepView::default() }
                }
                None => continue,
            };
            self.steps.push(StepView { name: node.instruction.clone(), ..settled });
        }
    }

    /// A table of the steps, for a terminal.
    pub fn to_text(&self) -> String {
        let mut text = format!("BUILD {}  {}", self.id, self.state);
        if !self.message.is_empty() {
            text.push_str(&format!("  {}", self.message));
        }
        text.push_str(&format!("\n{:<8} {:<8} {:<24} {:>8}  NAME\n", "STEP", "STATE", "WORKER", "SECONDS"));
        for step in &self.steps {
            let seconds = step.seconds.map(|s| format!("{s:.2}")).unwrap_or_else(|| "-".into());
            let worker = step.worker.as_deref().unwrap_or("-");
            text.push_str(&format!("{:<8} {:<8} {:<24} {:>8}  {}\n", step.id, step.state, worker, seconds, step.name));
            if let Some(error) = &step.error {
                text.push_str(&format!("         error: {error}\n"));
            }
        }
        text.trim_end().to_string()
    }
}

#[cfg(test)]
mod tests {
    use memobuild_proto::build::step_log::Stream;
    use memobuild_proto::build::{BuildAccepted, BuildFailed};

    use super::*;

    #[test]
    fn steps_follow_their_events() {
        let accepted = BuildEvent { sequence: 1, kind: Some(Kind::Accepted(BuildAccepted { build_id: "b1".into() })) };
        let events = vec![
            accepted,
            BuildEvent::started("0.1", "RUN make"),
            BuildEvent::info("0.1", "running on host:12"),
            BuildEvent::log("0.1", Stream::Stdout, "x".repeat(LOG_TAIL + 10)),
            BuildEvent::log("0.1", Stream::Stderr, "é"),
            BuildEvent::done("0.1", 1.5),
            BuildEvent::started("0.2", "COPY a b"),
            BuildEvent::cached("0.2"),
            BuildEvent::started("1.1", "RUN false"),
            BuildEvent::failed("1.1", "exit code 1"),
            BuildEvent {
                sequence: 0,
                kind: Some(Kind::BuildFailed(BuildFailed {
                    code: 2,
                    message: "step 1.1".into(),
                    ..BuildFailed::default()
                })),
            },
        ];
        let view = BuildView::of("", &events);
        assert_eq!(view.id, "b1");
        assert_eq!(view.state, "failed");
        let states: Vec<_> = view.steps.iter().map(|s| (s.id.as_str(), s.state)).collect();
        assert_eq!(states, [("0.1", "done"), ("0.2", "cached"), ("1.1", "failed")]);
        assert_eq!(view.steps[0].worker.as_deref(), Some("host:12"));
        assert_eq!(view.steps[0].seconds, Some(1.5));
        assert!(view.steps[0].log_tail.len() <= LOG_TAIL && view.steps[0].log_tail.ends_with("xé"));
        let text = view.to_text();
        assert!(text.contains("0.1      done     host:12"), "{text}");
        assert!(text.contains("error: exit code 1"), "{text}");
    }

    #[test]
    fn nodes_without_events_follow_what_they_stand_for() {
        use memobuild_frontend::{plan_text, BuildContext, BuildOptions};
        let dockerfile = "FROM alpine:3 AS base\nENV A=1\nRUN true\nFROM scratch\nCOPY --from=base /a /a\nLABEL x=y\n";
        let graph = plan_text("Dockerfile", dockerfile, &BuildContext::empty(), &BuildOptions::default()).unwrap();
        let dag = BuildDag::of(&graph);
        let states = |view: &BuildView| -> Vec<(String, &'static str)> {
            let mut view = view.clone();
            view.settle(&dag);
            let mut states: Vec<_> = view.steps.iter().map(|s| (s.id.clone(), s.state)).collect();
            states.sort();
            states
        };
        let pair = |id: &str, state| (id.to_string(), state);
        let mut view = BuildView::new("b");
        view.apply(&BuildEvent::started("resolve alpine:3", "resolve image alpine:3"));
        assert_eq!(states(&view), [pair("0.0", "started"), pair("resolve alpine:3", "started")]);
        view.apply(&BuildEvent::finished("resolve alpine:3"));
        view.apply(&BuildEvent::started("0.2", "RUN true"));
        assert_eq!(
            states(&view),
            [pair("0.0", "done"), pair("0.1", "done"), pair("0.2", "started"), pair("resolve alpine:3", "done")],
            "the FROM is resolved, the ENV before the running RUN is done, the second stage not reached"
        );
        view.apply(&BuildEvent::done("0.2", 1.0));
        view.apply(&BuildEvent::cached("1.1"));
        let done = BuildEvent { sequence: 0, kind: Some(Kind::Result(memobuild_proto::build::BuildResult::default())) };
        view.apply(&done);
        let all = states(&view);
        assert_eq!(all.len(), 7, "{all:?}");
        assert!(all.iter().all(|(_, state)| ["done", "cached"].contains(state)), "{all:?}");

        let mut failed = BuildView::new("b");
        failed.apply(&BuildEvent::started("resolve alpine:3", "resolve image alpine:3"));
        failed.apply(&BuildEvent::failed("resolve alpine:3", "FROM alpine:3: not found"));
        failed.settle(&dag);
        let from = failed.steps.iter().find(|s| s.id == "0.0").unwrap();
        assert_eq!((from.state, from.error.as_deref()), ("failed", Some("FROM alpine:3: not found")));
    }
}
