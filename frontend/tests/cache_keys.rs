//! The cache-key rules: what changes a step's key and what must not.
#![allow(clippy::unwrap_used)]

mod common;

use common::{changed, context, keys, options, plan};

const APP: &str = "\
FROM golang:1.22 AS build
ARG VERSION
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY cmd/ cmd/
RUN go build -ldflags \"-X main.version=$VERSION\" -o /app ./cmd/app

FROM alpine:3.20 AS tools
RUN apk add --no-cache curl

FROM alpine:3.20
COPY --from=build /app /usr/local/bin/app
LABEL version=$VERSION
CMD [\"app\"]
";

fn app_context(main_go: &str) -> memobuild_frontend::BuildContext {
    context(&[("go.mod", "module x\n"), ("go.sum", ""), ("cmd/app/main.go", main_go), ("README.md", "docs\n")])
}

#[test]
fn keys_are_deterministic() {
    let ctx = app_context("package main\n");
    let a = plan(APP, &ctx, &options(&[]));
    let b = plan(APP, &ctx, &options(&[]));
    assert_eq!(keys(&a), keys(&b));
    assert_eq!(a.to_json(), b.to_json());
}

#[test]
fn unread_build_arg_changes_nothing() {
    let ctx = app_context("package main\n");
    let a = plan(APP, &ctx, &options(&[]));
    let b = plan(APP, &ctx, &options(&[("UNUSED", "1"), ("OTHER", "x")]));
    assert!(changed(&a, &b).is_empty());
}

#[test]
fn build_arg_changes_only_steps_that_read_it() {
    let ctx = app_context("package main\n");
    let a = plan(APP, &ctx, &options(&[("VERSION", "1.0")]));
    let b = plan(APP, &ctx, &options(&[("VERSION", "2.0")]));
    // 0.1 ARG VERSION reads it; the first RUN (0.4) sees it in its
    // environment, so it and everything chained after it change, and so
    // does the final stage from its COPY --from on. WORKDIR and the first
    // COPY (before the RUN) do not read it, nor does the unrelated stage.
    // LABEL $VERSION in the last stage is undeclared there (it expands to
    // ""), it changes only because it follows the changed COPY.
    assert_eq!(changed(&a, &b), ["0.1", "0.4", "0.5", "0.6", "2.1", "2.2", "2.3"]);
}

#[test]
fn one_byte_in_a_copied_file() {
    let a = plan(APP, &app_context("package main\n"), &options(&[]));
    let b = plan(APP, &app_context("package main!\n"), &options(&[]));
    // The COPY of cmd/ and every later step of its stage; the stage that
    // copies from it; not earlier steps, not the unrelated tools stage.
    assert_eq!(changed(&a, &b), ["0.5", "0.6", "2.1", "2.2", "2.3"]);
}

#[test]
fn file_not_copied_changes_nothing() {
    let mut files = vec![("go.mod", "module x\n"), ("go.sum", ""), ("cmd/app/main.go", "package main\n")];
    let a = plan(APP, &context(&[files.clone(), vec![("README.md", "a")]].concat()), &options(&[]));
    files.push(("README.md", "b"));
    let b = plan(APP, &context(&files), &options(&[]));
    assert!(changed(&a, &b).is_empty());
    assert_ne!(a.context, b.context, "the context itself did change");
}

#[test]
fn excluded_files_do_not_count() {
    let df = "FROM alpine\nCOPY --exclude=*.md --exclude=docs . /app\nRUN ls\n";
    let a = plan(df, &context(&[("a.txt", "1"), ("b.md", "x"), ("docs/x", "1")]), &options(&[]));
    let b = plan(df, &context(&[("a.txt", "1"), ("b.md", "y"), ("docs/x", "2")]), &options(&[]));
    assert!(changed(&a, &b).is_empty());
    let c = plan(df, &context(&[("a.txt", "2"), ("b.md", "x"), ("docs/x", "1")]), &options(&[]));
    assert_eq!(changed(&a, &c), ["0.1", "0.2"]);
}

#[test]
fn globs_select_exactly_their_files() {
    let df = "FROM alpine\nCOPY *.txt /d/\nCOPY sub/[ab].cfg /e/\n";
    let base = [("x.txt", "1"), ("y.log", "1"), ("sub/a.cfg", "1"), ("sub/c.cfg", "1")];
    let a = plan(df, &context(&base), &options(&[]));
    let mut other = base;
    other[1] = ("y.log", "2");
    other[3] = ("sub/c.cfg", "2");
    assert!(changed(&a, &plan(df, &context(&other), &options(&[]))).is_empty());
    other[2] = ("sub/a.cfg", "2");
    assert_eq!(changed(&a, &plan(df, &context(&other), &options(&[]))), ["0.2"]);
    // A new file matching the glob is a new input.
    let more = [&base[..], &[("z.txt", "1")]].concat();
    assert_eq!(changed(&a, &plan(df, &context(&more), &options(&[]))), ["0.1", "0.2"]);
}

#[test]
fn file_mode_is_an_input() {
    let df = "FROM alpine\nCOPY run /run\n";
    let a = plan(df, &context(&[("run", "x")]), &options(&[]));
    let b = plan(df, &context(&[("run.sh", "x"), ("run -> run.sh", "")]), &options(&[]));
    // Same bytes, but executable: a different input.
    assert_eq!(changed(&a, &b), ["0.1"]);
}

#[test]
fn env_reaches_run_but_not_copy() {
    let df = |v: &str| format!("FROM alpine\nENV MODE={v}\nCOPY a /a\nRUN make\nCOPY b /b\n");
    let ctx = context(&[("a", "1"), ("b", "2")]);
    let a = plan(&df("dev"), &ctx, &options(&[]));
    let b = plan(&df("prod"), &ctx, &options(&[]));
    assert_eq!(changed(&a, &b), ["0.1", "0.3", "0.4"]);
}

#[test]
fn config_steps_do_not_move_the_chain() {
    let ctx = context(&[("a", "1")]);
    let a = plan("FROM alpine\nCOPY a /a\nRUN x\n", &ctx, &options(&[]));
    let b = plan("FROM alpine\nLABEL x=y\nCOPY a /a\nEXPOSE 80\nRUN x\n", &ctx, &options(&[]));
    let (ka, kb) = (keys(&a), keys(&b));
    assert_eq!(ka["0.1"], kb["0.2"]);
    assert_eq!(ka["0.2"], kb["0.4"]);
    assert_ne!(a.stages[0].image_key, b.stages[0].image_key, "the image config differs");
}

#[test]
fn global_args_reach_from_only_through_expansion() {
    let df = "ARG BASE=alpine:3.19\nARG UNUSED_GLOBAL=1\nFROM $BASE\nRUN echo $UNUSED_GLOBAL\n";
    let ctx = context(&[]);
    let a = plan(df, &ctx, &options(&[]));
    let b = plan(df, &ctx, &options(&[("BASE", "alpine:3.20")]));
    assert_eq!(changed(&a, &b), ["0.0", "0.1"]);
    // A global ARG is not visible in a stage unless re-declared.
    let c = plan(df, &ctx, &options(&[("UNUSED_GLOBAL", "2")]));
    assert!(changed(&a, &c).is_empty());
    let redeclared = "ARG V=1\nFROM alpine\nARG V\nRUN echo $V\n";
    let d = plan(redeclared, &ctx, &options(&[]));
    let e = plan(redeclared, &ctx, &options(&[("V", "2")]));
    assert_eq!(changed(&d, &e), ["0.1", "0.2"]);
    let Some(step) = d.steps().find(|s| s.id == "0.2") else { panic!() };
    let memobuild_frontend::StepDefinition::Run { env, .. } = &step.definition else { panic!() };
    assert_eq!(env.get("V").map(String::as_str), Some("1"));
    let Some(arg) = d.steps().find(|s| s.id == "0.1") else { panic!() };
    assert_eq!(arg.definition, memobuild_frontend::StepDefinition::Arg { args: vec![("V".into(), Some("1".into()))] });
}

#[test]
fn proxy_args_are_given_to_run_but_not_keyed() {
    let df = "FROM alpine\nRUN apk add curl\n";
    let ctx = context(&[]);
    let a = plan(df, &ctx, &options(&[]));
    let b = plan(df, &ctx, &options(&[("HTTP_PROXY", "http://proxy:3128")]));
    assert!(changed(&a, &b).is_empty());
    let run = b.steps().find(|s| s.id == "0.1").unwrap();
    assert_eq!(run.uncached_env["HTTP_PROXY"], "http://proxy:3128");
}

#[test]
fn platform_is_an_input() {
    let df = "FROM alpine\nRUN uname -m\n";
    let ctx = context(&[]);
    let a = plan(df, &ctx, &options(&[]));
    let mut arm = options(&[]);
    arm.target_platform = memobuild_frontend::Platform::new("linux", "arm64", Some("v8"));
    let b = plan(df, &ctx, &arm);
    assert_eq!(changed(&a, &b), ["0.0", "0.1"]);
    // An explicit --platform=$BUILDPLATFORM does not follow the target.
    let pinned = "FROM --platform=$BUILDPLATFORM alpine\nRUN uname -m\n";
    assert!(changed(&plan(pinned, &ctx, &options(&[])), &plan(pinned, &ctx, &arm)).is_empty());
}

#[test]
fn workdir_changes_relative_copies() {
    let ctx = context(&[("a", "1")]);
    let a = plan("FROM alpine\nWORKDIR /x\nCOPY a .\n", &ctx, &options(&[]));
    let b = plan("FROM alpine\nWORKDIR /y\nCOPY a .\n", &ctx, &options(&[]));
    assert_eq!(changed(&a, &b), ["0.1", "0.2"]);
}

#[test]
fn bind_mount_from_context_is_an_input_cache_mount_is_not() {
    let df = "FROM alpine\nRUN --mount=type=bind,source=src,target=/src --mount=type=cache,target=/c make\n";
    let a = plan(df, &context(&[("src/a.c", "1"), ("other", "1")]), &options(&[]));
    let b = plan(df, &context(&[("src/a.c", "2"), ("other", "1")]), &options(&[]));
    let c = plan(df, &context(&[("src/a.c", "1"), ("other", "2")]), &options(&[]));
    assert_eq!(changed(&a, &b), ["0.1"]);
    assert!(changed(&a, &c).is_empty());
}

#[test]
fn heredoc_content_is_an_input() {
    let df = |body: &str| format!("FROM alpine\nCOPY <<EOF /etc/conf\n{body}\nEOF\nRUN cat /etc/conf\n");
    let ctx = context(&[]);
    assert_eq!(changed(&plan(&df("a=1"), &ctx, &options(&[])), &plan(&df("a=2"), &ctx, &options(&[]))), ["0.1", "0.2"]);
    // Expanded heredocs read their variables.
    let expanded = "FROM alpine\nARG V\nCOPY <<EOF /v\n$V\nEOF\n";
    let a = plan(expanded, &ctx, &options(&[("V", "1")]));
    let b = plan(expanded, &ctx, &options(&[("V", "2")]));
    assert_eq!(changed(&a, &b), ["0.1", "0.2"]);
    let quoted = "FROM alpine\nARG V\nCOPY <<'EOF' /v\n$V\nEOF\n";
    let a = plan(quoted, &ctx, &options(&[("V", "1")]));
    let b = plan(quoted, &ctx, &options(&[("V", "2")]));
    assert_eq!(changed(&a, &b), ["0.1"]);
}

#[test]
fn target_prunes_and_isolates_stages() {
    let ctx = app_context("package main\n");
    let mut opts = options(&[]);
    opts.target = Some("tools".into());
    let g = plan(APP, &ctx, &opts);
    let indexes: Vec<usize> = g.stages.iter().map(|s| s.index).collect();
    assert_eq!(indexes, [1]);
    assert!(g.stages[0].depends_on.is_empty());
    // The tools stage has the same keys whichever target is built.
    let full = plan(APP, &ctx, &options(&[]));
    assert!(full.stage(1).is_none(), "tools is not needed by the last stage");
    opts.target = Some("build".into());
    let b = plan(APP, &ctx, &opts);
    assert_eq!(b.stage(0).unwrap().key, full.stage(0).unwrap().key);
}

#[test]
fn stage_from_stage_chains_keys() {
    let df = "FROM alpine AS base\nCOPY a /a\nFROM base AS child\nRUN x\nFROM alpine AS other\nRUN y\nFROM scratch\nCOPY --from=child /a /\nCOPY --from=other /b /\n";
    let a = plan(df, &context(&[("a", "1")]), &options(&[]));
    let b = plan(df, &context(&[("a", "2")]), &options(&[]));
    assert_eq!(changed(&a, &b), ["0.1", "1.0", "1.1", "3.1", "3.2"]);
    let order: Vec<usize> = a.stages.iter().map(|s| s.index).collect();
    assert_eq!(order, [0, 1, 2, 3]);
    assert_eq!(a.stage(3).unwrap().depends_on, [1, 2]);
}

#[test]
fn resolved_base_image_pins_from_and_seeds_env() {
    use memobuild_frontend::{BaseImage, ImageConfig, StepDefinition};
    let dockerfile = "FROM golang:1.22\nENV PATH=/app/bin:$PATH\nRUN go version\n";
    let ctx = context(&[]);
    let unresolved = plan(dockerfile, &ctx, &options(&[]));
    let base = |digest: &str| BaseImage {
        digest: digest.to_string(),
        config: ImageConfig {
            env: vec!["PATH=/usr/local/go/bin:/usr/bin".into(), "GOPATH=/go".into()],
            workdir: Some("/go".into()),
            cmd: Some(vec!["bash".into()]),
            ..ImageConfig::default()
        },
    };
    let mut first = options(&[]);
    first.base_images.insert("golang:1.22".into(), base("sha256:aaaa"));
    let mut second = options(&[]);
    second.base_images.insert("golang:1.22".into(), base("sha256:bbbb"));
    let a = plan(dockerfile, &ctx, &first);
    let b = plan(dockerfile, &ctx, &second);
    assert_eq!(changed(&unresolved, &a), ["0.0", "0.1", "0.2"]);
    assert_eq!(changed(&a, &b), ["0.0", "0.1", "0.2"], "a new base digest changes every step");
    let StepDefinition::Run { env, workdir, .. } = &a.stages[0].steps[2].definition else { panic!("not a RUN") };
    assert_eq!(env.get("PATH").map(String::as_str), Some("/app/bin:/usr/local/go/bin:/usr/bin"));
    assert_eq!(env.get("GOPATH").map(String::as_str), Some("/go"));
    assert_eq!(workdir, "/go");
    assert_eq!(a.stages[0].config.cmd, Some(vec!["bash".to_string()]));
}

#[test]
fn fetched_remote_sources_pin_their_steps() {
    use memobuild_frontend::RemoteSource;
    let dockerfile = "FROM a\nADD https://x.org/tool.bin /opt/\nADD git://h/r.git#main:docs /docs\nRUN true\n";
    let ctx = context(&[]);
    let fetched = |digest: &str, commit: &str| {
        let mut o = options(&[]);
        let file = RemoteSource::File { digest: digest.into(), mtime: None };
        o.remote_sources.insert("https://x.org/tool.bin".into(), file);
        o.remote_sources.insert("git://h/r.git#main:docs".into(), RemoteSource::Git { commit: commit.into() });
        o
    };
    let a = plan(dockerfile, &ctx, &fetched("sha256:aa", "c1"));
    assert_eq!(changed(&a, &plan(dockerfile, &ctx, &fetched("sha256:aa", "c1"))), Vec::<String>::new());
    assert_eq!(changed(&a, &plan(dockerfile, &ctx, &fetched("sha256:bb", "c1"))), ["0.1", "0.2", "0.3"]);
    assert_eq!(changed(&a, &plan(dockerfile, &ctx, &fetched("sha256:aa", "c2"))), ["0.2", "0.3"]);

    // --checksum pins the file without fetching it.
    let sum = format!("sha256:{}", "1".repeat(64));
    let pinned = format!("FROM a\nADD --checksum={sum} https://x.org/tool.bin /opt/\n");
    assert_eq!(
        changed(&plan(&pinned, &ctx, &options(&[])), &plan(&pinned, &ctx, &fetched("sha256:bb", "c1"))),
        Vec::<String>::new()
    );
}

#[test]
fn copy_parents_and_its_pivot_are_inputs() {
    let ctx = context(&[("src/pkg/a/x.go", "1"), ("src/pkg/b.txt", "1")]);
    let key = |copy: &str| keys(&plan(&format!("FROM alpine\n{copy}\n"), &ctx, &options(&[])))["0.1"].clone();
    let flat = key("COPY ./src/pkg/a/ /d/");
    let kept = key("COPY --parents ./src/pkg/a/ /d/");
    let pivot = key("COPY --parents ./src/./pkg/a/ /d/");
    let later = key("COPY --parents ./src/pkg/./a/ /d/");
    assert_ne!(flat, kept, "--parents changes where files land");
    assert_ne!(kept, pivot, "so does the pivot");
    assert_ne!(pivot, later, "and its position");
    // With --parents, DEST is a directory whether or not it ends in `/`.
    assert_eq!(key("COPY --parents ./src/./pkg/a/ /d"), pivot);
}

#[test]
fn copy_parents_excludes_match_the_kept_path() {
    let df = "FROM alpine\nCOPY --parents --exclude=pkg/a/*.md ./src/./pkg/ /d/\n";
    let ctx = |md: &str, go: &str| context(&[("src/pkg/a/x.go", go), ("src/pkg/a/x.md", md)]);
    let a = plan(df, &ctx("1", "1"), &options(&[]));
    assert!(changed(&a, &plan(df, &ctx("2", "1"), &options(&[]))).is_empty());
    assert_eq!(changed(&a, &plan(df, &ctx("1", "2"), &options(&[]))), ["0.1"]);
}

#[test]
fn a_stage_built_from_a_stage_inherits_its_args() {
    let dockerfile = "FROM busybox AS one\nARG ONLY_ONE=one\nRUN true\nFROM one\nRUN echo \"$ONLY_ONE\"\n";
    let a = plan(dockerfile, &context(&[]), &options(&[]));
    let child_run = a.steps().find(|s| s.id == "1.1").unwrap();
    match &child_run.definition {
        memobuild_frontend::StepDefinition::Run { env, .. } => assert_eq!(env.get("ONLY_ONE").unwrap(), "one"),
        other => panic!("1.1 is not a RUN: {other:?}"),
    }
    let b = plan(dockerfile, &context(&[]), &options(&[("ONLY_ONE", "two")]));
    assert!(changed(&a, &b).contains(&"1.1".to_string()), "the child's RUN is keyed on the inherited value");
}
