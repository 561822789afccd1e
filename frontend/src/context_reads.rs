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
/// RUN bind mounts (without `from=`) name, ONBUILD ones included; a
/// wildcard in a source's last element (`package*.json`) is kept as a
/// pattern, one higher up narrows it to the elements before it. Whole when
/// one of them may name anything: the context root, a variable, or a
/// wildcard in the first of several elements.
pub fn context_scope(dockerfile: &Dockerfile) -> ContextScope {
    let lexer = ShellLexer::new(dockerfile.directives.escape);
    let mut named = Named::default();
    for instruction in &dockerfile.instructions {
        if named_paths(instruction, lexer, &mut named).is_none() {
            return ContextScope::Whole;
        }
    }
    ContextScope::of_paths(named.paths).with_patterns(named.patterns).unwrap_or(ContextScope::Whole)
}

/// What the instructions read so far name.
#[derive(Default)]
struct Named {
    paths: Vec<String>,
    patterns: Vec<String>,
}

impl Named {
    /// Adds a source path; `None` when it may name anything.
    fn add(&mut self, path: &str) -> Option<()> {
        let cleaned = clean_path(&format!("/{path}"));
        let elements: Vec<&str> = cleaned.split('/').filter(|c| !c.is_empty()).collect();
        let fixed = elements.iter().take_while(|c| !has_wildcard(c)).count();
        if fixed + 1 == elements.len() {
            self.patterns.push(elements.join("/"));
        } else if fixed > 0 {
            // A `..` above the root was dropped: planning refuses such a
            // path anyway.
            self.paths.push(elements[..fixed].join("/"));
        } else {
            return None;
        }
        Some(())
    }
}

/// Adds what one instruction names; `None` when it may name anything.
fn named_paths(instruction: &Instruction, lexer: ShellLexer, named: &mut Named) -> Option<()> {
    match &instruction.kind {
        InstructionKind::Onbuild(inner) => named_paths(inner, lexer, named),
        InstructionKind::Copy(copy) | InstructionKind::Add(copy) if copy.from.is_none() => {
            for source in &copy.sources {
                let CopySource::Path(raw) = source else { continue };
                let path = literal(lexer, raw)?;
                if copy.add && SourceKind::of(&path).map_or(true, |kind| kind != SourceKind::Path) {
                    continue;
                }
                named.add(&path)?;
            }
            Some(())
        }
        InstructionKind::Run(run) => {
            for spec in run.mounts.iter().filter(|spec| spec.from.is_none()) {
                let mount =
                    Mount::parse(&spec.raw, &mut |value| literal(lexer, value).ok_or_else(|| "a variable".to_string()))
                        .ok()?;
                if mount.kind == MountType::Bind && mount.from.is_none() {
                    named.add(mount.source.as_deref().unwrap_or("."))?;
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
        let named = paths(&["app.txt", "my docs", "go.mod", "tools/b.sh"]).with_patterns(["src/*.go".to_string()]);
        assert_eq!(scope(body), named.unwrap());
        let body = "COPY package*.json ./\nCOPY src/*/main.go docs/?.md /\n";
        let named = paths(&["src"]).with_patterns(["package*.json".to_string(), "docs/?.md".to_string()]);
        assert_eq!(scope(body), named.unwrap());
        assert_eq!(scope("RUN true\n"), paths(&[]));
    }

    #[test]
    fn a_source_that_may_name_anything_is_the_whole_context() {
        for body in [
            "COPY . /app/\n",
            "COPY ./ /app/\n",
            "COPY */package.json ./\n",
            "COPY [a- ./\n",
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
