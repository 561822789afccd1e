//! `--progress plain` output read back as a user reads it: `#N NAME` opens
//! step N, later `#N ...` lines are its details (`running on HOST:PID`, its
//! output) and its end (`DONE 1.0s`, `CACHED`, `ERROR: ...`); the build's
//! summary line, `build finished in Xs: N steps ran, M cached`, ends the
//! steps (what follows, such as writing outputs, is not a build step).
#![allow(clippy::unwrap_used, dead_code)]

const SUMMARY: &str = "build finished in ";

#[derive(Clone, Debug)]
pub struct StepLines {
    pub number: usize,
    /// As `memobuild build` names it: `[stage 2/3] RUN ...`.
    pub name: String,
    /// Every later line of the step, without its `#N `.
    pub lines: Vec<String>,
}

impl StepLines {
    /// The workers the step was sent to, in order (more than one when it
    /// was re-run elsewhere).
    pub fn workers(&self) -> Vec<String> {
        self.lines
            .iter()
            .filter_map(|l| l.split_once("running on ").map(|(_, worker)| worker.trim().to_string()))
            .collect()
    }

    pub fn cached(&self) -> bool {
        self.lines.iter().any(|l| l == "CACHED")
    }

    pub fn done(&self) -> bool {
        self.lines.iter().any(|l| l.starts_with("DONE "))
    }
}

#[derive(Clone, Debug)]
pub struct Progress {
    pub text: String,
    pub steps: Vec<StepLines>,
}

impl Progress {
    pub fn parse(text: &str) -> Progress {
        let mut steps: Vec<StepLines> = Vec::new();
        for line in text.lines() {
            if line.starts_with(SUMMARY) {
                break;
            }
            let Some((number, rest)) = line.strip_prefix('#').and_then(|l| l.split_once(' ')) else { continue };
            let Ok(number) = number.parse::<usize>() else { continue };
            match steps.iter_mut().rev().find(|s| s.number == number) {
                Some(step) if !opens_a_step(rest) => step.lines.push(rest.to_string()),
                // A new name under a number already used opens another step.
                _ => steps.push(StepLines { number, name: rest.to_string(), lines: Vec::new() }),
            }
        }
        Progress { text: text.to_string(), steps }
    }

    /// Every step shown under `#N` (a step started again, as a resumed
    /// build does, opens another one).
    pub fn steps_named(&self, needle: &str) -> Vec<&StepLines> {
        self.steps.iter().filter(|s| s.name.contains(needle)).collect()
    }

    /// Step numbers shown for more than one step (a reader cannot tell
    /// which step their lines belong to).
    pub fn reused_numbers(&self) -> Vec<usize> {
        let mut numbers: Vec<usize> = self.steps.iter().map(|s| s.number).collect();
        numbers.sort();
        let mut reused: Vec<usize> = numbers.windows(2).filter(|w| w[0] == w[1]).map(|w| w[0]).collect();
        reused.dedup();
        reused
    }

    /// The step whose name holds `needle` (an instruction as written).
    pub fn step(&self, needle: &str) -> Option<&StepLines> {
        self.steps.iter().find(|s| s.name.contains(needle))
    }

    /// Like [`Progress::step`], failing the test with the output if absent.
    pub fn expect_step(&self, needle: &str) -> &StepLines {
        self.step(needle).unwrap_or_else(|| panic!("no step {needle:?} in the progress:\n{}", self.text))
    }

    /// `(ran, cached)` from the summary, `build finished in Xs: N steps ran, M cached`.
    pub fn summary(&self) -> Option<(usize, usize)> {
        let line = self.summary_lines().into_iter().next()?;
        let (_, counts) = line.split_once(": ")?;
        let mut numbers = counts.split(|c: char| !c.is_ascii_digit()).filter(|n| !n.is_empty());
        Some((numbers.next()?.parse().ok()?, numbers.next()?.parse().ok()?))
    }

    /// Every summary line (one for one build).
    pub fn summary_lines(&self) -> Vec<&str> {
        self.text.lines().filter(|l| l.starts_with(SUMMARY)).collect()
    }

    /// Every worker any step was sent to.
    pub fn workers(&self) -> Vec<String> {
        let mut all: Vec<String> = self.steps.iter().flat_map(StepLines::workers).collect();
        all.sort();
        all.dedup();
        all
    }
}

/// Whether `rest` (a line after its `#N `) is a step's name rather than
/// its detail (`0.123 text`) or its end (`DONE 1.0s`, `CACHED`, `ERROR: ...`).
fn opens_a_step(rest: &str) -> bool {
    let first = rest.split(' ').next().unwrap_or_default();
    !(first.parse::<f64>().is_ok() || first == "DONE" || first == "CACHED" || first.starts_with("ERROR"))
}
