//! How build events are shown: a live view on a terminal, plain lines for
//! CI logs, JSON lines for tools.

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

use memobuild_proto::build::{build_event::Kind, step_log, BuildEvent, StepWarning};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

/// `--progress`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// `tty` on a terminal, else `plain`.
    Auto,
    Tty,
    Plain,
    Json,
    /// Nothing (`-q/--quiet`).
    Quiet,
}

impl ProgressMode {
    pub fn resolve(self, is_terminal: bool) -> ProgressMode {
        match self {
            ProgressMode::Auto if is_terminal => ProgressMode::Tty,
            ProgressMode::Auto => ProgressMode::Plain,
            other => other,
        }
    }
}

/// Shows events on stderr until the sender side closes. Returns how many
/// steps ran and how many were cached.
pub async fn render(mode: ProgressMode, mut events: mpsc::UnboundedReceiver<BuildEvent>) -> StepCounts {
    let mut view = View::new(mode);
    while let Some(event) = events.recv().await {
        view.show(&event);
    }
    view.finish();
    view.counts
}

/// Steps that ran and steps that were cache hits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StepCounts {
    pub executed: usize,
    pub cached: usize,
}

struct StepView {
    number: usize,
    started: Instant,
    last_lines: Vec<String>,
    bar: Option<indicatif::ProgressBar>,
}

struct View {
    mode: ProgressMode,
    steps: HashMap<String, StepView>,
    /// Steps shown so far (a step started again, as after a cluster
    /// restart, gets a new number).
    shown: usize,
    bars: Option<indicatif::MultiProgress>,
    counts: StepCounts,
    started: Instant,
    /// Build-check warnings, shown after the build.
    warnings: Vec<StepWarning>,
}

/// Log lines kept per step for the live view and failure reports.
const TAIL_LINES: usize = 6;

impl View {
    fn new(mode: ProgressMode) -> Self {
        let bars = (mode == ProgressMode::Tty).then(indicatif::MultiProgress::new);
        View {
            mode,
            steps: HashMap::new(),
            shown: 0,
            bars,
            counts: StepCounts::default(),
            started: Instant::now(),
            warnings: Vec::new(),
        }
    }

    fn show(&mut self, event: &BuildEvent) {
        let Some(kind) = &event.kind else { return };
        if matches!(self.mode, ProgressMode::Json | ProgressMode::Quiet) {
            match kind {
                Kind::Cached(_) => self.counts.cached += 1,
                Kind::Done(_) => self.counts.executed += 1,
                _ => {}
            }
            if self.mode == ProgressMode::Quiet {
                return;
            }
            let line = json!({ "time": self.started.elapsed().as_secs_f64(), "detail": detail_json(kind) });
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "{line}");
            return;
        }
        match kind {
            Kind::Started(started) => {
                self.shown += 1;
                let number = self.shown;
                let name = &started.name;
                let bar = self.bars.as_ref().map(|bars| {
                    let bar = bars.add(indicatif::ProgressBar::new_spinner());
                    bar.set_style(
                        indicatif::ProgressStyle::with_template("{spinner} {prefix} {elapsed:>4} {msg}")
                            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
                    );
                    bar.set_prefix(format!("#{number} {name}"));
                    bar.enable_steady_tick(Duration::from_millis(120));
                    bar
                });
                if bar.is_none() {
                    self.line(&format!("#{number} {name}"));
                }
                let view = StepView { number, started: Instant::now(), last_lines: Vec::new(), bar };
                self.steps.insert(started.step.clone(), view);
            }
            Kind::Cached(cached) => {
                self.counts.cached += 1;
                self.close(&cached.step, "CACHED".to_string());
            }
            Kind::Info(info) => self.detail(&info.step, &info.message),
            Kind::Log(log) => {
                for line in String::from_utf8_lossy(&log.data).lines() {
                    self.detail(&log.step, line);
                }
            }
            Kind::Done(done) => {
                self.counts.executed += 1;
                self.close(&done.step, format!("DONE {:.1}s", done.seconds));
            }
            Kind::Finished(finished) => {
                let seconds = self.steps.get(&finished.step).map(|s| s.started.elapsed().as_secs_f64()).unwrap_or(0.0);
                self.close(&finished.step, format!("DONE {seconds:.1}s"));
            }
            Kind::Failed(failed) => {
                let tail = self.steps.get(&failed.step).map(|s| s.last_lines.clone()).unwrap_or_default();
                self.close(&failed.step, format!("ERROR: {}", failed.message));
                if self.mode == ProgressMode::Tty {
                    for line in tail {
                        self.line(&format!("  > {line}"));
                    }
                }
            }
            Kind::Accepted(accepted) => self.line(&format!("build {}", accepted.build_id)),
            Kind::Warning(warning) => self.warnings.push(warning.clone()),
            Kind::Result(_) | Kind::BuildFailed(_) => {}
        }
    }

    fn detail(&mut self, step: &str, text: &str) {
        let Some(view) = self.steps.get_mut(step) else {
            // Detail of no step: about the build as a whole.
            self.line(text);
            return;
        };
        let elapsed = view.started.elapsed().as_secs_f64();
        view.last_lines.push(text.to_string());
        if view.last_lines.len() > TAIL_LINES {
            view.last_lines.remove(0);
        }
        match &view.bar {
            Some(bar) => bar.set_message(text.chars().take(100).collect::<String>()),
            None => {
                let line = format!("#{} {elapsed:.3} {text}", view.number);
                self.line(&line);
            }
        }
    }

    fn close(&mut self, step: &str, status: String) {
        let Some(view) = self.steps.get(step) else { return };
        match &view.bar {
            Some(bar) => {
                bar.set_style(
                    indicatif::ProgressStyle::with_template("{prefix} {msg}")
                        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
                );
                bar.finish_with_message(status);
            }
            None => {
                let line = format!("#{} {status}", view.number);
                self.line(&line);
            }
        }
    }

    fn line(&self, text: &str) {
        match &self.bars {
            Some(bars) => {
                let _ = bars.println(text);
            }
            None => {
                let mut err = std::io::stderr().lock();
                let _ = writeln!(err, "{text}");
            }
        }
    }

    fn finish(&self) {
        if matches!(self.mode, ProgressMode::Json | ProgressMode::Quiet) {
            return;
        }
        self.line(&format!(
            "build finished in {:.1}s: {} steps ran, {} cached",
            self.started.elapsed().as_secs_f64(),
            self.counts.executed,
            self.counts.cached
        ));
        if !self.warnings.is_empty() {
            self.line(&warnings_summary(&self.warnings));
        }
    }
}

/// The warnings as buildx lists them after a build:
/// ` 2 warnings found:` then ` - Rule: message (line N)` each.
fn warnings_summary(warnings: &[StepWarning]) -> String {
    let mut text = match warnings.len() {
        1 => " 1 warning found:".to_string(),
        n => format!(" {n} warnings found:"),
    };
    for warning in warnings {
        text.push_str(&format!("\n - {}: {}", warning.rule, warning.message));
        if warning.line > 0 {
            text.push_str(&format!(" (line {})", warning.line));
        }
    }
    text
}

/// An event as a JSON object (`--progress json`), named as the step events
/// of earlier releases were: `started`, `cached`, `info`, `log`, `done`,
/// `finished`, `failed`; build-check warnings are `warning`.
fn detail_json(kind: &Kind) -> Value {
    match kind {
        Kind::Accepted(a) => json!({"event": "accepted", "build_id": a.build_id}),
        Kind::Started(s) => json!({"event": "started", "step": s.step, "name": s.name}),
        Kind::Cached(c) => json!({"event": "cached", "step": c.step}),
        Kind::Info(i) => json!({"event": "info", "step": i.step, "message": i.message}),
        Kind::Log(l) => {
            let stream = if l.stream == step_log::Stream::Stderr as i32 { "stderr" } else { "stdout" };
            json!({"event": "log", "step": l.step, "stream": stream, "data": String::from_utf8_lossy(&l.data)})
        }
        Kind::Done(d) => json!({"event": "done", "step": d.step, "seconds": d.seconds}),
        Kind::Finished(f) => json!({"event": "finished", "step": f.step}),
        Kind::Failed(f) => json!({"event": "failed", "step": f.step, "message": f.message}),
        Kind::Result(r) => json!({"event": "result", "image_id": r.image_id}),
        Kind::BuildFailed(f) => json!({"event": "build_failed", "message": f.message}),
        Kind::Warning(w) => {
            json!({"event": "warning", "rule": w.rule, "message": w.message, "file": w.file, "line": w.line})
        }
    }
}
