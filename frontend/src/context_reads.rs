//! The part of the build context a Dockerfile names, read from its text
//! before it is planned, so that a build scans only that part. It is a
//! guess that planning checks: a lookup outside it (a base image's ONBUILD
//! COPY, a symlink leading elsewhere) is noticed by the [`BuildContext`],
//! and the build plans again with the whole context.
//!
//! [`BuildContext`]: crate::BuildContext

use crate::build_context::has_wildcard;
use crate::{
    clean_path, ContextScope, CopySource, Dockerfile, Instruction, InstructionKind, Mount, MountType, ShellLexer,
    SourceKind,
};

/// The context paths the Dockerfile's COPY and ADD (without `--from`) and
/// RUN bind mounts (without `from=`) name, ONBUILD ones included. Whole
/// when one of them may name anything: the context root, a variable, or a
/// wildcard in its first element.
pub fn context_scope(dockerfile: &Dockerfile) -> ContextScope {
    let lexer = ShellLexer::new(dockerfile.directives.escape);
    let mut paths = Vec::new();
    for instruction in &dockerfile.instructions {
        if named_paths(instruction, lexer, &mut paths).is_none() {
            return ContextScope::Whole;
        }
    }
    ContextScope::of_paths(paths)
}

/// Adds the context paths one instruction names; `None` when it may name
/// any.
fn named_paths(instruction: &Instruction, lexer: ShellLexer, paths: &mut Vec<String>) -> Option<()> {
    match &instruction.kind {
        InstructionKind::Onbuild(inner) => named_paths(inner, lexer, paths),
        InstructionKind::Copy(copy) | InstructionKind::Add(copy) if copy.from.is_none() => {
            for source in &copy.sources {
                let CopySource::Path(raw) = source else { continue };
                let path = literal(lexer, raw)?;
                if copy.add && SourceKind::of(&path).map_or(true, |kind| kind != SourceKind::Path) {
                    continue;
                }
                paths.push(fixed_part(&path)?);
            }
            Some(())
        }
        InstructionKind::Run(run) => {
            for spec in run.mounts.iter().filter(|spec| spec.from.is_none()) {
                let mount =
                    Mount::parse(&spec.raw, &mut |value| literal(lexer, value).ok_or_else(|| "a variable".to_string()))
                        .ok()?;
                if mount.kind == MountType::Bind && mount.from.is_none() {
                    paths.push(fixed_part(mount.source.as_deref().unwrap_or("."))?);
                }
            }
            Some(())
        }
        _ => Some(()),
    }
}

/// A word with its quotes removed; `None` if it uses a variable.
fn literal(lexer: ShellLexer, word: &str) -> Option<String> {
    let mut uses_variable = false;
    let text = lexer
        .process_word(word, &mut |_| {
            uses_variable = true;
            None
        })
        .ok()?;
    (!uses_variable).then_some(text)
}

/// The elements of a source path before its first wildcard, as a clean
/// relative path (a `..` above the root is dropped: planning refuses such
/// a path anyway); `None` when that is the context root.
fn fixed_part(path: &str) -> Option<String> {
    let cleaned = clean_path(&format!("/{path}"));
    let fixed: Vec<&str> = cleaned.split('/').filter(|c| !c.is_empty()).take_while(|c| !has_wildcard(c)).collect();
    (!fixed.is_empty()).then(|| fixed.join("/"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn scope(body: &str) -> ContextScope {
        context_scope(&Dockerfile::parse("Dockerfile", &format!("FROM scratch AS base\n{body}")).unwrap())
    }

    fn paths(paths: &[&str]) -> ContextScope {
        ContextScope::of_paths(paths.iter().map(|p| p.to_string()))
    }

    #[test]
    fn named_sources_and_bind_mounts_are_the_scope() {
        let body = "COPY app.txt src/*.go ./\n\
                    ADD [\"my docs/\", \"https://example.com/x.tgz\", \"/docs/\"]\n\
                    COPY --from=base /etc /etc\n\
                    COPY <<EOF /note\nhello $HOME\nEOF\n\
                    RUN --mount=type=bind,source=go.mod,target=/m --mount=type=cache,target=/c --mount=from=base,target=/b true\n\
                    ONBUILD COPY /../tools/a/../b.sh /\n";
        assert_eq!(scope(body), paths(&["app.txt", "src", "my docs", "go.mod", "tools/b.sh"]));
        assert_eq!(scope("RUN true\n"), paths(&[]));
    }

    #[test]
    fn a_source_that_may_name_anything_is_the_whole_context() {
        for body in [
            "COPY . /app/\n",
            "COPY ./ /app/\n",
            "COPY *.json ./\n",
            "COPY app.txt $DIR/ /app/\n",
            "COPY \"${SRC}\" /app/\n",
            "RUN --mount=type=bind,target=/src make\n",
            "RUN --mount=type=bind,source=$D,target=/src make\n",
            "ONBUILD COPY . /app/\n",
        ] {
            assert_eq!(scope(body), ContextScope::Whole, "{body}");
        }
    }
}
