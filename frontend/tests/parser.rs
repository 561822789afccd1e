//! The typed AST: every instruction and flag, locations and original text.
#![allow(clippy::unwrap_used)]

use memobuild_frontend::{
    CommandLine, CopySource, Dockerfile, Healthcheck, InstructionKind, Location, NetworkMode, SecurityMode,
};

fn parse(text: &str) -> Dockerfile {
    match Dockerfile::parse("Dockerfile", text) {
        Ok(d) => d,
        Err(e) => panic!("{}", e.message()),
    }
}

fn only(text: &str) -> InstructionKind {
    let df = parse(&format!("FROM a\n{text}"));
    df.instructions[1].kind.clone()
}

#[test]
fn from_with_platform_and_name() {
    let df = parse("FROM --platform=$BUILDPLATFORM golang:1.22 As Build\n");
    let InstructionKind::From(from) = &df.instructions[0].kind else { panic!() };
    assert_eq!(from.image, "golang:1.22");
    assert_eq!(from.stage.as_deref(), Some("build"));
    assert_eq!(from.platform.as_deref(), Some("$BUILDPLATFORM"));
    assert_eq!(from.stage_location, Some(Location::new(1, 47)));
}

#[test]
fn locations_and_original_text() {
    let df = parse("# syntax=docker/dockerfile:1\n\nFROM a\n  RUN echo \\\n    hi\nCOPY <<EOF /x\nbody\nEOF\n");
    assert_eq!(df.directives.syntax.as_deref(), Some("docker/dockerfile:1"));
    let locs: Vec<Location> = df.instructions.iter().map(|i| i.location).collect();
    assert_eq!(locs, [Location::new(3, 1), Location::new(4, 3), Location::new(6, 1)]);
    assert_eq!(df.instructions[1].text, "  RUN echo \\\n    hi");
    assert_eq!(df.instructions[2].text, "COPY <<EOF /x\nbody\nEOF");
}

#[test]
fn run_flags_and_forms() {
    let InstructionKind::Run(run) = only(
        "RUN --network=none --security=insecure --mount=type=cache,target=/c,sharing=locked --mount=type=secret,id=s ls -l\n",
    ) else {
        panic!()
    };
    assert_eq!(run.network, Some(NetworkMode::None));
    assert_eq!(run.security, Some(SecurityMode::Insecure));
    assert_eq!(run.mounts.len(), 2);
    // Mounts are kept as written: BuildKit parses them with ARG/ENV
    // expanded, when the stage is built.
    assert_eq!(run.mounts[0].raw, "type=cache,target=/c,sharing=locked");
    assert_eq!(run.mounts[1].raw, "type=secret,id=s");
    assert_eq!(run.mounts[1].from, None);
    assert_eq!(run.mounts[1].location, Location::new(2, 84));
    assert_eq!(run.command, CommandLine::Shell("ls -l".into()));
    let InstructionKind::Run(run) = only("RUN [\"ls\", \"-l\"]\n") else { panic!() };
    assert_eq!(run.command, CommandLine::Exec(vec!["ls".into(), "-l".into()]));
    // Not valid JSON: the shell form, as Docker does.
    let InstructionKind::Run(run) = only("RUN [\"ls\", -l]\n") else { panic!() };
    assert_eq!(run.command, CommandLine::Shell("[\"ls\", -l]".into()));
}

#[test]
fn run_heredocs() {
    let InstructionKind::Run(run) = only("RUN <<A cat && python3 <<-\"B\"\necho $x\nA\n\tprint(1)\n\tB\n") else {
        panic!()
    };
    assert_eq!(run.heredocs.len(), 2);
    assert_eq!((run.heredocs[0].name.as_str(), run.heredocs[0].expand), ("A", true));
    assert_eq!(run.heredocs[0].content, "echo $x\n");
    assert_eq!((run.heredocs[1].name.as_str(), run.heredocs[1].expand, run.heredocs[1].chomp), ("B", false, true));
    assert_eq!(run.heredocs[1].content, "print(1)\n");
    // Exec form has no heredocs.
    let InstructionKind::Run(run) = only("RUN [\"cat\", \"<<EOF\"]\n") else { panic!() };
    assert!(run.heredocs.is_empty());
}

#[test]
fn copy_and_add_flags() {
    let InstructionKind::Copy(copy) =
        only("COPY --from=build --chown=1:2 --chmod=755 --link --parents --exclude=*.md --exclude=tmp a b /dst/\n")
    else {
        panic!()
    };
    assert_eq!(copy.from.as_deref(), Some("build"));
    assert_eq!(copy.chown.as_deref(), Some("1:2"));
    assert_eq!(copy.chmod.as_deref(), Some("755"));
    assert!(copy.link && copy.parents);
    assert_eq!(copy.excludes, ["*.md", "tmp"]);
    assert_eq!(copy.sources, [CopySource::Path("a".into()), CopySource::Path("b".into())]);
    assert_eq!(copy.dest, "/dst/");
    let InstructionKind::Add(add) =
        only("ADD --keep-git-dir --checksum=sha256:abc --unpack=true --link=false https://x/y.git /src\n")
    else {
        panic!()
    };
    assert!(add.keep_git_dir && !add.link);
    assert_eq!(add.checksum.as_deref(), Some("sha256:abc"));
    assert_eq!(add.unpack, Some(true));
    let InstructionKind::Copy(copy) = only("COPY [\"a b\", \"/c d/\"]\n") else { panic!() };
    assert_eq!(copy.sources, [CopySource::Path("a b".into())]);
    assert_eq!(copy.dest, "/c d/");
    let InstructionKind::Copy(copy) = only("COPY <<one <<two /d/\n1\none\n2\ntwo\n") else { panic!() };
    let names: Vec<String> = copy
        .sources
        .iter()
        .map(|s| match s {
            CopySource::Heredoc(h) => format!("{}={}", h.name, h.content.trim()),
            CopySource::Path(p) => p.clone(),
        })
        .collect();
    assert_eq!(names, ["one=1", "two=2"]);
    // --parents is COPY only; --keep-git-dir is ADD only.
    assert!(Dockerfile::parse("D", "FROM a\nADD --parents a /b\n").is_err());
    assert!(Dockerfile::parse("D", "FROM a\nCOPY --keep-git-dir a /b\n").is_err());
}

#[test]
fn env_label_arg_forms() {
    let InstructionKind::Env(env) = only("ENV A=1 B=\"x y\" C=a\\ b\n") else { panic!() };
    let pairs: Vec<(&str, &str)> = env.iter().map(|kv| (kv.key.as_str(), kv.value.as_str())).collect();
    assert_eq!(pairs, [("A", "1"), ("B", "\"x y\""), ("C", "a\\ b")]);
    let InstructionKind::Env(env) = only("ENV LEGACY some value here\n") else { panic!() };
    assert_eq!((env[0].key.as_str(), env[0].value.as_str()), ("LEGACY", "some value here"));
    let InstructionKind::Label(labels) = only("LABEL \"a b\"=c d=e\n") else { panic!() };
    assert_eq!(labels[0].key, "\"a b\"");
    let InstructionKind::Arg(args) = only("ARG A B=2 C=\"x y\"\n") else { panic!() };
    assert_eq!(args[0].default, None);
    assert_eq!(args[1].default.as_deref(), Some("2"));
    assert_eq!(args[2].default.as_deref(), Some("\"x y\""));
}

#[test]
fn healthcheck_forms() {
    let InstructionKind::Healthcheck(h) = only(
        "HEALTHCHECK --interval=1m --timeout=2s --start-period=3s --start-interval=500ms --retries=4 CMD curl -f x\n",
    ) else {
        panic!()
    };
    let Healthcheck::Cmd { command, interval_ns, timeout_ns, start_period_ns, start_interval_ns, retries } = h else {
        panic!()
    };
    assert_eq!(command, CommandLine::Shell("curl -f x".into()));
    assert_eq!(interval_ns, Some(60_000_000_000));
    assert_eq!(timeout_ns, Some(2_000_000_000));
    assert_eq!(start_period_ns, Some(3_000_000_000));
    assert_eq!(start_interval_ns, Some(500_000_000));
    assert_eq!(retries, Some(4));
    assert_eq!(only("HEALTHCHECK none\n"), InstructionKind::Healthcheck(Healthcheck::None));
}

#[test]
fn simple_instructions() {
    assert_eq!(only("USER app:app\n"), InstructionKind::User("app:app".into()));
    assert_eq!(only("WORKDIR /a b\n"), InstructionKind::Workdir("/a b".into()));
    assert_eq!(only("STOPSIGNAL SIGKILL\n"), InstructionKind::Stopsignal("SIGKILL".into()));
    assert_eq!(only("MAINTAINER me <m@x>\n"), InstructionKind::Maintainer("me <m@x>".into()));
    assert_eq!(only("EXPOSE 80 443/udp\n"), InstructionKind::Expose(vec!["80".into(), "443/udp".into()]));
    assert_eq!(only("VOLUME [\"/a\", \"/b\"]\n"), InstructionKind::Volume(vec!["/a".into(), "/b".into()]));
    assert_eq!(only("VOLUME /a /b\n"), InstructionKind::Volume(vec!["/a".into(), "/b".into()]));
    assert_eq!(only("SHELL [\"bash\", \"-c\"]\n"), InstructionKind::Shell(vec!["bash".into(), "-c".into()]));
    assert_eq!(only("CMD\n"), InstructionKind::Cmd(CommandLine::Shell(String::new())));
    assert_eq!(
        only("ENTRYPOINT [\"/bin/app\"]\n"),
        InstructionKind::Entrypoint(CommandLine::Exec(vec!["/bin/app".into()]))
    );
    let InstructionKind::Onbuild(inner) = only("ONBUILD COPY --chown=1 . /app\n") else { panic!() };
    let InstructionKind::Copy(copy) = &inner.kind else { panic!() };
    assert_eq!(copy.chown.as_deref(), Some("1"));
    assert_eq!(inner.location, Location::new(2, 9));
}

#[test]
fn escape_directive_changes_continuations_and_words() {
    let df = parse("# escape=`\nFROM a\nENV P=C:\\path `\n    Q=`$x\n");
    assert_eq!(df.directives.escape, '`');
    let InstructionKind::Env(env) = &df.instructions[1].kind else { panic!() };
    assert_eq!(env[0].value, "C:\\path");
    assert_eq!(env[1].value, "`$x");
}

#[test]
fn keywords_are_case_insensitive() {
    let df = parse("from a as b\nrun x\nCoPy a b\n");
    let kws: Vec<&str> = df.instructions.iter().map(|i| i.kind.keyword()).collect();
    assert_eq!(kws, ["FROM", "RUN", "COPY"]);
}
