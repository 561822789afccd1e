//! The table of metrics in docs/operations.md: each `memobuild_*` metric
//! with its type and label names, as the tests check them.
#![allow(clippy::unwrap_used, dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// A row of the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Documented {
    /// `counter`, `gauge` or `histogram`.
    pub kind: String,
    pub labels: BTreeSet<String>,
}

/// The table, by metric name.
pub fn documented_metrics() -> BTreeMap<String, Documented> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/operations.md");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut metrics = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("| `memobuild_")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let name = cells[1].trim_matches('`').to_string();
        // `kind (ac, execute), result (hit, miss)`: the names, without their values.
        let mut labels_cell = String::new();
        let mut depth = 0;
        for c in cells[3].chars() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                c if depth == 0 => labels_cell.push(c),
                _ => {}
            }
        }
        let labels = labels_cell.split(',').map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
        let row = Documented { kind: cells[2].to_string(), labels };
        assert!(metrics.insert(name.clone(), row).is_none(), "{name} is in the table twice");
    }
    assert!(!metrics.is_empty(), "no metrics table in {}", path.display());
    metrics
}
