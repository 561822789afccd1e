//! What BuildKit accepts with a warning is accepted with the same warning
//! (rule name, message, line); `# check=` and `BUILDKIT_DOCKERFILE_CHECK`
//! skip rules or turn warnings into an error; `--check` plans every stage.
#![allow(clippy::unwrap_used)]

mod common;

use common::{context, options, plan, plan_error};
use memobuild_frontend::{plan_text, BuildGraph, MountType, StageBase, StepDefinition};

fn warnings(graph: &BuildGraph) -> Vec<String> {
    graph.warnings.iter().map(|w| w.to_string()).collect()
}

fn mounts(graph: &BuildGraph, step: &str) -> Vec<(MountType, Option<String>)> {
    let step = graph.steps().find(|s| s.id == step).unwrap();
    let StepDefinition::Run { mounts, .. } = &step.definition else { panic!("{step:?} is not a RUN") };
    mounts.iter().map(|m| (m.mount.kind, m.mount.target.clone())).collect()
}

#[test]
fn mounts_without_target_use_the_workdir() {
    let g = plan(
        "FROM alpine AS deps\nRUN true\nFROM alpine\nWORKDIR /src\nRUN --mount=type=bind ls\nRUN --mount=from=deps ls\nRUN --mount=ro ls\nRUN --mount=type=cache,target=cache ls\nRUN --mount=type=tmpfs ls\n",
        &context(&[("a", "1")]),
        &options(&[]),
    );
    assert_eq!(mounts(&g, "1.2"), [(MountType::Bind, Some("/src".to_string()))]);
    assert_eq!(mounts(&g, "1.3"), [(MountType::Bind, Some("/src".to_string()))]);
    assert_eq!(mounts(&g, "1.4"), [(MountType::Bind, Some("/src".to_string()))]);
    assert_eq!(mounts(&g, "1.5"), [(MountType::Cache, Some("/src/cache".to_string()))]);
    assert_eq!(mounts(&g, "1.6"), [(MountType::Tmpfs, Some("/src".to_string()))]);
    assert_eq!(g.stage(1).unwrap().depends_on, [0]);
    // At WORKDIR / there is nowhere to mount, as in BuildKit.
    let e = plan_error("FROM alpine\nRUN --mount=type=bind ls\n", &context(&[]), &options(&[]));
    assert!(e.starts_with("Dockerfile:2:5: --mount=type=bind: invalid mount target \"/\""), "{e}");
}

#[test]
fn mount_options_are_expanded_before_they_are_checked() {
    let g = plan(
        "FROM alpine\nARG MNT_TYPE=cache\nARG MODE=0700\nENV DIR=/c\nRUN --mount=type=$MNT_TYPE,target=${DIR},mode=$MODE true\n",
        &context(&[]),
        &options(&[]),
    );
    assert_eq!(mounts(&g, "0.4"), [(MountType::Cache, Some("/c".to_string()))]);
    let g = plan(
        "FROM alpine\nARG MNT_TYPE=cache\nRUN --mount=type=$MNT_TYPE,target=/c true\n",
        &context(&[]),
        &options(&[("MNT_TYPE", "tmpfs")]),
    );
    assert_eq!(mounts(&g, "0.2"), [(MountType::Tmpfs, Some("/c".to_string()))]);
    let e = plan_error("FROM alpine\nARG T=nfs\nRUN --mount=type=$T,target=/c true\n", &context(&[]), &options(&[]));
    assert!(e.starts_with("Dockerfile:3:5: --mount=type=$T,target=/c: unsupported mount type \"nfs\""), "{e}");
    // from= names a stage as written: BuildKit expands no variable there.
    let e = plan_error("FROM alpine\nRUN --mount=from=$S,target=/s true\n", &context(&[]), &options(&[]));
    assert!(e.contains("'from' doesn't support variable expansion, define alias stage instead"), "{e}");
}

#[test]
fn duplicate_stage_names_warn_and_the_later_stage_wins() {
    let g = plan(
        "FROM alpine AS b\nRUN echo first\nFROM busybox AS b\nRUN echo second\nFROM scratch\nCOPY --from=b /x /x\n",
        &context(&[]),
        &options(&[]),
    );
    assert_eq!(
        warnings(&g),
        ["Dockerfile:3:1: warning: DuplicateStageName: Duplicate stage name \"b\", stage names should be unique"]
    );
    assert_eq!(g.stage(2).unwrap().depends_on, [1]);
    let mut opts = options(&[]);
    opts.target = Some("b".into());
    let g = plan("FROM alpine AS b\nFROM busybox AS b\n", &context(&[]), &opts);
    assert_eq!(g.target, 1);
    assert_eq!(g.target_stage().unwrap().base, StageBase::Image { reference: "busybox".into() });
}

#[test]
fn expose_with_a_host_port_warns_and_exposes_the_container_port() {
    let g = plan("FROM alpine\nEXPOSE 5000:5000 80/TCP\n", &context(&[]), &options(&[]));
    assert_eq!(
        warnings(&g),
        [
            "Dockerfile:2:1: warning: ExposeInvalidFormat: EXPOSE instruction should not define an IP address or host-port mapping, found '5000:5000'",
            "Dockerfile:2:1: warning: ExposeProtoCasing: Defined protocol '80/TCP' in EXPOSE instruction should be lowercase",
        ]
    );
    let ports: Vec<&String> = g.stages[0].config.exposed_ports.iter().collect();
    assert_eq!(ports, ["5000/tcp", "80/tcp"]);
}

#[test]
fn an_empty_chmod_is_no_chmod() {
    let g = plan("FROM alpine\nARG mode\nCOPY --chmod=${mode} a /foo\n", &context(&[("a", "1")]), &options(&[]));
    let StepDefinition::Copy { chmod, .. } = &g.stages[0].steps[2].definition else { panic!() };
    assert_eq!(chmod, &None);
    let g = plan(
        "FROM alpine\nARG mode\nCOPY --chmod=${mode} a /foo\n",
        &context(&[("a", "1")]),
        &options(&[("mode", "0755")]),
    );
    let StepDefinition::Copy { chmod, .. } = &g.stages[0].steps[2].definition else { panic!() };
    assert_eq!(chmod.as_deref(), Some("0755"));
}

#[test]
fn image_references_are_checked_with_line_and_column() {
    for (text, want) in [
        ("FROM busybox:\n", "Dockerfile:1:6: failed to parse stage name \"busybox:\": invalid reference format\n 1 | FROM busybox:\n   |      ^"),
        ("FROM UPPER/Case\n", "Dockerfile:1:6: failed to parse stage name \"UPPER/Case\": invalid reference format: repository name (Case) must be lowercase\n 1 | FROM UPPER/Case\n   |      ^"),
        ("ARG TAG=\nFROM alpine:${TAG}\n", "Dockerfile:2:6: failed to parse stage name \"alpine:\": invalid reference format"),
        ("FROM alpine\nCOPY --from=Nope:x /a /b\n", "Dockerfile:2:6: failed to parse stage name \"Nope:x\": invalid reference format"),
        ("FROM alpine\nCOPY --from=$X /a /b\n", "Dockerfile:2:6: variable expansion is not supported for --from"),
        ("FROM alpine\nCOPY --from=3 /a /b\n", "Dockerfile:2:6: invalid stage index 3"),
        ("FROM SCRATCH\n", "Dockerfile:1:6: failed to parse stage name \"SCRATCH\": invalid reference format: repository name (library/SCRATCH) must be lowercase"),
    ] {
        let e = plan_error(text, &context(&[]), &options(&[]));
        assert!(e.starts_with(want), "{text:?}\n got: {e}");
    }
}

#[test]
fn a_problem_in_an_unused_stage_does_not_block_the_target() {
    let text = "FROM alpine AS good\nRUN true\nFROM alpine AS bad\nEXPOSE 80/xyz\nCOPY missing /x\nRUN --mount=type=nfs true\nFROM good AS final\n";
    let g = plan(text, &context(&[]), &options(&[]));
    assert_eq!(g.stages.iter().map(|s| s.index).collect::<Vec<_>>(), [0, 2]);
    let mut opts = options(&[]);
    opts.target = Some("bad".into());
    let e = plan_error(text, &context(&[]), &opts);
    assert!(e.starts_with("Dockerfile:4:1: invalid port: \"80/xyz\": invalid proto: xyz"), "{e}");
    // What BuildKit rejects for the whole file is rejected whatever the target.
    let e = plan_error("FROM busybox: AS unused\nFROM alpine\n", &context(&[]), &options(&[]));
    assert!(e.contains("invalid reference format"), "{e}");
}

#[test]
fn a_stage_reads_only_earlier_stages() {
    let e = plan_error("FROM alpine AS a\nCOPY --from=b /x /x\nFROM alpine AS b\nRUN true\n", &context(&[]), &{
        let mut o = options(&[]);
        o.target = Some("a".into());
        o
    });
    assert!(
        e.starts_with(
            "Dockerfile:2:6: cannot copy from stage \"b\", it needs to be defined before current stage \"a\""
        ),
        "{e}"
    );
}

#[test]
fn check_directive_skips_rules_or_fails_the_build() {
    let text = "FROM alpine AS Build\nCMD echo hi\n";
    let g = plan(text, &context(&[]), &options(&[]));
    assert_eq!(
        warnings(&g),
        [
            "Dockerfile:1:1: warning: StageNameCasing: Stage name 'Build' should be lowercase",
            "Dockerfile:2:1: warning: JSONArgsRecommended: JSON arguments recommended for CMD to prevent unintended behavior related to OS signals",
        ]
    );
    let g = plan(&format!("# check=skip=JSONArgsRecommended\n{text}"), &context(&[]), &options(&[]));
    assert_eq!(g.warnings.len(), 1);
    assert_eq!(g.warnings[0].rule.name(), "StageNameCasing");
    let g = plan(&format!("# check=skip=all\n{text}"), &context(&[]), &options(&[]));
    assert!(g.warnings.is_empty());
    let e = plan_error(&format!("# check=error=true\n{text}"), &context(&[]), &options(&[]));
    assert_eq!(
        e,
        "Dockerfile: lint violation found for rules: JSONArgsRecommended, StageNameCasing\nDockerfile:2:1: warning: StageNameCasing: Stage name 'Build' should be lowercase\nDockerfile:3:1: warning: JSONArgsRecommended: JSON arguments recommended for CMD to prevent unintended behavior related to OS signals"
    );
    // The build argument buildx passes overrides the directive.
    let g = plan(
        &format!("# check=error=true\n{text}"),
        &context(&[]),
        &options(&[("BUILDKIT_DOCKERFILE_CHECK", "skip=all")]),
    );
    assert!(g.warnings.is_empty());
    let e = plan_error(&format!("# check=skip\n{text}"), &context(&[]), &options(&[]));
    assert_eq!(e, "Dockerfile: failed to parse check options (the check directive): invalid check option \"skip\"");
}

#[test]
fn check_mode_plans_every_stage_and_reports_instead_of_failing() {
    let text = "# check=error=true\nFROM alpine AS unused\nMAINTAINER me\nEXPOSE 22:22\nFROM alpine\nRUN true\n";
    let mut opts = options(&[]);
    opts.check = true;
    let g = plan_text("Dockerfile", text, &context(&[]), &opts).unwrap();
    assert_eq!(g.stages.len(), 2);
    let rules: Vec<&str> = g.warnings.iter().map(|w| w.rule.name()).collect();
    assert_eq!(rules, ["MaintainerDeprecated", "ExposeInvalidFormat"]);
    // A build only sees the unused stage's file-wide warnings.
    let e = plan_error(text, &context(&[]), &options(&[]));
    assert!(e.starts_with("Dockerfile: lint violation found for rules: MaintainerDeprecated\n"), "{e}");
}

#[test]
fn stage_checks() {
    let g = plan(
        "from alpine as base\nworkdir app\nenv API_TOKEN=x\narg PUBLIC_KEY\ncmd [\"a\"]\nCmd [\"b\"]\nFROM --platform=linux/arm64 base as next\nFROM --platform=$TARGETPLATFORM base\n",
        &context(&[]),
        &options(&[]),
    );
    assert_eq!(
        warnings(&g),
        [
            "Dockerfile:2:1: warning: WorkdirRelativePath: Relative workdir \"app\" can have unexpected results if the base image changes",
            "Dockerfile:3:1: warning: SecretsUsedInArgOrEnv: Do not use ARG or ENV instructions for sensitive data (ENV \"API_TOKEN\")",
            "Dockerfile:5:1: warning: MultipleInstructionsDisallowed: Multiple Cmd instructions should not be used in the same stage because only the last one will be used",
            "Dockerfile:6:1: warning: ConsistentInstructionCasing: Command 'Cmd' should match the case of the command majority (lowercase)",
            "Dockerfile:7:1: warning: FromAsCasing: 'as' and 'FROM' keywords' casing do not match",
            "Dockerfile:7:1: warning: ConsistentInstructionCasing: Command 'FROM' should match the case of the command majority (lowercase)",
            "Dockerfile:7:1: warning: FromPlatformFlagConstDisallowed: FROM --platform flag should not use constant value \"linux/arm64\"",
            "Dockerfile:8:1: warning: ConsistentInstructionCasing: Command 'FROM' should match the case of the command majority (lowercase)",
            "Dockerfile:8:1: warning: RedundantTargetPlatform: Setting platform to predefined $TARGETPLATFORM in FROM is redundant as this is the default behavior",
        ]
    );
}

#[test]
fn from_arg_checks() {
    let g = plan("ARG BASE\nFROM ${BASE:-alpine}\nFROM ${UNDECLARED:-alpine}\n", &context(&[]), &options(&[]));
    assert_eq!(
        warnings(&g),
        ["Dockerfile:3:1: warning: UndefinedArgInFrom: FROM argument 'UNDECLARED' is not declared"]
    );
    let g = plan("ARG BASE\nFROM $BASE\n", &context(&[]), &options(&[("BASE", "alpine")]));
    assert_eq!(
        warnings(&g),
        ["Dockerfile:2:1: warning: InvalidDefaultArgInFrom: Default value for ARG $BASE results in empty or invalid base image name"]
    );
}

#[test]
fn warnings_as_the_cli_prints_them() {
    let g = plan("FROM alpine\nEXPOSE 5000:5000\nCMD run\n", &context(&[]), &options(&[]));
    assert_eq!(
        g.warnings_text(),
        "2 warnings found:\nDockerfile:2:1: warning: ExposeInvalidFormat: EXPOSE instruction should not define an IP address or host-port mapping, found '5000:5000'\nDockerfile:3:1: warning: JSONArgsRecommended: JSON arguments recommended for CMD to prevent unintended behavior related to OS signals\n  ExposeInvalidFormat: https://docs.docker.com/go/dockerfile/rule/expose-invalid-format/\n  JSONArgsRecommended: https://docs.docker.com/go/dockerfile/rule/json-args-recommended/\n"
    );
    let json = g.to_json();
    assert!(json.contains("\"rule\": \"ExposeInvalidFormat\""), "{json}");
    assert!(plan("FROM alpine\n", &context(&[]), &options(&[])).warnings_text().is_empty());
}
