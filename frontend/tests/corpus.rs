//! The Dockerfile corpus: each directory under `tests/corpus/` holds a
//! `Dockerfile`, an optional `context/` tree, optional `args` (`K=V` per
//! line) and `target` files, and `expected.txt`: the planned graph (stages,
//! steps, short keys, canonical definitions and variables read) or the
//! error message. `UPDATE_CORPUS=1 cargo test --test corpus` rewrites the
//! expectations; review the diff.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use memobuild_frontend::{plan_text, BuildContext, BuildGraph, ContextNode};
use memobuild_proto::{Digest, DigestFunction};

fn load_context(dir: &Path) -> BuildContext {
    let mut nodes = BTreeMap::new();
    fn walk(root: &Path, dir: &Path, nodes: &mut BTreeMap<String, ContextNode>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        entries.sort();
        for path in entries {
            let rel = path.strip_prefix(root).unwrap().to_str().unwrap().to_string();
            if path.is_dir() {
                nodes.insert(rel, ContextNode::Directory { mode: 0o755 });
                walk(root, &path, nodes);
            } else {
                let data = std::fs::read(&path).unwrap();
                let mode = if rel.ends_with(".sh") { 0o755 } else { 0o644 };
                let digest = Digest::of(DigestFunction::Blake3, &data);
                nodes.insert(rel, ContextNode::File { digest, mode });
            }
        }
    }
    if dir.is_dir() {
        walk(dir, dir, &mut nodes);
    }
    BuildContext::from_nodes(nodes).unwrap()
}

fn render(graph: &BuildGraph) -> String {
    let mut out = format!("target {}\ncontext {}\n", graph.target, &graph.context.hex()[..12]);
    for warning in &graph.warnings {
        let _ = writeln!(out, "{warning}");
    }
    for stage in &graph.stages {
        let deps: Vec<String> = stage.depends_on.iter().map(|d| d.to_string()).collect();
        let _ = writeln!(
            out,
            "\nstage {} name={} base={} platform={} depends_on=[{}] key={} image_key={}",
            stage.index,
            stage.name.as_deref().unwrap_or("-"),
            serde_json::to_string(&stage.base).unwrap(),
            stage.platform,
            deps.join(","),
            &stage.key.hex()[..12],
            &stage.image_key.hex()[..12],
        );
        for step in &stage.steps {
            let first = step.instruction.lines().next().unwrap_or("");
            let _ = writeln!(out, "  {} {} @{} {}", step.id, &step.key.hex()[..12], step.location, first.trim());
            let _ = writeln!(out, "    def {}", serde_json::to_string(&step.definition).unwrap());
            if !step.reads.is_empty() {
                let _ = writeln!(out, "    reads {}", serde_json::to_string(&step.reads).unwrap());
            }
        }
        let _ = writeln!(out, "  config {}", serde_json::to_string(&stage.config).unwrap());
    }
    out
}

fn run_case(dir: &Path) -> Result<(), String> {
    let dockerfile = std::fs::read_to_string(dir.join("Dockerfile")).unwrap();
    let ctx = load_context(&dir.join("context"));
    let mut opts = common::options(&[]);
    if let Ok(args) = std::fs::read_to_string(dir.join("args")) {
        for line in args.lines().filter(|l| !l.trim().is_empty()) {
            let (k, v) = line.split_once('=').unwrap();
            opts.build_args.insert(k.to_string(), v.to_string());
        }
    }
    if let Ok(target) = std::fs::read_to_string(dir.join("target")) {
        opts.target = Some(target.trim().to_string());
    }
    let actual = match plan_text("Dockerfile", &dockerfile, &ctx, &opts) {
        Ok(graph) => {
            // JSON and DOT render without failing.
            assert!(graph.to_json().starts_with('{'));
            assert!(graph.to_dot().starts_with("digraph"));
            render(&graph)
        }
        Err(e) => format!("error\n{}\n", e.message()),
    };
    let expected_path = dir.join("expected.txt");
    if std::env::var_os("UPDATE_CORPUS").is_some() {
        std::fs::write(&expected_path, &actual).unwrap();
        return Ok(());
    }
    let expected = std::fs::read_to_string(&expected_path)
        .map_err(|e| format!("{}: {e} (run with UPDATE_CORPUS=1)", expected_path.display()))?;
    if expected != actual {
        return Err(format!("{}: plan differs\n--- expected\n{expected}\n--- actual\n{actual}", dir.display()));
    }
    Ok(())
}

#[test]
fn corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut cases: Vec<_> = std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().path()).collect();
    cases.sort();
    assert!(cases.len() >= 10, "corpus has {} cases", cases.len());
    let failures: Vec<String> = cases.iter().filter_map(|c| run_case(c).err()).collect();
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n\n"));
}
