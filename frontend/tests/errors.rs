//! Error messages: file, line, column, the offending line and a caret.
#![allow(clippy::unwrap_used)]

mod common;

use common::{context, options, plan_error};
use memobuild_frontend::Dockerfile;

fn parse_error(text: &str) -> String {
    match Dockerfile::parse("Dockerfile", text) {
        Ok(_) => panic!("expected a parse error for:\n{text}"),
        Err(e) => e.message().to_string(),
    }
}

fn err(text: &str) -> String {
    match Dockerfile::parse("Dockerfile", text) {
        Err(e) => e.message().to_string(),
        Ok(_) => plan_error(text, &context(&[("a", "1")]), &options(&[])),
    }
}

#[test]
fn unknown_instruction() {
    assert_eq!(
        parse_error("FROM alpine\n\nRUNN echo hi\n"),
        "Dockerfile:3:1: unknown instruction \"RUNN\"\n 3 | RUNN echo hi\n   | ^"
    );
}

#[test]
fn unknown_instruction_indented_after_continuation() {
    assert_eq!(
        parse_error("FROM alpine\nRUN a \\\n  b\n    COPPY x y\n"),
        "Dockerfile:4:5: unknown instruction \"COPPY\"\n 4 |     COPPY x y\n   |     ^"
    );
}

#[test]
fn unknown_flag_points_at_the_flag() {
    assert_eq!(
        parse_error("FROM alpine\nCOPY --from=a --chmodd=644 x /y\n"),
        "Dockerfile:2:15: unknown flag \"--chmodd\": COPY takes --from, --chown, --chmod, --link, --parents, --exclude\n 2 | COPY --from=a --chmodd=644 x /y\n   |               ^"
    );
    assert!(parse_error("FROM alpine\nENV --x=1 A=b\n")
        .starts_with("Dockerfile:2:5: unknown flag \"--x\": ENV takes no flags"));
}

#[test]
fn flag_on_a_continuation_line() {
    // A mount is checked once its values are expanded, when its stage is
    // planned (as BuildKit does); the error still points at the flag.
    let e = err("FROM alpine\nRUN --network=none \\\n    --mount=type=nfs,target=/x \\\n    make\n");
    assert!(e.starts_with("Dockerfile:3:5: --mount=type=nfs,target=/x: unsupported mount type \"nfs\""), "{e}");
    assert!(e.ends_with(" 3 |     --mount=type=nfs,target=/x \\\n   |     ^"), "{e}");
}

#[test]
fn bad_flag_values() {
    for (text, want) in [
        ("FROM a\nCOPY --link=maybe a /\n", "Dockerfile:2:6: expecting boolean value for flag --link, not \"maybe\""),
        ("FROM a\nCOPY --from a /\n", "Dockerfile:2:6: missing a value on flag --from"),
        ("FROM a\nRUN --network=bridge x\n", "Dockerfile:2:5: unsupported network mode \"bridge\""),
        ("FROM a\nRUN --security=root x\n", "Dockerfile:2:5: unsupported security mode \"root\""),
        ("FROM a\nHEALTHCHECK --interval=5 CMD x\n", "Dockerfile:2:13: --interval: invalid duration \"5\""),
        ("FROM a\nHEALTHCHECK --timeout=1ns CMD x\n", "Dockerfile:2:13: --timeout=1ns cannot be less than 1ms"),
        ("FROM a\nHEALTHCHECK --retries=-1 CMD x\n", "Dockerfile:2:13: --retries cannot be negative (-1)"),
        ("FROM a\nCOPY --from=a --from=b x /\n", "Dockerfile:2:15: duplicate flag specified: --from"),
    ] {
        let e = parse_error(text);
        assert!(e.starts_with(want), "{text:?}\n got: {e}");
    }
}

#[test]
fn instruction_before_from() {
    assert_eq!(
        err("# comment\nARG X=1\nRUN echo\nFROM alpine\n"),
        "Dockerfile:3:1: RUN before the first FROM: only ARG may come before FROM\n 3 | RUN echo\n   | ^"
    );
    assert!(err("ARG X\n").starts_with("Dockerfile:1:1: the Dockerfile has no FROM instruction"));
}

#[test]
fn invalid_stage_name_and_from_shape() {
    assert!(parse_error("FROM a AS 1st\n").starts_with("Dockerfile:1:11: invalid stage name \"1st\""));
    assert!(parse_error("FROM a AS\n").starts_with("Dockerfile:1:6: FROM requires either one or three arguments"));
    assert!(parse_error("FROM a b c\n").starts_with("Dockerfile:1:6: FROM requires either one or three arguments"));
}

#[test]
fn unterminated_heredoc() {
    assert_eq!(
        parse_error("FROM alpine\nRUN cat <<EOF >/x\nhello\n"),
        "Dockerfile:2:9: unterminated heredoc \"EOF\": no line \"EOF\" before the end of the file\n 2 | RUN cat <<EOF >/x\n   |         ^"
    );
}

#[test]
fn empty_continuation_at_eof() {
    assert_eq!(
        parse_error("FROM alpine\nRUN \\\n"),
        "Dockerfile:2:1: line continuation at the end of the file leaves RUN without arguments\n 2 | RUN \\\n   | ^"
    );
    // With arguments, Docker runs what is there.
    assert!(Dockerfile::parse("Dockerfile", "FROM alpine\nRUN echo hi \\").is_ok());
}

#[test]
fn missing_arguments_and_bad_forms() {
    for (text, want) in [
        ("FROM a\nCOPY onlyone\n", "Dockerfile:2:6: COPY requires at least two arguments"),
        ("FROM a\nWORKDIR\n", "Dockerfile:2:1: WORKDIR requires at least one argument"),
        ("FROM a\nSHELL /bin/bash -c\n", "Dockerfile:2:7: SHELL requires the arguments to be in JSON form"),
        ("FROM a\nENV A=1 B\n", "Dockerfile:2:9: can't find = in \"B\""),
        ("FROM a\nENV NAME\n", "Dockerfile:2:5: ENV NAME has no value"),
        ("FROM a\nHEALTHCHECK NONE x\n", "Dockerfile:2:18: HEALTHCHECK NONE takes no arguments"),
        ("FROM a\nHEALTHCHECK PING x\n", "Dockerfile:2:13: unknown type \"PING\" in HEALTHCHECK"),
        ("FROM a\nONBUILD ONBUILD RUN x\n", "Dockerfile:2:9: chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed"),
        ("FROM a\nONBUILD FROM b\n", "Dockerfile:2:9: FROM isn't allowed as an ONBUILD trigger"),
        ("FROM a\nONBUILD RUNX b\n", "Dockerfile:2:9: unknown instruction \"RUNX\""),
        ("FROM a\nVOLUME [\"\"]\n", "Dockerfile:2:8: VOLUME specified can not be an empty string"),
        ("# escape=x\nFROM a\n", "Dockerfile:1:10: invalid escape token \"x\""),
        ("# escape=`\n# escape=\\\nFROM a\n", "Dockerfile:2:10: only one escape parser directive can be used"),
    ] {
        let e = parse_error(text);
        assert!(e.starts_with(want), "{text:?}\n got: {e}");
    }
}

#[test]
fn semantic_errors_when_planning() {
    for (text, want) in [
        ("FROM a\nCOPY ../secret /x\n", "Dockerfile:2:6: COPY source \"../secret\" is outside the build context"),
        ("FROM a\nCOPY missing /x\n", "Dockerfile:2:6: COPY source \"missing\" not found in the build context"),
        ("FROM a\nEXPOSE 80/xyz\n", "Dockerfile:2:1: invalid port: \"80/xyz\": invalid proto: xyz"),
        ("FROM a\nSTOPSIGNAL SIGNOPE\n", "Dockerfile:2:1: invalid signal \"SIGNOPE\""),
        (
            "FROM a\nCOPY --chmod=999 a /x\n",
            "Dockerfile:2:1: invalid chmod parameter: '999'. it should be octal string and between 0 and 07777",
        ),
        ("FROM a\nENV X=${Y\n", "Dockerfile:2:1: syntax error: missing '}'"),
        ("FROM a\nARG V\nUSER ${V:?must be set}\n", "Dockerfile:3:1: V: must be set"),
        ("ARG B\nFROM $B\n", "Dockerfile:2:6: base name ($B) should not be blank"),
        ("FROM a\nCOPY http://x/y /y\n", "Dockerfile:2:6: COPY source \"http://x/y\" is a URL"),
        (
            "FROM a\nADD --checksum=sha256:00 http://x/y /y\n",
            "Dockerfile:2:1: invalid ADD --checksum=sha256:00: expected sha256:<64",
        ),
        (
            &format!("FROM a\nADD --checksum=sha256:{} a /y\n", "0".repeat(64)),
            "Dockerfile:2:1: ADD --checksum can only be used with one HTTP(S) URL source",
        ),
        ("FROM a\nCOPY git@github.com:o/r.git /y\n", "Dockerfile:2:6: COPY source \"git@github.com:o/r.git\" is a URL"),
        (
            "FROM a\nADD git://h/r.git#main:../up /y\n",
            "Dockerfile:2:5: ADD git://h/r.git#main:../up: subdirectory \"../up\" is outside",
        ),
        ("FROM a AS x\nCOPY --from=x /a /b\n", "Dockerfile:2:6: circular dependency between stages: x -> x"),
        ("FROM a\nRUN --mount=source=nope,target=/n make\n", "Dockerfile:2:5: --mount source \"nope\" not found"),
    ] {
        let e = err(text);
        assert!(e.starts_with(want), "{text:?}\n got: {e}");
    }
}

#[test]
fn cycles_between_stages() {
    let e = err("FROM alpine AS a\nCOPY --from=b /x /x\nFROM alpine AS b\nCOPY --from=a /y /y\n");
    assert_eq!(
        e,
        "Dockerfile:2:6: circular dependency between stages: b -> a -> b\n 2 | COPY --from=b /x /x\n   |      ^"
    );
    // FROM only sees earlier stages, so a cycle needs a COPY --from too.
    let e = err("FROM alpine AS a\nCOPY --from=b /x /x\nFROM a AS b\n");
    assert!(e.starts_with("Dockerfile:2:6: circular dependency between stages: b -> a -> b"), "{e}");
    assert!(
        memobuild_frontend::plan_text("Dockerfile", "FROM b AS a\nFROM a AS b\n", &context(&[]), &options(&[])).is_ok()
    );
    let e = err("FROM alpine AS a\nRUN --mount=type=bind,from=b,target=/b x\nFROM alpine AS b\nCOPY --from=a /y /y\n");
    assert!(e.starts_with("Dockerfile:2:5: circular dependency between stages: b -> a -> b"), "{e}");
}

#[test]
fn missing_target() {
    let mut opts = options(&[]);
    opts.target = Some("prod".into());
    let e = plan_error("FROM a AS build\nFROM b AS test\n", &context(&[]), &opts);
    assert_eq!(e, "Dockerfile: target stage \"prod\" could not be found (stages: \"build\", \"test\")");
}

#[test]
fn symlink_out_of_the_context() {
    let ctx = context(&[("a", "1"), ("out -> ../../etc", ""), ("abs -> /etc/passwd", "")]);
    let e = plan_error("FROM a\nCOPY out/passwd /x\n", &ctx, &options(&[]));
    assert!(e.starts_with("Dockerfile:2:6: COPY source \"out/passwd\": symlink \"out\" -> \"../../etc\" points outside the build context"), "{e}");
    let e = plan_error("FROM a\nCOPY abs /x\n", &ctx, &options(&[]));
    assert!(e.contains("symlink \"abs\" points to the absolute path \"/etc/passwd\""), "{e}");
    // A symlink that is only copied, not followed, is fine.
    let ok = memobuild_frontend::plan_text("Dockerfile", "FROM a\nCOPY . /x\n", &ctx, &options(&[]));
    assert!(ok.is_ok());
}

#[test]
fn from_its_own_name_is_an_image() {
    let g = memobuild_frontend::plan_text("Dockerfile", "FROM node AS node\nRUN x\n", &context(&[]), &options(&[]))
        .unwrap();
    assert_eq!(g.stages[0].base, memobuild_frontend::StageBase::Image { reference: "node".into() });
}

#[test]
fn docker_accepts_unknown_from_names_as_images() {
    let ctx = context(&[]);
    let g = memobuild_frontend::plan_text(
        "Dockerfile",
        "FROM alpine\nCOPY --from=nginx:latest /etc/nginx /etc/nginx\nRUN --mount=type=bind,from=busybox,target=/bb ls\n",
        &ctx,
        &options(&[]),
    )
    .unwrap();
    assert_eq!(g.stages.len(), 1);
}

#[test]
fn copy_parents_refuses_dot_dot() {
    assert_eq!(
        err("FROM alpine\nCOPY --parents ./a/./../b /d/\n"),
        "Dockerfile:2:16: COPY source \"./a/./../b\": \"..\" is not allowed in a --parents source\n 2 | COPY --parents ./a/./../b /d/\n   |                ^"
    );
}

#[test]
fn add_has_no_parents_flag() {
    // BuildKit's ADD has never taken --parents (only COPY does): its
    // frontend fails with "unknown flag: --parents".
    assert_eq!(
        parse_error("FROM alpine\nADD --parents ./x/a.txt /d/\n"),
        "Dockerfile:2:5: unknown flag \"--parents\": ADD takes --chown, --chmod, --link, --keep-git-dir, --checksum, --exclude, --unpack\n 2 | ADD --parents ./x/a.txt /d/\n   |     ^"
    );
}
