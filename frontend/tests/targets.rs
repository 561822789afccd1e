//! `--target` of every stage works in a file where a stage no target needs
//! has a problem BuildKit only finds while building that stage, including
//! files with hundreds of stages.
#![allow(clippy::unwrap_used)]

mod common;

use std::fmt::Write as _;

use common::{context, options};
use memobuild_frontend::{plan_text, BuildContext, StageBase};

/// A broken stage: each line fails when the stage is built, not before.
const BROKEN: &str = "FROM base AS broken
EXPOSE 80/xyz
COPY --chmod=999 app.txt /x
COPY does-not-exist /x
RUN --mount=type=nfs,target=/n true
USER ${UNSET:?must be set}
STOPSIGNAL SIGNOPE
";

/// `stages` stages chained by FROM, COPY --from and mounts, with the broken
/// stage in the middle.
fn many_stages(stages: usize) -> String {
    let mut text =
        String::from("# syntax=docker/dockerfile:1\nARG ALPINE=3.20\nFROM alpine:${ALPINE} AS base\nWORKDIR /w\n");
    text.push_str(BROKEN);
    for i in 0..stages {
        let _ = match i % 3 {
            0 => writeln!(text, "FROM base AS s{i}\nRUN --mount=type=cache,target=/c echo {i} > /w/{i}"),
            1 => writeln!(text, "FROM s{} AS s{i}\nCOPY --link app.txt /w/{i}", i - 1),
            _ => writeln!(
                text,
                "FROM alpine:${{ALPINE}} AS s{i}\nCOPY --from=s{} /w /w\nRUN --mount=from=s{},source=/w,target=/prev ls /prev",
                i - 1,
                i - 2
            ),
        };
    }
    text
}

fn names(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("FROM "))
        .filter_map(|l| l.split_whitespace().last().map(str::to_string))
        .collect()
}

fn plan_target(text: &str, ctx: &BuildContext, target: &str) -> Result<usize, String> {
    let mut opts = options(&[]);
    opts.target = Some(target.to_string());
    plan_text("Dockerfile", text, ctx, &opts).map(|g| g.stages.len()).map_err(|e| e.message().to_string())
}

#[test]
fn every_target_but_the_broken_one_plans() {
    let ctx = context(&[("app.txt", "app")]);
    let text = many_stages(300);
    let names = names(&text);
    assert_eq!(names.len(), 302);
    for name in names.iter().filter(|n| *n != "broken") {
        if let Err(e) = plan_target(&text, &ctx, name) {
            panic!("--target {name}: {e}");
        }
    }
    let e = plan_target(&text, &ctx, "broken").unwrap_err();
    assert!(e.starts_with("Dockerfile:6:1: invalid port: \"80/xyz\": invalid proto: xyz"), "{e}");
    // The last stage needs only its own chain.
    assert_eq!(plan_target(&text, &ctx, "s299").unwrap(), 4);
}

#[test]
fn every_target_of_the_corpus_file_with_an_unused_broken_stage() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/unused-stage-problem");
    let text = std::fs::read_to_string(dir.join("Dockerfile")).unwrap();
    let ctx = context(&[("app.txt", "app")]);
    for name in ["base", "test"] {
        assert!(plan_target(&text, &ctx, name).is_ok(), "{name}");
    }
    assert!(plan_text("Dockerfile", &text, &ctx, &options(&[])).is_ok());
    let e = plan_target(&text, &ctx, "broken").unwrap_err();
    assert!(e.starts_with("Dockerfile:5:1: invalid port"), "{e}");
}

#[test]
fn a_named_context_replaces_the_stage_of_its_name() {
    let text = "FROM scratch AS Tools\nCOPY does-not-exist /x\nFROM tools\nRUN --mount=from=tools,target=/t true\nCOPY --from=tools /a /b\n";
    let mut named = options(&[]);
    named.named_contexts.insert("tools".to_string());
    let graph = plan_text("Dockerfile", text, &context(&[("a", "a")]), &named).unwrap();
    assert_eq!(graph.stages.len(), 1, "the replaced stage is not planned");
    assert_eq!(graph.stages[0].base, StageBase::Image { reference: "tools".to_string() });
    assert!(graph.stages[0].depends_on.is_empty());
    let err = plan_text("Dockerfile", text, &context(&[("a", "a")]), &options(&[])).err().unwrap();
    assert!(err.message().contains("does-not-exist"), "{}", err.message());
}
