//! Build events and how they are shown: a live view on a terminal, plain
//! lines for CI logs, JSON lines for tools.

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::mpsc;

/// What happened to a step.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "snake_case", tag = "event")]
pub enum BuildEvent {
    /// A step began; `name` reads like `[build 2/5] RUN make`.
    Started { step: String, name: String },
    /// The step's result came from the cache.
    Cached { step: String },
    /// A line of detail (resolved digests, export targets).
    Info { step: String, message: String },
    /// Output of a running command.
    Log {
        step: String,
        stream: LogStream,
        #[serde(serialize_with = "lossy")]
        data: Bytes,
    },
    /// The step ran and finished; `seconds` of wall time.
    Done { step: String, seconds: f64 },
    /// Work around the steps (resolving images, exporting) finished.
    Finished { step: String },
    /// The step failed.
    Failed { step: String, message: String },
}

#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogStream {
    Stdout,
    Stderr,
}

fn lossy<S: serde::Serializer>(data: &Bytes, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&String::from_utf8_lossy(data))
}

/// Where steps send their events.
pub type EventSender = mpsc::UnboundedSender<BuildEvent>;

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
    bars: Option<indicatif::MultiProgress>,
    counts: StepCounts,
    started: Instant,
}

/// Log lines kept per step for the live view and failure reports.
const TAIL_LINES: usize = 6;

impl View {
    fn new(mode: ProgressMode) -> Self {
        let bars = (mode == ProgressMode::Tty).then(indicatif::MultiProgress::new);
        View { mode, steps: HashMap::new(), bars, counts: StepCounts::default(), started: Instant::now() }
    }

    fn show(&mut self, event: &BuildEvent) {
        if matches!(self.mode, ProgressMode::Json | ProgressMode::Quiet) {
            if let BuildEvent::Cached { .. } = event {
                self.counts.cached += 1;
            }
            if let BuildEvent::Done { .. } = event {
                self.counts.executed += 1;
            }
            if self.mode == ProgressMode::Quiet {
                return;
            }
            let line = serde_json::json!({
                "time": self.started.elapsed().as_secs_f64(),
                "detail": event,
            });
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "{line}");
            return;
        }
        match event {
            BuildEvent::Started { step, name } => {
                let number = self.steps.len() + 1;
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
                self.steps.insert(step.clone(), view);
            }
            BuildEvent::Cached { step } => {
                self.counts.cached += 1;
                self.close(step, "CACHED".to_string());
            }
            BuildEvent::Info { step, message } => self.detail(step, message),
            BuildEvent::Log { step, data, .. } => {
                for line in String::from_utf8_lossy(data).lines() {
                    self.detail(step, line);
                }
            }
            BuildEvent::Done { step, seconds } => {
                self.counts.executed += 1;
                self.close(step, format!("DONE {seconds:.1}s"));
            }
            BuildEvent::Finished { step } => {
                let seconds = self.steps.get(step).map(|s| s.started.elapsed().as_secs_f64()).unwrap_or(0.0);
                self.close(step, format!("DONE {seconds:.1}s"));
            }
            BuildEvent::Failed { step, message } => {
                let tail = self.steps.get(step).map(|s| s.last_lines.clone()).unwrap_or_default();
                self.close(step, format!("ERROR: {message}"));
                if self.mode == ProgressMode::Tty {
                    for line in tail {
                        self.line(&format!("  > {line}"));
                    }
                }
            }
        }
    }

    fn detail(&mut self, step: &str, text: &str) {
        let Some(view) = self.steps.get_mut(step) else { return };
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
    }
}
