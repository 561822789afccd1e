//! docs/operations.md lists every metric the roles register, with its
//! type, and nothing else: a metric added in code without a row, or a row
//! left behind by a removed metric, fails here. (Labels and types are also
//! checked against a real scrape in `operations.rs`.)
#![allow(clippy::unwrap_used)]

#[path = "common/metrics_table.rs"]
mod metrics_table;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The crates whose code registers the roles' metrics.
const ROLE_CRATES: [&str; 5] = ["cas", "scheduler", "worker", "engine", "cli"];

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

/// The metric type a constructor names: the last Prometheus type written
/// in `before` (e.g. `IntCounterVec::new(Opts::new(` is a counter).
fn constructed_kind(before: &str) -> Option<&'static str> {
    let kinds = [("Histogram", "histogram"), ("Gauge", "gauge"), ("Counter", "counter")];
    kinds.iter().filter_map(|(word, kind)| before.rfind(word).map(|at| (at, *kind))).max().map(|(_, kind)| kind)
}

/// The names the code gives metrics (string literals `"memobuild_..."`),
/// with the type of the constructor around each, and where it is.
fn registered_metrics() -> BTreeMap<String, (Option<&'static str>, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for krate in ROLE_CRATES {
        sources(&root.join(krate).join("src"), &mut files);
    }
    let mut names = BTreeMap::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let mut rest = text.as_str();
        while let Some(at) = rest.find("\"memobuild_") {
            let literal = &rest[at + 1..];
            let name: String =
                literal.chars().take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_').collect();
            let consumed = at + 1 + name.len();
            if literal[name.len()..].starts_with('"') && name.len() > "memobuild_".len() {
                let start = rest[..at].char_indices().rev().nth(120).map_or(0, |(i, _)| i);
                let kind = constructed_kind(&rest[start..at]);
                let place = file.strip_prefix(&root).unwrap_or(&file).display().to_string();
                names.insert(name, (kind, place));
            }
            rest = &rest[consumed..];
        }
    }
    names
}

#[test]
fn every_registered_metric_is_documented_with_its_type_and_no_other() {
    let documented = metrics_table::documented_metrics();
    let registered = registered_metrics();
    let undocumented: Vec<String> = registered
        .iter()
        .filter(|(name, _)| !documented.contains_key(*name))
        .map(|(name, (_, place))| format!("{name} ({place})"))
        .collect();
    assert!(undocumented.is_empty(), "metrics missing from the table in docs/operations.md: {undocumented:?}");
    let stale: Vec<&String> = documented.keys().filter(|name| !registered.contains_key(*name)).collect();
    assert!(stale.is_empty(), "docs/operations.md lists metrics no role registers: {stale:?}");
    for (name, (kind, place)) in &registered {
        let kind = kind.unwrap_or_else(|| panic!("no Prometheus type around {name} in {place}"));
        assert_eq!(documented[name].kind, kind, "the type of {name} ({place})");
    }
}
