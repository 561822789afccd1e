//! BuildKit's stored result for a case, and how MemoBuild's compares.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::case_dir::Case;
use crate::image_view::ImageView;

/// What a builder made of a case.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    Built(ImageView),
    Failed { error: String },
}

/// `tests/conformance/expected/<case>.json`.
#[derive(Serialize, Deserialize)]
pub struct Expected {
    /// The case's input hash when BuildKit built it.
    pub inputs: String,
    pub builder: String,
    pub result: Outcome,
}

fn expected_path(suite: &Path, name: &str) -> PathBuf {
    suite.join("expected").join(format!("{name}.json"))
}

impl Expected {
    /// The stored result, or why it cannot be used (with how to refresh it).
    pub fn load(suite: &Path, case: &Case) -> Result<Expected, String> {
        let path = expected_path(suite, &case.name);
        let refresh = format!(
            "run `scripts/conformance.sh --refresh {}` (needs dockerd; see tests/conformance/README.md)",
            case.name
        );
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("no stored BuildKit result ({}: {e}): {refresh}", path.display()))?;
        let expected: Expected =
            serde_json::from_str(&text).map_err(|e| format!("{} does not parse ({e}): {refresh}", path.display()))?;
        let hash = case.input_hash();
        if expected.inputs != hash {
            return Err(format!(
                "stale: the case's files changed since BuildKit's result was stored ({} has {}, the case hashes to {hash}): {refresh}",
                path.display(),
                expected.inputs
            ));
        }
        Ok(expected)
    }

    pub fn store(&self, suite: &Path, name: &str) {
        let path = expected_path(suite, name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut text = serde_json::to_string_pretty(self).unwrap();
        text.push('\n');
        std::fs::write(path, text).unwrap();
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Same,
    Different,
    /// A known difference (docs/compatibility.md).
    Known,
    /// No usable stored result.
    Stale,
}

pub struct Row {
    pub name: String,
    pub status: Status,
    pub details: Vec<String>,
}

impl Row {
    pub fn new(case: &Case, status: Status, details: Vec<String>) -> Row {
        Row { name: case.name.clone(), status, details }
    }

    pub fn fails_suite(&self) -> bool {
        matches!(self.status, Status::Different | Status::Stale)
    }

    pub fn summary(&self) -> String {
        format!("{}: {:?}\n    {}", self.name, self.status, self.details.join("\n    "))
    }
}

/// The last `n` non-empty lines of a build log.
pub fn last_lines(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// MemoBuild's outcome against BuildKit's.
pub fn judge(case: &Case, expected: &Expected, memobuild: &Outcome, log: &str) -> Row {
    let mut details = Vec::new();
    match (&expected.result, memobuild) {
        (Outcome::Failed { .. }, Outcome::Failed { error }) => {
            let line = case.options.error_line.unwrap_or(0);
            if !log.contains(&format!("Dockerfile:{line}:")) {
                details.push(format!("both fail, but MemoBuild's error does not name line {line}: {error}"));
            }
        }
        (Outcome::Failed { error }, Outcome::Built(_)) => {
            details.push(format!("BuildKit fails, MemoBuild builds; BuildKit said: {}", one_line(error)))
        }
        (Outcome::Built(_), Outcome::Failed { error }) => {
            details.push(format!("BuildKit builds, MemoBuild fails: {}", one_line(error)))
        }
        (Outcome::Built(want), Outcome::Built(got)) => details = differences(want, got),
    }
    let status = match (details.is_empty(), &case.options.known_difference) {
        (true, _) => Status::Same,
        (false, Some(reason)) => {
            details.insert(0, format!("known: {reason}"));
            Status::Known
        }
        (false, None) => Status::Different,
    };
    Row::new(case, status, details)
}

fn one_line(text: &str) -> String {
    text.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" | ")
}

/// What differs between BuildKit's image (`want`) and MemoBuild's (`got`).
pub fn differences(want: &ImageView, got: &ImageView) -> Vec<String> {
    let mut out = Vec::new();
    if want.base != got.base {
        out.push(format!("base image: BuildKit {}, MemoBuild {}", want.base, got.base));
    }
    let fields: std::collections::BTreeSet<&String> = want.config.keys().chain(got.config.keys()).collect();
    for field in fields {
        let (w, g) = (want.config.get(field), got.config.get(field));
        if w != g {
            out.push(format!("config {field}: BuildKit {}, MemoBuild {}", show(w), show(g)));
        }
    }
    let paths: std::collections::BTreeSet<&String> = want.files.keys().chain(got.files.keys()).collect();
    for path in paths {
        match (want.files.get(path), got.files.get(path)) {
            (Some(w), Some(g)) if w != g => out.push(format!("{path}: BuildKit {w}; MemoBuild {g}")),
            (Some(w), None) => out.push(format!("{path}: BuildKit {w}; MemoBuild has none (or the base's)")),
            (None, Some(g)) => out.push(format!("{path}: MemoBuild {g}; BuildKit has none (or the base's)")),
            _ => {}
        }
    }
    for path in want.removed.symmetric_difference(&got.removed) {
        let (who, other) =
            if want.removed.contains(path) { ("BuildKit", "MemoBuild") } else { ("MemoBuild", "BuildKit") };
        if !want.files.contains_key(path) && !got.files.contains_key(path) {
            out.push(format!("{path}: {who} removes this base path, {other} keeps it"));
        }
    }
    out
}

fn show(value: Option<&serde_json::Value>) -> String {
    value.map_or("(none)".to_string(), |v| v.to_string())
}

/// The table `scripts/conformance.sh` prints.
pub fn table(rows: &[Row], took: Duration) -> String {
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(4).max(4);
    let mut out = format!("{:width$}  {:10}  what differs\n", "case", "result");
    for row in rows {
        let status = match row.status {
            Status::Same => "same",
            Status::Different => "DIFFERENT",
            Status::Known => "known",
            Status::Stale => "STALE",
        };
        let first = row.details.first().map(String::as_str).unwrap_or("");
        out.push_str(&format!("{:width$}  {:10}  {first}\n", row.name, status));
        for more in row.details.iter().skip(1).take(12) {
            out.push_str(&format!("{:width$}  {:10}  {more}\n", "", ""));
        }
        if row.details.len() > 13 {
            out.push_str(&format!("{:width$}  {:10}  ... {} more\n", "", "", row.details.len() - 13));
        }
    }
    let count = |s: Status| rows.iter().filter(|r| r.status == s).count();
    out.push_str(&format!(
        "\n{} case(s): {} same, {} different, {} known differences, {} stale ({:.1} s)\n",
        rows.len(),
        count(Status::Same),
        count(Status::Different),
        count(Status::Known),
        count(Status::Stale),
        took.as_secs_f64()
    ));
    out
}
