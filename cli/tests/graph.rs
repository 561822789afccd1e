//! `memobuild graph` through the real binary.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

fn graph(context: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_memobuild"))
        .arg("graph")
        .args(args)
        .arg(context)
        .env("MEMOBUILD_STATE_DIR", context.join(".state"))
        .output()
        .unwrap()
}

fn context() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("src")).unwrap();
    std::fs::write(dir.path().join("src/main.go"), "package main\n").unwrap();
    std::fs::write(dir.path().join(".dockerignore"), ".state\n").unwrap();
    std::fs::write(
        dir.path().join("Dockerfile"),
        "ARG GO=1.22\nFROM golang:${GO} AS build\nCOPY src/ /src/\nRUN go build -o /app /src\n\n\
         FROM busybox AS unrelated\nRUN echo unrelated\n\n\
         FROM scratch AS final\nCOPY --from=build /app /app\nENTRYPOINT [\"/app\"]\n",
    )
    .unwrap();
    dir
}

#[test]
fn prints_only_the_stages_the_target_needs() {
    let dir = context();
    let output = graph(dir.path(), &["--format", "json"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let json = String::from_utf8(output.stdout).unwrap();
    assert!(json.contains("\"golang:1.22\"") && json.contains("\"final\""), "{json}");
    assert!(!json.contains("unrelated"), "a stage the target does not need is in the graph: {json}");

    let output = graph(dir.path(), &["--format", "dot", "--target", "build", "--build-arg", "GO=1.23"]);
    let dot = String::from_utf8(output.stdout).unwrap();
    assert!(dot.starts_with("digraph") && dot.contains("COPY src/ /src/") && !dot.contains("scratch"), "{dot}");
}

#[test]
fn keys_follow_the_files_a_step_copies() {
    let dir = context();
    let key_of = |output: Output, step: &str| -> String {
        let text = String::from_utf8(output.stdout).unwrap();
        let line = text.lines().find(|l| l.contains(step)).unwrap_or_else(|| panic!("{step} not in {text}"));
        line.split_whitespace().nth(1).unwrap().to_string()
    };
    let copy = key_of(graph(dir.path(), &[]), "COPY src/");
    let unread_arg = key_of(graph(dir.path(), &["--build-arg", "UNUSED=1"]), "COPY src/");
    assert_eq!(copy, unread_arg, "a build-arg no step reads changed a key");
    std::fs::write(dir.path().join("src/main.go"), "package main // changed\n").unwrap();
    assert_ne!(key_of(graph(dir.path(), &[]), "COPY src/"), copy, "changing a copied file kept the key");
}

#[test]
fn errors_name_file_line_and_column() {
    let dir = context();
    std::fs::write(dir.path().join("Broken.Dockerfile"), "FROM busybox\nRUNN echo hi\n").unwrap();
    let output = graph(dir.path(), &["-f", dir.path().join("Broken.Dockerfile").to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("Broken.Dockerfile:2:1: unknown instruction \"RUNN\""), "{stderr}");
    assert!(stderr.contains(" 2 | RUNN echo hi") && stderr.contains("^"), "{stderr}");
    assert!(!stderr.contains("backtrace"), "{stderr}");

    let output = graph(dir.path(), &["--target", "nope"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("\"nope\""));
}

#[test]
fn proto_format_is_the_build_v1_message() {
    use prost::Message;
    let dir = context();
    let output = graph(dir.path(), &["--format", "proto"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let graph = memobuild_proto::build::BuildGraph::decode(output.stdout.as_slice()).unwrap();
    let names: Vec<&str> = graph.stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["build", "final"]);
    assert_eq!(graph.target, 2);
    let final_stage = &graph.stages[1];
    assert_eq!(final_stage.base, "scratch");
    assert_eq!(final_stage.depends_on, [0]);
    let copy = &final_stage.steps[1];
    assert_eq!((copy.id.as_str(), copy.line, copy.changes_filesystem), ("2.1", 10, true));
    assert!(copy.definition_json.contains("\"kind\":\"copy\""), "{}", copy.definition_json);
    assert_eq!(graph.stages[0].base, "image:golang:1.22");
}
