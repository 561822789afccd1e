//! ONBUILD triggers: the text an `ONBUILD` instruction stores in an image
//! config, and that text parsed back into the instruction a stage built
//! `FROM` the image runs right after its FROM.

use memobuild_proto::{Error, Result};
use serde::Serialize;

use crate::parser::Parser;
use crate::{Instruction, InstructionKind, LineReader, Location, SourceText};

/// One trigger of a stage's base.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OnbuildTrigger {
    /// As the base's config stores it, e.g. `RUN make`.
    pub text: String,
    /// Where it comes from: `image REFERENCE` or `stage NAME`.
    pub base: String,
}

impl OnbuildTrigger {
    /// The trigger an `ONBUILD` instruction stores: its text after the
    /// keyword.
    pub fn text_of(onbuild: &Instruction) -> String {
        let text = onbuild.text.trim_start();
        match text.get(..7) {
            Some(keyword) if keyword.eq_ignore_ascii_case("ONBUILD") => text[7..].trim_start().to_string(),
            _ => text.to_string(),
        }
    }

    /// What every error of the trigger starts with:
    /// ``ONBUILD trigger `RUN make` of image base:1 (Dockerfile:3 of the FROM)``.
    pub fn context(&self, dockerfile: &str, from_line: usize) -> String {
        format!("ONBUILD trigger `{}` of {} ({dockerfile}:{from_line} of the FROM)", self.text.trim(), self.base)
    }

    /// Parses the trigger with the Dockerfile's escape character. Like
    /// BuildKit, the instruction is placed at `from`, the FROM that runs it.
    /// FROM, ONBUILD and MAINTAINER are not triggers (the parser's ONBUILD
    /// rule), and one trigger is one instruction.
    pub fn parse(&self, escape: char, from: Location) -> Result<Instruction> {
        let source = SourceText::new("trigger", &format!("ONBUILD {}", self.text));
        let (_, lines) = LineReader::with_escape(&source, escape).read_all()?;
        let [line] = lines.as_slice() else {
            return Err(Error::invalid_argument(format!(
                "a trigger must be one instruction, this one holds {}",
                lines.len()
            )));
        };
        let InstructionKind::Onbuild(inner) = Parser::new(&source, escape).instruction(line)?.kind else {
            return Err(Error::internal("an ONBUILD line did not parse as ONBUILD"));
        };
        let mut instruction = *inner;
        relocate(&mut instruction, from);
        Ok(instruction)
    }
}

/// Moves every location of `instruction` to `at`.
fn relocate(instruction: &mut Instruction, at: Location) {
    instruction.location = at;
    match &mut instruction.kind {
        InstructionKind::Copy(copy) | InstructionKind::Add(copy) => {
            copy.from_location = copy.from_location.map(|_| at);
            copy.source_locations.iter_mut().for_each(|l| *l = at);
        }
        InstructionKind::Run(run) => run.mounts.iter_mut().for_each(|m| m.location = at),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::{CopySource, Dockerfile};

    fn trigger(text: &str) -> OnbuildTrigger {
        OnbuildTrigger { text: text.to_string(), base: "image base".to_string() }
    }

    #[test]
    fn text_of_an_onbuild_instruction() {
        let dockerfile = Dockerfile::parse("Dockerfile", "FROM a\n  onbuild   COPY . /app\n").unwrap();
        assert_eq!(OnbuildTrigger::text_of(&dockerfile.instructions[1]), "COPY . /app");
    }

    #[test]
    fn parsed_at_the_from_with_the_escape_character() {
        let at = Location::new(7, 1);
        let copy = trigger("COPY --from=build a `\n b /dst/").parse('`', at).unwrap();
        assert_eq!(copy.location, at);
        assert_eq!(copy.text, "ONBUILD COPY --from=build a `\n b /dst/");
        let InstructionKind::Copy(copy) = copy.kind else { panic!("not a COPY") };
        assert_eq!(copy.sources, [CopySource::Path("a".into()), CopySource::Path("b".into())]);
        assert_eq!(copy.from_location, Some(at));
        assert_eq!(copy.source_locations, [at, at]);
    }

    #[test]
    fn non_triggers_are_rejected() {
        for (text, message) in [
            ("FROM busybox", "FROM isn't allowed as an ONBUILD trigger"),
            ("MAINTAINER me", "MAINTAINER isn't allowed as an ONBUILD trigger"),
            ("ONBUILD RUN x", "chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed"),
            ("RUNN make", "unknown instruction \"RUNN\""),
            ("RUN a\nRUN b", "a trigger must be one instruction, this one holds 2"),
        ] {
            let e = trigger(text).parse('\\', Location::new(1, 1)).unwrap_err();
            assert!(e.message().contains(message), "{text}: {}", e.message());
        }
    }
}
