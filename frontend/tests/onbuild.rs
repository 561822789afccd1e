//! ONBUILD triggers of a stage's base: planned right after the FROM, keyed
//! like the stage's own steps, not passed on, and named in errors.
#![allow(clippy::unwrap_used)]

mod common;

use common::{changed, context, options, plan, plan_error};
use memobuild_frontend::{BaseImage, BuildOptions, ImageConfig, OnbuildTrigger, SourceDefinition, StepDefinition};

/// Build options where `base:1` is a resolved image with `triggers`.
fn with_base(triggers: &[&str]) -> BuildOptions {
    let mut o = options(&[]);
    let config = ImageConfig {
        env: vec!["PATH=/usr/bin:/bin".into()],
        workdir: Some("/src".into()),
        onbuild: triggers.iter().map(|t| t.to_string()).collect(),
        ..ImageConfig::default()
    };
    o.base_images.insert("base:1".into(), BaseImage { digest: "sha256:aa".into(), config });
    o
}

fn instructions(graph: &memobuild_frontend::BuildGraph, stage: usize) -> Vec<String> {
    graph.stage(stage).unwrap().steps.iter().map(|s| s.instruction.clone()).collect()
}

#[test]
fn image_triggers_run_after_from_and_are_not_passed_on() {
    // The Dockerfile's escape character holds in the triggers.
    let triggers = ["COPY . /app/", "ENV MODE=release", "RUN make `\n  -C /app"];
    let graph = plan("# escape=`\nFROM base:1\nRUN ./test\n", &context(&[("input.txt", "1")]), &with_base(&triggers));
    assert_eq!(
        instructions(&graph, 0),
        [
            "FROM base:1",
            "ONBUILD COPY . /app/",
            "ONBUILD ENV MODE=release",
            "ONBUILD RUN make `\n  -C /app",
            "RUN ./test"
        ]
    );
    let steps = &graph.stages[0].steps;
    for step in &steps[1..4] {
        assert_eq!(step.location, steps[0].location, "{} is placed at the FROM", step.instruction);
        assert_eq!(step.trigger.as_ref().unwrap().base, "image base:1");
    }
    assert_eq!(steps[4].trigger, None);
    let StepDefinition::Copy { dest, sources, .. } = &steps[1].definition else { panic!("not a COPY") };
    assert_eq!(dest, "/app/");
    assert!(matches!(&sources[..], [SourceDefinition::Path { path, matches }] if path == "." && matches.len() == 1));
    // The trigger's ENV reaches the stage's own RUN; the RUN of the trigger
    // runs in the base's WORKDIR.
    let StepDefinition::Run { env, .. } = &steps[4].definition else { panic!("not a RUN") };
    assert_eq!(env.get("MODE").map(String::as_str), Some("release"));
    let StepDefinition::Run { workdir, argv, .. } = &steps[3].definition else { panic!("not a RUN") };
    assert_eq!(workdir, "/src");
    assert_eq!(argv, &["/bin/sh", "-c", "make   -C /app"]);
    assert!(graph.stages[0].config.onbuild.is_empty(), "{:?}", graph.stages[0].config.onbuild);
}

#[test]
fn a_copied_file_changes_the_trigger_and_what_follows() {
    let dockerfile = "FROM base:1\nRUN ./test\n";
    let triggers = ["RUN echo setup", "COPY input.txt /app/", "RUN make"];
    let a = plan(dockerfile, &context(&[("input.txt", "1"), ("other", "x")]), &with_base(&triggers));
    let b = plan(dockerfile, &context(&[("input.txt", "2"), ("other", "x")]), &with_base(&triggers));
    let c = plan(dockerfile, &context(&[("input.txt", "1"), ("other", "y")]), &with_base(&triggers));
    assert_eq!(changed(&a, &b), ["0.2", "0.3", "0.4"]);
    assert!(changed(&a, &c).is_empty(), "a file the trigger does not copy changes nothing");
}

#[test]
fn a_stage_with_onbuild_runs_them_in_the_stages_built_from_it() {
    let dockerfile = "\
FROM base:1 AS lib
ONBUILD COPY input.txt /in/
ONBUILD RUN cat /in/input.txt
RUN true

FROM lib AS app
ONBUILD RUN app-trigger

FROM app
";
    let graph = plan(dockerfile, &context(&[("input.txt", "1")]), &with_base(&["RUN from-image"]));
    assert_eq!(
        instructions(&graph, 0),
        [
            "FROM base:1 AS lib",
            "ONBUILD RUN from-image",
            "ONBUILD COPY input.txt /in/",
            "ONBUILD RUN cat /in/input.txt",
            "RUN true"
        ]
    );
    assert_eq!(graph.stage(0).unwrap().config.onbuild, ["COPY input.txt /in/", "RUN cat /in/input.txt"]);
    // lib's own ONBUILDs run in app, not the image's; app passes on only its own.
    assert_eq!(
        instructions(&graph, 1),
        ["FROM lib AS app", "ONBUILD COPY input.txt /in/", "ONBUILD RUN cat /in/input.txt", "ONBUILD RUN app-trigger"]
    );
    assert_eq!(graph.stage(1).unwrap().steps[1].trigger.as_ref().unwrap().base, "stage lib");
    assert_eq!(graph.stage(1).unwrap().config.onbuild, ["RUN app-trigger"]);
    assert_eq!(instructions(&graph, 2), ["FROM app", "ONBUILD RUN app-trigger"]);
    assert!(graph.stage(2).unwrap().config.onbuild.is_empty());
    // A changed input reaches the stages that copy it through the trigger.
    let other = plan(dockerfile, &context(&[("input.txt", "2")]), &with_base(&["RUN from-image"]));
    assert_ne!(graph.stage(2).unwrap().key, other.stage(2).unwrap().key);
}

#[test]
fn a_triggers_copy_from_makes_the_stage_depend_on_the_stage_it_names() {
    let dockerfile = "FROM base:1 AS build\nRUN make\n\nFROM base:1 AS unused\n\nFROM runtime:1\n";
    let mut o = with_base(&[]);
    let runtime = BaseImage {
        digest: "sha256:bb".into(),
        config: ImageConfig { onbuild: vec!["COPY --from=build /out /app".into()], ..ImageConfig::default() },
    };
    o.base_images.insert("runtime:1".into(), runtime);
    let graph = plan(dockerfile, &context(&[]), &o);
    let indexes: Vec<usize> = graph.stages.iter().map(|s| s.index).collect();
    assert_eq!(indexes, [0, 2], "the trigger's --from=build brings stage build in");
    let last = graph.stage(2).unwrap();
    assert_eq!(last.depends_on, [0]);
    let StepDefinition::Copy { origin, .. } = &last.steps[1].definition else { panic!("not a COPY") };
    assert_eq!(format!("{origin:?}"), format!("Stage {{ key: {:?} }}", graph.stage(0).unwrap().key.hex()));
}

#[test]
fn errors_name_the_trigger_its_base_and_the_from_line() {
    let ctx = context(&[("input.txt", "1")]);
    let e = plan_error("ARG X\nFROM base:1\n", &ctx, &with_base(&["COPY missing.txt /app/"]));
    assert!(
        e.starts_with(
            "ONBUILD trigger `COPY missing.txt /app/` of image base:1 (Dockerfile:2 of the FROM): \
             Dockerfile:2:1: COPY source \"missing.txt\" not found in the build context"
        ),
        "{e}"
    );
    for bad in ["FROM busybox", "MAINTAINER me", "ONBUILD RUN x"] {
        let e = plan_error("FROM base:1\n", &ctx, &with_base(&["RUN ok", bad]));
        let keyword = bad.split(' ').next().unwrap();
        assert!(e.starts_with(&format!("ONBUILD trigger `{bad}` of image base:1 (Dockerfile:1 of the FROM): ")), "{e}");
        assert!(e.contains(&format!("{keyword} isn't allowed")) || e.contains("chaining ONBUILD"), "{e}");
    }
    let e = plan_error("FROM base:1\n", &ctx, &with_base(&["RUNN make"]));
    assert!(e.contains("unknown instruction \"RUNN\""), "{e}");
    // A trigger reading the stage that runs it is a cycle, said of the trigger.
    let e = plan_error("FROM base:1 AS lib\nONBUILD COPY --from=app /x /x\nFROM lib AS app\n", &ctx, &options(&[]));
    assert!(e.starts_with("ONBUILD trigger `COPY --from=app /x /x` of stage lib (Dockerfile:3 of the FROM): "), "{e}");
    assert!(e.contains("circular dependency between stages: app -> app"), "{e}");
}

#[test]
fn error_context_names_the_trigger() {
    let trigger = OnbuildTrigger { text: "RUN make".into(), base: "image base:1".into() };
    assert_eq!(
        trigger.context("Dockerfile", 4),
        "ONBUILD trigger `RUN make` of image base:1 (Dockerfile:4 of the FROM)"
    );
}
